"""Per-cell configuration: osg-test.conf as the reference composes it, cell.env as the payload reads it."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace

import pytest

from osgtest_dag.generate import cellconfig
from osgtest_dag.plan import matrix

BASE = "[Config]\nadduser = True\n"


def reference_osg_test_conf(sources: str, packages: list[str], selinux: bool, nightly: bool) -> str:
    """vm-test-runs' write_osg_test_configuration, restated (including its regular expressions),
    with its PackageSet's packages (vmu.py: /usr/sbin/semanage appended when selinux is on)."""
    packages = packages + ["/usr/sbin/semanage"] if selinux else packages
    contents = BASE
    parts = re.split(r"\s*;\s*", sources)
    if len(parts) == 3:
        contents += "testsource = %s\n" % parts[0]
        _, series, repositories = parts
    else:
        series, repositories = parts
    repo_parts = re.split(r"\s*>\s*", repositories)
    extrarepos = re.sub(r"osg\s*,\s*", "", repo_parts[0])
    extrarepos = re.sub(r"[,\s]*osg(?!-)", "", extrarepos)
    if extrarepos:
        contents += "extrarepos = %s\n" % extrarepos
    if len(repo_parts) > 1:
        update_parts = re.split(r"\s*/\s*", repo_parts[1])
        if len(update_parts) == 1:
            contents += "updaterepos = %s\n" % update_parts[0]
        else:
            contents += "updaterelease = %s\n" % update_parts[0]
            if update_parts[1] != "osg":
                contents += "updaterepos = %s\n" % update_parts[1]
    contents += "packages = %s\n" % ", ".join(packages)
    contents += "series = %s\n" % series
    contents += "sources = %s\n" % sources
    contents += "selinux = %s\n" % selinux
    contents += "nightly = %s\n" % nightly
    return contents


def test_osg_test_conf_matches_reference_for_every_fixture_cell(params_d, catalog):
    m = matrix.build([params_d], catalog)
    seen = set()
    for c in m.cells:
        key = (c.source.raw, c.package_set.packages, c.package_set.selinux)
        if key in seen:
            continue
        seen.add(key)
        cfg = cellconfig.cell_config(c, catalog, nightly=True)
        ours = cellconfig.osg_test_conf(cfg, base=BASE)
        ref = reference_osg_test_conf(c.source.raw, list(c.package_set.packages), c.package_set.selinux, True)
        assert ours == ref, c.serial
    assert len(seen) > 50


def test_el_cell_resolves_release_packages_and_repos(params_d, catalog):
    m = matrix.build([params_d], catalog)
    c = matrix.select(m.cells, matrix.parse_only(["serial=1104"]))[0]  # 23; osg-upcoming > 24/osg on rocky_9
    cfg = cellconfig.cell_config(c, catalog)
    init, upd = cfg.repositories.initial, cfg.repositories.update
    assert upd is not None
    assert init.setup_packages == (
        "https://dl.fedoraproject.org/pub/epel/epel-release-latest-9.noarch.rpm",
        "https://repo.osg-htc.org/osg/23-main/osg-23-main-el9-release-latest.rpm",
    )
    assert init.enable == ("osg-upcoming",)
    assert upd.setup_packages[1] == "https://repo.osg-htc.org/osg/24-main/osg-24-main-el9-release-latest.rpm"
    assert upd.enable == ("osg",)
    assert cfg.test.to_json() == {"command": None, "timeout": 14400, "osg_test": True, "kind": "osg-test"}


