"""The history of a runs root (model/history.py) as text, JSON and one static HTML page (the
short section a nightly's report and e-mail carry is report/history_section.py).

The page is self-contained like report.html (its colors and styles): the window's runs and
their counts, the regressions, fixes, flaky and slower cells, then a grid of cells (rows) by
run (columns), each square colored by the cell's outcome that night. A few lines of inline
JavaScript hide the cells that passed every night; the page is complete without them.
"""

from __future__ import annotations

import json

from osgtest_dag.model.history import Change, History, RunSummary
from osgtest_dag.model.outcome import ORDERED, Outcome
from osgtest_dag.report import history_section
from osgtest_dag.report.history_section import cell_line, outcome_line
from osgtest_dag.report.html import COLORS, CSS, ERROR_HOOK, e

FORMATS = ("text", "json", "html")


def _counts_line(run: RunSummary) -> str:
    return ", ".join(f"{n} {o}" for o, n in run.counts if n) or "no cells"


def _change_lines(title: str, changes: tuple[Change, ...]) -> list[str]:
    out = [f"{title} ({len(changes)}):"]
    out += [f"  {c.before.value} -> {c.after.value}  {cell_line(c.key)}" for c in changes] or ["  none"]
    return out


def text(h: History) -> str:
    first, latest = h.runs[0], h.runs[-1]
    out = [
        f"osgtest-dag history: {len(h.runs)} runs ({first.name} .. {latest.name}), {len(h.cells)} cells",
        "",
        "Runs:",
    ]
    width = max(len(r.name) for r in h.runs)
    out += [f"  {r.name:<{width}}  {r.generated or '?':<20}  {_counts_line(r)}" for r in h.runs]
    out.append("")
    if len(h.runs) >= 2:
        out.append(f"Since {h.runs[-2].name}:")
        out += _change_lines("Regressions", h.regressions)
        out += _change_lines("Fixes", h.fixes)
        out.append("")
    out += history_section.text(h, cap=len(h.flaky) + len(h.slower))
    out.append("")
    unsteady = [c for c in h.cells if any(o is not Outcome.PASS for o in c.outcomes)]
    out.append(f"Cells that did not pass every run ({len(unsteady)} of {len(h.cells)}), oldest run first:")
    out += [f"  {cell_line(c.key)}\n{'':4}{outcome_line(c.outcomes)}" for c in unsteady]
    return "\n".join(out) + "\n"


