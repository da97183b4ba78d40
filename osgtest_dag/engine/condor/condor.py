"""HTCondor operations through the Python bindings (htcondor2, classad2): submit a run's DAG,
and what submitting it leaves in the run directory (status.py reads its progress).

Files a run directory gains once submitted (written by condor_submit_dag / DAGMan):

    workflow.dag.condor.sub     the DAGMan job's submit description (Submit.from_dag)
    workflow.dag.dagman.log     the DAGMan job's own event log
    workflow.dag.dagman.out     DAGMan's debug log
    workflow.dag.nodes.log      the outer DAG's node events (DAGMan's default node log)
    workflow.status             NODE_STATUS_FILE of the outer DAG (ClassAds)
    matrix.dag.*                the same for the matrix sub-DAG (SUBDAG EXTERNAL)
    matrix.status               NODE_STATUS_FILE of the matrix
    logs/jobs.log               every node job's own log (`log =` in the submit files)
    *.metrics                   JSON, written when a DAGMan exits
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import htcondor2

from osgtest_dag.base.errors import UserError
from osgtest_dag.generate.cellconfig import image_platforms, missing_images
from osgtest_dag.guest import pins
from osgtest_dag.guest.image import refuse_missing
from osgtest_dag.model import runlock
from osgtest_dag.model.manifest import RunManifest
from osgtest_dag.model.rundir import (
    OUTER_DAG,
    RunDir,
)

log = logging.getLogger("osgtest_dag.engine.condor.condor")


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# ============================================================================================
# Submission
# ============================================================================================


@dataclass(frozen=True)
class SubmitOptions:
    batch_name: str = ""
    maxjobs: int | None = None
    maxidle: int | None = None
    append: tuple[str, ...] = ()  # submit commands added to the DAGMan job
    schedd: str | None = None  # schedd name (looked up in the pool's collector)
    pool: str | None = None  # collector host[:port]
    dagman: str | None = None  # condor_dagman path on the schedd's host
    allow_version_mismatch: bool = False
    client_config: tuple[tuple[str, str], ...] = ()  # htcondor2.param settings for this client
    getenv_exclude: tuple[str, ...] = ()  # env names not to pass to DAGMan (its host is not ours)


@dataclass(frozen=True)
class SubmitReport:
    run_dir: str
    submit_file: str
    description: str
    cluster: int | None = None
    schedd: str | None = None
    dry_run: bool = False

    def to_json(self) -> dict:
        return self.__dict__.copy()


def dagman_path(explicit: str | None = None) -> str:
    """condor_dagman as the schedd's host sees it: explicit, else on PATH, else the path
    HTCondor's packages install it to."""
    if explicit:
        return explicit
    found = shutil.which("condor_dagman")
    return found or "/usr/bin/condor_dagman"


def _apply_client_config(settings: Sequence[tuple[str, str]]) -> None:
    if not settings:
        return
    for k, v in settings:
        htcondor2.param[k] = v


def dag_submit_description(run_dir: Path, opts: SubmitOptions = SubmitOptions()):
    """Write RUN_DIR/workflow.dag.condor.sub with htcondor2.Submit.from_dag (what
    condor_submit_dag would write) and return (Submit, path)."""
    run_dir = Path(run_dir).resolve()
    manifest = RunManifest.read(run_dir)
    if not RunDir(run_dir).outer_dag.is_file():
        raise UserError(
            f"no {OUTER_DAG} in the run directory",
            where=run_dir,
            hint="regenerate it with `osgtest-dag generate`",
        )
    _apply_client_config(opts.client_config)
    options: dict = {
        "batch-name": opts.batch_name or manifest.options.batch_name or manifest.run_name or run_dir.name,
        "dagman": dagman_path(opts.dagman),
    }
    if opts.maxjobs is not None:
        options["maxjobs"] = int(opts.maxjobs)
    if opts.maxidle is not None:
        options["maxidle"] = int(opts.maxidle)
    if opts.append:
        options["AppendLines"] = "\n".join(opts.append)
    if opts.allow_version_mismatch:
        options["AllowVersionMismatch"] = True
    layout = RunDir(run_dir)
    sub_file = layout.dag_file(OUTER_DAG, ".condor.sub")
    if sub_file.exists():
        if layout.dag_file(OUTER_DAG, ".dagman.out").exists() or layout.dag_file(OUTER_DAG, ".lock").exists():
            raise UserError(
                "this run was already submitted",
                where=run_dir,
                hint="follow it with `osgtest-dag watch`, or make a new run with `osgtest-dag rerun`",
            )
        options["UpdateSubmit"] = True  # a previous --dry-run's file: rewrite it
    with _cwd(run_dir):
        try:
            sub = htcondor2.Submit.from_dag(OUTER_DAG, options)
        except Exception as e:  # HTCondorException and friends carry HTCondor's message
            raise UserError(
                f"cannot make the DAGMan submit description: {e}",
                where=run_dir / OUTER_DAG,
                hint="`osgtest-dag check` validates the run directory",
            ) from None
    sub["initialdir"] = str(run_dir)
    exclude = set(opts.getenv_exclude)
    if os.environ.get("CONDOR_CONFIG") == "/dev/null":
        # set in-process by the bindings when this host has no HTCondor configuration:
        # DAGMan, on the schedd's host, must not inherit it
        exclude.add("CONDOR_CONFIG")
    if exclude and sub.get("getenv"):
        names = [n.strip() for n in sub["getenv"].split(",")]
        sub["getenv"] = ",".join(n for n in names if n and n not in exclude)
    return sub, sub_file


