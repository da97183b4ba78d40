"""Results: the outcome order, the osg-test log parser on the real fixtures, known failures,
and results.json for a run with one cell per situation."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from conftest import FIXTURES, KNOWN_FAILURES_2014, RESULTS_LOGS, alarm_log, py312_log

from osgtest_dag.analyze import guest_output, osgtest_log, results
from osgtest_dag.analyze.known_failures import (
    FailureContext,
    load_component_tags,
    load_known_failures,
    review,
)
from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import GuestResult, Phase, PostDecision, Verdict, VmRecord
from osgtest_dag.model.outcome import Evidence, JobFacts, Outcome, derive
from osgtest_dag.model.results import ResultsDocument

LOGS = ("pass", "fail", "install", "update", "cleanup", "ignore")


# ------------------------------------------------------------------------------ outcome
def test_severity_order_and_worst():
    order = [o.value for o in sorted(Outcome, reverse=True)]
    assert order == ["missing", "infra", "timeout", "install", "update", "fail", "waived", "cleanup", "pass"]
    assert Outcome.worst([Outcome.WAIVED, Outcome.CLEANUP]) is Outcome.WAIVED
    assert Outcome.worst([]) is None and Outcome.worst([], Outcome.PASS) is Outcome.PASS
    assert Outcome.INSTALL > Outcome.UPDATE > Outcome.FAIL
    assert Outcome.PASS.acceptable and Outcome.WAIVED.acceptable and not Outcome.CLEANUP.acceptable


def _g(status, **kw):
    phases = tuple(Phase(name, exit_code=code) for name, code in kw.pop("phases", {}).items())
    return GuestResult(status=status, phases=phases, **kw)


def _post(verdict, reason):
    return (PostDecision(attempt=0, verdict=Verdict(verdict), reason=reason, exit=1),)


_HELD_AT_LIMIT = JobFacts(starts=1, timed_out=True, reason="VM job held: osgtest-dag: VM ran longer than 9 s")
_KILLED_AT_LIMIT = (VmRecord(node="TestRun000", starts=1, timed_out=True),)


@pytest.mark.parametrize(
    "evidence, outcome",
    [
        (Evidence(), "missing"),
        (Evidence(post_vm=_post("infra", "no result disk came back")), "infra"),
        (Evidence(post_vm=_post("infra-fatal", "guest reported payload")), "infra"),
        (Evidence(post_vm=_post("timeout", "VM killed at its wall-clock limit after 9 s")), "timeout"),
        (Evidence(job=_HELD_AT_LIMIT), "timeout"),
        (Evidence(job=_HELD_AT_LIMIT, post_vm=_post("infra", "no result disk came back")), "timeout"),
        (Evidence(vm_records=_KILLED_AT_LIMIT), "timeout"),
        (Evidence(job=JobFacts(starts=1, reason="VM job removed")), "infra"),
        (Evidence(extraction_error="not a readable qcow2 image"), "infra"),
        (Evidence(record_error="post-vm.json unreadable"), "infra"),
        (Evidence(guest=_g("pass")), "pass"),
        (Evidence(guest=_g("test", phases={"test": 124})), "timeout"),
        (Evidence(guest=_g("test", phases={"test": 1})), "fail"),
        (Evidence(guest=_g("test"), log_outcome=Outcome.WAIVED), "waived"),
        (Evidence(guest=_g("test"), log_outcome=Outcome.PASS), "fail"),
        (Evidence(guest=_g("install")), "install"),
        (Evidence(guest=_g("update")), "update"),
        (Evidence(guest=_g("update", phases={"update": 137})), "timeout"),
        (Evidence(guest=_g("repos")), "infra"),
        (Evidence(guest=_g("network")), "infra"),
        (Evidence(guest=_g("payload")), "infra"),
        (Evidence(guest=_g("running", current_phase="install")), "infra"),
        (Evidence(guest=_g("running"), vm_records=_KILLED_AT_LIMIT), "timeout"),
        (Evidence(guest=_g("running"), job=_HELD_AT_LIMIT), "timeout"),
        (Evidence(guest=_g("running"), log_outcome=Outcome.TIMEOUT), "timeout"),
        (Evidence(guest_error="bad JSON"), "infra"),
        (Evidence(log_outcome=Outcome.FAIL, log_reason="x"), "fail"),  # reference-style output
    ],
)
def test_derive(evidence, outcome):
    got, reason = derive(evidence)
    assert got.value == outcome and reason


# ------------------------------------------------------------------------------ the log parser
@pytest.fixture(scope="module")
def parsed():
    return {n: osgtest_log.parse_file(RESULTS_LOGS / f"{n}.log") for n in LOGS}


@pytest.fixture(scope="module")
def tags():
    return load_component_tags(FIXTURES / "component-tags.yaml")


def test_fixture_outcomes_with_the_shipped_exceptions(parsed, tags):
    # The shipped test-exceptions.yaml holds only comments: nothing is waived.
    known = load_known_failures([FIXTURES / "test-exceptions.yaml"])
    assert not known.entries
    got = {n: osgtest_log.classify(p, known=known, tags=tags).outcome.value for n, p in parsed.items()}
    assert got == {
        "pass": "pass",
        "fail": "fail",
        "install": "install",
        "update": "update",
        "cleanup": "cleanup",
        "ignore": "fail",
    }


def test_ignore_log_is_waived_with_the_exceptions_in_force_then(parsed, tmp_path):
    kf = tmp_path / "test-exceptions.yaml"
    kf.write_text(KNOWN_FAILURES_2014)
    known = load_known_failures([kf])
    ctx = FailureContext(test="", module=None, platform="rocky_9.x86_64", os="rocky_9")
    c = osgtest_log.classify(parsed["ignore"], known=known, context=ctx)
    assert c.outcome is Outcome.WAIVED
    waived = [f for f in c.failures if f.waived_by]
    assert [f.test.name for f in waived] == ["test_04_trace", "test_05_pbs_trace"]
    assert waived[1].waived_by["ticket"].endswith("SOFTWARE-1704")
    # the cleanup failure alongside stays a cleanup failure, and does not spoil "waived"
    assert [f.category for f in c.failures if not f.waived_by] == [Outcome.CLEANUP]
    # Out of force (the log's own date decides, not today), or on another platform: fail.
    kf.write_text(KNOWN_FAILURES_2014.replace("2014-12-01", "2014-12-11"))
    assert (
        osgtest_log.classify(parsed["ignore"], known=load_known_failures([kf]), context=ctx).outcome
        is Outcome.FAIL
    )
    kf.write_text(KNOWN_FAILURES_2014)
    ctx_el = FailureContext(test="", module=None, platform="alma_9.x86_64", os="alma_9")
    assert (
        osgtest_log.classify(parsed["ignore"], known=load_known_failures([kf]), context=ctx_el).outcome
        is Outcome.FAIL
    )


def test_counts_sections_and_skips(parsed):
    f = parsed["fail"]
    assert f.summary.ran == 293 and f.summary.failures == 12 and f.summary.bad_skips == 2
    assert f.counts() == {
        "run": 293,
        "ok": 266,
        "failed": 12,
        "error": 0,
        "bad_skips": 2,
        "ok_skips": 13,
        "timeouts": 0,
    }
    assert len(f.tests) == 293 and len(f.problems) == 12
    # nested unittest runs in the detailed log (osg-configure's "Ran 220 tests", its
    # "FAIL: testServiceList (test_condor.TestCondor)") are not this run's results
    assert all(p.test.module and p.test.module.startswith(("test_", "special_")) for p in f.problems)
    assert not any(p.test.name == "testServiceList" for p in f.problems)
    assert [s.test.name for s in f.bad_skips] == ["test_07_rfc_voms_proxy_info", "test_08_voms_proxy_check"]
    assert f.bad_skips[0].reason == "no proxy"
    assert len(f.ok_skips) == 13 and f.ok_skips[0].reason == "Non-EL7 release"
    assert f.problems[0].message == "AssertionError: Run voms-proxy-init"
    assert "STANDARD OUTPUT" in f.problems[0].detail
    assert f.start_time == "2014-12-12 04:37:51" and f.date == dt.date(2014, 12, 12)
    p = parsed["pass"]
    assert p.summary.ok and p.summary.ok_skips == 30 and not p.problems and p.alarm is None
    c = parsed["cleanup"]
    assert c.counts()["ok_skips"] == 220 and len(c.ok_skips) == 220
    # "... SKIPPED (missing tomcat5 ...) ... ok" lines and a docstring-named test count too
    assert sum(1 for t in c.tests if t.status == "okskip") == 220
    assert any(t.test.name == "setup system library path" and t.test.module is None for t in c.tests)


def test_python312_ids_parse_the_same(parsed):
    text = (RESULTS_LOGS / "fail.log").read_text(errors="replace")
    new = osgtest_log.parse(py312_log(text))
    assert "(osgtest.tests.special_user.TestUser.test_01_add_user)" in py312_log(text)
    old = parsed["fail"]
    assert [(t.test, t.status) for t in new.tests] == [(t.test, t.status) for t in old.tests]
    assert [p.test for p in new.problems] == [p.test for p in old.problems]
    assert new.counts() == old.counts()


def test_alarm_timeout_and_running_test():
    p = osgtest_log.parse(alarm_log((RESULTS_LOGS / "pass.log").read_text()))
    assert p.summary is None
    assert p.alarm is not None and p.alarm.time == "2014-12-15 08:35:28"
    assert p.alarm.test.name == "test_04_trace" and p.alarm.test.module == "test_55_condorce"
    assert p.unfinished.name == "test_04_trace"
    c = osgtest_log.classify(p)
    assert c.outcome is Outcome.TIMEOUT and "test_04_trace" in c.reason


def test_yum_timeout_marker():
    text = (
        (RESULTS_LOGS / "install.log")
        .read_text(errors="replace")
        .replace(
            "AssertionError: Command failed", "AssertionError: Retries terminated after timeout period", 1
        )
    )
    p = osgtest_log.parse(text)
    assert p.yum_timeout
    c = osgtest_log.classify(p)
    assert c.outcome is Outcome.INSTALL and "yum timed out" in c.reason


def test_component_tags_group_ok_skips(tags):
    log = (
        "test_01_start (osgtest.tests.test_100_condor.TestStart) ... okskip\n"
        "test_02_x (osgtest.tests.test_410_jobs.TestJobs) ... okskip\n"
        "test_03_y (osgtest.tests.test_410_jobs.TestJobs) ... ok\n"
        "\n" + "-" * 70 + "\nRan 3 tests in 1.0s\n\nOK(okSkips=2)\n"
    )
    c = osgtest_log.classify(osgtest_log.parse(log), tags=tags)
    assert c.outcome is Outcome.PASS
    assert c.ok_skips_by_tag == {"htcondor": 2, "globus": 1, "pbs": 1, "htcondor-ce": 1}


def test_component_tags_reach_the_fixture_logs_old_module_names(tags):
    """The fixture logs name modules the old way (test_45_xrootd); the tags file the new way."""
    assert tags.for_module("test_100_condor") == ("htcondor",)  # exact
    assert tags.for_module("test_45_xrootd") == ("xrootd",)  # renumbered: 450
    assert tags.for_module("test_41_jobs") == ("globus", "htcondor", "pbs", "htcondor-ce")
    assert tags.for_module("test_48_myproxy") == ("globus",)  # by name: 220/403/770
    assert tags.for_module("test_54_gratia") == ()  # gone from osg-test
    failed = osgtest_log.classify(
        osgtest_log.parse((RESULTS_LOGS / "fail.log").read_text(errors="replace")), tags=tags
    )
    assert any(f.tags for f in failed.failures), "the fixture's failures carry their components"
    passed = osgtest_log.classify(
        osgtest_log.parse((RESULTS_LOGS / "pass.log").read_text(errors="replace")), tags=tags
    )
    assert passed.ok_skips_by_tag, "the fixture's ok-skips are grouped by component"


# ------------------------------------------------------------------------------ known failures
def test_known_failures_errors_point_at_the_line(tmp_path):
    kf = tmp_path / "kf.yaml"
    kf.write_text("- [test_a, test_mod, 2014-12-01, 2015-01-14]\n- [test_b, test_mod, 2015-02-01]\n")
    with pytest.raises(UserError, match="4 items") as e:
        load_known_failures([kf])
    assert str(e.value.where).endswith("kf.yaml:2:3")
    kf.write_text("- test: test_a\n  expires: soon\n")
    with pytest.raises(UserError, match="date") as e:
        load_known_failures([kf])
    assert ":2:" in str(e.value.where)
    kf.write_text("- test: test_a\n  tikcet: x\n")
    with pytest.raises(UserError, match="unknown key 'tikcet'"):
        load_known_failures([kf])
    kf.write_text("- test: test_a\n  message: '(['\n")
    with pytest.raises(UserError, match="regular expression"):
        load_known_failures([kf])


def test_known_failure_matching_and_review(tmp_path):
    kf = tmp_path / "kf.yaml"
    kf.write_text(
        "- test: 'test_0?_trace'\n  module: test_55_condorce\n  label: 'XRoot*'\n"
        "  message: collector\n  expires: 2030-01-01\n"
        "- [test_old, test_mod, 2014-01-01, 2014-02-01]\n"
    )
    known = load_known_failures([kf])
    ctx = FailureContext(
        test="test_04_trace",
        module="test_55_condorce",
        label="XRootD",
        message="Failed ping of collector",
        date=dt.date(2026, 1, 1),
    )
    assert known.match(ctx) is known.entries[0]
    assert known.match(FailureContext(**{**ctx.__dict__, "label": "Condor"})) is None
    assert known.match(FailureContext(**{**ctx.__dict__, "message": "other"})) is None
    assert known.match(FailureContext(**{**ctx.__dict__, "kind": "ERROR"})) is None
    passing = {
        ("test_04_trace", "test_55_condorce"): [
            FailureContext(
                test="test_04_trace",
                module="test_55_condorce",
                platform="el9",
                label="XRootD",
                date=dt.date(2026, 1, 1),
            )
        ]
    }
    warnings = review(known, dt.date(2026, 1, 2), passing)
    assert any("test_old" in w and "expired on 2014-02-01" in w and "kf.yaml:6" in w for w in warnings)
    assert any("now passes on el9" in w and "kf.yaml:1" in w for w in warnings)


# ------------------------------------------------------------------------------ results.json
def test_analyze_run_every_situation(results_run):
    r, want = results_run
    doc = results.analyze_run(r.dir)
    assert doc.SCHEMA == "osgtest-dag/results" and doc.VERSION == 1
    got = {c["serial"]: c["outcome"] for c in doc.cells}
    assert got == want
    assert json.loads((r.dir / "results.json").read_text()) == doc.to_json()
    assert not list(r.dir.glob(".results.json*"))  # written atomically, no leftovers
    by = {c["serial"]: c for c in doc.cells}
    ok = by[r.serial("rocky_8.x86_64", "XRootD")]
    assert ok["counts"] == {
        "run": 293,
        "ok": 263,
        "failed": 0,
        "error": 0,
        "bad_skips": 0,
        "ok_skips": 30,
        "timeouts": 0,
    }
    assert ok["platform"] == {
        "id": "rocky_8.x86_64",
        "name": "Rocky 8 (x86_64)",
        "os": "rocky_8",
        "family": "el",
        "distro": "rocky",
        "major": 8,
        "arch": "x86_64",
    }
    assert ok["source"]["display"] == "24: osg (opensciencegrid:master)"
    assert ok["package_versions"] == {"osg-xrootd-standalone": "24-1.el8"}
    assert ok["packages_installed"] == {"osg-xrootd-standalone": "24-1.el8", "xrootd": "5.7.1-1.el8"}
    assert ok["durations"]["test"] == 90.0 and ok["durations"]["total"] > 0
    assert ok["logs"]["main"] == f"cells/{ok['serial']}/output/test.log"
    assert len(ok["tests"]) == 293 and ok["tests"][0] == [
        "special_certs",
        "TestCert",
        "test_01_install_ca_and_crl",
        "ok",
    ]
    failing = by[r.serial("rocky_8.x86_64", "Condor")]
    assert len(failing["failures"]) == 12 and len(failing["bad_skips"]) == 2
    # the condorce failures are waived even in this failing cell; the rest are not
    assert sum(1 for f in failing["failures"] if f["waived_by"]) == 2
    assert failing["failures"][0]["tags"] == ["authentication"] and failing["failures"][0]["line"] == 296
    timeout = by[r.serial("rocky_9.aarch64", "XRootD", update=True)]
    assert timeout["timeout"] == {"test": "test_55_condorce.test_04_trace", "at": "2014-12-15 08:35:28"}
    alma = by[r.serial("alma_10.x86_64", "XRootD")]
    assert alma["image_digest"] == "abc123" and alma["image"]["builder"] == "oz"
    infra = by[r.serial("rocky_9.aarch64", "Condor")]
    assert infra["attempts"] == 3 and infra["reason"] == "no result disk came back (after 3 attempts)"
    missing = by[r.serial("rocky_9.aarch64", "Condor", update=True)]
    assert missing["reason"] and missing["counts"]["run"] == 0
    backed = by[r.serial("alma_10.x86_64", "Condor")]
    assert "backing file" in backed["reason"]
    # run-level counts
    c = doc.counts
    assert c["by_outcome"] == {
        "pass": 4,
        "cleanup": 1,
        "waived": 1,
        "fail": 1,
        "update": 1,
        "install": 2,
        "timeout": 2,
        "infra": 4,
        "missing": 1,
    }
    assert [g["key"] for g in c["by_os"]] == ["debian_12", "rocky_8", "rocky_9", "alma_10"]
    assert {g["key"]: g["cells"] for g in c["by_package_set"]} == {"Condor": 8, "Hello": 1, "XRootD": 8}
    assert sum(g["cells"] for g in c["by_source"]) == 17
    assert doc.worst is Outcome.MISSING
    assert doc.known_failures.entries == 2


def test_known_failure_warnings_in_results(results_run):
    r, _ = results_run
    # In the rocky_8 cell (pass.log, 2014-12-15) test_04_trace ran and passed while waived.
    log = r.dir / "cells" / r.serial("rocky_8.x86_64", "XRootD") / "output" / "test.log"
    log.write_text(
        log.read_text().replace(
            "test_04_trace (osgtest.tests.test_55_condorce.TestCondorCE) ... okskip",
            "test_04_trace (osgtest.tests.test_55_condorce.TestCondorCE) ... ok",
        )
    )
    doc = results.analyze_run(r.dir, today=dt.date(2014, 12, 20))
    w = doc.known_failures.warnings
    assert any("test_04_trace" in x and "now passes" in x and "rocky_8.x86_64" in x for x in w)
    assert not any("expired" in x for x in w)


def test_results_schema_checked(tmp_path, results_run):
    r, _ = results_run
    with pytest.raises(UserError, match="no results.json"):
        ResultsDocument.read(r.dir)
    results.analyze_run(r.dir)
    doc = json.loads((r.dir / "results.json").read_text())
    doc["version"] = 2
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="version 2"):
        ResultsDocument.read(tmp_path / "r.json")


def test_package_lists():
    rpm = "bash\t(none):5.1.8-9.el9\tx86_64\nglibc\t0:2.34-100.el9\tx86_64\nglibc\t0:2.34-100.el9\ti686\n"
    assert guest_output.parse_package_list(rpm) == {
        "bash": "5.1.8-9.el9",
        "glibc.x86_64": "2.34-100.el9",
        "glibc.i686": "2.34-100.el9",
    }
    deb = "hello\t2.10-3\tamd64\nlibc6:amd64\t2.36-9\tamd64\n"
    assert guest_output.parse_package_list(deb) == {"hello": "2.10-3", "libc6": "2.36-9"}
    assert guest_output.parse_package_list("condor-8.2.3-1.3.osg32.el5.x86_64\n") == {
        "condor": "8.2.3-1.3.osg32.el5"
    }


def test_job_log_host_and_hold(results_run):
    """The run's HTCondor job log: the execute host, and a VM held at its wall-clock limit."""
    r, want = results_run
    s = r.serial("rocky_9.aarch64", "Condor", update=True)  # no result at all so far
    p = r.serial("rocky_8.x86_64", "XRootD")
    (r.dir / "logs" / "jobs.log").write_text(f"""\
000 (41.000.000) 2026-11-21 22:00:00 Job submitted from host: <127.0.0.1:9618?addrs=127.0.0.1-9618>
    DAG Node: TestRun{s}
...
001 (41.000.000) 2026-11-21 22:00:05 Job executing on host: <10.0.0.5:9618?addrs=10.0.0.5-9618&alias=exec01.example.org>
	SlotName: slot1_1@exec01.example.org
...
012 (41.000.000) 2026-11-22 02:00:05 Job was held.
	osgtest-dag: VM ran longer than 14400 s
	Code 3 Subcode 1
...
000 (42.000.000) 2026-11-21 22:00:00 Job submitted from host: <127.0.0.1:9618?addrs=127.0.0.1-9618>
    DAG Node: TestRun{p}
...
001 (42.000.000) 2026-11-21 22:00:07 Job executing on host: <10.0.0.6:9618?addrs=10.0.0.6-9618&alias=exec02.example.org>
...
005 (42.000.000) 2026-11-21 22:30:00 Job terminated.
	(1) Normal termination (return value 0)
...
""")
    by = {c["serial"]: c for c in results.analyze_run(r.dir).cells}
    assert (
        by[s]["outcome"] == "timeout"
        and "VM job held: osgtest-dag: VM ran longer than 14400 s" in by[s]["reason"]
    )
    assert by[s]["host"] == "exec01.example.org" and by[s]["attempts"] == 1
    assert by[p]["host"] == "exec02.example.org" and by[p]["outcome"] == want[p]


def test_output_symlinks_are_never_followed(results_run):
    """An output extracted by other means (copy_out recreates links) must not leak host files."""
    r, _ = results_run
    s = r.serial("rocky_8.x86_64", "XRootD")
    out = r.dir / "cells" / s / "output"
    (out / "test.log").unlink()
    (out / "test.log").symlink_to("/etc/shadow")
    (out / "packages-end.txt").unlink()
    (out / "packages-end.txt").symlink_to("/etc/passwd")
    (out / "result.json").unlink()
    (out / "result.json").symlink_to("/etc/passwd")
    doc = results.analyze_run(r.dir)
    text = json.dumps(doc.to_json())
    assert "root:" not in text and "/bin/bash" not in text
    cell = next(c for c in doc.cells if c["serial"] == s)
    assert cell["outcome"] == "infra" and cell["packages_installed"] == {}
