"""Run the payload's EL (dnf) branch for real without an EL machine: a Debian root with Debian's
dnf and rpm (built once with mmdebstrap, cached), an RPM repository of stand-in packages built
here with rpmbuild and createrepo_c and served over HTTP, and run-job started in that root in
namespaces of its own (mount, UTS, network, PID), with its phases and an output directory as in
a VM. Every dnf, yum, rpm, make, tar, git and osg-test command goes through a wrapper on PATH
that logs its argv and execs the real binary; the stand-in osg-test's own commands are logged
with the prefix `[osg-test] `.

Used by tests/test_el_payload.py. Everything named stand-in here exists only for that test."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.devpool.build import host_mirror

CACHE = Path(os.environ.get("OSGTEST_DAG_EL_CHROOT_CACHE", Path.home() / ".cache/osgtest-dag/el-chroot"))
SUITE = "bookworm"
ROOT_PACKAGES = (
    "dnf",
    "dnf-plugins-core",  # config-manager, as the EL images' dnf-plugins-core
    "rpm",
    "curl",  # rpm fetches http:// packages with it
    "iproute2",
    "make",
    "git",
    "hostname",
    "python3",
)
STANDINS = Path(__file__).parent / "data" / "el-standins"
WRAPPED = ("dnf", "yum", "rpm", "make", "tar", "git", "osg-test")
COMMAND_LOG = "var/log/osgtest-commands.log"
PORT = 8765
BASE_URL = f"http://127.0.0.1:{PORT}"
RELEASE_URL = BASE_URL + "/osg/{series}-main/osg-{series}-main-el{major}-release-latest.rpm"
EPEL_URL = BASE_URL + "/epel/epel-release-latest-{major}.noarch.rpm"


def build_root() -> Path:
    """The cached Debian root with dnf (built on first use, about 90 s; then reused)."""
    recipe = {"suite": SUITE, "packages": ROOT_PACKAGES, "version": 1}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    root = CACHE / f"root-{digest}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".built").is_file():
            return root
        tmp = CACHE / f"root-{digest}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        hooks = [
            'ln -sf dnf "$1/usr/bin/yum"',  # as EL 8+, where yum is dnf
            'chroot "$1" rpm --initdb',
            'rm -f "$1"/etc/yum.repos.d/*',
        ]
        argv = ["mmdebstrap", "--variant=apt", "--mode=root", "--quiet"]
        argv += ["--include=" + ",".join(ROOT_PACKAGES)]
        argv += [f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale")]
        argv += [f"--customize-hook={h}" for h in hooks]
        argv += [SUITE, str(tmp), f"deb {host_mirror()} {SUITE} main"]
        subprocess.run(argv, check=True, capture_output=True, timeout=1800)
        (tmp / ".built").write_text(json.dumps(recipe) + "\n")
        os.rename(tmp, root)
        return root


# --- the stand-in RPM repository ---------------------------------------------------------


@dataclass(frozen=True)
class StandIn:
    name: str
    version: str
    repo: str  # directory under the served tree
    files: tuple[tuple[str, str], ...]  # (path, content)
    requires: tuple[str, ...] = ()
    rpm_name: str | None = None  # the file name in its directory (a release RPM's URL)


def _repo_file(sections: dict[str, tuple[str, bool]]) -> str:
    return "".join(
        f"[{rid}]\nname={rid} (stand-in)\nbaseurl={BASE_URL}/{path}/\nenabled={int(on)}\ngpgcheck=0\n\n"
        for rid, (path, on) in sections.items()
    )


def _osg_release(series: str) -> StandIn:
    repo = _repo_file({"osg": (f"osg/{series}", True), "osg-testing": (f"osg/{series}-testing", False)})
    return StandIn(
        "osg-release",
        series,
        f"osg/{series}-main",
        (("/etc/yum.repos.d/osg.repo", repo),),
        rpm_name=RELEASE_URL.format(series=series, major=9).rsplit("/", 1)[1],
    )


def standins() -> tuple[StandIn, ...]:
    """What the test cell meets: a base OS repository (the payload's and osg-test's
    prerequisites, semanage), CRB (disabled, as in a stock image), EPEL's and two OSG
    series' release packages and repositories."""

    def marker(name: str, version: str) -> tuple[tuple[str, str], ...]:
        return ((f"/usr/share/standin/{name}", f"{name} {version} (stand-in)\n"),)

    base = [StandIn(n, "1.0", "base", marker(n, "1.0")) for n in ("python3", "python3-rpm", "git-core")]
    base.append(StandIn("openssl", "1.0", "base", (("/usr/bin/openssl", "#!/bin/sh\necho stand-in\n"),)))
    base.append(
        StandIn(
            "policycoreutils-python-utils",
            "1.0",
            "base",
            (("/usr/sbin/semanage", "#!/bin/sh\necho stand-in\n"),),
        )
    )
    return (
        *base,
        StandIn("crb-lib", "1.0", "crb", marker("crb-lib", "1.0")),
        StandIn(
            "epel-release",
            "9",
            "epel",
            (("/etc/yum.repos.d/epel.repo", _repo_file({"epel": ("epel/9", True)})),),
            rpm_name="epel-release-latest-9.noarch.rpm",
        ),
        StandIn("hello-standin", "1.0", "epel/9", marker("hello-standin", "1.0"), requires=("crb-lib",)),
        _osg_release("24"),
        _osg_release("25"),
        StandIn("osg-hello", "1.0", "osg/24", marker("osg-hello", "1.0")),
        StandIn("osg-hello", "2.0", "osg/25", marker("osg-hello", "2.0")),
        StandIn("osg-testing-hello", "1.0", "osg/24-testing", marker("osg-testing-hello", "1.0")),
        StandIn("osg-testing-hello", "2.0", "osg/25-testing", marker("osg-testing-hello", "2.0")),
    )


