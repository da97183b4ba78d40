"""Extract `output/` from returned result disks, treating every disk as hostile.

A result disk was written by a guest we do not trust. So:

- Before libguestfs sees a disk, `qemu-img info -f qcow2 --output=json` must say it is a qcow2
  with no backing file and no external data file (either would make qemu open a host file of
  the disk's choosing). Anything else is refused: an `infra` outcome with the reason.
- Disks are added read-only with the format given explicitly (never probed), many to one
  appliance, and mounted one at a time `ro,nosuid,nodev,noexec`.
- The tree is listed with find0 and lstatnslist (no API that follows links) to plan: files over
  the per-file cap, and the largest files past the per-disk byte cap, are left out of the tar.
- The tree comes out as one tar stream through a pipe (tar does not follow links). Each member is
  validated on the host (untar.py): only directories and regular files are written, with O_NOFOLLOW |
  O_EXCL, under a fresh directory of ours; names are checked component by component (no `..`,
  no absolute paths); symlinks are recorded, never created; device nodes, fifos and sockets are
  recorded and skipped; hard links become copies of files already extracted; names that are not
  valid UTF-8 (or hold control characters) are escaped as %XX. Caps on bytes and files per disk
  hold on the host too, and a stream that grows past its budget is cancelled.
- Everything skipped or renamed goes into the disk's extraction report, and a disk that fails
  never stops the others (a crashed appliance is relaunched for the disks after it).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.analyze.untar import ExtractionReport, Unpacker
from osgtest_dag.base import command
from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import CommandError, UserError
from osgtest_dag.guest import gfs
from osgtest_dag.guest.iodisk import IO_LABEL
from osgtest_dag.model.documents import parse_json
from osgtest_dag.model.rundir import RunDir

log = logging.getLogger(__name__)

MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"
LSTAT_CHUNK = 500
FIRST = ("result.json", "exit-status")  # kept before anything else when the caps bite
_STATE_READY = 2


@dataclass(frozen=True)
class ExtractLimits:
    """Per-disk caps. Defaults fit the payload's output (a few MiB of logs and lists)."""

    max_bytes: int = 512 << 20  # bytes of regular files written per disk
    max_files: int = 5000  # regular files written per disk
    max_file_bytes: int = 256 << 20  # one file
    max_entries: int = 200_000  # inodes in use on the disk's filesystem; more: refused
    subdir: str = "output"  # the tree to extract
    label: str = IO_LABEL  # the filesystem label to look for


@dataclass(frozen=True)
class ExtractJob:
    """Extract `disk`'s output/ into `dest` (created; it must not exist yet, or is replaced)."""

    disk: Path
    dest: Path


# ------------------------------------------------------------------------------ tar excludes
def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[\\])", r"\\\1", name)


# ------------------------------------------------------------------------------ pre-check
def inspect_disk(disk: Path) -> tuple[str | None, int | None]:
    """(why it is refused or None, its virtual size)."""
    try:
        st = os.lstat(disk)
    except OSError as e:
        return f"cannot stat the disk: {e.strerror}", None
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file", None
    try:
        proc = command.run(["qemu-img", "info", "-f", "qcow2", "--output=json", disk], timeout=60)
    except CommandError as e:
        tail = (e.output or "").strip().splitlines()
        return "not a readable qcow2 image" + (f": {tail[-1][:200]}" if tail else ""), None
    try:
        info = parse_json(proc.stdout, disk)
    except UserError:
        return "qemu-img info gave no JSON", None
    if info.get("format") != "qcow2":
        return f"format is {info.get('format')!r}, not qcow2", None
    for key in ("backing-filename", "full-backing-filename", "backing-filename-format"):
        if info.get(key):
            return (
                f"the qcow2 has a backing file ({str(info.get('backing-filename') or info[key])[:200]}): refused",
                None,
            )
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        return f"the qcow2 has an external data file ({str(data['data-file'])[:200]}): refused", None
    if data.get("corrupt"):
        return "the qcow2 is marked corrupt", None
    size = info.get("virtual-size")
    return None, int(size) if isinstance(size, int) else None


