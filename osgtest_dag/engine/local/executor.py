"""The local executor: run a generated DAG on this machine, as DAGMan would, VMs under qemu.

What it honours, with DAGMan's semantics: dependencies, RETRY (with UNLESS-EXIT), PRE and POST
scripts (with $JOB $RETURN $RETRY $MAX_RETRIES $JOBID $DAG_STATUS $FAILED_COUNT), PRE_SKIP,
PRIORITY, CATEGORY + MAXJOBS, ABORT-DAG-ON, SUBDAG EXTERNAL and the FINAL node (which runs
whatever happened, and whose result is the DAG's). A node whose parent failed never runs.

Jobs are read from their submit descriptions with HTCondor's own parser (`htcondor2.Submit`,
with the node's VARS): local/vanilla/scheduler universe jobs run as processes; VM-universe jobs
boot under qemu from `vm_disk` (the base image behind a copy-on-write overlay, the other disks
copied into a scratch directory as HTCondor transfers them), with `vm_memory`, `vm_vcpus`,
`vm_networking`, and `transfer_output_files` + `transfer_output_remaps` bringing the disk back
where the DAG expects it. A VM past its wall-clock limit (the run's max_wall, the number in
`periodic_hold`) is killed, its console kept, and treated as a held-then-released job: it starts
again until `max_starts`, then counts as removed ($RETURN -1004).

State (`<dag>.local-state.json`) is written atomically after every node, so after Ctrl-C or
`kill -9` the next `run` finishes the rest without redoing finished nodes (failed nodes are run
again, as a DAGMan rescue DAG would). Ctrl-C stops VMs and jobs cleanly.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.model import dagfile
from osgtest_dag.model.documents import VmRecord
from osgtest_dag.model.rundir import LOCAL_VM
from osgtest_dag.base.atomic import write_json_atomic
from osgtest_dag.base.errors import CommandError, OsgtestDagError, UserError

log = logging.getLogger(__name__)

STATE_SCHEMA = "osgtest-dag/local-state"
RETURN_REMOVED = -1004        # DAGMan's $RETURN for a job that was removed (aborted)
RETURN_SUBMIT_FAILED = -1002  # the job could not be started at all
DEFAULT_MAX_WALL = 14400
DEFAULT_MAX_STARTS = 3


class Interrupted(OsgtestDagError):
    exit_code = 130

    def __init__(self):
        super().__init__("interrupted: running jobs were stopped; run again to finish the rest")


# ---------------------------------------------------------------------------- job descriptions
@dataclass(frozen=True)
class JobSpec:
    """A node's job as HTCondor's parser reads it, with the node's VARS applied."""

    universe: str
    executable: str
    arguments: tuple[str, ...]
    initialdir: Path
    output: Path | None
    error: Path | None
    environment: dict
    vm_memory: int = 0
    vm_vcpus: int = 1
    vm_networking: bool = False
    vm_disks: tuple[tuple[str, str, str, str], ...] = ()   # (file, device, permission, format)
    transfer_input_files: tuple[str, ...] = ()
    transfer_output_files: tuple[str, ...] = ()
    transfer_output_remaps: dict = field(default_factory=dict)
    max_wall: int = DEFAULT_MAX_WALL
    max_starts: int = DEFAULT_MAX_STARTS


def split_arguments(text: str) -> list[str]:
    """HTCondor's `arguments`: the new syntax (double-quoted, whitespace-separated, single
    quotes group, '' is a literal quote) or the old one (plain whitespace split)."""
    text = text.strip()
    if not (text.startswith('"') and text.endswith('"') and len(text) >= 2):
        return text.split()
    body = text[1:-1].replace('""', '"')
    out, cur, i, quoted, have = [], [], 0, False, False
    while i < len(body):
        c = body[i]
        if c == "'":
            if quoted and body[i + 1:i + 2] == "'":
                cur.append("'")
                i += 2
                continue
            quoted, have = not quoted, True
        elif c.isspace() and not quoted:
            if cur or have:
                out.append("".join(cur))
            cur, have = [], False
        else:
            cur.append(c)
        i += 1
    if cur or have:
        out.append("".join(cur))
    return out


