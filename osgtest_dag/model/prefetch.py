"""A cell's result disk read ahead by the local executor, for its POST script to use.

The local executor reads the result disks of VMs that end close together in one libguestfs
appliance (engine/local/extraction.py), each into its cell's staging directory:

    cells/<serial>/.prefetch/output/         the disk's output/, as analyze.extract wrote it
    cells/<serial>/.prefetch/prefetch.json   PrefetchRecord: the disk's identity when it was
                                             read and the extraction report; written last,
                                             atomically, and only for a read that succeeded

The POST script (nodes/node.py) trusts the tree only through `usable`: a record that is there,
whole, of a successful read and of the disk as it is now. Anything else (no record: an executor
killed mid-read; another disk; a damaged record) is discarded and the POST script reads the
disk itself, as it always does on HTCondor, where there is never a pre-read.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import Fields, JsonObject, check_document, read_json
from osgtest_dag.model.rundir import CellDir


@dataclass(frozen=True)
class DiskIdentity:
    """Which file a disk is, and whether it changed: rewritten, touched or replaced (ctime
    too, which no one can set back)."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> DiskIdentity:
        """The identity of `path` itself (never a link's target); OSError when it is gone."""
        st = os.lstat(path)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def to_json(self) -> JsonObject:
        return {
            "device": self.device,
            "inode": self.inode,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "ctime_ns": self.ctime_ns,
        }

    @classmethod
    def from_json(cls, f: Fields) -> DiskIdentity:
        return cls(
            f.integer("device"),
            f.integer("inode"),
            f.integer("size"),
            f.integer("mtime_ns"),
            f.integer("ctime_ns"),
        )


@dataclass(frozen=True)
class PrefetchRecord:
    """prefetch.json: the result disk read ahead (its identity when read) and the extraction
    report of that read, the document the POST script writes as extraction.json."""

    SCHEMA = "osgtest-dag/prefetch"
    VERSION = 1
    disk: DiskIdentity
    report: JsonObject

    def to_json(self) -> JsonObject:
        return {
            "schema": self.SCHEMA,
            "version": self.VERSION,
            "disk": self.disk.to_json(),
            "report": self.report,
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> PrefetchRecord:
        doc = check_document(data, cls.SCHEMA, cls.VERSION, where)
        f = Fields(doc, where)
        report = f.obj("report").data
        return cls(DiskIdentity.from_json(f.obj("disk")), dict(report))

    @classmethod
    def read(cls, cell: CellDir) -> PrefetchRecord:
        """The cell's record; UserError naming the file when it is missing or damaged."""
        return cls.from_json(read_json(cell.prefetch_record, missing="no pre-read"), cell.prefetch_record)

    def write(self, cell: CellDir) -> None:
        """Last, after the tree: a record is there only for a read that finished."""
        write_json_atomic(cell.prefetch_record, self.to_json())


def usable(cell: CellDir, disk: Path) -> PrefetchRecord | None:
    """The cell's pre-read when it can stand for reading `disk` now: its record is whole, the
    read succeeded, the disk is the one it read, unchanged, and the tree is a directory of
    ours (not a link). None otherwise."""
    try:
        record = PrefetchRecord.read(cell)
        now = DiskIdentity.of(disk)
        tree = os.lstat(cell.prefetched_output)
    except (UserError, OSError):
        return None
    if record.report.get("ok") is not True or record.disk != now or not stat.S_ISDIR(tree.st_mode):
        return None
    return record


def discard(cell: CellDir) -> None:
    """Remove the cell's pre-read: the record first, so a removal cut short is never trusted."""
    cell.prefetch_record.unlink(missing_ok=True)
    if cell.prefetch.is_symlink():
        cell.prefetch.unlink()
    elif cell.prefetch.is_dir():
        shutil.rmtree(cell.prefetch, ignore_errors=True)
