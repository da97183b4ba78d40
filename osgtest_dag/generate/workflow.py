"""Matrix -> a self-contained run directory: DAGs, submit files, per-cell configuration.

Layout of a run directory (docs/run-directory.md):

    run.json            manifest: schema, tool version, options, cell count
    cells.jsonl         every cell's configuration, one JSON object per line
    params/             copies of the parameter files used (the run is reproducible)
    inputs/             the other inputs, pinned (generate/inputs.py, model/inputs.py)
    workflow.dag        outer DAG: Matrix (SUBDAG) -> Analyze -> Report -> Publish
    matrix.dag          per cell: CreateDisk -> TestRun (POST classifies) -> ProcessResult -> CleanOutput; FINAL
    matrix.config       DAGMan configuration of the matrix DAG
    submit/*.sub        submit descriptions rendered from submit_templates/
    cells/<serial>/     made by the cell's CreateDisk node: cell.json, disks, output, logs
    logs/

The DAG model and writer are htcondor2.dags'. Its writer has bugs we work around in
`_Writer` (see there); tests assert the exact lines written.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import htcondor2
import htcondor2.dags as dags
import jinja2

from osgtest_dag import __version__
from osgtest_dag.base import paths
from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import UserError
from osgtest_dag.generate.cellconfig import cell_config, write_store
from osgtest_dag.generate.clusterjob import CLUSTER_RUN_SUB, cluster_submit_files, cluster_vars
from osgtest_dag.generate.inputs import InputFiles, pin_inputs
from osgtest_dag.guest import pins
from osgtest_dag.model import dagfile, rundir, runlock
from osgtest_dag.model.cell import CellConfig
from osgtest_dag.model.manifest import RunManifest, WorkflowOptions
from osgtest_dag.model.rundir import NodeName, cell_rel
from osgtest_dag.plan.catalog import Catalog
from osgtest_dag.plan.matrix import Cell

SHIPPED_TEMPLATES = paths.shipped_dir("submit_templates")

# Exit codes of the VM node's POST script (`osgtest-dag node post-vm`): a guest that finished
# its payload (pass or a product failure) is a done node; infrastructure failures are retried;
# failures that a retry cannot fix stop at once.
POST_OK = 0
POST_INFRA_RETRY = 1
POST_INFRA_FATAL = 2


# What the host's wall-clock limit (max_wall) allows on top of a cell's test timeout: booting
# (a few minutes under TCG), the network and repositories (mirror retries with back-off) and
# installing the package set (large sets download and configure for 10-20 minutes). With it,
# the guest's own limit on the test (`timeout` in run-job, exit 124) fires first, so a test that
# never ends comes back with its result and finished phases instead of a VM killed from outside.
SETUP_ALLOWANCE_S = 1800


def _test_time(cell: Cell) -> int:
    """The longest the test may run: its timeout, or a cluster's stages' one after another."""
    cluster = cell.cluster
    if cluster is None:
        return cell.test_timeout
    return sum(stage.timeout or cell.test_timeout for stage in cluster.stages)


def _guest_time(cell: Cell) -> int:
    """Seconds the guest may need: set-up plus the test, twice for a cell with an update (the
    update phase upgrades and runs the test again, under the same timeout)."""
    passes = 2 if cell.source.has_update else 1
    return passes * (_test_time(cell) + SETUP_ALLOWANCE_S)


def wall_clock_limit(cells: list[Cell], max_wall: int | None) -> int:
    """The VMs' wall-clock limit: `max_wall` when given, else derived from the cells' test
    timeouts (the largest guest time). A given limit that is not larger than the largest test
    timeout is refused: the VM would be killed before the guest's own limit could fire."""
    if not cells:
        return max_wall or SETUP_ALLOWANCE_S
    if max_wall is None:
        return max(_guest_time(c) for c in cells)
    longest = max(cells, key=_test_time)
    if max_wall <= _test_time(longest):
        raise UserError(
            f"--max-wall {max_wall} is not larger than the test timeout of cell {longest.serial} "
            f"({_test_time(longest)} s, {longest.origin})",
            hint=f"leave --max-wall out to derive it ({max(_guest_time(c) for c in cells)} s here: the "
            f"test timeout plus {SETUP_ALLOWANCE_S} s for boot, repositories and install), or lower "
            "test_timeout",
        )
    return max_wall


def default_tool() -> str:
    """The osgtest-dag executable nodes should run: the one beside this Python, else PATH's."""
    beside = Path(sys.executable).parent / "osgtest-dag"
    if beside.exists():
        return str(beside)
    found = shutil.which("osgtest-dag")
    return str(Path(found).resolve()) if found else str(beside)