def _split_environment(text: str) -> dict:
    return dict(a.split("=", 1) for a in split_arguments(text) if "=" in a)


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _max_wall(periodic_hold: str, fallback: int) -> int:
    m = re.search(r"JobCurrentStartDate\s*\)?\s*>\s*(\d+)", periodic_hold or "")
    return int(m.group(1)) if m else fallback


def _max_starts(periodic_release: str, fallback: int) -> int:
    m = re.search(r"NumJobStarts\s*<\s*(\d+)", periodic_release or "")
    return int(m.group(1)) if m else fallback


def read_job(submit_file: Path, node_vars: dict, dag_dir: Path, *, node_name: str) -> JobSpec:
    """Parse a node's submit description with htcondor2.Submit and the node's VARS."""
    import htcondor2
    try:
        sub = htcondor2.Submit(submit_file.read_text())
    except OSError as e:
        raise UserError(f"node {node_name}: cannot read submit file: {e.strerror}", where=submit_file) from None
    except Exception as e:  # HTCondor's parser raises plain exceptions
        raise UserError(f"node {node_name}: submit file does not parse: {e}", where=submit_file) from None
    for k, v in node_vars.items():
        sub[k] = v

    def get(key: str, default: str = "") -> str:
        if key not in sub:
            return default
        return sub.expand(key).strip()

    universe = get("universe", "vanilla").lower()
    initialdir = dag_dir / get("initialdir", ".")

    def at(p: str) -> Path | None:
        return (initialdir / p) if p else None

    remaps = {}
    for pair in get("transfer_output_remaps").strip('"').split(";"):
        if "=" in pair:
            a, b = pair.split("=", 1)
            remaps[a.strip()] = b.strip()
    disks = []
    for entry in _split_list(get("vm_disk")):
        parts = entry.split(":")
        if len(parts) < 3:
            raise UserError(f"node {node_name}: bad vm_disk entry {entry!r}", where=submit_file,
                            hint="file:device:permission[:format]")
        disks.append((parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else ""))
    return JobSpec(
        universe=universe, executable=get("executable"),
        arguments=tuple(split_arguments(get("arguments"))), initialdir=initialdir,
        output=at(get("output")), error=at(get("error")),
        environment=_split_environment(get("environment").strip()),
        vm_memory=int(get("vm_memory", "0") or 0), vm_vcpus=int(get("vm_vcpus", "1") or 1),
        vm_networking=get("vm_networking", "false").lower() in ("true", "1", "yes"),
        vm_disks=tuple(disks), transfer_input_files=_split_list(get("transfer_input_files")),
        transfer_output_files=_split_list(get("transfer_output_files")),
        transfer_output_remaps=remaps,
        max_wall=_max_wall(get("periodic_hold"), DEFAULT_MAX_WALL),
        max_starts=_max_starts(get("periodic_release"), DEFAULT_MAX_STARTS))


# ---------------------------------------------------------------------------- state
class State:
    """Per-DAG node states on disk, written atomically after every change that matters."""

    def __init__(self, path: Path):
        self.path = path
        self.nodes: dict[str, dict] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("schema") == STATE_SCHEMA:
                    self.nodes = data["nodes"]
            except (OSError, ValueError):
                log.warning("ignoring unreadable state file %s", path)
        self._lock = threading.Lock()

    def get(self, name: str) -> dict:
        return self.nodes.setdefault(name, {"status": "pending", "retries": 0, "attempts": []})

    def save(self) -> None:
        with self._lock:
            write_json_atomic(self.path, {"schema": STATE_SCHEMA, "version": 1, "nodes": self.nodes})


# ---------------------------------------------------------------------------- resources
class Slots:
    """Counting limits shared by a DAG and its sub-DAGs: VMs (-j), local jobs, categories."""

    def __init__(self, vm_jobs: int, local_jobs: int):
        self.cond = threading.Condition()
        self.limits = {"vm": vm_jobs, "local": local_jobs}
        self.used: dict[str, int] = {}

    def try_take(self, keys: list[str]) -> bool:
        with self.cond:
            if all(self.used.get(k, 0) < self.limits.get(k, 1 << 30) for k in keys):
                for k in keys:
                    self.used[k] = self.used.get(k, 0) + 1
                return True
            return False

    def give(self, keys: list[str]) -> None:
        with self.cond:
            for k in keys:
                self.used[k] -= 1
            self.cond.notify_all()


