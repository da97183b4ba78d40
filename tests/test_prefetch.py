"""The local executor's read-ahead of result disks (engine/local/extraction.py): disks handed
over close together from node threads are read in ONE libguestfs appliance; the POST script
uses such a read only while it is whole and of the disk as it is now (model/prefetch.py), and
reads the disk itself otherwise. Real result disks, real libguestfs; no VM."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import guest_cell_config

from osgtest_dag.base import command
from osgtest_dag.engine.local import executor
from osgtest_dag.engine.local.extraction import BatchExtractor
from osgtest_dag.guest.iodisk import IO_LABEL
from osgtest_dag.model import prefetch
from osgtest_dag.model.documents import PostHistory
from osgtest_dag.model.prefetch import DiskIdentity, PrefetchRecord
from osgtest_dag.model.rundir import CellDir, RunDir, vm_node
from osgtest_dag.nodes import node


def _guest_result(serial: str, status: str) -> dict:
    code = 0 if status == "pass" else 1
    return {
        "schema": "osgtest-dag/guest-result",
        "version": 1,
        "serial": serial,
        "started": "2026-11-30T20:00:00Z",
        "finished": "2026-11-30T20:01:00Z",
        "phases": [
            {
                "name": "test",
                "start": "2026-11-30T20:00:00Z",
                "end": "2026-11-30T20:01:00Z",
                "exit_code": code,
                "status": "ok" if code == 0 else "failed",
                "log": "test.log",
            }
        ],
        "status": status,
        "exit_code": code,
    }


def _result_disk(cell: CellDir, status: str, work: Path) -> Path:
    """The cell's result disk as a guest leaves it: an OSGTEST-IO ext4 with output/."""
    tree = work / f"tree-{cell.serial}-{status}"
    (tree / "output").mkdir(parents=True)
    (tree / "output" / "result.json").write_text(json.dumps(_guest_result(cell.serial, status)))
    (tree / "output" / "test.log").write_text(f"{cell.serial} {status}\n")
    raw = work / f"{cell.serial}-{status}.raw"
    command.run(["mkfs.ext4", "-q", "-F", "-L", IO_LABEL, "-m", "0", "-d", tree, raw, "16M"])
    tmp = cell.path / f".{cell.result_disk.name}.new"
    command.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, tmp])
    os.replace(tmp, cell.result_disk)  # a new file, as the executor's transfer brings it back
    return cell.result_disk


def _cell(run: RunDir, serial: str) -> CellDir:
    cell = run.cell(serial)
    cell.path.mkdir(parents=True)
    cell.config.write_text(json.dumps(guest_cell_config(serial)))  # as CreateDisk writes it
    return cell


def _launches(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("appliance up with")]


