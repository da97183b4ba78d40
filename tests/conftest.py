"""Shared test fixtures. Sections: paths and catalogs; guest fixtures (images, disks, VMs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures" / "vm-test-runs"
PARAMS_D = FIXTURES / "parameters.d"


@pytest.fixture(scope="session")
def params_d() -> Path:
    if not PARAMS_D.is_dir():
        pytest.fail(f"the shared fixtures are missing: {PARAMS_D}")
    return PARAMS_D


@pytest.fixture(scope="session")
def catalog():
    from osgtest_dag.plan.catalog import Catalog

    return Catalog.load(image_dir="/images")


@pytest.fixture
def cli(tmp_path):
    """Run the real console script in a subprocess: exit code, stdout, stderr."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "osgtest-dag"

    def run(*args, cwd=None, env=None, timeout=600):
        full_env = dict(os.environ, OSGTEST_DAG_IMAGES="/images")
        full_env.update(env or {})
        return subprocess.run(
            [str(exe), *map(str, args)],
            capture_output=True,
            text=True,
            cwd=cwd or tmp_path,
            env=full_env,
            timeout=timeout,
        )

    return run


# --- guest fixtures ---
# Base images, cell input directories and IO disks for the guest-side tests (test_iodisk.py,
# test_images.py, test_guest_boot.py, test_payload.py). The debian_12 image is built once
# into the persistent image store ($OSGTEST_DAG_IMAGES or ~/.cache/osgtest-dag/images) and
# reused by later runs while its inputs do not change.

GUEST_PLATFORM = "debian_12.x86_64"


def guest_cell_config(
    serial: str = "001",
    *,
    packages=("hello",),
    test_command="hello",
    apt_sources=("deb http://deb.debian.org/debian bookworm main",),
    update_apt_sources=None,
    timeout: int = 600,
    network_retries: int = 3,
    platform_id: str = GUEST_PLATFORM,
) -> dict:
    """A cell.json document (docs/contracts.md §1) for a Debian cell."""
    from osgtest_dag.plan.catalog import Catalog

    plat = Catalog.load().platform(platform_id)
    pj = {
        "id": plat.id,
        "os": plat.os,
        "family": plat.family,
        "distro": plat.distro,
        "major": plat.major,
        "arch": plat.arch,
        "name": plat.name,
        "codename": plat.codename,
        "image": plat.image,
        "image_format": plat.image_format,
    }
    update = None
    if update_apt_sources is not None:
        update = {"setup_packages": [], "enable": [], "apt_sources": list(update_apt_sources)}
    return {
        "schema": "osgtest-dag/cell",
        "version": 1,
        "serial": serial,
        "platform": pj,
        "source": {
            "raw": "main" + (" > updates" if update else ""),
            "test_source": None,
            "series": "stable",
            "repos": ["main"],
            "update_series": None,
            "update_repos": ["updates"] if update else [],
        },
        "label": "guest-test",
        "packages": list(packages),
        "selinux": False,
        "repositories": {
            "initial": {"setup_packages": [], "enable": [], "apt_sources": list(apt_sources)},
            "update": update,
        },
        "test": {
            "command": test_command,
            "timeout": timeout,
            "osg_test": False,
            "kind": "install-only" if test_command is None else "command",  # a Debian cell
        },
        "vm": {"memory": 1024, "vcpus": 1, "disk": 4096},
        "network": {"check_host": "deb.debian.org", "retries": network_retries},
        "retries": {"count": 2, "backoff": 3},
        "nightly": False,
        "param_file": "guest-test.yaml",
    }


@pytest.fixture
def make_cell_input(tmp_path):
    """Factory: write a cell input directory (cell.json + cell.env via cellconfig)."""
    from osgtest_dag.generate import cellconfig
    from osgtest_dag.model.cell import CellConfig

    def make(name: str = "cell", **kwargs) -> Path:
        cfg = CellConfig.from_json(guest_cell_config(**kwargs), "guest_cell_config")
        return cellconfig.write_input_dir(cfg, tmp_path / name / "input")

    return make


def extract_output(disk: Path, dest_dir: Path) -> Path:
    """`output/` of a returned IO disk -> `dest_dir/output`, through the hardened extractor the
    ProcessResult node uses; a refused or unreadable disk fails the test with its report."""
    from osgtest_dag.analyze.extract import ExtractJob, extract_disks

    dest = Path(dest_dir) / "output"
    (report,) = extract_disks([ExtractJob(Path(disk), dest)])
    assert report["ok"], report
    return dest


