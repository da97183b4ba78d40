"""Building the pool's trixie root, once, cached until its recipe changes.

HTCondor's daemons are not packaged for Debian 12, but Debian 13 (trixie) has them. The root is
built with mmdebstrap (the Debian packages, the job owner, a venv) and then gets our PyPI
dependencies at the versions this venv runs; a stamp in the root records the recipe's digest.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import os
import shutil
import time
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.base.errors import CommandError, UserError
from osgtest_dag.devpool.chroot import POOL_UID, POOL_USER, SRC, VENV, Pool, require_root
from osgtest_dag.devpool.mounts import mounted_under
from osgtest_dag.model.documents import read_json

log = logging.getLogger("osgtest_dag.devpool.build")

SUITE = "trixie"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "condor",
    "condor-vm-gahp",
    "minicondor",
    "libvirt-daemon-system",
    "libvirt-clients",
    "qemu-system-x86",
    "qemu-utils",
    "e2fsprogs",
    "procps",
    "passwd",
    "ca-certificates",
    "python3",
    "python3-venv",
    # what the local-universe nodes need: they read result disks with libguestfs
    "python3-guestfs",
    "libguestfs-tools",
    "linux-image-amd64",
)
# Bump when the build recipe changes in a way the package list does not show.
RECIPE_VERSION = 2
EXCLUDES = (
    "/usr/share/man/*",
    "/usr/share/locale/*",
    "/usr/share/info/*",
    "/usr/share/doc/*",
    "/usr/share/lintian/*",
)


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
    pinned = []
    for dist in ("htcondor", "jinja2", "networkx", "click", "PyYAML"):
        try:
            pinned.append(f"{dist}=={md.version(dist)}")
        except md.PackageNotFoundError:
            pinned.append(dist)
    return pinned


def recipe(mirror: str) -> dict:
    return {
        "recipe": RECIPE_VERSION,
        "suite": SUITE,
        "mirror": mirror,
        "packages": sorted(PACKAGES),
        "pip": _pip_requirements(),
        "user": [POOL_USER, POOL_UID],
    }


def _digest(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def is_built(pool: Pool, mirror: str | None = None) -> bool:
    try:
        stamp = read_json(pool.stamp)
    except UserError:
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
        if mounted_under(pool.root):
            raise UserError(
                "the pool is up; cannot rebuild its root while it runs",
                hint="run `osgtest-dag pool down` first",
            )
        if not command.which("mmdebstrap"):
            raise UserError(
                "mmdebstrap is not installed", hint="run `make setup` (scripts/setup installs it)"
            )
        tmp = pool.base / "root.tmp"
        t0 = time.monotonic()
        apt_doc = {k: doc[k] for k in ("recipe", "suite", "mirror", "packages", "user")}
        apt_stamp = tmp / ".osgtest-apt-stage.json"
        try:
            reuse = read_json(apt_stamp).get("digest") == _digest(apt_doc) and not force
        except UserError:
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
        (tmp / pool.stamp.name).write_text(
            json.dumps(
                {
                    **doc,
                    "digest": _digest(doc),
                    "build_seconds": seconds,
                    "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=1,
            )
            + "\n"
        )
        old = pool.base / "root.old"
        _remove_tree(old)
        if pool.root.exists():
            os.rename(pool.root, old)
        os.rename(tmp, pool.root)
        _remove_tree(old)
        log.info("pool root built in %.1f s: %s", seconds, pool.root)
        return {"built": True, "seconds": seconds, "root": str(pool.root)}


def _apt_stage(tmp: Path, mirror: str) -> None:
    hooks = [
        f'chroot "$1" useradd -m -u {POOL_UID} -s /bin/bash {POOL_USER}',
        f'chroot "$1" python3 -m venv --system-site-packages {VENV}',
    ]
    argv = ["mmdebstrap", "--variant=apt", "--mode=root", "--quiet", "--include=" + ",".join(PACKAGES)]
    argv += [f"--dpkgopt=path-exclude={p}" for p in EXCLUDES]
    argv += ["--dpkgopt=path-include=/usr/share/doc/*/copyright"]
    argv += [f"--customize-hook={h}" for h in hooks]
    argv += [SUITE, str(tmp), f"deb {mirror} {SUITE} main"]
    try:
        command.run(argv, timeout=3600)
    except CommandError as e:
        _remove_tree(tmp)
        raise UserError(
            f"building the pool root failed (mmdebstrap): {e}",
            hint=f"check the network to the Debian mirror {mirror}",
        ) from None


def _python_stage(tmp: Path, pip_reqs: list[str]) -> None:
    """The venv's PyPI packages, the .pth that puts the (bind-mounted) working tree on
    sys.path, and the osgtest-dag entry script. pip runs in the root with the host's CA
    bundle (PyPI may be reached through a proxy only the host's CAs trust) and proxy
    settings; the host's other PIP_* settings (find-links dirs ...) do not apply there."""
    shutil.copy2(_host_ca_bundle(), tmp / "opt/osgtest-dag/host-ca.pem")
    env = ["PATH=/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8"]
    env += [
        f"{k}={v}"
        for k, v in sorted(os.environ.items())
        if k.lower() in ("http_proxy", "https_proxy", "no_proxy", "pip_index_url")
    ]
    venv_py = f"{VENV}/bin/python3"

    def pip(reqs: list[str]):
        return command.run(
            [
                "chroot",
                str(tmp),
                "env",
                "-i",
                *env,
                venv_py,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-cache-dir",
                "--only-binary=:all:",
                "--cert",
                "/opt/osgtest-dag/host-ca.pem",
                *reqs,
            ],
            check=False,
            timeout=1800,
        )

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
            raise UserError(
                f"installing {req} into the pool root failed:\n"
                + (proc.stderr or proc.stdout).strip()[-1500:],
                hint="check the network to PyPI; the Debian stage is kept for the next try",
            )
    purelib = command.run(
        ["chroot", str(tmp), venv_py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    ).stdout.strip()
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
    if mounted_under(path):
        raise UserError(
            "refusing to delete a tree with mounts under it",
            where=path,
            hint="run `osgtest-dag pool down` first",
        )
    command.run(["rm", "-rf", "--one-file-system", str(path)], timeout=600)
