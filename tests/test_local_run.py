"""Real local runs: VMs boot under qemu (TCG here) through the generated workflow."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

MATRIX = """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
    selinux: false
    # and the scratch disk (the default 8192 MB disk is 5 GiB more than the image's): a file
    # larger than the root's free space fits in /var/tmp, and hello went to /usr's overlay
    test_command: >-
      hello | grep -q 'Hello, world!' &&
      free=$(df -Pm / | awk 'NR == 2 {print $4}') &&
      fallocate -l $((free + 256))M /var/tmp/larger-than-the-root &&
      df -Pm / /var/tmp /usr &&
      test "$(findmnt -n -o FSTYPE /usr)" = overlay &&
      test -x /run/osgtest-scratch/trees/usr/upper/bin/hello
  - label: Failing test
    packages: [hello]
    selinux: false
    test_command: hello --version | grep -q 'no such version'
  - label: Missing package
    packages: [osgtest-no-such-package]
    selinux: false
    test_command: 'true'
vm: {memory: 1024, vcpus: 1}   # -j 2 on two cores: a vCPU per core
test_timeout: 300
"""

HUNG = """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Hangs
    packages: [hello]
    selinux: false
    test_command: sleep 100000
  - label: Stuck past its own limit
    packages: [hello]
    selinux: false
    test_command: kill -STOP $PPID; sleep 100000   # stops the guest's `timeout`: only the host's limit ends it
