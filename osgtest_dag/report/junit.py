"""JUnit XML from results.json, in the Ant/Jenkins dialect (valid against junit-10.xsd).

One <testsuite> per cell; in it one <testcase> per payload phase (environment, network, ...,
install, test, update: so an install or network failure shows even without a test log), one
per VM and stage of a cluster cell (`<vm>.<stage>`, docs/clusters.md) and one per osg-test test. Product failures are <failure>, no-verdict outcomes (timeout, infra,
missing) are <error>, ok-skips and waived failures are <skipped> (a waived failure is known
and owned; CI should not go red on it).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from osgtest_dag.analyze.guest_output import parse_time
from osgtest_dag.model.outcome import Outcome
from osgtest_dag.model.results import ResultsDocument

# Characters XML 1.0 does not allow, even escaped (logs carry terminal escapes and such).
_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
NO_VERDICT = {Outcome.TIMEOUT.value, Outcome.INFRA.value, Outcome.MISSING.value}


def clean(value) -> str:
    return _ILLEGAL.sub("\ufffd", "" if value is None else str(value))


def _el(parent, tag: str, text: str | None = None, **attrs) -> ET.Element:
    el = ET.SubElement(parent, tag, {k: clean(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        el.text = clean(text)
    return el


def _suite(root: ET.Element, c: dict) -> None:
    p = c["platform"]
    suite = _el(
        root,
        "testsuite",
        name=f"{c['serial']} {p['id']} | {c['label']} | {c['source']['raw']}",
        tests="0",
        failures="0",
        errors="0",
        skipped="0",
        id=c["serial"],
        package=p["id"],
        timestamp=c.get("started"),
        hostname=c.get("host"),
    )
    total = (c.get("durations") or {}).get("total")
    if total is not None:
        suite.set("time", f"{float(total):.3f}")
    props = _el(suite, "properties")
    for k, v in (
        ("platform", p["id"]),
        ("platform_name", p["name"]),
        ("source", c["source"]["raw"]),
        ("label", c["label"]),
        ("packages", " ".join(c.get("packages") or [])),
        ("outcome", c["outcome"]),
        ("reason", c.get("reason")),
        ("attempts", c.get("attempts")),
        ("image_digest", c.get("image_digest")),
    ):
        if v not in (None, ""):
            _el(props, "property", name=k, value=v)
    n = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    cls = f"cell{c['serial']}"
    phases = c.get("durations") or {}
    guest_phases = c.get("phases") or []

    # Phases, from result.json's timestamps when we have them.
    for ph in guest_phases:
        tc = _el(suite, "testcase", name=f"phase {ph['name']}", classname=f"{cls}.phases")
        if ph["name"] in phases:
            tc.set("time", f"{float(phases[ph['name']]):.3f}")
        n["tests"] += 1
        if ph.get("status") == "failed":
            _el(
                tc,
                "failure",
                f"phase {ph['name']} failed with exit code {ph.get('exit_code')}",
                type="phase",
                message=f"exit code {ph.get('exit_code')}",
            )
            n["failures"] += 1
        elif ph.get("status") == "skipped":
            _el(tc, "skipped", message="skipped after an earlier failure")
            n["skipped"] += 1
    if not guest_phases:
        # No guest result: one test case stands for the cell, so the outcome is visible.
        tc = _el(suite, "testcase", name="result", classname=f"{cls}.cell")
        n["tests"] += 1
        if c["outcome"] in NO_VERDICT:
            _el(tc, "error", c.get("reason"), type=c["outcome"], message=c.get("reason"))
            n["errors"] += 1
        elif not Outcome(c["outcome"]).acceptable and c["outcome"] != "cleanup":
            _el(tc, "failure", c.get("reason"), type=c["outcome"], message=c.get("reason"))
            n["failures"] += 1

    # A cluster cell's stages, per VM: a stage skipped after a failure, or one its VM left no
    # record of (the cell's outcome says why), is skipped.
    for vm in c.get("vms") or []:
        for st in vm["stages"]:
            tc = _el(suite, "testcase", name=f"{vm['name']}.{st['name']}", classname=cls)
            start, end = parse_time(st.get("start")), parse_time(st.get("end"))
            if start and end:
                tc.set("time", f"{(end - start).total_seconds():.3f}")
            n["tests"] += 1
            if st.get("status") == "failed":
                _el(
                    tc,
                    "failure",
                    f"stage {st['name']} failed on {vm['name']} with exit code {st.get('exit_code')}"
                    + (f" (log: {st['log']})" if st.get("log") else ""),
                    type="stage",
                    message=f"exit code {st.get('exit_code')}",
                )
                n["failures"] += 1
            elif st.get("status") == "skipped":
                _el(tc, "skipped", message="skipped after a failed stage")
                n["skipped"] += 1
            elif st.get("status") != "ok":
                _el(tc, "skipped", message=f"no record of this stage: {vm.get('reason')}")
                n["skipped"] += 1

    # osg-test's tests.
    failures: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    for f in (c.get("failures") or []) + (c.get("bad_skips") or []):
        failures.setdefault((f.get("module"), f.get("test")), f)
    for row in c.get("tests") or []:
        module, klass, name, status = row[:4]
        reason = row[4] if len(row) > 4 else None
        tc = _el(
            suite, "testcase", name=name, classname=".".join(x for x in (module, klass) if x) or "osg-test"
        )
        n["tests"] += 1
        f = failures.get((module, name))
        if status == "okskip":
            _el(tc, "skipped", message=reason or "ok skip")
            n["skipped"] += 1
        elif status == "excluded":
            _el(tc, "skipped", message="excluded")
            n["skipped"] += 1
        elif status in ("FAIL", "ERROR", "TIMEOUT", "BADSKIP"):
            if f and f.get("waived_by"):
                w = f["waived_by"]
                _el(
                    tc,
                    "skipped",
                    f.get("detail") or f.get("message"),
                    message=f"known failure, waived by {w.get('where')}"
                    + (f" ({w['ticket']})" if w.get("ticket") else ""),
                )
                n["skipped"] += 1
            elif status == "ERROR":
                _el(
                    tc,
                    "error",
                    (f or {}).get("detail") or (f or {}).get("message") or "error",
                    type="ERROR",
                    message=((f or {}).get("message") or "error").splitlines()[0][:300]
                    if (f or {}).get("message")
                    else "error",
                )
                n["errors"] += 1
            else:
                msg = (f or {}).get("message") or reason or status
                _el(
                    tc,
                    "failure",
                    (f or {}).get("detail") or msg,
                    type=status,
                    message=msg.splitlines()[0][:300] if msg else status,
                )
                n["failures"] += 1
    if c["outcome"] in NO_VERDICT and guest_phases:
        # A guest that died or ran out of time: say so in the suite, not only in a phase.
        tc = _el(suite, "testcase", name="result", classname=f"{cls}.cell")
        _el(tc, "error", c.get("reason"), type=c["outcome"], message=c.get("reason"))
        n["tests"] += 1
        n["errors"] += 1
    for k, v in n.items():
        suite.set(k, str(v))


def render(doc: ResultsDocument) -> str:
    """The JUnit XML document (UTF-8, with declaration)."""
    root = ET.Element("testsuites", {"name": clean(f"osgtest-dag {doc.run.name}")})
    for c in doc.cells:
        _suite(root, c)
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for s in root:
        for k in totals:
            totals[k] += int(s.get(k, "0"))
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root, space=" ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
