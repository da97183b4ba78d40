"""The local executor's console watchdog and live phases, on boot-sector guests (seconds each,
no Linux boot): a VM silent after its start is hung; under KVM that gives KVM up for the run
and the VM starts again under TCG without counting a start."""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from osgtest_dag.base import command
from osgtest_dag.engine.local import submit
from osgtest_dag.engine.local.accel import RunAccel
from osgtest_dag.engine.local.console import ConsoleFollower
from osgtest_dag.engine.local.jobs import RETURN_REMOVED
from osgtest_dag.engine.local.progress import Progress
from osgtest_dag.engine.local.reaper import ChildRecord
from osgtest_dag.engine.local.state import Attempt
from osgtest_dag.engine.local.vmjob import VmJob
from osgtest_dag.guest import qemu
from osgtest_dag.model import dagfile
from osgtest_dag.model.rundir import LOCAL_VM

# cli; hlt; jmp back to the hlt: boots, then never prints anything.
SILENT_CODE = bytes.fromhex("FAF4EBFD")
# Prints MESSAGE on COM1 (ds=0; si=message; lodsb/out until the 0 byte), then halts for good.
PHASE_MESSAGE = b"[osgtest 12:00:00] phase install: start\r\n\0"
PRINTING_CODE = (
    bytes.fromhex("31C08ED8FC" + "BE177C" + "BAF803" + "AC84C07403EEEBF8" + "FAF4EBFD") + PHASE_MESSAGE
)


def boot_disk(path: Path, code: bytes) -> Path:
    """A raw disk whose boot sector is `code` (SeaBIOS boots no disk of one sector: 1 MiB)."""
    assert len(code) <= 510
    path.write_bytes(code + b"\0" * (510 - len(code)) + b"\x55\xaa" + b"\0" * (1024 * 1024 - 512))
    return path


def vm_spec(d: Path, *, max_wall: int, max_starts: int) -> submit.JobSpec:
    return submit.JobSpec(
        universe="vm",
        executable="",
        arguments=(),
        initialdir=d,
        output=None,
        error=None,
        environment={},
        vm_memory=64,
        vm_vcpus=1,
        vm_disks=(("guest.img", "vda", "r", "raw"),),
        max_wall=max_wall,
        max_starts=max_starts,
    )


def vm_records(d: Path) -> list[dict]:
    return [json.loads(line) for line in (d / LOCAL_VM).read_text().splitlines()]


@pytest.fixture
def probe_cache(tmp_path, monkeypatch):
    """The accelerator probe's per-boot answer kept in the test's own cache, not the user's."""
    monkeypatch.setenv("OSGTEST_DAG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OSGTEST_DAG_ACCEL", raising=False)
    monkeypatch.setattr(qemu, "_accel_cache", None)
    return tmp_path / "cache" / "accel-probe.txt"


def test_silent_vm_under_kvm_starts_again_under_tcg_without_counting_a_start(tmp_path, probe_cache):
    """The first start is forced to KVM (where a boot sector runs, it runs silent; where KVM does
    not work, qemu fails before printing: both are KVM not running the guest). The watchdog kills
    it after the silent limit, KVM is given up for the run and for later commands, and the same
    start runs again under TCG; there the guest is silent too, so it is killed as hung, counted,
    and with one start allowed the job is removed: in seconds, far below its wall-clock limit."""
    boot_disk(tmp_path / "guest.img", SILENT_CODE)
    changes, phases = [], []
    accel = RunAccel("kvm", on_change=changes.append)
    attempt = Attempt(retry=0, started=0.0)
    job = VmJob(
        vm_spec(tmp_path, max_wall=120, max_starts=1),
        dagfile.Node(name="TestRun000", submit_file="vm.sub"),
        attempt,
        accel=accel,
        children=ChildRecord(tmp_path / "children.jsonl"),
        silent_limit_s=3,
        on_phase=phases.append,
    )
    t0 = time.monotonic()
    assert job.run() == RETURN_REMOVED
    assert time.monotonic() - t0 < 60
    records = vm_records(tmp_path)
    assert [(r["accel"], r["starts"], r["timed_out"]) for r in records] == [
        ("kvm", 1, False),
        ("tcg", 1, True),
    ]
    assert [r["console"] for r in records] == ["console.0.1.kvm-silent.log", "console.0.1.log"]
    assert (tmp_path / "console.0.1.kvm-silent.log").is_file() and (tmp_path / "console.0.1.log").is_file()
    assert [v["accel"] for v in attempt.vm] == ["kvm", "tcg"]
    assert accel.current() == "tcg"
    assert [c.accel for c in changes] == ["tcg"] and "TestRun000" in changes[0].why
    assert phases == [None, None]  # each start booted; neither reached a payload phase
    # a later command in this host boot does not pick KVM
    assert probe_cache.read_text().split("\t")[1] == "tcg"
    qemu._accel_cache = None
    later = qemu.accel_choice()
    assert later.accel == "tcg" and later.why.startswith("KVM given up: a VM (TestRun000)")