def _spec(p: StandIn) -> str:
    install = "".join(
        f"mkdir -p %{{buildroot}}{os.path.dirname(path)}\n"
        f"cat > %{{buildroot}}{path} <<'STANDIN_EOF'\n{content}STANDIN_EOF\n"
        f"chmod 0755 %{{buildroot}}{path}\n"
        for path, content in p.files
    )
    requires = "".join(f"Requires: {r}\n" for r in p.requires)
    files = "".join(f"{path}\n" for path, _ in p.files)
    return (
        f"Name: {p.name}\nVersion: {p.version}\nRelease: 1\nSummary: stand-in for osgtest-dag's EL payload test\n"
        f"License: none\nBuildArch: noarch\nAutoReqProv: no\n{requires}"
        f"%description\nA stand-in package for tests/test_el_payload.py.\n"
        f"%install\n{install}%files\n{files}"
    )


def build_repository(dest: Path) -> Path:
    """The served tree: stand-in RPMs built with rpmbuild, each directory made a repository
    with createrepo_c."""
    top = dest.parent / "rpmbuild"
    for p in standins():
        spec = top / f"{p.name}-{p.version}.spec"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(_spec(p))
        out = top / "out" / f"{p.name}-{p.version}"
        subprocess.run(
            ["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}", "--define", f"_rpmdir {out}", spec],
            check=True,
            capture_output=True,
            timeout=120,
        )
        (built,) = out.rglob("*.rpm")
        d = dest / p.repo
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(built, d / (p.rpm_name or built.name))
    for d in sorted({p.repo for p in standins() if p.rpm_name is None}):
        subprocess.run(["createrepo_c", "--quiet", dest / d], check=True, capture_output=True, timeout=120)
    return dest


def make_git_sources(dest: Path) -> str:
    """Git repositories of the stand-in osg-test (account `standin`, branch `main`) and
    osg-ca-generator (opensciencegrid, master); returns the `test_source_git` URL template."""
    for account, package, branch in (
        ("standin", "osg-test", "main"),
        ("opensciencegrid", "osg-ca-generator", "master"),
    ):
        repo = dest / account / package
        repo.mkdir(parents=True)
        shutil.copy(STANDINS / package, repo / package)
        shutil.copy(STANDINS / f"{package}.Makefile", repo / "Makefile")
        git = ["git", "-C", str(repo), "-c", "user.name=standin", "-c", "user.email=standin@localhost"]
        subprocess.run([*git, "init", "-q", "-b", branch], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "stand-in"], check=True)
    return f"file://{dest}/{{account}}/{{package}}"


