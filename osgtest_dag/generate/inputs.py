"""Pin what a run is generated from into its inputs/ directory (model/inputs.py): copies of the
known failures, component tags and osg-test configuration, the catalog entries the cells use,
the previous comparable run's results, the publishing configuration; recorded in inputs.json.
The callers check the files' contents first (ops/nightly.check_inputs): this module copies."""

from __future__ import annotations

import configparser
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import UserError
from osgtest_dag.generate.cellconfig import OSG_TEST_BASE, PER_CELL_OSG_TEST_KEYS, write_input_dir
from osgtest_dag.generate.testsource import copy_tarballs, git_url_template
from osgtest_dag.guest.iodisk import make_iodisk
from osgtest_dag.model.cell import CellConfig
from osgtest_dag.model.cluster import ClusterVm
from osgtest_dag.model.inputs import ParameterSet, PinnedFile, PinnedPrevious, RunInputs, file_sha256
from osgtest_dag.model.manifest import RunManifest
from osgtest_dag.model.publish import PublishConfig
from osgtest_dag.model.results import ResultsDocument
from osgtest_dag.model.rundir import RunDir
from osgtest_dag.plan.catalog import FAMILIES, Catalog
from osgtest_dag.plan.matrix import Cell

CATALOG_COPY = "catalog.json"
COMPONENT_TAGS_COPY = "component-tags.yaml"
OSG_TEST_CONFIG_COPY = "osg-test.conf"
PREVIOUS_RESULTS_COPY = "previous-results.json"


@dataclass(frozen=True)
class InputFiles:
    """What a run is generated from besides its parameter files, as given."""

    parameter_arguments: tuple[Path, ...] = ()  # the parameter files or directories as given
    only: tuple[str, ...] = ()
    catalog_files: tuple[Path, ...] = ()
    known_failures: tuple[Path, ...] = ()
    component_tags: Path | None = None
    osg_test_config: Path | None = None
    previous: Path | None = None  # a run directory (or its results.json)
    publish: PublishConfig | None = None


def _pin_copy(src: Path, inputs_dir: Path, name: str) -> PinnedFile:
    src = Path(src)
    if not src.is_file():
        raise UserError("file not found", where=src)
    shutil.copyfile(src, inputs_dir / name)
    return PinnedFile(origin=str(src.resolve()), copy=name, sha256=file_sha256(inputs_dir / name))


def catalog_entries(cells: Sequence[Cell], catalog: Catalog) -> dict[str, Any]:
    """The catalog entries the cells use, in the catalog-file format (`Catalog.load` reads
    it back as an extra catalog): their platforms, the defaults and settings, and per family
    the setup packages and the repositories their sources name."""
    used: dict[str, set[str]] = {}
    for c in cells:
        used.setdefault(c.platform.family, set()).update((*c.source.repos, *c.source.update_repos))
    doc: dict[str, Any] = {
        "defaults": dict(catalog.platform_defaults),
        "platforms": {os_id: catalog.platforms[os_id] for os_id in sorted({c.platform.os for c in cells})},
        "settings": dict(catalog.settings),
    }
    for fam in FAMILIES:
        if fam in used:
            known = catalog.repos[fam]["repos"]
            doc[fam] = {
                "setup_packages": list(catalog.repos[fam]["setup_packages"]),
                "repos": {n: known[n] for n in sorted(used[fam]) if n in known},
            }
    return doc


def check_osg_test_config(path: Path) -> None:
    """A base osg-test configuration: INI, ending in its [Config] section (each cell's keys
    are appended to it), not setting the keys each cell sets."""
    path = Path(path)
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text(), source=str(path))
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror}", where=path) from None
    except configparser.Error as e:
        raise UserError(f"not an osg-test configuration: {e.message.splitlines()[0]}", where=path) from None
    sections = parser.sections()
    if not sections or sections[-1] != "Config":
        raise UserError(
            "the osg-test configuration must end with its [Config] section",
            where=path,
            hint="each cell's keys (packages, series, sources, ...) are appended to it",
        )
    clash = sorted(set(parser["Config"]) & PER_CELL_OSG_TEST_KEYS)
    if clash:
        raise UserError(
            f"the osg-test configuration sets {', '.join(clash)}, which each cell sets",
            where=path,
            hint="leave them out: generate writes them from the parameter files",
        )


