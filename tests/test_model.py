"""The run-directory model: the node-name codec, the paths, and every typed document's round
trip (to_json -> from_json gives the same value) and refusals (the wrong schema or version,
naming the file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import (GuestResult, Phase, PostDecision, PostHistory, Verdict, VmRecord,
                                         read_document)
from osgtest_dag.model.outcome import Outcome
from osgtest_dag.model.rundir import LAYERS, NodeName, RunDir, vm_node


# ------------------------------------------------------------------------------ node names
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("serial", ["000", "007", "1000"])
def test_node_name_round_trip(layer, serial):
    name = NodeName(layer, serial)
    assert NodeName.parse(name.format()) == name
    assert str(name) == f"{layer}{serial}"


@pytest.mark.parametrize("text", ["Matrix", "Analyze", "MatrixFinal", "TestRun", "Bogus007", "TestRun 7"])
def test_node_name_refuses_other_nodes(text):
    assert NodeName.parse_or_none(text) is None
    with pytest.raises(ValueError):
        NodeName.parse(text)


def test_cell_nodes_and_paths(tmp_path):
    assert [n.format() for n in NodeName.of_cell("004")] == [
        "CreateDisk004", "TestRun004", "ProcessResult004", "CleanOutput004"]
    assert vm_node("004") == "TestRun004"
    cell = RunDir(tmp_path).cell("004")
    assert cell.path == tmp_path / "cells" / "004"
    assert str(cell.rel) == "cells/004"
    assert cell.io_disk.name == "io-004.qcow2" and cell.result_disk.name == "result-004.qcow2"
    assert cell.guest_result == tmp_path / "cells" / "004" / "output" / "result.json"
    assert cell.post_vm.parent == cell.local_vm.parent == cell.path


# ------------------------------------------------------------------------------ documents
POST = PostHistory((
    PostDecision(attempt=0, verdict=Verdict.INFRA, reason="no result disk came back", exit=1, max_retries=2,
                 job_exit=-1004, time="2026-11-21T22:00:00Z"),
    PostDecision(attempt=1, verdict=Verdict.DONE, reason="guest finished: test", exit=0, max_retries=2,
                 job_exit=0, guest_status="test", guest_exit_code=1),
))
VM = VmRecord(node="TestRun000", starts=2, timed_out=True, wall_s=90.25, returncode=None, accel="tcg",
              console="console.0.2.log")
GUEST = GuestResult(status="test", exit_code=1, serial="000", started="2026-11-21T22:00:00Z",
                    finished="2026-11-21T22:03:10Z", current_phase=None, message=None,
                    phases=(Phase("install", "ok", 0, "a", "b", "install.log"), Phase("test", "failed", 1)))


@pytest.mark.parametrize("doc", [POST, GUEST], ids=["post-vm", "guest-result"])
def test_document_round_trip(doc, tmp_path):
    assert type(doc).from_json(json.loads(json.dumps(doc.to_json())), "x") == doc
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc.to_json()))
    assert type(doc).read(path) == doc


def test_vm_records_round_trip_and_append(tmp_path):
    assert VmRecord.from_json(json.loads(json.dumps(VM.to_json())), "x") == VM
    path = tmp_path / "local-vm.json"
    VmRecord.append(path, VM)
    with open(path, "a") as f:
        f.write('{"schema": "osgtest-dag/local-vm", "ver')   # a line cut by a killed executor
    assert VmRecord.read_all(path) == (VM,)
    assert VmRecord.read_all(tmp_path / "absent") == ()


@pytest.mark.parametrize("doc", [POST, VM, GUEST], ids=["post-vm", "local-vm", "guest-result"])
@pytest.mark.parametrize("change", [{"schema": "osgtest-dag/other"}, {"version": 99}])
def test_documents_refuse_other_schema_or_version(doc, change, tmp_path):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({**doc.to_json(), **change}))
    with pytest.raises(UserError) as e:
        type(doc).from_json(json.loads(path.read_text()), path)
    assert str(path) in str(e.value)


def test_old_post_history_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "post-vm.json"
    path.write_text(json.dumps([{"verdict": "infra", "reason": "x"}]))   # before version 1
    with pytest.raises(UserError, match="post-vm") as e:
        PostHistory.read(path)
    assert str(path) in str(e.value)


def test_reader_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON") as e:
        read_document(path, "osgtest-dag/run", 1)
    assert str(path) in str(e.value)
    with pytest.raises(UserError, match="file not found"):
        read_document(tmp_path / "absent.json", "osgtest-dag/run", 1)


def test_guest_result_never_read_through_a_symlink(tmp_path):
    target = tmp_path / "host-file.json"
    target.write_text(json.dumps(GUEST.to_json()))
    link = tmp_path / "result.json"
    link.symlink_to(target)
    with pytest.raises(UserError):
        GuestResult.read(link)


def test_outcome_sets_for_rerun():
    assert [o.value for o in Outcome if o.product_failure] == ["fail", "update", "install", "timeout"]
    assert [o.value for o in Outcome if o.needs_rerun] == ["fail", "update", "install", "timeout", "infra",
                                                          "missing"]


def test_manifest_and_results_refused_naming_the_file(tmp_path):
    from osgtest_dag.analyze.results import load_results
    from osgtest_dag.generate.workflow import load_manifest
    run = RunDir(Path(tmp_path))
    run.manifest.write_text(json.dumps({"schema": "osgtest-dag/run", "version": 7}))
    with pytest.raises(UserError, match="version 7") as e:
        load_manifest(run.path)
    assert str(run.manifest) in str(e.value)
    run.results.write_text(json.dumps({"schema": "osgtest-dag/results", "version": 7}))
    with pytest.raises(UserError, match="version 7") as e:
        load_results(run.path)
    assert str(run.results) in str(e.value)
