"""The history section of a nightly's report and e-mail: its flaky cells and the cells that got
slower, over the runs of its runs root up to it (model/history.py, from analyze/runindex.py).

One function per renderer (text, report.html, the mail's HTML body); each renderer calls its
own when it is given a history. This module imports no renderer, so each of them can import it.
"""

from __future__ import annotations

import html as html_lib
from collections.abc import Iterable, Mapping

from osgtest_dag.model.history import FLAKY_FLIPS, SLOWER_RATIO, CellKey, History
from osgtest_dag.model.outcome import Outcome

LIST_CAP = 50  # entries of each list in a report (the history page has them all)


def _e(value: object) -> str:
    return html_lib.escape("" if value is None else str(value), quote=True)


def cell_line(key: CellKey) -> str:
    return f"{key.platform} | {key.label} | {key.source}"


def outcome_line(outcomes: Iterable[Outcome | None]) -> str:
    """The outcomes, oldest first, as one line; '.' where the cell was not in the run."""
    return " ".join(o.value if o else "." for o in outcomes)


def _titles(h: History) -> tuple[str, str]:
    n = len(h.runs)
    return (
        f"Flaky cells over the last {n} runs ({len(h.flaky)})",
        f"Slower than their median over the last {n} runs ({len(h.slower)})",
    )


def text(h: History, cap: int = LIST_CAP) -> list[str]:
    """Flaky and slower cells as text lines (the text report, the mail's text part)."""
    flaky_title, slower_title = _titles(h)
    out = [f"{flaky_title}:"]
    for f in h.flaky[:cap]:
        out.append(f"  {f.cell.flips} flips  {cell_line(f.cell.key)}")
        out.append(f"{'':11}{outcome_line(f.cell.outcomes)}")
    if not h.flaky:
        out.append("  none")
    elif len(h.flaky) > cap:
        out.append(f"  ... and {len(h.flaky) - cap} more (see the history page)")
    out.append(f"{slower_title}:")
    for s in h.slower[:cap]:
        out.append(
            f"  {s.phase:<8} {s.seconds:7.0f} s, median {s.median:.0f} s (x{s.ratio:.1f})  {cell_line(s.key)}"
        )
    if not h.slower:
        out.append("  none")
    elif len(h.slower) > cap:
        out.append(f"  ... and {len(h.slower) - cap} more (see the history page)")
    return out


def _slower_items(h: History, cap: int) -> list[str]:
    out = [
        f"<li><b>{_e(s.phase)} {s.seconds:.0f} s</b> (median {s.median:.0f} s, x{s.ratio:.1f}) "
        f"{_e(cell_line(s.key))}</li>"
        for s in h.slower[:cap]
    ]
    if len(h.slower) > cap:
        out.append(f"<li>... and {len(h.slower) - cap} more (see the history page)</li>")
    return out


def html(h: History, colors: Mapping[str, tuple[str, str]], cap: int = LIST_CAP) -> list[str]:
    """Flaky and slower cells as a <section id="history"> of report.html (and the history
    page); each flaky cell's outcomes as chips in the report's `colors`."""
    flaky_title, slower_title = _titles(h)
    out = [f'<section id="history" class="changes"><h2>{_e(flaky_title)}</h2>']
    if h.flaky:
        out.append("<ul>")
        for f in h.flaky[:cap]:
            chips = []
            for o in f.cell.outcomes:
                bg, fg = colors.get(o.value, ("#eee", "#000")) if o else ("#fff", "#8c959f")
                chips.append(f'<span style="background:{bg};color:{fg}">{_e(o.value if o else "-")}</span>')
            out.append(
                f"<li>{_e(f.cell.platform_name)} | {_e(f.cell.key.label)} | {_e(f.cell.source_display)} "
                f'<span class="pk">({f.cell.flips} flips)</span><br><span class="chips">{"".join(chips)}</span></li>'
            )
        if len(h.flaky) > cap:
            out.append(f"<li>... and {len(h.flaky) - cap} more (see the history page)</li>")
        out.append("</ul>")
    else:
        out.append(f"<p>None: no cell crossed the acceptable line {FLAKY_FLIPS} times.</p>")
    out.append(f"<h2>{_e(slower_title)}</h2>")
    if h.slower:
        out += ["<ul>", *_slower_items(h, cap), "</ul>"]
    else:
        out.append(f"<p>None: no install or test phase took {SLOWER_RATIO:g} times its median or longer.</p>")
    out.append("</section>")
    return out


def email(h: History, cap: int = LIST_CAP) -> list[str]:
    """Flaky and slower cells for the mail's HTML body (mail clients keep inline styles only)."""
    flaky_title, slower_title = _titles(h)
    out = [f"<h3>{_e(flaky_title)}</h3>"]
    if h.flaky:
        out.append("<ul>")
        out += [
            f"<li>{_e(cell_line(f.cell.key))} ({f.cell.flips} flips): {_e(outcome_line(f.cell.outcomes))}</li>"
            for f in h.flaky[:cap]
        ]
        if len(h.flaky) > cap:
            out.append(f"<li>... and {len(h.flaky) - cap} more (see the history page)</li>")
        out.append("</ul>")
    else:
        out.append("<p>none</p>")
    out.append(f"<h3>{_e(slower_title)}</h3>")
    out += ["<ul>", *_slower_items(h, cap), "</ul>"] if h.slower else ["<p>none</p>"]
    return out
