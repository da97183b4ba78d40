"""HTCondor's own command-line tools from the test pool's root: run inside it as its job owner
(submitting a DAG with condor_submit_dag, checking generated files on a running pool), and
`pool_tools` for running them on the host without the pool (`osgtest-dag check`)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError
from osgtest_dag.devpool.chroot import POOL_USER, Pool
from osgtest_dag.engine.condor.dryrun import CondorTools


def pool_tools(pool: Pool | None = None) -> CondorTools | None:
    """The root's HTCondor (23.9, what the pool runs) as tools run on the host: each program
    through the root's own dynamic loader and libraries, so it needs no chroot, mount, daemon
    or root privileges, and sees the host's files where they are. A minimal configuration
    stands in for the root's (which names the root's paths). None while the root is not built."""
    pool = pool or Pool()
    loaders = sorted(pool.root.glob("usr/lib/*-linux-gnu/ld-linux*.so.*"))
    bindir = pool.inside("/usr/bin")
    if not pool.stamp.is_file() or not loaders or not (bindir / "condor_submit").is_file():
        return None
    libraries = ":".join(str(d) for d in (pool.inside("/usr/lib"), loaders[0].parent))
    return CondorTools(
        origin=f"the test pool's root ({pool.root})",
        bindir=str(bindir),
        prefix=(str(loaders[0]), "--library-path", libraries),
        minimal_config=True,
    )


def submit_dag_inside(
    dag: Path, pool: Pool | None = None, *, args: Sequence[str] = (), timeout: float = 120
) -> int:
    """condor_submit_dag run inside the root as the pool's job owner (the fallback when the
    host's bindings cannot submit). Returns the DAGMan job's cluster."""
    pool = pool or Pool()
    dag = Path(dag).resolve()
    proc = pool.run(
        [
            "sh",
            "-c",
            f"cd {shlex.quote(str(dag.parent))} && condor_submit_dag -batch-name "
            f"{shlex.quote(dag.parent.name)} {' '.join(shlex.quote(a) for a in args)} {shlex.quote(dag.name)}",
        ],
        user=POOL_USER,
        check=False,
        timeout=timeout,
    )
    m = re.search(r"submitted to cluster (\d+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise UserError(
            f"condor_submit_dag failed in the pool: {(proc.stdout + proc.stderr).strip()[-800:]}", where=dag
        )
    return int(m.group(1))


def condor_submit_dry_run(
    pool: Pool, run_dir: Path, submit_file: str, macros: dict[str, str], timeout: float = 60
) -> str:
    """`condor_submit -dry-run` of one submit file in the run directory, with the node's VARS
    as macros, as the pool's user. Returns the job ad text; raises UserError with
    condor_submit's message when it refuses."""
    args = " ".join(f"-a {shlex.quote(f'{k}={v}')}" for k, v in macros.items())
    cmd = f"cd {shlex.quote(str(run_dir))} && condor_submit -dry-run - {shlex.quote(submit_file)} {args}"
    proc = pool.run(["sh", "-c", cmd], user=POOL_USER, check=False, timeout=timeout)
    if proc.returncode != 0 or "ERROR" in proc.stderr:
        raise UserError(
            f"condor_submit -dry-run refused {submit_file}: {(proc.stderr + proc.stdout).strip()[-1000:]}",
            where=Path(run_dir) / submit_file,
        )
    return proc.stdout + proc.stderr


def condor_submit_dag_no_submit(pool: Pool, dag: Path, timeout: float = 60) -> str:
    """`condor_submit_dag -no_submit DAG` as the pool's user (writes DAG.condor.sub)."""
    dag = Path(dag)
    cmd = f"cd {shlex.quote(str(dag.parent))} && condor_submit_dag -no_submit -force {shlex.quote(dag.name)}"
    proc = pool.run(["sh", "-c", cmd], user=POOL_USER, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise UserError(
            f"condor_submit_dag -no_submit refused {dag.name}: {(proc.stderr + proc.stdout).strip()[-1000:]}",
            where=dag,
        )
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
    inner = (
        f"cd {shlex.quote(str(dag.parent))} && _CONDOR_DAGMAN_LOG={shlex.quote(out.name)} "
        f"exec condor_dagman -p 0 -f -l . -Dag {shlex.quote(dag.name)} "
        f"-Lockfile {shlex.quote(dag.name)}.parse-check.lock -CsdVersion {shlex.quote(version)} -DryRun"
    )
    proc = command.spawn(
        pool.chroot_argv(["sh", "-c", inner], user=POOL_USER),
        stdout=open(os.devnull, "w"),
        stderr=open(os.devnull, "w"),
    )
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
                raise UserError(
                    "condor_dagman could not parse the DAG: " + ("; ".join(errors[:5]) or text[-800:]),
                    where=dag,
                )
            time.sleep(0.2)
        raise UserError(f"condor_dagman did not finish parsing in {timeout:g} s", where=dag)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
