"""The run directory and its cells' directories: every path, and the matrix's node names.

A run directory (written by `generate`, filled by the nodes and the engines):

    run.json            the run manifest (manifest.RunManifest)
    cells.jsonl         every cell's configuration, one JSON object a line
    params/             copies of the parameter files used
    inputs/             what else the run was generated from, pinned (model/inputs.py):
                        images.json, inputs.json and the copies it names, publish.json
    submit/*.sub        submit descriptions
    workflow.dag        outer DAG: Matrix (SUBDAG) -> Analyze -> Report -> Publish
    matrix.dag          per cell: CreateDisk -> TestRun (POST) -> ProcessResult -> CleanOutput; FINAL
    matrix.config       DAGMan configuration of the matrix DAG
    workflow.status, matrix.status      DAGMan node status files
    logs/jobs.log       every node job's HTCondor event log
    submission.json     what `submit` sent to the schedd
    matrix-summary.json the FINAL node's summary
    results.json        the analysis; report.txt, report.html, junit.xml its renderings
    changes.json        what changed since the pinned previous run (report/compare.py)
    history.html        the runs root's history page, when the Report node wrote one
    rerun.json          (a rerun) where its cells came from
    run.lock            who has the directory now (runlock.py)
    cells/<serial>/     a cell's directory (CellDir), made by its CreateDisk node

Nothing outside this module spells these names or builds `cells/<serial>` by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# ------------------------------------------------------------------------------ node names
CREATE_DISK = "CreateDisk"
TEST_RUN = "TestRun"
PROCESS_RESULT = "ProcessResult"
CLEAN_OUTPUT = "CleanOutput"
# A cell's nodes in the matrix DAG, in their order (each the parent of the next).
LAYERS: tuple[str, ...] = (CREATE_DISK, TEST_RUN, PROCESS_RESULT, CLEAN_OUTPUT)
MATRIX_FINAL = "MatrixFinal"


@dataclass(frozen=True)
class NodeName:
    """A matrix node's name: its layer followed by the cell's serial (`TestRun007`). The serial,
    not the layer index, so a name means the same cell in every run of the same parameters."""

    layer: str
    serial: str

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise ValueError(f"not a matrix layer: {self.layer!r}")
        if not self.serial or any(ch.isspace() for ch in self.serial):
            raise ValueError(f"not a cell serial: {self.serial!r}")

    def format(self) -> str:
        return f"{self.layer}{self.serial}"

    def __str__(self) -> str:
        return self.format()

    @classmethod
    def parse(cls, name: str) -> NodeName:
        """The inverse of format(); ValueError for a name that is not a matrix cell's node."""
        found = cls.parse_or_none(name)
        if found is None:
            raise ValueError(f"not a matrix node name: {name!r}")
        return found

    @classmethod
    def parse_or_none(cls, name: str) -> NodeName | None:
        for layer in LAYERS:
            serial = name[len(layer) :]
            if name.startswith(layer) and serial and not any(ch.isspace() for ch in serial):
                return cls(layer, serial)
        return None

    @classmethod
    def of_cell(cls, serial: str) -> tuple[NodeName, ...]:
        """The cell's nodes, one per layer, in LAYERS order."""
        return tuple(cls(layer, serial) for layer in LAYERS)


def vm_node(serial: str) -> str:
    """The name of the cell's VM job node (TestRun<serial>)."""
    return NodeName(TEST_RUN, serial).format()


# ------------------------------------------------------------------------------ file names
MANIFEST = "run.json"
CELL_STORE = "cells.jsonl"
OUTER_DAG = "workflow.dag"
MATRIX_DAG = "matrix.dag"
MATRIX_CONFIG = "matrix.config"
OUTER_STATUS = "workflow.status"
MATRIX_STATUS = "matrix.status"
CELLS_DIR = "cells"
LOGS_DIR = "logs"
SUBMIT_DIR = "submit"
PARAMS_DIR = "params"
INPUTS_DIR = "inputs"  # what the run was generated from, pinned (model/inputs.py)
IMAGE_PINS = "images.json"  # in inputs/
RUN_INPUTS = "inputs.json"  # in inputs/: the pinned files and the previous run (model/inputs.py)
PUBLISH_CONFIG = "publish.json"  # in inputs/: where the Publish node publishes and mails
COMPARISON = "changes.json"
HISTORY_PAGE = "history.html"
JOB_LOG = "jobs.log"
SUBMISSION = "submission.json"
MATRIX_SUMMARY = "matrix-summary.json"
RESULTS = "results.json"
RERUN = "rerun.json"
LOCK = "run.lock"
REPORT_FILES = {"text": "report.txt", "html": "report.html", "junit": "junit.xml"}

