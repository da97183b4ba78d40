"""A vanilla job with HTCondor's file transfer, run locally (a cluster cell's TestRun job).

As on an execute point, the job runs in a scratch directory of its own that holds its
`transfer_input_files`, and its `transfer_output_files` come back to `initialdir`, renamed by
`transfer_output_remaps`. An input the job also sends back (an IO disk it writes) is a copy,
so the original stays as it was for a retry; the others (the base image, read through an
overlay) are symbolic links, not gigabyte copies. What the job left is returned also when it
failed or was killed, as HTCondor returns output on exit; a job that never started returns nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from osgtest_dag.engine.local.jobs import RETURN_SUBMIT_FAILED, Output, ProcessJob
from osgtest_dag.engine.local.reaper import ChildRecord
from osgtest_dag.engine.local.submit import JobSpec

log = logging.getLogger(__name__)


def transfers_files(spec: JobSpec) -> bool:
    return bool(spec.transfer_input_files or spec.transfer_output_files)


class TransferJob:
    """`argv` in a scratch directory under `spec.initialdir`, with the spec's file transfer."""

    def __init__(
        self,
        spec: JobSpec,
        node_name: str,
        argv: list[str],
        *,
        stdout: Output,
        stderr: Output,
        env: Mapping[str, str],
        children: ChildRecord,
    ):
        self.spec, self.node_name = spec, node_name
        self.scratch = spec.initialdir / f".scratch-{node_name}"
        # it runs VMs: it dies with the executor (kill -9 included) rather than run on unseen
        self.process = ProcessJob(
            argv,
            cwd=self.scratch,
            stdout=stdout,
            stderr=stderr,
            env=env,
            children=children,
            die_with_parent=True,
        )

    def _source(self, name: str) -> Path:
        src = name[len("file://") :] if name.startswith("file://") else name
        p = Path(src)
        return p if p.is_absolute() else self.spec.initialdir / p

    def _stage_inputs(self) -> str | None:
        """Fill the scratch directory; what is missing, if anything."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        returned = set(self.spec.transfer_output_files)
        for name in self.spec.transfer_input_files:
            src = self._source(name)
            if not src.is_file():
                return f"input {src} missing"
            dst = self.scratch / src.name
            if src.name in returned:
                shutil.copy2(src, dst)
            else:
                os.symlink(src.resolve(), dst)
        return None

    def _return_outputs(self) -> None:
        for name in self.spec.transfer_output_files:
            src = self.scratch / name
            if not src.is_file() or src.is_symlink():
                log.warning("node %s: output %s was not written", self.node_name, name)
                continue
            dst = self.spec.initialdir / self.spec.transfer_output_remaps.get(name, name)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)

    def run(self) -> int:
        missing = self._stage_inputs()
        if missing:
            log.error("node %s: %s", self.node_name, missing)
            shutil.rmtree(self.scratch, ignore_errors=True)
            return RETURN_SUBMIT_FAILED
        returncode: int | None = None
        try:
            returncode = self.process.run()
            return returncode
        finally:
            # a job that never started (killed first, no program) left nothing: returning the
            # copies of its inputs would replace an earlier attempt's results
            if returncode != RETURN_SUBMIT_FAILED:
                self._return_outputs()
            shutil.rmtree(self.scratch, ignore_errors=True)

    def kill(self) -> None:
        self.process.kill()
