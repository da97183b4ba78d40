"""A package set's `cluster:` (docs/clusters.md) through plan and the cell configuration: the
documented form plans to one cell carrying its CellCluster, every bad definition is a
file:line error, and one-VM cells keep their documents byte for byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from osgtest_dag.base.errors import UserError
from osgtest_dag.generate import cellconfig
from osgtest_dag.model.cell import CellConfig
from osgtest_dag.model.cluster import MAX_VMS, CellCluster, ClusterRole, ClusterStage
from osgtest_dag.plan import matrix, params

ROOT = Path(__file__).resolve().parent.parent
HEAD = "platforms: [debian_12.x86_64]\nsources: ['stable; main']\n"

# The docs' example without its comments, so that each line below has a known number.
BASE = HEAD + (
    "package_sets:\n"  # 3
    "  - label: Web cluster\n"  # 4
    "    packages: [curl]\n"  # 5
    "    cluster:\n"  # 6
    "      roles:\n"  # 7
    "        server: {count: 1, packages: [nginx-light], vm: {memory: 1024}}\n"  # 8
    "        client: {count: 2}\n"  # 9
    "      stages:\n"  # 10
    "        - name: init\n"  # 11
    "          server: systemctl start nginx\n"  # 12
    "        - name: run\n"  # 13
    "          client: curl -fsS http://server-1/\n"  # 14
    "        - name: finalize\n"  # 15
    "          all: journalctl --no-pager -n 50\n"  # 16
)
WEB_CLUSTER = CellCluster(
    roles=(
        ClusterRole(name="server", count=1, packages=("nginx-light",), memory=1024),
        ClusterRole(name="client", count=2),
    ),
    stages=(
        ClusterStage(name="init", commands=(("server", "systemctl start nginx"),)),
        ClusterStage(name="run", commands=(("client", "curl -fsS http://server-1/"),)),
        ClusterStage(name="finalize", all="journalctl --no-pager -n 50"),
    ),
)


def _docs_yaml() -> str:
    """The parameter file section's YAML block of docs/clusters.md, as written there."""
    text = (ROOT / "docs" / "clusters.md").read_text()
    return re.search(r"## The parameter file\n\n```yaml\n(.*?)```", text, re.S).group(1)


def _plan(tmp_path: Path, text: str, catalog) -> list[matrix.Cell]:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    return matrix.build([f], catalog).cells


def test_docs_example_plans_to_one_cell_with_its_cluster(tmp_path, catalog):
    (cell,) = _plan(tmp_path, HEAD + _docs_yaml(), catalog)
    assert cell.cluster == WEB_CLUSTER
    assert cell.package_set.packages == ("curl",)
    assert cell.test_command is None
    run, finalize = cell.cluster.stages[1], cell.cluster.stages[2]
    assert run.command_for("client") == "curl -fsS http://server-1/" and run.command_for("server") is None
    assert finalize.command_for("server") == finalize.command_for("client") == "journalctl --no-pager -n 50"
    assert finalize.runs_always and not run.runs_always


def test_stage_keys_all_always_timeout_and_role_settings(tmp_path, catalog):
    text = BASE.replace("{count: 2}", "{vm: {vcpus: 3, disk: 4GB, memory: 512M}}") + (
        "          always: true\n          timeout: 120\n"
        "        - name: wait\n"  # a barrier only: no command at all
    )
    (cell,) = _plan(tmp_path, text, catalog)
    assert cell.cluster.roles[1] == ClusterRole(name="client", count=1, memory=512, vcpus=3, disk=4096)
    assert cell.cluster.stages[2] == ClusterStage(
        name="finalize", all="journalctl --no-pager -n 50", always=True, timeout=120
    )
    assert cell.cluster.stages[3] == ClusterStage(name="wait")
    assert cell.cluster.stages[3].command_for("server") is None


def test_network_booted_role(tmp_path, catalog):
    text = BASE.replace(
        "        client: {count: 2}\n", "        client: {count: 2}\n        node: {boot: network}\n"
    )
    (cell,) = _plan(tmp_path, text, catalog)
    node = cell.cluster.role("node")
    assert (node.boot, node.count, node.packages) == ("network", 1, ())
    assert cell.cluster.size == 4