@pytest.fixture(scope="session")
def guest_image_store() -> Path:
    from osgtest_dag.base.paths import default_image_dir

    store = default_image_dir()
    store.mkdir(parents=True, exist_ok=True)
    return store


@pytest.fixture(scope="session")
def debian12_image(guest_image_store) -> Path:
    """The debian_12 base image, built with the local builder if missing or stale."""
    from osgtest_dag.guest import image

    return image.build_image(GUEST_PLATFORM, guest_image_store, builder="local").image.path


@pytest.fixture(scope="session")
def debian13_image(guest_image_store) -> Path:
    """The debian_13 (trixie) base image, as debian12_image."""
    from osgtest_dag.guest import image

    return image.build_image("debian_13.x86_64", guest_image_store, builder="local").image.path


# --- end guest fixtures ---


# --- condor fixtures ---
# The HTCondor-side commands (cli_condor, cli_pool) on a click group of their own, and the
# test pool (osgtest_dag/pool.py) for the tests marked `pool`: brought up once per session if
# it was not up (and taken down again at the end), shared otherwise.


def pytest_configure(config):
    config.addinivalue_line("markers", "pool: runs on the real HTCondor test pool (root; slow)")


# `make test` runs two workers (pytest-xdist, --dist loadgroup), so that two VMs run at once on
# this machine's two cores. Two groups each stay on one worker, in order: "pool" (the tests of
# the HTCondor test pool: they share its session-wide fixture, which the worker that started
# the pool stops at its end) and "vms" (the local VM tests, and those whose timing a busy
# machine could upset). xdist hands the two groups to the two workers first, then the other
# tests to whichever is free. Within "vms", the tests that boot two or more VMs at once come
# last, when the pool's VM jobs are likely done.
SERIAL_FILES = {"test_vm_watchdog.py", "test_executor.py", "test_run_guards.py"}
MULTI_VM_FILES = {"test_guest_boot.py", "test_local_run.py", "test_cluster_vm.py"}


def xdist_group_of(item) -> str | None:
    if item.get_closest_marker("pool"):
        return "pool"
    if item.path.name in SERIAL_FILES or item.get_closest_marker("vm") or item.get_closest_marker("slow"):
        return "vms"
    return None


# tryfirst: xdist's own hook turns the group marker into the node id's `@group` suffix, which is
# what keeps a group on one worker; a marker added after it would be ignored.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    groups = {item.nodeid: xdist_group_of(item) for item in items}
    items.sort(key=lambda item: groups[item.nodeid] == "vms" and item.path.name in MULTI_VM_FILES)
    for item in items:
        if groups[item.nodeid]:
            item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """(xdist's controller) Stop before any test runs when xdist did not tag the group: the
    VM tests would be spread over both workers and boot side by side, each slower than its
    limits allow. pytest 9.2 changed node ids under xdist 3.8 (pytest-dev/pytest-xdist#1386)."""
    if node.config.getvalue("dist") != "loadgroup":
        return
    loose = [i for i in ids if i.split("::")[0].rsplit("/", 1)[-1] in SERIAL_FILES and "@" not in i]
    if loose:
        pytest.exit(
            f"pytest-xdist did not put the VM tests in their groups (e.g. {loose[0]}); install the "
            "versions pyproject.toml's test extra names (`make setup`)",
            returncode=4,
        )


def _condor_group():
    import click

    from osgtest_dag.cli import condor as cli_condor
    from osgtest_dag.cli import pool as cli_pool
    from osgtest_dag.cli.main import _Group

    @click.group(cls=_Group)
    @click.pass_context
    def group(ctx):
        ctx.ensure_object(dict)

    cli_condor.register(group)
    cli_pool.register(group)
    return group