def default_jobs(vm_memory_mb: int = 2048) -> int:
    """VMs this machine can hold at once, by cores and by available memory."""
    cores = os.cpu_count() or 1
    try:
        avail_kb = int(re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    except (OSError, AttributeError):
        avail_kb = 4 << 20
    by_mem = max(1, (avail_kb // 1024 - 1024) // (vm_memory_mb + 256))
    return max(1, min(cores, by_mem))


class _JobSlot:
    """A node's hold on its job slots (VM or local, category): the scheduler takes them when
    it starts the node, the node gives them back when its job ends and takes them again for
    a retry."""

    def __init__(self, slots: Slots, keys: list[str]):
        self.slots, self.keys, self.held = slots, keys, True

    def take(self, stop: threading.Event) -> bool:
        while not self.held:
            if stop.is_set():
                return False
            if self.slots.try_take(self.keys):
                self.held = True
            else:
                with self.slots.cond:
                    self.slots.cond.wait(timeout=1.0)
        return True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.give(self.keys)


# ---------------------------------------------------------------------------- the executor
@dataclass
class Options:
    jobs: int = 0                      # VMs at once; 0 = default_jobs()
    local_jobs: int = 0                # local processes at once; 0 = 2 x cores
    accel: str | None = None
    exclude_nodes: frozenset = frozenset()   # nodes (and their descendants) left out (--only)
    progress: object = None            # a Progress (see progress.py) or None


class Executor:
    """Runs one DAG file (and, through SUBDAG EXTERNAL, the DAGs it names)."""

    def __init__(self, opts: Options):
        self.opts = opts
        cores = os.cpu_count() or 1
        self.slots = Slots(opts.jobs or default_jobs(), opts.local_jobs or 2 * cores)
        self.stop = threading.Event()
        self.children: dict[int, object] = {}   # pid -> Popen or qemu.VM, for Ctrl-C
        self.children_lock = threading.Lock()
        self.job_counter = 0

    # -- public -----------------------------------------------------------------------------
    def run(self, dag_path: Path) -> bool:
        """Run the DAG to its end; True when it succeeded. Raises Interrupted on Ctrl-C."""
        dag_path = Path(dag_path).resolve()
        lock_path = dag_path.with_name(f".{dag_path.name}.local.lock")
        with open(lock_path, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError("another executor is running this DAG", where=dag_path,
                                hint="wait for it, or stop it first") from None
            self._reap_leftovers(dag_path)
            return self._run_dag(dag_path)

    def interrupt(self) -> None:
        """Stop: no new jobs; running VMs and processes are terminated."""
        self.stop.set()
        with self.children_lock:
            children = list(self.children.values())
        for ch in children:
            try:
                if hasattr(ch, "kill") and hasattr(ch, "deadline"):
                    ch.kill()                       # a qemu.VM: SIGTERM, then SIGKILL
                else:
                    os.killpg(ch.pid, signal.SIGTERM)
            except (ProcessLookupError, OSError):
                pass

    # -- a DAG ------------------------------------------------------------------------------
    def _run_dag(self, dag_path: Path) -> bool:
        dag = dagfile.parse(dag_path)
        dagfile.check(dag)
        dag_dir = dag_path.parent
        state = State(dag_path.with_name(f"{dag_path.name}.local-state.json"))
        for name, st in state.nodes.items():        # a resumed run: redo what did not finish
            if st["status"] in ("running", "failed", "futile"):
                st["status"], st["retries"] = "pending", 0
                st.pop("unless_exit", None)
        graph = dag.graph()
        excluded = set()
        for n in self.opts.exclude_nodes:
            if n in graph:
                excluded.add(n)
        parents = {n: set(graph.predecessors(n)) for n in graph}
        order = {n: i for i, n in enumerate(dag.nodes)}
        for name in dag.nodes:
            if dag.nodes[name].done and state.get(name)["status"] != "done":
                state.get(name)["status"] = "done"
        progress = self.opts.progress
        if progress:
            progress.add_dag(dag_path, [n for n in graph if n not in excluded], state)
        pending = [n for n in graph if n not in excluded and state.get(n)["status"] != "done"]
        if pending and dag.final:
            state.get(dag.final)["status"] = "pending"   # the FINAL node runs after any new work
        running: dict[str, threading.Thread] = {}
        failed: set[str] = set()
        done_lock = threading.Lock()
        finished: list[str] = []
        aborted = [None]

        def node_done(name: str, ok: bool, abort: int | None) -> None:
            with done_lock:
                finished.append(name)
                if abort is not None and aborted[0] is None:
                    aborted[0] = abort
            with self.slots.cond:
                self.slots.cond.notify_all()

        while True:
            if self.stop.is_set():
                break
            with done_lock:
                for name in finished:
                    running.pop(name, None)
                    if state.get(name)["status"] == "failed":
                        failed.add(name)
                finished.clear()
            if aborted[0] is not None:
                break
            # a node is ready when every parent is done; it never runs if one failed
            ready, futile = [], []
            for n in pending:
                if n in running:
                    continue
                ps = parents[n]
                failed_ps = [p for p in ps if p in failed or state.get(p)["status"] in ("failed", "futile")]
                # DAGMan (measured on 23.9): descendants of a node that ran out of retries
                # become futile; those of a node stopped by UNLESS-EXIT stay "not ready".
                if any(not state.get(p).get("unless_exit") for p in failed_ps):
                    futile.append(n)
                elif failed_ps:
                    continue
                elif all(p in excluded or state.get(p)["status"] == "done" for p in ps):
                    ready.append(n)
            for n in futile:
                pending.remove(n)
                state.get(n)["status"] = "futile"
                if progress:
                    progress.update(dag_path, n, "futile")
            ready.sort(key=lambda n: (-dag.nodes[n].priority, order[n]))
            for n in ready:
                keys = self._slot_keys(dag, dag_dir, n)
                if not self.slots.try_take(keys):
                    continue
                pending.remove(n)
                state.get(n)["status"] = "running"
                t = threading.Thread(target=self._node_thread,
                                     args=(dag, dag_dir, n, state, keys, node_done), daemon=True,
                                     name=f"node-{n}")
                running[n] = t
                t.start()
            if futile:
                continue   # descendants of what just became futile are futile too: look again
            if not running and not ready:
                break   # every node is done, failed or futile (or left out)
            with self.slots.cond:
                if not finished and not self.stop.is_set():
                    self.slots.cond.wait(timeout=1.0)
        for t in list(running.values()):
            t.join()
        state.save()
        if self.stop.is_set():
            raise Interrupted()
        failed = {n for n in graph if state.get(n)["status"] == "failed"}
        futile = {n for n in graph if state.get(n)["status"] == "futile"}
        ok = not failed and not futile and aborted[0] is None
        if dag.final:
            fin = state.get(dag.final)
            if fin["status"] != "done":
                fin["status"], fin["retries"] = "pending", 0
                status = 0 if ok else (2 if aborted[0] is not None else 1)
                keys = self._slot_keys(dag, dag_dir, dag.final)
                while not self.slots.try_take(keys):
                    with self.slots.cond:
                        self.slots.cond.wait(timeout=1.0)
                self._node_thread(dag, dag_dir, dag.final, state, keys, lambda *a: None,
                                  dag_status=status, failed_count=len(failed))
                if self.stop.is_set():
                    raise Interrupted()
            ok = state.get(dag.final)["status"] == "done"
        return ok

    def _slot_keys(self, dag: dagfile.Dag, dag_dir: Path, name: str) -> list[str]:
        node = dag.nodes[name]
        keys = []
        if node.category and node.category in dag.maxjobs:
            keys.append(f"cat:{dag.path}:{node.category}")
            self.slots.limits.setdefault(f"cat:{dag.path}:{node.category}", dag.maxjobs[node.category])
        if node.kind == "subdag" or node.noop:
            return keys
        keys.append("vm" if self._universe(dag_dir, node) == "vm" else "local")
        return keys

    def _universe(self, dag_dir: Path, node: dagfile.Node) -> str:
        try:
            text = (dag_dir / (node.dir or ".") / node.submit_file).read_text()
        except OSError:
            return "local"
        m = re.search(r"^\s*universe\s*=\s*(\w+)", text, re.MULTILINE | re.IGNORECASE)
        return m.group(1).lower() if m else "vanilla"

    # -- a node -----------------------------------------------------------------------------
    def _node_thread(self, dag, dag_dir, name, state, keys, node_done, dag_status=0, failed_count=0):
        abort = None
        ok = False
        slot = _JobSlot(self.slots, keys)   # taken by the scheduler; the job gives it back
        try:
            ok, abort = self._run_node(dag, dag_dir, name, state, dag_status, failed_count, slot)
        except Interrupted:
            pass  # a sub-DAG stopped by Ctrl-C: the node stays to be run again
        except Exception as e:  # a bug or an environment problem: the node fails, the run goes on
            log.exception("node %s: %s", name, e)
            st = state.get(name)
            st["status"] = "failed"
            st["attempts"].append({"error": str(e)[:500]})
        finally:
            slot.release()
            if self.stop.is_set() and state.get(name)["status"] == "running":
                state.get(name)["status"] = "pending"
            state.save()
            if self.opts.progress:
                self.opts.progress.update(dag.path, name, state.get(name)["status"])
            node_done(name, ok, abort)

    def _run_node(self, dag, dag_dir, name, state, dag_status, failed_count, slot: _JobSlot):
        node = dag.nodes[name]
        st = state.get(name)
        if self.opts.progress:
            self.opts.progress.update(dag.path, name, "running")
        while True:
            attempt = {"retry": st["retries"], "started": time.time()}
            st["attempts"].append(attempt)
            macros = {"JOB": name, "RETRY": str(st["retries"]), "MAX_RETRIES": str(node.retries),
                      "DAG_STATUS": str(dag_status), "FAILED_COUNT": str(failed_count)}
            result = None
            skip_job = False
            if node.pre:
                pre_rc = self._script(node.pre, dag_dir, macros, f"{name}.pre")
                attempt["pre"] = pre_rc
                if node.pre_skip is not None and pre_rc == node.pre_skip:
                    skip_job, result = True, 0
                elif pre_rc != 0:
                    result = pre_rc
                    macros["PRE_SCRIPT_RETURN"] = str(pre_rc)
            if self.stop.is_set():
                return False, None
            job_rc = None
            if result is None and not skip_job:
                if not slot.take(self.stop):      # a retry waits for a slot again
                    return False, None
                try:
                    job_rc = self._job(dag, dag_dir, node, macros, attempt)
                finally:
                    # As in DAGMan, MAXJOBS and -j count jobs, not POST scripts: the next VM
                    # boots while this one's POST script reads its disk.
                    slot.release()
                attempt["job"] = job_rc
                result = job_rc
            if self.stop.is_set():
                return False, None
            if node.post and not skip_job:
                macros["RETURN"] = str(job_rc if job_rc is not None else result)
                result = self._script(node.post, dag_dir, macros, f"{name}.post")
                attempt["post"] = result
            attempt["ended"] = time.time()
            attempt["result"] = result
            if node.abort_on and result == node.abort_on[0]:
                st["status"] = "failed" if result != 0 else "done"
                return result == 0, (node.abort_on[1] if node.abort_on[1] is not None else result)
            if result == 0:
                st["status"] = "done"
                return True, None
            stopped = node.retry_unless_exit is not None and result == node.retry_unless_exit
            if st["retries"] < node.retries and not stopped:
                st["retries"] += 1
                state.save()
                log.info("node %s failed (%s): retry %d of %d", name, result, st["retries"], node.retries)
                continue
            st["status"] = "failed"
            st["unless_exit"] = stopped
            return False, None

    def _script(self, script: dagfile.Script, dag_dir: Path, macros: dict, label: str) -> int:
        args = [self._macro(a, macros) for a in script.arguments]
        exe = script.executable
        if not os.path.isabs(exe) and (dag_dir / exe).exists():
            exe = str(dag_dir / exe)   # DAGMan runs scripts from the DAG's directory
        argv = [exe, *args]
        logf = dag_dir / "logs" / f"{label}.log" if (dag_dir / "logs").is_dir() else dag_dir / f"{label}.log"
        with open(logf, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(argv)}\n".encode())
            out.flush()
            return self._process(argv, dag_dir, out, out, {})

    @staticmethod
    def _macro(arg: str, macros: dict) -> str:
        return re.sub(r"\$(\w+)", lambda m: macros.get(m.group(1), m.group(0)), arg)

    def _process(self, argv, cwd: Path, stdout, stderr, env: dict) -> int:
        if self.stop.is_set():
            return RETURN_SUBMIT_FAILED
        try:
            proc = command.spawn(argv, stdout=stdout, stderr=stderr, cwd=cwd, env=env or None)
        except CommandError as e:
            log.error("%s", e)
            return RETURN_SUBMIT_FAILED
        with self.children_lock:
            self.children[proc.pid] = proc
        self._record_child(cwd, proc.pid, argv)
        try:
            rc = proc.wait()
        finally:
            with self.children_lock:
                self.children.pop(proc.pid, None)
        return rc  # killed by a signal: the negative signal number, as DAGMan reports it

    def _job(self, dag, dag_dir: Path, node: dagfile.Node, macros: dict, attempt: dict) -> int:
        if node.noop:
            return 0
        if node.kind == "subdag":
            ok = self._run_dag((dag_dir / node.dag_file).resolve())
            return 0 if ok else 1
        base = dag_dir / (node.dir or ".")
        spec = read_job(base / node.submit_file, node.vars, base, node_name=node.name)
        self.job_counter += 1
        macros["JOBID"] = f"{self.job_counter}.0.0"
        if spec.universe == "vm":
            return self._vm_job(spec, node, attempt)
        if spec.universe not in ("local", "vanilla", "scheduler"):
            raise UserError(f"node {node.name}: universe {spec.universe!r} cannot run locally")
        spec.initialdir.mkdir(parents=True, exist_ok=True)
        out = open(spec.output, "ab") if spec.output else subprocess.DEVNULL
        err = open(spec.error, "ab") if spec.error else subprocess.DEVNULL
        try:
            exe = spec.executable
            if exe and not os.path.isabs(exe) and (spec.initialdir / exe).exists():
                exe = str(spec.initialdir / exe)
            return self._process([exe, *spec.arguments], spec.initialdir, out, err, spec.environment)
        finally:
            for f in (out, err):
                if f is not subprocess.DEVNULL:
                    f.close()

    # -- VM universe ------------------------------------------------------------------------
    def _vm_job(self, spec: JobSpec, node: dagfile.Node, attempt: dict) -> int:
        from osgtest_dag.guest import qemu
        if not spec.vm_disks:
            raise UserError(f"node {node.name}: a VM job needs vm_disk")
        init = spec.initialdir
        inputs = {Path(f).name: f for f in spec.transfer_input_files}

        def source(name: str) -> Path:
            src = inputs.get(name, name)
            if "://" in src:
                if not src.startswith("file://"):
                    raise UserError(f"node {node.name}: cannot fetch {src} locally",
                                    hint="use a local path or file:// URL for the base image")
                src = src[len("file://"):]
            p = Path(src)
            return p if p.is_absolute() else init / p

        scratch = init / f".scratch-{node.name}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            base_file, _, _, base_fmt = spec.vm_disks[0]
            base = source(base_file)
            if not base.is_file():
                attempt["error"] = f"base image {base} missing"
                log.error("node %s: base image %s does not exist", node.name, base)
                return RETURN_SUBMIT_FAILED
            disks = []
            for f, _dev, _perm, fmt in spec.vm_disks[1:]:
                src = source(f)
                if not src.is_file():
                    attempt["error"] = f"input {src} missing"
                    return RETURN_SUBMIT_FAILED
                dst = scratch / Path(f).name
                shutil.copy2(src, dst)   # HTCondor transfers a copy; the original stays intact
                disks.append(qemu.Disk(dst, fmt or qemu.image_format(dst)))
            starts = 0
            while True:
                starts += 1
                for d, (f, *_rest) in zip(disks, spec.vm_disks[1:]):   # a fresh copy per start
                    if starts > 1:
                        shutil.copy2(source(f), d.path)
                console = init / f"console.{attempt['retry']}.{starts}.log"
                vm = qemu.start(base, disks, memory_mb=spec.vm_memory or 1024,
                                vcpus=spec.vm_vcpus, networking=spec.vm_networking,
                                timeout_s=spec.max_wall, console_log=console, workdir=scratch,
                                base_format=base_fmt or None, accel=self.opts.accel)
                with self.children_lock:
                    self.children[vm.pid] = vm
                self._record_child(scratch, vm.pid, list(vm.argv))
                try:
                    res = vm.wait()
                finally:
                    with self.children_lock:
                        self.children.pop(vm.pid, None)
                vm_record = {"starts": starts, "accel": res.accel, "wall_s": res.wall_s,
                             "returncode": res.returncode, "timed_out": res.timed_out,
                             "console": str(console.relative_to(init))}
                attempt.setdefault("vm", []).append(vm_record)
                VmRecord.append(init / LOCAL_VM, VmRecord(node=node.name, **vm_record))
                if self.stop.is_set():
                    return RETURN_REMOVED
                if res.timed_out:
                    log.warning("node %s: VM killed at its %d s limit (start %d of %d); console: %s",
                                node.name, spec.max_wall, starts, spec.max_starts, console)
                    if starts < spec.max_starts:
                        continue          # periodic_release: held for running too long -> released
                    return RETURN_REMOVED  # periodic_remove: out of starts
                break
            # the VM powered off: transfer outputs back, renamed as the remaps say
            for f in spec.transfer_output_files:
                produced = scratch / f
                if not produced.exists():
                    log.warning("node %s: output %s was not produced", node.name, f)
                    continue
                dest = init / spec.transfer_output_remaps.get(f, f)
                tmp = dest.with_name(f".{dest.name}.part")
                shutil.move(produced, tmp)
                os.replace(tmp, dest)
            return 0 if res.returncode == 0 else 1
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # -- leftovers of a killed executor ---------------------------------------------------------
    def _record_child(self, where: Path, pid: int, argv) -> None:
        """Remember children on disk so a later run can stop what a `kill -9`ed run left."""
        if not hasattr(self, "_children_file"):
            return
        _append_json(self._children_file, {"pid": pid, "argv0": str(argv[0]), "where": str(where),
                                           "started": time.time()})

    def _reap_leftovers(self, dag_path: Path) -> None:
        self._children_file = dag_path.with_name(f".{dag_path.name}.local-children.jsonl")
        if self._children_file.is_file():
            for line in self._children_file.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    cmdline = Path(f"/proc/{rec['pid']}/cmdline").read_bytes().split(b"\0")
                except (ValueError, OSError, KeyError):
                    continue
                if cmdline and cmdline[0].decode(errors="replace") == rec["argv0"]:
                    log.warning("stopping pid %d left running by an earlier executor", rec["pid"])
                    try:
                        os.killpg(rec["pid"], signal.SIGKILL)
                    except OSError:
                        pass
            self._children_file.unlink()


def _append_json(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def run_dag(dag_path: Path, opts: Options | None = None) -> bool:
    """Run a DAG file locally to its end (Ctrl-C stops it cleanly; run again to resume)."""
    ex = Executor(opts or Options())
    old = signal.getsignal(signal.SIGINT)
    is_main = threading.current_thread() is threading.main_thread()

    def on_sigint(signum, frame):
        log.warning("interrupted: stopping running jobs")
        ex.interrupt()
    if is_main:
        signal.signal(signal.SIGINT, on_sigint)
        signal.signal(signal.SIGTERM, on_sigint)
    try:
        return ex.run(dag_path)
    finally:
        if is_main:
            signal.signal(signal.SIGINT, old)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
