"""What an installed or distributed image needs besides our hook, network and console
(oz_builder.customize_image calls these on a mounted libguestfs handle): cloud-init out of the
way, DNS for an image without a resolver service, and SELinux handled without `setfiles`.

SELinux: the image is left **permissive** (`SELINUX=permissive` in /etc/selinux/config), as
the reference's images are. A cell then chooses: run-job's repositories phase runs
`setenforce 1` when the cell says `selinux: true` (CELL_SELINUX) and leaves it permissive
otherwise; `disabled` would make `setenforce 1` impossible, `enforcing` would need every file
labelled before the first boot. A full relabel needs `setfiles` in the libguestfs appliance
(Debian's appliance has none) or a relabel-and-reboot at every boot of a throw-away VM
(/.autorelabel), so neither is done: the files the customization writes get the SELinux label
of the directory they are in, which is what the kernel gives a file a root process creates
there (no type transition), and what policy expects for all of them (bin_t in
/usr/local/sbin, systemd_unit_file_t in /etc/systemd/system, NetworkManager_etc_rw_t in
system-connections, etc_t in /etc).
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("osgtest_dag.guest.cloudprep")

SELINUX_CONFIG = "/etc/selinux/config"
SELINUX_XATTR = "security.selinux"
CLOUD_INIT_DISABLED = "/etc/cloud/cloud-init.disabled"
CLOUD_INIT_CFG = "/etc/cloud/cloud.cfg.d/99-osgtest.cfg"
CLOUD_INIT_CFG_TEXT = """\
# osgtest-dag: cloud-init is disabled (/etc/cloud/cloud-init.disabled); should it run anyway,
# it leaves the network to the image's own DHCP-on-any-NIC configuration.
network: {config: disabled}
"""
# Network configuration cloud-init wrote when the image was made (for the builder's NIC, by
# name or MAC): it would fight ours, or hold the boot waiting for a NIC that is not there.
CLOUD_INIT_NETWORK_FILES = (
    "/etc/netplan/50-cloud-init.yaml",
    "/etc/network/interfaces.d/50-cloud-init",
    "/etc/network/interfaces.d/50-cloud-init.cfg",
    "/etc/systemd/network/10-cloud-init-*.network",
    "/etc/NetworkManager/system-connections/cloud-init-*.nmconnection",
    "/etc/sysconfig/network-scripts/ifcfg-eth*",
)


def _gwrite(g, path: str, text: str) -> None:
    g.write(path, text.encode())


def disable_cloud_init(g) -> bool:
    """Disable cloud-init if the image has it (no datasource here: it would wait for one, then
    reconfigure the network and the hostname); remove the network files it generated. True
    when there was a cloud-init."""
    has = g.is_dir("/etc/cloud") or any(g.is_file(d + "cloud-init") for d in ("/usr/bin/", "/bin/"))
    for pattern in CLOUD_INIT_NETWORK_FILES:
        for path in g.glob_expand(pattern):
            g.rm_f(path)
    if not has:
        return False
    g.mkdir_p("/etc/cloud/cloud.cfg.d")
    _gwrite(g, CLOUD_INIT_DISABLED, "# osgtest-dag: no cloud-init in test VMs\n")
    _gwrite(g, CLOUD_INIT_CFG, CLOUD_INIT_CFG_TEXT)
    return True


def resolv_conf_for_lease(g, resolv_conf: str) -> bool:
    """Without systemd-resolved nothing writes /etc/resolv.conf for systemd-networkd's lease:
    put `resolv_conf` there (its first line tells run-job's network phase to fill in the
    lease's DNS servers). True when written."""
    if any(
        g.is_file(f"{d}/systemd-resolved.service") for d in ("/lib/systemd/system", "/usr/lib/systemd/system")
    ):
        return False
    g.rm_f("/etc/resolv.conf")  # also a symlink to a stub that no service would write
    _gwrite(g, "/etc/resolv.conf", resolv_conf)
    return True


PERMISSIVE = "# osgtest-dag: cells choose (run-job: setenforce per CELL_SELINUX)\nSELINUX=permissive"
_SELINUX_LINE = re.compile(r"(?m)^[ \t]*SELINUX[ \t]*=[ \t]*(\S*)[ \t]*$")


def permissive_config(text: str) -> tuple[str, str]:
    """/etc/selinux/config's text with SELINUX=permissive; and the mode it said before."""
    comment = PERMISSIVE.split("\n")[0] + "\n"
    text = text.replace(comment, "")  # a customized image customized again: one comment
    m = _SELINUX_LINE.search(text)
    if m is None:
        return text.rstrip("\n") + "\n" + PERMISSIVE + "\n", "unset"
    return text[: m.start()] + PERMISSIVE + text[m.end() :], m.group(1)


def selinux_permissive(g) -> str | None:
    """SELINUX=permissive in the image's SELinux configuration; the mode it had (None: the
    image has no SELinux configuration)."""
    if not g.is_file(SELINUX_CONFIG):
        return None
    text, before = permissive_config(g.cat(SELINUX_CONFIG))
    _gwrite(g, SELINUX_CONFIG, text)
    return before


def _label(g, path: str) -> str | None:
    try:
        return bytes(g.lgetxattr(path, SELINUX_XATTR)).rstrip(b"\0").decode()
    except RuntimeError:  # no such attribute
        return None


def label_like_parent(g, paths: list[str]) -> int:
    """Give each of `paths` (and what is below a directory among them) that has no SELinux
    label its directory's label, as the kernel would have; how many were labelled. Nothing on
    an image without SELinux labels."""
    if _label(g, "/") is None:
        return 0
    todo: list[str] = []
    for path in paths:
        if not g.exists(path) and not g.is_symlink(path):
            continue
        todo.append(path)
        if g.is_dir(path, followsymlinks=False):
            todo += [f"{path}/{rel}" for rel in g.find(path)]
    done = 0
    for path in sorted(set(todo), key=lambda p: p.count("/")):  # parents before children
        if _label(g, path) is not None:
            continue
        parent = path.rsplit("/", 1)[0] or "/"
        label = _label(g, parent)
        if label is None:
            continue
        g.lsetxattr(SELINUX_XATTR, label, len(label), path)
        done += 1
    log.info("SELinux labels given to %d written files", done)
    return done
