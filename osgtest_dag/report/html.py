"""One self-contained HTML page from results.json: no external assets, everything escaped.

Two grids of the run: rows source x package set (then package set x source), columns the
platforms grouped by OS release and sorted by version numerically (EL 8 before EL 10). Each
cell shows its outcome and test counts, links to its logs and carries its details in a
tooltip (the title attribute). A few lines of inline JavaScript filter cells by outcome; the
page is complete without them. When given a comparison with the previous run, "what changed"
comes first.
"""

from __future__ import annotations

import html
import os
import shlex
import urllib.parse
from pathlib import Path

from osgtest_dag.model.history import History
from osgtest_dag.model.outcome import ORDERED, Outcome
from osgtest_dag.model.results import ResultsDocument
from osgtest_dag.report import history_section

COLORS = {
    "pass": ("#1a7f37", "#fff"),
    "cleanup": ("#8fd19e", "#123"),
    "waived": ("#2f8f9d", "#fff"),
    "fail": ("#cf222e", "#fff"),
    "update": ("#e36209", "#fff"),
    "install": ("#8250df", "#fff"),
    "timeout": ("#8a5a00", "#fff"),
    "infra": ("#6e7781", "#fff"),
    "missing": ("#24292f", "#fff"),
}
FAMILY_NAMES = {"el": "EL", "debian": "Debian"}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2em;color:#1f2328;background:#fff}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.4em 0 .4em}
.meta{color:#57606a;font-size:.9em}
.chips span,.legend span{display:inline-block;padding:.15em .55em;margin:.1em .2em .1em 0;border-radius:1em;font-size:.85em}
table{border-collapse:collapse;font-size:.8em}
th,td{border:1px solid #d0d7de;padding:.2em .35em;vertical-align:middle}
thead th{background:#f6f8fa;position:sticky;top:0}
th.row{text-align:left;font-weight:normal;background:#f6f8fa;max-width:28em}
th.row small{color:#57606a}
td.cell{text-align:center;min-width:4.2em;white-space:nowrap}
td.cell a{color:inherit;text-decoration:none;display:block}
td.cell .n{display:block;font-size:.8em;opacity:.85}
td.none{background:#fff;color:#8c959f;text-align:center}
td.hidden,tr.hidden{opacity:.08}
tr.hidden{display:none}
.filters label{margin-right:.8em;font-size:.9em;cursor:pointer}
.changes li{margin:.15em 0}
.changes .pk{color:#57606a;font-size:.85em}
details{margin:.2em 0}summary{cursor:pointer}
pre{white-space:pre-wrap;font-size:.8em;background:#f6f8fa;padding:.5em;max-height:20em;overflow:auto}
.warn{color:#9a6700}
table.stages td.stage{text-align:center;white-space:nowrap}
td.s-ok{background:#dafbe1}td.s-failed{background:#ffebe9;font-weight:bold}td.s-skipped{color:#57606a}
"""

JS = """
(function(){
  var boxes=document.querySelectorAll('input[data-filter]');
  function apply(){
    var on={};
    for(var i=0;i<boxes.length;i++){on[boxes[i].getAttribute('data-filter')]=boxes[i].checked;}
    var cells=document.querySelectorAll('td.cell');
    for(var j=0;j<cells.length;j++){
      var show=on[cells[j].getAttribute('data-outcome')]!==false;
      cells[j].classList.toggle('hidden',!show);
    }
    var rows=document.querySelectorAll('table.grid tbody tr');
    for(var k=0;k<rows.length;k++){
      var visible=rows[k].querySelectorAll('td.cell:not(.hidden)').length;
      rows[k].classList.toggle('hidden',visible===0);
    }
  }
  for(var i=0;i<boxes.length;i++){boxes[i].addEventListener('change',apply);}
  apply();
  document.body.setAttribute('data-js','ok');
})();
"""

ERROR_HOOK = "window.onerror=function(m){document.documentElement.setAttribute('data-js-error',String(m));};"


def e(value) -> str:
    """Escape for text and for double-quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def _href(path: str | None, run_dir: str, out_dir: str | None, link_base: str | None) -> str | None:
    if not path:
        return None
    quoted = "/".join(urllib.parse.quote(p) for p in path.split("/"))
    if link_base:
        return link_base.rstrip("/") + "/" + quoted
    if out_dir is None:
        return quoted
    rel = os.path.relpath(os.path.join(run_dir, path), out_dir)
    return "/".join(urllib.parse.quote(p) for p in Path(rel).as_posix().split("/"))


def _group_name(p: dict) -> str:
    fam = FAMILY_NAMES.get(p.get("family") or "", (p.get("family") or "?").title())
    return f"{fam} {p.get('major')}"


def _sort_key(p: dict) -> list:
    try:
        major = int(p["major"])
    except (KeyError, TypeError, ValueError):
        major = 1 << 30
    return [p.get("family") or "", major, p.get("distro") or "", p.get("arch") or "", p.get("id") or ""]


def _tooltip(c: dict) -> str:
    n = c.get("counts") or {}
    lines = [
        f"{c['serial']}: {c['outcome'].upper()} - {c.get('reason') or ''}",
        f"{c['platform']['name']} | {c['label']} | {c['source']['display']}",
    ]
    if n.get("run"):
        lines.append(
            f"tests {n['run']}: ok {n['ok']}, failed {n['failed']}, errors {n['error']}, "
            f"bad skips {n['bad_skips']}, ok skips {n['ok_skips']}"
        )
    for f in (c.get("failures") or [])[:6]:
        name = ".".join(p for p in (f.get("module"), f.get("test")) if p)
        waived = " [waived]" if f.get("waived_by") else ""
        msg = (f.get("message") or "").splitlines()[0][:100] if f.get("message") else ""
        lines.append(f"{f['kind']} {name}{waived}: {msg}")
    if len(c.get("failures") or []) > 6:
        lines.append(f"... {len(c['failures']) - 6} more failures")
    if c.get("durations", {}).get("total") is not None:
        lines.append(f"duration {c['durations']['total']:.0f} s")
    for vm in c.get("vms") or []:
        lines.append(f"VM {vm['name']} ({vm['role']}): {vm['outcome'] or '-'}")
    if c.get("attempts"):
        lines.append(f"attempts {c['attempts']}")
    if c.get("host"):
        lines.append(f"host {c['host']}")
    return "\n".join(lines)


def _cell_td(c: dict | None, hrefs: dict) -> str:
    if c is None:
        return '<td class="none" title="not in this run">&#8212;</td>'
    fg_bg = COLORS.get(c["outcome"], ("#fff", "#000"))
    n = c.get("counts") or {}
    count = f'<span class="n">{e(n["ok"])}/{e(n["run"])}</span>' if n.get("run") else ""
    label = e(c["outcome"])
    href = hrefs.get(c["serial"])
    inner = f'<a href="{e(href)}">{label}{count}</a>' if href else f"{label}{count}"
    return (
        f'<td class="cell o-{e(c["outcome"])}" data-outcome="{e(c["outcome"])}" '
        f'data-serial="{e(c["serial"])}" style="background:{fg_bg[0]};color:{fg_bg[1]}" '
        f'title="{e(_tooltip(c))}">{inner}</td>'
    )


def _grid(doc: ResultsDocument, first: str, table_id: str, hrefs: dict) -> list[str]:
    cells = doc.cells
    platforms: dict[str, dict] = {}
    for c in cells:
        platforms.setdefault(c["platform"]["id"], c["platform"])
    cols = sorted(platforms.values(), key=_sort_key)
    groups: list[tuple[str, int]] = []
    for p in cols:
        g = _group_name(p)
        if groups and groups[-1][0] == g:
            groups[-1] = (g, groups[-1][1] + 1)
        else:
            groups.append((g, 1))
    by_key = {(c["source"]["raw"], c["label"], c["platform"]["id"]): c for c in cells}
    sources: dict[str, str] = {}
    labels: list[str] = []
    for c in cells:
        sources.setdefault(c["source"]["raw"], c["source"]["display"])
        if c["label"] not in labels:
            labels.append(c["label"])
    src_order = sorted(sources)
    lab_order = sorted(labels, key=str.lower)
    if first == "source":
        rows = [(s, lab) for s in src_order for lab in lab_order]
    else:
        rows = [(s, lab) for lab in lab_order for s in src_order]
    row_title = "Source / package set" if first == "source" else "Package set / source"
    out = [f'<table class="grid" id="{e(table_id)}">', "<thead><tr>", f'<th rowspan="2">{e(row_title)}</th>']
    out += [f'<th colspan="{n}">{e(g)}</th>' for g, n in groups]
    out.append("</tr><tr>")
    out += [f'<th title="{e(p["id"])}">{e(p["name"])}</th>' for p in cols]
    out.append("</tr></thead><tbody>")
    for s, lab in rows:
        row_cells = [by_key.get((s, lab, p["id"])) for p in cols]
        if not any(row_cells):
            continue
        if first == "source":
            head = f'<th class="row">{e(sources[s])}<br><small>{e(lab)}</small></th>'
        else:
            head = f'<th class="row">{e(lab)}<br><small>{e(sources[s])}</small></th>'
        out.append("<tr>" + head + "".join(_cell_td(c, hrefs) for c in row_cells) + "</tr>")
    out.append("</tbody></table>")
    return out


def _changes(diff: dict) -> list[str]:
    out = [f'<section id="changes" class="changes"><h2>What changed since {e(diff["previous"]["name"])}</h2>']
    any_change = False
    for key, title in (("regressions", "Regressions"), ("fixes", "Fixes"), ("changed", "Other changes")):
        items = diff.get(key) or []
        if not items:
            continue
        any_change = True
        out.append(f"<h3>{e(title)} ({len(items)})</h3><ul>")
        for c in items:
            pk = "; ".join(
                f"{e(p['name'])} {e(p['before'] or '(none)')} &#8594; {e(p['after'] or '(none)')}"
                for p in c["packages"][:8]
            )
            more = c["packages_changed"] - 8
            out.append(
                f"<li><b>{e(c['before'])} &#8594; {e(c['after'])}</b> {e(c['platform_name'])} | "
                f"{e(c['label'])} | {e(c['source'])}"
                + (f' <span class="pk">({e(c["reason"])})</span>' if c.get("reason") else "")
                + (
                    f'<br><span class="pk">{pk}' + (f" and {more} more" if more > 0 else "") + "</span>"
                    if pk
                    else ""
                )
                + "</li>"
            )
        out.append("</ul>")
    for key, title in (("new", "New cells"), ("vanished", "Cells no longer in the run")):
        items = diff.get(key) or []
        if items:
            any_change = True
            out.append(f"<h3>{e(title)} ({len(items)})</h3><ul>")
            out += [
                f"<li>{e(c['outcome'])}: {e(c['platform_name'])} | {e(c['label'])} | {e(c['source'])}</li>"
                for c in items
            ]
            out.append("</ul>")
    if not any_change:
        out.append(f"<p>No changes: {e(diff['unchanged'])} cells have the same outcome.</p>")
    out.append("</section>")
    return out


STAGE_MARKS = {"ok": "ok", "failed": "failed", "skipped": "skipped", None: "no record"}


def _stage_td(st: dict, href) -> str:
    status = st.get("status")
    text = STAGE_MARKS.get(status, str(status))
    if st.get("exit_code") is not None and status != "ok":
        text += f" (exit {st['exit_code']})"
    link = f' <a href="{e(href(st.get("log")))}">log</a>' if st.get("log") else ""
    title = f"{st['name']}: {st.get('start') or '?'} .. {st.get('end') or '?'}"
    return (
        f'<td class="stage s-{e(status or "none")}" data-stage="{e(st["name"])}" '
        f'title="{e(title)}">{e(text)}{link}</td>'
    )


def _clusters(doc: ResultsDocument, href) -> list[str]:
    """Every cluster cell's VM x stage grid: rows the VMs with role and outcome, columns the
    stages, each the VM's status with its exit code and a link to the stage's log."""
    clusters = [c for c in doc.cells if c.get("vms")]
    if not clusters:
        return []
    out = [f'<section id="clusters"><h2>Clusters ({len(clusters)})</h2>']
    for c in clusters:
        names: list[str] = []
        for vm in c["vms"]:
            names += [s["name"] for s in vm["stages"] if s["name"] not in names]
        out.append(
            f'<div class="cluster" id="cluster-{e(c["serial"])}" data-outcome="{e(c["outcome"])}">'
            f"<h3>{e(c['outcome'])} {e(c['serial'])} {e(c['platform']['name'])} | {e(c['label'])} | "
            f"{e(c['source']['display'])}</h3><p>{e(c.get('reason'))}</p>"
            '<table class="stages"><thead><tr><th>VM</th><th>role</th><th>outcome</th>'
            + "".join(f"<th>{e(n)}</th>" for n in names)
            + "</tr></thead><tbody>"
        )
        for vm in c["vms"]:
            stages = {s["name"]: s for s in vm["stages"]}
            bg, fg = COLORS.get(vm["outcome"] or "", ("#fff", "#57606a"))
            out.append(
                f'<tr data-vm="{e(vm["name"])}"><th class="row">{e(vm["name"])}</th><td>{e(vm["role"])}</td>'
                f'<td class="vm-outcome" style="background:{bg};color:{fg}" title="{e(vm.get("reason"))}">'
                f"{e(vm['outcome'] or '-')}</td>"
                + "".join(
                    _stage_td(stages[n], href) if n in stages else '<td class="stage s-none">&#8212;</td>'
                    for n in names
                )
                + "</tr>"
            )
        out.append("</tbody></table></div>")
    out.append("</section>")
    return out


def reproduce_command(run_dir: str, serial: str) -> str:
    """The command that boots a cell's VM again as it ran (`osgtest-dag reproduce`)."""
    return shlex.join(["osgtest-dag", "reproduce", run_dir, serial])


def _details(doc: ResultsDocument, hrefs: dict) -> list[str]:
    bad = [c for c in doc.cells if c["outcome"] != "pass"]
    bad.sort(key=lambda c: (-Outcome(c["outcome"]).severity, c["serial"]))
    out = [f'<section id="details"><h2>Cells that did not pass ({len(bad)})</h2>']
    for c in bad:
        href = hrefs.get(c["serial"])
        link = f' <a href="{e(href)}">logs</a>' if href else ""
        if c.get("vms"):
            link += f' <a href="#cluster-{e(c["serial"])}">VMs and stages</a>'
        out.append(
            f'<details data-outcome="{e(c["outcome"])}"><summary><b>{e(c["outcome"])}</b> '
            f"{e(c['serial'])} {e(c['platform']['name'])} | {e(c['label'])} | "
            f"{e(c['source']['display'])}</summary><p>{e(c.get('reason'))}{link}</p>"
            f'<p class="reproduce">Reproduce: <code>{e(reproduce_command(doc.run.dir, c["serial"]))}</code></p>'
        )
        for f in (c.get("failures") or [])[:20]:
            name = ".".join(p for p in (f.get("module"), f.get("class"), f.get("test")) if p)
            w = f.get("waived_by")
            waived = ""
            if w:
                t = f' <a href="{e(w["ticket"])}">{e(w["ticket"])}</a>' if w.get("ticket") else ""
                waived = f' <span class="warn">waived by {e(w.get("where"))}{t}</span>'
            tags = f" [{e(', '.join(f.get('tags') or []))}]" if f.get("tags") else ""
            out.append(
                f"<p>{e(f['kind'])} <code>{e(name)}</code>{tags}{waived}</p><pre>{e(f.get('message'))}</pre>"
            )
        out.append("</details>")
    out.append("</section>")
    return out


def render(
    doc: ResultsDocument,
    diff: dict | None = None,
    *,
    out_path: Path | str | None = None,
    link_base: str | None = None,
    history: History | None = None,
) -> str:
    """The page. Links to logs are relative to `out_path`'s directory (or under `link_base`)."""
    run = doc.run
    out_dir = str(Path(out_path).resolve().parent) if out_path else None
    hrefs = {
        c["serial"]: _href(c["logs"].get("main") or c["logs"].get("dir"), run.dir, out_dir, link_base)
        for c in doc.cells
    }
    counts = doc.counts["by_outcome"]
    present = [o.value for o in ORDERED if counts.get(o.value)]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>osgtest-dag: {e(run.name)}</title>",
        f"<script>{ERROR_HOOK}</script>",
        f"<style>{CSS}</style></head>",
        '<body data-js="pending">',
        f"<h1>osgtest-dag results: {e(run.name)}</h1>",
        f'<p class="meta">{e(run.cells)} cells &#183; run generated {e(run.generated)} '
        f"&#183; analyzed {e(doc.generated)} &#183; worst outcome <b>{e(doc.worst.value)}</b></p>",
        '<p class="chips" id="totals">',
    ]
    for name in present:
        bg, fg = COLORS.get(name, ("#eee", "#000"))
        parts.append(
            f'<span style="background:{bg};color:{fg}" data-outcome="{e(name)}">'
            f"{e(name)} {e(counts[name])}</span>"
        )
    parts.append("</p>")
    if diff is not None:
        parts += _changes(diff)
    if history is not None:  # a nightly: its flaky and slower cells
        parts += history_section.html(history, COLORS)
    parts.append('<p class="filters" id="filters">Show: ')
    for name in present:
        parts.append(f'<label><input type="checkbox" data-filter="{e(name)}" checked> {e(name)}</label>')
    parts.append(
        '</p><p><a href="#by-source">by source</a> &#183; <a href="#by-package-set">by package set</a>'
        ' &#183; <a href="#details">details</a> &#183; <a href="#legend">legend</a></p>'
    )
    parts.append('<section id="by-source"><h2>By source and package set</h2>')
    parts += _grid(doc, "source", "grid-by-source", hrefs)
    parts.append('</section><section id="by-package-set"><h2>By package set and source</h2>')
    parts += _grid(doc, "package_set", "grid-by-package-set", hrefs)
    parts.append("</section>")
    parts += _clusters(doc, lambda path: _href(path, run.dir, out_dir, link_base))
    parts += _details(doc, hrefs)
    warnings = doc.known_failures.warnings
    if warnings:
        parts.append('<section id="known-failure-warnings"><h2>Known-failure warnings</h2><ul>')
        parts += [f'<li class="warn">{e(w)}</li>' for w in warnings]
        parts.append("</ul></section>")
    parts.append('<section id="legend"><h2>Legend (least to most severe)</h2><p class="legend">')
    for o in ORDERED:
        bg, fg = COLORS.get(o.value, ("#eee", "#000"))
        parts.append(f'<span style="background:{bg};color:{fg}">{e(o.value)}</span> {e(o.description)}<br>')
    parts.append("</p></section>")
    parts.append(f"<script>{JS}</script></body></html>")
    return "\n".join(parts) + "\n"