def test_a_vm_that_printed_is_not_hung_when_it_goes_quiet(tmp_path, probe_cache):
    """Only silence before the first output is a hang: a guest that printed its phase and then
    stays quiet runs on to its wall-clock limit under the accelerator it had. Its phase is seen
    on the live console."""
    boot_disk(tmp_path / "guest.img", PRINTING_CODE)
    phases = []
    accel = RunAccel("tcg")
    job = VmJob(
        vm_spec(tmp_path, max_wall=8, max_starts=1),
        dagfile.Node(name="TestRun001", submit_file="vm.sub"),
        Attempt(retry=0, started=0.0),
        accel=accel,
        children=ChildRecord(tmp_path / "children.jsonl"),
        silent_limit_s=3,
        on_phase=phases.append,
    )
    assert job.run() == RETURN_REMOVED
    (record,) = vm_records(tmp_path)
    assert record["accel"] == "tcg" and record["timed_out"] and record["wall_s"] >= 8
    assert phases == [None, "install"]
    assert b"phase install: start" in (tmp_path / "console.0.1.log").read_bytes()
    assert not probe_cache.exists()  # nothing was given up


def test_console_follower_reads_phases_as_the_console_grows(tmp_path):
    """A payload console (payload/run-job's `say` lines among systemd's), written in pieces."""
    console = tmp_path / "console.log"
    follower = ConsoleFollower(console)
    assert follower.poll() == [] and not follower.printed  # not created yet
    console.write_bytes(b"")
    assert follower.poll() == [] and not follower.printed
    text = (
        b"[    0.000000] Linux version 6.1.0-57-amd64\r\n"
        b"[  OK  ] Started osgtest-boot.service\r\n"
        b"osgtest-boot: IO disk /dev/vdb mounted on /run/osgtest-io\r\n"
        b"[osgtest 10:00:01] phase environment: start\r\n"
        b"[osgtest 10:00:01] phase environment: ok\r\n"
        b"[osgtest 10:00:02] phase network: start\r\n"
        b"[osgtest 10:00:03] phase network: ok\r\n"
        b"[osgtest 10:00:03] phase install: start\r\n"
        b"[osgtest 10:04:00] phase install: FAILED (exit 1); last lines of install.log:\r\n"
        b"[osgtest 10:04:00] phase collect: start\r\n"
    )
    cut1 = text.index(b"phase environment: start") + 9  # in the middle of a line
    cut2 = text.index(b"phase install: start")
    with open(console, "ab") as f:
        f.write(text[:cut1])
        f.flush()
        assert follower.poll() == [] and follower.printed and follower.phase is None
        f.write(text[cut1:cut2])
        f.flush()
        assert follower.poll() == ["environment", "network"] and follower.phase == "network"
        f.write(text[cut2:])
        f.flush()
        assert follower.poll() == ["install", "collect"] and follower.phase == "collect"
    assert follower.poll() == []


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_plain_lines_show_phases_and_a_heartbeat():
    out, clock = io.StringIO(), Clock()
    p = Progress(
        stream=out,
        tty=False,
        labels={"003": "debian_12 Hello"},
        header="accelerator: tcg (KVM probe: a Linux kernel did not finish booting)",
        clock=clock,
    )
    nodes = [f"{k}003" for k in ("CreateDisk", "TestRun", "ProcessResult", "CleanOutput")]
    p.add_dag("m.dag", dict.fromkeys(nodes, "pending"))
    p.update("m.dag", "TestRun003", "running")
    p.phase("TestRun003", None)
    clock.now += 20
    p.phase("TestRun003", "install")
    clock.now += 29
    p.tick()  # 29 s since the last line: nothing
    clock.now += 13
    p.tick()  # 42 s: a heartbeat, with the phase and its time
    clock.now += 1
    p.tick()  # just printed: nothing
    p.note_accel(qemu.AccelChoice("tcg", "KVM given up: a VM (TestRun003) printed nothing in 30 s"))
    p.update("m.dag", "TestRun003", "done")
    clock.now += 60
    p.tick()
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "accelerator: tcg (KVM probe: a Linux kernel did not finish booting)"
    assert lines[1].startswith("cell 003: running | cells 0/1 finished (0 done, 0 failed), 1 running")
    assert lines[2].startswith("003 debian_12 Hello: boot 0:00 | cells 0/1 finished")
    assert lines[3].startswith("003 debian_12 Hello: install 0:00 | cells 0/1")
    assert lines[4].startswith("cells 0/1 finished (0 done, 0 failed), 1 running; elapsed 1:02")
    assert lines[4].endswith("| 003 debian_12 Hello: install 0:42")
    assert lines[5] == "accelerator: tcg (KVM given up: a VM (TestRun003) printed nothing in 30 s)"
    assert lines[6].startswith("cell 003: pending")  # between its nodes
    assert lines[7].startswith("cells 0/1 finished (0 done, 0 failed), 0 running")  # heartbeat, no VM
    assert "|" not in lines[7]
    assert len(lines) == 8


