"""The test pool's configuration: what `up` writes into the root that the cached build does
not hold (HTCondor config, the libvirt XML script, libvirt's qemu.conf, /etc/hosts, the tool
shim), and the matching settings for a client on the host."""

from __future__ import annotations

import os
import socket
from importlib import resources
from pathlib import Path

from osgtest_dag.base.atomic import write_text_atomic
from osgtest_dag.devpool.chroot import POOL_USER, VENV, Pool
from osgtest_dag.generate.workflow import default_tool

CONFIG_FILE = "/etc/condor/config.d/50-osgtest-pool.conf"
XML_SCRIPT = "/etc/condor/osgtest-libvirt.awk"
CONSOLE_DIR = "/var/log/condor/vm-consoles"


# CPUs the pool's slot advertises (see the configuration's comment).
CLUSTER_CPUS = 6


def pool_config(*, vm_memory_mb: int = 8192, accel: str = "tcg", claimtobe: bool = True) -> str:
    """The pool's configuration (HTCondor config language), after minicondor's."""
    auth = "FS, IDTOKENS, PASSWORD" + (", CLAIMTOBE" if claimtobe else "")
    return f"""\
# osgtest-dag test pool: a personal pool on 127.0.0.1 in a chroot, on top of minicondor's
# configuration (central manager + submit + execute roles, collector on 127.0.0.1:9618).
# TEST POOL ONLY: it trusts any local process (CLAIMTOBE) so the host's Python bindings can
# submit; a session from CLAIMTOBE has no key, so integrity/encryption are optional.
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = 127.0.0.1:9618
NETWORK_INTERFACE = 127.0.0.1
ENABLE_IPV6 = false
UID_DOMAIN = osgtest-pool
TRUST_UID_DOMAIN = true

# one partitionable slot, never preempt
NUM_SLOTS = 1
NUM_SLOTS_TYPE_1 = 1
SLOT_TYPE_1 = 100%
SLOT_TYPE_1_PARTITIONABLE = TRUE
START = TRUE
SUSPEND = FALSE
PREEMPT = FALSE
KILL = FALSE
WANT_SUSPEND = FALSE
WANT_VACATE = FALSE

# inside a chroot: no cgroups, no namespaces, no scratch mounts
BASE_CGROUP =
CGROUP_MEMORY_LIMIT_POLICY = none
USE_PID_NAMESPACES = false
MOUNT_UNDER_SCRATCH =
MAIL = /bin/true

# short intervals: tests wait on them
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_MIN_INTERVAL = 1
SCHEDD_INTERVAL = 5
UPDATE_INTERVAL = 5
STARTER_UPDATE_INTERVAL = 5
SHADOW_QUEUE_UPDATE_INTERVAL = 5
DAGMAN_USER_LOG_SCAN_INTERVAL = 1
PERIODIC_EXPR_INTERVAL = 5

# VM universe (libvirt as root in the chroot); our XML script makes {accel.upper()} guests.
# VM_MAX_NUMBER stays unset: a stale VM_AvailNum = 0 would block the next VM job.
VM_TYPE = kvm
VM_MEMORY = {vm_memory_mb}
VM_NETWORKING = TRUE
VM_NETWORKING_TYPE = nat
VM_NETWORKING_DEFAULT_TYPE = nat
VM_GAHP_SERVER = $(SBIN)/condor_vm-gahp
LIBVIRT_XML_SCRIPT = {XML_SCRIPT}
LIBVIRT_XML_SCRIPT_ARGS = {accel}
OSGTEST_CONSOLE_DIR = {CONSOLE_DIR}

# Cluster cells (docs/clusters.md) run as one vanilla job that starts their VMs with qemu:
# this execute point says it has qemu, counts a CPU per VM (TCG shares the cores: a 3-VM cell
# must match here), and tells the runner the accelerator the pool's VMs use.
OsgtestDagQemu = True
STARTD_ATTRS = $(STARTD_ATTRS) OsgtestDagQemu
NUM_CPUS = {CLUSTER_CPUS}
STARTER_JOB_ENVIRONMENT = "OSGTEST_DAG_ACCEL={accel}"

# security, test pool only: local processes may claim who they are; writes from 127.0.0.1
SEC_DEFAULT_AUTHENTICATION_METHODS = {auth}
SEC_CLIENT_AUTHENTICATION_METHODS = {auth}
SEC_READ_AUTHENTICATION_METHODS = {auth}
SEC_WRITE_AUTHENTICATION_METHODS = {auth}
SEC_DEFAULT_INTEGRITY = OPTIONAL
SEC_DEFAULT_ENCRYPTION = OPTIONAL
ALLOW_READ = *
ALLOW_WRITE = *@osgtest-pool/127.0.0.1, *@osgtest-pool/$(IP_ADDRESS), $(ALLOW_WRITE)
ALLOW_ADMINISTRATOR = root@osgtest-pool/127.0.0.1, condor@osgtest-pool/127.0.0.1, $(ALLOW_ADMINISTRATOR)
"""