CELL_CONFIG = "cell.json"
OUTPUT_DIR = "output"
GUEST_RESULT = "result.json"  # in output/ (docs/contracts.md §2)
POST_VM = "post-vm.json"
LOCAL_VM = "local-vm.json"
EXTRACTION = "extraction.json"
ATTEMPTS_DIR = "attempts"
SOURCE_STAMP = ".extracted-from.json"  # in output/: which returned disk it was extracted from
PREFETCH_DIR = ".prefetch"  # the local executor's read-ahead of the result disk (model/prefetch.py)
PREFETCH_RECORD = "prefetch.json"  # in .prefetch/: what was read, written last
VMS_DIR = "vms"  # in a cluster cell's directory: one directory per VM (docs/clusters.md)
CLUSTER_RECORD = "cluster.json"  # in a cluster cell's directory: the runner's barrier log
VM_CONSOLE = "console.log"  # in a cluster VM's directory: its console, as the job returned it


def vm_disk_stem(serial: str, vm: str) -> str:
    """What names a cluster VM's disks (`io-<stem>.qcow2`, `result-<stem>.qcow2`): the VMs'
    disks meet in one job's scratch directory on HTCondor."""
    return f"{serial}-{vm}"


def vm_console(vm: str) -> str:
    """A cluster VM's console as the cluster runner writes it in its job's directory."""
    return f"console-{vm}.log"


def vm_console_returned(vm: str) -> str:
    """Where that console comes back, relative to the cell directory (CellDir.vm_console)."""
    return f"{VMS_DIR}/{vm}/{VM_CONSOLE}"


def cell_rel(serial: str) -> PurePosixPath:
    """A cell directory relative to its run directory. `serial` may be a DAG macro
    (`$(serial)`) where a submit file names the directory."""
    return PurePosixPath(CELLS_DIR, serial)


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # documents
    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def cell_store(self) -> Path:
        return self.path / CELL_STORE

    @property
    def submission(self) -> Path:
        return self.path / SUBMISSION

    @property
    def matrix_summary(self) -> Path:
        return self.path / MATRIX_SUMMARY

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def rerun(self) -> Path:
        return self.path / RERUN

    @property
    def lock(self) -> Path:
        """The run-directory lock (model.runlock): who writes or deletes the directory now."""
        return self.path / LOCK

    def report(self, fmt: str) -> Path:
        return self.path / REPORT_FILES[fmt]

    # directories
    @property
    def cells(self) -> Path:
        return self.path / CELLS_DIR

    @property
    def logs(self) -> Path:
        return self.path / LOGS_DIR

    @property
    def submit(self) -> Path:
        return self.path / SUBMIT_DIR

    @property
    def inputs(self) -> Path:
        return self.path / INPUTS_DIR

    @property
    def image_pins(self) -> Path:
        return self.inputs / IMAGE_PINS

    @property
    def run_inputs(self) -> Path:
        return self.inputs / RUN_INPUTS

    @property
    def publish_config(self) -> Path:
        return self.inputs / PUBLISH_CONFIG

    def pinned(self, name: str) -> Path:
        """A pinned copy in inputs/, by the name inputs.json records."""
        return self.inputs / name

    @property
    def comparison(self) -> Path:
        return self.path / COMPARISON

    @property
    def history_page(self) -> Path:
        return self.path / HISTORY_PAGE

    @property
    def params(self) -> Path:
        return self.path / PARAMS_DIR

    # DAGs and what DAGMan writes beside them
    @property
    def outer_dag(self) -> Path:
        return self.path / OUTER_DAG

    @property
    def matrix_dag(self) -> Path:
        return self.path / MATRIX_DAG

    @property
    def outer_status(self) -> Path:
        return self.path / OUTER_STATUS

    @property
    def matrix_status(self) -> Path:
        return self.path / MATRIX_STATUS

    def dag_file(self, dag: str, suffix: str) -> Path:
        """A file DAGMan writes beside a DAG: `workflow.dag` + `.metrics`, `.dagman.log`,
        `.nodes.log`, `.lock`, `.condor.sub`, `.dagman.out`."""
        return self.path / f"{dag}{suffix}"

    @property
    def job_log(self) -> Path:
        return self.logs / JOB_LOG

    def cell(self, serial: str) -> CellDir:
        return CellDir(self, serial)