class _SerialFormatter(dags.NodeNameFormatter):
    """Node names carry the cell's serial (CreateDisk007), not the layer index, so a name
    means the same cell in every run of the same parameters, whatever --only selected."""

    def __init__(self, serials: list[str]):
        self.serials = serials
        self.index = {s: i for i, s in enumerate(serials)}

    def generate(self, layer_name: str, node_index: int) -> str:
        return NodeName(layer_name, self.serials[node_index]).format()

    def parse(self, node_name: str):
        name = NodeName.parse(node_name)
        return name.layer, self.index[name.serial]


class _Writer(dags.writer.DAGWriter):
    """htcondor2.dags' writer with its known bugs worked around:

    - it writes `CATEGORY name N` for max_jobs_by_category; DAGMan wants `MAXJOBS name N`;
    - it writes submit files as absolute paths (our run directory is built in a temporary
      directory and moved, and must stay relocatable): we write them relative;
    - it never writes the FINAL node's submit file, and `Submit.__str__` doubles `queue`:
      we render every submit file ourselves and pass paths;
    - its dagman config file has no trailing newline, and is always called dagman.config
      (two DAGs in one directory need two names);
    - a layer has one priority for all its nodes: we write each node's own (`priorities`,
      node name -> PRIORITY) where the writer would put the layer's;
    - a layer has one submit file: a node may have its own (`submit_files`, node name -> path;
      a cluster cell's TestRun runs the cluster runner, not a VM job).
    """

    def __init__(
        self,
        dag,
        node_name_formatter,
        config_name: str = dags.CONFIG_FILE_NAME,
        priorities: dict[str, int] | None = None,
        submit_files: dict[str, str] | None = None,
    ):
        super().__init__(dag, node_name_formatter=node_name_formatter)
        self.config_name = config_name
        self.priorities = priorities or {}
        self.submit_files = submit_files or {}

    def yield_node_meta_lines(self, node, name):
        lines = list(super().yield_node_meta_lines(node, name))
        priority = self.priorities.get(name, 0)
        if priority:
            # the writer's place for it: after RETRY, SCRIPT and PRE_SKIP, before CATEGORY
            at = next(
                (i for i, x in enumerate(lines) if x.startswith(("CATEGORY ", "ABORT-DAG-ON "))), len(lines)
            )
            lines.insert(at, f"PRIORITY {name} {priority}")
        yield from lines

    def yield_dag_meta_lines(self):
        for line in super().yield_dag_meta_lines():
            if line.startswith("CATEGORY "):
                line = "MAXJOBS " + line[len("CATEGORY ") :]
            elif line == f"CONFIG {dags.CONFIG_FILE_NAME}":
                line = f"CONFIG {self.config_name}"
            yield line

    def yield_layer_lines(self, layer):
        layer_sub = Path(layer.submit_description).as_posix()
        for idx, vars_ in enumerate(layer.vars):
            name = self.get_node_name(layer, idx)
            sub = self.submit_files.get(name, layer_sub)
            yield " ".join([f"JOB {name} {sub}"] + self.get_node_meta_parts(layer, idx))
            if vars_:
                parts = [f"VARS {name}"]
                for key, value in vars_.items():
                    text = str(value).replace("\\", "\\\\").replace('"', r"\"")
                    parts.append(f'{key}="{text}"')
                yield " ".join(parts)
            yield from self.yield_node_meta_lines(layer, name)

    def yield_final_node_lines(self, n):
        yield f"FINAL {n.name} {Path(n.submit_description).as_posix()}"
        yield from self.yield_node_meta_lines(n, n.name)

    def write_submit_files_for_layers(self, path):
        pass  # rendered by render_submit_files()

    def write_dagman_config_file(self, dag_dir: Path):
        text = "".join(f"{k} = {v}\n" for k, v in self.dag.dagman_config.items())
        (dag_dir / self.config_name).write_text(text)


# The scratch disk's device after the base image (vda) and the IO disk (vdb), per vm_type.
SCRATCH_DEVICE = {"kvm": "vdc", "xen": "xvdc"}


def cell_vars(cell: Cell, vm_type: str = "kvm") -> dict:
    p = cell.platform
    out = {
        "serial": cell.serial,
        "platform": p.id,
        "image": p.image,
        "image_name": os.path.basename(p.image.rstrip("/")),
        "image_format": p.image_format,
        "condor_arch": p.condor_arch,
        "vm_memory": str(cell.vm.memory),
        "vm_vcpus": str(cell.vm.vcpus),
        "request_disk": f"{cell.vm.disk}MB",
    }
    if cell.scratch_mb:  # appended to test-run.sub's lists, hence the comma; no VAR: nothing
        disk = rundir.RunDir(Path(".")).cell(cell.serial).scratch_disk.name
        out["scratch_inputs"] = f",{disk}"
        out["scratch_vm_disks"] = f",{disk}:{SCRATCH_DEVICE[vm_type]}:w:qcow2"
    return out