# ------------------------------------------------------------------------------ one disk
def _find_fs(g, dev: str, label: str) -> str | None:
    """The filesystem labelled `label` on one of `dev`'s partitions (a disk whose whole
    device did not mount as a filesystem with output/: the IO disk has no partitions, so
    this slow probe, blkid per device under TCG, runs only for odd disks)."""
    candidates = [dev] + [p for p in g.list_partitions() if p.startswith(dev)]
    for c in candidates:
        try:
            if g.vfs_label(c) == label:
                return c
        except RuntimeError:
            continue
    return None


def _walk_readdir(g, top: str, max_entries: int) -> list[bytes] | None:
    """Every path under `top` (relative, as bytes) from readdir, which runs inside the
    appliance's daemon (find0 starts a process: ~0.2 s a disk under TCG). None when a name
    is not UTF-8 (the Python binding cannot return it): then find0 lists the tree."""
    out: list[bytes] = []
    todo = [""]
    while todo:
        d = todo.pop()
        try:
            ents = g.readdir(f"{top}/{d}" if d else top)
        except UnicodeDecodeError:
            return None
        for e in ents:
            name = e["name"]
            if name in (".", ".."):
                continue
            rel = f"{d}/{name}" if d else name
            out.append(rel.encode("utf-8"))
            if e["ftyp"] == "d":
                todo.append(rel)
            if len(out) > max_entries:
                return out
    return out


def _plan(
    g, top: str, rep: ExtractionReport, limits: ExtractLimits, tmpdir: str
) -> tuple[list[str], int, dict[str, int]]:
    """List the tree without following links; return (tar excludes, stream budget, the files
    planned to come out: relative path -> size)."""
    names = _walk_readdir(g, top, limits.max_entries)
    if names is None:
        listing = os.path.join(tmpdir, "find0")
        g.find0(top, listing)
        with open(listing, "rb") as f:
            raw = f.read()
        os.unlink(listing)
        names = [n[1:] if n.startswith(b"/") else n for n in raw.split(b"\0") if n]
    by_dir: dict[str, list[str]] = {}
    unlisted = 0
    for n in names:
        try:
            text = n.decode("utf-8")
        except UnicodeDecodeError:
            unlisted += 1  # not passable to the API; the tar stream still carries it
            continue
        if any(ord(ch) < 32 for ch in text):
            unlisted += 1
            continue
        d, _, base = text.rpartition("/")
        by_dir.setdefault(d, []).append(base)
    files: list[tuple[int, str]] = []
    for d, bases in by_dir.items():
        path = f"{top}/{d}" if d else top
        for i in range(0, len(bases), LSTAT_CHUNK):
            chunk = bases[i : i + LSTAT_CHUNK]
            for base, st in zip(chunk, g.lstatnslist(path, chunk), strict=True):
                rel = f"{d}/{base}" if d else base
                mode = st["st_mode"]
                if stat.S_ISSOCK(mode):
                    rep.skip(rel, "socket")  # tar leaves sockets out; say so here
                elif stat.S_ISREG(mode):
                    files.append((st["st_size"], rel))
    # Keep what matters most when the caps bite: the guest's result, then shallow files (the
    # phase logs), then small ones. GNU tar keeps patterns without wildcards in a hash table, so
    # even thousands of excludes cost little.
    excludes = []
    planned: dict[str, int] = {}
    kept_bytes = kept = 0
    for size, rel in sorted(files, key=lambda f: (f[1] not in FIRST, f[1].count("/"), f[0], f[1])):
        if size > limits.max_file_bytes:
            kind = "too-large"
        elif kept >= limits.max_files:
            kind = "file-cap"
        elif kept_bytes + size > limits.max_bytes:
            kind = "byte-cap"
        else:
            kept_bytes += size
            kept += 1
            planned[rel] = size
            continue
        excludes.append(rel)
        rep.skip(rel, kind, size=size)
    # The stream carries the kept files, their headers (and pax headers), and whatever the
    # listing could not see; anything past this is cut short.
    budget = kept_bytes + 2048 * (len(names) + 16) + (16 << 20)
    return [f"./{_glob_escape(rel)}" for rel in excludes], budget, planned