def to_json(h: History) -> str:
    return json.dumps(h.to_json(), indent=1, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------ HTML
def _chip(outcome: str, label: str) -> str:
    bg, fg = COLORS.get(outcome, ("#eee", "#000"))
    return f'<span style="background:{bg};color:{fg}" data-outcome="{e(outcome)}">{e(label)}</span>'


HISTORY_CSS = """
td.o{min-width:1.6em;height:1.3em;padding:0;text-align:center;font-size:.7em}
td.o-none{background:#fff;color:#8c959f}
table.history th.run{writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal;white-space:nowrap}
tr.steady.hidden{display:none}
"""

HISTORY_JS = """
(function(){
  var box=document.getElementById('hide-steady');
  function apply(){
    var rows=document.querySelectorAll('table.history tbody tr.steady');
    for(var i=0;i<rows.length;i++){rows[i].classList.toggle('hidden',box.checked);}
  }
  box.addEventListener('change',apply);
  apply();
  document.body.setAttribute('data-js','ok');
})();
"""
# One letter per outcome in a grid square (the color says it too, the title in full).
LETTERS = {o.value: o.value[0].upper() for o in ORDERED} | {"cleanup": "c", "install": "I", "infra": "x"}


def _html_changes(h: History) -> list[str]:
    if len(h.runs) < 2:
        return ["<p>One run: nothing to compare with yet.</p>"]
    out = [f"<h2>Since {e(h.runs[-2].name)}</h2>"]
    for title, changes in (("Regressions", h.regressions), ("Fixes", h.fixes)):
        out.append(f"<h3>{e(title)} ({len(changes)})</h3>")
        if changes:
            out.append("<ul>")
            out += [
                f"<li><b>{e(c.before.value)} &#8594; {e(c.after.value)}</b> {e(cell_line(c.key))}</li>"
                for c in changes
            ]
            out.append("</ul>")
    return out


def _grid(h: History) -> list[str]:
    out = ['<table class="history" id="history-grid"><thead><tr><th>Cell</th>']
    out += [f'<th class="run" title="{e(r.generated)}">{e(r.name)}</th>' for r in h.runs]
    out.append("</tr></thead><tbody>")
    flaky = {f.cell.key for f in h.flaky}
    for c in h.cells:
        steady = all(o is Outcome.PASS for o in c.outcomes)
        classes = " ".join(n for n, on in (("steady", steady), ("flaky", c.key in flaky)) if on)
        tds = []
        for run, o in zip(h.runs, c.outcomes, strict=True):
            if o is None:
                tds.append(f'<td class="o o-none" title="{e(run.name)}: not in this run">&#183;</td>')
                continue
            bg, fg = COLORS[o.value]
            tds.append(
                f'<td class="o o-{e(o.value)}" style="background:{bg};color:{fg}" '
                f'title="{e(run.name)}: {e(o.value)}">{e(LETTERS[o.value])}</td>'
            )
        head = f'<th class="row">{e(c.platform_name)} | {e(c.key.label)}<br><small>{e(c.source_display)}</small></th>'
        out.append(f'<tr class="{classes}">{head}{"".join(tds)}</tr>')
    out.append("</tbody></table>")
    return out


def html(h: History) -> str:
    """The history page: one static, self-contained HTML document."""
    first, latest = h.runs[0], h.runs[-1]
    title = f"osgtest-dag history: {first.name} .. {latest.name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>",
        f"<script>{ERROR_HOOK}</script>",
        f"<style>{CSS}{HISTORY_CSS}</style></head>",
        '<body data-js="pending">',
        f"<h1>{e(title)}</h1>",
        f'<p class="meta">{len(h.runs)} runs (the last {h.last} asked for) &#183; {len(h.cells)} cells</p>',
        '<section id="runs"><h2>Runs</h2><table><thead><tr><th>Run</th><th>Generated</th>',
    ]
    present = [o.value for o in ORDERED if any(dict(r.counts)[o.value] for r in h.runs)]
    parts += [f"<th>{_chip(o, o)}</th>" for o in present]
    parts.append("</tr></thead><tbody>")
    for r in h.runs:
        counts = dict(r.counts)
        parts.append(
            f"<tr><td>{e(r.name)}</td><td>{e(r.generated)}</td>"
            + "".join(f'<td align="right">{counts[o] or ""}</td>' for o in present)
            + "</tr>"
        )
    parts.append('</tbody></table></section><section id="changes" class="changes">')
    parts += _html_changes(h)
    parts.append("</section>")
    parts += history_section.html(h, COLORS, cap=len(h.flaky) + len(h.slower))
    parts.append('<section id="grid"><h2>Every cell, every run (oldest first)</h2>')
    parts.append(
        '<p class="filters"><label><input type="checkbox" id="hide-steady"> '
        "hide the cells that passed every run</label></p>"
    )
    parts += _grid(h)
    parts.append('</section><section id="legend"><h2>Legend</h2><p class="legend">')
    for o in ORDERED:
        parts.append(f"{_chip(o.value, LETTERS[o.value] + ' ' + o.value)} {e(o.description)}<br>")
    parts.append("</p></section>")
    parts.append(f"<script>{HISTORY_JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def render(h: History, fmt: str) -> str:
    if fmt == "text":
        return text(h)
    if fmt == "json":
        return to_json(h)
    if fmt == "html":
        return html(h)
    raise ValueError(fmt)
