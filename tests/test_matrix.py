"""The matrix from the real nightly parameter files, against the reference semantics."""

from __future__ import annotations

import glob
import itertools
import json

import yaml

from osgtest_dag.plan import matrix


def reference_cells(param_dir):
    """vm-test-runs' generate-dag, restated: reverse-sorted files, product with platform
    outermost, first occurrence wins, package sets equal by their package list (the
    reference appends /usr/sbin/semanage when selinux is on), serial '%03d'."""
    combos = []
    for f in reversed(sorted(glob.glob(f"{param_dir}/*"))):
        data = yaml.safe_load(open(f))
        sets = []
        for ps in data["package_sets"]:
            pk = list(ps["packages"]) + (["/usr/sbin/semanage"] if ps.get("selinux", True) else [])
            sets.append((ps["label"], tuple(pk)))
        for combo in itertools.product(data["platforms"], data["sources"], sets):
            if combo not in combos:
                combos.append(combo)
    return [("%03d" % i, p, s, ps[0]) for i, (p, s, ps) in enumerate(combos)]


def test_cells_match_reference(params_d, catalog):
    m = matrix.build([params_d], catalog)
    ours = [(c.serial, c.platform.id, c.source.raw, c.package_set.label) for c in m.cells]
    ref = reference_cells(params_d)
    assert len(ours) == len(ref) == 1564
    assert ours == ref


def test_file_order_is_reverse_sorted(params_d, catalog):
    m = matrix.build([params_d], catalog)
    names = [p.name for p in m.files]
    assert names == sorted(names, reverse=True)
    assert names[0] == "osg25-el9.yaml"


def test_duplicates_dropped_first_wins(tmp_path, catalog):
    a = tmp_path / "b.yaml"
    a.write_text(
        "platforms: [rocky_9.x86_64]\nsources: ['24; osg']\npackage_sets: [{label: A, packages: [x]}]\n"
    )
    b = tmp_path / "a.yaml"
    b.write_text(
        "platforms: [rocky_9.x86_64, alma_9.x86_64]\nsources: ['24; osg']\n"
        "package_sets: [{label: A, packages: [x]}, {label: B, packages: [y]}]\n"
    )
    m = matrix.build([tmp_path], catalog)
    got = [(c.serial, c.platform.id, c.package_set.label, c.origin.name) for c in m.cells]
    assert got == [
        ("000", "rocky_9.x86_64", "A", "b.yaml"),
        ("001", "rocky_9.x86_64", "B", "a.yaml"),
        ("002", "alma_9.x86_64", "A", "a.yaml"),
        ("003", "alma_9.x86_64", "B", "a.yaml"),
    ]


def test_selinux_difference_is_a_distinct_cell(tmp_path, catalog):
    (tmp_path / "p.yaml").write_text(
        "platforms: [rocky_9.x86_64]\nsources: ['24; osg']\n"
        "package_sets: [{label: A, packages: [x]}, {label: A, packages: [x], selinux: false}]\n"
    )
    m = matrix.build([tmp_path], catalog)
    assert [c.package_set.selinux for c in m.cells] == [True, False]


def test_serials_keep_padding_of_reference(params_d, catalog):
    m = matrix.build([params_d], catalog)
    assert m.cells[0].serial == "000" and m.cells[999].serial == "999"
    assert m.cells[1000].serial == "1000"


def test_only_selects_without_renumbering(params_d, catalog):
    m = matrix.build([params_d], catalog)
    only = matrix.parse_only(["platform=rocky_9.*", "label=XRootD", "series=24", "series=23"])
    cells = matrix.select(m.cells, only)
    assert [c.serial for c in cells] == [
        "347",
        "1060",
        "1071",
        "1082",
        "1093",
        "1104",
        "1115",
        "1126",
        "1137",
        "1148",
    ]
    assert matrix.select(m.cells, matrix.parse_only(["package=osdf-cache"]))


def test_include_exclude_rules_shape_matrix(tmp_path, catalog):
    (tmp_path / "p.yaml").write_text(
        "platforms: [rocky_9.x86_64, alma_9.x86_64, debian_12.x86_64]\n"
        "sources: ['24; osg']\n"
        "package_sets: [{label: A, packages: [x]}, {label: B, packages: [y]}]\n"
        "exclude: [{platform: 'alma_*', label: B}]\n"
        "include: [{family: el}]\n"
    )
    # debian with an EL repository name is an error, so use a Debian-free variant
    (tmp_path / "p.yaml").write_text((tmp_path / "p.yaml").read_text().replace(", debian_12.x86_64", ""))
    m = matrix.build([tmp_path], catalog)
    assert [(c.serial, c.platform.id, c.package_set.label) for c in m.cells] == [
        ("000", "rocky_9.x86_64", "A"),
        ("001", "rocky_9.x86_64", "B"),
        ("002", "alma_9.x86_64", "A"),
    ]


def test_vm_profile_per_file_and_platform(tmp_path, catalog):
    (tmp_path / "p.yaml").write_text(
        "platforms: [rocky_9.x86_64, rocky_9.aarch64]\nsources: ['24; osg']\n"
        "package_sets: [{label: A, packages: [x]}]\n"
        "vm: {memory: 4GB, vcpus: 4}\nvm_per_platform: {'*.aarch64': {memory: 8192, disk: 20G}}\n"
    )
    m = matrix.build([tmp_path], catalog)
    assert [(c.vm.memory, c.vm.vcpus, c.vm.disk) for c in m.cells] == [(4096, 4, 8192), (8192, 4, 20480)]


PACKAGES_XROOTD = ["osg-xrootd-standalone", "xrootd-multiuser", "xrootd-client", "voms-clients-cpp"]


def test_plan_json_fields(params_d, cli):
    r = cli("plan", params_d, "--format", "json", "--only", "serial=1104")
    assert r.returncode == 0, r.stderr
    (cell,) = json.loads(r.stdout)
    assert cell == {
        **cell,
        "serial": "1104",
        "platform": "rocky_9.x86_64",
        "source": "opensciencegrid:master; 23; osg-upcoming > 24/osg",
        "test_source": "opensciencegrid:master",
        "series": "23",
        "repos": ["osg-upcoming"],
        "update_series": "24",
        "update_repos": ["osg"],
        "label": "XRootD",
        "selinux": True,
    }
    assert cell["packages"] == PACKAGES_XROOTD


def test_plan_table_counts(params_d, cli):
    r = cli("plan", params_d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "1564 cells from 6 parameter file(s)"
    assert r.stdout.splitlines()[1].split()[0] == "000"
