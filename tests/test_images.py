"""Base images: Oz templates, Oz-path customization on a real image, the image store."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError
from osgtest_dag.guest import debian_builder, gfs, image, initramfs, oz_builder, payload
from osgtest_dag.plan.catalog import Catalog

PLATFORMS = [
    "alma_8",
    "alma_9",
    "alma_10",
    "rocky_8",
    "rocky_9",
    "rocky_10",
    "centos_stream_9",
    "centos_stream_10",
    "debian_11",
    "debian_12",
    "debian_13",
]


@pytest.fixture(scope="module")
def cat():
    return Catalog.load()


# --- Oz templates -----------------------------------------------------------------------------


@pytest.mark.parametrize("os_id", PLATFORMS)
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_template_parses_with_oz(cat, os_id, arch):
    import oz.TDL

    plat = cat.platform(f"{os_id}.{arch}")
    text = oz_builder.render_template(plat)
    tdl = oz.TDL.TDL(text)  # Oz's own parser
    assert tdl.arch == arch
    assert tdl.name == f"osgtest-{os_id}-{arch}"
    assert tdl.installtype == "url" and tdl.url.startswith("http")
    assert arch in tdl.url or {"x86_64": "amd64", "aarch64": "arm64"}[arch] in tdl.url
    assert tdl.rootpw == "${rootpw}"  # filled in only at build time
    names = [p.name for p in tdl.packages]
    assert names and oz_builder.template_packages(text) == tuple(names)
    if plat.family == "debian":
        assert tdl.distro == "Debian" and tdl.update == str(plat.major)
        assert plat.codename in tdl.url
    else:
        assert tdl.distro.endswith(f"-{plat.major}")


def test_every_platform_has_a_template(cat):
    templates = {t.stem for t in oz_builder.template_dir().glob("*.tdl")}
    assert {p.rsplit(".", 1)[0] for p in cat.platform_ids()} <= templates


@pytest.mark.parametrize("os_id", PLATFORMS)
def test_oz_support_is_checked_against_installed_oz(cat, os_id, tmp_path):
    plat = cat.platform(f"{os_id}.x86_64")
    tdl = oz_builder.parse_template(oz_builder.render_template(plat))
    ok, why = oz_builder.oz_supports(tdl)
    if plat.major >= 10 or os_id == "debian_13":
        assert not ok  # no released Oz knows these
    if ok:
        return
    with pytest.raises(UserError) as ei:
        image.build_image(plat.id, tmp_path, builder="oz")
    msg = str(ei.value)
    assert "the installed Oz cannot build" in msg and plat.name in msg and why in msg
    if plat.family == "debian":
        assert "--builder local" in msg
    assert not list(tmp_path.glob("*.qcow2"))


def test_oz_install_invocation(tmp_path):
    cfg = oz_builder.write_oz_config(tmp_path, data_dir=tmp_path / "oz-data")
    argv = oz_builder.oz_install_argv(
        tmp_path / "t.tdl", tmp_path / "out.qcow2", cfg, tmp_path / "l.xml", timeout_s=1234
    )
    assert argv[0] == "oz-install" and argv[-1] == str(tmp_path / "t.tdl")
    assert argv[argv.index("-s") + 1] == str(tmp_path / "out.qcow2")
    assert argv[argv.index("-c") + 1] == str(cfg)
    assert argv[argv.index("-t") + 1] == "1234"
    assert "-u" not in argv  # our customization, not Oz's
    text = cfg.read_text()
    assert f"output_dir = {tmp_path}" in text and "image_type = qcow2" in text
    assert f"data_dir = {tmp_path / 'oz-data'}" in text


def test_choose_builder(cat):
    assert image.choose_builder(cat.platform("debian_12.x86_64"), "auto") == "local"
    assert image.choose_builder(cat.platform("rocky_9.x86_64"), "auto") == "oz"
    with pytest.raises(UserError, match="Debian images only"):
        image.choose_builder(cat.platform("rocky_9.x86_64"), "local")
    with pytest.raises(UserError, match="unknown image builder"):
        image.choose_builder(cat.platform("rocky_9.x86_64"), "docker")


# --- Oz-path customization on a real image ----------------------------------------------------


def _updated_with_usr(g) -> bool:
    """/etc/.updated and /var/.updated are there and no older than /usr (no
    ConditionNeedsUpdate work on boot)."""

    def mtime(p):
        st = g.statns(p)
        return (st["st_mtime_sec"], st["st_mtime_nsec"])

    return all(
        g.is_file(f"{d}/.updated") and mtime(f"{d}/.updated") >= mtime("/usr") for d in ("/etc", "/var")
    )


def _strip_customization(disk: Path) -> dict:
    """Make the image look like a fresh install: no hook, no stamp, installer-style network.

    Returns what the local builder had put there (checked by test_local_image_content).
    """
    with gfs.open_disks([(disk, "qcow2")], readonly=False) as g:
        g.mount("/dev/sda1", "/")
        seen = {
            "stamp": g.cat("/etc/osgtest-image-release"),
            "hook_enabled": g.is_symlink("/etc/systemd/system/multi-user.target.wants/osgtest-boot.service"),
            "fstab": g.cat("/etc/fstab"),
            "ldlinux": g.exists("/boot/extlinux/ldlinux.sys"),
            "extlinux": g.cat("/boot/extlinux/extlinux.conf"),
            "apt_conf": g.cat("/etc/apt/apt.conf.d/90osgtest"),
            "updated": _updated_with_usr(g),
            "resolv_conf": g.cat("/etc/resolv.conf"),
            "default_target": g.readlink("/etc/systemd/system/default.target"),
            "masked_units": [
                name
                for name in debian_builder.MASKED_UNITS
                if g.readlink(f"/etc/systemd/system/{name}") == "/dev/null"
            ],
            "masked_generators": [
                name
                for name in debian_builder.MASKED_GENERATORS
                if g.readlink(f"/etc/systemd/system-generators/{name}") == "/dev/null"
            ],
            "lists_stamp": g.cat("/" + debian_builder.APT_LISTS_STAMP),
            "lists": [n for n in g.ls("/var/lib/apt/lists") if n.endswith(("Packages", "InRelease"))],
            "initramfs": g.read_file("/boot/" + debian_builder.FAST_INITRD),
            "sources": g.cat("/etc/apt/sources.list"),
            "pkgcache": g.is_file("/var/cache/apt/pkgcache.bin"),
            "modprobe": g.cat("/etc/modprobe.d/osgtest-test-vm.conf"),
            "coldplug": g.cat("/etc/systemd/system/systemd-udev-trigger.service.d/osgtest.conf"),
            "no_sandbox": [
                s
                for s in debian_builder.UNSANDBOXED_SERVICES
                if g.is_file(f"/etc/systemd/system/{s}.d/osgtest-no-sandbox.conf")
            ],
        }
        for f in (
            "/usr/local/sbin/osgtest-boot",
            "/etc/systemd/system/osgtest-boot.service",
            "/etc/systemd/system/multi-user.target.wants/osgtest-boot.service",
            "/etc/osgtest-image-release",
            "/etc/systemd/network/80-osgtest-dhcp.network",
            "/etc/.updated",
            "/var/.updated",
        ):
            g.rm_f(f)
        conf = g.cat("/boot/extlinux/extlinux.conf")
        g.write(
            "/boot/extlinux/extlinux.conf", conf.replace("console=ttyS0,115200 panic=-1", "quiet").encode()
        )
        g.mkdir_p("/etc/network")
        g.write(
            "/etc/network/interfaces",
            b"auto lo\niface lo inet loopback\nallow-hotplug ens3\niface ens3 inet dhcp\n",
        )
        g.write("/etc/udev/rules.d/70-persistent-net.rules", b'SUBSYSTEM=="net", NAME="eth0"\n')
        g.write("/etc/machine-id", b"0123456789abcdef0123456789abcdef\n")
        g.umount_all()
    return seen


@pytest.fixture(scope="module")
def customized(debian12_image, tmp_path_factory):
    """An overlay of the debian_12 image, stripped, then customized by the Oz path's code."""
    work = tmp_path_factory.mktemp("oz-custom")
    disk = work / "installed.qcow2"
    command.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", debian12_image, "-F", "qcow2", disk])
    seen = _strip_customization(disk)
    stamp = {"platform": "debian_12.x86_64", "builder": "oz", "created": "2026-11-21T00:00:00Z"}
    packages = oz_builder.customize_image(disk, "qcow2", stamp=stamp)
    return disk, packages, stamp, seen


