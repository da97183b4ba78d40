"""The matrix from the real nightly parameter files, against the reference semantics."""

from __future__ import annotations

import glob
import itertools
import json

import pytest
import yaml

from osgtest_dag.base.errors import UserError
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


# Two files: b.yaml comes first (reverse-sorted) and excludes alma x B, which a.yaml asks for.
RULES_B = """\
platforms: [rocky_9.x86_64, alma_9.x86_64]
sources: ['24; osg', '24; osg > osg-testing']
package_sets: [{label: A, packages: [x]}, {label: B, packages: [y]}]
exclude:
  - {platform: 'alma_*', label: B}
  - {source: '*>*'}
  - {label: C}
"""
RULES_A = """\
platforms: [alma_9.x86_64, rocky_9.x86_64]
sources: ['24; osg']
package_sets: [{label: B, packages: [y]}, {label: A, packages: [x]}]
include:
  - {platform: 'alma_*'}
  - {label: A}
"""


def test_rules_apply_per_file_before_deduplication(tmp_path, catalog):
    (tmp_path / "b.yaml").write_text(RULES_B)
    (tmp_path / "a.yaml").write_text(RULES_A)
    m = matrix.build([tmp_path], catalog)
    got = [(c.serial, c.platform.id, c.source.raw, c.package_set.label, c.origin.name) for c in m.cells]
    assert got == [
        ("000", "rocky_9.x86_64", "24; osg", "A", "b.yaml"),
        ("001", "rocky_9.x86_64", "24; osg", "B", "b.yaml"),
        ("002", "alma_9.x86_64", "24; osg", "A", "b.yaml"),
        # excluded by b.yaml, asked for by a.yaml: a cell
        ("003", "alma_9.x86_64", "24; osg", "B", "a.yaml"),
    ]
    b, a = m.expansions
    assert (b.path.name, b.combinations, b.duplicates, b.serials) == ("b.yaml", 8, 0, ("000", "001", "002"))
    # each exclude rule counts what it is the first to match; a rule matching nothing shows 0
    assert [(r.kind, r.where.line, r.text, r.removed) for r in b.rules] == [
        ("exclude", 5, "platform=alma_*, label=B", 2),
        ("exclude", 6, "source=*>*", 3),
        ("exclude", 7, "label=C", 0),
    ]
    # a.yaml: rocky x B matches no include rule; alma x A and rocky x A are duplicates of b.yaml's
    assert (a.combinations, a.duplicates, a.serials) == (4, 2, ("003",))
    assert [(r.kind, r.where.line, r.text, r.removed) for r in a.rules] == [
        ("include", 5, "platform=alma_* | label=A (rules at lines 5, 6)", 1)
    ]


def test_plan_shows_each_files_part(tmp_path, cli):
    (tmp_path / "b.yaml").write_text(RULES_B)
    (tmp_path / "a.yaml").write_text(RULES_A)
    r = cli("plan", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-8:] == [
        "Per parameter file, in expansion order:",
        f"  {tmp_path}/b.yaml: 8 combinations, 5 removed by rules, 0 duplicate(s) dropped -> 3 cell(s) (000-002)",
        f"    exclude {tmp_path}/b.yaml:5:5 [platform=alma_*, label=B]: 2 excluded",
        f"    exclude {tmp_path}/b.yaml:6:5 [source=*>*]: 3 excluded",
        f"    exclude {tmp_path}/b.yaml:7:5 [label=C]: 0 excluded",
        f"  {tmp_path}/a.yaml: 4 combinations, 1 removed by rules, 2 duplicate(s) dropped -> 1 cell(s) (003)",
        f"    include {tmp_path}/a.yaml:5:5 [platform=alma_* | label=A (rules at lines 5, 6)]: "
        "1 matched by no include rule",
        "4 cells from 2 parameter file(s)",
    ]
    r = cli("plan", tmp_path, "--only", "label=B")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "2 of 4 cells from 2 parameter file(s) selected by --only"


