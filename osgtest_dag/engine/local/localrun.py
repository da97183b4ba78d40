"""`osgtest-dag run RUN_DIR`: a generated run directory, end to end on this machine.

The same workflow.dag that DAGMan runs goes through the local executor: the matrix (disks,
VMs, POST classification, extraction, clean-up, FINAL), then Analyze, Report and Publish.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.analyze.results import run_outcomes
from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.local import executor
from osgtest_dag.engine.local.accel import RunAccel
from osgtest_dag.engine.local.progress import Progress
from osgtest_dag.engine.local.vmjob import DEFAULT_SILENT_LIMIT_S
from osgtest_dag.generate import cellconfig
from osgtest_dag.guest import image, pins
from osgtest_dag.model import runlock
from osgtest_dag.model.manifest import RunManifest
from osgtest_dag.model.outcome import Outcome, RunExit, run_exit
from osgtest_dag.model.rundir import NodeName, RunDir
from osgtest_dag.plan import matrix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalRun:
    ok: bool
    wall_s: float
    report: Path | None
    summary: Path | None
    outcomes: dict[str, Outcome]  # serial -> outcome of each selected cell (analyze.results)

    @property
    def exit_code(self) -> RunExit:
        return run_exit(self.outcomes.values(), workflow_ok=self.ok)


def excluded_nodes(run_dir: Path, only) -> frozenset:
    """The matrix nodes of the cells `--only` leaves out."""
    if not only:
        return frozenset()
    out: set[str] = set()
    selected = 0
    for cfg in cellconfig.iter_cells(run_dir):
        if matrix.matches(cfg.fields(), only):
            selected += 1
        else:
            out.update(n.format() for n in NodeName.of_cell(cfg.serial))
    if not selected:
        raise UserError(
            "--only matched no cell of this run",
            where=run_dir,
            hint="`osgtest-dag plan` with the same --only shows what it selects",
        )
    return frozenset(out)


def selected_serials(run_dir: Path, only) -> list[str]:
    return [
        cfg.serial for cfg in cellconfig.iter_cells(run_dir) if not only or matrix.matches(cfg.fields(), only)
    ]


def run_local(
    run_dir: Path,
    *,
    jobs: int = 0,
    only=(),
    accel: str | None = None,
    progress: bool = True,
    stream=None,
    build_images: bool = False,
    silent_limit_s: float = DEFAULT_SILENT_LIMIT_S,
) -> LocalRun:
    """Run the directory here, holding its lock (model.runlock) for the whole run. Refused
    (UserError) before anything runs when a selected cell's base image is missing, unless
    `build_images`, which builds it first."""
    run_dir = Path(run_dir).resolve()
    manifest = RunManifest.read(run_dir)
    layout = RunDir(run_dir)
    exclude = excluded_nodes(run_dir, only)
    serials = selected_serials(run_dir, only)
    with runlock.locked(layout, "osgtest-dag run"):
        missing = cellconfig.missing_images(run_dir, serials)
        if missing and build_images:
            image.build_missing(missing)
        else:
            image.refuse_missing(
                missing,
                run_dir,
                "run",
                hint="build them with the commands above, or pass --build-images to build them first",
            )
        pins.pin(run_dir, cellconfig.image_platforms(run_dir, serials))
        if accel in (None, "auto"):
            accel = None
        cells = list(cellconfig.iter_cells(run_dir))
        vm_memory = max((c.vm.memory for c in cells), default=2048)
        jobs = jobs or executor.default_jobs(vm_memory)
        out = stream or sys.stderr
        # The accelerator is chosen (the KVM probe run) before anything starts, and said first.
        choice = RunAccel(accel).choice()
        prog = None
        if progress:
            labels = {c.serial: f"{c.platform.id} {c.label}" for c in cells}
            prog = Progress(stream=out, jobs=jobs, labels=labels, header=choice.line())
            prog.start_ticker()
        else:
            out.write(choice.line() + "\n")
        opts = executor.Options(
            jobs=jobs, accel=accel, exclude_nodes=exclude, progress=prog, silent_limit_s=silent_limit_s
        )
        log.info("running %s locally: %d cells, %d VM(s) at once", run_dir, manifest.cells, jobs)
        t0 = time.monotonic()
        try:
            ok = executor.run_dag(layout.outer_dag, opts)
        finally:
            if prog:
                prog.close()
        wall_s = time.monotonic() - t0
    report = layout.report("text")
    summary = layout.matrix_summary
    outcomes = run_outcomes(run_dir)
    return LocalRun(
        ok=ok,
        wall_s=wall_s,
        report=report if report.is_file() else None,
        summary=summary if summary.is_file() else None,
        outcomes={s: outcomes.get(s, Outcome.MISSING) for s in serials},
    )
