"""Plain-text report from results.json: counts per outcome by OS release, by package set and
by source, then every cell that did not pass, worst first."""

from __future__ import annotations

from osgtest_dag.model.history import History
from osgtest_dag.model.outcome import ORDERED, Outcome
from osgtest_dag.model.results import ResultsDocument
from osgtest_dag.report import compare as compare_mod
from osgtest_dag.report import history_section

REASON_WIDTH = 100


def _table(title: str, groups: list[dict], outcomes: list[str]) -> list[str]:
    width = max([len(title)] + [len(g["name"]) for g in groups]) + 2
    head = f"{title:<{width}}" + "".join(f"{o:>9}" for o in outcomes) + f"{'total':>8}"
    lines = [head, "-" * len(head)]
    for g in groups:
        row = (
            f"{g['name']:<{width}}"
            + "".join(f"{(g['counts'][o] or '.'):>9}" for o in outcomes)
            + f"{g['cells']:>8}"
        )
        lines.append(row)
    return lines


def render(doc: ResultsDocument, diff: dict | None = None, *, history: History | None = None) -> str:
    run = doc.run
    counts = doc.counts
    total = sum(counts["by_outcome"].values())
    # Only outcomes that occur get a column (all of them when nothing ran at all).
    present = [o.value for o in ORDERED if counts["by_outcome"][o.value]] or ["missing"]
    out = [
        f"osgtest-dag results: {run.name} ({total} cells, generated {run.generated or '?'})",
        "Overall: "
        + ", ".join(f"{n} {o}" for o, n in counts["by_outcome"].items() if n)
        + f"  (worst: {doc.worst.value})",
        "",
    ]
    if diff is not None:
        out += [compare_mod.text(diff).rstrip("\n"), ""]
    if history is not None:  # a nightly: its flaky and slower cells
        out += [*history_section.text(history), ""]
    out += _table("OS release", counts["by_os"], present) + [""]
    out += _table("Package set", counts["by_package_set"], present) + [""]
    out += _table("Source", counts["by_source"], present) + [""]
    bad = [c for c in doc.cells if c["outcome"] != Outcome.PASS.value]
    bad.sort(key=lambda c: (-Outcome(c["outcome"]).severity, c["serial"]))
    if bad:
        out.append(f"Cells that did not pass ({len(bad)}):")
        for c in bad:
            out.append(
                f"  {c['serial']:<6} {c['outcome']:<8} {c['platform']['id']:<26} "
                f"{c['label']} | {c['source']['raw']}"
            )
            reason = c.get("reason") or ""
            if reason:
                out.append(f"{'':9}{reason[:REASON_WIDTH]}")
            for vm in c.get("vms") or []:  # a cluster cell: its VMs that did not pass
                if vm["outcome"] not in (None, Outcome.PASS.value):
                    failed = [
                        f"{s['name']} (exit {s['exit_code']})"
                        for s in vm["stages"]
                        if s["status"] == "failed"
                    ]
                    where = f" in {', '.join(failed)}" if failed else ""
                    out.append(
                        f"{'':11}VM {vm['name']} ({vm['role']}) {vm['outcome']}{where}: {vm['reason']}"
                    )
            for f in c.get("failures", [])[:5]:
                waived = " (waived)" if f.get("waived_by") else ""
                name = ".".join(p for p in (f.get("module"), f.get("test")) if p)
                msg = (f.get("message") or "").splitlines()[0][:80] if f.get("message") else ""
                out.append(f"{'':11}{f['kind']} {name}{waived}: {msg}")
            more = len(c.get("failures", [])) - 5
            if more > 0:
                out.append(f"{'':11}... and {more} more")
    else:
        out.append("Every cell passed.")
    warnings = doc.known_failures.warnings
    if warnings:
        out += ["", "Known-failure warnings:"] + [f"  {w}" for w in warnings]
    return "\n".join(out) + "\n"