def matrix_dag(
    cells: list[Cell],
    opts: WorkflowOptions,
    offsets: list[int],
    configs: Sequence[CellConfig | None] | None = None,
) -> dags.DAG:
    dag = dags.DAG(
        dagman_config={"DAGMAN_MAX_JOBS_IDLE": 1000, "DAGMAN_USER_LOG_SCAN_INTERVAL": 5},
        max_jobs_by_category={"LocalIO": opts.local_io_maxjobs},
        node_status_file=dags.NodeStatusFile(Path(rundir.MATRIX_STATUS), opts.node_status_interval),
    )
    serial_vars = [{"serial": c.serial} for c in cells]
    create = dag.layer(
        name=rundir.CREATE_DISK,
        submit_description=Path("submit/create-io-disk.sub"),
        vars=[{"serial": c.serial, "offset": str(o)} for c, o in zip(cells, offsets, strict=True)],
        retries=opts.disk_retries,
        category="LocalIO",
    )
    test = create.child_layer(
        name=rundir.TEST_RUN,
        submit_description=Path("submit/test-run.sub"),
        vars=[
            {**cell_vars(c), **cluster_vars(cfg)}
            if cfg is not None and cfg.cluster
            else cell_vars(c, opts.vm_type)
            for c, cfg in zip(cells, configs if configs is not None else [None] * len(cells), strict=True)
        ],
        edge=dags.OneToOne(),
        retries=opts.vm_retries,
        retry_unless_exit=POST_INFRA_FATAL,
        post=dags.Script(
            executable=opts.tool, arguments=["node", "post-vm", "$JOB", "$RETURN", "$RETRY", "$MAX_RETRIES"]
        ),
    )
    process = test.child_layer(
        name=rundir.PROCESS_RESULT,
        submit_description=Path("submit/process-result.sub"),
        vars=serial_vars,
        edge=dags.OneToOne(),
        category="LocalIO",
    )
    process.child_layer(
        name=rundir.CLEAN_OUTPUT,
        submit_description=Path("submit/clean-output.sub"),
        vars=serial_vars,
        edge=dags.OneToOne(),
    )
    # FINAL makes the matrix succeed whatever the cells did: their outcomes are results, and
    # the outer workflow must go on to analyze and report them.
    dag.final(name=rundir.MATRIX_FINAL, submit_description=Path("submit/matrix-final.sub"))
    return dag


def node_priorities(cells: list[Cell]) -> dict[str, int]:
    """Every node of a cell carries the cell's priority (plan.matrix.cell_priority), so its disk
    is made, its VM started and its result extracted before those of lower-priority cells;
    DAGMan (and the local executor) start ready nodes of higher priority first. Nodes at 0,
    DAGMan's default, get no line."""
    layers = (rundir.CREATE_DISK, rundir.TEST_RUN, rundir.PROCESS_RESULT, rundir.CLEAN_OUTPUT)
    return {NodeName(layer, c.serial).format(): c.priority for c in cells if c.priority for layer in layers}


def outer_dag(opts: WorkflowOptions) -> dags.DAG:
    dag = dags.DAG(node_status_file=dags.NodeStatusFile(Path(rundir.OUTER_STATUS), opts.node_status_interval))
    matrix = dag.subdag(name="Matrix", dag_file=Path(rundir.MATRIX_DAG))
    analyze = matrix.child_layer(name="Analyze", submit_description=Path("submit/analyze.sub"), vars=[{}])
    report = analyze.child_layer(name="Report", submit_description=Path("submit/report.sub"), vars=[{}])
    report.child_layer(name="Publish", submit_description=Path("submit/publish.sub"), vars=[{}])
    return dag


class _OuterFormatter(dags.NodeNameFormatter):
    def generate(self, layer_name, node_index):
        return layer_name

    def parse(self, node_name):
        return node_name, 0