def test_local_image_content(customized):
    """What the local builder put into the debian_12 image (read before stripping it)."""
    seen = customized[3]
    assert "platform=debian_12.x86_64" in seen["stamp"] and "created=" in seen["stamp"]
    assert "builder=local" in seen["stamp"] and "inputs_hash=" in seen["stamp"]
    assert seen["hook_enabled"] and seen["ldlinux"]
    assert "LABEL=rootfs" in seen["fstab"]
    assert "SERIAL 0 115200" in seen["extlinux"] and "root=LABEL=rootfs" in seen["extlinux"]
    assert seen["apt_conf"] == debian_builder.APT_CONF
    assert seen["updated"]
    # boot to payload: the minimal initramfs first, Debian's second; what a throw-away VM does
    # not need is masked; DNS from the lease; the package lists of the build kept
    conf = seen["extlinux"]
    assert "DEFAULT osgtest" in conf and f"INITRD /boot/{debian_builder.FAST_INITRD}" in conf
    assert "INITRD /boot/initrd.img-" in conf
    assert seen["default_target"] == "/lib/systemd/system/multi-user.target"
    assert seen["masked_generators"] == list(debian_builder.MASKED_GENERATORS)
    assert seen["masked_units"] == list(debian_builder.MASKED_UNITS)
    assert seen["resolv_conf"] == debian_builder.RESOLV_CONF
    assert int(seen["lists_stamp"]) > 1_700_000_000
    assert "deb.debian.org_debian_dists_bookworm_InRelease" in seen["lists"]
    assert "deb.debian.org_debian-security_dists_bookworm-security_InRelease" in seen["lists"]
    assert any(
        n.startswith("deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages") for n in seen["lists"]
    )
    # the package cache built for the image's sources, the main suite (a `stable; main` cell's)
    assert seen["sources"] == "deb http://deb.debian.org/debian bookworm main\n" and seen["pkgcache"]
    assert seen["no_sandbox"] == list(debian_builder.UNSANDBOXED_SERVICES)
    assert seen["modprobe"] == debian_builder.MODPROBE_CONF and "blacklist kvm_amd\n" in seen["modprobe"]
    assert (
        seen["coldplug"] == debian_builder.COLDPLUG_DROPIN and "--subsystem-nomatch=tty " in seen["coldplug"]
    )
    listing = command.run(["cpio", "-t", "--quiet"], input=gzip.decompress(seen["initramfs"])).stdout.decode()
    names = set(listing.split())
    assert {"init", "bin/busybox", "modules/virtio_blk.ko", "modules/virtio_pci.ko", "modules.order"} <= names


