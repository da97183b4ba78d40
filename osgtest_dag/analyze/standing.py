"""One libguestfs appliance that reads every result disk of a local run, launched ahead.

Under TCG an appliance takes 8-17 s to start, longer than everything else a lone cell's POST
script does. libguestfs' direct backend cannot add a drive to a running appliance, so this one
starts, while the run's first VMs boot, with `slots` empty sparse raw files of our own as its
drives. To read a result disk:

- it is checked exactly as every disk is (`extract.inspect_disk`: a qcow2 with no backing file
  and no external data file; anything else is refused before any tool opens it);
- qemu-img converts it to a raw file beside the slots, whose data extents are copied into a
  free slot emptied first; the guest's qcow2 never reaches the appliance, only its bytes;
- inside the appliance the slot's block device drops its buffers (BLKFLSBUF), so nothing of the
  disk read before is seen, and the same hardened `extract.extract_one` reads it (mounted
  `ro,nosuid,nodev,noexec`, listed without following links, streamed as tar and checked on the
  host by untar.py), then it is unmounted and its buffers dropped again.

The slots are writable (a read-only mount still replays a dirty ext4 journal): writes land in
our copy, flushed before the slot is refilled. As in a batch, one appliance sees several
guests' disks; whatever it hands back is still checked on the host.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from osgtest_dag.analyze.extract import (
    ExtractJob,
    ExtractLimits,
    appliance_alive,
    device_name,
    extract_disks,
    extract_one,
    inspect_disk,
)
from osgtest_dag.analyze.untar import ExtractionReport
from osgtest_dag.base import command
from osgtest_dag.base.errors import CommandError
from osgtest_dag.guest import gfs

log = logging.getLogger(__name__)

SLOT_BYTES = 1 << 30  # larger than any IO disk the tool makes (64 MiB by default)
MAX_SLOTS = 8


class StandingAppliance:
    """`launch` (blocking: call it from a worker thread), then `extract` any number of times
    from that same thread, then `close`."""

    def __init__(self, slots: int, *, slot_bytes: int = SLOT_BYTES, workdir: Path | None = None):
        self.slot_bytes = slot_bytes
        self._dir = Path(tempfile.mkdtemp(prefix="osgtest-slots-", dir=workdir))
        self._slots = [self._dir / f"slot{i}.raw" for i in range(max(1, min(slots, MAX_SLOTS)))]
        self._ctx: Any = None
        self._g: Any = None

    @property
    def slots(self) -> int:
        return len(self._slots)

    def launch(self) -> None:
        """Start the appliance with the empty slots (raises as gfs.open_disks does)."""
        for slot in self._slots:
            with open(slot, "wb") as f:
                f.truncate(self.slot_bytes)
        t0 = time.monotonic()
        # One vCPU: it starts while a VM boots, which should keep the other core.
        self._ctx = gfs.open_disks([(slot, "raw") for slot in self._slots], readonly=False, smp=1)
        try:
            self._g = self._ctx.__enter__()
            self._g.set_autosync(False)
            for i in range(self.slots):
                if self._g.blockdev_getsize64(device_name(i)) != self.slot_bytes:
                    raise RuntimeError(f"the appliance's {device_name(i)} is not slot {i}")
                self._g.mkmountpoint(f"/s{i}")
        except BaseException:
            self.close()
            raise
        log.info("standing appliance up with %d slot(s) in %.1f s", self.slots, time.monotonic() - t0)

    def alive(self) -> bool:
        return self._g is not None and appliance_alive(self._g)

    def extract(self, jobs: Sequence[ExtractJob], limits: ExtractLimits | None = None) -> list[dict]:
        """One extraction report per job, in order, as `extract.extract_disks` gives them.

        Disks too large for a slot, and those left when the appliance dies, are read by
        `extract_disks` in an appliance of their own."""
        limits = limits or ExtractLimits()
        reports = [ExtractionReport(disk=str(j.disk), dest=str(j.dest)) for j in jobs]
        elsewhere: list[int] = []
        fits: list[int] = []
        for i, job in enumerate(jobs):
            t0 = time.monotonic()
            why, size = inspect_disk(Path(job.disk))
            reports[i].seconds += time.monotonic() - t0
            if why:
                reports[i].fail(why)
                log.warning("%s: %s", job.disk, why)
            elif size is None or size > self.slot_bytes:
                elsewhere.append(i)
            else:
                fits.append(i)
        for start in range(0, len(fits), self.slots):
            chunk = fits[start : start + self.slots]
            if not self.alive():
                elsewhere.extend(chunk)
                continue
            elsewhere.extend(self._read_chunk(jobs, reports, chunk, limits))
        out = [r.to_json() for r in reports]
        if elsewhere:
            for i, rep in zip(elsewhere, extract_disks([jobs[i] for i in elsewhere], limits), strict=True):
                out[i] = rep
        return out

    def _read_chunk(
        self,
        jobs: Sequence[ExtractJob],
        reports: list[ExtractionReport],
        chunk: list[int],
        limits: ExtractLimits,
    ) -> list[int]:
        """Read `chunk` (at most one disk a slot); the indexes still to read elsewhere."""
        g = self._g
        filled: list[tuple[int, int]] = []  # (job index, slot)
        for i in chunk:
            slot = len(filled)
            t0 = time.monotonic()
            try:
                self._fill(slot, Path(jobs[i].disk))
            except (CommandError, OSError) as e:
                reports[i].fail(f"copying the disk for reading failed: {str(e)[:300]}")
            else:
                filled.append((i, slot))
            finally:
                reports[i].seconds += time.monotonic() - t0
        for pos, (i, slot) in enumerate(filled):
            dev, mp, rep = device_name(slot), f"/s{slot}", reports[i]
            t1 = time.monotonic()
            try:
                g.blockdev_flushbufs(dev)
                extract_one(g, dev, mp, jobs[i], limits, rep)
                g.umount(mp, force=True)
                g.blockdev_flushbufs(dev)
            except RuntimeError as e:
                if not appliance_alive(g):
                    rep.fail(f"the appliance died while reading this disk: {str(e)[:200]}")
                    self.close()
                    return [j for j, _ in filled[pos + 1 :]]
                if rep.ok:
                    rep.fail(f"reading the disk failed: {str(e)[:300]}")
                try:  # a disk left mounted would be read as the next one's
                    g.umount(mp, force=True)
                except RuntimeError:
                    pass
            finally:
                rep.seconds += time.monotonic() - t1
        return []

    def _fill(self, slot: int, disk: Path) -> None:
        """Slot `slot` holds `disk`'s bytes and zeros after them, nothing of the disk before."""
        raw = self._dir / f"slot{slot}.in"
        try:
            command.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, raw], timeout=300)
            _copy_extents(raw, self._slots[slot], self.slot_bytes)
        finally:
            raw.unlink(missing_ok=True)

    def close(self) -> None:
        ctx, self._ctx, self._g = self._ctx, None, None
        if ctx is not None:
            try:
                ctx.__exit__(None, None, None)
            except RuntimeError:
                pass
        shutil.rmtree(self._dir, ignore_errors=True)


def _copy_extents(src: Path, dst: Path, size: int) -> None:
    """`dst` (kept open by the appliance: the same inode) emptied to `size` zeros, then
    `src`'s data extents copied in at their offsets."""
    with open(src, "rb") as s, open(dst, "r+b") as d:
        sfd, dfd = s.fileno(), d.fileno()
        os.ftruncate(dfd, 0)
        os.ftruncate(dfd, size)
        end = os.fstat(sfd).st_size
        off = 0
        while off < end:
            try:
                data = os.lseek(sfd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            hole = os.lseek(sfd, data, os.SEEK_HOLE)
            pos = data
            while pos < hole:
                n = os.copy_file_range(sfd, dfd, hole - pos, pos, pos)
                if n <= 0:
                    raise OSError(errno.EIO, f"copying {src} stopped at byte {pos}")
                pos += n
            off = hole
