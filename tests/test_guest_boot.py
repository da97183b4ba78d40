"""Real boots: the debian_12 base image under qemu (TCG here) with a cell's IO disk.

Each boot runs the real payload against the real Debian mirror and is judged by the
result.json and exit-status it leaves on the IO disk. Two VMs at a time (one vCPU each).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import extract_output

from osgtest_dag.base.errors import UserError
from osgtest_dag.guest import iodisk, qemu

BOOT_LIMIT_S = 600  # a boot takes ~40-80 s under TCG on an idle 2-core host; much more when loaded


@dataclass(frozen=True)
class Outcome:
    boot: qemu.BootResult
    result: dict
    exit_status: int
    output: Path

    def phases(self) -> dict[str, str]:
        return {p["name"]: p["status"] for p in self.result["phases"]}


@pytest.fixture
def run_cells(tmp_path, debian12_image, make_cell_input):
    """Boot cells side by side (one vCPU each: the two cores run two VMs), each with its own
    IO disk; their outcomes in order once all have powered off."""

    def run(*cells: dict) -> list[Outcome]:
        started = []
        for i, cell in enumerate(cells):
            cell = dict(cell)
            networking, base = cell.pop("networking", True), cell.pop("base", debian12_image)
            work = tmp_path / f"cell{i}"
            inp = make_cell_input(name=f"cell{i}", **cell)
            disk = iodisk.make_iodisk(inp, work / "io.qcow2")
            vm = qemu.start(
                base,
                [qemu.Disk(disk, "qcow2")],
                memory_mb=1024,
                vcpus=1,
                networking=networking,
                timeout_s=BOOT_LIMIT_S,
                console_log=work / "console.log",
                workdir=work / "vm",
            )
            started.append((vm, disk, work))
        outcomes = []
        try:
            for vm, disk, work in started:
                res = vm.wait()
                assert res is not None
                print(
                    f"boot: {res.wall_s:.1f} s rc={res.returncode} timed_out={res.timed_out} accel={res.accel}"
                )
                out = extract_output(disk, work / "extracted")
                result = json.loads((out / "result.json").read_text())
                outcomes.append(Outcome(res, result, int((out / "exit-status").read_text()), out))
        finally:
            for vm, _, _ in started:
                vm.kill()
        return outcomes

    return run


def _explain(o: Outcome) -> str:
    logs = "".join(
        f"\n--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(o.output.glob("*.log"))
    )
    return json.dumps(o.result, indent=1) + logs


@pytest.mark.vm
def test_success_and_a_missing_package_side_by_side(run_cells, debian12_image):
    """hello installs and passes its test (and the update phase); beside it, a package that
    does not exist is an install failure."""
    before = (debian12_image.stat().st_mtime_ns, debian12_image.stat().st_size)
    o, missing = run_cells(
        {
            "packages": ["hello"],
            # and udev's coldplug left the terminals out (guest.testvm): udev would have
            # given /dev/ttyS0 the group dialout
            "test_command": 'hello | grep -q "Hello, world" && [ "$(stat -c %G /dev/ttyS0)" = root ]',
            "update_apt_sources": [
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
            ],
        },
        {"packages": ["osgtest-dag-no-such-package"], "test_command": "true"},
    )
    assert o.boot.ok and not o.boot.timed_out, o.boot
    assert o.boot.wall_s < BOOT_LIMIT_S
    assert (o.result["status"], o.result["exit_code"], o.exit_status) == ("pass", 0, 0), _explain(o)
    assert set(o.phases().values()) == {"ok"}
    assert list(o.phases()) == [
        "environment",
        "network",
        "hostname",
        "repositories",
        "install",
        "test",
        "update",
        "collect",
    ]
    assert o.result["serial"] == "001" and o.result["current_phase"] is None
    # What collect gathered.
    assert "hello\t" in (o.output / "packages-end.txt").read_text()
    assert "hello\t" not in (o.output / "packages-start.txt").read_text()
    assert "VERSION_CODENAME=bookworm" in (o.output / "os-release").read_text()
    for f in ("journal.txt", "dmesg.txt", "var-log.tar.gz", "etc.tar.gz", "console-hook.log"):
        assert (o.output / f).stat().st_size > 0, f
    assert "osgtest-001.osgtest.test" in (o.output / "hostname.log").read_text()
    assert "deb http://deb.debian.org/debian bookworm-updates main" in (o.output / "update.log").read_text()
    assert "powering off" in o.boot.console_log.read_text(errors="replace")
    # debconf's preconfiguration, which does nothing without apt-utils, was not started
    assert "skipped while apt-utils is not installed" in (o.output / "environment.log").read_text()
    assert "delaying package configuration" not in (o.output / "install.log").read_text()
    # no module for a feature a test VM does not use was loaded at boot (guest.testvm)
    dmesg = (o.output / "dmesg.txt").read_text()
    assert "kvm:" not in dmesg and "gcm_enc/dec engaged" not in dmesg, dmesg[-2000:]
    # The base image was only read (the writes went to the overlay, which is gone).
    assert (debian12_image.stat().st_mtime_ns, debian12_image.stat().st_size) == before
    assert not list((o.boot.console_log.parent / "vm").glob("overlay-*.qcow2"))

    assert missing.boot.ok, missing.boot
    assert (missing.result["status"], missing.exit_status) == ("install", 2), _explain(missing)
    ph = missing.phases()
    assert ph["repositories"] == "ok" and ph["install"] == "failed" and ph["test"] == "skipped"
    assert (
        "Unable to locate package osgtest-dag-no-such-package" in (missing.output / "install.log").read_text()
    )


@pytest.mark.vm
def test_failing_test_on_trixie_and_no_network_side_by_side(run_cells, debian13_image):
    """A test that fails, on the local builder's trixie image (so both Debian releases boot);
    beside it, a VM with no network is a network failure."""
    o, offline = run_cells(
        {
            "base": debian13_image,
            "platform_id": "debian_13.x86_64",
            "packages": ["hello"],
            "apt_sources": ["deb http://deb.debian.org/debian trixie main"],
            "test_command": 'hello | grep -q "Goodbye"',
        },
        {"networking": False, "network_retries": 2, "test_command": "true"},
    )
    assert o.boot.ok, o.boot
    assert "VERSION_CODENAME=trixie" in (o.output / "os-release").read_text()
    assert (o.result["status"], o.exit_status) == ("test", 1), _explain(o)
    ph = o.phases()
    assert ph["install"] == "ok" and ph["test"] == "failed"
    assert ph["update"] == "skipped" and ph["collect"] == "ok"
    assert "test exit code: 1" in (o.output / "test.log").read_text()

    assert offline.boot.ok, offline.boot
    assert (offline.result["status"], offline.exit_status) == ("network", 5), _explain(offline)
    ph = offline.phases()
    assert ph["environment"] == "ok" and ph["network"] == "failed"
    assert ph["repositories"] == "skipped" and ph["collect"] == "ok"
    assert "no global address" in (offline.output / "network.log").read_text()


@pytest.mark.vm
def test_wall_clock_limit_kills_the_vm(tmp_path, debian12_image):
    res = qemu.boot(debian12_image, [], timeout_s=4, workdir=tmp_path, networking=False)
    assert res.timed_out and res.returncode is None
    assert 3.5 < res.wall_s < 20


@pytest.mark.vm
def test_handle_kill_and_poll(tmp_path, debian12_image):
    vm = qemu.start(debian12_image, [], timeout_s=120, workdir=tmp_path, networking=False)
    assert vm.poll() is None
    assert vm.wait(timeout=1) is None
    res = vm.kill()
    assert res.returncode is not None and not res.timed_out
    assert vm.poll() is res
    assert not vm.overlay.exists()


def test_accel_detection_and_override(monkeypatch):
    accel = qemu.detect_accel()
    assert accel in qemu.ACCELS
    assert qemu.detect_accel() == accel  # cached
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert accel == "tcg"
    monkeypatch.setenv("OSGTEST_DAG_ACCEL", "tcg")
    assert qemu.detect_accel() == "tcg"
    monkeypatch.setenv("OSGTEST_DAG_ACCEL", "xen")
    with pytest.raises(UserError, match="OSGTEST_DAG_ACCEL"):
        qemu.detect_accel()


@pytest.mark.vm
def test_accel_probe_boots_a_real_linux_kernel():
    """The probe trusts an accelerator only when a Linux guest reaches user space under it (a
    boot sector is not enough: some hosts run one under KVM while Linux hangs). TCG always works."""
    ok, why = qemu._probe("tcg", 90)
    assert ok, why
    assert "Linux guest booted to user space" in why  # the set-up installs a kernel with its initrd
    ok, why = qemu._probe("tcg", 0.5)  # a kernel that cannot finish: not trusted
    assert not ok and "did not finish booting" in why


def test_accel_probe_answer_is_kept_per_host_boot(monkeypatch, tmp_path):
    monkeypatch.setenv("OSGTEST_DAG_CACHE", str(tmp_path))
    monkeypatch.delenv("OSGTEST_DAG_ACCEL", raising=False)
    monkeypatch.setattr(qemu, "_accel_cache", None)
    calls = []
    monkeypatch.setattr(qemu, "_probe", lambda accel, timeout: calls.append(accel) or (False, "hung"))
    assert qemu.detect_accel() == "tcg"
    monkeypatch.setattr(qemu, "_accel_cache", None)  # a new process, same boot
    assert qemu.detect_accel() == "tcg" and calls == ["kvm"]
    key, accel, why = (tmp_path / "accel-probe.txt").read_text().rstrip("\n").split("\t")
    assert (accel, why) == ("tcg", "KVM probe: hung")
    (tmp_path / "accel-probe.txt").write_text("another-boot\tkvm\tok\n")
    monkeypatch.setattr(qemu, "_accel_cache", None)
    assert qemu.detect_accel() == "tcg" and calls == ["kvm", "kvm"]


def test_qemu_argv(tmp_path):
    argv = qemu.qemu_argv(
        tmp_path / "ov,1.qcow2",
        [qemu.Disk(tmp_path / "io.qcow2", "qcow2")],
        accel="tcg",
        memory_mb=2048,
        vcpus=2,
        networking=True,
        console_log=tmp_path / "c.log",
    )
    s = " ".join(argv)
    assert "-machine q35,accel=tcg -cpu max" in s
    assert "-smp 2 -m 2048" in s and "-no-reboot" in s and "-display none -monitor none" in s
    assert f"-serial file:{tmp_path}/c.log" in s
    assert f"file={tmp_path}/ov,,1.qcow2,format=qcow2,if=none,id=vda" in s
    assert f"file={tmp_path}/io.qcow2,format=qcow2,if=none,id=vdb" in s
    assert "-nic user,model=virtio-net-pci" in s
    off = qemu.qemu_argv(
        tmp_path / "o.qcow2",
        [],
        accel="kvm",
        memory_mb=512,
        vcpus=1,
        networking=False,
        console_log=tmp_path / "c.log",
    )
    assert "-nic none" in " ".join(off) and "accel=kvm" in " ".join(off)


def test_boot_refuses_missing_files(tmp_path):
    with pytest.raises(UserError, match="base image"):
        qemu.start(tmp_path / "nope.qcow2", [], workdir=tmp_path, accel="tcg")