def condor_cli(*args, env=None):
    """Invoke `osgtest-dag <args>` for the condor/pool commands in-process (click's CliRunner)."""
    from click.testing import CliRunner

    return CliRunner().invoke(_condor_group(), [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture(scope="session")
def test_pool():
    """The osgtest-dag test pool, up. Skips (with the reason) only when not root."""
    if os.geteuid() != 0:
        pytest.skip("the test pool needs root (chroot, mounts, daemons); run the suite as root")
    from osgtest_dag.devpool import pool
    from osgtest_dag.devpool.chroot import Pool

    p = Pool()
    was_up = pool.status(p).up
    info = pool.up(p)
    yield p, info
    if not was_up and not os.environ.get("OSGTEST_DAG_KEEP_POOL"):
        pool.down(p)


@pytest.fixture
def pool_workdir(test_pool, request):
    """A fresh directory inside the pool's work directory (same path inside and out)."""
    import tempfile

    p, _ = test_pool
    p.work.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=f"{request.node.name[:40]}-", dir=p.work))
    yield d
    import shutil

    if not os.environ.get("OSGTEST_DAG_KEEP_POOL"):
        shutil.rmtree(d, ignore_errors=True)


# --- end condor fixtures ---


# --- results fixtures ---
# A real run directory (generated from parameter files) whose cells are filled in with what
# returned disks hold after extraction: result.json, osg-test logs (the real fixtures),
# package lists, post-vm.json and friends. Used by test_results.py and test_reports.py.

RESULTS_LOGS = FIXTURES / "osg-test-logs"
RESULTS_PARAMS = {
    "el.yaml": """\
platforms: [rocky_8.x86_64, rocky_9.x86_64, rocky_9.aarch64, alma_10.x86_64]
sources:
  - opensciencegrid:master; 24; osg
  - opensciencegrid:master; 24; osg > osg-testing
package_sets:
  - label: XRootD
    packages: [osg-xrootd-standalone]
  - label: Condor
    packages: [condor]
""",
    "deb.yaml": """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
    selinux: false
    test_command: hello
""",
}
RESULTS_PHASES = (
    "environment",
    "network",
    "hostname",
    "repositories",
    "install",
    "test",
    "update",
    "collect",
)
_FAILED_PHASE = {
    "test": "test",
    "install": "install",
    "update": "update",
    "repos": "repositories",
    "network": "network",
    "payload": "environment",
}
_EXIT = {"pass": 0, "test": 1, "install": 2, "update": 3, "repos": 4, "network": 5, "payload": 6}


class ResultsRun:
    """Fill a generated run directory's cells as the extractor would leave them."""

    def __init__(self, run_dir: Path):
        import json

        self.dir = Path(run_dir)
        self.cells = [json.loads(line) for line in (self.dir / "cells.jsonl").read_text().splitlines()]

    def serial(self, platform: str, label: str, update: bool = False) -> str:
        for c in self.cells:
            if (
                c["platform"]["id"] == platform
                and c["label"] == label
                and (">" in c["source"]["raw"]) == update
            ):
                return c["serial"]
        raise KeyError((platform, label, update))

    def out(self, serial: str) -> Path:
        d = self.dir / "cells" / serial / "output"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def file(self, serial: str, name: str, content) -> Path:
        p = self.out(serial) / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
        return p

    def guest(
        self,
        serial: str,
        status: str,
        *,
        test_exit: int | None = None,
        current_phase: str | None = None,
        started: str = "2014-12-12T04:30:00Z",
        message: str | None = None,
    ) -> dict:
        """A result.json as run-job writes it: phases up to the failing one, then skipped."""
        import json

        phases, failed, t = [], _FAILED_PHASE.get(status), 0
        for name in RESULTS_PHASES:
            if status == "running" and name == current_phase:
                break
            if failed and any(p["status"] == "failed" for p in phases) and name != "collect":
                phases.append(
                    {
                        "name": name,
                        "start": None,
                        "end": None,
                        "exit_code": None,
                        "status": "skipped",
                        "log": None,
                    }
                )
                continue
            code = 0
            if name == failed:
                code = test_exit if (test_exit is not None and name in ("test", "update")) else _EXIT[status]
            phases.append(
                {
                    "name": name,
                    "start": f"2014-12-12T04:{30 + t:02d}:00Z",
                    "end": f"2014-12-12T04:{31 + t:02d}:30Z",
                    "exit_code": code,
                    "status": "failed" if code else "ok",
                    "log": f"{name}.log",
                }
            )
            t += 2
        doc = {
            "schema": "osgtest-dag/guest-result",
            "version": 1,
            "serial": serial,
            "platform": None,
            "started": started,
            "finished": None if status == "running" else "2014-12-12T04:59:00Z",
            "current_phase": current_phase,
            "phases": phases,
            "status": status,
            "exit_code": _EXIT.get(status),
            "message": message,
        }
        self.file(serial, "result.json", json.dumps(doc, indent=1))
        return doc

    def osgtest_log(self, serial: str, fixture: str, phase: str = "test", text: str | None = None) -> Path:
        data = text if text is not None else (RESULTS_LOGS / fixture).read_text(errors="replace")
        return self.file(serial, f"{phase}.log", data)

    def post_vm(self, serial: str, decisions: list[dict]) -> None:
        import json

        d = self.dir / "cells" / serial
        d.mkdir(parents=True, exist_ok=True)
        (d / "post-vm.json").write_text(
            json.dumps(
                {
                    "schema": "osgtest-dag/post-vm",
                    "version": 1,
                    "decisions": [{"attempt": i, "exit": 1, **dec} for i, dec in enumerate(decisions)],
                }
            )
        )

    def packages(self, serial: str, start: dict, end: dict) -> None:
        for which, pk in (("start", start), ("end", end)):
            self.file(
                serial, f"packages-{which}.txt", "".join(f"{n}\t{v}\tx86_64\n" for n, v in sorted(pk.items()))
            )


