"""Result disks of VMs that end close together, read in one libguestfs appliance.

Under TCG an appliance costs 8-15 s to launch, and reading a disk in it well under a second, so
one appliance per cell is most of a cell's extraction time. When a matrix cell's VM job ends,
its node's thread hands the result disk to the run's BatchExtractor and waits; the extractor
reads every disk handed to it, while it waits a short gather window or while its previous batch
ran, with one `analyze.extract.extract_disks` call (the same hardened reader and limits as the
POST script's), each into the cell's staging directory with a model.prefetch.PrefetchRecord
written last. The POST script then uses that read instead of launching its own appliance, and
falls back to its own read when the record is missing or does not match the disk: nothing here
decides an outcome, and a failed read only costs the POST script its own.

`warm_up`, called when the run's first matrix VM starts, launches an appliance that then serves
the whole run (analyze/standing.py) while that VM boots: a lone cell's disk is then read in a
second or two instead of waiting for an appliance to start. Should it fail to start or die,
batches get an appliance of their own again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from osgtest_dag.analyze.extract import ExtractJob, extract_disks
from osgtest_dag.analyze.standing import StandingAppliance
from osgtest_dag.model import prefetch
from osgtest_dag.model.prefetch import DiskIdentity, PrefetchRecord
from osgtest_dag.model.rundir import CellDir

log = logging.getLogger(__name__)

GATHER_S = 1.5  # how long a disk waits for others while other VMs run


@dataclass
class _Request:
    cell: CellDir
    queued: float
    done: threading.Event = field(default_factory=threading.Event)


class BatchExtractor:
    """One worker thread, started on the first disk handed over; `close` ends it."""

    def __init__(
        self,
        *,
        others_running: Callable[[], bool] = lambda: False,
        gather_s: float = GATHER_S,
        standing_slots: int = 0,
    ):
        # others_running: whether another VM may end soon (worth the gather window); a lone VM's
        # disk is read at once. standing_slots: disks the run's standing appliance reads at
        # once (about the VMs that run at once); 0: an appliance per batch.
        self._others_running, self._gather_s = others_running, gather_s
        self._standing_slots = standing_slots
        self._standing: StandingAppliance | None = None
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._closing = False
        self._worker: threading.Thread | None = None

    def warm_up(self) -> None:
        """Start the standing appliance now (once), so that it is up when the first disk comes."""
        if self._standing_slots > 0:
            with self._cond:
                self._start_worker()

    def _start_worker(self) -> None:
        if self._worker is None and not self._closing:
            self._worker = threading.Thread(target=self._work, name="batch-extractor", daemon=True)
            self._worker.start()

    def read_ahead(self, cell: CellDir, stop: threading.Event) -> bool:
        """Read the cell's result disk in the next batch and wait for that batch; False when
        the run stopped (or the extractor closed) first."""
        return self.read_ahead_all([cell], stop)

    def read_ahead_all(self, cells: list[CellDir], stop: threading.Event) -> bool:
        """As read_ahead, for several disks at once (a cluster cell's VMs): one batch."""
        reqs = [_Request(cell, time.monotonic()) for cell in cells]
        with self._cond:
            if self._closing:
                return False
            self._queue.extend(reqs)
            self._start_worker()
            self._cond.notify_all()
        for req in reqs:
            while not req.done.wait(timeout=0.5):
                if stop.is_set():
                    return False
        return True

    def close(self) -> None:
        """Read nothing more (waiting disks are dropped: their POST scripts read them) and wait
        for a batch being read."""
        with self._cond:
            self._closing = True
            dropped, self._queue = self._queue, []
            self._cond.notify_all()
            worker = self._worker
        for req in dropped:
            req.done.set()
        if worker is not None:
            worker.join()

    def _work(self) -> None:
        if self._standing_slots > 0:
            standing = StandingAppliance(self._standing_slots)
            try:
                standing.launch()
            except Exception:  # noqa: BLE001 - batches then launch their own appliances
                log.exception("the run's standing appliance did not start; reading each batch in its own")
            else:
                self._standing = standing
        try:
            self._serve()
        finally:
            if self._standing is not None:
                self._standing.close()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                if self._gather_s > 0 and self._others_running():
                    # Disks that waited through the previous batch are past the window already.
                    deadline = self._queue[0].queued + self._gather_s
                    while not self._closing and (left := deadline - time.monotonic()) > 0:
                        self._cond.wait(timeout=left)
                batch, self._queue = self._queue, []
            try:
                self._read(batch)
            except Exception:  # noqa: BLE001 - a failed read-ahead only costs the POST its own read
                log.exception("reading result disks ahead failed; their POST scripts read them")
            finally:
                for req in batch:
                    req.done.set()

    def _read(self, batch: list[_Request]) -> None:
        jobs: list[ExtractJob] = []
        read: list[tuple[CellDir, DiskIdentity]] = []
        for req in batch:
            cell = req.cell
            prefetch.discard(cell)  # an earlier attempt's, or one cut short
            try:
                before = DiskIdentity.of(cell.result_disk)
            except OSError:
                continue
            jobs.append(ExtractJob(cell.result_disk, cell.prefetched_output))
            read.append((cell, before))
        if not jobs:
            return
        t0 = time.monotonic()
        standing = self._standing  # either way, the POST script's own limits
        reports = standing.extract(jobs) if standing is not None and standing.alive() else extract_disks(jobs)
        for (cell, before), report in zip(read, reports, strict=True):
            try:
                same = DiskIdentity.of(cell.result_disk) == before
            except OSError:
                same = False
            if report["ok"] and same:
                PrefetchRecord(before, report).write(cell)
            else:
                prefetch.discard(cell)
        log.info("read %d result disk(s) ahead in one batch in %.1f s", len(jobs), time.monotonic() - t0)