def test_cell_config_carries_the_cluster_through_json(tmp_path, catalog):
    (cell,) = _plan(tmp_path, BASE.replace("sources:", "vm: {memory: 768, vcpus: 1}\nsources:"), catalog)
    cfg = cellconfig.cell_config(cell, catalog)
    assert cfg.cluster == WEB_CLUSTER
    assert cfg.test.command is None and not cfg.test.osg_test  # the stages are the test
    line = json.dumps(cfg.to_json())
    back = CellConfig.from_json(json.loads(line), "cells.jsonl")
    assert back == cfg
    vms = [(v.name, v.address, v.memory, v.vcpus) for v in back.cluster_vms()]
    assert vms == [
        ("server-1", "10.77.0.11", 1024, 1),
        ("client-1", "10.77.0.12", 768, 1),
        ("client-2", "10.77.0.13", 768, 1),
    ]


# What cells.jsonl holds for this one-VM cell: as before clusters existed, with the test kind
# and the image's size (its VM profile's disk beyond it is a scratch disk) since.
ONE_VM_LINE = (
    '{"schema":"osgtest-dag/cell","version":1,"serial":"000","platform":{"id":"debian_12.x86_64",'
    '"os":"debian_12","family":"debian","distro":"debian","major":12,"arch":"x86_64","name":"Debian 12 '
    '(x86_64)","codename":"bookworm","image":"/images/debian_12.x86_64.qcow2","image_format":"qcow2",'
    '"image_size":3072},"source":{"raw":"stable; main","test_source":null,"series":"stable","repos":["main"],'
    '"update_series":null,"update_repos":[]},"label":"Hello","packages":["hello"],"selinux":false,'
    '"repositories":{"initial":{"setup_packages":[],"enable":[],"apt_sources":["deb '
    'http://deb.debian.org/debian bookworm main"]},"update":null,"lists_max_age":604800},'
    '"test":{"command":"./t.sh","timeout":14400,"osg_test":false,"kind":"command"},"vm":{"memory":2048,"vcpus":2,'
    '"disk":8192},"network":{"check_host":"deb.debian.org","retries":5},"retries":{"count":3,'
    '"backoff":10},"nightly":false,"param_file":"p.yaml"}\n'
)


def test_one_vm_cells_keep_their_documents(tmp_path, catalog):
    """The file's test_command is the one-VM set's test, not the cluster's; the one-VM cell's
    line of cells.jsonl and its plan JSON have no `cluster` key."""
    text = (
        HEAD + "test_command: ./t.sh\n"
        "package_sets:\n  - {label: Hello, packages: [hello], selinux: false}\n"
        + BASE.split("package_sets:\n")[1]
    )
    cells = _plan(tmp_path, text, catalog)
    assert [c.cluster for c in cells] == [None, WEB_CLUSTER]
    assert [c.test_command for c in cells] == ["./t.sh", None]
    store = tmp_path / "cells.jsonl"
    cellconfig.write_store(store, [cellconfig.cell_config(c, catalog) for c in cells])
    one_vm, cluster = store.read_text().splitlines(keepends=True)
    assert one_vm == ONE_VM_LINE
    assert json.loads(cluster)["cluster"]["roles"][0]["name"] == "server"
    assert "cluster" not in cells[0].to_json()
    plan_cluster = cells[1].to_json()["cluster"]
    assert [v["name"] for v in plan_cluster["vms"]] == ["server-1", "client-1", "client-2"]
    assert plan_cluster["stages"][0]["commands"] == {"server": "systemctl start nginx"}


def test_sets_differing_only_in_their_cluster_are_two_sets(tmp_path, catalog):
    plain = "  - {label: Curl, packages: [curl]}\n"
    cells = _plan(tmp_path, BASE + plain, catalog)
    assert [(c.package_set.label, c.cluster is not None) for c in cells] == [
        ("Web cluster", True),
        ("Curl", False),
    ]
    assert cells[0].package_set.key() != cells[1].package_set.key()


