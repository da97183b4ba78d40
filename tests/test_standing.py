"""The run's standing appliance (analyze/standing.py): launched once with empty slot files, it
reads result disks copied into its slots, one after another through the same slot, and never
shows a disk anything of the one read before it. Real disks, real libguestfs; no VM."""

from __future__ import annotations

import logging
from pathlib import Path

from osgtest_dag.analyze.extract import ExtractJob
from osgtest_dag.analyze.standing import StandingAppliance, _copy_extents
from osgtest_dag.base import command
from osgtest_dag.guest.iodisk import IO_LABEL

MIB = 1 << 20


def _disk(work: Path, name: str, files: dict[str, str], size: str = "16M") -> Path:
    """A result disk as a guest leaves it: an OSGTEST-IO ext4 holding output/<files>."""
    tree = work / f"tree-{name}"
    (tree / "output").mkdir(parents=True)
    for rel, text in files.items():
        (tree / "output" / rel).write_text(text)
    raw = work / f"{name}.raw"
    command.run(["mkfs.ext4", "-q", "-F", "-L", IO_LABEL, "-m", "0", "-d", tree, raw, size])
    disk = work / f"{name}.qcow2"
    command.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, disk])
    raw.unlink()
    return disk


def _tree(dest: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(dest.iterdir())}


def test_copy_extents_empties_the_slot_first(tmp_path):
    slot = tmp_path / "slot"
    slot.write_bytes(b"\xff" * (3 * MIB))
    src = tmp_path / "src"
    with open(src, "wb") as f:
        f.seek(MIB)
        f.write(b"data")
        f.truncate(2 * MIB)
    _copy_extents(src, slot, 4 * MIB)
    got = slot.read_bytes()
    assert len(got) == 4 * MIB
    assert got[MIB : MIB + 4] == b"data"
    assert got.count(0) == 4 * MIB - 4  # nothing of what the slot held before


def test_slots_reused_refused_and_oversized_disks(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="osgtest_dag")
    a = _disk(tmp_path, "a", {"result.json": '{"who": "a"}', "only-a.log": "A\n"})
    b = _disk(tmp_path, "b", {"result.json": '{"who": "b"}'})
    c = _disk(tmp_path, "c", {"result.json": '{"who": "c"}'})
    big = _disk(tmp_path, "big", {"result.json": '{"who": "big"}'}, size="48M")
    backed = tmp_path / "backed.qcow2"
    command.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", a, "-F", "qcow2", backed])
    standing = StandingAppliance(2, slot_bytes=32 * MIB, workdir=tmp_path)
    try:
        standing.launch()
        assert standing.slots == 2
        reports = standing.extract(
            [ExtractJob(d, tmp_path / f"out-{d.stem}") for d in (a, b, backed, c, big)]
        )
        assert standing.alive()
        # a third disk after two: slot 0 again, where a's files were
        again = standing.extract([ExtractJob(b, tmp_path / "out-b-again")])
    finally:
        standing.close()
    ok = {Path(r["disk"]).stem: r for r in reports}
    assert [ok[n]["ok"] for n in ("a", "b", "c", "big")] == [True] * 4
    assert _tree(tmp_path / "out-a") == {"only-a.log": "A\n", "result.json": '{"who": "a"}'}
    assert _tree(tmp_path / "out-b") == {"result.json": '{"who": "b"}'}
    assert _tree(tmp_path / "out-c") == {"result.json": '{"who": "c"}'}  # slot 0 after a: no only-a.log
    assert _tree(tmp_path / "out-big") == {"result.json": '{"who": "big"}'}
    assert not ok["backed"]["ok"] and "backing file" in ok["backed"]["error"]
    assert not (tmp_path / "out-backed").exists()
    assert again[0]["ok"] and _tree(tmp_path / "out-b-again") == {"result.json": '{"who": "b"}'}
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("standing appliance up") for m in messages) == 1
    # only the disk too large for a slot needed an appliance of its own
    assert sum(m.startswith("appliance up with 1 disk") for m in messages) == 1
    assert not list(tmp_path.glob("osgtest-slots-*"))  # the slots are gone with it


# The executor's use of it (one standing appliance for the run, no appliance per batch, every
# POST script using the read): tests/test_prefetch.py::test_executor_reads_ahead_for_the_post_scripts.
