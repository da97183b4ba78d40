"""The run-directory model: the node-name codec, the paths, and every typed document's round
trip (to_json -> from_json gives the same value) and refusals (the wrong schema or version,
naming the file)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import FIXTURES

from osgtest_dag.base.errors import UserError
from osgtest_dag.model.cell import (
    CellConfig,
    CellPlatform,
    CellSource,
    CellTest,
    NetworkCheck,
    RepoRetries,
    RepoSetup,
    Repositories,
    VmSize,
)
from osgtest_dag.model.documents import (
    GuestResult,
    Phase,
    PostDecision,
    PostHistory,
    Verdict,
    VmRecord,
    read_document,
)
from osgtest_dag.model.manifest import RunManifest, WorkflowOptions
from osgtest_dag.model.outcome import ORDERED, Outcome
from osgtest_dag.model.results import KnownFailuresInfo, ResultsDocument, RunInfo
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
        "CreateDisk004",
        "TestRun004",
        "ProcessResult004",
        "CleanOutput004",
    ]
    assert vm_node("004") == "TestRun004"
    cell = RunDir(tmp_path).cell("004")
    assert cell.path == tmp_path / "cells" / "004"
    assert str(cell.rel) == "cells/004"
    assert cell.io_disk.name == "io-004.qcow2" and cell.result_disk.name == "result-004.qcow2"
    assert cell.guest_result == tmp_path / "cells" / "004" / "output" / "result.json"
    assert cell.post_vm.parent == cell.local_vm.parent == cell.path


# ------------------------------------------------------------------------------ documents
POST = PostHistory(
    (
        PostDecision(
            attempt=0,
            verdict=Verdict.INFRA,
            reason="no result disk came back",
            exit=1,
            max_retries=2,
            job_exit=-1004,
            time="2026-11-21T22:00:00Z",
        ),
        PostDecision(
            attempt=1,
            verdict=Verdict.DONE,
            reason="guest finished: test",
            exit=0,
            max_retries=2,
            job_exit=0,
            guest_status="test",
            guest_exit_code=1,
        ),
    )
)
VM = VmRecord(
    node="TestRun000",
    starts=2,
    timed_out=True,
    wall_s=90.25,
    returncode=None,
    accel="tcg",
    console="console.0.2.log",
)
GUEST = GuestResult(
    status="test",
    exit_code=1,
    serial="000",
    started="2026-11-21T22:00:00Z",
    finished="2026-11-21T22:03:10Z",
    current_phase=None,
    message=None,
    phases=(Phase("install", "ok", 0, "a", "b", "install.log"), Phase("test", "failed", 1)),
)


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
        f.write('{"schema": "osgtest-dag/local-vm", "ver')  # a line cut by a killed executor
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
    path.write_text(json.dumps([{"verdict": "infra", "reason": "x"}]))  # before version 1
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
    assert [o.value for o in Outcome if o.needs_rerun] == [
        "fail",
        "update",
        "install",
        "timeout",
        "infra",
        "missing",
    ]


def test_manifest_and_results_refused_naming_the_file(tmp_path):
    run = RunDir(Path(tmp_path))
    run.manifest.write_text(json.dumps({"schema": "osgtest-dag/run", "version": 7}))
    with pytest.raises(UserError, match="version 7") as e:
        RunManifest.read(run.path)
    assert str(run.manifest) in str(e.value)
    run.results.write_text(json.dumps({"schema": "osgtest-dag/results", "version": 7}))
    with pytest.raises(UserError, match="version 7") as e:
        ResultsDocument.read(run.path)
    assert str(run.results) in str(e.value)


# ------------------------------------------------------------------------------ run.json, cells.jsonl, results.json
OPTIONS = WorkflowOptions(
    tool="/opt/osgtest-dag",
    vm_type="xen",
    max_wall=600,
    max_starts=2,
    max_queue_time=900,
    vm_retries=1,
    disk_retries=2,
    local_io_maxjobs=4,
    extra_requirements="Memory > 4",
    excluded_hosts=("bad1.example.org", "bad2.example.org"),
    template_dir="/t",
    node_status_interval=5,
    iodisk_size_mb=32,
    iodisk_backend="guestfs",
    batch_name="b",
    nightly=True,
    keep_disks=True,
    environment=(("A", "1"), ("B", "two")),
)
MANIFEST = RunManifest(
    generated="2026-11-21T22:00:00Z",
    tool_version="1.2",
    run_name="nightly",
    cells=3,
    options=OPTIONS,
    param_files=("/p/a.yaml", "/p/b.yaml"),
    image_dir="/images",
)
CELL = CellConfig(
    serial="007",
    platform=CellPlatform(
        id="debian_12.x86_64",
        os="debian_12",
        family="debian",
        distro="debian",
        major=12,
        arch="x86_64",
        name="Debian 12 (x86_64)",
        codename="bookworm",
        image="/images/debian_12.qcow2",
        image_format="qcow2",
    ),
    source=CellSource(
        raw="stable; main > updates",
        test_source="osg:main",
        series="stable",
        repos=("main",),
        update_series=None,
        update_repos=("updates",),
    ),
    label="Hello",
    packages=("hello", "cowsay"),
    selinux=False,
    repositories=Repositories(
        initial=RepoSetup(apt_sources=("deb http://deb.debian.org/debian bookworm main",)),
        update=RepoSetup(setup_packages=("x.deb",), enable=("u",)),
    ),
    test=CellTest(command="hello", timeout=3600, kind="command"),
    vm=VmSize(memory=2048, vcpus=2, disk=8192),
    network=NetworkCheck(check_host="deb.debian.org", retries=5),
    retries=RepoRetries(count=3, backoff=10),
    nightly=True,
    param_file="debian.yaml",
)
RESULTS = ResultsDocument(
    generated="2026-11-22T01:00:00Z",
    tool_version="1.2",
    run=RunInfo(
        name="nightly",
        dir="/runs/nightly",
        generated="2026-11-21T22:00:00Z",
        cells=2,
        param_files=("/p/a.yaml",),
    ),
    worst=Outcome.FAIL,
    counts={"by_outcome": {"pass": 1, "fail": 1}, "by_os": []},
    known_failures=KnownFailuresInfo(files=("kf.yaml",), entries=3, warnings=("expired: x",)),
    component_tags="tags.yaml",
    cells=(
        {"serial": "000", "outcome": "pass"},
        {"serial": "001", "outcome": "fail", "failures": [{"test": "t"}]},
    ),
)


def _round_trip(value, cls):
    first = value.to_json()
    back = cls.from_json(json.loads(json.dumps(first)), "doc.json")
    assert back == value
    assert back.to_json() == first
    return first


@pytest.mark.parametrize(
    "value",
    [MANIFEST, replace(MANIFEST, options=WorkflowOptions(), param_files=())],
    ids=["every-option", "defaults"],
)
def test_run_manifest_round_trip(value):
    doc = _round_trip(value, RunManifest)
    assert doc["schema"] == "osgtest-dag/run" and doc["version"] == 1
    assert doc["options"]["environment"] == dict(value.options.environment)


def test_cell_config_round_trip():
    _round_trip(CELL, CellConfig)
    _round_trip(
        replace(
            CELL,
            repositories=Repositories(RepoSetup()),
            test=CellTest(None, 14400, "osg-test"),
            platform=replace(CELL.platform, codename=None),
        ),
        CellConfig,
    )


@pytest.mark.parametrize(
    "test, kind",
    [
        ({"command": "hello", "timeout": 60, "osg_test": False}, "command"),
        ({"command": None, "timeout": 60, "osg_test": True}, "osg-test"),
        # before kinds, only a cluster cell had neither a command nor osg-test
        ({"command": None, "timeout": 60, "osg_test": False}, "stages"),
    ],
)
def test_a_cell_test_without_kind_gets_it_derived(test, kind):
    doc = CELL.to_json()
    doc["test"] = test
    cfg = CellConfig.from_json(doc, "cell.json")
    assert (cfg.test.kind, cfg.test.command, cfg.test.osg_test) == (kind, test["command"], test["osg_test"])
    assert cfg.test.to_json() == {**test, "kind": kind}


@pytest.mark.parametrize(
    "test, message",
    [
        ({"kind": "unit-tests"}, "`test.kind` is not one of osg-test, command, install-only, stages"),
        ({"kind": "install-only"}, "`test.command` and `test.kind` (install-only) disagree"),
        ({"command": None, "kind": "command"}, "`test.command` and `test.kind` (command) disagree"),
    ],
)
def test_a_cell_test_whose_kind_does_not_fit_is_refused(test, message):
    doc = CELL.to_json()
    doc["test"] = {**doc["test"], **test}
    with pytest.raises(UserError) as e:
        CellConfig.from_json(doc, "cell.json")
    assert message in e.value.message and str(e.value.where) == "cell.json"


def test_results_document_round_trip():
    doc = _round_trip(RESULTS, ResultsDocument)
    assert [o["name"] for o in doc["outcomes"]] == [o.value for o in ORDERED]
    assert RESULTS.outcomes() == {"000": Outcome.PASS, "001": Outcome.FAIL}


def test_options_missing_take_defaults_unknown_ignored():
    doc = MANIFEST.to_json()
    doc["options"] = {"max_wall": 60, "some_future_option": 1}
    assert RunManifest.from_json(doc, "run.json").options == WorkflowOptions(max_wall=60)


@pytest.mark.parametrize(
    "cls,value", [(RunManifest, MANIFEST), (CellConfig, CELL), (ResultsDocument, RESULTS)]
)
def test_documents_refuse_other_schemas_and_versions(tmp_path, cls, value):
    path = tmp_path / "doc.json"
    for change, message in (({"schema": "osgtest-dag/other"}, "not an"), ({"version": 99}, "version 99")):
        path.write_text(json.dumps({**value.to_json(), **change}))
        with pytest.raises(UserError, match=message) as e:
            cls.from_json(json.loads(path.read_text()), path)
        assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "cls,value,field,bad,message",
    [
        (RunManifest, MANIFEST, "cells", "3", "`cells` is not an integer"),
        (RunManifest, MANIFEST, "options", {"max_wall": "long"}, "`options.max_wall` is not an integer"),
        (CellConfig, CELL, "platform", {"id": "x"}, "`platform.os` is missing"),
        (CellConfig, CELL, "packages", "hello", "`packages` is not a list of strings"),
        (ResultsDocument, RESULTS, "worst", "bad", "`worst` is not an outcome"),
        (ResultsDocument, RESULTS, "cells", [{"serial": "0"}], "`cells` is not a list of cell entries"),
    ],
)
def test_documents_refuse_bad_fields_naming_file_and_field(cls, value, field, bad, message):
    with pytest.raises(UserError, match=message) as e:
        cls.from_json({**value.to_json(), field: bad}, "/runs/x/doc.json")
    assert "/runs/x/doc.json" in str(e.value)


def test_a_generated_runs_documents_round_trip(tmp_path):
    """The run.json and cells.jsonl `generate` writes for the reference parameters read back
    typed, and write back byte for byte (cells.jsonl) and value for value (run.json)."""
    from osgtest_dag.generate.cellconfig import iter_cells, read_cell, write_store
    from osgtest_dag.generate.workflow import write_run
    from osgtest_dag.plan import matrix
    from osgtest_dag.plan.catalog import Catalog

    catalog = Catalog.load(image_dir="/images")
    m = matrix.build([FIXTURES / "parameters.d"], catalog)
    run = RunDir(
        write_run(
            tmp_path / "run",
            list(m.cells),
            catalog,
            WorkflowOptions(tool="/x", nightly=True),
            param_files=list(m.files),
        )
    )
    raw = json.loads(run.manifest.read_text())
    manifest = RunManifest.read(run.path)
    assert manifest.to_json() == raw
    assert manifest.cells == len(m.cells) and manifest.options.nightly
    cells = list(iter_cells(run.path))
    assert len(cells) == len(m.cells) and all(c.nightly for c in cells)
    for line, cell in zip(run.cell_store.read_text().splitlines(), cells, strict=True):
        assert CellConfig.from_json(json.loads(line), run.cell_store) == cell
    write_store(tmp_path / "again.jsonl", cells)
    assert (tmp_path / "again.jsonl").read_bytes() == run.cell_store.read_bytes()
    assert read_cell(run.path, cells[-1].serial) == cells[-1]