def qemu_conf() -> str:
    return (
        'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n'
        'security_driver = "none"\ncgroup_controllers = [ ]\nnamespaces = [ ]\n'
        'stdio_handler = "file"\n'
    )


def libvirt_xml_script() -> str:
    """LIBVIRT_XML_SCRIPT: HTCondor's libvirt_simple_script.awk, adapted (data/libvirt_script.awk).

    The starter pipes the job's VM ad (`Attr = value` lines) to it and uses its standard
    output as the libvirt domain XML. Changes from the stock script: the domain type comes from
    the first argument (`qemu` = TCG with `<cpu mode='maximum'/>`, for hosts where KVM does not
    work; `kvm` = host-passthrough as the stock script); the serial console goes to a file
    (`<console dir>/<domain name>.log`); a job with vm_networking gets a user-mode (SLIRP)
    interface so a guest reaches the network without a libvirt bridge; disk formats are
    written explicitly (vm_disk's 4th field), not guessed.
    """
    return (resources.files("osgtest_dag.devpool") / "data" / "libvirt_script.awk").read_text()


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text, mode)


def configure(pool: Pool, accel: str, *, tool: str | None = None, claimtobe: bool = True) -> None:
    """Write everything `up` needs that is not in the cached root: config, XML script, hosts,
    the tool shim."""
    hostname = socket.gethostname()
    hosts = pool.inside("/etc/hosts")
    text = hosts.read_text() if hosts.exists() else ""
    line = f"127.0.0.1 {hostname}"
    if line not in text.splitlines():
        _write(hosts, text.rstrip("\n") + f"\n127.0.0.1 localhost\n{line}\n")
    _write(pool.inside(CONFIG_FILE), pool_config(accel=accel, claimtobe=claimtobe))
    # the starter runs `$(LIBVIRT_XML_SCRIPT) $(LIBVIRT_XML_SCRIPT_ARGS)`: our awk wants
    # its arguments, so the configured script is a tiny sh wrapper
    _write(pool.inside(XML_SCRIPT + ".awk"), libvirt_xml_script())
    _write(
        pool.inside(XML_SCRIPT),
        f'#!/bin/sh\nexec awk -f {XML_SCRIPT}.awk "${{1:-{accel}}}" {CONSOLE_DIR}\n',
        0o755,
    )
    # HTCondor's log directory belongs to condor; the Debian package leaves it to the
    # daemons to make it, so make it here before the VM console directory inside it.
    pool.run(["install", "-d", "-o", "condor", "-g", "condor", "-m", "755", "/var/log/condor"])
    pool.inside(CONSOLE_DIR).mkdir(parents=True, exist_ok=True)
    os.chmod(pool.inside(CONSOLE_DIR), 0o1777)
    _write(pool.inside("/etc/libvirt/qemu.conf"), qemu_conf())
    tool = tool or default_tool()
    if tool:
        shim = pool.inside(tool)
        if not shim.exists() or shim.read_text(errors="replace").startswith(
            "#!/bin/sh\n# osgtest-dag pool shim"
        ):
            _write(
                shim,
                f"#!/bin/sh\n# osgtest-dag pool shim: the pool root's own osgtest-dag\n"
                f'exec {VENV}/bin/osgtest-dag "$@"\n',
                0o755,
            )


def client_config() -> tuple[tuple[str, str], ...]:
    """htcondor2.param settings for a client on the host talking to the test pool: the
    collector on 127.0.0.1, CLAIMTOBE as the pool's job owner (test pool only)."""
    return (
        ("COLLECTOR_HOST", "127.0.0.1:9618"),
        ("CONDOR_HOST", "127.0.0.1"),
        ("NETWORK_INTERFACE", "127.0.0.1"),
        ("ENABLE_IPV6", "false"),
        ("UID_DOMAIN", "osgtest-pool"),
        ("SEC_CLIENT_AUTHENTICATION_METHODS", "CLAIMTOBE"),
        ("SEC_DEFAULT_AUTHENTICATION_METHODS", "CLAIMTOBE"),
        ("SEC_CLAIMTOBE_USER", POOL_USER),
        ("SEC_CLAIMTOBE_INCLUDE_DOMAIN", "true"),
        ("SEC_CLIENT_INTEGRITY", "OPTIONAL"),
        ("SEC_CLIENT_ENCRYPTION", "OPTIONAL"),
        ("SEC_DEFAULT_INTEGRITY", "OPTIONAL"),
        ("SEC_DEFAULT_ENCRYPTION", "OPTIONAL"),
    )
