"""The Oz image builder: `oz-install` from a TDL template, then our own customization of the
installed image with libguestfs (boot hook, DHCP on any NIC name, serial console, stamp).

Oz installs from install media (a URL tree or ISO) through libvirt; it knows only the OS
versions its guest classes support. `check_supported()` asks the installed Oz's own tables,
so an unsupported platform fails at once with a clear message instead of deep in oz-install.
"""

from __future__ import annotations

import importlib
import logging
import re
import secrets
import string
import tempfile
from pathlib import Path

from osgtest_dag.base import command, paths
from osgtest_dag.base.errors import CommandError, UserError
from osgtest_dag.guest import cloudprep, debian_builder, gfs, payload
from osgtest_dag.plan.catalog import Platform

log = logging.getLogger("osgtest_dag.guest.oz_builder")

CODE_VERSION = "oz-2"
INSTALL_TIMEOUT_S = 3600
DEBARCH = {"x86_64": "amd64", "aarch64": "arm64"}

NM_CONNECTION = """\
# osgtest-dag: DHCP on any Ethernet device, whatever the hypervisor names it.
[connection]
id=osgtest-dhcp
type=ethernet
autoconnect=true
autoconnect-priority=-100

[ipv4]
method=auto

[ipv6]
method=ignore
"""

# What customize_image writes (directories: with what is below them), for SELinux labels.
WRITTEN_PATHS = [
    "/usr/local/sbin",
    "/etc/systemd/system",
    "/etc/systemd/network",
    "/etc/NetworkManager/system-connections",
    "/etc/cloud",
    "/etc/resolv.conf",
    "/etc/osgtest-image-release",
    "/etc/.updated",
    "/var/.updated",
]

SERIAL_ARGS = ("console=tty0", "console=ttyS0,115200n8", "panic=-1")
MASK_UNITS = (
    "dnf-makecache.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "fstrim.timer",
    "e2scrub_all.timer",
)


def template_dir() -> Path:
    return paths.shipped_dir("image_templates")


def template_path(platform: Platform) -> Path:
    p = template_dir() / f"{platform.os}.tdl"
    if not p.is_file():
        raise UserError(
            f"no Oz template for {platform.name}",
            where=p,
            hint=f"templates exist for: {', '.join(sorted(t.stem for t in template_dir().glob('*.tdl')))}",
        )
    return p


def render_template(platform: Platform) -> str:
    """The platform's TDL with the architecture filled in (the root password stays a
    placeholder, so the text, and so the inputs hash, is the same on every build)."""
    text = template_path(platform).read_text()
    return string.Template(text).safe_substitute(
        arch=platform.arch, debarch=DEBARCH.get(platform.arch, platform.arch)
    )


def _oz():
    try:
        import oz.GuestFactory  # noqa: F401  # optional: Debian's python3-oz, only for Oz builds
        import oz.TDL  # optional: as above
    except ImportError:
        raise UserError(
            "Oz (python module 'oz') is not importable",
            hint="install the Debian package 'oz' (scripts/setup does) and use a "
            "venv made with --system-site-packages",
        ) from None
    import oz  # optional: as above

    return oz


def parse_template(text: str, where: Path | str | None = None):
    """Parse TDL text with Oz's own parser (oz.TDL.TDL); a UserError if Oz rejects it."""
    oz = _oz()
    try:
        return oz.TDL.TDL(text)
    except Exception as e:  # Oz raises OzException, lxml errors, ValueError...
        raise UserError(f"Oz rejects the template: {e}", where=where) from None


def template_packages(text: str) -> tuple[str, ...]:
    return tuple(p.name for p in parse_template(text).packages)


