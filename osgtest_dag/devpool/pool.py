"""A personal HTCondor pool on this machine, for testing the generated workflows for real.

HTCondor's daemons are not packaged for Debian 12, but Debian 13 (trixie) has them, so the
pool lives in a trixie root built once with mmdebstrap and cached (`<cache>/pool/root`, see
paths.cache_dir). `up()` mounts what a chroot needs (proc; sys and dev recursively; a private
tmpfs on /run), bind-mounts the work directories at the SAME path inside and outside (a run
directory generated on the host runs unchanged), writes the pool configuration (HTCondor
config language) and our libvirt XML script, and starts libvirtd and condor_master. `down()`
stops every process running in the root (by pid) and unmounts. Both are idempotent.

Inside the root:
  /opt/osgtest-dag/venv     a venv (--system-site-packages: python3-guestfs) with our PyPI
                            dependencies; a .pth file puts /opt/osgtest-dag/src on sys.path
  /opt/osgtest-dag/src      the working tree, bind-mounted read-only at `up` (live code)
  <host tool path>          a shim running the venv's osgtest-dag, so DAG nodes that name the
                            host's executable (workflow.default_tool()) run unchanged
  user `osgtest`            the job owner (root cannot submit); work directories are shared

Facts this relies on: /work/shared/notes/htcondor-pool-on-this-machine.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.base import paths
from osgtest_dag.base.atomic import write_json_atomic, write_text_atomic
from osgtest_dag.base.errors import CommandError, UserError

log = logging.getLogger("osgtest_dag.devpool.pool")

SUITE = "trixie"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "condor", "condor-vm-gahp", "minicondor",
    "libvirt-daemon-system", "libvirt-clients", "qemu-system-x86", "qemu-utils",
    "e2fsprogs", "procps", "passwd", "ca-certificates",
    "python3", "python3-venv",
    # what the local-universe nodes need: they read result disks with libguestfs
    "python3-guestfs", "libguestfs-tools", "linux-image-amd64",
)
# Bump when the build recipe changes in a way the package list does not show.
RECIPE_VERSION = 2
VENV = "/opt/osgtest-dag/venv"
SRC = "/opt/osgtest-dag/src"
POOL_USER = "osgtest"
POOL_UID = 4242
CONFIG_FILE = "/etc/condor/config.d/50-osgtest-pool.conf"
XML_SCRIPT = "/etc/condor/osgtest-libvirt.awk"
CONSOLE_DIR = "/var/log/condor/vm-consoles"
STOCK_XML_SCRIPT = "/usr/libexec/condor/libvirt_simple_script.awk"
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
EXCLUDES = ("/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*",
            "/usr/share/doc/*", "/usr/share/lintian/*")


def pool_dir() -> Path:
    """`<cache>/pool`: the cached root, its state file and the default work directory."""
    return paths.cache_dir() / "pool"


@dataclass
class Pool:
    """Where one pool lives. Everything else is derived from `base`."""

    base: Path = field(default_factory=pool_dir)

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state_file(self) -> Path:
        return self.base / "state.json"

    @property
    def work(self) -> Path:
        """The default work directory (bind-mounted at the same path inside the root)."""
        return self.base / "work"

    @property
    def stamp(self) -> Path:
        return self.root / ".osgtest-pool.json"

    def inside(self, path: str | os.PathLike) -> Path:
        """The host path of `path` (absolute, as seen inside the root)."""
        return self.root / str(path).lstrip("/")

    # --- state ------------------------------------------------------------------------------
    def load_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def save_state(self, state: dict) -> None:
        write_json_atomic(self.state_file, state)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.base / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # --- running things inside ----------------------------------------------------------------
    def chroot_argv(self, argv: Sequence[str], user: str | None = None) -> list[str]:
        """argv that runs `argv` inside the root with a clean environment (as `user`)."""
        env = [f"{k}={v}" for k, v in CHROOT_ENV.items()]
        if user and user != "root":
            # runuser (util-linux) needs no PAM session config and no password.
            inner = ["runuser", "-u", user, "--", "env", f"HOME=/home/{user}", f"USER={user}",
                     f"LOGNAME={user}", *argv]
        else:
            inner = list(argv)
        return ["chroot", str(self.root), "env", "-i", *env, *inner]

    def run(self, argv: Sequence[str], *, user: str | None = None, check: bool = True,
            timeout: float | None = 120, input: str | None = None):
        """command.run inside the root."""
        return command.run(self.chroot_argv(argv, user), check=check, timeout=timeout, input=input)


# --- checks ---------------------------------------------------------------------------------

def require_root(what: str = "the test pool") -> None:
    if os.geteuid() != 0:
        raise UserError(f"{what} needs root (it builds a chroot, mounts and starts daemons)",
                        hint="run as root, e.g. `sudo osgtest-dag pool up`")


def host_mirror() -> str:
    """The Debian mirror this host's apt already uses (deb822 or one-line sources)."""
    for p in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in p.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if uri.rstrip("/").endswith("/debian"):
                        return uri.rstrip("/")
    lst = Path("/etc/apt/sources.list")
    if lst.is_file():
        for line in lst.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                uri = parts[2] if parts[1].startswith("[") else parts[1]
                if uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    return DEFAULT_MIRROR