def test_close_disks_share_one_appliance_and_post_uses_the_read(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="osgtest_dag")
    run = RunDir(tmp_path / "run")
    statuses = {"001": "pass", "002": "test", "003": "pass"}
    cells = {s: _cell(run, s) for s in statuses}
    for s, status in statuses.items():
        _result_disk(cells[s], status, tmp_path)

    # Three VMs end 0.3 s apart; each node thread hands its disk over and waits.
    extractor = BatchExtractor(others_running=lambda: True, gather_s=1.5)
    stop = threading.Event()
    got: dict[str, bool] = {}

    def node_thread(cell: CellDir) -> None:
        got[cell.serial] = extractor.read_ahead(cell, stop)

    threads = []
    t0 = time.monotonic()
    for cell in cells.values():
        threads.append(threading.Thread(target=node_thread, args=(cell,)))
        threads[-1].start()
        time.sleep(0.3)
    for t in threads:
        t.join(timeout=300)
    seconds = time.monotonic() - t0
    extractor.close()
    assert got == dict.fromkeys(statuses, True)
    launches = _launches(caplog)
    assert len(launches) == 1 and launches[0].startswith("appliance up with 3 disk(s)"), launches
    print(f"3 disks read ahead in one appliance in {seconds:.1f} s")
    for s, status in statuses.items():
        cell = cells[s]
        record = PrefetchRecord.read(cell)
        assert record.report["ok"] and record.disk == DiskIdentity.of(cell.result_disk)
        assert json.loads((cell.prefetched_output / "result.json").read_text())["status"] == status

    # 001: the POST script takes the read: no appliance of its own, the same documents.
    cell = cells["001"]
    report = PrefetchRecord.read(cell).report
    assert node.post_vm(run.path, vm_node("001"), 0, 0, 2) == 0
    assert len(_launches(caplog)) == 1
    assert any("read it ahead" in r.getMessage() for r in caplog.records)
    assert json.loads(cell.guest_result.read_text())["status"] == "pass"
    assert (cell.output / "test.log").read_text() == "001 pass\n"
    assert json.loads(cell.extraction.read_text()) == report
    assert json.loads(cell.source_stamp.read_text())["size"] == cell.result_disk.stat().st_size
    assert not cell.prefetch.exists()
    (decision,) = PostHistory.read(cell.post_vm).decisions
    assert decision.verdict.value == "done" and decision.guest_status == "pass"

    # 002: the disk was written again after the read (another attempt's): the POST script
    # reads the new disk itself and drops the stale read.
    cell = cells["002"]
    _result_disk(cell, "pass", tmp_path)
    assert prefetch.usable(cell, cell.result_disk) is None
    assert node.post_vm(run.path, vm_node("002"), 0, 1, 2) == 0
    assert len(_launches(caplog)) == 2
    assert json.loads(cell.guest_result.read_text())["status"] == "pass"
    assert (cell.output / "test.log").read_text() == "002 pass\n"
    assert not cell.prefetch.exists()

    # 003: a read cut short (the executor killed before its record was written) is ignored.
    cell = cells["003"]
    cell.prefetch_record.unlink()
    (cell.prefetched_output / "result.json").write_text(json.dumps(_guest_result("003", "install")))
    assert node.post_vm(run.path, vm_node("003"), 0, 0, 2) == 0
    assert len(_launches(caplog)) == 3
    assert json.loads(cell.guest_result.read_text())["status"] == "pass"
    assert not cell.prefetch.exists()


def _fake_read(cell: CellDir, disk_bytes: bytes = b"qcow2 stand-in", ok: bool = True) -> PrefetchRecord:
    """A read-ahead as the extractor leaves it, for the checks that need no appliance."""
    cell.path.mkdir(parents=True, exist_ok=True)
    cell.result_disk.write_bytes(disk_bytes)
    cell.prefetched_output.mkdir(parents=True)
    (cell.prefetched_output / "result.json").write_text("{}")
    record = PrefetchRecord(DiskIdentity.of(cell.result_disk), {"ok": ok, "error": None})
    record.write(cell)
    return record


