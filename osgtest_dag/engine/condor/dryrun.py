"""HTCondor's own tools as the validator of a run directory: `condor_submit -dry-run` of every
node's submit description with the node's VARS, and `condor_dagman -DryRun` parsing every DAG.

Which tools run is the caller's choice (`CondorTools`): the test pool's root
(devpool.inside.pool_tools: its HTCondor 23.9 run on the host through the root's own dynamic
loader, with no chroot, mount or daemon) or the host's HTCondor on PATH (`host_tools`).

What DAGMan 23.9 does when it submits a node, and so what the check does:
- condor_submit runs in the DAG's directory (or the node's DIR);
- the node's VARS are defined before the submit description is read (DAGMan's default,
  DAGMAN_DEFAULT_APPEND_VARS = false, i.e. `condor_submit name=value ... FILE`), so the
  description may use them anywhere, conditionals included;
- the node's initialdir exists: the cell's CreateDisk node made `cells/<serial>` before.
The check runs on a scratch copy of the run directory's DAGs, DAGMan configuration and submit
files (`.<run>.check-*` beside it: DAGMan refuses a node log under /tmp, so the copy is where
the run is) with `cells/<serial>` made for every serial a node names; the run directory itself
is never written.

Speed: one condor_submit per group of nodes sharing a submit file, directory and VARS names
(the description repeated once per node, each copy after that node's VARS: the same
definitions in the same order as one submission per node). A group that fails is narrowed to
the first node that fails on its own, and that node's own submission gives the message.
DAGMan's dry run is stopped once it has parsed the DAG ("Bootstrapping..."): it checks no
submit file, and walking a 6,000-node DAG takes it minutes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from osgtest_dag.base import command, paths
from osgtest_dag.base.errors import CommandError, UserError
from osgtest_dag.model import dagfile
from osgtest_dag.model.rundir import OUTER_DAG, RunDir

DAGMAN_PARSED = "Bootstrapping..."
# DAGMan log lines that a dry run outside a schedd always writes: not about the DAG
_DAGMAN_NOISE = ("Queue manager not initialized", "DagmanClassad")
_TIMESTAMP = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d ")
_ERROR = re.compile(r"\bERROR\b")  # not D_ERROR, a debug level DAGMan names in its log


@dataclass(frozen=True)
class CondorTools:
    """How to run HTCondor's command-line tools here, and where they come from."""

    origin: str  # said in the report: "the test pool's root (PATH)", "the host (PATH)"
    bindir: str
    prefix: tuple[str, ...] = ()  # before the program: a dynamic loader and its library path
    # True: a minimal configuration written for the check (tools that are not this host's own
    # installation); False: the host's own HTCondor configuration applies
    minimal_config: bool = False

    def argv(self, program: str, *args: str) -> list[str]:
        return [*self.prefix, str(Path(self.bindir) / program), *args]


def host_tools() -> CondorTools | None:
    """The host's condor_submit and condor_dagman on PATH, or None."""
    submit, dagman = command.which("condor_submit"), command.which("condor_dagman")
    if submit is None or dagman is None:
        return None
    return CondorTools(origin=f"the host ({submit.parent})", bindir=str(submit.parent))


@dataclass(frozen=True)
class Finding:
    where: str  # the submit file and node, or the DAG file
    message: str  # HTCondor's own words

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class DryRunReport:
    tools: str
    version: str  # condor_version's first line

    @property
    def htcondor(self) -> str:
        m = re.search(r"\$CondorVersion: (\S+)", self.version)
        return f"HTCondor {m.group(1)}" if m else "HTCondor"

    nodes: int  # nodes whose submission condor_submit checked
    submit_files: int
    tool_runs: int
    dags: int
    seconds: float
    errors: tuple[Finding, ...] = ()
    warnings: tuple[Finding, ...] = ()


@dataclass
class _Group:
    """Nodes that DAGMan submits the same way: one submit file, one directory, one set of VARS
    names (the values differ)."""

    submit_file: str
    cwd: Path  # where condor_submit runs: the DAG's directory (or the node's DIR), scratch copy
    nodes: list[dagfile.Node] = field(default_factory=list)


