"""The per-cell IO disk: an ext4 filesystem labelled OSGTEST-IO that carries the job into the
guest (`run-job`, `input/`) and the results back out (`output/`); and the scratch disk a cell
whose VM profile asks for more disk than its image has gets beside it: an empty ext4 labelled
OSGTEST-SCRATCH that the payload puts under the guest's writable trees (docs/contracts.md §1).

Two backends make the same filesystem: `mke2fs` (mkfs.ext4 -d from a staged tree, then
qemu-img convert; ~0.02 s a disk, no VM) and `virt-make-fs` (libguestfs; boots an appliance,
~10 s a disk; kept as a reference and for hosts whose mke2fs lacks -d).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.base.errors import CommandError, UserError
from osgtest_dag.guest import gfs, payload
from osgtest_dag.model.documents import read_json

log = logging.getLogger("osgtest_dag.guest.iodisk")

IO_LABEL = "OSGTEST-IO"
SCRATCH_LABEL = "OSGTEST-SCRATCH"
BACKENDS = ("mke2fs", "virt-make-fs")
CELL_SCHEMA = "osgtest-dag/cell"
CELL_VERSION = 1
REQUIRED_INPUTS = ("cell.json", "cell.env")
MIN_SIZE_MB = 8


def _validate_input(cell_input_dir: Path) -> None:
    """Refuse an input dir the payload could not use, naming the offending path."""
    if not cell_input_dir.is_dir():
        raise UserError(
            "cell input directory does not exist",
            where=cell_input_dir,
            hint="run `osgtest-dag generate` first; it writes cells/<serial>/input/",
        )
    for name in REQUIRED_INPUTS:
        if not (cell_input_dir / name).is_file():
            raise UserError(
                f"{name} is missing from the cell input directory",
                where=cell_input_dir / name,
                hint="a cell input directory holds cell.json, cell.env (and osg-test.conf)",
            )
    path = cell_input_dir / "cell.json"
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("schema") != CELL_SCHEMA:
        raise UserError(f"cell.json is not an {CELL_SCHEMA} document", where=path)
    if doc.get("version") != CELL_VERSION:
        raise UserError(
            f"cell.json has version {doc.get('version')!r}; this tool reads version {CELL_VERSION}",
            where=path,
            hint="regenerate the workflow with this tool",
        )


def stage_tree(cell_input_dir: Path, tree: Path, payload_dir: Path | None = None) -> None:
    """Lay out the IO filesystem's content in `tree`: run-job, input/, output/."""
    tree.mkdir(parents=True, exist_ok=True)
    tree.chmod(0o755)
    run_job = payload.payload_file(payload.RUN_JOB, payload_dir)
    shutil.copyfile(run_job, tree / "run-job")
    (tree / "run-job").chmod(0o755)
    shutil.copytree(cell_input_dir, tree / "input", symlinks=False)
    (tree / "output").mkdir(mode=0o755)


def _ext4_qcow2(
    dest_tmp: Path, work: Path, *, label: str, size_mb: int, extended: str, tree: Path | None = None
) -> None:
    """An ext4 of `size_mb` MiB labelled `label` (with `tree`'s files when given), made as a
    sparse raw file in `work` and converted to the qcow2 `dest_tmp`."""
    raw = work / "disk.raw"
    argv: list = ["mkfs.ext4", "-q", "-F", "-L", label, "-m", "0", "-E", extended]
    argv += ["-d", tree] if tree is not None else []
    command.run([*argv, raw, f"{size_mb}M"], timeout=120)
    command.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, dest_tmp], timeout=300)


def _mke2fs(tree: Path, dest_tmp: Path, size_mb: int, work: Path) -> None:
    try:
        _ext4_qcow2(dest_tmp, work, label=IO_LABEL, size_mb=size_mb, extended="root_owner=0:0", tree=tree)
    except CommandError as e:
        if "Could not allocate" in e.output or "No space left" in e.output:
            raise UserError(
                f"the cell's files do not fit in a {size_mb} MiB IO disk", hint="raise --size-mb"
            ) from None
        raise


def _virt_make_fs(tree: Path, dest_tmp: Path, size_mb: int) -> None:
    gfs.prepare_environment()
    command.run(
        [
            "virt-make-fs",
            f"--label={IO_LABEL}",
            "--format=qcow2",
            "--type=ext4",
            f"--size={size_mb}M",
            tree,
            dest_tmp,
        ],
        timeout=600,
    )


def make_iodisk(
    cell_input_dir: Path | str,
    dest_qcow2: Path | str,
    *,
    size_mb: int = 64,
    backend: str = "mke2fs",
    payload_dir: Path | str | None = None,
) -> Path:
    """Create the cell's IO disk (qcow2) at `dest_qcow2`, atomically: on any error no file is
    left at the destination. Returns the destination path."""
    src = Path(cell_input_dir)
    dest = Path(dest_qcow2)
    if backend not in BACKENDS:
        raise UserError(f"unknown IO disk backend {backend!r}", hint=f"use one of {', '.join(BACKENDS)}")
    if size_mb < MIN_SIZE_MB:
        raise UserError(f"IO disk size {size_mb} MiB is too small", hint=f"use at least {MIN_SIZE_MB}")
    _validate_input(src)
    pdir = Path(payload_dir) if payload_dir else None
    payload.payload_file(payload.RUN_JOB, pdir)
    if not dest.parent.is_dir():
        raise UserError("the IO disk's directory does not exist", where=dest.parent)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        work = Path(tmp)
        tree = work / "tree"
        stage_tree(src, tree, pdir)
        dest_tmp = work / "io.qcow2"
        if backend == "mke2fs":
            _mke2fs(tree, dest_tmp, size_mb, work)
        else:
            _virt_make_fs(tree, dest_tmp, size_mb)
        dest_tmp.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(dest_tmp, dest)
    log.debug("IO disk %s made (%s, %d MiB)", dest, backend, size_mb)
    return dest


def make_scratch_disk(dest_qcow2: Path | str, size_mb: int) -> Path:
    """An empty ext4 of `size_mb` MiB labelled OSGTEST-SCRATCH, as a qcow2 at `dest_qcow2`
    (atomically). Formatted here, not in the guest: the guest needs no mkfs and finds it by its
    label whatever the hypervisor names it (vdc, xvdc). Lazy initialisation keeps the file to a
    few MiB (the filesystem's metadata) whatever its size: small to transfer."""
    dest = Path(dest_qcow2)
    if size_mb < MIN_SIZE_MB:
        raise UserError(f"scratch disk size {size_mb} MiB is too small", hint=f"use at least {MIN_SIZE_MB}")
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        dest_tmp = Path(tmp) / "scratch.qcow2"
        _ext4_qcow2(
            dest_tmp,
            Path(tmp),
            label=SCRATCH_LABEL,
            size_mb=size_mb,
            extended="root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
        )
        dest_tmp.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(dest_tmp, dest)
    log.debug("scratch disk %s made (%d MiB)", dest, size_mb)
    return dest
