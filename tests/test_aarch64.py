"""aarch64 end to end on this machine: the local builder's arm64 images (UEFI, systemd-boot),
the executor's qemu-system-aarch64 chosen from the job's requirements, and a real run."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.local import submit
from osgtest_dag.generate import workflow
from osgtest_dag.guest import debian_builder, image, machines, qemu, uefi_disk
from osgtest_dag.model import dagfile
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog

PLATFORM = "debian_12.aarch64"


@pytest.fixture
def cat():
    return Catalog.load(image_dir="/images")


def test_catalog_offers_debian_12_aarch64_to_the_local_builder(cat):
    platform = cat.platform(PLATFORM)
    assert image.choose_builder(platform, "auto") == "local"
    inputs = image.build_inputs(platform, "local", cat)
    assert inputs.packages[0] == "linux-image-cloud-arm64" and "systemd-boot-efi" in inputs.packages
    assert "linux-image-cloud-amd64" not in inputs.packages and "busybox-static" in inputs.packages
    text = json.loads(inputs.template)
    assert text["arch"] == "arm64"
    assert "console=ttyAMA0,115200" in text["uefi"]["loader/entries/osgtest.conf"]
    # an x86_64 recipe says nothing of its architecture (its stored images stay current) and
    # the two never share a digest
    x86 = image.build_inputs(cat.platform("debian_12.x86_64"), "local", cat)
    assert "arch" not in json.loads(x86.template) and x86.digest != inputs.digest
    assert x86.packages[0] == "linux-image-cloud-amd64" and "systemd-boot-efi" not in x86.packages


def test_builder_refuses_an_unknown_architecture():
    with pytest.raises(UserError, match="makes no riscv64 images"):
        debian_builder.recipe_for("bookworm", arch="riscv64")


def test_systemd_boot_entries():
    got = uefi_disk.entries(
        "arm64", kernel="vmlinuz-6.1", fast_initrd="fast.img", initrd="initrd.img-6.1", label="rootfs"
    )
    assert got["loader/loader.conf"].startswith("timeout 0\ndefault osgtest.conf\n")
    fast, debian = got["loader/entries/osgtest.conf"], got["loader/entries/debian.conf"]
    assert "linux /osgtest/vmlinuz-6.1\ninitrd /osgtest/fast.img\n" in fast
    assert "options root=LABEL=rootfs rw console=ttyAMA0,115200 panic=-1 quiet systemd" in fast
    assert "initrd /osgtest/initrd.img-6.1\n" in debian and " quiet" not in debian
    with pytest.raises(UserError, match="no UEFI boot for amd64"):
        uefi_disk.entries("amd64", kernel="k", fast_initrd="f", initrd="i", label="l")


def test_efi_kernel_is_unpacked_and_checked(tmp_path):
    pe = b"MZ" + bytes(4094)
    (tmp_path / "vmlinuz.gz").write_bytes(gzip.compress(pe))
    uefi_disk.efi_kernel(tmp_path / "vmlinuz.gz", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == pe
    (tmp_path / "plain").write_bytes(pe)
    uefi_disk.efi_kernel(tmp_path / "plain", tmp_path / "out2")
    assert (tmp_path / "out2").read_bytes() == pe
    (tmp_path / "elf").write_bytes(b"\x7fELF" + bytes(100))
    with pytest.raises(UserError, match="not an EFI application"):
        uefi_disk.efi_kernel(tmp_path / "elf", tmp_path / "out3")


def test_uefi_disk_layout(tmp_path):
    """A real GPT disk: the ESP has systemd-boot on the removable-media path, the entries and
    the kernel; the root file system is at the second partition with its label."""
    tree = tmp_path / "tree"
    (tree / "usr/lib/systemd/boot/efi").mkdir(parents=True)
    (tree / "usr/lib/systemd/boot/efi/systemd-bootaa64.efi").write_bytes(b"MZ-systemd-boot")
    (tree / "etc").mkdir()
    (tree / "etc/hostname").write_text("osgtest\n")
    (tree / "boot").mkdir()
    (tree / "boot/vmlinuz-x").write_bytes(gzip.compress(b"MZ-kernel"))  # as Debian may ship it
    (tree / "boot/f.img").write_bytes(b"fast")
    (tree / "boot/i.img").write_bytes(b"debian")
    texts = uefi_disk.entries(
        "arm64", kernel="vmlinuz-x", fast_initrd="f.img", initrd="i.img", label="rootfs"
    )
    raw = tmp_path / "disk.raw"
    uefi_disk.make_bootable_disk(
        tree, "arm64", "vmlinuz-x", ("f.img", "i.img"), label="rootfs", raw=raw, size_mb=256
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw", "tree"]  # nothing left behind
    table = json.loads(command.run(["sfdisk", "--json", raw], timeout=60).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    esp, root = table["partitions"]
    assert esp["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" and esp["start"] == 2048
    assert root["start"] == 2048 + uefi_disk.ESP_SIZE_MB * 2048
    # the ESP, read back with mtools at its offset
    env = {"MTOOLS_SKIP_CHECK": "1"}
    at = f"{raw}@@{esp['start'] * 512}"

    def esp_file(path: str) -> bytes:
        return command.run(["mtype", "-i", at, f"::/{path}"], env=env, timeout=60).stdout.encode()

    assert esp_file("EFI/BOOT/BOOTAA64.EFI") == b"MZ-systemd-boot"
    assert esp_file("osgtest/vmlinuz-x") == b"MZ-kernel"
    assert esp_file("osgtest/f.img") == b"fast" and esp_file("osgtest/i.img") == b"debian"
    assert esp_file("loader/entries/osgtest.conf").decode() == texts["loader/entries/osgtest.conf"]
    blkid = command.run(
        ["blkid", "-p", "-O", str(root["start"] * 512), "-o", "export", raw], timeout=60
    ).stdout
    assert "LABEL=rootfs" in blkid and "TYPE=ext4" in blkid


def test_qemu_argv_aarch64(tmp_path):
    argv = qemu.qemu_argv(
        tmp_path / "ov.qcow2",
        [qemu.Disk(tmp_path / "io.qcow2", "qcow2")],
        accel="tcg",
        memory_mb=1024,
        vcpus=1,
        networking=True,
        console_log=tmp_path / "c.log",
        arch="aarch64",
    )
    s = " ".join(argv)
    assert argv[0] == "qemu-system-aarch64"
    assert "-machine virt,accel=tcg -cpu max,pauth-impdef=on" in s
    assert f"-bios {machines.AARCH64_FIRMWARE}" in s
    # the same disks and NIC as an x86_64 VM: the IO disk is vdb, the image boots from vda
    assert "virtio-blk-pci,drive=vda,bootindex=1" in s and "id=vdb,cache=writeback" in s
    assert "-nic user,model=virtio-net-pci" in s
    assert machines.accel_for("aarch64", "kvm") == ("kvm" if machines.HOST_ARCH == "aarch64" else "tcg")
    assert machines.accel_for(machines.HOST_ARCH, "kvm") == "kvm"
    with pytest.raises(UserError, match="no qemu machine for 'sparc'"):
        qemu.qemu_argv(
            tmp_path / "o",
            [],
            accel="tcg",
            memory_mb=1,
            vcpus=1,
            networking=False,
            console_log=tmp_path / "c",
            arch="sparc",
        )


def test_job_arch_comes_from_the_requirements(tmp_path, cat):
    """The generated VM job of an aarch64 cell asks for an aarch64 execute point; the local
    executor reads that with HTCondor's parser and plays one."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "m.yaml").write_text(
        "platforms: [debian_12.x86_64, debian_12.aarch64]\nsources: ['stable; main']\n"
        "package_sets:\n  - label: Hello\n    packages: [hello]\n"
    )
    m = matrix.build([tmp_path / "p"], cat)
    run = workflow.write_run(
        tmp_path / "run",
        list(m.cells),
        cat,
        workflow.WorkflowOptions(tool="osgtest-dag"),
        param_files=list(m.files),
    )
    dag = dagfile.parse(run / "matrix.dag")
    arches = {}
    for name, node in dag.nodes.items():
        if name.startswith("TestRun"):
            spec = submit.read_job(run / node.submit_file, node.vars, run, node_name=name)
            arches[node.vars["platform"]] = spec.arch
    assert arches == {"debian_12.x86_64": "x86_64", "debian_12.aarch64": "aarch64"}