@dataclass
class _Result:
    ok: bool
    errors: str
    warnings: list[str]


def dry_run(run_dir: Path, tools: CondorTools, *, timeout: float = 300) -> DryRunReport:
    """Check `run_dir` (already structurally checked: generate.workflow.check_run) with
    HTCondor's tools. Errors are findings in the report, not exceptions."""
    run_dir = Path(run_dir).resolve()
    t0 = time.monotonic()
    with _scratch(run_dir) as scratch:
        checker = _Checker(run_dir, scratch, tools, timeout)
        dags = checker.copy_run()
        for dag in dags:
            checker.dagman_parse(dag)
        for group in checker.groups(dags):
            checker.check_group(group)
    return DryRunReport(
        tools=tools.origin,
        version=checker.version,
        nodes=checker.nodes_checked,
        submit_files=len(checker.submit_files),
        tool_runs=checker.runs,
        dags=len(dags),
        seconds=round(time.monotonic() - t0, 1),
        errors=tuple(checker.errors),
        warnings=tuple(dict.fromkeys(checker.warnings)),
    )


@contextlib.contextmanager
def _scratch(run_dir: Path) -> Iterator[Path]:
    """A scratch directory beside the run (same file system, same /tmp or not), else in the
    cache when the run's parent is not writable."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.check-", dir=run_dir.parent))
    except OSError:
        base = paths.cache_dir() / "check"
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{run_dir.name}.check-", dir=base))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Checker:
    def __init__(self, run_dir: Path, scratch: Path, tools: CondorTools, timeout: float):
        self.run_dir, self.scratch, self.tools, self.timeout = run_dir, scratch / "run", tools, timeout
        self.local = scratch / "local"  # HTCondor's LOG and LOCK directories for the check
        self.local.mkdir()
        self.env = self._environment(scratch)
        self.errors: list[Finding] = []
        self.warnings: list[Finding] = []
        self.submit_files: set[str] = set()
        self.nodes_checked = 0
        self.runs = 0
        self.batching = True
        self.version = self._condor_version()

    def _environment(self, scratch: Path) -> dict[str, str]:
        env = {"_CONDOR_LOG": str(self.local), "_CONDOR_LOCK": str(self.local)}
        if self.tools.minimal_config:
            config = scratch / "condor_config"
            config.write_text(f"LOCAL_DIR = {self.local}\nSPOOL = $(LOCAL_DIR)\nEXECUTE = $(LOCAL_DIR)\n")
            env["CONDOR_CONFIG"] = str(config)
        return env

    # --- the scratch copy ---------------------------------------------------------------------
    def copy_run(self) -> list[dagfile.Dag]:
        """Copy the DAGs (the outer one and its SUBDAG EXTERNALs), their CONFIG files and every
        submit file into the scratch run directory; make every cell's directory. Returns the
        scratch copies of the DAGs, parsed."""
        dags: list[dagfile.Dag] = []
        todo, seen = [Path(OUTER_DAG)], set()
        while todo:
            rel = todo.pop(0)
            if rel in seen:
                continue
            seen.add(rel)
            self._copy(rel)
            dag = dagfile.parse(self.scratch / rel)
            dags.append(dag)
            if dag.config:
                self._copy(rel.parent / dag.config)
            for node in dag.nodes.values():
                if node.dag_file is not None:
                    todo.append(rel.parent / node.dag_file)
                if node.submit_file is not None:
                    self._copy(rel.parent / (node.dir or "") / node.submit_file)
                if "serial" in node.vars:
                    RunDir(self.scratch).cell(node.vars["serial"]).path.mkdir(parents=True, exist_ok=True)
        RunDir(self.scratch).logs.mkdir(parents=True, exist_ok=True)
        return dags

    def _copy(self, rel: Path) -> None:
        if rel.is_absolute() or ".." in rel.parts:
            return  # outside the run directory: the tools read it where it is
        dest = self.scratch / rel
        if not dest.exists() and (self.run_dir / rel).is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.run_dir / rel, dest)

    def _here(self, text: str) -> str:
        """Messages name the run directory, not the scratch copy."""
        return text.replace(str(self.scratch), str(self.run_dir))

    def _where(self, path: Path) -> str:
        return self._here(str(path))

    # --- condor_version -------------------------------------------------------------------
    def _condor_version(self) -> str:
        try:
            proc = command.run(self.tools.argv("condor_version"), env=self.env, timeout=60)
        except CommandError as e:
            raise UserError(
                f"HTCondor's tools from {self.tools.origin} do not run: {e}",
                hint="rebuild the test pool's root (`osgtest-dag pool up` builds it) or fix the "
                "HTCondor installation",
            ) from None
        # "$CondorVersion: 23.9.6 2026-07-12 PackageID: ... $": DAGMan wants it whole
        return proc.stdout.splitlines()[0].strip() if proc.stdout.strip() else ""

    # --- condor_submit -dry-run -----------------------------------------------------------
    def groups(self, dags: Sequence[dagfile.Dag]) -> list[_Group]:
        groups: dict[tuple, _Group] = {}
        for dag in dags:
            for node in dag.nodes.values():
                if node.submit_file is None or node.noop or node.done:
                    continue  # DAGMan submits neither
                cwd = dag.path.parent / (node.dir or "")
                key = (cwd, node.submit_file, tuple(node.vars))
                if key not in groups:
                    groups[key] = _Group(submit_file=node.submit_file, cwd=cwd)
                    self.submit_files.add(str((cwd / node.submit_file).resolve()))
                groups[key].nodes.append(node)
        return list(groups.values())

    def check_group(self, group: _Group) -> None:
        self.nodes_checked += len(group.nodes)
        result = self._batch(group, group.nodes) if self.batching else None
        if result is not None and result.ok:
            self._warn(group, result)
            return
        failure = self._first_failure(group)
        if failure is not None:
            node, bad = failure
            others = f" (and possibly more of its {len(group.nodes)} nodes)" if len(group.nodes) > 1 else ""
            self.errors.append(Finding(self._node_where(group, node) + others, bad.errors))

    def _first_failure(self, group: _Group) -> tuple[dagfile.Node, _Result] | None:
        """The first node of a failing group that fails on its own."""
        first = self._single(group, group.nodes[0])
        if not first.ok:
            return group.nodes[0], first
        found = self._narrow(group, group.nodes[1:]) if self.batching else None
        if found is None:
            # every part passes on its own: these tools refuse the batch itself (a newer
            # condor_submit without repeated queue statements); one node at a time from here
            self.batching = False
            for node in group.nodes[1:]:
                result = self._single(group, node)
                if not result.ok:
                    return node, result
            return None
        return found

    def _narrow(self, group: _Group, nodes: list[dagfile.Node]) -> tuple[dagfile.Node, _Result] | None:
        while len(nodes) > 1:
            half = nodes[: len(nodes) // 2]
            if not self._batch(group, half).ok:
                nodes = half
            elif not self._batch(group, nodes[len(nodes) // 2 :]).ok:
                nodes = nodes[len(nodes) // 2 :]
            else:
                return None
        if not nodes:
            return None
        result = self._single(group, nodes[0])
        return None if result.ok else (nodes[0], result)

    def _batch(self, group: _Group, nodes: Sequence[dagfile.Node]) -> _Result:
        """One condor_submit for many nodes: the description repeated, each copy after its
        node's VARS, from standard input."""
        text = (group.cwd / group.submit_file).read_text(errors="replace")
        if not text.endswith("\n"):
            text += "\n"
        parts: list[str] = []
        for node in nodes:
            parts += [f"{name} = {value}\n" for name, value in node.vars.items()]
            parts.append(text)
        return self._submit(group, ["-"], input="".join(parts))

    def _single(self, group: _Group, node: dagfile.Node) -> _Result:
        """One node as DAGMan submits it: `name=value` before the submit file."""
        return self._submit(group, [*(f"{k}={v}" for k, v in node.vars.items()), group.submit_file])

    def _submit(self, group: _Group, args: list[str], input: str | None = None) -> _Result:
        self.runs += 1
        argv = self.tools.argv("condor_submit", "-dry-run", os.devnull, *args)
        try:
            proc = command.run(
                argv, check=False, env=self.env, cwd=group.cwd, input=input, timeout=self.timeout
            )
        except CommandError as e:
            return _Result(False, str(e), [])
        lines = [ln.rstrip() for ln in proc.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if _ERROR.search(ln)]
        # "WARNING: ...": about the description. (23.9's mixed-case "Warning: Use of multiple
        # queue statements ... is deprecated" is about our batch, not the user's file.)
        warnings = [ln for ln in lines if ln.startswith("WARNING")]
        ok = proc.returncode == 0 and not errors
        message = "; ".join(errors) or "\n".join(lines)[-800:] or f"condor_submit exited {proc.returncode}"
        return _Result(ok, self._here(message), warnings)

    def _node_where(self, group: _Group, node: dagfile.Node) -> str:
        return f"{self._where(group.cwd / group.submit_file)} (node {node.name})"

    def _warn(self, group: _Group, result: _Result) -> None:
        for w in result.warnings:
            self.warnings.append(Finding(self._where(group.cwd / group.submit_file), self._here(w)))

    # --- condor_dagman -DryRun ------------------------------------------------------------
    def dagman_parse(self, dag: dagfile.Dag) -> None:
        """DAGMan parses the DAG (and reads its CONFIG file): stopped once it has, or the errors
        it logged when it gave up."""
        out = dag.path.with_name(f"{dag.path.name}.check.dagman.out")
        env = {
            **self.env,
            "CONDOR_IDS": f"{os.getuid()}.{os.getgid()}",
            "_CONDOR_DAGMAN_LOG": str(out),
            # a dry run submits and removes nothing; make sure of it
            "_CONDOR_DAGMAN_CONDOR_SUBMIT_EXE": "/bin/false",
            "_CONDOR_DAGMAN_CONDOR_RM_EXE": "/bin/false",
        }
        argv = self.tools.argv(
            "condor_dagman",
            *("-p", "0", "-f", "-l", "."),
            *("-Dag", dag.path.name, "-Lockfile", f"{dag.path.name}.check.lock"),
            *("-CsdVersion", self.version, "-DryRun"),
        )
        self.runs += 1
        with open(os.devnull, "w") as null:
            proc = command.spawn(argv, stdout=null, stderr=null, cwd=dag.path.parent, env=env)
        end = time.monotonic() + self.timeout
        try:
            while True:
                text = out.read_text(errors="replace") if out.exists() else ""
                if DAGMAN_PARSED in text:
                    return
                if proc.poll() is not None:
                    text = out.read_text(errors="replace") if out.exists() else ""
                    if DAGMAN_PARSED not in text:
                        self.errors.append(
                            Finding(self._where(dag.path), self._here(_dagman_errors(text, proc.returncode)))
                        )
                    return
                if time.monotonic() > end:
                    self.errors.append(
                        Finding(
                            self._where(dag.path),
                            f"condor_dagman did not parse the DAG in {self.timeout:g} s",
                        )
                    )
                    return
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _dagman_errors(log: str, returncode: int | None) -> str:
    """What DAGMan said when it gave up: its ERROR lines, and the warning its strict mode made
    fatal."""
    lines = [_TIMESTAMP.sub("", ln).strip() for ln in log.splitlines()]
    picked = []
    for i, ln in enumerate(lines):
        if _ERROR.search(ln) and not any(noise in ln for noise in _DAGMAN_NOISE):
            if "Warning is fatal" in ln and i > 0:
                picked.append(lines[i - 1])
            picked.append(ln)
    return "; ".join(dict.fromkeys(picked)) or "\n".join(lines[-10:]) or f"condor_dagman exited {returncode}"