def test_oz_customization_result(customized):
    disk, packages, stamp, _ = customized
    assert any(p.startswith("systemd\t") for p in packages)
    assert any(p.startswith("linux-image-cloud-amd64\t") for p in packages)
    with gfs.open_disks([(disk, "qcow2")], readonly=True) as g:
        g.mount_ro("/dev/sda1", "/")
        hook = "/usr/local/sbin/osgtest-boot"
        assert g.read_file(hook) == payload.payload_file(payload.BOOT_HOOK).read_bytes()
        assert g.statns(hook)["st_mode"] & 0o777 == 0o755
        assert (
            g.read_file("/etc/systemd/system/osgtest-boot.service")
            == payload.payload_file(payload.BOOT_UNIT).read_bytes()
        )
        assert (
            g.readlink("/etc/systemd/system/multi-user.target.wants/osgtest-boot.service")
            == "/etc/systemd/system/osgtest-boot.service"
        )
        assert g.cat("/etc/systemd/network/80-osgtest-dhcp.network") == debian_builder.NETWORK_FILE
        assert "allow-hotplug" not in g.cat("/etc/network/interfaces")
        assert g.is_symlink("/etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
        assert not g.exists("/etc/udev/rules.d/70-persistent-net.rules")
        assert g.cat("/etc/machine-id") == ""
        assert g.readlink("/etc/systemd/system/apt-daily.timer") == "/dev/null"
        conf = g.cat("/boot/extlinux/extlinux.conf")
        append = [ln for ln in conf.splitlines() if ln.strip().startswith("APPEND")]
        assert len(append) == 2  # the minimal initramfs's entry and Debian's
        for line in append:
            assert "root=LABEL=rootfs" in line and line.split().count("quiet") <= 1
            assert line.count("console=ttyS0,115200n8") == 1 and "panic=-1" in line
        assert g.cat("/etc/osgtest-image-release") == "".join(f"{k}={v}\n" for k, v in stamp.items())
        assert _updated_with_usr(g)


# A customized image booting and running run-job (with its network up) is proved on an image our
# builder did not make: tests/test_image_import.py::test_foreign_image_imported_and_smoke_booted,
# through the same oz_builder customization.


# --- the image store --------------------------------------------------------------------------


def test_stored_image_is_reused(debian12_image, guest_image_store):
    out = image.build_image("debian_12", guest_image_store)
    assert not out.built and out.reasons == () and out.image.path == debian12_image
    info = out.image
    assert info.builder == "local" and len(info.sha256) == 64 and info.size == debian12_image.stat().st_size
    assert any(p.startswith("systemd-sysv\t") for p in info.packages)
    assert "debian_12.x86_64" in [i.platform for i in image.list_images(guest_image_store)]
    meta = json.loads(info.meta_path.read_text())
    assert meta["schema"] == "osgtest-dag/image" and meta["inputs_hash"] == info.inputs_hash
    assert set(meta["inputs"]) == {"builder", "template", "packages", "payload", "code"}


@pytest.fixture
def fake_local_builder(monkeypatch):
    """The store logic with a stand-in for the 40 s mmdebstrap build."""
    calls = []

    def fake_build(recipe, dest, *, stamp, workdir=None):
        calls.append(stamp)
        if getattr(fake_build, "fail", False):
            Path(dest).write_bytes(b"partial")
            raise UserError("simulated build failure")
        command.run(["qemu-img", "create", "-q", "-f", "qcow2", dest, "16M"])
        return ["pkg\t1.0\tamd64"]

    monkeypatch.setattr(debian_builder, "build", fake_build)
    fake_build.calls = calls
    return fake_build


def test_rebuild_reasons(tmp_path, fake_local_builder, monkeypatch, caplog):
    caplog.set_level("INFO", logger="osgtest_dag.guest.image")
    first = image.build_image("debian_12.x86_64", tmp_path)
    assert first.built and first.reasons == ("no image yet",)
    assert not image.build_image("debian_12.x86_64", tmp_path).built
    assert image.build_image("debian_12.x86_64", tmp_path, force=True).reasons == ("forced",)

    monkeypatch.setattr(payload, "files_hash", lambda *a, **k: "0" * 64)
    assert image.build_image("debian_12.x86_64", tmp_path).reasons == ("payload changed",)
    monkeypatch.setattr(debian_builder, "NETWORK_FILE", debian_builder.NETWORK_FILE + "# x\n")
    assert image.build_image("debian_12.x86_64", tmp_path).reasons == ("template changed",)
    monkeypatch.setattr(debian_builder, "BASE_PACKAGES", debian_builder.BASE_PACKAGES + ("vim",))
    assert image.build_image("debian_12.x86_64", tmp_path).reasons == ("package list changed",)
    monkeypatch.setattr(debian_builder, "CODE_VERSION", "next")
    assert image.build_image("debian_12.x86_64", tmp_path).reasons == ("builder code changed",)
    assert "payload changed" in caplog.text and "no image yet" in caplog.text
    assert len(fake_local_builder.calls) == 6
    # The stamp carries the creation date and the inputs hash.
    assert {"created", "inputs_hash", "platform", "builder"} <= set(fake_local_builder.calls[0])
    (tmp_path / "debian_12.x86_64.qcow2").unlink()
    assert image.build_image("debian_12.x86_64", tmp_path).reasons == ("image file missing",)


def test_failed_build_leaves_nothing(tmp_path, fake_local_builder):
    fake_local_builder.fail = True
    with pytest.raises(UserError, match="simulated"):
        image.build_image("debian_12.x86_64", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".debian_12.x86_64.lock"]
    assert image.list_images(tmp_path) == []


def test_failed_rebuild_keeps_old_image(tmp_path, fake_local_builder):
    image.build_image("debian_12.x86_64", tmp_path)
    old = (tmp_path / "debian_12.x86_64.json").read_text()
    fake_local_builder.fail = True
    with pytest.raises(UserError):
        image.build_image("debian_12.x86_64", tmp_path, force=True)
    assert (tmp_path / "debian_12.x86_64.json").read_text() == old
    assert [i.platform for i in image.list_images(tmp_path)] == ["debian_12.x86_64"]


def test_unknown_platform(tmp_path):
    with pytest.raises(UserError, match="unknown platform"):
        image.build_image("debian_99", tmp_path)


def test_initramfs_modules_come_after_what_they_need(tmp_path):
    """module_closure on a modules.dep as the kernel package writes it."""
    moddir = tmp_path / "6.1.0-test"
    moddir.mkdir()
    (moddir / "modules.dep").write_text(
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko"
        " kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n"
        "kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/virtio/virtio.ko:\n"
        "kernel/drivers/scsi/sd_mod.ko:\n"
    )
    order = [Path(p).name for p in initramfs.module_closure(moddir, ("virtio_pci", "virtio_blk", "ahci"))]
    assert sorted(order) == sorted(
        ["virtio.ko", "virtio_ring.ko", "virtio_pci_modern_dev.ko", "virtio_pci.ko.xz", "virtio_blk.ko"]
    )  # ahci: built into this kernel (not in modules.dep), so skipped
    pos = {name: i for i, name in enumerate(order)}
    assert pos["virtio.ko"] < pos["virtio_ring.ko"] < pos["virtio_pci.ko.xz"]
    assert pos["virtio_pci_modern_dev.ko"] < pos["virtio_pci.ko.xz"]
    assert pos["virtio_ring.ko"] < pos["virtio_blk.ko"]