def test_job_arch_unknown_is_refused(tmp_path):
    sub = tmp_path / "t.sub"
    sub.write_text('universe = vm\nrequirements = (TARGET.Arch == "PPC64LE") && HasVM\nqueue\n')
    with pytest.raises(UserError, match="Arch 'PPC64LE'"):
        submit.read_job(sub, {}, tmp_path, node_name="TestRun000")
    sub.write_text('universe = vm\nrequirements = (TARGET.ARCH == "AARCH64")\nqueue\n')
    assert submit.read_job(sub, {}, tmp_path, node_name="TestRun000").arch == "aarch64"
    sub.write_text("universe = vm\nqueue\n")
    assert submit.read_job(sub, {}, tmp_path, node_name="TestRun000").arch == "x86_64"


# --- a real aarch64 run ---------------------------------------------------------------------

MATRIX = """\
platforms: [debian_12.aarch64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
    selinux: false
    test_command: test "$(uname -m)" = aarch64 && hello | grep -q 'Hello, world!'
  - label: Missing package
    packages: [osgtest-no-such-package]
    selinux: false
vm: {memory: 1024, vcpus: 1}   # -j 2 on two cores: a vCPU per core
test_timeout: 300
"""


@pytest.fixture(scope="module")
def debian12_arm64_image(guest_image_store) -> Path:
    """The debian_12 arm64 image, built with the local builder (under emulation) if missing or
    stale; kept in the image store for later runs."""
    return image.build_image(PLATFORM, guest_image_store, builder="local").image.path


@pytest.mark.vm
@pytest.mark.slow
def test_aarch64_run(tmp_path, cli, debian12_arm64_image):
    """Two cells on the emulated aarch64 machine: `hello` passes (run as an aarch64 program),
    a package that does not exist is an install failure; the VMs booted their own disks
    through the UEFI firmware under TCG."""
    p = tmp_path / "params"
    p.mkdir()
    (p / "m.yaml").write_text(MATRIX)
    run = tmp_path / "run"
    r = cli("generate", p, "-o", run, "--image-dir", debian12_arm64_image.parent)
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    r = cli("run", run, "-j", "2", "--no-progress", timeout=420)
    took = time.monotonic() - t0
    assert r.returncode == 1, r.stdout + r.stderr  # a product failure (install), no infra
    summary = json.loads((run / "matrix-summary.json").read_text())
    got = {c["serial"]: c["outcome"] for c in summary["cells"]}
    assert got == {"000": "pass", "001": "install"}, (got, took)
    for serial in ("000", "001"):
        [vm] = [
            json.loads(line) for line in (run / "cells" / serial / "local-vm.json").read_text().splitlines()
        ]
        assert vm["accel"] == "tcg" and vm["returncode"] == 0 and not vm["timed_out"]
        console = (run / "cells" / serial / vm["console"]).read_text(errors="replace")
        # the firmware started the disk's own loader (systemd-boot on the ESP): no -kernel
        assert "BdsDxe: starting Boot" in console and "reboot: Power down" in console, console[-2000:]
