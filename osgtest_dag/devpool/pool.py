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

The parts: chroot.py (where the pool lives, running commands inside), build.py (the cached
root), mounts.py and processes.py (what `up` makes and `down` takes away), config.py (what `up`
writes into the root; data/libvirt_script.awk), inside.py (HTCondor's tools run in the pool).
This module starts, stops and reports on the pool, and readies run directories for it.

Facts this relies on: /work/shared/notes/htcondor-pool-on-this-machine.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError
from osgtest_dag.base.paths import default_image_dir
from osgtest_dag.devpool.build import build_root, is_built
from osgtest_dag.devpool.chroot import POOL_UID, Pool, require_root
from osgtest_dag.devpool.config import client_config, configure
from osgtest_dag.devpool.mounts import mount_all, unmount_all
from osgtest_dag.devpool.processes import alive, read_pid, root_pids, wait_gone
from osgtest_dag.engine.condor.condor import SubmitOptions
from osgtest_dag.guest.qemu import detect_accel
from osgtest_dag.model.documents import parse_json

log = logging.getLogger("osgtest_dag.devpool.pool")


@dataclass(frozen=True)
class PoolStatus:
    up: bool
    root: str
    built: bool
    daemons: dict[str, int | None]  # name -> pid (None: not running)
    slots: list[dict]
    has_vm: bool | None
    binds: list[str]
    accel: str | None
    message: str = ""

    def to_json(self) -> dict:
        return self.__dict__.copy()


def _tree_root() -> Path:
    return Path(__file__).resolve().parents[2]


def up(
    pool: Pool | None = None, *, binds: Sequence[Path] = (), build: bool = True, timeout: float = 120
) -> dict:
    """Build (if needed), mount, configure and start the pool; wait for a slot. Returns
    timings and what was done. Idempotent: an up pool is left as it is."""
    pool = pool or Pool()
    require_root()
    t0 = time.monotonic()
    report: dict = {}
    pids = pool.load_state().get("pids", {})
    if alive(pids.get("condor_master")) and alive(pids.get("libvirtd")):
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
        if alive(state.get("pids", {}).get("condor_master")) and alive(state.get("pids", {}).get("libvirtd")):
            report.update(already_up=True, seconds=round(time.monotonic() - t0, 1))
            return report
        accel = detect_accel()
        # default: the work directory, and the image store (VM jobs transfer base images
        # from the path the run names)
        binds = [Path(b) for b in binds] or [pool.work, default_image_dir()]
        state = {
            "root": str(pool.root),
            "mounts": state.get("mounts", []),
            "pids": {},
            "binds": [str(Path(b).resolve()) for b in binds],
            "accel": accel,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        pool.save_state(state)
        try:
            mount_all(pool, state, binds, _tree_root())
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
        pid = read_pid(pidfile)
        if (
            pid
            and pool.run(["virsh", "-c", "qemu:///system", "version"], check=False, timeout=30).returncode
            == 0
        ):
            state["pids"]["libvirtd"] = pid
            pool.save_state(state)
            return
        time.sleep(0.5)
    raise UserError(
        "libvirtd did not become ready in 60 s",
        hint=f"see {pool.inside('/var/log/libvirt')} and try `osgtest-dag pool down; pool up`",
    )


def _start_master(pool: Pool, state: dict) -> None:
    pool.run(["/usr/sbin/condor_master", "-pidfile", "/run/condor/master.pid"], timeout=60)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        pid = read_pid(pool.inside("/run/condor/master.pid"))
        if pid and alive(pid):
            state["pids"]["condor_master"] = pid
            pool.save_state(state)
            return
        time.sleep(0.2)
    raise UserError("condor_master did not start", hint=f"see {pool.inside('/var/log/condor/MasterLog')}")


def condor_status_slots(pool: Pool) -> list[dict]:
    """Slot ads from the pool's collector (via condor_status in the root: same version)."""
    proc = pool.run(
        [
            "condor_status",
            "-json",
            "-attributes",
            "Name,State,Activity,Cpus,Memory,HasVM,VM_Type,OfflineUniverses,VM_AvailNum,StartdIpAddr",
        ],
        check=False,
        timeout=30,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    try:
        return parse_json(proc.stdout, "condor_q -json")
    except UserError:
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
    raise UserError(
        f"the pool did not come up in {timeout:g} s (slots seen: {len(slots)})",
        hint=f"see the daemon logs in {log_hint}",
    )


def status(pool: Pool | None = None) -> PoolStatus:
    pool = pool or Pool()
    state = pool.load_state()
    pids = state.get("pids", {})
    daemons: dict[str, int | None] = {}
    for name in ("libvirtd", "condor_master"):
        daemons[name] = pids.get(name) if alive(pids.get(name)) else None
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
    return PoolStatus(
        up=is_up,
        root=str(pool.root),
        built=is_built(pool),
        daemons=daemons,
        slots=slots,
        has_vm=has_vm,
        binds=state.get("binds", []),
        accel=state.get("accel"),
    )


def _stop(pool: Pool, state: dict, timeout: float = 60) -> dict:
    stopped: dict = {"pids": [], "unmounted": []}
    master = state.get("pids", {}).get("condor_master")
    stopped["pids"] += [p for p in state.get("pids", {}).values() if alive(p)]
    if alive(master):
        pool.run(["condor_off", "-master", "-fast"], check=False, timeout=30)
        if wait_gone([master], timeout / 2):
            os.kill(master, signal.SIGQUIT)
            wait_gone([master], 10)
    libvirtd = state.get("pids", {}).get("libvirtd")
    if alive(libvirtd):
        os.kill(libvirtd, signal.SIGTERM)
        wait_gone([libvirtd], 15)
    # everything else started inside the root (VMs, gahps, stray jobs): by pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for p in root_pids(pool) if p != os.getpid()]
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
            stopped["pids"].append(p)
        if wait_gone(pids, 10 if sig == signal.SIGTERM else 5) == []:
            break
    stopped["unmounted"] = unmount_all(pool)
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


def submit_options(base: SubmitOptions | None = None) -> SubmitOptions:
    """condor.SubmitOptions for the test pool: its collector, CLAIMTOBE, the pool's
    condor_dagman, and no host-only environment passed to DAGMan."""
    base = base or SubmitOptions()
    return replace(
        base,
        pool=base.pool or "127.0.0.1:9618",
        dagman=base.dagman or "/usr/bin/condor_dagman",
        client_config=client_config() + tuple(base.client_config),
        getenv_exclude=tuple(base.getenv_exclude) + ("CONDOR_CONFIG",),
    )


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
    bind_dir = _bind_of(pool, run_dir)
    if bind_dir is None:
        binds = ", ".join(pool.load_state().get("binds", [])) or "-"
        raise UserError(
            "the run directory is not in one of the pool's work directories",
            where=run_dir,
            hint=f"generate it under {binds}, or restart the pool with `pool up --bind DIR`",
        )
    command.run(["chown", "-R", f"{POOL_UID}:{POOL_UID}", str(run_dir)], timeout=300)
    # and the job owner must get there: directories on the way from the work directory
    bind = Path(bind_dir)
    d = run_dir.parent
    while d == bind or bind in d.parents:
        os.chmod(d, os.stat(d).st_mode | 0o111)
        d = d.parent