def _pip_requirements() -> list[str]:
    """Our runtime dependencies, pinned to what this venv runs (the pool runs the same code
    with the same library versions)."""
    import importlib.metadata as md
    pinned = []
    for dist in ("htcondor", "jinja2", "networkx", "click", "PyYAML"):
        try:
            pinned.append(f"{dist}=={md.version(dist)}")
        except md.PackageNotFoundError:
            pinned.append(dist)
    return pinned


def recipe(mirror: str) -> dict:
    return {"recipe": RECIPE_VERSION, "suite": SUITE, "mirror": mirror,
            "packages": sorted(PACKAGES), "pip": _pip_requirements(), "user": [POOL_USER, POOL_UID]}


def _digest(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# --- build ----------------------------------------------------------------------------------

def is_built(pool: Pool, mirror: str | None = None) -> bool:
    try:
        stamp = json.loads(pool.stamp.read_text())
    except (FileNotFoundError, ValueError):
        return False
    return stamp.get("digest") == _digest(recipe(mirror or host_mirror()))


def build_root(pool: Pool | None = None, *, force: bool = False, mirror: str | None = None) -> dict:
    """Build the trixie root unless the cached one matches the recipe. Returns
    {"built": bool, "seconds": float, "root": path}.

    Two stages in `root.tmp`: the Debian packages (mmdebstrap; kept when the second stage
    fails, so a retry does not download them again), then the venv with our PyPI
    dependencies. The finished tree is renamed into place."""
    pool = pool or Pool()
    require_root()
    mirror = mirror or host_mirror()
    doc = recipe(mirror)
    with pool.lock():
        if not force and is_built(pool, mirror):
            return {"built": False, "seconds": 0.0, "root": str(pool.root)}
        if _mounted_under(pool.root):
            raise UserError("the pool is up; cannot rebuild its root while it runs",
                            hint="run `osgtest-dag pool down` first")
        if not command.which("mmdebstrap"):
            raise UserError("mmdebstrap is not installed", hint="run `make setup` (scripts/setup installs it)")
        tmp = pool.base / "root.tmp"
        t0 = time.monotonic()
        apt_doc = {k: doc[k] for k in ("recipe", "suite", "mirror", "packages", "user")}
        apt_stamp = tmp / ".osgtest-apt-stage.json"
        try:
            reuse = json.loads(apt_stamp.read_text()).get("digest") == _digest(apt_doc) and not force
        except (FileNotFoundError, ValueError):
            reuse = False
        if not reuse:
            _remove_tree(tmp)
            _apt_stage(tmp, mirror)
            apt_stamp.write_text(json.dumps({**apt_doc, "digest": _digest(apt_doc)}) + "\n")
        else:
            log.info("reusing the Debian stage of an interrupted build: %s", tmp)
        _python_stage(tmp, doc["pip"])
        seconds = round(time.monotonic() - t0, 1)
        apt_stamp.unlink()
        (tmp / pool.stamp.name).write_text(json.dumps(
            {**doc, "digest": _digest(doc), "build_seconds": seconds,
             "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n")
        old = pool.base / "root.old"
        _remove_tree(old)
        if pool.root.exists():
            os.rename(pool.root, old)
        os.rename(tmp, pool.root)
        _remove_tree(old)
        log.info("pool root built in %.1f s: %s", seconds, pool.root)
        return {"built": True, "seconds": seconds, "root": str(pool.root)}


def _apt_stage(tmp: Path, mirror: str) -> None:
    hooks = [f'chroot "$1" useradd -m -u {POOL_UID} -s /bin/bash {POOL_USER}',
             f'chroot "$1" python3 -m venv --system-site-packages {VENV}']
    argv = ["mmdebstrap", "--variant=apt", "--mode=root", "--quiet",
            "--include=" + ",".join(PACKAGES)]
    argv += [f"--dpkgopt=path-exclude={p}" for p in EXCLUDES]
    argv += ["--dpkgopt=path-include=/usr/share/doc/*/copyright"]
    argv += [f"--customize-hook={h}" for h in hooks]
    argv += [SUITE, str(tmp), f"deb {mirror} {SUITE} main"]
    try:
        command.run(argv, timeout=3600)
    except CommandError as e:
        _remove_tree(tmp)
        raise UserError(f"building the pool root failed (mmdebstrap): {e}",
                        hint=f"check the network to the Debian mirror {mirror}") from None


def _python_stage(tmp: Path, pip_reqs: list[str]) -> None:
    """The venv's PyPI packages, the .pth that puts the (bind-mounted) working tree on
    sys.path, and the osgtest-dag entry script. pip runs in the root with the host's CA
    bundle (PyPI may be reached through a proxy only the host's CAs trust) and proxy
    settings; the host's other PIP_* settings (find-links dirs ...) do not apply there."""
    shutil.copy2(_host_ca_bundle(), tmp / "opt/osgtest-dag/host-ca.pem")
    env = ["PATH=/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8"]
    env += [f"{k}={v}" for k, v in sorted(os.environ.items())
            if k.lower() in ("http_proxy", "https_proxy", "no_proxy", "pip_index_url")]
    venv_py = f"{VENV}/bin/python3"

    def pip(reqs: list[str]):
        return command.run(["chroot", str(tmp), "env", "-i", *env, venv_py, "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", "--no-cache-dir", "--only-binary=:all:",
                            "--cert", "/opt/osgtest-dag/host-ca.pem", *reqs], check=False, timeout=1800)
    # the same versions as this venv where the root's Python has wheels for them, else the
    # newest (--upgrade: Debian's python3-htcondor 23.9 in the system site must not satisfy
    # "htcondor": the tool needs htcondor2.dags, which 23.9 lacks)
    for req in pip_reqs:
        proc = pip([req])
        if proc.returncode != 0:
            name = req.split("==")[0]
            loose = "htcondor>=24" if name == "htcondor" else name
            log.info("%s is not installable in the root; trying %s", req, loose)
            proc = pip(["--upgrade", loose])
        if proc.returncode != 0:
            raise UserError(f"installing {req} into the pool root failed:\n"
                            + (proc.stderr or proc.stdout).strip()[-1500:],
                            hint="check the network to PyPI; the Debian stage is kept for the next try")
    purelib = command.run(["chroot", str(tmp), venv_py, "-c",
                           "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    (tmp / SRC.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (tmp / purelib.lstrip("/") / "osgtest_dag_src.pth").write_text(SRC + "\n")
    # libguestfs in the local-universe nodes runs as the job owner and boots the root's own
    # kernel, which Debian installs readable by root only
    for k in (tmp / "boot").glob("vmlinuz-*"):
        k.chmod(0o644)
    entry = tmp / VENV.lstrip("/") / "bin" / "osgtest-dag"
    entry.write_text(f"#!{venv_py}\nimport sys\nfrom osgtest_dag.cli.main import main\nsys.exit(main())\n")
    entry.chmod(0o755)


def _host_ca_bundle() -> Path:
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        v = os.environ.get(var)
        if v and Path(v).is_file():
            return Path(v)
    return Path("/etc/ssl/certs/ca-certificates.crt")


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    if _mounted_under(path):
        raise UserError("refusing to delete a tree with mounts under it", where=path,
                        hint="run `osgtest-dag pool down` first")
    command.run(["rm", "-rf", "--one-file-system", str(path)], timeout=600)


# --- mounts ---------------------------------------------------------------------------------

def _mountpoints() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4]
        out.append(mp.encode().decode("unicode_escape"))
    return out


def _mounted_under(path: Path) -> list[str]:
    p = str(Path(path).resolve())
    return [m for m in _mountpoints() if m == p or m.startswith(p + "/")]


def _is_mountpoint(path: Path) -> bool:
    return str(Path(path).resolve()) in _mountpoints()


def _mount(pool: Pool, state: dict, target: Path, argv: list[str]) -> None:
    if _is_mountpoint(target):
        return
    target.mkdir(parents=True, exist_ok=True)
    command.run(argv + [str(target)], timeout=60)
    state.setdefault("mounts", []).append(str(target))
    pool.save_state(state)


def _mount_all(pool: Pool, state: dict, binds: Sequence[Path], src: Path) -> None:
    r = pool.root
    _mount(pool, state, r / "proc", ["mount", "-t", "proc", "proc"])
    _mount(pool, state, r / "sys", ["mount", "--rbind", "--make-rslave", "/sys"])
    _mount(pool, state, r / "dev", ["mount", "--rbind", "--make-rslave", "/dev"])
    _mount(pool, state, r / "run", ["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs"])
    target = pool.inside(SRC)
    if not _is_mountpoint(target):
        _mount(pool, state, target, ["mount", "--bind", str(src)])
        command.run(["mount", "-o", "remount,bind,ro", str(target)], timeout=60)
    for b in binds:
        b.mkdir(parents=True, exist_ok=True)
        target = pool.inside(b.resolve())
        _mount(pool, state, target, ["mount", "--bind", str(b.resolve())])
        # the job owner must reach it: the root's own directories on the way (/root is 0700)
        d = target.parent
        while d != pool.root and pool.root in d.parents:
            os.chmod(d, os.stat(d).st_mode | 0o111)
            d = d.parent


def _unmount_all(pool: Pool) -> list[str]:
    """Unmount everything under the root, deepest first. Returns what was unmounted."""
    done = []
    for _ in range(3):
        left = sorted(_mounted_under(pool.root), key=lambda m: m.count("/"), reverse=True)
        if not left:
            break
        for m in left:
            if command.run(["umount", m], check=False, timeout=60).returncode != 0:
                command.run(["umount", "-l", m], check=False, timeout=60)
            done.append(m)
    left = _mounted_under(pool.root)
    if left:
        raise UserError(f"could not unmount: {', '.join(left)}", hint="see `fuser -m` for who uses them")
    return done


# --- processes ------------------------------------------------------------------------------

def root_pids(pool: Pool) -> list[int]:
    """Processes whose root directory is the pool's root: everything started inside it."""
    want = str(pool.root.resolve())
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.readlink(d / "root") == want:
                pids.append(int(d.name))
        except OSError:
            continue
    return sorted(pids)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < end:
        time.sleep(0.2)
        left = [p for p in left if _alive(p)]
    return left


# --- configuration --------------------------------------------------------------------------

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
    return ('user = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n'
            'security_driver = "none"\ncgroup_controllers = [ ]\nnamespaces = [ ]\n'
            'stdio_handler = "file"\n')


def libvirt_xml_script() -> str:
    """LIBVIRT_XML_SCRIPT: HTCondor's libvirt_simple_script.awk, adapted.

    The starter pipes the job's VM ad (`Attr = value` lines) to it and uses its standard
    output as the libvirt domain XML. Changes from the stock script: the domain type comes from
    the first argument (`qemu` = TCG with `<cpu mode='maximum'/>`, for hosts where KVM does not
    work; `kvm` = host-passthrough as the stock script); the serial console goes to a file
    (`<console dir>/<domain name>.log`); a job with vm_networking gets a user-mode (SLIRP)
    interface so a guest reaches the network without a libvirt bridge; disk formats are
    written explicitly (vm_disk's 4th field), not guessed.
    """
    return r'''#!/usr/bin/awk -f
# osgtest-dag: LIBVIRT_XML_SCRIPT for the test pool (from HTCondor's libvirt_simple_script.awk).
# usage: awk -f osgtest-libvirt.awk [tcg|kvm] [console-dir]
function quote(str) {
    gsub(/&/, "\\&amp;", str); gsub(/</, "\\&lt;", str); gsub(/>/, "\\&gt;", str)
    gsub(/'/, "\\&apos;", str); gsub(/"/, "\\&quot;", str)
    return str
}
function unquote(str) {
    sub(/^[ \t]*"/, "", str); sub(/"[ \t]*$/, "", str)
    return str
}
BEGIN {
    accel = (ARGC > 1) ? ARGV[1] : "tcg"
    consoledir = (ARGC > 2) ? ARGV[2] : "/var/log/condor/vm-consoles"
    ARGC = 1
    FS = " = "
    networking = "false"; vcpus = 1; memory = 512; bootloader = ""; disk = ""
    kernel = ""; initrd = ""; root = ""; kernel_params = ""; name = ""; macaddr = ""; workdir = ""
}
$1 ~ /^VMPARAM_VM_NAME$/ { name = unquote($2); next }
$1 ~ /^JobVMMemory$/ { memory = $2 * 1024; next }
$1 ~ /^JobVM_VCPUS$/ { vcpus = $2; next }
$1 ~ /^JobVMNetworking$/ { networking = tolower($2); next }
$1 ~ /^JobVM_MACADDR$/ { macaddr = unquote($2); next }
$1 ~ /^VMPARAM_Kvm_Kernel$/ { kernel = unquote($2); next }
$1 ~ /^VMPARAM_Kvm_Initrd$/ { initrd = unquote($2); next }
$1 ~ /^VMPARAM_Kvm_Root$/ { root = unquote($2); next }
$1 ~ /^VMPARAM_Kvm_Kernel_Params$/ { kernel_params = unquote($2); next }
$1 ~ /^VMPARAM_vm_Disk$/ { disk = unquote($2); next }
$1 ~ /^VM_WORKING_DIR$/ { workdir = unquote($2); next }
END {
    if (accel == "kvm") {
        print "<domain type='kvm'>"
    } else {
        print "<domain type='qemu'>"
    }
    print "<name>" quote(name) "</name>"
    print "<memory>" memory "</memory>"
    print "<vcpu>" vcpus "</vcpu>"
    if (accel == "kvm") {
        print "<cpu mode='host-passthrough'/>"
    } else {
        print "<cpu mode='maximum'/>"
    }
    print "<os><type arch='x86_64' machine='q35'>hvm</type>"
    if (kernel != "") {
        print "<kernel>" quote(kernel) "</kernel>"
        if (initrd != "") print "<initrd>" quote(initrd) "</initrd>"
        if (root != "" || kernel_params != "") print "<cmdline>root=" quote(root) " " quote(kernel_params) "</cmdline>"
    }
    print "<boot dev='hd'/></os>"
    print "<features><acpi/><apic/></features>"
    print "<clock offset='utc'/>"
    print "<on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>"
    print "<devices>"
    n = split(disk, disks, " *, *")
    for (i = 1; i <= n; i++) {
        m = split(disks[i], f, ":")
        # relative disk names are files in the job's working directory (as the stock script)
        if (substr(f[1], 1, 1) != "/" && workdir != "") f[1] = workdir "/" f[1]
        fmt = (m >= 4 && f[4] != "") ? f[4] : "raw"
        ro = (f[3] == "r") ? "<readonly/>" : ""
        print "<disk type='file' device='disk'><driver name='qemu' type='" quote(fmt) "'/>"
        print "<source file='" quote(f[1]) "'/><target dev='" quote(f[2]) "' bus='virtio'/>" ro "</disk>"
    }
    if (networking == "true") {
        print "<interface type='user'>"
        if (macaddr != "") print "<mac address='" quote(macaddr) "'/>"
        print "<model type='virtio'/></interface>"
    }
    print "<serial type='file'><source path='" quote(consoledir "/" name ".log") "'/><target port='0'/></serial>"
    print "<console type='file'><source path='" quote(consoledir "/" name ".log") "'/><target type='serial' port='0'/></console>"
    print "</devices></domain>"
}
'''


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
    _write(pool.inside(XML_SCRIPT),
           f'#!/bin/sh\nexec awk -f {XML_SCRIPT}.awk "${{1:-{accel}}}" {CONSOLE_DIR}\n', 0o755)
    # HTCondor's log directory belongs to condor; the Debian package leaves it to the
    # daemons to make it, so make it here before the VM console directory inside it.
    pool.run(["install", "-d", "-o", "condor", "-g", "condor", "-m", "755", "/var/log/condor"])
    pool.inside(CONSOLE_DIR).mkdir(parents=True, exist_ok=True)
    os.chmod(pool.inside(CONSOLE_DIR), 0o1777)
    _write(pool.inside("/etc/libvirt/qemu.conf"), qemu_conf())
    tool = tool or _host_tool()
    if tool:
        shim = pool.inside(tool)
        if not shim.exists() or shim.read_text(errors="replace").startswith("#!/bin/sh\n# osgtest-dag pool shim"):
            _write(shim, f'#!/bin/sh\n# osgtest-dag pool shim: the pool root\'s own osgtest-dag\n'
                         f'exec {VENV}/bin/osgtest-dag "$@"\n', 0o755)


def _host_tool() -> str | None:
    from osgtest_dag.generate.workflow import default_tool
    return default_tool()


# --- up / down / status ---------------------------------------------------------------------

@dataclass(frozen=True)
class PoolStatus:
    up: bool
    root: str
    built: bool
    daemons: dict[str, int | None]      # name -> pid (None: not running)
    slots: list[dict]
    has_vm: bool | None
    binds: list[str]
    accel: str | None
    message: str = ""

    def to_json(self) -> dict:
        return self.__dict__.copy()


def _tree_root() -> Path:
    return Path(__file__).resolve().parents[2]


def up(pool: Pool | None = None, *, binds: Sequence[Path] = (), build: bool = True,
       timeout: float = 120) -> dict:
    """Build (if needed), mount, configure and start the pool; wait for a slot. Returns
    timings and what was done. Idempotent: an up pool is left as it is."""
    pool = pool or Pool()
    require_root()
    t0 = time.monotonic()
    report: dict = {}
    pids = pool.load_state().get("pids", {})
    if _alive(pids.get("condor_master")) and _alive(pids.get("libvirtd")):
        if not is_built(pool):
            log.warning("the running pool's root is older than the recipe: `pool down; pool up` rebuilds it")
        return {"already_up": True, "seconds": round(time.monotonic() - t0, 1)}
    if build:
        b = build_root(pool)
        report["build"] = b
    elif not is_built(pool):
        raise UserError("the pool root is not built", hint="run `osgtest-dag pool up` (it builds it)")
    with pool.lock():
        state = pool.load_state()
        if _alive(state.get("pids", {}).get("condor_master")) and _alive(state.get("pids", {}).get("libvirtd")):
            report.update(already_up=True, seconds=round(time.monotonic() - t0, 1))
            return report
        from osgtest_dag.guest.qemu import detect_accel
        accel = detect_accel()
        # default: the work directory, and the image store (VM jobs transfer base images
        # from the path the run names)
        from osgtest_dag.base.paths import default_image_dir
        binds = [Path(b) for b in binds] or [pool.work, default_image_dir()]
        state = {"root": str(pool.root), "mounts": state.get("mounts", []), "pids": {},
                 "binds": [str(Path(b).resolve()) for b in binds], "accel": accel,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        pool.save_state(state)
        try:
            _mount_all(pool, state, binds, _tree_root())
            # /run is a fresh tmpfs: what the packages' tmpfiles.d would make
            pool.run(["install", "-d", "-m", "1777", "/run/lock"])
            pool.run(["install", "-d", "-o", "condor", "-g", "condor", "-m", "755", "/run/condor"])
            pool.run(["install", "-d", "-m", "755", "/run/libvirt"])
            configure(pool, accel)
            # the default work directory is shared like /tmp (the job owner makes files in it)
            if str(pool.work.resolve()) in state["binds"]:
                os.chmod(pool.work, 0o1777)
            _start_libvirtd(pool, state)
            _start_master(pool, state)
            wait_ready(pool, timeout=timeout)
        except BaseException:
            log.warning("pool up failed; stopping what was started")
            _stop(pool, pool.load_state())
            raise
    report.update(already_up=False, seconds=round(time.monotonic() - t0, 1), accel=accel)
    return report


def _start_libvirtd(pool: Pool, state: dict) -> None:
    pidfile = pool.inside("/run/libvirtd.pid")
    pool.run(["/usr/sbin/libvirtd", "-d", "-p", "/run/libvirtd.pid"], timeout=60)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        pid = _read_pid(pidfile)
        if pid and pool.run(["virsh", "-c", "qemu:///system", "version"], check=False,
                            timeout=30).returncode == 0:
            state["pids"]["libvirtd"] = pid
            pool.save_state(state)
            return
        time.sleep(0.5)
    raise UserError("libvirtd did not become ready in 60 s",
                    hint=f"see {pool.inside('/var/log/libvirt')} and try `osgtest-dag pool down; pool up`")


def _start_master(pool: Pool, state: dict) -> None:
    pool.run(["/usr/sbin/condor_master", "-pidfile", "/run/condor/master.pid"], timeout=60)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        pid = _read_pid(pool.inside("/run/condor/master.pid"))
        if pid and _alive(pid):
            state["pids"]["condor_master"] = pid
            pool.save_state(state)
            return
        time.sleep(0.2)
    raise UserError("condor_master did not start",
                    hint=f"see {pool.inside('/var/log/condor/MasterLog')}")


def condor_status_slots(pool: Pool) -> list[dict]:
    """Slot ads from the pool's collector (via condor_status in the root: same version)."""
    proc = pool.run(["condor_status", "-json", "-attributes",
                     "Name,State,Activity,Cpus,Memory,HasVM,VM_Type,OfflineUniverses,VM_AvailNum,StartdIpAddr"],
                    check=False, timeout=30)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return []


def wait_ready(pool: Pool, timeout: float = 120, need_vm: bool = False) -> list[dict]:
    """Wait until the collector shows a slot (with HasVM if `need_vm`) and the schedd answers."""
    end = time.monotonic() + timeout
    slots: list[dict] = []
    while time.monotonic() < end:
        slots = condor_status_slots(pool)
        if slots and (not need_vm or any(s.get("HasVM") for s in slots)):
            q = pool.run(["condor_q", "-totals"], check=False, timeout=30)
            if q.returncode == 0:
                return slots
        time.sleep(1)
    log_hint = pool.inside("/var/log/condor")
    raise UserError(f"the pool did not come up in {timeout:g} s (slots seen: {len(slots)})",
                    hint=f"see the daemon logs in {log_hint}")


def status(pool: Pool | None = None) -> PoolStatus:
    pool = pool or Pool()
    state = pool.load_state()
    pids = state.get("pids", {})
    daemons: dict[str, int | None] = {}
    for name in ("libvirtd", "condor_master"):
        daemons[name] = pids.get(name) if _alive(pids.get(name)) else None
    running = {}
    if daemons["condor_master"]:
        for pid in root_pids(pool):
            try:
                comm = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            except (OSError, UnicodeDecodeError):
                continue
            comm = os.path.basename(comm)
            if comm.startswith("condor_") and comm not in running:
                running[comm] = pid
    for k, v in sorted(running.items()):
        daemons.setdefault(k, v)
    is_up = bool(daemons["condor_master"] and daemons["libvirtd"])
    slots = condor_status_slots(pool) if is_up else []
    has_vm = any(bool(s.get("HasVM")) for s in slots) if slots else None
    return PoolStatus(up=is_up, root=str(pool.root), built=is_built(pool), daemons=daemons,
                      slots=slots, has_vm=has_vm, binds=state.get("binds", []),
                      accel=state.get("accel"))


def _stop(pool: Pool, state: dict, timeout: float = 60) -> dict:
    stopped: dict = {"pids": [], "unmounted": []}
    master = state.get("pids", {}).get("condor_master")
    stopped["pids"] += [p for p in state.get("pids", {}).values() if _alive(p)]
    if _alive(master):
        pool.run(["condor_off", "-master", "-fast"], check=False, timeout=30)
        if _wait_gone([master], timeout / 2):
            os.kill(master, signal.SIGQUIT)
            _wait_gone([master], 10)
    libvirtd = state.get("pids", {}).get("libvirtd")
    if _alive(libvirtd):
        os.kill(libvirtd, signal.SIGTERM)
        _wait_gone([libvirtd], 15)
    # everything else started inside the root (VMs, gahps, stray jobs): by pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for p in root_pids(pool) if p != os.getpid()]
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
            stopped["pids"].append(p)
        if _wait_gone(pids, 10 if sig == signal.SIGTERM else 5) == []:
            break
    stopped["unmounted"] = _unmount_all(pool)
    pool.save_state({"root": str(pool.root), "pids": {}, "mounts": [], "binds": []})
    return stopped


def down(pool: Pool | None = None) -> dict:
    """Stop every process running in the root (by pid) and unmount. Idempotent."""
    pool = pool or Pool()
    require_root()
    with pool.lock():
        return _stop(pool, pool.load_state())


def restart_startd(pool: Pool) -> None:
    """After a VM failure the startd turns the VM universe off until restarted."""
    pool.run(["condor_restart", "-startd"], check=False, timeout=30)


# --- submitting to the test pool ------------------------------------------------------------

def client_config() -> tuple[tuple[str, str], ...]:
    """htcondor2.param settings for a client on the host talking to the test pool: the
    collector on 127.0.0.1, CLAIMTOBE as the pool's job owner (test pool only)."""
    return (("COLLECTOR_HOST", "127.0.0.1:9618"), ("CONDOR_HOST", "127.0.0.1"),
            ("NETWORK_INTERFACE", "127.0.0.1"), ("ENABLE_IPV6", "false"),
            ("UID_DOMAIN", "osgtest-pool"),
            ("SEC_CLIENT_AUTHENTICATION_METHODS", "CLAIMTOBE"),
            ("SEC_DEFAULT_AUTHENTICATION_METHODS", "CLAIMTOBE"),
            ("SEC_CLAIMTOBE_USER", POOL_USER), ("SEC_CLAIMTOBE_INCLUDE_DOMAIN", "true"),
            ("SEC_CLIENT_INTEGRITY", "OPTIONAL"), ("SEC_CLIENT_ENCRYPTION", "OPTIONAL"),
            ("SEC_DEFAULT_INTEGRITY", "OPTIONAL"), ("SEC_DEFAULT_ENCRYPTION", "OPTIONAL"))


def submit_options(base=None):
    """condor.SubmitOptions for the test pool: its collector, CLAIMTOBE, the pool's
    condor_dagman, and no host-only environment passed to DAGMan."""
    from dataclasses import replace

    from osgtest_dag.engine.condor.condor import SubmitOptions
    base = base or SubmitOptions()
    return replace(base, pool=base.pool or "127.0.0.1:9618", dagman=base.dagman or "/usr/bin/condor_dagman",
                   client_config=client_config() + tuple(base.client_config),
                   getenv_exclude=tuple(base.getenv_exclude) + ("CONDOR_CONFIG",))


def _bind_of(pool: Pool, path: Path) -> str | None:
    p = str(Path(path).resolve())
    for b in pool.load_state().get("binds", []):
        if p == b or p.startswith(b.rstrip("/") + "/"):
            return b
    return None


def prepare_run_dir(run_dir: Path, pool: Pool | None = None) -> None:
    """Make a run directory usable by the pool: it must lie in a bind-mounted work directory
    (same path inside and out) and belong to the pool's job owner."""
    pool = pool or Pool()
    run_dir = Path(run_dir).resolve()
    if not status(pool).up:
        raise UserError("the test pool is not up", hint="start it with `osgtest-dag pool up`")
    if _bind_of(pool, run_dir) is None:
        binds = ", ".join(pool.load_state().get("binds", [])) or "-"
        raise UserError("the run directory is not in one of the pool's work directories", where=run_dir,
                        hint=f"generate it under {binds}, or restart the pool with `pool up --bind DIR`")
    command.run(["chown", "-R", f"{POOL_UID}:{POOL_UID}", str(run_dir)], timeout=300)
    # and the job owner must get there: directories on the way from the work directory
    bind = Path(_bind_of(pool, run_dir))
    d = run_dir.parent
    while d == bind or bind in d.parents:
        os.chmod(d, os.stat(d).st_mode | 0o111)
        d = d.parent


def submit_dag_inside(dag: Path, pool: Pool | None = None, *, args: Sequence[str] = (),
                      timeout: float = 120) -> int:
    """condor_submit_dag run inside the root as the pool's job owner (the fallback when the
    host's bindings cannot submit). Returns the DAGMan job's cluster."""
    pool = pool or Pool()
    dag = Path(dag).resolve()
    proc = pool.run(["sh", "-c", f"cd {shlex.quote(str(dag.parent))} && condor_submit_dag -batch-name "
                     f"{shlex.quote(dag.parent.name)} {' '.join(shlex.quote(a) for a in args)} {shlex.quote(dag.name)}"],
                    user=POOL_USER, check=False, timeout=timeout)
    import re
    m = re.search(r"submitted to cluster (\d+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise UserError(f"condor_submit_dag failed in the pool: {(proc.stdout + proc.stderr).strip()[-800:]}",
                        where=dag)
    return int(m.group(1))


# --- validating generated files with the pool's own HTCondor --------------------------------

def condor_submit_dry_run(pool: Pool, run_dir: Path, submit_file: str, macros: dict[str, str],
                          timeout: float = 60) -> str:
    """`condor_submit -dry-run` of one submit file in the run directory, with the node's VARS
    as macros, as the pool's user. Returns the job ad text; raises UserError with
    condor_submit's message when it refuses."""
    args = " ".join(f"-a {shlex.quote(f'{k}={v}')}" for k, v in macros.items())
    cmd = f"cd {shlex.quote(str(run_dir))} && condor_submit -dry-run - {shlex.quote(submit_file)} {args}"
    proc = pool.run(["sh", "-c", cmd], user=POOL_USER, check=False, timeout=timeout)
    if proc.returncode != 0 or "ERROR" in proc.stderr:
        raise UserError(f"condor_submit -dry-run refused {submit_file}: "
                        f"{(proc.stderr + proc.stdout).strip()[-1000:]}", where=Path(run_dir) / submit_file)
    return proc.stdout + proc.stderr


def condor_submit_dag_no_submit(pool: Pool, dag: Path, timeout: float = 60) -> str:
    """`condor_submit_dag -no_submit DAG` as the pool's user (writes DAG.condor.sub)."""
    dag = Path(dag)
    cmd = f"cd {shlex.quote(str(dag.parent))} && condor_submit_dag -no_submit -force {shlex.quote(dag.name)}"
    proc = pool.run(["sh", "-c", cmd], user=POOL_USER, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise UserError(f"condor_submit_dag -no_submit refused {dag.name}: "
                        f"{(proc.stderr + proc.stdout).strip()[-1000:]}", where=dag)
    return proc.stdout


def dagman_parse(pool: Pool, dag: Path, timeout: float = 60) -> str:
    """Have the pool's condor_dagman parse `dag` (condor_submit_dag does not read the node
    lines): `condor_dagman -DryRun`, stopped as soon as it says it parsed the DAG
    ("Bootstrapping..."). Run it on a scratch copy: it writes logs beside the DAG. Returns
    the DAGMan log; raises UserError with DAGMan's parse error."""
    dag = Path(dag)
    out = dag.with_name(f"{dag.name}.parse-check.out")
    out.unlink(missing_ok=True)
    version = pool.run(["condor_version"], timeout=30).stdout.splitlines()[0].strip()
    inner = (f"cd {shlex.quote(str(dag.parent))} && _CONDOR_DAGMAN_LOG={shlex.quote(out.name)} "
             f"exec condor_dagman -p 0 -f -l . -Dag {shlex.quote(dag.name)} "
             f"-Lockfile {shlex.quote(dag.name)}.parse-check.lock -CsdVersion {shlex.quote(version)} -DryRun")
    proc = command.spawn(pool.chroot_argv(["sh", "-c", inner], user=POOL_USER),
                         stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))
    end = time.monotonic() + timeout
    text = ""
    try:
        while time.monotonic() < end:
            text = out.read_text(errors="replace") if out.exists() else ""
            if "Bootstrapping..." in text:
                return text
            if proc.poll() is not None:
                text = out.read_text(errors="replace") if out.exists() else ""
                if "Bootstrapping..." in text:
                    return text
                errors = [line for line in text.splitlines() if "ERROR" in line]
                raise UserError("condor_dagman could not parse the DAG: "
                                + ("; ".join(errors[:5]) or text[-800:]), where=dag)
            time.sleep(0.2)
        raise UserError(f"condor_dagman did not finish parsing in {timeout:g} s", where=dag)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
