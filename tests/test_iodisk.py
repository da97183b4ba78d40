"""IO disks: both backends make the same filesystem, read back with libguestfs; a disk as a
guest left it comes back through the hardened extractor (analyze.extract)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import extract_output

from osgtest_dag.analyze.extract import ExtractJob, extract_disks
from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError
from osgtest_dag.guest import gfs, iodisk, payload


def _read_tree(disk: Path) -> dict:
    """label, and for every path on the disk: (mode, content or None for dirs)."""
    with gfs.open_disks([(disk, "qcow2")], readonly=True) as g:
        fss = g.list_filesystems()
        assert len(fss) == 1, fss
        dev, fstype = next(iter(fss.items()))
        label = g.vfs_label(dev)
        g.mount_ro(dev, "/")
        entries = {}
        for rel in g.find("/"):
            if rel == "lost+found" or rel.startswith("lost+found/"):
                continue
            path = "/" + rel
            st = g.lstatns(path)
            mode = st["st_mode"]
            content = g.read_file(path) if stat.S_ISREG(mode) else None
            entries[rel] = (stat.S_IMODE(mode), stat.S_ISDIR(mode), content, st["st_uid"])
        root_uid = g.lstatns("/")["st_uid"]
    return {"label": label, "fstype": fstype, "entries": entries, "root_uid": root_uid}


@pytest.fixture
def cell_input(make_cell_input):
    d = make_cell_input(serial="042")
    (d / "extra").mkdir()
    (d / "extra" / "data.txt").write_text("some extra file\n")
    return d


@pytest.mark.parametrize("backend", iodisk.BACKENDS)
def test_backend_contents(backend, cell_input, tmp_path):
    disk = iodisk.make_iodisk(cell_input, tmp_path / f"io-{backend}.qcow2", size_mb=32, backend=backend)
    assert disk.is_file()
    fmt = json.loads(command.run(["qemu-img", "info", "--output=json", disk]).stdout)["format"]
    assert fmt == "qcow2"
    tree = _read_tree(disk)
    assert tree["label"] == iodisk.IO_LABEL
    assert tree["fstype"] == "ext4"
    assert tree["root_uid"] == 0
    e = tree["entries"]
    mode, is_dir, content, _ = e["run-job"]
    assert mode & 0o111 == 0o111, oct(mode)
    assert content == payload.payload_file(payload.RUN_JOB).read_bytes()
    assert e["output"][1] and not any(k.startswith("output/") for k in e)
    for name in ("cell.json", "cell.env", "extra/data.txt"):
        assert e[f"input/{name}"][2] == (cell_input / name).read_bytes()
    # Nothing else: exactly the staged tree.
    assert set(e) == {
        "run-job",
        "input",
        "input/cell.json",
        "input/cell.env",
        "input/extra",
        "input/extra/data.txt",
        "output",
    }
    if backend == "mke2fs":  # (one appliance launch less for the slow backend)
        out = extract_output(disk, tmp_path / f"read-{backend}")
        assert out.is_dir() and list(out.iterdir()) == []


def test_missing_cell_json_names_the_path(tmp_path):
    d = tmp_path / "input"
    d.mkdir()
    (d / "cell.env").write_text("CELL_SERIAL=1\n")
    with pytest.raises(UserError) as ei:
        iodisk.make_iodisk(d, tmp_path / "io.qcow2")
    assert str(d / "cell.json") in str(ei.value)
    assert not (tmp_path / "io.qcow2").exists()


def test_bad_inputs(tmp_path, cell_input):
    with pytest.raises(UserError, match="does not exist"):
        iodisk.make_iodisk(tmp_path / "nope", tmp_path / "io.qcow2")
    with pytest.raises(UserError, match="unknown IO disk backend"):
        iodisk.make_iodisk(cell_input, tmp_path / "io.qcow2", backend="dd")
    with pytest.raises(UserError, match="too small"):
        iodisk.make_iodisk(cell_input, tmp_path / "io.qcow2", size_mb=1)
    (cell_input / "cell.json").write_text('{"schema": "osgtest-dag/cell", "version": 9}')
    with pytest.raises(UserError, match="version 9"):
        iodisk.make_iodisk(cell_input, tmp_path / "io.qcow2")
    (cell_input / "cell.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        iodisk.make_iodisk(cell_input, tmp_path / "io.qcow2")


def test_atomic_on_failure(cell_input, tmp_path):
    """Content larger than the disk: a UserError, and nothing left in the destination dir."""
    (cell_input / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    dest_dir = tmp_path / "disks"
    dest_dir.mkdir()
    with pytest.raises(UserError, match="do not fit"):
        iodisk.make_iodisk(cell_input, dest_dir / "io.qcow2", size_mb=8)
    assert list(dest_dir.iterdir()) == []


def test_replaces_existing_disk_atomically(cell_input, tmp_path):
    dest = tmp_path / "io.qcow2"
    dest.write_text("old")
    iodisk.make_iodisk(cell_input, dest)
    assert dest.read_bytes()[:4] == b"QFI\xfb"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_of_a_used_disk(tmp_path):
    """The extractor copies output/ (as a guest left it) without touching the disk."""
    tree = tmp_path / "tree"
    (tree / "output" / "sub").mkdir(parents=True)
    (tree / "output" / "result.json").write_text('{"status": "pass"}\n')
    (tree / "output" / "exit-status").write_text("0\n")
    (tree / "output" / "sub" / "log.txt").write_text("x" * 10000)
    raw = tmp_path / "io.raw"
    command.run(["mkfs.ext4", "-q", "-F", "-L", iodisk.IO_LABEL, "-d", tree, raw, "16M"])
    disk = tmp_path / "io.qcow2"
    command.run(["qemu-img", "convert", "-O", "qcow2", raw, disk])
    before = disk.read_bytes()
    out = extract_output(disk, tmp_path / "got")
    assert (out / "result.json").read_text() == '{"status": "pass"}\n'
    assert (out / "exit-status").read_text() == "0\n"
    assert (out / "sub" / "log.txt").read_text() == "x" * 10000
    assert disk.read_bytes() == before


def test_foreign_disks_are_refused(tmp_path):
    """A raw disk is refused before libguestfs sees it; a qcow2 with no output/ and no
    OSGTEST-IO filesystem gets its reason in the report."""
    raw = tmp_path / "other.raw"
    command.run(["mkfs.ext4", "-q", "-F", "-L", "SOMETHING", raw, "8M"])
    foreign = tmp_path / "other.qcow2"
    command.run(["qemu-img", "convert", "-O", "qcow2", raw, foreign])
    as_raw, as_qcow2 = extract_disks(
        [ExtractJob(raw, tmp_path / "raw" / "output"), ExtractJob(foreign, tmp_path / "qcow2" / "output")]
    )
    assert not as_raw["ok"] and "not a readable qcow2" in as_raw["error"]
    assert not as_qcow2["ok"] and "nor one labelled OSGTEST-IO" in as_qcow2["error"]
    assert not (tmp_path / "raw" / "output").exists() and not (tmp_path / "qcow2" / "output").exists()