def test_one_label_names_one_cluster(tmp_path, catalog):
    other = BASE.split("package_sets:\n")[1].replace("count: 2", "count: 3")
    with pytest.raises(UserError, match="names another cluster here than at") as e:
        _plan(tmp_path, BASE + other, catalog)
    assert e.value.where.line == 17


def test_a_cluster_on_an_el_platform_plans(tmp_path, catalog):
    text = BASE.replace("debian_12.x86_64", "rocky_9.x86_64").replace("stable; main", "24; osg")
    (cell,) = _plan(tmp_path, text, catalog)
    assert cell.platform.family == "el" and cell.cluster == WEB_CLUSTER


ROLE_LINES = "".join(BASE.splitlines(True)[7:9])  # server and client
NETWORK_NODE = "        client: {count: 2}\n        node: {boot: network}\n"
# name -> (BASE with one change, the line the error names, words of the message)
BAD = {
    "unknown-role-in-stage": (
        BASE.replace("client: curl", "clinet: curl"),
        14,
        "stage 'run' names unknown role 'clinet'",
    ),
    "count-zero": (
        BASE.replace("{count: 2}", "{count: 0}"),
        9,
        "'count' must be a whole number of at least 1",
    ),
    "count-not-a-number": (BASE.replace("{count: 2}", "{count: two}"), 9, "not 'two'"),
    "count-bool": (BASE.replace("{count: 2}", "{count: true}"), 9, "'count' must be a whole number"),
    "duplicate-stage": (
        BASE.replace("name: run", "name: init"),
        13,
        "duplicate stage name 'init' (first at line 11)",
    ),
    "duplicate-role": (
        BASE.replace(
            "        client: {count: 2}\n", "        client: {count: 2}\n        client: {count: 1}\n"
        ),
        10,
        "duplicate key 'client' (first at line 9)",
    ),
    "role-name-upper-case": (
        BASE.replace("client: {", "Client: {"),
        9,
        "role name 'Client' is not a host name",
    ),
    "role-name-underscore": (
        BASE.replace("client: {", "web_1: {"),
        9,
        "role name 'web_1' is not a host name",
    ),
    "role-name-too-long": (BASE.replace("client: {", "c" * 21 + ": {"), 9, "is not a host name"),
    "role-name-reserved": (BASE.replace("client: {", "all: {"), 9, "role name 'all' is a stage key"),
    "role-name-number": (BASE.replace("client: {", "1: {"), 9, "role name 1 is not a host name"),
    "empty-stages": (
        BASE.split("      stages:")[0] + "      stages: []\n",
        10,
        "'stages' must be a non-empty",
    ),
    "no-stages": (BASE.split("      stages:")[0], 6, "a cluster needs 'stages'"),
    "no-roles": (
        BASE.replace("      roles:\n", "      roles: {}\n").replace(ROLE_LINES, ""),
        7,
        "'roles' must be a non-empty mapping",
    ),
    "command-empty": (
        BASE.replace("server: systemctl start nginx", "server: ''"),
        12,
        "must be a non-empty string",
    ),
    "command-null": (
        BASE.replace("server: systemctl start nginx", "server:"),
        12,
        "must be a non-empty string",
    ),
    "command-list": (
        BASE.replace("server: systemctl start nginx", "server: [a]"),
        12,
        "must be a non-empty string",
    ),
    "all-not-a-string": (
        BASE.replace("all: journalctl --no-pager -n 50", "all: 5"),
        16,
        "the command for 'all'",
    ),
    "network-role-in-stage": (
        BASE.replace("        client: {count: 2}\n", NETWORK_NODE).replace("client: curl", "node: curl"),
        15,
        "gives a command to role 'node', which boots from the network",
    ),
    "network-role-with-packages": (
        BASE.replace("        client: {count: 2}\n", NETWORK_NODE.replace("{boot", "{packages: [x], boot")),
        10,
        "boots from the network and cannot install packages",
    ),
    "no-disk-booted-role": (
        BASE.replace("count: 1,", "boot: network,")
        .replace("packages: [nginx-light], ", "")
        .replace("{count: 2}", "{count: 2, boot: network}"),
        7,
        "every role of the cluster boots from the network",
    ),
    "too-many-vms": (
        BASE.replace("{count: 2}", f"{{count: {MAX_VMS}}}"),
        7,
        f"has {MAX_VMS + 1} VMs, more than {MAX_VMS}",
    ),
    "with-test-command": (
        BASE.replace("    cluster:\n", "    test_command: ./t.sh\n    cluster:\n"),
        6,
        "a cluster's stages are its test",
    ),
    "unknown-cluster-key": (BASE.replace("      stages:", "      stagse:"), 10, "did you mean 'stages'"),
    "cluster-not-a-mapping": (BASE.split("    cluster:")[0] + "    cluster: [a]\n", 6, "must be a mapping"),
    "unknown-role-key": (BASE.replace("{count: 2}", "{cont: 2}"), 9, "did you mean 'count'"),
    "role-not-a-mapping": (BASE.replace("{count: 2}", "2"), 9, "role 'client' must be a mapping"),
    "role-packages-not-a-list": (
        BASE.replace("packages: [nginx-light]", "packages: nginx-light"),
        8,
        "must be a list",
    ),
    "role-bad-package": (
        BASE.replace("[nginx-light]", "['nginx light']"),
        8,
        "bad package name 'nginx light'",
    ),
    "role-bad-memory": (BASE.replace("memory: 1024", "memory: lots"), 8, "bad memory size"),
    "role-unknown-vm-key": (BASE.replace("memory: 1024", "memroy: 1024"), 8, "did you mean 'memory'"),
    "role-bad-boot": (BASE.replace("{count: 2}", "{boot: netwrok}"), 9, "did you mean 'network'"),
    "stage-no-name": (
        BASE.replace("        - name: run\n          client", "        - client"),
        13,
        "needs a 'name'",
    ),
    "stage-bad-name": (BASE.replace("name: run", "name: ../run"), 13, "bad stage name '../run'"),
    "stage-not-a-mapping": (
        BASE.replace(
            "        - name: run\n          client: curl -fsS http://server-1/\n", "        - run\n"
        ),
        13,
        "a stage must be a mapping",
    ),
    "stage-always-not-bool": (BASE + "          always: 1\n", 17, "'always' must be true or false"),
    "stage-timeout-zero": (BASE + "          timeout: 0\n", 17, "'timeout' must be a positive number"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_cluster_is_a_file_line_error(case, tmp_path, catalog):
    text, line, words = BAD[case]
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        params.load_param_file(f, catalog)
    assert words in f"{e.value.message}\n  hint: {e.value.hint}"
    assert e.value.where.path == f and e.value.where.line == line, str(e.value)
    assert e.value.hint


def test_lint_and_plan_show_clusters(tmp_path, cli):
    example = ROOT / "examples" / "cluster" / "web-cluster.yaml"
    r = cli("plan", example)
    assert r.returncode == 0, r.stderr
    assert "\n        cluster: server x1, client x2 (3 VMs); stages: init, run, finalize\n" in r.stdout
    r = cli("plan", example, "--format", "json")
    (cell,) = json.loads(r.stdout)
    assert cell["platform"] == "debian_12.x86_64" and cell["source"] == "stable; main"
    assert [v["name"] for v in cell["cluster"]["vms"]] == ["server-1", "client-1", "client-2"]
    r = cli("lint", example)
    assert (r.returncode, r.stdout) == (0, "ok: 1 parameter file(s), 1 cells (1 cluster cell(s), 3 VMs)\n")
    f = tmp_path / "bad.yaml"
    f.write_text(BAD["unknown-role-in-stage"][0])
    r = cli("lint", f)
    assert r.returncode == 2 and f"{f}:14:11: error:" in r.stderr and "did you mean 'client'" in r.stderr
