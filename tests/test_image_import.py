"""`image import`: a distribution's own image made into a base image, smoke-booted, stored.

Fast tests: the refusals and their messages, the store's metadata of an imported image, the
SELinux configuration text, the smoke cell and its verdict, the CLI. The `vm` tests import a
foreign image - made here the way a distribution makes its cloud image, not by our builder:
Debian's own initramfs, ifupdown configured for a NIC name qemu does not give, cloud-init,
EXTLINUX with no serial console and no hook - then smoke-boot it (the payload must start and
its network come up).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from osgtest_dag.base import command, paths
from osgtest_dag.base.errors import UserError
from osgtest_dag.generate.cellconfig import write_input_dir
from osgtest_dag.guest import cloudprep, debian_builder, gfs, image, image_import, iodisk, oz_builder, qemu
from osgtest_dag.model.cell import CellConfig
from osgtest_dag.ops import smoke
from osgtest_dag.plan.catalog import Catalog

PLATFORM = "debian_12.x86_64"


def _qemu_img(*args) -> None:
    command.run(["qemu-img", *map(str, args)], timeout=60)


def _raw_disk(path: Path, size_mb: int = 8) -> Path:
    """A raw disk with an MBR partition table (boot signature) and an empty ext4 partition."""
    with open(path, "wb") as f:
        f.truncate(size_mb << 20)
    command.run(["sfdisk", "--quiet", path], input="label: dos\nstart=2048, type=83\n", timeout=60)
    command.run(
        ["mkfs.ext4", "-q", "-F", "-E", "offset=1048576", path, f"{(size_mb - 1) * 1024}k"], timeout=60
    )
    return path


# --- refusals ---------------------------------------------------------------------------------


def _refused(tmp_path, file, platform=PLATFORM, catalog=None) -> UserError:
    with pytest.raises(UserError) as ei:
        image_import.import_image(platform, file, tmp_path / "store", catalog=catalog)
    assert not list((tmp_path / "store").glob("*.qcow2")) and not list((tmp_path / "store").glob("*.json"))
    return ei.value


def test_refuses_a_missing_file_or_a_directory(tmp_path):
    e = _refused(tmp_path, tmp_path / "nope.qcow2")
    assert e.message == "the image to import does not exist" and e.where == tmp_path / "nope.qcow2"
    e = _refused(tmp_path, tmp_path)
    assert "not a regular file" in e.message


def test_refuses_what_qemu_img_does_not_recognise(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a disk image\n" * 1000)
    e = _refused(tmp_path, text)
    assert "qemu-img does not recognise the file as a disk image" in e.message
    assert "no boot signature" in e.message and ".tar.xz" in e.hint
    broken = tmp_path / "broken.qcow2"  # a qcow2 header and nothing after it
    broken.write_bytes(b"QFI\xfb\x00\x00\x00\x03" + b"\xff" * 56)
    e = _refused(tmp_path, broken)
    assert "qemu-img does not recognise" in e.message and e.where == broken.absolute()


def test_refuses_other_formats_and_backing_files(tmp_path):
    vmdk = tmp_path / "disk.vmdk"
    _qemu_img("create", "-q", "-f", "vmdk", vmdk, "16M")
    e = _refused(tmp_path, vmdk)
    assert "is a vmdk image" in e.message and "qemu-img convert -O qcow2" in e.hint
    base = _raw_disk(tmp_path / "base.raw")
    overlay = tmp_path / "overlay.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", overlay)
    e = _refused(tmp_path, overlay)
    assert "backing file" in e.message and "flatten" in e.hint


def test_a_raw_disk_passes_the_probe(tmp_path):
    info = image_import.probe(_raw_disk(tmp_path / "disk.raw"))
    assert info["format"] == "raw"


def test_refuses_a_platform_whose_image_has_its_own_hook(tmp_path):
    extra = tmp_path / "catalog.yaml"
    extra.write_text(
        "platforms:\n  reference_9: {family: el, distro: rocky, display: Reference, major: 9, "
        "arches: [x86_64], hook: own}\n"
    )
    cat = Catalog.load(extra=[extra])
    e = _refused(tmp_path, _raw_disk(tmp_path / "disk.raw"), "reference_9.x86_64", cat)
    assert "boot hook of its own" in e.message and "hook: own" in e.message


@pytest.mark.parametrize("os_id", ["rocky_9", "alma_10", "centos_stream_9"])
def test_el_build_says_to_import(tmp_path, os_id):
    with pytest.raises(UserError) as ei:
        image.build_image(f"{os_id}.x86_64", tmp_path)
    e = ei.value
    assert "the installed Oz cannot build" in e.message
    assert f"osgtest-dag image import {os_id}.x86_64 FILE" in e.hint and "GenericCloud" in e.hint
    assert not list(tmp_path.glob("*.qcow2"))


# --- the store's metadata ---------------------------------------------------------------------


def _install_imported(store: Path, platform=PLATFORM) -> image.ImageInfo:
    """A small real qcow2 installed the way import_image installs one."""
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".{platform}.qcow2.tmp"
    _qemu_img("create", "-q", "-f", "qcow2", tmp, "16M")
    origin = image.ImageOrigin(
        path="/downloads/debian-12-genericcloud-amd64.qcow2",
        size=344_064_000,
        mtime=image.utc_stamp(1_700_000_000),
        sha256="ab" * 32,
        format="qcow2",
    )
    inputs = image_import.import_inputs(origin)
    return image.install_image(
        tmp,
        image.image_path(platform, store),
        {
            "platform": platform,
            "builder": image.IMPORT_BUILDER,
            "sha256": image.sha256_file(tmp),
            "size": tmp.stat().st_size,
            "format": "qcow2",
            "inputs_hash": inputs.digest,
            "inputs": inputs.parts(),
            "built": image.utc_stamp(),
            "build_seconds": 12.5,
            "packages": ["bash\t5.2\tamd64"],
            "origin": origin.to_json(),
        },
    )


def test_imported_image_info_round_trip(tmp_path):
    info = _install_imported(tmp_path / "store")
    doc = json.loads(info.meta_path.read_text())
    assert doc["schema"] == image.META_SCHEMA and doc["builder"] == "import"
    assert doc["origin"] == {
        "path": "/downloads/debian-12-genericcloud-amd64.qcow2",
        "size": 344_064_000,
        "mtime": "2023-11-14T22:13:20Z",
        "sha256": "ab" * 32,
        "format": "qcow2",
    }
    again = image.read_info(info.meta_path)
    assert again == info and again.origin == image.ImageOrigin.from_json(doc["origin"])
    assert image.list_images(tmp_path / "store") == [info]
    assert not list((tmp_path / "store").glob(".*.tmp*"))
    # a built image's metadata has no origin
    del doc["origin"]
    info.meta_path.write_text(json.dumps(doc))
    assert image.read_info(info.meta_path).origin is None


def test_build_keeps_an_imported_image(tmp_path):
    info = _install_imported(tmp_path / "store")
    out = image.build_image(PLATFORM, tmp_path / "store")  # no build: the import stays
    assert not out.built and out.image == info


# --- what the customization writes --------------------------------------------------------------


def test_selinux_config_made_permissive():
    text = "# comment\nSELINUX=enforcing\nSELINUXTYPE=targeted\n"
    new, before = cloudprep.permissive_config(text)
    assert before == "enforcing"
    assert new == f"# comment\n{cloudprep.PERMISSIVE}\nSELINUXTYPE=targeted\n"
    assert [ln for ln in new.splitlines() if ln.startswith("SELINUX=")] == ["SELINUX=permissive"]
    assert cloudprep.permissive_config("SELINUXTYPE=targeted")[0].endswith("\nSELINUX=permissive\n")
    assert cloudprep.permissive_config(new) == (new, "permissive")


# --- the smoke boot's cell and verdict -----------------------------------------------------------


def test_smoke_cell_is_minimal_and_valid(tmp_path):
    cat = Catalog.load()
    cfg = smoke.smoke_cell(cat.platform("rocky_9.x86_64"), cat)
    assert CellConfig.from_json(cfg.to_json(), "smoke") == cfg
    assert cfg.packages == () and cfg.test.command == "true" and not cfg.test.osg_test
    assert cfg.vm.disk == cfg.platform.image_size  # no scratch disk: the image alone is under test
    inp = write_input_dir(cfg, tmp_path / "input")
    env = (inp / "cell.env").read_text()
    assert "CELL_FAMILY=el\n" in env and "TEST_COMMAND=true\n" in env and "CELL_PACKAGES=''\n" in env
    assert not (inp / "osg-test.conf").exists()
    assert iodisk.make_iodisk(inp, tmp_path / "io.qcow2").is_file()


def _boot(tmp_path, timed_out=False, rc=0) -> qemu.BootResult:
    return qemu.BootResult(
        returncode=None if timed_out else rc,
        timed_out=timed_out,
        wall_s=42.0,
        console_log=tmp_path / "console.log",
        accel="tcg",
    )


def _result(out: Path, phases: dict[str, str], status: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "schema": "osgtest-dag/guest-result",
        "version": 1,
        "serial": "000",
        "phases": [{"name": k, "status": v} for k, v in phases.items()],
        "status": status,
    }
    (out / "result.json").write_text(json.dumps(doc))
    return out


def test_smoke_verdict(tmp_path):
    passed = {"environment": "ok", "network": "ok", "repositories": "failed", "collect": "ok"}
    ok, why, phases, status = smoke.verdict(_result(tmp_path / "a", passed, "repositories"), _boot(tmp_path))
    assert ok and phases == passed and status == "repositories" and "network came up" in why
    # a base image whose network does not come up is useless for cells: not installed
    no_net = {"environment": "ok", "network": "failed", "hostname": "skipped", "collect": "ok"}
    ok, why, phases, status = smoke.verdict(_result(tmp_path / "n", no_net, "network"), _boot(tmp_path))
    assert not ok and "network phase is failed" in why and phases == no_net and status == "network"
    ok, why, _, _ = smoke.verdict(None, _boot(tmp_path, timed_out=True))
    assert not ok and "never started" in why and "timed out" in why
    ok, why, _, _ = smoke.verdict(tmp_path / "empty", _boot(tmp_path, rc=1))
    assert not ok and "no output/result.json" in why and "qemu exit 1" in why
    ok, why, _, _ = smoke.verdict(
        _result(tmp_path / "b", {"environment": "failed"}, "payload"), _boot(tmp_path)
    )
    assert not ok and "environment phase is failed" in why
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "result.json").write_text("{cut")
    assert not smoke.verdict(tmp_path / "c", _boot(tmp_path))[0]


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_help(cli):
    r = cli("image", "import", "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage: osgtest-dag image import [OPTIONS] PLATFORM FILE" in r.stdout
    for word in ("--store", "--no-smoke", "GenericCloud", "sha256"):
        assert word in r.stdout
    r = cli("image", "build", "--help")
    assert r.returncode == 0 and "--no-smoke" in r.stdout and "image import" in r.stdout
    assert "import" in cli("image", "--help").stdout


def test_cli_refusals(cli, tmp_path):
    r = cli("image", "import", PLATFORM, tmp_path / "missing.qcow2", "--store", tmp_path / "s")
    assert r.returncode == 2 and "the image to import does not exist" in r.stderr
    assert str(tmp_path / "missing.qcow2") in r.stderr
    r = cli("image", "build", "rocky_9.x86_64", "--store", tmp_path / "s")
    assert r.returncode == 2 and "image import rocky_9.x86_64 FILE" in r.stderr


# --- a foreign image, imported and booted (vm) ------------------------------------------------------

# How the foreign image is made: what a distribution's cloud image build does (Debian's FAI
# and Fedora's Kiwi alike): a package install, the distribution's own initramfs and network
# configuration written by cloud-init for the build machine's NIC, a bootloader with no serial
# console. Hashed for the cache key.
FOREIGN_RECIPE = {
    "suite": "bookworm",
    "mirror": "http://deb.debian.org/debian",
    "packages": [
        "linux-image-cloud-amd64",  # Debian's genericcloud kernel
        "initramfs-tools",  # Debian's own initramfs
        "systemd-sysv",
        "udev",
        "kmod",
        "e2fsprogs",
        "ifupdown",
        "isc-dhcp-client",
        "cloud-init",
        "iproute2",
        "netbase",
        "ca-certificates",
        "procps",
    ],
    "interfaces": "source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n",
    # cloud-init's file for the NIC the image was built on: no `eth0` in a VM with predictable names
    "cloud_init_network": "auto eth0\nallow-hotplug eth0\niface eth0 inet dhcp\n",
    "extlinux": "DEFAULT debian\nPROMPT 0\nTIMEOUT 0\nLABEL debian\n  LINUX /boot/{kernel}\n"
    "  INITRD /boot/{initrd}\n  APPEND root=LABEL=rootfs ro quiet\n",
    "fstab": "LABEL=rootfs / ext4 defaults 0 1\n",
}


def make_foreign_image(dest: Path) -> Path:
    """Build the foreign image (qcow2) at `dest` from FOREIGN_RECIPE (root: mmdebstrap, mounts)."""
    r = FOREIGN_RECIPE
    with tempfile.TemporaryDirectory(prefix="foreign-", dir=dest.parent) as tmp:
        work = Path(tmp)
        tree = work / "tree"
        command.run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--mode=root",
                "--format=directory",
                '--aptopt=APT::Install-Recommends "false"',
                "--include=" + ",".join(r["packages"]),
                r["suite"],
                tree,
                r["mirror"],
            ],
            timeout=1800,
        )
        (tree / "etc/network/interfaces").write_text(r["interfaces"])
        (tree / "etc/network/interfaces.d").mkdir(parents=True, exist_ok=True)
        (tree / "etc/network/interfaces.d/50-cloud-init").write_text(r["cloud_init_network"])
        (tree / "etc/fstab").write_text(r["fstab"])
        (tree / "etc/hostname").write_text("localhost\n")
        kernel, initrd = debian_builder.kernel_and_initrd(tree)
        (tree / "boot/extlinux").mkdir(parents=True)
        (tree / "boot/extlinux/extlinux.conf").write_text(r["extlinux"].format(kernel=kernel, initrd=initrd))
        part = dest.with_name(dest.name + ".part")
        debian_builder.make_disk(tree, part, work)
        os.replace(part, dest)
    return dest


@pytest.fixture(scope="session")
def foreign_image() -> Path:
    """The foreign image, built once per recipe into the cache (outside the image store)."""
    key = hashlib.sha256(json.dumps(FOREIGN_RECIPE, sort_keys=True).encode()).hexdigest()[:16]
    cache = paths.cache_dir() / "test-foreign-images"
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / f"debian-12-foreign-{key}.qcow2"
    if not dest.is_file():
        make_foreign_image(dest)
    return dest


@pytest.mark.vm
def test_foreign_image_imported_and_smoke_booted(foreign_image, tmp_path, cli):
    """The whole import of an image our builder did not make: its cloud-init's NetworkManager
    hook (no NetworkManager) and ifupdown notwithstanding, systemd-networkd does DHCP and the
    lease's DNS servers fill resolv.conf; the smoke boot's payload starts and its network
    comes up (an address, a route, DNS, the check host reached), as a cell's would."""
    store = tmp_path / "store"
    before = (foreign_image.stat().st_size, foreign_image.stat().st_mtime_ns)
    t0 = time.monotonic()
    r = cli("image", "import", PLATFORM, foreign_image, "--store", store)
    print(f"import + smoke boot: {time.monotonic() - t0:.0f} s\n{r.stdout}{r.stderr}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "smoke boot passed" in r.stderr and "(environment ok, network ok," in r.stderr
    assert (foreign_image.stat().st_size, foreign_image.stat().st_mtime_ns) == before  # only read
    assert not (store / f"{PLATFORM}.smoke").exists()  # kept only when the smoke boot fails
    info = image.read_info(store / f"{PLATFORM}.json")
    assert info is not None and info.path == store / f"{PLATFORM}.qcow2" and info.path.is_file()
    assert info.builder == "import" and info.sha256 == image.sha256_file(info.path)
    assert info.origin == image.ImageOrigin(
        path=str(foreign_image),
        size=before[0],
        mtime=image.utc_stamp(before[1] / 1e9),
        sha256=image.sha256_file(foreign_image),
        format="qcow2",
    )
    assert any(p.startswith("cloud-init\t") for p in info.packages)
    with gfs.open_disks([(info.path, "qcow2")], readonly=True) as g:
        g.mount_ro("/dev/sda1", "/")
        assert g.is_file("/etc/cloud/cloud-init.disabled")
        assert "network: {config: disabled}" in g.cat(cloudprep.CLOUD_INIT_CFG)
        assert not g.exists("/etc/network/interfaces.d/50-cloud-init")
        assert "eth0" not in g.cat("/etc/network/interfaces")
        assert g.is_symlink("/etc/systemd/system/multi-user.target.wants/osgtest-boot.service")
        assert g.is_symlink("/etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
        assert g.is_file("/etc/systemd/network/80-osgtest-dhcp.network")
        assert g.glob_expand("/etc/NetworkManager/system-connections/*") == []
        append = [ln for ln in g.cat("/boot/extlinux/extlinux.conf").splitlines() if "APPEND" in ln]
        assert append and all("console=ttyS0,115200n8" in ln and "quiet" not in ln for ln in append)
        assert g.cat("/etc/resolv.conf") == debian_builder.RESOLV_CONF  # the smoke VM wrote an overlay
        assert f"imported_sha256={info.origin.sha256}" in g.cat("/etc/osgtest-image-release")


@pytest.mark.vm
def test_selinux_customized_without_setfiles(foreign_image, tmp_path):
    """An image with an SELinux configuration and labels (as an EL cloud image has): the
    customization makes it permissive and labels what it wrote like its directory, with no
    `setfiles` (this host's appliance has none). One appliance, no boot."""
    disk = tmp_path / "selinux.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-b", foreign_image, "-F", "qcow2", disk)
    labels = {
        "/": "system_u:object_r:root_t:s0",
        "/etc": "system_u:object_r:etc_t:s0",
        "/usr/local/sbin": "system_u:object_r:bin_t:s0",
        "/etc/systemd/system": "system_u:object_r:systemd_unit_file_t:s0",
        "/etc/systemd/system/multi-user.target.wants": "system_u:object_r:systemd_unit_file_t:s0",
    }
    with gfs.open_disks([(disk, "qcow2")], readonly=False) as g:
        g.mount("/dev/sda1", "/")
        g.mkdir_p("/etc/selinux/targeted/contexts/files")
        g.write("/etc/selinux/config", b"SELINUX=enforcing\nSELINUXTYPE=targeted\n")
        g.write("/etc/selinux/targeted/contexts/files/file_contexts", b"/.* system_u:object_r:default_t:s0\n")
        g.mkdir_p("/usr/local/sbin")
        g.mkdir_p("/etc/systemd/system/multi-user.target.wants")
        for path, label in labels.items():
            g.lsetxattr("security.selinux", label, len(label), path)
        g.umount_all()
        oz_builder.customize_guest(g, stamp={"platform": PLATFORM})
        g.mount_ro("/dev/sda1", "/")
        assert cloudprep.PERMISSIVE in g.cat("/etc/selinux/config")
        assert "SELINUX=enforcing" not in g.cat("/etc/selinux/config")
        assert not g.exists("/.autorelabel")

        def label(p):
            return bytes(g.lgetxattr(p, "security.selinux")).rstrip(b"\0").decode()

        assert label("/usr/local/sbin/osgtest-boot") == labels["/usr/local/sbin"]
        assert label("/etc/systemd/system/osgtest-boot.service") == labels["/etc/systemd/system"]
        wants = "/etc/systemd/system/multi-user.target.wants/osgtest-boot.service"
        assert label(wants) == labels["/etc/systemd/system/multi-user.target.wants"]
        assert label("/etc/osgtest-image-release") == labels["/etc"]
        assert label("/etc/cloud/cloud-init.disabled") == labels["/etc"]  # via /etc/cloud
        assert label("/etc/resolv.conf") == labels["/etc"]


@pytest.mark.vm
def test_a_failed_smoke_boot_keeps_and_names_the_console_log(tmp_path):
    """A made image that cannot start the payload (a blank disk: the firmware finds nothing to
    boot) is refused within the limit; the error names the console log, kept with the cell,
    and the image is left where it was made (import_image then removes it, never installing
    it)."""
    made = tmp_path / f".{PLATFORM}.qcow2.tmp-1"  # where import_image makes an image
    _qemu_img("create", "-q", "-f", "qcow2", made, "16M")
    with pytest.raises(UserError) as ei:
        smoke.verify_image(made, Catalog.load().platform(PLATFORM), limit_s=5)
    e = ei.value
    console = tmp_path / f"{PLATFORM}.smoke" / "console.log"
    assert "the new image was not installed" in e.message and "never started" in e.message
    assert "timed out" in e.message
    assert e.where == console and console.is_file() and str(console) in e.hint
    assert (tmp_path / f"{PLATFORM}.smoke" / "io.qcow2").is_file()
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.vm
def test_refuses_an_image_with_no_operating_system(tmp_path):
    e = _refused(tmp_path, _raw_disk(tmp_path / "empty.raw"))
    assert "no operating system" in e.message and e.where == (tmp_path / "empty.raw").absolute()
    assert not list((tmp_path / "store").glob(".*.tmp-*"))  # the converted copy is gone


def test_foreign_recipe_differs_from_our_builder():
    """What makes the foreign image foreign (checked against the local builder's recipe)."""
    ours = debian_builder.recipe_for("bookworm")
    assert "initramfs-tools" in FOREIGN_RECIPE["packages"] and "cloud-init" in FOREIGN_RECIPE["packages"]
    assert "busybox-static" in ours.packages and "cloud-init" not in ours.packages
    assert "console=" not in FOREIGN_RECIPE["extlinux"] and "ttyS0" not in FOREIGN_RECIPE["extlinux"]
    assert debian_builder.FAST_INITRD not in FOREIGN_RECIPE["extlinux"]
