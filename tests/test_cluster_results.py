"""A cluster cell's outcome, results.json entry and reports, from run directories written as the
cluster runner and the extraction leave them (docs/clusters.md): a real generated run whose
`Web cluster` cell is made a cluster (cells.jsonl and cell.json through CellConfig), each VM's
output/result.json and stage logs, post-vm.json."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import make_results_run

from osgtest_dag.analyze import results
from osgtest_dag.generate import cellconfig
from osgtest_dag.model.cell import CellConfig
from osgtest_dag.model.cluster import CellCluster, ClusterRole, ClusterStage
from osgtest_dag.model.documents import GuestResult, Phase
from osgtest_dag.model.outcome import Evidence, Outcome, derive, derive_members
from osgtest_dag.model.rundir import RunDir
from osgtest_dag.report import html as report_html
from osgtest_dag.report import junit as report_junit
from osgtest_dag.report import text as report_text

PARAMS = {
    "web.yaml": """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Web cluster
    packages: [curl]
    selinux: false
    test_command: "true"
  - label: Hello
    packages: [hello]
    selinux: false
    test_command: hello
""",
}
CLUSTER = CellCluster(
    roles=(ClusterRole("server", 1, packages=("nginx-light",), memory=1024), ClusterRole("client", 2)),
    stages=(
        ClusterStage("init", commands=(("server", "systemctl start nginx"),)),
        ClusterStage("run", commands=(("client", "curl -fsS http://server-1/"),)),
        ClusterStage("finalize", all="journalctl --no-pager -n 50"),
    ),
)
VMS = ("server-1", "client-1", "client-2")
PHASES = ("environment", "network", "hostname", "repositories", "install", "test", "collect")
T0 = "2026-11-30T22:{:02d}:00Z"


@dataclasses.dataclass
class ClusterRun:
    dir: Path
    serial: str  # the cluster cell
    other: str  # a one-VM cell of the same run

    def vm(self, name: str) -> Path:
        return RunDir(self.dir).cell(self.serial).vm_dir(name).path

    def guest(
        self, name: str, stages: dict[str, tuple[str, int | None]], *, failed_test: bool = False
    ) -> None:
        """A VM's output/result.json as run-job writes it, with `stages` (name -> status,
        exit code) in order, and their logs; the test phase fails when one of its own failed."""
        out = self.vm(name) / "output"
        (out / "stages").mkdir(parents=True, exist_ok=True)
        phases = [
            {
                "name": p,
                "start": T0.format(i),
                "end": T0.format(i + 1),
                "exit_code": 1 if (p == "test" and failed_test) else 0,
                "status": "failed" if (p == "test" and failed_test) else "ok",
                "log": f"{p}.log",
            }
            for i, p in enumerate(PHASES)
        ]
        records = []
        for i, (stage, (status, code)) in enumerate(stages.items()):
            ran = status != "skipped"
            if ran:
                (out / "stages" / f"{stage}.log").write_text(f"{stage} on {name}\n")
            records.append(
                {
                    "name": stage,
                    "status": status,
                    "exit_code": code,
                    "start": f"2026-11-30T22:10:{10 * i:02d}Z" if ran else None,
                    "end": f"2026-11-30T22:10:{10 * i + 3:02d}Z" if ran else None,
                    "log": f"stages/{stage}.log" if ran else None,
                }
            )
        doc = GuestResult(
            status="test" if failed_test else "pass",
            exit_code=1 if failed_test else 0,
            serial=self.serial,
            started=T0.format(0),
            finished=T0.format(len(PHASES) + (2 if name == "client-2" else 0)),
            phases=tuple(Phase(**p) for p in phases),
            vm=name,
            role=name.split("-")[0],
            stages=tuple(Phase(**r) for r in records),
        ).to_json()
        (out / "result.json").write_text(json.dumps(doc, indent=1))
        (self.vm(name) / "extraction.json").write_text(
            json.dumps({"schema": "osgtest-dag/extraction", "version": 1, "ok": True, "files": 12})
        )

    def post_vm_done(self) -> None:
        """The POST script's decision on the cell's one job: it finished."""
        d = RunDir(self.dir).cell(self.serial).path
        (d / "post-vm.json").write_text(
            json.dumps(
                {
                    "schema": "osgtest-dag/post-vm",
                    "version": 1,
                    "decisions": [
                        {"attempt": 0, "verdict": "done", "reason": "the cluster runner finished", "exit": 0}
                    ],
                }
            )
        )


def _cluster_run(root: Path, cluster: CellCluster) -> ClusterRun:
    """A generated run of two cells, the first made a cluster."""
    r = make_results_run(root, params=PARAMS)
    configs = list(cellconfig.iter_cells(r.dir))
    web = next(c for c in configs if c.label == "Web cluster")
    configs = [dataclasses.replace(c, cluster=cluster) if c is web else c for c in configs]
    cellconfig.write_store(RunDir(r.dir).cell_store, configs)
    cell_json = RunDir(r.dir).cell(web.serial).config
    cell_json.parent.mkdir(parents=True, exist_ok=True)
    cell_json.write_text(json.dumps(dataclasses.replace(web, cluster=cluster).to_json()))
    assert CellConfig.read(cell_json).cluster == cluster
    other = next(c.serial for c in configs if c.label == "Hello")
    return ClusterRun(r.dir, web.serial, other)


@pytest.fixture
def crun(tmp_path) -> ClusterRun:
    """The 3-VM cluster (1 server, 2 clients)."""
    return _cluster_run(tmp_path, CLUSTER)


ALL_OK = {"init": ("ok", 0), "run": ("ok", 0), "finalize": ("ok", 0)}
INIT_FAILED = {"init": ("failed", 1), "run": ("skipped", None), "finalize": ("ok", 0)}
INIT_OK_RUN_SKIPPED = {"init": ("ok", 0), "run": ("skipped", None), "finalize": ("ok", 0)}


def _analyze(crun: ClusterRun) -> tuple[dict, results.ResultsDocument]:
    doc = results.analyze_run(crun.dir)
    cell = doc.cell(crun.serial)
    assert cell is not None
    return cell, doc


def test_every_vm_passes(crun):
    for vm in VMS:
        crun.guest(vm, ALL_OK)
    crun.post_vm_done()
    cell, doc = _analyze(crun)
    assert (cell["outcome"], cell["reason"]) == ("pass", "all 3 VMs passed")
    assert [(v["name"], v["role"], v["outcome"]) for v in cell["vms"]] == [
        ("server-1", "server", "pass"),
        ("client-1", "client", "pass"),
        ("client-2", "client", "pass"),
    ]
    assert all(s["status"] == "ok" for v in cell["vms"] for s in v["stages"])
    # one cell per cluster in every count (the other cell has no result: missing)
    assert doc.run.cells == 2 and len(doc.cells) == 2
    assert doc.counts["by_outcome"]["pass"] == 1 and doc.counts["by_outcome"]["missing"] == 1
    assert [g["cells"] for g in doc.counts["by_package_set"]] == [1, 1]
    # merged over the VMs: started at the first VM's start, finished at the last VM's end
    assert (cell["started"], cell["finished"]) == (T0.format(0), T0.format(9))
    assert cell["durations"]["total"] == 540.0 and cell["durations"]["test"] == 60.0
    assert [p["status"] for p in cell["phases"]] == ["ok"] * len(PHASES)
    assert cell["guest_status"] == "pass" and cell["exit_code"] == 0
    # a single cell without a result is untouched: no `vms`
    assert "vms" not in doc.cell(crun.other)


def test_init_fails_on_server_1(crun):
    crun.guest("server-1", INIT_FAILED, failed_test=True)
    crun.guest("client-1", INIT_OK_RUN_SKIPPED)
    crun.guest("client-2", INIT_OK_RUN_SKIPPED)
    crun.post_vm_done()
    cell, doc = _analyze(crun)
    assert (cell["outcome"], cell["reason"]) == ("fail", "init failed on server-1 (exit 1)")
    rel = f"cells/{crun.serial}/vms"

    def stages(vm: str, init: tuple[str, int], init_log: bool = True) -> list[dict]:
        return [
            {
                "name": "init",
                "status": init[0],
                "exit_code": init[1],
                "start": "2026-11-30T22:10:00Z",
                "end": "2026-11-30T22:10:03Z",
                "log": f"{rel}/{vm}/output/stages/init.log",
            },
            {"name": "run", "status": "skipped", "exit_code": None, "start": None, "end": None, "log": None},
            {
                "name": "finalize",
                "status": "ok",
                "exit_code": 0,
                "start": "2026-11-30T22:10:20Z",
                "end": "2026-11-30T22:10:23Z",
                "log": f"{rel}/{vm}/output/stages/finalize.log",
            },
        ]

    assert cell["vms"] == [
        {
            "name": "server-1",
            "role": "server",
            "outcome": "fail",
            "reason": "stage init failed (exit 1)",
            "stages": stages("server-1", ("failed", 1)),
        },
        {
            "name": "client-1",
            "role": "client",
            "outcome": "pass",
            "reason": "all phases passed",
            "stages": stages("client-1", ("ok", 0)),
        },
        {
            "name": "client-2",
            "role": "client",
            "outcome": "pass",
            "reason": "all phases passed",
            "stages": stages("client-2", ("ok", 0)),
        },
    ]
    # the cell stands on the VM its reason names; its main log is the failed stage's
    assert cell["guest_status"] == "test" and cell["exit_code"] == 1
    assert cell["logs"]["main"] == f"{rel}/server-1/output/stages/init.log"
    assert (crun.dir / cell["logs"]["main"]).read_text() == "init on server-1\n"
    assert next(p for p in cell["phases"] if p["name"] == "test") == {
        "name": "test",
        "status": "failed",
        "exit_code": 1,
    }
    assert doc.counts["by_outcome"]["fail"] == 1 and doc.worst is Outcome.MISSING  # the other cell
    # status, rerun and the FINAL node decide as results.json does
    assert results.cell_outcomes(crun.dir)[crun.serial] == (Outcome.FAIL, "init failed on server-1 (exit 1)")


def test_a_vm_that_never_came_back_is_missing_as_a_cell_without_result(crun):
    crun.guest("server-1", ALL_OK)
    crun.guest("client-1", ALL_OK)  # client-2's directory was never made
    cell, _ = _analyze(crun)
    single = derive(Evidence())
    assert single[0] is Outcome.MISSING
    assert (cell["outcome"], cell["reason"]) == ("missing", f"client-2: {single[1]}")
    assert cell["vms"][2] == {
        "name": "client-2",
        "role": "client",
        "outcome": "missing",
        "reason": single[1],
        "stages": [
            {"name": n, "status": None, "exit_code": None, "start": None, "end": None, "log": None}
            for n in ("init", "run", "finalize")
        ],
    }
    assert [v["outcome"] for v in cell["vms"][:2]] == ["pass", "pass"]
    assert cell["finished"] is None and "total" not in cell["durations"]  # not every VM finished


def test_a_vm_missing_after_the_job_finished_is_infra(crun):
    crun.guest("server-1", ALL_OK)
    crun.guest("client-1", ALL_OK)
    crun.post_vm_done()
    cell, _ = _analyze(crun)
    reason = "no result came back from the VM (the cluster runner finished (after 1 attempt))"
    assert (cell["outcome"], cell["reason"]) == ("infra", f"client-2: {reason}")
    assert cell["vms"][2]["outcome"] == "infra" and cell["vms"][2]["reason"] == reason


def test_worst_over_vms_in_the_outcome_order():
    """derive: install on one VM is worse than fail on another; ties name every VM."""
    passed = GuestResult(status="pass", phases=(Phase("test", exit_code=0),))
    failed = GuestResult(
        status="test",
        phases=(Phase("test", exit_code=1),),
        stages=(Phase("init", status="ok", exit_code=0), Phase("run", status="failed", exit_code=7)),
    )
    install = GuestResult(status="install", phases=(Phase("install", exit_code=100),))
    e = Evidence(members=(("a-1", Evidence(guest=failed)), ("b-1", Evidence(guest=install))))
    assert derive(e) == (Outcome.INSTALL, "b-1: installing the package set failed (exit 100)")
    e = Evidence(
        members=(
            ("a-1", Evidence(guest=failed)),
            ("a-2", Evidence(guest=passed)),
            ("a-3", Evidence(guest=failed)),
        )
    )
    assert derive(e) == (Outcome.FAIL, "run failed on a-1 (exit 7); fail on a-3 too")
    assert [o for _, o, _ in derive_members(e)] == [Outcome.FAIL, Outcome.PASS, Outcome.FAIL]
    hung = GuestResult(status="test", stages=(Phase("run", status="failed", exit_code=124),))
    assert derive(Evidence(members=(("a-1", Evidence(guest=hung)),))) == (
        Outcome.TIMEOUT,
        "run timed out on a-1 (exit 124)",
    )


def test_reports_show_the_vm_by_stage_grid(crun, tmp_path):
    crun.guest("server-1", INIT_FAILED, failed_test=True)
    crun.guest("client-1", INIT_OK_RUN_SKIPPED)
    crun.guest("client-2", INIT_OK_RUN_SKIPPED)
    crun.post_vm_done()
    _, doc = _analyze(crun)

    out = tmp_path / "report" / "index.html"
    page = report_html.render(doc, out_path=out)
    section = page.split('<section id="clusters">')[1].split("</section>")[0]
    assert f'id="cluster-{crun.serial}"' in section
    head = section.split("<thead>")[1].split("</thead>")[0]
    assert (
        head == "<tr><th>VM</th><th>role</th><th>outcome</th><th>init</th><th>run</th><th>finalize</th></tr>"
    )
    rows = section.split("<tbody>")[1].split("</tbody>")[0].split("</tr>")[:-1]
    assert [r.split('data-vm="')[1].split('"')[0] for r in rows] == list(VMS)
    server = rows[0]
    assert "<td>server</td>" in server and ">fail</td>" in server
    log = f"../run/cells/{crun.serial}/vms/server-1/output/stages/init.log"
    assert 'class="stage s-failed" data-stage="init"' in server
    assert f'failed (exit 1) <a href="{log}">log</a>' in server
    assert (out.parent / log).resolve().read_text() == "init on server-1\n"
    assert server.count("s-skipped") == 1 and server.count("s-ok") == 1
    assert all(">pass</td>" in r and "s-failed" not in r for r in rows[1:])
    assert f'href="#cluster-{crun.serial}"' in page  # the details link to the grid

    xml = report_junit.render(doc)
    root = ET.fromstring(xml.split("\n", 1)[1])
    suite = next(s for s in root if s.get("id") == crun.serial)
    cases = {
        c.get("name"): c for c in suite if c.tag == "testcase" and c.get("classname") == f"cell{crun.serial}"
    }
    assert sorted(cases) == sorted(f"{vm}.{st}" for vm in VMS for st in ("init", "run", "finalize"))
    assert [c.tag for c in cases["server-1.init"]] == ["failure"]
    assert cases["server-1.init"][0].get("message") == "exit code 1"
    for vm in VMS:
        assert [c.tag for c in cases[f"{vm}.run"]] == ["skipped"]
        assert list(cases[f"{vm}.finalize"]) == [] and cases[f"{vm}.finalize"].get("time") == "3.000"
    assert list(cases["client-1.init"]) == []
    # the suite's counts include them: 7 phases (test failed), 9 stages (1 failed, 3 skipped)
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("16", "2", "3")

    text = report_text.render(doc)
    line = text.split(f"  {crun.serial} ")[1].split("\n")
    assert line[0].split()[0] == "fail" and line[1].strip() == "init failed on server-1 (exit 1)"
    assert line[2].strip() == "VM server-1 (server) fail in init (exit 1): stage init failed (exit 1)"


def test_junit_of_a_cluster_cell_is_valid(crun, tmp_path):
    from lxml import etree  # optional: the JUnit schema check

    crun.guest("server-1", INIT_FAILED, failed_test=True)
    crun.guest("client-1", INIT_OK_RUN_SKIPPED)  # client-2 never came back
    _, doc = _analyze(crun)
    schema = etree.XMLSchema(etree.parse(str(Path(__file__).parent / "data" / "junit-10.xsd")))
    path = tmp_path / "junit.xml"
    path.write_text(report_junit.render(doc), encoding="utf-8")
    assert schema.validate(etree.parse(str(path))), schema.error_log
    suite = next(s for s in ET.parse(path).getroot() if s.get("id") == crun.serial)
    skipped = {c.get("name"): c[0].get("message") for c in suite if len(c) and c[0].tag == "skipped"}
    assert skipped["client-2.init"] == f"no record of this stage: {derive(Evidence())[1]}"


def test_a_network_booted_vm_without_result_does_not_count(tmp_path):
    pxe = dataclasses.replace(CLUSTER, roles=(*CLUSTER.roles, ClusterRole("node", 1, boot="network")))
    crun = _cluster_run(tmp_path, pxe)
    for vm in VMS:
        crun.guest(vm, ALL_OK)
    crun.post_vm_done()
    cell, _ = _analyze(crun)
    assert (cell["outcome"], cell["reason"]) == ("pass", "all 3 VMs passed")
    assert cell["vms"][3] == {
        "name": "node-1",
        "role": "node",
        "outcome": None,
        "reason": "booted over the network: no result of its own (its console log is its evidence)",
        "stages": [],
    }
    assert "VM node-1 (node): -" in report_html._tooltip(cell)