# --- the run -------------------------------------------------------------------------------

_WRAPPER = """#!/bin/sh
# osgtest-dag EL payload test: log this command, then run the real one
{{ printf '%s%s' "${{OSGTEST_CMDLOG_WHO:+[$OSGTEST_CMDLOG_WHO] }}" "{name}"; for a in "$@"; do printf ' %s' "$a"; done; echo; }} >> /{log}
{export}exec {real} "$@"
"""

_INSIDE = """set -e
ip link set lo up
# a global address and a default route, as a VM's DHCP gives (on lo: no link types needed)
ip addr add 10.77.0.2/24 dev lo
ip route add default via 10.77.0.1 dev lo
mount -t overlay overlay -o lowerdir="$LOWER",upperdir="$UPPER",workdir="$WORK" "$MERGED"
mount -t proc proc "$MERGED/proc"
mkdir -p "$MERGED/osgtest"
mount --bind "$JOB" "$MERGED/osgtest"
python3 -m http.server --bind 127.0.0.1 --directory "$REPO" {port} > "$JOB/../http.log" 2>&1 &
i=0
until python3 -c 'import socket; socket.create_connection(("127.0.0.1", {port}), 1)' 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 50 ] || exit 97; sleep 0.1
done
set +e
chroot "$MERGED" /usr/bin/env -i /osgtest/run-job
echo "run-job exit: $?"
"""


@dataclass(frozen=True)
class PayloadRun:
    job: Path  # run-job, input/, output/ (the IO disk's tree)
    upper: Path  # what the run changed in the root
    console: str
    seconds: float

    @property
    def output(self) -> Path:
        return self.job / "output"

    def commands(self) -> list[str]:
        return (self.upper / COMMAND_LOG).read_text().splitlines()


def run_payload(root: Path, job: Path, repo: Path, work: Path) -> PayloadRun:
    """run-job from `job` (run-job + input/) in an overlay of `root`, the repository `repo`
    served at BASE_URL; the root's changes stay in work/upper."""
    upper, wdir, merged = work / "upper", work / "overlay-work", work / "merged"
    for d in (upper, wdir, merged, job / "output"):
        d.mkdir(parents=True, exist_ok=True)
    # the image's state: its base repository and CRB (off, as in a stock image), the
    # wrappers, the stand-in osg-test's release URL
    (upper / "etc/yum.repos.d").mkdir(parents=True)
    (upper / "etc/yum.repos.d/standin-base.repo").write_text(
        _repo_file({"baseos": ("base", True), "crb": ("crb", False)})
    )
    # Debian's dnf-plugins-core turns on its "local" plugin (a repository of every installed
    # package, GPG-checked); EL's does not ship it
    (upper / "etc/dnf/plugins").mkdir(parents=True)
    (upper / "etc/dnf/plugins/local.conf").write_text("[main]\nenabled = false\n")
    (upper / "etc/osg-test-standin.conf").write_text(f"STANDIN_RELEASE_URL='{RELEASE_URL}'\n")
    (upper / "usr/local/sbin").mkdir(parents=True)
    (upper / "var/log").mkdir(parents=True)
    for name in WRAPPED:
        real = "/usr/sbin/osg-test" if name == "osg-test" else f"/usr/bin/{name}"
        export = "OSGTEST_CMDLOG_WHO=osg-test; export OSGTEST_CMDLOG_WHO\n" if name == "osg-test" else ""
        w = upper / "usr/local/sbin" / name
        w.write_text(_WRAPPER.format(name=name, log=COMMAND_LOG, real=real, export=export))
        w.chmod(0o755)
    env = dict(os.environ, LOWER=str(root), UPPER=str(upper), WORK=str(wdir), MERGED=str(merged))
    env.update(JOB=str(job), REPO=str(repo))
    t0 = time.monotonic()
    proc = subprocess.run(
        ["unshare", "--mount", "--uts", "--net", "--pid", "--fork", "sh", "-c", _INSIDE.format(port=PORT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return PayloadRun(job, upper, proc.stdout + proc.stderr, time.monotonic() - t0)