LOCAL_NODES = {
    # file: (action, args, purpose, where its stdout/stderr go). CreateDisk runs before the
    # cell's directory exists (it makes it), so its output goes to logs/.
    "create-io-disk.sub": (
        "create-io-disk",
        ["$(serial)", "--offset", "$(offset)"],
        "build the cell's IO disk",
        f"{rundir.LOGS_DIR}/create-io-disk.$(serial)",
    ),
    "process-result.sub": (
        "process-result",
        ["$(serial)"],
        "extract the returned disk",
        f"{cell_rel('$(serial)')}/process-result",
    ),
    "clean-output.sub": (
        "clean-output",
        ["$(serial)"],
        "remove disks no longer needed",
        f"{cell_rel('$(serial)')}/clean-output",
    ),
    "matrix-final.sub": (
        "matrix-final",
        [],
        "summarize the matrix (FINAL node)",
        f"{rundir.LOGS_DIR}/matrix-final",
    ),
    "analyze.sub": ("analyze", [], "analyze every cell's results", f"{rundir.LOGS_DIR}/analyze"),
    "report.sub": ("report", [], "write the reports", f"{rundir.LOGS_DIR}/report"),
    "publish.sub": ("publish", [], "send or publish the report", f"{rundir.LOGS_DIR}/publish"),
}


def _jinja(opts: WorkflowOptions) -> jinja2.Environment:
    loaders = []
    if opts.template_dir:
        tdir = Path(opts.template_dir)
        if not tdir.is_dir():
            raise UserError("template directory not found", where=tdir)
        loaders.append(jinja2.FileSystemLoader(str(tdir)))
    loaders.append(jinja2.FileSystemLoader(str(SHIPPED_TEMPLATES)))
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_submit_files(
    opts: WorkflowOptions, run_name: str, generated: str, clusters: bool = False, scratch: bool = False
) -> dict[str, str]:
    """The run's submit files; `clusters`: it has cluster cells, `scratch`: cells with a
    scratch disk (test-run.sub then names their VARS; a run without stays as it always was)."""
    env = _jinja(opts)
    common = {
        "generated": generated,
        "version": __version__,
        "tool": opts.tool,
        "batch_name": opts.batch_name or run_name,
        "run_name": run_name,
        "matrix_dag": rundir.MATRIX_DAG,
    }
    environment = " ".join(f"{k}={v}" for k, v in opts.environment)
    files = {}
    try:
        files["test-run.sub"] = env.get_template("test-run.sub.j2").render(
            **common,
            vm_type=opts.vm_type,
            scratch=scratch,
            max_wall=opts.max_wall,
            max_starts=opts.max_starts,
            max_queue_time=opts.max_queue_time,
            requirements=opts.requirements(),
        )
        if clusters:  # only runs with cluster cells have the file
            files[CLUSTER_RUN_SUB] = env.get_template("cluster-run.sub.j2").render(
                **common,
                max_wall=opts.max_wall,
                max_starts=opts.max_starts,
                max_queue_time=opts.max_queue_time,
                requirements=opts.requirements(capability="OsgtestDagQemu"),
            )
        tmpl = env.get_template("local-node.sub.j2")
        for name, (action, args, purpose, stem) in LOCAL_NODES.items():
            files[name] = tmpl.render(
                **common,
                action=action,
                args=args,
                purpose=purpose,
                output=f"{stem}.out",
                error=f"{stem}.err",
                environment=environment,
            )
    except jinja2.TemplateError as e:
        raise UserError(
            f"submit template error: {e.message}",
            where=_template_location(e),
            hint="fix the template (or remove the override from --template-dir)",
        ) from None
    return files


def _template_location(e: jinja2.TemplateError) -> str:
    """file:line of a template error; syntax errors carry it, render errors only in the
    traceback, where Jinja puts the template's own file and line."""
    filename, lineno = getattr(e, "filename", None), getattr(e, "lineno", None)
    if filename and lineno:
        return f"{filename}:{lineno}"
    tb, where = e.__traceback__, "submit template"
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(".j2"):
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _check_submit(name: str, text: str) -> None:
    """Every description must parse with HTCondor's own parser before we write the run."""
    try:
        sub = htcondor2.Submit(text)
    except Exception as e:  # the bindings raise plain exceptions with HTCondor's message
        raise UserError(
            f"generated submit file {name} does not parse: {e}", hint="check your submit template overrides"
        ) from None
    if not sub.keys():
        raise UserError(f"generated submit file {name} is empty")