def make_results_run(root: Path, name: str = "run", params: dict | None = None) -> ResultsRun:
    from osgtest_dag.generate import workflow
    from osgtest_dag.plan import matrix
    from osgtest_dag.plan.catalog import Catalog

    pdir = root / f"{name}-params"
    pdir.mkdir(parents=True, exist_ok=True)
    for fname, text in (RESULTS_PARAMS if params is None else params).items():
        (pdir / fname).write_text(text)
    cat = Catalog.load(image_dir="/images")
    m = matrix.build([pdir], cat)
    run = workflow.write_run(
        root / name,
        list(m.cells),
        cat,
        workflow.WorkflowOptions(tool="/opt/osgtest-dag"),
        param_files=list(m.files),
    )
    return ResultsRun(run)


def py312_log(text: str) -> str:
    """The same log as Python 3.12's unittest prints it: `name (module.Class.name)`."""
    import re

    return re.sub(r"^(\w+) \((osgtest\.tests\.\w+\.\w+)\)", r"\1 (\2.\1)", text, flags=re.M)


def alarm_log(text: str) -> str:
    """A log cut by osg-test's alarm in test_04_trace: no summary, the stack of the alarm."""
    lines = text.splitlines()
    cut = next(i for i, line in enumerate(lines) if line.startswith("test_04_trace "))
    head = lines[:cut] + ["test_04_trace (osgtest.tests.test_55_condorce.TestCondorCE) ... ", "", ""]
    detail_at = next(i for i, line in enumerate(lines) if line == "OSG-TEST LOG") - 1
    body = lines[detail_at : detail_at + 400]
    tail = [
        "",
        "message: 2014-12-15 08:35:28: ",
        "Caught alarm:",
        '  File "/usr/sbin/osg-test", line 300, in <module>',
        "    if run_tests(TESTS).wasSuccessful():",
        '  File "/usr/lib/python2.6/site-packages/osgtest/library/osgunittest.py", line 147, in run',
        "    testMethod()",
        '  File "/usr/lib/python2.6/site-packages/osgtest/tests/test_55_condorce.py", line 61, in test_04_trace',
        "    core.check_system(command, 'ce trace', user=True)",
        '  File "/usr/lib/python2.6/site-packages/osgtest/library/core.py", line 216, in check_system',
        "    status, stdout, stderr = system(command, user, stdin, shell=shell)",
        "",
    ]
    return "\n".join(head + body + tail) + "\n"


KNOWN_FAILURES_2014 = """\
# In force when the ignore.log run happened (the commented example of the shipped file, plus
# its PBS twin).
- [test_04_trace, test_55_condorce, 2014-12-01, 2015-01-14]
- test: test_05_pbs_trace
  module: test_55_condorce
  platform: 'rocky_*'
  ticket: https://opensciencegrid.atlassian.net/browse/SOFTWARE-1704
  start: 2014-12-01
  expires: 2015-01-14
"""