def test_cell_env_round_trips_through_sh(params_d, catalog):
    m = matrix.build([params_d], catalog)
    cfg = replace(cellconfig.cell_config(m.cells[0], catalog), label='it\'s "quoted" $HOME `x`')
    env = cellconfig.cell_env(cfg)
    out = subprocess.run(
        ["sh", "-c", env + '\nprintf "%s|%s|%s" "$CELL_LABEL" "$CELL_PACKAGES" "$HAS_UPDATE"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == f"{cfg.label}|{' '.join(cfg.packages)}|false"


PACKAGE_SETS = """\
package_sets:
  - {label: Plain, packages: [hello]}
  - {label: Own test, packages: [hello], test_command: hello}
  - label: Cluster
    packages: [hello]
    cluster:
      roles: {server: {count: 1}}
      stages: [{name: run, server: 'true'}]
"""


def test_each_family_gets_its_default_test(tmp_path, catalog):
    """osg-test where it is packaged (EL), install-only where it is not (Debian); a test
    command is the test everywhere; a cluster's stages are its test."""
    (tmp_path / "debian.yaml").write_text(
        "platforms: [debian_12.x86_64]\nsources: ['stable; main']\n" + PACKAGE_SETS
    )
    (tmp_path / "el.yaml").write_text("platforms: [rocky_9.x86_64]\nsources: ['24; osg']\n" + PACKAGE_SETS)
    m = matrix.build([tmp_path], catalog)
    kinds = {}
    for c in m.cells:
        cfg = cellconfig.cell_config(c, catalog)
        kinds[(c.platform.family, c.package_set.label)] = (cfg.test.kind, cfg.test.command, cfg.test.osg_test)
        assert c.to_json()["test"] == {"kind": cfg.test.kind, "command": cfg.test.command, "timeout": 14400}
        env = dict(line.split("=", 1) for line in cellconfig.cell_env(cfg).splitlines()[1:])
        assert (env["TEST_KIND"], env["OSG_TEST"]) == (
            cfg.test.kind,
            "true" if cfg.test.osg_test else "false",
        )
        written = cellconfig.write_input_dir(cfg, tmp_path / c.serial)
        assert (written / "osg-test.conf").exists() is cfg.test.osg_test
    assert kinds == {
        ("debian", "Plain"): ("install-only", None, False),
        ("debian", "Own test"): ("command", "hello", False),
        ("debian", "Cluster"): ("stages", None, False),
        ("el", "Plain"): ("osg-test", None, True),
        ("el", "Own test"): ("command", "hello", False),
        ("el", "Cluster"): ("stages", None, False),
    }


def test_an_el_selinux_package_set_gains_semanage_as_the_references(params_d, catalog):
    m = matrix.build([params_d], catalog)
    el = next(c for c in m.cells if c.platform.family == "el" and c.package_set.selinux)
    assert cellconfig.cell_config(el, catalog).packages == (*el.package_set.packages, "/usr/sbin/semanage")
    off = replace(el, package_set=replace(el.package_set, selinux=False))
    assert cellconfig.cell_config(off, catalog).packages == tuple(el.package_set.packages)


def test_test_source_tarballs_are_the_branchs_git_archive(tmp_path):
    from osgtest_dag.base.errors import UserError
    from osgtest_dag.generate import testsource

    for account, package, branch in (
        ("me", "osg-test", "fix/x"),
        ("opensciencegrid", "osg-ca-generator", "master"),
    ):
        repo = tmp_path / "git" / account / package
        repo.mkdir(parents=True)
        (repo / "Makefile").write_text(f"# {package} of {account}\n")
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@localhost"]
        for args in (["init", "-q", "-b", branch], ["add", "."], ["commit", "-q", "-m", "x"]):
            subprocess.run([*git, *args], check=True)
    template = f"file://{tmp_path}/git/{{account}}/{{package}}"
    run = tmp_path / "run"
    run.mkdir()
    got = testsource.source_tarballs(run, "me:fix/x", template)
    assert sorted(got) == ["osg-ca-generator-git.tar.gz", "osg-test-git.tar.gz"]
    listing = subprocess.run(
        ["tar", "tzf", got["osg-test-git.tar.gz"]], capture_output=True, text=True, check=True
    ).stdout
    assert listing.split() == ["osg-test-git/", "osg-test-git/Makefile"]
    assert got["osg-test-git.tar.gz"].name == "osg-test-git.me.fix_x.tar.gz"  # cached per source
    assert testsource.git_url_template(tmp_path / "no-catalog.json") == testsource.GIT_URL_DEFAULT
    with pytest.raises(UserError, match="me:no-such-branch"):
        testsource.source_tarballs(run, "me:no-such-branch", template)
