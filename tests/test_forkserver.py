"""The fork server (base/forkserver.py): a child per call, with the call's argv, directory,
environment and files, its exit status or signal, and nothing left running when either side
goes; the local executor's `osgtest-dag node ...` jobs through it (engine/local/jobs.ForkedJob).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from osgtest_dag.base import forkserver
from osgtest_dag.base.forkserver import ForkServer
from osgtest_dag.engine.local import executor
from osgtest_dag.engine.local.jobs import ForkedJob, ProcessJob
from osgtest_dag.engine.local.reaper import ChildRecord
from osgtest_dag.generate import workflow

# A program serving calls: argv[1] says what the child does.
SERVER = """\
import json, os, socket, sys, time
from osgtest_dag.base import forkserver

def run(argv):
    what = argv[1]
    if what == "show":
        print(json.dumps({"argv": argv, "cwd": os.getcwd(), "foo": os.environ.get("FOO"),
                          "stdin": sys.stdin.read(), "pid": os.getpid(), "pgid": os.getpgid(0)}))
        print("to stderr", file=sys.stderr)
        return 0
    if what == "exit":
        sys.exit(int(argv[2]))
    if what == "raise":
        raise RuntimeError("boom")
    if what == "sleep":
        open(argv[2], "w").write(str(os.getpid()))
        time.sleep(60)
    return 0

forkserver.serve(socket.socket(fileno=0), run)
"""


@pytest.fixture
def server(tmp_path):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    started: list[ForkServer] = []
    fs = ForkServer([sys.executable, str(script)], on_start=started.append)
    yield fs, started
    fs.close()


def _call(fs: ForkServer, tmp_path: Path, *args: str, env: dict | None = None):
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "wb") as o, open(err, "wb") as e:
        call = fs.call(["prog", *args], cwd=tmp_path, stdout=o.fileno(), stderr=e.fileno(), env=env)
    assert call is not None
    return call, out, err


def _gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_call_runs_in_its_directory_environment_and_files(server, tmp_path):
    fs, started = server
    call, out, err = _call(fs, tmp_path, "show", "x y", env={"FOO": "bar"})
    assert call.wait() == 0 and call.wait_forked() == call.pid
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["prog", "show", "x y"] and seen["cwd"] == str(tmp_path)
    assert seen["foo"] == "bar" and seen["stdin"] == ""  # stdin is /dev/null
    assert seen["pid"] == call.pid == seen["pgid"]  # its own process group, to kill as one
    assert err.read_text() == "to stderr\n"
    assert started == [fs] and call.pid != fs.pid


def test_exit_codes_exceptions_and_signals_come_back(server, tmp_path):
    fs, _ = server
    assert _call(fs, tmp_path, "exit", "3")[0].wait() == 3
    call, _, err = _call(fs, tmp_path, "raise")
    assert call.wait() == 1 and "RuntimeError: boom" in err.read_text()
    mark = tmp_path / "pid"
    call, _, _ = _call(fs, tmp_path, "sleep", str(mark))
    assert call.wait_forked()
    while not mark.exists():
        time.sleep(0.02)
    call.kill()
    assert call.wait() == -signal.SIGTERM


def test_closing_the_client_ends_the_server_and_what_it_runs(server, tmp_path):
    fs, _ = server
    mark = tmp_path / "pid"
    _call(fs, tmp_path, "sleep", str(mark))
    while not mark.exists():
        time.sleep(0.02)
    child = int(mark.read_text())
    fs.close()
    assert _gone(child) and fs._proc is not None and fs._proc.returncode == 0
    assert fs.call(["prog", "show"], cwd=tmp_path, stdout=1, stderr=2, env=None) is None


def test_a_server_that_cannot_start_or_goes_leaves_the_job_to_a_new_process(tmp_path):
    assert (
        ForkServer([str(tmp_path / "no-such-program")]).call(
            ["x"], cwd=tmp_path, stdout=1, stderr=2, env=None
        )
        is None
    )
    gone = ForkServer([sys.executable, "-c", "pass"])  # exits without serving
    out = tmp_path / "out"
    with open(out, "wb") as f:
        process = ProcessJob(
            ["/bin/sh", "-c", "echo ran; exit 4"],
            cwd=tmp_path,
            stdout=f,
            stderr=f,
            env={},
            children=ChildRecord(tmp_path / "children.jsonl"),
        )
        assert ForkedJob(gone, process).run() == 4
    assert out.read_text() == "ran\n"
    gone.close()


def test_the_executor_forks_osgtest_dag_node_jobs_from_one_server(tmp_path, monkeypatch):
    """A DAG's `osgtest-dag node ...` jobs: the output a new process would give, each a child of
    the one fork server; with OSGTEST_DAG_FORK_SERVER=0 each is a new process."""
    program = workflow.default_tool()  # what generated DAGs run
    want = subprocess.run([program, "node", "--help"], capture_output=True, text=True, check=True).stdout
    for name in ("a", "b"):
        (tmp_path / f"{name}.sub").write_text(
            f"universe = local\nexecutable = {program}\narguments = node --help\n"
            f"output = {name}.out\nerror = {name}.err\nqueue\n"
        )
    dag = tmp_path / "two.dag"
    dag.write_text("JOB A a.sub\nJOB B b.sub\nPARENT A CHILD B\n")
    assert executor.run_dag(dag)
    assert (tmp_path / "a.out").read_text() == want == (tmp_path / "b.out").read_text()
    recorded = [json.loads(line) for line in ChildRecord.for_dag(dag).path.read_text().splitlines()]
    # the server, then its two children: each under the server's interpreter, as /proc shows
    # them (what the reaper checks), none a new `osgtest-dag` process
    assert len(recorded) == 3 and len({r["argv0"] for r in recorded}) == 1
    assert Path(recorded[0]["argv0"]).name.startswith("python") and recorded[0]["argv0"] != program

    monkeypatch.setenv("OSGTEST_DAG_FORK_SERVER", "0")
    (tmp_path / "two.dag.local-state.json").unlink()
    assert executor.run_dag(dag)
    recorded = [json.loads(line) for line in ChildRecord.for_dag(dag).path.read_text().splitlines()]
    assert [r["argv0"] for r in recorded] == [program, program]
    assert (tmp_path / "b.out").read_text() == want * 2  # output files are appended to


def test_requests_round_trip_whatever_their_words_hold():
    tricky = forkserver.Request(
        7,
        "/tmp/a dir",
        ("prog", "", "x y", "a=b", "é\n", os.fsdecode(b"\xff")),
        {"A": "1=2", "E": "", "U": "ü"},
    )
    assert forkserver.decode_request(forkserver.encode_request(tricky)) == tricky
    empty = forkserver.Request(1, "/", (), {})
    assert forkserver.decode_request(forkserver.encode_request(empty)) == empty


def test_the_cli_fork_server_runs_commands_as_a_new_process_would(tmp_path):
    """`osgtest-dag node fork-server`: the same output and exit status as the program started
    anew, with logging set up by each command's options."""
    program = workflow.default_tool()
    fs = ForkServer([program, "node", "fork-server"])
    try:
        for args in (["--version"], ["node", "no-such-node"], ["-v", "--version"]):
            new = subprocess.run([program, *args], capture_output=True, text=True, cwd=tmp_path)
            call, out, err = _call(fs, tmp_path, *args)
            assert call.wait() == new.returncode
            assert (out.read_text(), err.read_text()) == (new.stdout, new.stderr.replace(program, "prog"))
    finally:
        fs.close()