def test_progress_on_a_terminal_redraws_the_vm_lines_in_place():
    out, clock = io.StringIO(), Clock()
    p = Progress(stream=out, tty=True, labels={"000": "el9 Hello", "001": "debian_12 Hello"}, clock=clock)
    p.add_dag("m.dag", dict.fromkeys(["TestRun000", "TestRun001"], "pending"))
    for n in ("TestRun000", "TestRun001"):
        p.update("m.dag", n, "running")
        p.phase(n, None)
    clock.now += 42
    p.phase("TestRun001", "install")
    clock.now += 5
    p.tick()
    frame = out.getvalue().rsplit("\033[J", 1)[1]
    assert frame.splitlines() == [
        p.line(),
        "000 el9 Hello: boot 0:47",
        "001 debian_12 Hello: install 0:05",
    ]
    assert out.getvalue().endswith(frame) and "\033[2A\033[J" in out.getvalue()  # back up over 2 VM lines
    p.update("m.dag", "TestRun000", "done")
    assert out.getvalue().rsplit("\033[J", 1)[1].splitlines()[1:] == ["001 debian_12 Hello: install 0:05"]
    p.close()


@pytest.mark.vm
def test_a_libguestfs_launch_is_bounded(tmp_path):
    """The appliance's qemu is killed when the launch takes longer than its limit (here far
    too short for any appliance): the launch fails in seconds instead of hanging."""
    guestfs = pytest.importorskip("guestfs")
    from osgtest_dag.base import command
    from osgtest_dag.guest import gfs

    disk = tmp_path / "d.qcow2"
    command.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"])
    gfs.prepare_environment()
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.add_drive_opts(str(disk), readonly=1, format="qcow2")
        t0 = time.monotonic()
        with pytest.raises(gfs.LaunchTimedOut, match="did not start in 1 s"):
            gfs.launch_bounded(g, 1.0)
        assert time.monotonic() - t0 < 60
    finally:
        g.close()


def test_a_disk_the_job_does_not_transfer_back_ignores_the_guests_flushes(tmp_path, probe_cache):
    """The IO disk comes back (transfer_output_files): the guest's writes must reach its file
    (cache=writeback). The scratch disk is thrown away with the VM, like the root overlay: its
    flushes (dpkg flushes every file it unpacks) stay in qemu (cache=unsafe)."""
    boot_disk(tmp_path / "guest.img", PRINTING_CODE)
    for name in ("io-000.qcow2", "scratch-000.qcow2"):
        command.run(["qemu-img", "create", "-q", "-f", "qcow2", tmp_path / name, "16M"])
    spec = replace(
        vm_spec(tmp_path, max_wall=3, max_starts=1),
        vm_disks=(
            ("guest.img", "vda", "r", "raw"),
            ("io-000.qcow2", "vdb", "w", "qcow2"),
            ("scratch-000.qcow2", "vdc", "w", "qcow2"),
        ),
        transfer_output_files=("io-000.qcow2",),
    )

    class Argvs(ChildRecord):
        seen: list = []

        def add(self, pid, argv, where):
            self.seen.append(list(argv))
            super().add(pid, argv, where)

    children = Argvs(tmp_path / "children.jsonl")
    job = VmJob(
        spec,
        dagfile.Node(name="TestRun000", submit_file="vm.sub"),
        Attempt(retry=0, started=0.0),
        accel=RunAccel("tcg"),
        children=children,
        silent_limit_s=3,
    )
    assert job.run() == RETURN_REMOVED
    (argv,) = children.seen
    drives = [a for a in argv if a.startswith("file=")]
    assert [d.split(",id=")[1] for d in drives] == [
        "vda,cache=unsafe",
        "vdb,cache=writeback",
        "vdc,cache=unsafe",
    ]
    assert "io-000.qcow2" in drives[1] and "scratch-000.qcow2" in drives[2]
    assert (tmp_path / "io-000.qcow2").is_file()  # came back