def populate_results_run(r: ResultsRun) -> dict[str, str]:
    """One cell per situation; returns serial -> the outcome each must get."""
    import json

    want = {}
    s = r.serial("rocky_8.x86_64", "XRootD")
    r.guest(s, "pass")
    r.osgtest_log(s, "pass.log")
    r.packages(
        s, {"bash": "5.1-2"}, {"bash": "5.1-2", "osg-xrootd-standalone": "24-1.el8", "xrootd": "5.7.1-1.el8"}
    )
    want[s] = "pass"
    s = r.serial("rocky_8.x86_64", "XRootD", update=True)
    r.guest(s, "test")
    r.osgtest_log(s, "update.log")
    want[s] = "update"
    s = r.serial("rocky_8.x86_64", "Condor")
    r.guest(s, "test")
    r.osgtest_log(s, "fail.log")
    want[s] = "fail"
    s = r.serial("rocky_8.x86_64", "Condor", update=True)
    r.guest(s, "test")
    r.osgtest_log(s, "install.log")
    want[s] = "install"
    s = r.serial("rocky_9.x86_64", "XRootD")
    r.guest(s, "test")
    r.osgtest_log(s, "cleanup.log")
    want[s] = "cleanup"
    s = r.serial("rocky_9.x86_64", "XRootD", update=True)
    r.guest(s, "test")
    r.osgtest_log(s, "ignore.log")
    want[s] = "waived"
    s = r.serial("rocky_9.x86_64", "Condor")
    r.guest(s, "install")
    r.file(s, "install.log", "Error: Unable to find a match: condor\n")
    want[s] = "install"
    s = r.serial("rocky_9.x86_64", "Condor", update=True)
    r.guest(s, "network", message="phase network failed with exit code 1")
    want[s] = "infra"
    s = r.serial("rocky_9.aarch64", "XRootD")
    r.guest(s, "running", current_phase="test")
    (r.dir / "cells" / s / "local-vm.json").write_text(
        json.dumps(
            {
                "schema": "osgtest-dag/local-vm",
                "version": 1,
                "node": f"TestRun{s}",
                "starts": 1,
                "timed_out": True,
                "returncode": -9,
            }
        )
        + "\n"
    )
    want[s] = "timeout"
    s = r.serial("rocky_9.aarch64", "XRootD", update=True)
    r.guest(s, "test", test_exit=1)
    r.osgtest_log(s, "", text=alarm_log((RESULTS_LOGS / "pass.log").read_text()))
    want[s] = "timeout"
    s = r.serial("rocky_9.aarch64", "Condor")
    r.post_vm(
        s,
        [
            {"attempt": i, "verdict": "infra", "reason": "no result disk came back", "job_exit": 1}
            for i in range(3)
        ],
    )
    want[s] = "infra"
    want[r.serial("rocky_9.aarch64", "Condor", update=True)] = "missing"
    s = r.serial("alma_10.x86_64", "XRootD")
    r.guest(s, "pass")
    r.osgtest_log(s, "pass.log")
    r.file(
        s,
        "environment.log",
        "== date\nx\n== image\nplatform=alma_10.x86_64\nbuilder=oz\ninputs_hash=abc123\n\n== uname\nLinux\n",
    )
    want[s] = "pass"
    s = r.serial("alma_10.x86_64", "XRootD", update=True)
    r.file(s, "result.json", "{not json")
    want[s] = "infra"
    s = r.serial("alma_10.x86_64", "Condor")
    (r.dir / "cells" / s).mkdir(parents=True, exist_ok=True)
    (r.dir / "cells" / s / "extraction.json").write_text(
        json.dumps(
            {
                "schema": "osgtest-dag/extraction",
                "version": 1,
                "ok": False,
                "error": "the qcow2 has a backing file (/etc/passwd): refused",
            }
        )
    )
    want[s] = "infra"
    s = r.serial("alma_10.x86_64", "Condor", update=True)
    r.guest(s, "pass")
    r.osgtest_log(s, "", text=py312_log((RESULTS_LOGS / "pass.log").read_text()))
    want[s] = "pass"
    if any(c["platform"]["id"] == "debian_12.x86_64" for c in r.cells):
        s = r.serial("debian_12.x86_64", "Hello")
        r.guest(s, "pass")
        r.file(s, "test.log", "+ sh -c hello\nHello, world!\ntest exit code: 0\n")
        want[s] = "pass"
    (r.dir / "known-failures.yaml").write_text(KNOWN_FAILURES_2014)
    (r.dir / "component-tags.yaml").write_text((FIXTURES / "component-tags.yaml").read_text())
    return want


@pytest.fixture
def results_run(tmp_path):
    """(ResultsRun, expected outcome per serial) for a populated 17-cell run."""
    r = make_results_run(tmp_path)
    return r, populate_results_run(r)


# --- end results fixtures ---
