"""Every parameter set of the reference (vm-test-runs) plans without an error, cell for cell as
the reference's own generate-dag expands it (recorded in tests/data/reference-params/)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from osgtest_dag.plan import matrix

DATA = Path(__file__).resolve().parent / "data" / "reference-params"
SETS = sorted(p.name.removesuffix(".tsv.gz") for p in (DATA / "expansion").glob("*.tsv.gz"))
SELINUX_MARK = "/usr/sbin/semanage"  # what the reference appends to a package list with SELinux on


def reference_expansion(name: str) -> list[tuple[str, str, str, str]]:
    text = gzip.decompress((DATA / "expansion" / f"{name}.tsv.gz").read_bytes()).decode()
    return [tuple(line.split("\t")) for line in text.splitlines()]


def test_every_shipped_set_is_recorded():
    dirs = {p.parent.relative_to(DATA).as_posix().replace("/", "--") for p in DATA.rglob("*.yaml")}
    assert dirs == set(SETS) and len(SETS) == 12


@pytest.mark.parametrize("name", SETS)
def test_reference_set_plans_cell_for_cell(name, catalog):
    m = matrix.build([DATA / name.replace("--", "/")], catalog)
    ours = [
        (
            c.serial,
            c.platform.id,
            c.source.raw,
            ", ".join(c.package_set.packages + ((SELINUX_MARK,) if c.package_set.selinux else ())),
        )
        for c in m.cells
    ]
    ref = reference_expansion(name)
    assert len(ours) == len(ref)
    assert ours == ref
    # every repository the reference's sets name is one the catalog knows: no pass-through warning
    assert m.warnings == ()


def test_prerelease_set_uses_the_upcoming_prerelease_repository(catalog):
    m = matrix.build([DATA / "parameters.d-prerelease"], catalog)
    cell = next(c for c in m.cells if "osg-upcoming-prerelease" in c.source.update_repos)
    update = catalog.resolve(cell.platform, cell.source.effective_update_series, cell.source.update_repos)
    assert "osg-upcoming-prerelease" in update.enable