def osg_test_base(run_dir: Path) -> str:
    """The osg-test configuration each cell's keys are appended to: the run's pinned copy,
    else the built-in one."""
    inputs = RunInputs.read(run_dir)
    if inputs is None or inputs.osg_test_config is None:
        return OSG_TEST_BASE
    return RunDir(run_dir).pinned(inputs.osg_test_config.copy).read_text()


def write_cell_inputs(
    run_dir: Path,
    cfg: CellConfig,
    dest: Path,
    *,
    extra_files: Mapping[str, str] | None = None,
    vm: ClusterVm | None = None,
) -> Path:
    """A cell's (or a cluster VM's) input/ tree as its IO disk holds it: write_input_dir with
    the run's pinned osg-test configuration, `extra_files` (name -> text: a reproduction's
    control file), and for an osg-test cell with a test source its osg-test and
    osg-ca-generator tarballs."""
    inputs = write_input_dir(cfg, dest, osg_test_base(run_dir), vm=vm)
    for name, text in (extra_files or {}).items():
        (inputs / name).write_text(text)
    if cfg.test.osg_test and cfg.source.test_source:
        template = git_url_template(RunDir(run_dir).pinned(CATALOG_COPY))
        copy_tarballs(run_dir, cfg.source.test_source, template, inputs)
    return inputs


def write_cell_io_disk(
    run_dir: Path,
    cfg: CellConfig,
    disk: Path,
    *,
    extra_files: Mapping[str, str] | None = None,
    vm: ClusterVm | None = None,
) -> Path:
    """A cell's IO disk (or a cluster VM's) as its CreateDisk node makes it: its input tree
    (write_cell_inputs), the run's disk size and backend."""
    opts = RunManifest.read(run_dir).options
    with tempfile.TemporaryDirectory(prefix="osgtest-input-") as tmp:
        inputs = write_cell_inputs(run_dir, cfg, Path(tmp) / "input", extra_files=extra_files, vm=vm)
        return make_iodisk(inputs, disk, size_mb=opts.iodisk_size_mb, backend=opts.iodisk_backend)


def pin_inputs(
    run_dir: Path, cells: Sequence[Cell], catalog: Catalog, given: InputFiles, param_files: Sequence[Path]
) -> RunInputs:
    """Copy the inputs into `run_dir`/inputs/ (which exists) and write inputs.json and, when
    given, publish.json."""
    layout = RunDir(run_dir)
    inputs_dir = layout.inputs
    write_json_atomic(inputs_dir / CATALOG_COPY, catalog_entries(cells, catalog))
    arguments = given.parameter_arguments or tuple(Path(p) for p in param_files)
    known = tuple(
        _pin_copy(p, inputs_dir, f"known-failures-{i}{Path(p).suffix or '.yaml'}")
        for i, p in enumerate(given.known_failures)
    )
    tags = _pin_copy(given.component_tags, inputs_dir, COMPONENT_TAGS_COPY) if given.component_tags else None
    osg_test = None
    if given.osg_test_config:
        check_osg_test_config(given.osg_test_config)
        osg_test = _pin_copy(given.osg_test_config, inputs_dir, OSG_TEST_CONFIG_COPY)
    pinned = RunInputs(
        parameter_set=ParameterSet.of(tuple(str(Path(a).resolve()) for a in arguments), tuple(given.only)),
        catalog=PinnedFile(origin="", copy=CATALOG_COPY, sha256=file_sha256(inputs_dir / CATALOG_COPY)),
        catalog_files=tuple(str(Path(p).resolve()) for p in given.catalog_files),
        known_failures=known,
        component_tags=tags,
        osg_test_config=osg_test,
        previous=_pin_previous(given.previous, inputs_dir) if given.previous else None,
    )
    write_json_atomic(layout.run_inputs, pinned.to_json())
    if given.publish is not None:
        write_json_atomic(layout.publish_config, given.publish.to_json())
    return pinned


def _pin_previous(previous: Path, inputs_dir: Path) -> PinnedPrevious:
    """The previous run's results.json, copied; the run must have been analyzed."""
    path = Path(previous)
    results = RunDir(path).results if path.is_dir() else path
    doc = ResultsDocument.read(results)  # a clear error for a run not analyzed
    pin = _pin_copy(results, inputs_dir, PREVIOUS_RESULTS_COPY)
    return PinnedPrevious(
        run_dir=str(results.resolve().parent), run_name=doc.run.name, generated=doc.run.generated, results=pin
    )