def locate_schedd(schedd: str | None = None, pool: str | None = None):
    """The Schedd to submit to: a named one and/or one in another pool via its collector,
    else the local one. A missing or unreachable schedd is a UserError."""
    where = f"schedd {schedd!r}" if schedd else ("a schedd" if pool else "the local schedd")
    if pool:
        where += f" in the pool at {pool}"
    hint = (
        "is HTCondor running here? (`condor_status -schedd`); name another with --schedd/--pool, "
        "or use `osgtest-dag pool up` for a test pool on this machine"
    )
    try:
        if schedd or pool:
            coll = htcondor2.Collector(pool) if pool else htcondor2.Collector()
            if schedd:
                ad = coll.locate(htcondor2.DaemonType.Schedd, schedd)
            else:
                ads = coll.locateAll(htcondor2.DaemonType.Schedd)
                if not ads:
                    raise UserError(f"no schedd in the pool at {pool}", hint=hint)
                if len(ads) > 1:
                    names = ", ".join(str(a.get("Name")) for a in ads)
                    raise UserError(
                        f"the pool at {pool} has {len(ads)} schedds ({names})",
                        hint="choose one with --schedd NAME",
                    )
                ad = ads[0]
            return htcondor2.Schedd(ad)
        return htcondor2.Schedd()
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot find {where}: {e}", hint=hint) from None


def submit_run(
    run_dir: Path, opts: SubmitOptions = SubmitOptions(), *, dry_run: bool = False
) -> SubmitReport:
    """Submit the run's outer DAG (htcondor2.Submit.from_dag + Schedd.submit). With
    `dry_run`, only write the DAGMan submit file and return what would be submitted."""
    run_dir = Path(run_dir).resolve()
    sub, sub_file = dag_submit_description(run_dir, opts)
    text = str(sub)
    if dry_run:
        return SubmitReport(run_dir=str(run_dir), submit_file=str(sub_file), description=text, dry_run=True)
    # The VM jobs transfer their base image from here: a missing one is refused now, not
    # found by every cell's job three times over. Held while submitting; from then on the
    # DAGMan job has the directory (submission.json + its event log, model.runlock).
    with runlock.locked(RunDir(run_dir), "osgtest-dag submit"):
        refuse_missing(missing_images(run_dir), run_dir, "submit")
        pins.pin(run_dir, image_platforms(run_dir))
        return _submit(run_dir, opts, sub, sub_file, text)


def _submit(run_dir: Path, opts: SubmitOptions, sub, sub_file: Path, text: str) -> SubmitReport:
    schedd = locate_schedd(opts.schedd, opts.pool)
    try:
        with _cwd(run_dir):
            result = schedd.submit(sub, count=1)
    except Exception as e:
        msg = str(e)
        hint = "check that the schedd is reachable and lets you submit (`condor_q` from this host)"
        if "allocate" in msg.lower() and os.geteuid() == 0:
            hint = "root cannot submit jobs: submit as an ordinary user (or via the test pool's user)"
        raise UserError(f"the schedd refused the DAG: {msg}", where=run_dir / OUTER_DAG, hint=hint) from None
    cluster = result.cluster()
    record = {
        "cluster": cluster,
        "submitted": _utcnow(),
        "schedd": opts.schedd,
        "pool": opts.pool,
        "batch_name": sub.get("My.JobBatchName") or opts.batch_name,
    }
    RunDir(run_dir).submission.write_text(json.dumps(record, indent=1) + "\n")
    return SubmitReport(
        run_dir=str(run_dir),
        submit_file=str(sub_file),
        description=text,
        cluster=cluster,
        schedd=opts.schedd or opts.pool or "local",
    )


def _utcnow() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ============================================================================================
# Node status files (ClassAds)
# ============================================================================================