def test_usable_only_while_whole_and_of_the_disk_as_it_is(tmp_path):
    cell = RunDir(tmp_path).cell("007")
    record = _fake_read(cell)
    assert prefetch.usable(cell, cell.result_disk) == record
    # touched (same bytes, new mtime)
    st = cell.result_disk.stat()
    os.utime(cell.result_disk, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert prefetch.usable(cell, cell.result_disk) is None
    PrefetchRecord(DiskIdentity.of(cell.result_disk), record.report).write(cell)  # a read of it as it is
    assert prefetch.usable(cell, cell.result_disk) is not None
    # the tree replaced by a link
    prefetch.discard(cell)
    assert not cell.prefetch.exists()
    _fake_read(cell)
    os.rename(cell.prefetched_output, tmp_path / "elsewhere")
    cell.prefetched_output.symlink_to(tmp_path / "elsewhere")
    assert prefetch.usable(cell, cell.result_disk) is None


@pytest.mark.parametrize("damage", ["missing", "half-written", "other-schema", "failed-read", "disk-gone"])
def test_a_damaged_read_ahead_is_not_used(tmp_path, damage):
    cell = RunDir(tmp_path).cell("008")
    _fake_read(cell, ok=damage != "failed-read")
    if damage == "missing":
        cell.prefetch_record.unlink()
    elif damage == "half-written":
        text = cell.prefetch_record.read_text()
        cell.prefetch_record.write_text(text[: len(text) // 2])
    elif damage == "other-schema":
        data = json.loads(cell.prefetch_record.read_text())
        cell.prefetch_record.write_text(json.dumps({**data, "version": 99}))
    elif damage == "disk-gone":
        cell.result_disk.unlink()
    assert prefetch.usable(cell, cell.result_disk) is None
    prefetch.discard(cell)
    assert not cell.prefetch.exists()


def test_disks_gone_or_extractor_closed(tmp_path):
    """A cell whose disk is gone is skipped (nothing launched, nothing left); a closed
    extractor takes no more disks."""
    cell = RunDir(tmp_path).cell("009")
    cell.path.mkdir(parents=True)
    cell.prefetch.mkdir()
    (cell.prefetch / "output").mkdir()  # an earlier read cut short
    extractor = BatchExtractor(others_running=lambda: True, gather_s=0.2)
    assert extractor.read_ahead(cell, threading.Event())
    assert not cell.prefetch.exists()
    extractor.close()
    assert not extractor.read_ahead(cell, threading.Event())


def test_executor_reads_ahead_for_the_post_scripts(tmp_path, caplog):
    """The executor path with real POST scripts (`osgtest-dag node post-vm`, as the matrix DAG
    runs them): TestRun jobs that end together (local jobs standing in for VMs, copying a
    result disk back) get their disks read ahead in fewer batches than cells, by the run's one
    standing appliance, and every POST script uses that read instead of launching its own."""
    caplog.set_level(logging.INFO, logger="osgtest_dag")
    run = RunDir(tmp_path / "run")
    serials = ("001", "002", "003")
    tool = Path(sys.executable).parent / "osgtest-dag"
    lines = []
    for s in serials:
        cell = _cell(run, s)
        _result_disk(cell, "pass", tmp_path)
        os.rename(cell.result_disk, tmp_path / f"returned-{s}.qcow2")
        lines += [
            f"JOB {vm_node(s)} back.sub",
            f'VARS {vm_node(s)} serial="{s}"',
            f"SCRIPT POST {vm_node(s)} {tool} -v node post-vm $JOB $RETURN $RETRY $MAX_RETRIES",
        ]
    (run.path / "back.sub").write_text(
        "universe = local\nexecutable = /bin/sh\n"
        # every VM "ends" once all three disks are back: within a tenth of a second
        f"arguments = \"-c 'cp {tmp_path}/returned-$(serial).qcow2 cells/$(serial)/result-$(serial).qcow2; "
        "while [ $(ls cells/*/result-*.qcow2 | wc -l) -lt 3 ]; do sleep 0.1; done'\"\n"
        "queue\n"
    )
    run.logs.mkdir()
    dag = run.path / "m.dag"
    dag.write_text("\n".join(lines) + "\n")
    assert executor.run_dag(dag, executor.Options(local_jobs=3)) is True
    said = [r.getMessage() for r in caplog.records]
    batches = [m for m in said if "ahead in one batch" in m]
    assert 1 <= len(batches) < len(serials) == sum(int(b.split()[1]) for b in batches), said
    # one appliance for the run, started when the first cell's job did; none per batch
    assert sum(m.startswith("standing appliance up") for m in said) == 1, said
    assert not _launches(caplog), said
    for s in serials:
        post_log = (run.logs / f"{vm_node(s)}.post.log").read_text()
        assert "using the result disk as the local executor read it ahead" in post_log, post_log
        assert "appliance up" not in post_log
        cell = run.cell(s)
        assert json.loads(cell.guest_result.read_text())["status"] == "pass"
        assert json.loads(cell.extraction.read_text())["ok"] is True
        assert not cell.prefetch.exists()