@dataclass(frozen=True)
class CellDir:
    """A cell's directory; with `vm`, the directory of one VM of a cluster cell
    (cells/<serial>/vms/<vm>/), which holds that VM's disks and output like a cell's."""

    run: RunDir
    serial: str
    vm: str | None = None

    @property
    def path(self) -> Path:
        return self.run.path / self.rel

    @property
    def rel(self) -> PurePosixPath:
        """The directory relative to the run directory (as results.json records paths)."""
        rel = cell_rel(self.serial)
        return rel / VMS_DIR / self.vm if self.vm else rel

    @property
    def disk_stem(self) -> str:
        """What names this directory's disks: the serial, or vm_disk_stem for a cluster VM."""
        return vm_disk_stem(self.serial, self.vm) if self.vm else self.serial

    @property
    def vm_console(self) -> Path:
        """A cluster VM's console of the job's last start (the runner's console-<vm>.log)."""
        return self.path / VM_CONSOLE

    def vm_dir(self, name: str) -> CellDir:
        return CellDir(self.run, self.serial, name)

    @property
    def vms_dir(self) -> Path:
        """A cluster cell's directory of VM directories."""
        return self.path / VMS_DIR

    @property
    def cluster_record(self) -> Path:
        return self.path / CLUSTER_RECORD

    @property
    def config(self) -> Path:
        return self.path / CELL_CONFIG

    @property
    def io_disk(self) -> Path:
        """The IO disk that goes into the VM (CreateDisk makes it)."""
        return self.path / f"io-{self.disk_stem}.qcow2"

    @property
    def scratch_disk(self) -> Path:
        """The VM's empty scratch disk, when its profile's disk is larger than its image
        (CreateDisk makes it; the VM gets it as its third disk; it never comes back)."""
        return self.path / f"scratch-{self.disk_stem}.qcow2"

    @property
    def result_disk(self) -> Path:
        """The IO disk as the VM job returned it (transfer_output_remaps)."""
        return self.path / f"result-{self.disk_stem}.qcow2"

    @property
    def output(self) -> Path:
        """The guest's output/, extracted from the result disk."""
        return self.path / OUTPUT_DIR

    @property
    def guest_result(self) -> Path:
        return self.output / GUEST_RESULT

    @property
    def source_stamp(self) -> Path:
        return self.output / SOURCE_STAMP

    @property
    def post_vm(self) -> Path:
        """The POST script's decisions, one per attempt."""
        return self.path / POST_VM

    @property
    def local_vm(self) -> Path:
        """The local executor's record of each VM start."""
        return self.path / LOCAL_VM

    @property
    def extraction(self) -> Path:
        """The extraction report of output/."""
        return self.path / EXTRACTION

    @property
    def prefetch(self) -> Path:
        """The local executor's staging directory for its read-ahead of the result disk."""
        return self.path / PREFETCH_DIR

    @property
    def prefetched_output(self) -> Path:
        """output/ as the local executor read it ahead (trusted only through model.prefetch)."""
        return self.prefetch / OUTPUT_DIR

    @property
    def prefetch_record(self) -> Path:
        return self.prefetch / PREFETCH_RECORD

    def attempt_output(self, retry: int) -> Path:
        """A failed attempt's extracted output, kept for diagnosis."""
        return self.path / ATTEMPTS_DIR / str(retry)

    def attempt_extraction(self, retry: int) -> Path:
        return self.path / ATTEMPTS_DIR / f"{retry}.{EXTRACTION}"

    def console(self, retry: int, start: int) -> Path:
        """The serial console of a VM start (local executor)."""
        return self.path / f"console.{retry}.{start}.log"

    def node(self, layer: str) -> NodeName:
        return NodeName(layer, self.serial)