def oz_version() -> str:
    try:
        out = command.run(["dpkg-query", "-W", "-f=${Version}", "oz"], check=False, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except CommandError:
        pass
    return "unknown"


def supported_string(families: tuple[str, ...] = ("RHEL", "CentOS", "Debian")) -> str:
    """Oz's own list of what it installs (as `oz-install -h` prints it), the lines that
    mention one of `families` (all lines when empty)."""
    oz = _oz()
    lines = set()
    for module_name in set(oz.GuestFactory.os_dict.values()):
        try:
            mod = importlib.import_module(f"oz.{module_name}")
            line = mod.get_supported_string()
        except Exception:  # a broken guest module must not hide the others
            continue
        if not families or any(f in line for f in families):
            lines.add(line)
    return "; ".join(sorted(lines))


def oz_supports(tdl) -> tuple[bool, str]:
    """Whether the installed Oz has a guest class for the TDL's OS name and version.

    Mirrors oz.GuestFactory.guest_factory without constructing a guest (which would connect
    to libvirt): the name must be in `os_dict`, and where the module has a version table
    (`version_to_config`) the version must be in it.
    """
    oz = _oz()
    module_name = oz.GuestFactory.os_dict.get(tdl.distro)
    if module_name is None:
        return False, f"Oz knows no OS named {tdl.distro!r}"
    mod = importlib.import_module(f"oz.{module_name}")
    table = getattr(mod, "version_to_config", None)
    if table is not None and tdl.update not in table:
        return False, (
            f"Oz's {module_name} module supports versions {', '.join(sorted(table))}, not {tdl.update!r}"
        )
    return True, f"Oz module {module_name}"


def check_supported(platform: Platform) -> None:
    """UserError unless the installed Oz can install `platform` from its template."""
    text = render_template(platform)
    tdl = parse_template(text, where=template_path(platform))
    ok, why = oz_supports(tdl)
    if ok:
        return
    oz_knows = f"this Oz ({oz_version()}) installs: {supported_string()}"
    if platform.family == "debian":
        hint = (
            f"{oz_knows}. For Debian use the local builder: `osgtest-dag image build "
            f"{platform.id} --builder local` (the default)."
        )
    else:
        hint = (
            f"use `osgtest-dag image import {platform.id} FILE` with {platform.display}'s own "
            f"GenericCloud image for {platform.arch} (qcow2), or install an Oz that knows "
            f"{platform.name} ({oz_knows})."
        )
    raise UserError(f"the installed Oz cannot build {platform.name}: {why}", hint=hint)


def write_oz_config(work: Path, data_dir: Path | None = None) -> Path:
    """An oz.cfg that keeps oz-install's output in `work` and its media cache in ours."""
    data = data_dir or paths.cache_dir() / "oz"
    data.mkdir(parents=True, exist_ok=True)
    cfg = work / "oz.cfg"
    cfg.write_text(f"""[paths]
output_dir = {work}
data_dir = {data}
screenshot_dir = {work}/screenshots

[libvirt]
uri = qemu:///system
image_type = qcow2
cpus = 2
memory = 2048

[cache]
original_media = yes
modified_media = no
jeos = no

[icicle]
safe_generation = no

[timeouts]
install = {INSTALL_TIMEOUT_S}
inactivity = 600
boot = 300
shutdown = 90
""")
    return cfg


def oz_install_argv(
    tdl_file: Path, output_disk: Path, config: Path, libvirt_xml: Path, timeout_s: int = INSTALL_TIMEOUT_S
) -> list[str]:
    """oz-install: debug level 2, clean up a stale guest of the same name (-p), our config,
    an explicit output disk and libvirt XML; no Oz customization (-u): ours follows."""
    return [
        "oz-install",
        "-d",
        "2",
        "-p",
        "-t",
        str(timeout_s),
        "-c",
        str(config),
        "-s",
        str(output_disk),
        "-x",
        str(libvirt_xml),
        str(tdl_file),
    ]


def _gwrite(g, path: str, data: str | bytes) -> None:
    g.write(path, data.encode() if isinstance(data, str) else data)


class NoOperatingSystem(UserError):
    """libguestfs' inspection finds no operating system in the image."""


def _mount_guest(g) -> str:
    roots = g.inspect_os()
    if not roots:
        raise NoOperatingSystem("libguestfs finds no operating system in the image")
    root = roots[0]
    mps = g.inspect_get_mountpoints(root)
    for mp in sorted(mps, key=len):
        g.mount(mps[mp], mp)
    return root


def _set_kernel_args(g) -> str:
    """Serial console and panic=-1 on the kernel command line, for whatever bootloader."""
    args = " ".join(SERIAL_ARGS)
    if g.is_file("/boot/extlinux/extlinux.conf"):
        text = g.cat("/boot/extlinux/extlinux.conf")

        def fix(m: re.Match) -> str:
            line = re.sub(r"\s*\b(console=\S+|panic=\S+|quiet|systemd\.show_status=\S+)", "", m.group(0))
            return line.rstrip() + " " + args

        _gwrite(g, "/boot/extlinux/extlinux.conf", re.sub(r"(?m)^\s*APPEND\b.*$", fix, text))
        return "extlinux"
    how = "none"
    if g.is_file("/etc/default/grub"):
        text = g.cat("/etc/default/grub")
        text = re.sub(r"\s*\b(console=\S+|panic=\S+|rhgb|quiet)", "", text)
        if re.search(r"(?m)^GRUB_CMDLINE_LINUX=", text):

            def add_args(m: re.Match) -> str:
                return f'GRUB_CMDLINE_LINUX="{(m.group(1) + " " + args).strip()}"'

            text = re.sub(r'(?m)^GRUB_CMDLINE_LINUX="(.*)"', add_args, text)
        else:
            text += f'\nGRUB_CMDLINE_LINUX="{args}"\n'
        text = re.sub(r"(?m)^GRUB_TERMINAL.*\n?", "", text)
        text += 'GRUB_TERMINAL="serial console"\nGRUB_SERIAL_COMMAND="serial --speed=115200"\n'
        _gwrite(g, "/etc/default/grub", text)
        how = "grub defaults"
    # Regenerate what the bootloader reads (runs the guest's own tools in the appliance).
    for tool in (
        ["grubby", "--update-kernel=ALL", f"--args={args}", "--remove-args=rhgb quiet"],
        ["update-grub"],
        ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"],
    ):
        for d in ("/usr/sbin/", "/sbin/", "/usr/bin/"):
            if g.is_file(d + tool[0]):
                g.command([d + tool[0], *tool[1:]])
                return f"{how} + {tool[0]}"
    return how


def _enable(g, unit: str, target: str, unit_dir: str = "/etc/systemd/system") -> None:
    wants = f"/etc/systemd/system/{target}.wants"
    g.mkdir_p(wants)
    g.ln_sf(f"{unit_dir}/{unit}", f"{wants}/{unit}")


def _unit_dir_of(g, unit: str) -> str | None:
    """The directory of the image's packaged systemd `unit` (None: not installed)."""
    for d in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if g.is_file(f"{d}/{unit}"):
            return d
    return None


def network_stack(g) -> tuple[str, str]:
    """The network service customize_image configures, and the directory of its unit:
    NetworkManager where it is installed (not wherever /etc/NetworkManager exists: Debian's
    cloud-init ships a dispatcher hook there), else systemd-networkd; UserError for an image
    with neither (ifupdown alone cannot do DHCP on a NIC whose name it is not told)."""
    for service in ("NetworkManager", "systemd-networkd"):
        units = _unit_dir_of(g, f"{service}.service")
        if units:
            return service, units
    raise UserError(
        "the image has neither NetworkManager nor systemd-networkd: nothing to configure DHCP on "
        "any NIC with",
        hint="import an image of a distribution release whose cloud image has one of them "
        "(Debian 12 and later: systemd; EL 8 and later: NetworkManager)",
    )


def customize_image(
    disk: Path, disk_format: str, *, stamp: dict[str, str], payload_dir: Path | None = None
) -> list[str]:
    """Turn an installed image into an osgtest base image, in place; return its packages.

    Installs and enables the boot hook, sets DHCP on any NIC name (NetworkManager keyfile on
    EL, systemd-networkd on Debian), removes persistent net rules, disables cloud-init, puts a
    serial console on the kernel command line, masks update timers, writes
    /etc/osgtest-image-release; SELinux permissive and the written files labelled, without
    `setfiles` (guest/cloudprep.py says why).
    """
    log.info("customizing %s", disk.name)
    with gfs.open_disks([(disk, disk_format)], readonly=False) as g:
        return customize_guest(g, stamp=stamp, payload_dir=payload_dir)


def customize_guest(g, *, stamp: dict[str, str], payload_dir: Path | None = None) -> list[str]:
    """customize_image on an open read-write libguestfs handle (the guest's filesystems are
    mounted from its inspection, and unmounted at the end)."""
    hook = payload.payload_file(payload.BOOT_HOOK, payload_dir).read_bytes()
    unit = payload.payload_file(payload.BOOT_UNIT, payload_dir).read_bytes()
    root = _mount_guest(g)
    log.info(
        "customizing %s %s.%s",
        g.inspect_get_distro(root),
        g.inspect_get_major_version(root),
        g.inspect_get_minor_version(root),
    )
    # Boot hook + unit, enabled.
    g.mkdir_p("/usr/local/sbin")
    _gwrite(g, "/usr/local/sbin/osgtest-boot", hook)
    g.chmod(0o755, "/usr/local/sbin/osgtest-boot")
    _gwrite(g, f"/etc/systemd/system/{payload.BOOT_UNIT}", unit)
    g.chmod(0o644, f"/etc/systemd/system/{payload.BOOT_UNIT}")
    _enable(g, payload.BOOT_UNIT, "multi-user.target")
    # Networking on any NIC name.
    stack, units = network_stack(g)
    log.info("network: %s, DHCP on any NIC", stack)
    if stack == "NetworkManager":
        g.mkdir_p("/etc/NetworkManager/system-connections")
        for f in g.glob_expand("/etc/NetworkManager/system-connections/*.nmconnection"):
            g.rm_f(f)
        for f in g.glob_expand("/etc/sysconfig/network-scripts/ifcfg-e*"):
            g.rm_f(f)
        path = "/etc/NetworkManager/system-connections/osgtest-dhcp.nmconnection"
        _gwrite(g, path, NM_CONNECTION)
        g.chmod(0o600, path)
    else:
        g.mkdir_p("/etc/systemd/network")
        _gwrite(g, "/etc/systemd/network/80-osgtest-dhcp.network", debian_builder.NETWORK_FILE)
        g.mkdir_p("/etc/systemd/system/systemd-networkd-wait-online.service.d")
        _gwrite(
            g,
            "/etc/systemd/system/systemd-networkd-wait-online.service.d/osgtest.conf",
            debian_builder.WAIT_ONLINE_DROPIN,
        )
        if g.is_file("/etc/network/interfaces"):
            _gwrite(
                g,
                "/etc/network/interfaces",
                "# osgtest-dag: systemd-networkd configures the network\nauto lo\niface lo inet loopback\n",
            )
        _enable(g, "systemd-networkd.service", "multi-user.target", units)
        _enable(g, "systemd-networkd-wait-online.service", "network-online.target", units)
        resolved = _unit_dir_of(g, "systemd-resolved.service")
        if resolved:
            _enable(g, "systemd-resolved.service", "multi-user.target", resolved)
        else:
            cloudprep.resolv_conf_for_lease(g, debian_builder.RESOLV_CONF)
    if cloudprep.disable_cloud_init(g):
        log.info("cloud-init disabled")
    for rules in (
        "/etc/udev/rules.d/70-persistent-net.rules",
        "/etc/udev/rules.d/75-persistent-net-generator.rules",
    ):
        g.rm_f(rules)
    if g.is_file("/etc/machine-id"):
        g.truncate("/etc/machine-id")
    for name in MASK_UNITS:
        g.ln_sf("/dev/null", f"/etc/systemd/system/{name}")
    how = _set_kernel_args(g)
    log.info("serial console set via %s", how)
    _gwrite(g, "/etc/osgtest-image-release", "".join(f"{k}={v}\n" for k, v in stamp.items()))
    _mark_updated(g)
    apps = g.inspect_list_applications2(root)
    packages = sorted(
        f"{a['app2_name']}\t{(a['app2_epoch'] and str(a['app2_epoch']) + ':' or '')}"
        f"{a['app2_version']}{('-' + a['app2_release']) if a['app2_release'] else ''}"
        f"\t{a.get('app2_arch', '')}"
        for a in apps
    )
    mode = cloudprep.selinux_permissive(g)
    if mode is not None:
        log.info("SELinux: %s -> permissive", mode)
        cloudprep.label_like_parent(g, WRITTEN_PATHS)
    g.umount_all()
    return packages


def _mark_updated(g) -> None:
    """/etc and /var up to date with /usr, as systemd-update-done leaves them: every VM boots
    the image fresh, and ConditionNeedsUpdate units (ldconfig, journal catalog) would run on
    every boot otherwise."""
    usr = g.statns("/usr")
    for d in ("/etc", "/var"):
        _gwrite(g, f"{d}/.updated", debian_builder.UPDATED_STAMP)
        g.utimens(
            f"{d}/.updated",
            usr["st_mtime_sec"],
            usr["st_mtime_nsec"],
            usr["st_mtime_sec"],
            usr["st_mtime_nsec"],
        )


def build(
    platform: Platform, dest_qcow2: Path, *, stamp: dict[str, str], workdir: Path | None = None
) -> list[str]:
    """oz-install the platform's template, customize the result, write qcow2 to `dest_qcow2`."""
    check_supported(platform)
    if command.which("oz-install") is None:
        raise UserError("oz-install is not installed", hint="install the Debian package 'oz'")
    with tempfile.TemporaryDirectory(prefix="osgtest-oz-", dir=workdir) as tmp:
        work = Path(tmp)
        tdl = work / f"{platform.os}.tdl"
        text = string.Template(render_template(platform)).safe_substitute(rootpw=secrets.token_urlsafe(18))
        tdl.write_text(text)
        tdl.chmod(0o600)
        installed = work / f"{platform.id}.qcow2"
        argv = oz_install_argv(tdl, installed, write_oz_config(work), work / "libvirt.xml")
        log.info("oz-install %s (can take long: a full OS install)", platform.id)
        command.run(argv, timeout=INSTALL_TIMEOUT_S + 600)
        packages = customize_image(installed, "qcow2", stamp=stamp)
        command.run(["qemu-img", "convert", "-q", "-O", "qcow2", installed, dest_qcow2], timeout=1800)
    return packages