vm: {memory: 1024, vcpus: 1}
test_timeout: 20
"""


def _generate(cli, tmp_path, text, name, image, *extra):
    p = tmp_path / f"{name}-params"
    p.mkdir()
    (p / "m.yaml").write_text(text)
    run = tmp_path / name
    r = cli("generate", p, "-o", run, "--image-dir", image.parent, *extra)
    assert r.returncode == 0, r.stderr
    return run


def _vm_starts(run: Path, serial: str) -> int:
    f = run / "cells" / serial / "local-vm.json"
    return len(f.read_text().splitlines()) if f.exists() else 0


def test_matrix_runs_resumes_and_reports(tmp_path, cli, debian12_image):
    run = _generate(cli, tmp_path, MATRIX, "run", debian12_image)
    exe = Path(sys.executable).parent / "osgtest-dag"
    # start, kill -9 once the first cell's VM node has finished, then resume
    p = subprocess.Popen(
        [str(exe), "run", str(run), "-j", "2", "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    state = run / "matrix.dag.local-state.json"
    deadline = time.time() + 600
    killed_after = None
    while time.time() < deadline and p.poll() is None:
        if state.exists():
            try:
                nodes = json.loads(state.read_text())["nodes"]
            except ValueError:
                nodes = {}
            done = [n for n, s in nodes.items() if n.startswith("TestRun") and s["status"] == "done"]
            if done:
                killed_after = done
                os.killpg(p.pid, signal.SIGKILL)  # the executor and what it started
                break
        time.sleep(0.5)
    p.wait()
    assert killed_after, "no VM node finished before the deadline"
    finished_serials = [n[len("TestRun") :] for n in killed_after]
    starts_before = {s: _vm_starts(run, s) for s in ("000", "001", "002")}

    r = cli("run", run, "-j", "2", "--no-progress")  # the killed run's lock is stale: taken over
    assert r.returncode == 1, r.stdout + r.stderr  # product failures (fail, install), no infra
    for s in finished_serials:  # a finished cell never boots again
        assert _vm_starts(run, s) == starts_before[s] == 1
    summary = json.loads((run / "matrix-summary.json").read_text())
    got = {c["serial"]: (c["outcome"], c["exit_code"]) for c in summary["cells"]}
    assert got == {"000": ("pass", 0), "001": ("fail", 1), "002": ("install", 2)}
    # POST semantics: product failures are done nodes, never retried
    for s in ("000", "001", "002"):
        post = json.loads((run / "cells" / s / "post-vm.json").read_text())["decisions"]
        assert post[-1]["verdict"] == "done" and post[-1]["exit"] == 0
    st = json.loads((run / "matrix.dag.local-state.json").read_text())["nodes"]
    assert st["MatrixFinal"]["status"] == "done"
    assert all(st[f"TestRun{s}"]["retries"] == 0 for s in ("000", "001", "002"))
    # the outer workflow ran: report written, extraction done, disks cleaned
    assert "pass" in (run / "report.txt").read_text()
    assert (run / "cells" / "000" / "output" / "result.json").is_file()
    assert not (run / "cells" / "000" / "io-000.qcow2").exists()
    assert not (run / "cells" / "000" / "scratch-000.qcow2").exists()
    # the cell's scratch disk, under the trees before the install (its test proved the space)
    env_log = (run / "cells" / "000" / "output" / "environment.log").read_text()
    assert "scratch disk: /dev/vdc (OSGTEST-SCRATCH, 5120 MiB) on /run/osgtest-scratch" in env_log, env_log
    for tree in ("/usr", "/opt", "/var", "/tmp"):
        assert f"{tree}: an overlay, written to the scratch disk" in env_log, env_log
    test_log = (run / "cells" / "000" / "output" / "test.log").read_text()
    # df -Pm: / is the image's root; /var/tmp is in /var's overlay, on the 5 GiB scratch disk,
    # which holds the file larger than the root's free space
    (root_free,) = re.findall(r"^/dev/vda1 +\d+ +\d+ +(\d+) .* /$", test_log, re.MULTILINE)
    (size, used) = re.findall(r"^osgtest-scratch +(\d+) +(\d+) .* /var$", test_log, re.MULTILINE)[0]
    assert int(size) > 4500 and int(used) > int(root_free), test_log
    assert (run / "cells" / "000" / "console.0.1.log").stat().st_size > 0


def test_hung_tests_keep_their_results(tmp_path, cli, debian12_image):
    """A test that never ends is ended by the guest's own limit (20 s): one start, a timeout,
    its install phase ok. One whose guest cannot end it (its `timeout` stopped) is killed at
    the host's limit in its test phase: not started again, its disk kept, its finished phases
    reported, a timeout that is not retried."""
    # the guest reaches its test phase 40-70 s after start under TCG (two VMs on two cores):
    # 140 s leaves room for the first cell's 20 s limit before the host's ends the second
    run = _generate(cli, tmp_path, HUNG, "hung", debian12_image, "--max-wall", "140")
    exe = Path(sys.executable).parent / "osgtest-dag"
    t0 = time.time()
    r = subprocess.run(  # longer than the `cli` fixture's 600 s: the host's limit is part of it
        [str(exe), "run", str(run), "-j", "2", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    wall = time.time() - t0
    assert wall < 900, r.stdout + r.stderr
    assert r.returncode == 3, r.stdout + r.stderr  # timeouts: no verdict on the cells
    doc = json.loads((run / "results.json").read_text())
    cells = {c["serial"]: c for c in doc["cells"]}
    for serial in ("000", "001"):
        cell = cells[serial]
        assert cell["outcome"] == "timeout", (serial, cell["reason"], r.stdout + r.stderr)
        phases = {p["name"]: p["status"] for p in cell["phases"]}
        assert phases["install"] == "ok" and phases["repositories"] == "ok", phases
        vm = [json.loads(x) for x in (run / "cells" / serial / "local-vm.json").read_text().splitlines()]
        assert len(vm) == 1, vm  # one VM start
        post = json.loads((run / "cells" / serial / "post-vm.json").read_text())["decisions"]
        assert len(post) == 1 and post[0]["exit"] == 0, post  # a done node: not retried
        assert (run / "cells" / serial / "output" / "install.log").is_file()
    # the guest's own limit: the test exited 124 and the VM powered off with its result
    assert not vm_record(run, "000")["timed_out"]
    assert cells["000"]["exit_code"] == 1 and "timed out (exit 124)" in cells["000"]["reason"]
    test_phase = next(p for p in cells["000"]["phases"] if p["name"] == "test")
    assert test_phase["exit_code"] == 124
    # the host's limit: killed in its test phase, its disk back, its console kept
    stuck = vm_record(run, "001")
    assert stuck["timed_out"] and stuck["returncode"] is None
    assert (run / "cells" / "001" / stuck["console"]).stat().st_size > 0
    assert "time limit during test" in cells["001"]["reason"], cells["001"]["reason"]
    st = json.loads((run / "matrix.dag.local-state.json").read_text())["nodes"]
    assert st["TestRun001"]["status"] == "done" and st["TestRun001"]["retries"] == 0
    assert st["ProcessResult001"]["status"] == "done"


def vm_record(run: Path, serial: str) -> dict:
    (last,) = [json.loads(x) for x in (run / "cells" / serial / "local-vm.json").read_text().splitlines()]
    return last
