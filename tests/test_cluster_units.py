"""The cluster cell's pieces without VMs: the stage barrier and its sync channel, the private
network hub, VM slots for a cell's several VMs, the locally run job with file transfer, and the
VM count the executor reads from a submit file."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from osgtest_dag.engine.cluster.barrier import PORT_NAME, RUN, SKIP, Barrier, SyncChannel, decision
from osgtest_dag.engine.cluster.switch import Hub
from osgtest_dag.engine.local.jobs import RETURN_SUBMIT_FAILED, Output
from osgtest_dag.engine.local.reaper import ChildRecord
from osgtest_dag.engine.local.slots import JobSlot, Slots
from osgtest_dag.engine.local.submit import JobSpec, quick_vm_count
from osgtest_dag.engine.local.transfer import TransferJob, transfers_files
from osgtest_dag.model import dagfile
from osgtest_dag.model.cluster import ClusterStage

WAIT_S = 5.0  # the longest any step here may take; each normally takes milliseconds


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        time.sleep(0.002)


class Arrival(threading.Thread):
    """One VM arriving at a barrier stage from its own thread (as its channel's thread does)."""

    def __init__(self, barrier: Barrier, vm: str, index: int, status: str):
        super().__init__(name=f"arrive-{vm}-{index}", daemon=True)
        self.barrier, self.vm, self.index, self.status = barrier, vm, index, status
        self.answer: str | None = None

    def run(self) -> None:
        self.answer = self.barrier.arrive(self.vm, self.index, self.status, timeout=WAIT_S)

    def arrived(self) -> Arrival:
        """Started, and its arrival recorded (so the clock's order is this thread's order)."""
        self.start()
        stage = self.barrier.stages[self.index - 1]
        wait_until(lambda: self.vm in stage.arrivals, f"{self.vm} at stage {self.index}")
        return self

    def answered(self) -> str | None:
        self.join(WAIT_S)
        assert not self.is_alive(), f"{self.vm} still waits at stage {self.index}"
        return self.answer


# --- barrier --------------------------------------------------------------------------------


def test_decision():
    assert decision(always=False, failed=False) == RUN
    assert decision(always=False, failed=True) == SKIP
    assert decision(always=True, failed=False) == RUN
    assert decision(always=True, failed=True) == RUN


def test_barrier_holds_every_vm_until_all_arrived_and_skips_after_a_failure():
    stages = [
        ClusterStage("setup"),
        ClusterStage("test"),
        ClusterStage("collect", always=True),
        ClusterStage("check"),
        ClusterStage("finalize"),  # always runs by its name
    ]
    barrier = Barrier(
        ["a", "b", "c"], [(s.name, s.runs_always) for s in stages], itertools.count(100).__next__
    )

    a, b = Arrival(barrier, "a", 1, "ok").arrived(), Arrival(barrier, "b", 1, "ok").arrived()
    assert barrier.stages[0].decision is None
    assert a.is_alive() and b.is_alive()  # held until c arrives
    assert barrier.arrive("c", 1, "ok", timeout=WAIT_S) == RUN
    assert (a.answered(), b.answered()) == (RUN, RUN)

    # a's stage 1 commands failed: it says so arriving at stage 2; from then on only the
    # always-stages run, for every VM
    a, b = Arrival(barrier, "a", 2, "failed").arrived(), Arrival(barrier, "b", 2, "ok").arrived()
    assert barrier.arrive("c", 2, "ok", timeout=WAIT_S) == SKIP
    assert (a.answered(), b.answered()) == (SKIP, SKIP)
    assert barrier.failed == {"a": "reported failed before stage test"}
    for index, want in [(3, RUN), (4, SKIP), (5, RUN)]:
        others = [Arrival(barrier, vm, index, "failed" if vm == "a" else "ok").arrived() for vm in ("a", "b")]
        assert barrier.arrive("c", index, "ok", timeout=WAIT_S) == want
        assert [t.answered() for t in others] == [want, want]
    for vm in ("a", "b", "c"):
        barrier.done(vm, "ok")
    assert barrier.failed == {"a": "reported failed before stage test"}

    record = barrier.to_json()
    assert [(s["index"], s["name"], s["always"], s["decision"]) for s in record] == [
        (1, "setup", False, RUN),
        (2, "test", False, SKIP),
        (3, "collect", True, RUN),
        (4, "check", False, SKIP),
        (5, "finalize", True, RUN),
    ]
    # the injected clock: three arrivals in thread order, then the release, per stage
    assert record[0]["arrivals"] == {
        "a": {"time": 100, "status": "ok"},
        "b": {"time": 101, "status": "ok"},
        "c": {"time": 102, "status": "ok"},
    }
    assert record[1]["arrivals"] == {
        "a": {"time": 104, "status": "failed"},
        "b": {"time": 105, "status": "ok"},
        "c": {"time": 106, "status": "ok"},
    }
    assert [s["released"] for s in record] == [103, 107, 111, 115, 119]
    json.dumps(record)  # the runner writes it into cluster.json


def test_a_vm_ending_before_done_fails_the_cell_and_releases_the_others():
    barrier = Barrier(["a", "b", "c"], [("setup", False), ("finalize", True)], itertools.count().__next__)
    a, b = Arrival(barrier, "a", 1, "ok").arrived(), Arrival(barrier, "b", 1, "ok").arrived()
    barrier.vm_ended("c")  # powered off (crashed) before stage 1
    assert (a.answered(), b.answered()) == (SKIP, SKIP)
    assert barrier.failed == {"c": "ended before its last stage"}
    assert barrier.ended == {"c"}
    # later stages no longer wait for c
    a = Arrival(barrier, "a", 2, "ok").arrived()
    assert barrier.arrive("b", 2, "ok", timeout=WAIT_S) == RUN
    assert a.answered() == RUN
    assert set(barrier.stages[1].arrivals) == {"a", "b"}


def test_a_vm_ending_after_done_is_not_a_failure_but_done_failed_is():
    barrier = Barrier(["a", "b"], [("test", False)], itertools.count().__next__)
    barrier.done("a", "ok")
    barrier.vm_ended("a")
    assert barrier.failed == {}
    barrier.done("b", "failed")
    barrier.vm_ended("b")
    assert barrier.failed == {"b": "reported failed after its last stage"}
    assert barrier.finished == {"a": "ok", "b": "failed"}


def test_barrier_arrive_times_out_and_refuses_unknown_stages():
    barrier = Barrier(["a", "b"], [("setup", False)], itertools.count().__next__)
    with pytest.raises(TimeoutError, match=r"^stage setup: not every VM arrived within 0.05 s$"):
        barrier.arrive("a", 1, "ok", timeout=0.05)
    assert barrier.stages[0].decision is None
    for index in (0, 2):
        with pytest.raises(ValueError, match=f"^no stage {index}$"):
            barrier.arrive("a", index, "ok")


# --- sync channel (a real unix socket, connected to as qemu's chardev does) -------------------


class Guest:
    """A VM's end of the virtio-serial port: lines out, lines back."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT_S)
        self.sock.connect(str(path))
        self.replies = self.sock.makefile("rb")

    def say(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def reply(self) -> bytes:
        return self.replies.readline()

    def close(self) -> None:
        self.replies.close()
        self.sock.close()


def test_sync_channel_answers_ready_lines_at_the_barrier(tmp_path):
    barrier = Barrier(["vm1", "vm2"], [("setup", False), ("test", False)], itertools.count().__next__)
    ch1 = SyncChannel(tmp_path / "s1.sock", "vm1", barrier)
    ch2 = SyncChannel(tmp_path / "s2.sock", "vm2", barrier)
    assert ch1.qemu_args() == [
        "-chardev",
        f"socket,id=sync,path={tmp_path / 's1.sock'},reconnect=1",
        "-device",
        "virtio-serial-pci",
        "-device",
        f"virtserialport,chardev=sync,name={PORT_NAME}",
    ]
    ch1.start()
    ch2.start()
    g1, g2 = Guest(tmp_path / "s1.sock"), Guest(tmp_path / "s2.sock")
    try:
        g1.say("ready 1 ok")
        wait_until(lambda: "vm1" in barrier.stages[0].arrivals, "vm1 at stage 1")
        assert barrier.stages[0].decision is None
        g2.say("ready 1 ok")
        assert (g1.reply(), g2.reply()) == (b"run\n", b"run\n")

        # not the protocol: no answer (the next reply is to the line after); a stage that does
        # not exist, or no number: skip
        g1.say("hello there")
        g1.say("ready 9 ok")
        assert g1.reply() == b"skip\n"
        g1.say("ready two ok")
        assert g1.reply() == b"skip\n"

        g1.say("ready 2 failed")
        g2.say("ready 2 ok")
        assert (g1.reply(), g2.reply()) == (b"skip\n", b"skip\n")
        g1.say("done failed")
        g2.say("done ok")
        wait_until(lambda: len(barrier.finished) == 2, "both done")
        assert barrier.finished == {"vm1": "failed", "vm2": "ok"}
        assert barrier.failed == {"vm1": "reported failed before stage test"}
    finally:
        g1.close()
        g2.close()
    for ch in (ch1, ch2):
        ch._thread.join(WAIT_S)
        assert not ch._thread.is_alive()  # the VM hung up: its thread ends
        ch.close()
    assert ch1.lines == [
        "ready 1 ok",
        "hello there",
        "ready 9 ok",
        "ready two ok",
        "ready 2 failed",
        "done failed",
    ]
    assert ch2.lines == ["ready 1 ok", "ready 2 ok", "done ok"]


def test_sync_channel_closed_before_its_vm_connected(tmp_path):
    barrier = Barrier(["vm1"], [("setup", False)], itertools.count().__next__)
    (tmp_path / "s.sock").write_text("left by an earlier start")
    ch = SyncChannel(tmp_path / "s.sock", "vm1", barrier)  # replaces what was there
    ch.start()
    ch.close()
    ch._thread.join(WAIT_S)
    assert not ch._thread.is_alive()
    assert ch.lines == []


# --- hub (unix datagram sockets standing in for qemu's NIC ends) ------------------------------


def nic(hub: Hub, port: int) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(hub.vm_path(port)))
    s.settimeout(WAIT_S)
    return s


def nothing_waiting(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        s.recv(65536)
    except BlockingIOError:
        return True
    finally:
        s.settimeout(WAIT_S)
    return False


def test_hub_sends_each_frame_to_every_other_port(tmp_path):
    hub = Hub(tmp_path, 3)
    nics = [nic(hub, i) for i in range(3)]
    hub.start()
    try:
        nics[0].sendto(b"frame from 0", str(hub.hub_path(0)))
        assert nics[1].recv(65536) == b"frame from 0"
        assert nics[2].recv(65536) == b"frame from 0"
        assert nothing_waiting(nics[0])  # the hub forwards in port order: 0 was skipped before 2
        big = bytes(range(256)) * 36  # a jumbo frame, 9216 bytes
        nics[2].sendto(big, str(hub.hub_path(2)))
        assert nics[0].recv(65536) == big
        assert nics[1].recv(65536) == big
        assert nothing_waiting(nics[2])
        nics[2].sendto(b"again", str(hub.hub_path(2)))
        assert nics[0].recv(65536) == b"again"
        assert nics[1].recv(65536) == b"again"
        assert hub.frames == [1, 0, 2]
    finally:
        hub.close()
        for s in nics:
            s.close()
    assert not hub._thread.is_alive()
    with pytest.raises(ConnectionRefusedError):  # nothing listens on the hub's ports any more
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"x", str(hub.hub_path(0)))


def test_hub_port_without_a_vm_does_not_stop_the_others(tmp_path):
    hub = Hub(tmp_path, 4)
    nic0, nic2 = nic(hub, 0), nic(hub, 2)
    # port 1's VM has not started (no socket); port 3's has ended (its socket file is left)
    nic(hub, 3).close()
    hub.start()
    try:
        nic0.sendto(b"to all", str(hub.hub_path(0)))
        assert nic2.recv(65536) == b"to all"
        nic2.sendto(b"back", str(hub.hub_path(2)))
        assert nic0.recv(65536) == b"back"
        assert hub.frames == [1, 0, 1, 0]
    finally:
        hub.close()
        nic0.close()
        nic2.close()
    assert not hub._thread.is_alive()


def test_hub_close_without_start_and_qemu_args(tmp_path):
    hub = Hub(tmp_path, 2)
    assert hub.qemu_args(1, "52:54:00:0c:00:02") == [
        "-netdev",
        f"dgram,id=private,local.type=unix,local.path={tmp_path}/nic-1.sock,"
        f"remote.type=unix,remote.path={tmp_path}/hub-1.sock",
        "-device",
        "virtio-net-pci,netdev=private,mac=52:54:00:0c:00:02",
    ]
    assert hub.qemu_args(0, "52:54:00:0c:00:01", boot=True) == [
        "-netdev",
        f"dgram,id=private,local.type=unix,local.path={tmp_path}/nic-0.sock,"
        f"remote.type=unix,remote.path={tmp_path}/hub-0.sock",
        "-device",
        "virtio-net-pci,netdev=private,mac=52:54:00:0c:00:01,bootindex=1",
    ]
    hub.close()
    assert not hub._thread.is_alive()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub-0.sock", "hub-1.sock"]


# --- slots: a cluster cell's job holds one VM slot per VM -------------------------------------


def test_slots_more_vms_than_the_limit_run_alone():
    slots = Slots(vm_jobs=2, local_jobs=1)
    assert slots.try_take(["vm"])
    assert not slots.try_take(["vm"] * 3)  # more than -j: only when no other VM runs
    slots.give(["vm"])
    assert slots.try_take(["vm"] * 3)
    assert slots.used["vm"] == 3
    assert not slots.try_take(["vm"])  # nothing else runs beside it ...
    assert slots.try_take(["local"])  # ... but a local job may
    slots.give(["local"])
    slots.give(["vm"] * 3)
    assert slots.used == {"vm": 0, "local": 0}
    assert slots.try_take(["vm"]) and slots.try_take(["vm"])
    assert not slots.try_take(["vm"])


def test_slots_a_cluster_beside_a_vm_within_the_limit():
    slots = Slots(vm_jobs=3, local_jobs=1)
    assert slots.try_take(["vm"])
    assert slots.try_take(["vm"] * 2)
    assert not slots.try_take(["vm"])
    assert not slots.try_take(["vm"] * 2)
    slots.give(["vm"] * 2)
    assert slots.used["vm"] == 1
    assert not slots.try_take(["vm"] * 3)  # would fit alone, not beside the one VM
    assert slots.try_take(["vm"] * 2)


def test_slots_take_all_keys_or_none():
    slots = Slots(vm_jobs=4, local_jobs=1)
    slots.add_limit("cat:x", 1)
    assert slots.try_take(["cat:x", "vm"])
    assert not slots.try_take(["cat:x", "vm", "vm"])
    assert slots.used == {"cat:x": 1, "vm": 1}


def test_job_slot_waiting_for_a_cluster_gets_its_vms_when_given_back():
    slots = Slots(vm_jobs=2, local_jobs=1)
    assert slots.try_take(["vm"] * 2)
    cluster = JobSlot(slots, ["vm"] * 2)
    cluster.release()  # its job ended; a retry takes them again
    assert slots.try_take(["vm"] * 3)  # meanwhile a bigger cluster runs alone
    stop, taken = threading.Event(), threading.Event()

    def retry() -> None:
        if cluster.take(stop):
            taken.set()

    t = threading.Thread(target=retry, daemon=True)
    t.start()
    assert not taken.wait(0.05)
    slots.give(["vm"] * 3)
    assert taken.wait(WAIT_S)  # the big cluster gave its VMs back
    t.join(WAIT_S)
    assert cluster.held and slots.used["vm"] == 2


# --- a locally run job with HTCondor's file transfer -----------------------------------------

# reads its input, writes its outputs, appends to the IO disk it sends back; what it saw
JOB_PROGRAM = """
import json, os, pathlib, sys, time
here = pathlib.Path(".")
names = sorted(p.name for p in here.iterdir())
(here / "seen.json").write_text(json.dumps({
    "cwd": os.getcwd(),
    "links": {n: os.readlink(n) for n in names if os.path.islink(n)},
    "files": names,
    "env": os.environ.get("OSGTEST_DAG_ACCEL"),
}))
(here / "out.txt").write_text((here / "in.txt").read_text().upper())
with open("disk.img", "a") as f:
    f.write("+written")
print("job ran", flush=True)
if sys.argv[1] == "sleep":
    pathlib.Path(sys.argv[2]).write_text("started")
    time.sleep(60)
sys.exit(int(sys.argv[1]))
"""


def transfer_setup(tmp_path: Path, inputs: tuple[str, ...] | None = None) -> JobSpec:
    cell = tmp_path / "cells" / "c1"
    cell.mkdir(parents=True)
    (cell / "in.txt").write_text("hello")
    (cell / "disk.img").write_text("disk-original")
    (tmp_path / "base.qcow2").write_text("base image")
    return JobSpec(
        universe="vanilla",
        executable=sys.executable,
        arguments=(),
        initialdir=cell,
        output=None,
        error=None,
        environment={},
        transfer_input_files=inputs or (str(tmp_path / "base.qcow2"), "in.txt", "file://disk.img"),
        transfer_output_files=("seen.json", "out.txt", "disk.img"),
        transfer_output_remaps={"disk.img": "vms/vm1/result.img"},
    )


def transfer_job(
    spec: JobSpec, tmp_path: Path, *args: str, stdout: Output = subprocess.DEVNULL
) -> TransferJob:
    return TransferJob(
        spec,
        "Cell1",
        [sys.executable, "-c", JOB_PROGRAM, *args],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        env={"OSGTEST_DAG_ACCEL": "tcg"},
        children=ChildRecord(tmp_path / "children.jsonl"),
    )


@pytest.mark.parametrize("exit_code", [0, 3])
def test_transfer_job_stages_inputs_and_returns_outputs(tmp_path, exit_code):
    spec = transfer_setup(tmp_path)
    cell = spec.initialdir
    assert transfers_files(spec)
    job = transfer_job(spec, tmp_path, str(exit_code))
    assert job.run() == exit_code  # outputs come back also when the job failed
    seen = json.loads((cell / "seen.json").read_text())
    assert seen == {
        "cwd": str(cell / ".scratch-Cell1"),
        # the inputs it does not send back are links, not copies ...
        "links": {
            "base.qcow2": str((tmp_path / "base.qcow2").resolve()),
            "in.txt": str((cell / "in.txt").resolve()),
        },
        # ... the one it does is a copy
        "files": ["base.qcow2", "disk.img", "in.txt"],
        "env": "tcg",
    }
    assert (cell / "out.txt").read_text() == "HELLO"
    assert (cell / "vms" / "vm1" / "result.img").read_text() == "disk-original+written"
    assert (cell / "disk.img").read_text() == "disk-original"  # as it was, for a retry
    assert (cell / "in.txt").read_text() == "hello"
    assert not (cell / ".scratch-Cell1").exists()
    recorded = [json.loads(line) for line in (tmp_path / "children.jsonl").read_text().splitlines()]
    assert [(r["argv0"], r["where"]) for r in recorded] == [(sys.executable, str(cell / ".scratch-Cell1"))]


def test_transfer_job_missing_input_does_not_run(tmp_path):
    spec = transfer_setup(tmp_path, inputs=("in.txt", "missing.img"))
    job = transfer_job(spec, tmp_path, "0")
    assert job.run() == RETURN_SUBMIT_FAILED
    assert not (tmp_path / "children.jsonl").exists()  # nothing started
    assert not (spec.initialdir / ".scratch-Cell1").exists()
    assert sorted(p.name for p in spec.initialdir.iterdir()) == ["disk.img", "in.txt"]


def test_transfer_job_output_not_written(tmp_path, caplog):
    spec = transfer_setup(tmp_path)
    spec = JobSpec(**{**spec.__dict__, "transfer_output_files": ("out.txt", "never.txt")})
    job = transfer_job(spec, tmp_path, "0")
    assert job.run() == 0
    assert (spec.initialdir / "out.txt").read_text() == "HELLO"
    assert not (spec.initialdir / "never.txt").exists()
    assert "node Cell1: output never.txt was not written" in caplog.text
    assert not (spec.initialdir / ".scratch-Cell1").exists()


def test_transfer_job_killed_returns_what_it_left(tmp_path):
    spec = transfer_setup(tmp_path)
    started = tmp_path / "started"
    log = tmp_path / "job.out"
    with open(log, "ab") as out:
        job = transfer_job(spec, tmp_path, "sleep", str(started), stdout=out)
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(job.run()), daemon=True)
        t.start()
        wait_until(started.exists, "the job started")
        job.kill()
        t.join(WAIT_S)
    assert not t.is_alive()
    assert result == [-signal.SIGTERM]
    assert log.read_text() == "job ran\n"
    assert (spec.initialdir / "vms" / "vm1" / "result.img").read_text() == "disk-original+written"
    assert (spec.initialdir / "out.txt").read_text() == "HELLO"
    assert not (spec.initialdir / ".scratch-Cell1").exists()


# --- the VM count of a node's job, for -j -------------------------------------------------------


def test_quick_vm_count(tmp_path):
    (tmp_path / "vm.sub").write_text("Universe = VM\nvm_type = kvm\nqueue\n")
    (tmp_path / "local.sub").write_text("universe = local\nexecutable = /bin/true\nqueue\n")
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "cluster.sub").write_text(
        "universe                = vanilla\n"
        "transfer_input_files    = $(image),cell.json,$(vm_inputs)\n"
        '+OsgtestDagSerial       = "$(serial)"\n'
        "+OsgtestDagVms          = $(vms)\n"
        "queue\n"
    )

    def count(submit: str, directory: str | None = None, **node_vars: str) -> int:
        return quick_vm_count(
            tmp_path, dagfile.Node(name="N", submit_file=submit, dir=directory, vars=node_vars)
        )

    assert count("vm.sub") == 1
    assert count("local.sub") == 0
    assert count("cluster.sub", "cells", vms="3") == 3
    assert count("cluster.sub", "cells") == 1
    assert count("cluster.sub", "cells", vms="many") == 1
    assert count("cluster.sub") == 0  # not in the DAG's directory: no such file
    assert quick_vm_count(tmp_path, dagfile.Node(name="S", submit_file=None, kind="subdag")) == 0


def test_transfer_job_that_never_started_returns_nothing(tmp_path):
    """Killed before it started (a job run after Ctrl-C is), or no program to run: as HTCondor
    returns no output of a job that never ran, an earlier attempt's results stay as they were
    (not replaced by the copies of the inputs it would send back)."""
    spec = transfer_setup(tmp_path)
    earlier = spec.initialdir / "vms" / "vm1" / "result.img"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("the first attempt's disk")
    job = transfer_job(spec, tmp_path, "0")
    job.kill()
    assert job.run() == RETURN_SUBMIT_FAILED
    no_program = TransferJob(
        spec,
        "Cell1",
        [str(tmp_path / "no-such-program")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={},
        children=ChildRecord(tmp_path / "children.jsonl"),
    )
    assert no_program.run() == RETURN_SUBMIT_FAILED
    assert earlier.read_text() == "the first attempt's disk"
    assert sorted(p.name for p in spec.initialdir.iterdir()) == ["disk.img", "in.txt", "vms"]
    assert not (tmp_path / "children.jsonl").exists()