def test_unknown_el_repository_passes_through_with_a_warning(tmp_path, catalog, cli):
    (tmp_path / "p.yaml").write_text(
        "platforms: [rocky_9.x86_64, alma_9.aarch64]\n"
        "sources:\n  - '24; osg, osg-special > osg-testing, osg-special'\n"
        "package_sets: [{label: A, packages: [x]}]\n"
    )
    m = matrix.build([tmp_path], catalog)
    (w,) = m.warnings  # once per source line and name, whatever the number of platforms
    assert (w.where.line, w.where.column) == (3, 15) and "'osg-special' is not in the catalog" in w.message
    initial = catalog.resolve(m.cells[0].platform, "24", m.cells[0].source.repos)
    assert initial.enable == ("osg", "osg-special")
    r = cli("lint", tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{tmp_path}/p.yaml:3:15: warning: repository 'osg-special' is not in the catalog" in r.stderr
    assert r.stdout.strip() == "ok: 1 parameter file(s), 2 cells, 1 warning(s)"


def test_unknown_debian_repository_is_an_error(tmp_path, catalog):
    (tmp_path / "p.yaml").write_text(
        "platforms: [rocky_9.x86_64, debian_12.x86_64]\nsources: ['stable; osg-special']\n"
        "package_sets: [{label: A, packages: [x]}]\n"
    )
    with pytest.raises(UserError) as e:
        matrix.build([tmp_path], catalog)
    assert str(e.value.where) == f"{tmp_path}/p.yaml:2:20"
    assert "unknown repository 'osg-special' for debian platform debian_12.x86_64" in e.value.message
    assert "apt lines" in e.value.hint


def test_priority_default_and_per_platform_and_package_set(tmp_path, catalog):
    (tmp_path / "p.yaml").write_text(
        "platforms: [rocky_9.x86_64, {platform: alma_9.x86_64, priority: 5}]\n"
        "sources: ['24; osg', '24; osg > osg-testing']\n"
        "package_sets: [{label: A, packages: [x], priority: 10}, {label: B, packages: [y], priority: -1}]\n"
    )
    m = matrix.build([tmp_path], catalog)
    got = [(c.platform.id, c.source.has_update, c.package_set.label, c.priority) for c in m.cells]
    assert got == [
        ("rocky_9.x86_64", False, "A", 10),
        ("rocky_9.x86_64", False, "B", -1),
        ("rocky_9.x86_64", True, "A", 11),  # an update step: matrix.UPDATE_PRIORITY
        ("rocky_9.x86_64", True, "B", 0),
        ("alma_9.x86_64", False, "A", 15),
        ("alma_9.x86_64", False, "B", 4),
        ("alma_9.x86_64", True, "A", 16),
        ("alma_9.x86_64", True, "B", 5),
    ]
    assert m.cells[4].to_json()["priority"] == 15


def test_same_packages_with_and_without_selinux_under_two_labels(tmp_path, catalog):
    """The reference accepts this (its package list gains /usr/sbin/semanage with SELinux)."""
    (tmp_path / "p.yaml").write_text(
        "platforms: [rocky_9.x86_64]\nsources: ['24; osg']\n"
        "package_sets: [{label: A, packages: [x]}, {label: A-permissive, packages: [x], selinux: false}]\n"
    )
    m = matrix.build([tmp_path], catalog)
    assert [(c.package_set.label, c.package_set.selinux) for c in m.cells] == [
        ("A", True),
        ("A-permissive", False),
    ]


def test_plan_shows_each_cells_test(tmp_path, cli):
    (tmp_path / "p.yaml").write_text(
        "platforms: [rocky_9.x86_64, debian_12.x86_64]\nsources: ['stable; main']\n"
        "package_sets:\n  - {label: A, packages: [x]}\n"
        "  - {label: B, packages: [y], test_command: 'y --version &&\n      y --selftest'}\n"
        "test_timeout: 600\n"
    )
    r = cli("plan", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:5] == [
        "SERIAL  PLATFORM          SOURCE        PACKAGE SET  PRIORITY  TEST",
        "000     rocky_9.x86_64    stable; main  A            0         osg-test",
        "001     rocky_9.x86_64    stable; main  B            0         command: y --version && y --selftest",
        "002     debian_12.x86_64  stable; main  A            0         install-only",
        "003     debian_12.x86_64  stable; main  B            0         command: y --version && y --selftest",
    ]
    r = cli("plan", tmp_path, "--format", "json")
    tests = [c["test"] for c in json.loads(r.stdout)]
    assert tests == [
        {"kind": "osg-test", "command": None, "timeout": 600},
        {"kind": "command", "command": "y --version && y --selftest", "timeout": 600},
        {"kind": "install-only", "command": None, "timeout": 600},
        {"kind": "command", "command": "y --version && y --selftest", "timeout": 600},
    ]