def write_run(
    run_dir: Path,
    cells: list[Cell],
    catalog: Catalog,
    opts: WorkflowOptions,
    *,
    param_files: list[Path],
    force: bool = False,
    command: str = "osgtest-dag generate --force",
    inputs: InputFiles | None = None,
) -> Path:
    """Write a complete run directory atomically: all of it, or nothing. An existing one
    (`force`) is replaced only while no other command or DAGMan job has it (model.runlock);
    `command` is what the refusal names. `inputs` are pinned into inputs/ (generate/inputs.py)."""
    run_dir = Path(run_dir)
    inputs = inputs or InputFiles()
    if run_dir.is_dir() and force:
        with runlock.locked(rundir.RunDir(run_dir), command):
            return _write_run(
                run_dir, cells, catalog, opts, param_files=param_files, force=force, inputs=inputs
            )
    return _write_run(run_dir, cells, catalog, opts, param_files=param_files, force=force, inputs=inputs)


def _write_run(
    run_dir: Path,
    cells: list[Cell],
    catalog: Catalog,
    opts: WorkflowOptions,
    *,
    param_files: list[Path],
    force: bool,
    inputs: InputFiles,
) -> Path:
    if not cells:
        raise UserError(
            "no cells to generate (the selection matched nothing)",
            hint="check --only and the include/exclude rules; `osgtest-dag plan` lists the cells",
        )
    if run_dir.exists() and not force:
        raise UserError(
            "run directory already exists",
            where=run_dir,
            hint="choose another -o, or pass --force to replace it",
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError("exists and is not a directory", where=run_dir)
    if inputs.previous and Path(inputs.previous).resolve() in (
        run_dir.resolve(),
        rundir.RunDir(run_dir.resolve()).results,
    ):
        raise UserError(
            "--previous is the run being generated", where=inputs.previous, hint="name an earlier run"
        )
    if not opts.tool:
        opts = replace(opts, tool=default_tool())
    run_name = run_dir.resolve().name
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    configs = [cell_config(c, catalog, nightly=opts.nightly) for c in cells]
    submit_files = render_submit_files(
        opts,
        run_name,
        generated,
        clusters=any(c.cluster is not None for c in configs),
        scratch=any(c.scratch_mb for c in cells),
    )
    for name, text in submit_files.items():
        _check_submit(name, text)

    parent = run_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_name}.tmp-", dir=parent))
    try:
        layout = rundir.RunDir(tmp)
        for sub in (layout.submit, layout.logs, layout.params, layout.cells, layout.inputs):
            sub.mkdir()
        for name, text in submit_files.items():
            (layout.submit / name).write_text(text)
        for i, pf in enumerate(param_files):
            shutil.copy2(pf, layout.params / f"{i:02d}-{Path(pf).name}")
        offsets = write_store(layout.cell_store, configs)
        # Images not built yet are pinned when the run builds or submits them.
        pins.pin(tmp, ((c.platform.id, c.platform.image) for c in cells))
        pin_inputs(tmp, cells, catalog, inputs, param_files)
        formatter = _SerialFormatter([c.serial for c in cells])
        _Writer(
            matrix_dag(cells, opts, offsets, configs),
            formatter,
            rundir.MATRIX_CONFIG,
            priorities=node_priorities(cells),
            submit_files=cluster_submit_files(configs),
        ).write(tmp, rundir.MATRIX_DAG)
        _Writer(outer_dag(opts), _OuterFormatter()).write(tmp, rundir.OUTER_DAG)
        manifest = RunManifest(
            generated=generated,
            tool_version=__version__,
            run_name=run_name,
            cells=len(cells),
            options=opts,
            param_files=tuple(str(Path(p).resolve()) for p in param_files),
            image_dir=catalog.image_dir,
        )
        write_json_atomic(layout.manifest, manifest.to_json())
        if run_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{run_name}.old-", dir=parent))
            os.rename(run_dir, old / "run")
            os.rename(tmp, run_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir


def check_run(run_dir: Path) -> dict:
    """Validate a run directory: every DAG acyclic with its files present, every submit
    description accepted by HTCondor's parser. Returns counts."""
    run_dir = Path(run_dir)
    RunManifest.read(run_dir)
    todo, seen, counts = [rundir.RunDir(run_dir).outer_dag], set(), {"dags": 0, "nodes": 0, "submit_files": 0}
    parsed: dict[str, str] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        dag = dagfile.parse(path)
        dagfile.check(dag, run_dir)
        counts["dags"] += 1
        counts["nodes"] += len(dag.nodes)
        for node in dag.nodes.values():
            if node.dag_file is not None:  # SUBDAG EXTERNAL
                todo.append(run_dir / node.dag_file)
                continue
            if node.submit_file is not None and node.submit_file not in parsed:
                text = (run_dir / node.submit_file).read_text()
                _check_submit(node.submit_file, text)
                parsed[node.submit_file] = text
    for text in parsed.values():
        htcondor2.Submit(text)
    counts["submit_files"] = len(parsed)
    return counts
