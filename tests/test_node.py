"""DAG node commands that need no VM: the POST script's decisions without a result disk."""

from __future__ import annotations

import json


def test_post_vm_accepts_negative_return_and_asks_for_retry(tmp_path, cli):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "m.yaml").write_text(
        "platforms: [debian_12.x86_64]\nsources: ['stable; main']\n"
        "package_sets: [{label: A, packages: [hello], test_command: hello}]\n"
    )
    assert cli("generate", tmp_path / "p", "-o", tmp_path / "run").returncode == 0
    cell = tmp_path / "run" / "cells" / "000"
    cell.mkdir()
    (cell / "cell.json").write_text((tmp_path / "run" / "cells.jsonl").read_text())
    # the job was removed ($RETURN -1004) and nothing came back: infrastructure, retry
    r = cli("node", "post-vm", "TestRun000", "-1004", "0", "2", cwd=tmp_path / "run")
    assert r.returncode == 1, r.stderr
    (decision,) = json.loads((cell / "post-vm.json").read_text())["decisions"]
    assert decision["verdict"] == "infra" and decision["job_exit"] == -1004
    assert decision["reason"] == "no result disk came back"
    # a VM the local executor killed at its limit is a time-out
    (cell / "local-vm.json").write_text(
        json.dumps(
            {
                "schema": "osgtest-dag/local-vm",
                "version": 1,
                "node": "TestRun000",
                "starts": 1,
                "wall_s": 90.2,
                "timed_out": True,
                "console": "console.0.1.log",
            }
        )
        + "\n"
    )
    r = cli("node", "post-vm", "TestRun000", "-1004", "1", "2", cwd=tmp_path / "run")
    assert r.returncode == 1
    history = json.loads((cell / "post-vm.json").read_text())["decisions"]
    assert [h["verdict"] for h in history] == ["infra", "timeout"]
    assert "wall-clock limit after 90 s" in history[-1]["reason"]
    r = cli("node", "matrix-final", cwd=tmp_path / "run")
    assert r.returncode == 0
    summary = json.loads((tmp_path / "run" / "matrix-summary.json").read_text())
    assert summary["cells"][0]["outcome"] == "timeout" and summary["counts"] == {"timeout": 1}