def extract_one(g, dev: str, mp: str, job: ExtractJob, limits: ExtractLimits, rep: ExtractionReport) -> None:
    """One disk, mounted at its own mount point `mp` (left mounted: unmounting costs ~0.2 s a
    disk, and the appliance goes away after the batch anyway)."""
    top = f"{mp}/{limits.subdir}"
    # The IO disk is a filesystem on the whole device: mount it straight away (probing labels
    # first costs ~0.9 s a disk under TCG); look for a labelled partition only if that fails.
    mounted = False
    try:
        g.mount_options(MOUNT_OPTIONS, dev, mp)
        mounted = g.is_dir(top, followsymlinks=False)
        if not mounted:
            g.umount(mp)
    except RuntimeError:
        pass
    if not mounted:
        fs = _find_fs(g, dev, limits.label)
        if fs is None:
            rep.fail(f"no filesystem with {limits.subdir}/ (nor one labelled {limits.label}) on the disk")
            return
        try:
            g.mount_options(MOUNT_OPTIONS, fs, mp)
        except RuntimeError as e:
            rep.fail(f"cannot mount the filesystem: {str(e)[:200]}")
            return
    if not g.is_dir(top, followsymlinks=False):
        rep.fail(f"the disk has no {limits.subdir}/ directory")
        return
    sv = g.statvfs(mp)
    used = int(sv["files"]) - int(sv["ffree"])
    if used > limits.max_entries:
        rep.fail(f"the filesystem holds {used} entries, more than the {limits.max_entries} allowed")
        return
    parent = job.dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{job.dest.name}.extract-", dir=parent))
    try:
        excludes, budget, planned = _plan(g, top, rep, limits, str(tmp))
        unpack = Unpacker(
            tmp,
            rep,
            budget,
            planned,
            max_files=limits.max_files,
            max_bytes=limits.max_bytes,
            max_file_bytes=limits.max_file_bytes,
        )
        r, w = os.pipe()
        failure: list[str] = []

        def reader():
            with os.fdopen(r, "rb") as f:
                try:
                    unpack.run(f)
                except Exception as e:  # noqa: BLE001 - whatever breaks, the writer must not block
                    failure.append(str(e)[:300])
                    try:
                        g.user_cancel()
                    except RuntimeError:
                        pass
                while f.read(1 << 20):  # drain, so the writer never blocks
                    pass

        th = threading.Thread(target=reader, name=f"untar-{job.disk.name}", daemon=True)
        th.start()
        try:
            g.tar_out(top, f"/dev/fd/{w}", excludes=excludes)
        except RuntimeError as e:
            if not failure:
                failure.append(f"tar_out: {str(e)[:300]}")
        finally:
            os.close(w)
            th.join()
        if failure:
            rep.skip("(stream)", "cut-short", detail=failure[0])
        # Replace what a previous attempt left, then move the new tree in place.
        if job.dest.exists() or job.dest.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{job.dest.name}.old-", dir=parent))
            os.rename(job.dest, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        os.chmod(tmp, 0o755)
        os.rename(tmp, job.dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def appliance_alive(g) -> bool:
    try:
        return g.get_state() == _STATE_READY
    except RuntimeError:
        return False


def device_name(index: int) -> str:
    """The appliance's name of the index-th drive added: sda .. sdz, sdaa .. (Linux sd order)."""
    letters = ""
    n = index + 1
    while n:
        n, r = divmod(n - 1, 26)
        letters = chr(ord("a") + r) + letters
    return f"/dev/sd{letters}"


def _devices(g, sizes: list[int | None]) -> list[str]:
    """Device names in the order the drives were added. list_devices costs ~0.2 s a drive
    under TCG (it waits for udev), so compute the names and check each one's size instead."""
    names = [device_name(i) for i in range(len(sizes))]
    try:
        if all(sz is None or g.blockdev_getsize64(n) == sz for n, sz in zip(names, sizes, strict=True)):
            return names
    except RuntimeError:
        pass
    log.warning("drive names are not the expected ones; asking libguestfs for them")
    return g.list_devices()


def _run_batch(
    jobs: list[ExtractJob],
    reports: dict[int, ExtractionReport],
    order: list[int],
    limits: ExtractLimits,
    sizes: dict[int, int | None],
) -> None:
    """Extract `order` (indexes into jobs) with one appliance; relaunch after a crash."""
    remaining = list(order)
    while remaining:
        batch = remaining
        t0 = time.monotonic()
        try:
            ctx = gfs.open_disks([(jobs[i].disk, "qcow2") for i in batch], readonly=True)
            g = ctx.__enter__()
        except gfs.LaunchTimedOut as e:
            # No disk's fault, and another launch would hang as long: every disk fails now.
            for i in batch:
                reports[i].fail(f"libguestfs could not open the disk: {str(e)[:300]}")
                reports[i].seconds = time.monotonic() - t0
            return
        except RuntimeError as e:
            if len(batch) == 1:
                rep = reports[batch[0]]
                rep.fail(f"libguestfs could not open the disk: {str(e)[:300]}")
                rep.seconds = time.monotonic() - t0
                return
            # One of them stops the launch: split, so the good ones still come out.
            half = len(batch) // 2
            _run_batch(jobs, reports, batch[:half], limits, sizes)
            _run_batch(jobs, reports, batch[half:], limits, sizes)
            return
        log.info("appliance up with %d disk(s) in %.1f s", len(batch), time.monotonic() - t0)
        remaining = []
        try:
            g.set_autosync(False)  # read-only: nothing to sync; saves ~10 s at close
            devices = _devices(g, [sizes.get(i) for i in batch])
            for pos in range(len(batch)):
                g.mkmountpoint(f"/d{pos}")
            for pos, i in enumerate(batch):
                rep = reports[i]
                t1 = time.monotonic()
                try:
                    extract_one(g, devices[pos], f"/d{pos}", jobs[i], limits, rep)
                except RuntimeError as e:
                    rep.fail(f"reading the disk failed: {str(e)[:300]}")
                    if not appliance_alive(g):
                        rep.error = f"the appliance died while reading this disk: {str(e)[:200]}"
                        remaining = batch[pos + 1 :]
                        break
                finally:
                    rep.seconds += time.monotonic() - t1
        finally:
            try:
                ctx.__exit__(None, None, None)
            except RuntimeError:
                pass


def extract_disks(jobs: Sequence[ExtractJob], limits: ExtractLimits = ExtractLimits()) -> list[dict]:
    """Extract many disks with as few appliance launches as possible (normally one).

    Returns one extraction report (JSON-ready dict) per job, in order; `ok` false with an
    `error` for a disk that was refused or unreadable. Never raises for one bad disk.
    """
    jobs = list(jobs)
    reports = {i: ExtractionReport(disk=str(j.disk), dest=str(j.dest)) for i, j in enumerate(jobs)}
    good, sizes = [], {}
    for i, j in enumerate(jobs):
        t0 = time.monotonic()
        why, sizes[i] = inspect_disk(Path(j.disk))
        reports[i].seconds += time.monotonic() - t0
        if why:
            reports[i].fail(why)
            log.warning("%s: %s", j.disk, why)
        else:
            good.append(i)
    if good:
        _run_batch(jobs, reports, good, limits, sizes)
    return [reports[i].to_json() for i in range(len(jobs))]


def write_report(path: Path, report: dict) -> None:
    write_json_atomic(path, report)


# ------------------------------------------------------------------------------ runs
def result_disk(run_dir: Path, serial: str) -> Path:
    return RunDir(run_dir).cell(serial).result_disk


def extract_cells(
    run_dir: Path | str, serials: Sequence[str], limits: ExtractLimits = ExtractLimits()
) -> dict[str, dict]:
    """The ProcessResult work for any number of cells in one appliance: each cell's result
    disk -> cells/<serial>/output/ and cells/<serial>/extraction.json. Cells without a result
    disk are left alone (their outcome comes from the node events)."""
    run_dir = Path(run_dir)
    jobs, which = [], []
    for s in serials:
        disk = result_disk(run_dir, s)
        if disk.exists() or disk.is_symlink():
            jobs.append(ExtractJob(disk, RunDir(run_dir).cell(s).output))
            which.append(s)
    out = {}
    for s, rep in zip(which, extract_disks(jobs, limits), strict=True):
        write_report(RunDir(run_dir).cell(s).extraction, rep)
        out[s] = rep
    return out
