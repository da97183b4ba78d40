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
  validated on the host: only directories and regular files are written, with O_NOFOLLOW |
  O_EXCL, under a fresh directory of ours; names are checked component by component (no `..`,
  no absolute paths); symlinks are recorded, never created; device nodes, fifos and sockets are
  recorded and skipped; hard links become copies of files already extracted; names that are not
  valid UTF-8 (or hold control characters) are escaped as %XX. Caps on bytes and files per disk
  hold on the host too, and a stream that grows past its budget is cancelled.
- Everything skipped or renamed goes into the disk's extraction report, and a disk that fails
  never stops the others (a crashed appliance is relaunched for the disks after it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.guest import gfs
from osgtest_dag.base.errors import CommandError, UserError
from osgtest_dag.model.rundir import RunDir

log = logging.getLogger(__name__)

REPORT_SCHEMA = "osgtest-dag/extraction"
REPORT_VERSION = 1
IO_LABEL = "OSGTEST-IO"
MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"
SKIPPED_LIST_CAP = 500      # entries kept in a report's lists (the counts are complete)
LSTAT_CHUNK = 500
FIRST = ("result.json", "exit-status")   # kept before anything else when the caps bite
_STATE_READY = 2


@dataclass(frozen=True)
class ExtractLimits:
    """Per-disk caps. Defaults fit the payload's output (a few MiB of logs and lists)."""

    max_bytes: int = 512 << 20          # bytes of regular files written per disk
    max_files: int = 5000               # regular files written per disk
    max_file_bytes: int = 256 << 20     # one file
    max_entries: int = 200_000          # inodes in use on the disk's filesystem; more: refused
    subdir: str = "output"              # the tree to extract
    label: str = IO_LABEL               # the filesystem label to look for


@dataclass(frozen=True)
class ExtractJob:
    """Extract `disk`'s output/ into `dest` (created; it must not exist yet, or is replaced)."""

    disk: Path
    dest: Path


@dataclass
class _Report:
    disk: str
    dest: str
    ok: bool = True
    error: str | None = None
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    skipped: list = field(default_factory=list)
    skipped_count: int = 0
    skipped_by_kind: dict = field(default_factory=dict)
    renamed: list = field(default_factory=list)
    renamed_count: int = 0
    seconds: float = 0.0

    def skip(self, path: str, kind: str, detail: str | None = None, size: int | None = None) -> None:
        self.skipped_count += 1
        self.skipped_by_kind[kind] = self.skipped_by_kind.get(kind, 0) + 1
        if len(self.skipped) < SKIPPED_LIST_CAP:
            entry = {"path": path, "kind": kind}
            if detail is not None:
                entry["detail"] = detail
            if size is not None:
                entry["size"] = size
            self.skipped.append(entry)

    def rename(self, raw: bytes, as_: str) -> None:
        self.renamed_count += 1
        if len(self.renamed) < SKIPPED_LIST_CAP:
            self.renamed.append({"raw": raw.hex(), "as": as_})

    def fail(self, error: str) -> None:
        self.ok = False
        self.error = error

    def to_json(self) -> dict:
        return {"schema": REPORT_SCHEMA, "version": REPORT_VERSION, "disk": self.disk,
                "dest": self.dest, "ok": self.ok, "error": self.error, "files": self.files,
                "dirs": self.dirs, "bytes": self.bytes, "skipped_count": self.skipped_count,
                "skipped_by_kind": self.skipped_by_kind, "skipped": self.skipped,
                "renamed_count": self.renamed_count, "renamed": self.renamed,
                "seconds": round(self.seconds, 3)}


# ------------------------------------------------------------------------------ names
_SAFE_BYTE = re.compile(rb"[\x21-\x24\x26-\x7e]|[\x20]")   # printable ASCII except '%'


def escape_name(raw: bytes) -> str:
    """A file name component safe to create on the host: printable ASCII and valid UTF-8
    letters stay, '%', control characters and bytes that are not UTF-8 become %XX."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "%" not in text and text.isprintable():
        return text
    out = []
    i = 0
    while i < len(raw):
        b = raw[i:i + 1]
        if _SAFE_BYTE.fullmatch(b):
            out.append(b.decode())
            i += 1
            continue
        if raw[i] < 0x80:                   # ASCII control characters and '%'
            out.append(f"%{raw[i]:02X}")
            i += 1
            continue
        # a whole valid UTF-8 character that is printable stays as it is
        for n in (2, 3, 4):
            chunk = raw[i:i + n]
            try:
                ch = chunk.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if len(ch) == 1 and ch.isprintable():
                out.append(ch)
                i += n
                break
        else:
            out.append(f"%{raw[i]:02X}")
            i += 1
    return "".join(out)


def _components(name: str) -> list[bytes] | None:
    """A tar member name -> its components as raw bytes, or None if it is unsafe."""
    raw = name.encode("utf-8", "surrogateescape")
    if raw.startswith(b"/"):
        return None
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if any(p == b".." for p in parts):
        return None
    return parts


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[\\])", r"\\\1", name)


# ------------------------------------------------------------------------------ pre-check
def check_disk(disk: Path) -> str | None:
    """Why `disk` must not be opened, or None. Runs qemu-img before libguestfs sees the file."""
    why, _ = _inspect_disk(disk)
    return why


def _inspect_disk(disk: Path) -> tuple[str | None, int | None]:
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
        info = json.loads(proc.stdout)
    except ValueError:
        return "qemu-img info gave no JSON", None
    if info.get("format") != "qcow2":
        return f"format is {info.get('format')!r}, not qcow2", None
    for key in ("backing-filename", "full-backing-filename", "backing-filename-format"):
        if info.get(key):
            return f"the qcow2 has a backing file ({str(info.get('backing-filename') or info[key])[:200]}): refused", None
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        return f"the qcow2 has an external data file ({str(data['data-file'])[:200]}): refused", None
    if data.get("corrupt"):
        return "the qcow2 is marked corrupt", None
    size = info.get("virtual-size")
    return None, int(size) if isinstance(size, int) else None


# ------------------------------------------------------------------------------ one disk
class _Cancel(Exception):
    pass


class _Budget:
    """A file-like wrapper that counts the bytes of the stream and stops past a budget."""

    def __init__(self, f, limit: int):
        self.f, self.limit, self.read_bytes = f, limit, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise _Cancel(f"the tar stream exceeded its budget of {self.limit} bytes")
        return data


def _write_member(tf: tarfile.TarFile, m: tarfile.TarInfo, target: str, size: int) -> None:
    src = tf.extractfile(m)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as out:
        left = size
        while left > 0:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                raise _Cancel(f"tar member {m.name!r} is shorter than its header says")
            out.write(chunk)
            left -= len(chunk)


class _Unpacker:
    """Reads the tar stream of one disk and writes what is safe under `root`."""

    def __init__(self, root: Path, limits: ExtractLimits, report: _Report, budget: int,
                 planned: dict[str, int] | None = None):
        self.root = os.path.realpath(root)
        self.limits = limits
        self.report = report
        self.budget = budget
        # Files the plan chose (within the caps) always come out; what the listing could not
        # name gets only what the plan left of the caps, so the result does not depend on
        # the order of the stream.
        self.planned = dict(planned or {})
        self.reserved_files = len(self.planned)
        self.reserved_bytes = sum(self.planned.values())
        self.extra_files = 0
        self.extra_bytes = 0
        self.extracted: dict[str, str] = {}      # member name -> host path (for hard links)
        self.made_dirs: set[str] = {self.root}
        self.error: str | None = None

    def _host_path(self, parts: list[bytes]) -> tuple[str, str]:
        names = []
        for p in parts:
            esc = escape_name(p)
            if esc.encode("utf-8", "surrogateescape") != p:
                self.report.rename(p, esc)
            names.append(esc)
        target = os.path.join(self.root, *names)
        shown = "/".join(names)
        return target, shown

    def _parent_ok(self, target: str) -> bool:
        """Create the parent directories (ours only; never through a link)."""
        parent = os.path.dirname(target)
        if not (parent == self.root or parent.startswith(self.root + os.sep)):
            return False
        missing = []
        p = parent
        while p not in self.made_dirs:
            missing.append(p)
            p = os.path.dirname(p)
            if len(p) < len(self.root):
                return False
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o755)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(d).st_mode):
                    return False
            self.made_dirs.add(d)
        return True

    def run(self, fileobj) -> None:
        rep = self.report
        tf = tarfile.open(fileobj=_Budget(fileobj, self.budget), mode="r|", errorlevel=1)
        for m in tf:
            parts = _components(m.name)
            shown_raw = m.name.encode("utf-8", "surrogateescape")
            if parts is None:
                rep.skip(escape_name(shown_raw), "unsafe-name")
                continue
            if not parts:
                continue                      # the root "."
            target, shown = self._host_path(parts)
            if not target.startswith(self.root + os.sep):
                rep.skip(shown, "unsafe-name")
                continue
            if m.isdir():
                if self._parent_ok(target) and target not in self.made_dirs:
                    try:
                        os.mkdir(target, 0o755)
                        rep.dirs += 1
                    except FileExistsError:
                        if not stat.S_ISDIR(os.lstat(target).st_mode):
                            rep.skip(shown, "name-clash")
                            continue
                    self.made_dirs.add(target)
                continue
            if m.issym():
                target_raw = m.linkname.encode("utf-8", "surrogateescape")
                rep.skip(shown, "symlink", detail=escape_name(target_raw))
                continue
            if m.ischr() or m.isblk():
                rep.skip(shown, "device", detail=f"{'char' if m.ischr() else 'block'} {m.devmajor},{m.devminor}")
                continue
            if m.isfifo():
                rep.skip(shown, "fifo")
                continue
            if m.islnk():
                src = self.extracted.get(m.linkname)
                size = os.path.getsize(src) if src else 0
                if src is None:
                    rep.skip(shown, "hardlink", detail=escape_name(m.linkname.encode("utf-8", "surrogateescape")))
                elif not self._fits(shown, size):
                    pass
                elif self._parent_ok(target):
                    try:
                        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                            shutil.copyfileobj(inp, out)
                        self._count(m.name, target, size)
                    except FileExistsError:
                        rep.skip(shown, "name-clash")
                continue
            if not m.isreg():
                rep.skip(shown, "other", detail=f"tar type {m.type!r}")
                continue
            rel = m.name[2:] if m.name.startswith("./") else m.name
            is_planned = self.planned.get(rel) == m.size
            if not is_planned and not self._fits(shown, m.size):
                continue
            if not self._parent_ok(target):
                rep.skip(shown, "unsafe-name")
                continue
            try:
                _write_member(tf, m, target, m.size)
            except FileExistsError:
                rep.skip(shown, "name-clash")
                continue
            self._count(m.name, target, m.size, extra=not is_planned)

    def _fits(self, shown: str, size: int) -> bool:
        lim, rep = self.limits, self.report
        if size > lim.max_file_bytes:
            rep.skip(shown, "too-large", size=size)
            return False
        if self.reserved_files + self.extra_files >= lim.max_files:
            rep.skip(shown, "file-cap", size=size)
            return False
        if self.reserved_bytes + self.extra_bytes + size > lim.max_bytes:
            rep.skip(shown, "byte-cap", size=size)
            return False
        return True

    def _count(self, name: str, target: str, size: int, extra: bool = True) -> None:
        self.report.files += 1
        self.report.bytes += size
        if extra:
            self.extra_files += 1
            self.extra_bytes += size
        self.extracted[name] = target


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


def _plan(g, top: str, rep: _Report, limits: ExtractLimits,
          tmpdir: str) -> tuple[list[str], int, dict[str, int]]:
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
            unlisted += 1          # not passable to the API; the tar stream still carries it
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
            chunk = bases[i:i + LSTAT_CHUNK]
            for base, st in zip(chunk, g.lstatnslist(path, chunk)):
                rel = f"{d}/{base}" if d else base
                mode = st["st_mode"]
                if stat.S_ISSOCK(mode):
                    rep.skip(rel, "socket")      # tar leaves sockets out; say so here
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


def _extract_one(g, dev: str, mp: str, job: ExtractJob, limits: ExtractLimits, rep: _Report) -> None:
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
        unpack = _Unpacker(tmp, limits, rep, budget, planned)
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
                while f.read(1 << 20):      # drain, so the writer never blocks
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


def _alive(g) -> bool:
    try:
        return g.get_state() == _STATE_READY
    except RuntimeError:
        return False


def _device_name(index: int) -> str:
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
    names = [_device_name(i) for i in range(len(sizes))]
    try:
        if all(sz is None or g.blockdev_getsize64(n) == sz for n, sz in zip(names, sizes)):
            return names
    except RuntimeError:
        pass
    log.warning("drive names are not the expected ones; asking libguestfs for them")
    return g.list_devices()


def _run_batch(jobs: list[ExtractJob], reports: dict[int, _Report], order: list[int],
               limits: ExtractLimits, sizes: dict[int, int | None]) -> None:
    """Extract `order` (indexes into jobs) with one appliance; relaunch after a crash."""
    remaining = list(order)
    while remaining:
        batch = remaining
        t0 = time.monotonic()
        try:
            ctx = gfs.open_disks([(jobs[i].disk, "qcow2") for i in batch], readonly=True)
            g = ctx.__enter__()
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
            g.set_autosync(False)      # read-only: nothing to sync; saves ~10 s at close
            devices = _devices(g, [sizes.get(i) for i in batch])
            for pos in range(len(batch)):
                g.mkmountpoint(f"/d{pos}")
            for pos, i in enumerate(batch):
                rep = reports[i]
                t1 = time.monotonic()
                try:
                    _extract_one(g, devices[pos], f"/d{pos}", jobs[i], limits, rep)
                except RuntimeError as e:
                    rep.fail(f"reading the disk failed: {str(e)[:300]}")
                    if not _alive(g):
                        rep.error = f"the appliance died while reading this disk: {str(e)[:200]}"
                        remaining = batch[pos + 1:]
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
    reports = {i: _Report(disk=str(j.disk), dest=str(j.dest)) for i, j in enumerate(jobs)}
    good, sizes = [], {}
    for i, j in enumerate(jobs):
        t0 = time.monotonic()
        why, sizes[i] = _inspect_disk(Path(j.disk))
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
    from osgtest_dag.analyze.results import write_json_atomic
    write_json_atomic(path, report)


# ------------------------------------------------------------------------------ runs
def result_disk(run_dir: Path, serial: str) -> Path:
    return RunDir(run_dir).cell(serial).result_disk


def extract_cells(run_dir: Path | str, serials: Sequence[str],
                  limits: ExtractLimits = ExtractLimits()) -> dict[str, dict]:
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
    for s, rep in zip(which, extract_disks(jobs, limits)):
        write_report(RunDir(run_dir).cell(s).extraction, rep)
        out[s] = rep
    return out


def extract_cell(run_dir: Path | str, serial: str, limits: ExtractLimits = ExtractLimits()) -> dict:
    """One cell (the ProcessResult node): its extraction report; UserError if it has no disk."""
    disk = result_disk(Path(run_dir), serial)
    if not (disk.exists() or disk.is_symlink()):
        raise UserError("no result disk to extract", where=disk)
    return extract_cells(run_dir, [serial], limits)[serial]
