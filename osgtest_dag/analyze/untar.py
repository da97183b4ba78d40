"""Unpacking one untrusted tar stream onto the host (extract.py feeds it a result disk's tree).

Only directories and regular files are written, with O_NOFOLLOW | O_EXCL, under a fresh
directory of ours; names are checked component by component (no `..`, no absolute paths) and
escaped as %XX where they are not printable UTF-8; symlinks, device nodes and fifos are recorded
and skipped; hard links become copies of files already written. Caps on files and bytes hold
here too, and a stream past its byte budget is cancelled. Everything skipped or renamed goes
into the disk's ExtractionReport.
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

REPORT_SCHEMA = "osgtest-dag/extraction"
REPORT_VERSION = 1
SKIPPED_LIST_CAP = 500  # entries kept in a report's lists (the counts are complete)


@dataclass
class ExtractionReport:
    """What came out of one disk, and everything skipped or renamed on the way."""

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
            entry: dict[str, str | int] = {"path": path, "kind": kind}
            if detail is not None:
                entry["detail"] = detail
            if size is not None:
                entry["size"] = size
            self.skipped.append(entry)

    def rename(self, raw: builtins.bytes, as_: str) -> None:  # `bytes` is a field here
        self.renamed_count += 1
        if len(self.renamed) < SKIPPED_LIST_CAP:
            self.renamed.append({"raw": raw.hex(), "as": as_})

    def fail(self, error: str) -> None:
        self.ok = False
        self.error = error

    def to_json(self) -> dict:
        return {
            "schema": REPORT_SCHEMA,
            "version": REPORT_VERSION,
            "disk": self.disk,
            "dest": self.dest,
            "ok": self.ok,
            "error": self.error,
            "files": self.files,
            "dirs": self.dirs,
            "bytes": self.bytes,
            "skipped_count": self.skipped_count,
            "skipped_by_kind": self.skipped_by_kind,
            "skipped": self.skipped,
            "renamed_count": self.renamed_count,
            "renamed": self.renamed,
            "seconds": round(self.seconds, 3),
        }


# ------------------------------------------------------------------------------ names
_SAFE_BYTE = re.compile(rb"[\x21-\x24\x26-\x7e]|[\x20]")  # printable ASCII except '%'


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
        b = raw[i : i + 1]
        if _SAFE_BYTE.fullmatch(b):
            out.append(b.decode())
            i += 1
            continue
        if raw[i] < 0x80:  # ASCII control characters and '%'
            out.append(f"%{raw[i]:02X}")
            i += 1
            continue
        # a whole valid UTF-8 character that is printable stays as it is
        for n in (2, 3, 4):
            chunk = raw[i : i + n]
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


def components(name: str) -> list[bytes] | None:
    """A tar member name -> its components as raw bytes, or None if it is unsafe."""
    raw = name.encode("utf-8", "surrogateescape")
    if raw.startswith(b"/"):
        return None
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if any(p == b".." for p in parts):
        return None
    return parts


# ------------------------------------------------------------------------------ the stream
class Cancel(Exception):
    pass


class _Budget:
    """A file-like wrapper that counts the bytes of the stream and stops past a budget."""

    def __init__(self, f, limit: int):
        self.f, self.limit, self.read_bytes = f, limit, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise Cancel(f"the tar stream exceeded its budget of {self.limit} bytes")
        return data


def _write_member(tf: tarfile.TarFile, m: tarfile.TarInfo, target: str, size: int) -> None:
    src = tf.extractfile(m)
    if src is None:  # only regular members are written, and they have data
        raise Cancel(f"tar member {m.name!r} has no data")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as out:
        left = size
        while left > 0:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                raise Cancel(f"tar member {m.name!r} is shorter than its header says")
            out.write(chunk)
            left -= len(chunk)


class Unpacker:
    """Reads the tar stream of one disk and writes what is safe under `root`."""

    def __init__(
        self,
        root: Path,
        report: ExtractionReport,
        budget: int,
        planned: dict[str, int] | None = None,
        *,
        max_files: int,
        max_bytes: int,
        max_file_bytes: int,
    ):
        self.root = os.path.realpath(root)
        self.max_files, self.max_bytes, self.max_file_bytes = max_files, max_bytes, max_file_bytes
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
        self.extracted: dict[str, str] = {}  # member name -> host path (for hard links)
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
        tf = tarfile.open(fileobj=_Budget(fileobj, self.budget), mode="r|", errorlevel=1)  # type: ignore[call-overload]  # a file-like reader, not a file
        for m in tf:
            parts = components(m.name)
            shown_raw = m.name.encode("utf-8", "surrogateescape")
            if parts is None:
                rep.skip(escape_name(shown_raw), "unsafe-name")
                continue
            if not parts:
                continue  # the root "."
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
                rep.skip(
                    shown, "device", detail=f"{'char' if m.ischr() else 'block'} {m.devmajor},{m.devminor}"
                )
                continue
            if m.isfifo():
                rep.skip(shown, "fifo")
                continue
            if m.islnk():
                src = self.extracted.get(m.linkname)
                size = os.path.getsize(src) if src else 0
                if src is None:
                    rep.skip(
                        shown, "hardlink", detail=escape_name(m.linkname.encode("utf-8", "surrogateescape"))
                    )
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
        rep = self.report
        if size > self.max_file_bytes:
            rep.skip(shown, "too-large", size=size)
            return False
        if self.reserved_files + self.extra_files >= self.max_files:
            rep.skip(shown, "file-cap", size=size)
            return False
        if self.reserved_bytes + self.extra_bytes + size > self.max_bytes:
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
