"""Two runs' results -> what changed: regressions, fixes, other outcome changes, new and
vanished cells, and for every changed cell the package versions that changed.

Cells are matched by what they test (platform + source + package set label), not by serial:
serials move when parameter files change.
"""

from __future__ import annotations

from typing import Any

from osgtest_dag.model.outcome import Outcome
from osgtest_dag.model.results import ResultsDocument

SCHEMA = "osgtest-dag/compare"
VERSION = 1
PACKAGE_CHANGES_CAP = 50


def cell_key(cell: dict) -> tuple[str, str, str]:
    return (cell["platform"]["id"] or "", cell["source"]["raw"] or "", cell["label"] or "")


def _brief(cell: dict) -> dict:
    return {
        "serial": cell["serial"],
        "platform": cell["platform"]["id"],
        "platform_name": cell["platform"]["name"],
        "source": cell["source"]["raw"],
        "label": cell["label"],
        "outcome": cell["outcome"],
        "reason": cell.get("reason", ""),
    }


def _versions(cell: dict) -> dict[str, str]:
    v = dict(cell.get("packages_installed") or {})
    v.update(cell.get("package_versions") or {})
    return v


def package_diff(before: dict, after: dict) -> list[dict]:
    """Packages whose version differs between the two cells (added: before None)."""
    a, b = _versions(before), _versions(after)
    out = []
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            out.append({"name": name, "before": a.get(name), "after": b.get(name)})
    return out


def compare(previous: ResultsDocument, current: ResultsDocument) -> dict:
    """Compare two results documents (previous run first)."""
    before = {cell_key(c): c for c in previous.cells}
    after = {cell_key(c): c for c in current.cells}
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "version": VERSION,
        "previous": {"name": previous.run.name, "generated": previous.run.generated},
        "current": {"name": current.run.name, "generated": current.run.generated},
        "regressions": [],
        "fixes": [],
        "changed": [],
        "new": [],
        "vanished": [],
        "unchanged": 0,
    }
    for key, cur in after.items():
        prev = before.get(key)
        if prev is None:
            out["new"].append(_brief(cur))
            continue
        o_prev, o_cur = Outcome(prev["outcome"]), Outcome(cur["outcome"])
        if o_prev is o_cur:
            out["unchanged"] += 1
            continue
        pk = package_diff(prev, cur)
        change = {
            **_brief(cur),
            "serial_before": prev["serial"],
            "before": o_prev.value,
            "after": o_cur.value,
            "worse": o_cur > o_prev,
            "packages": pk[:PACKAGE_CHANGES_CAP],
            "packages_changed": len(pk),
        }
        if o_prev.acceptable and not o_cur.acceptable:
            out["regressions"].append(change)
        elif not o_prev.acceptable and o_cur.acceptable:
            out["fixes"].append(change)
        else:
            out["changed"].append(change)
    for key, prev in before.items():
        if key not in after:
            out["vanished"].append(_brief(prev))
    for k in ("regressions", "changed"):
        out[k].sort(key=lambda c: (-Outcome(c["after"]).severity, c["platform"], c["label"], c["source"]))
    out["fixes"].sort(key=lambda c: (c["platform"], c["label"], c["source"]))
    return out


def has_changes(diff: dict) -> bool:
    return any(diff[k] for k in ("regressions", "fixes", "changed", "new", "vanished"))


def text(diff: dict) -> str:
    """Plain text: what changed since the previous run."""
    lines = [f"Changes since {diff['previous']['name']}:"]
    if not has_changes(diff):
        lines.append(f"  none ({diff['unchanged']} cells with the same outcome)")
        return "\n".join(lines) + "\n"
    titles = (
        ("regressions", "Regressions (passed before, not now)"),
        ("fixes", "Fixes (failed before, pass now)"),
        ("changed", "Other outcome changes"),
    )
    for key, title in titles:
        if not diff[key]:
            continue
        lines.append(f"  {title}: {len(diff[key])}")
        for c in diff[key]:
            lines.append(
                f"    {c['before']:>8} -> {c['after']:<8} {c['platform']:<24} {c['label']} | {c['source']}"
            )
            if c.get("reason") and key != "fixes":
                lines.append(f"{'':14}{c['reason']}")
            for p in c["packages"][:10]:
                lines.append(f"{'':14}{p['name']}: {p['before'] or '(none)'} -> {p['after'] or '(none)'}")
            if c["packages_changed"] > 10:
                lines.append(f"{'':14}... and {c['packages_changed'] - 10} more package changes")
    for key, title in (("new", "New cells"), ("vanished", "Cells no longer in the run")):
        if diff[key]:
            lines.append(f"  {title}: {len(diff[key])}")
            for c in diff[key]:
                lines.append(f"    {c['outcome']:<8} {c['platform']:<24} {c['label']} | {c['source']}")
    lines.append(f"  unchanged: {diff['unchanged']}")
    return "\n".join(lines) + "\n"
