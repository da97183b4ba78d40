"""Cell latency against the floor: a test cell's time vs the cheapest Linux VM boot on this machine.

The floor: this machine's own kernel (the newest /boot/vmlinuz-*) booting a busybox initramfs
whose /init mounts /proc and powers off at once (`console=ttyS0 quiet`), under the accelerator
the runs use, 1 vCPU, 1 GiB; qemu start to qemu exit, median of 3. Measured against it, in the
same process:

1. One small cell end to end (debian_12.x86_64, 'stable; main', install hello and run it,
   1 GiB, 1 vCPU): generate, then `run_local(jobs=1)` timed as a whole, then split:
   - the DAG nodes, from the executor's state files (`<dag>.local-state.json`: start/end);
   - inside the VM, from the serial console's kernel timestamps: qemu start to kernel is the
     qemu wall time (local-vm.json) minus the kernel time of "reboot: Power down"; boot to
     payload adds the kernel time of "osgtest-boot: starting"; each payload phase spans its
     "phase X: start" and "phase X: ok|FAILED" lines (output/result.json's 1-s times when the
     console has none); power-off is "osgtest-boot: powering off" to qemu's exit;
   - after the VM: extraction (extraction.json "seconds", read ahead by the executor before
     the POST script; they leave out the libguestfs appliance's launch) and the POST script
     (its start in logs/<node>.post.log, 1-s resolution, to the node's end in the state file).
2. The 8-cell demo (examples/demo) with --jobs VMs at once: wall time, and per cell boot to
   payload and the phase times.

Base images must be cached (the benchmark refuses to build them).

    .venv/bin/python benchmarks/bench_cell.py [--skip-demo] [--jobs 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError
from osgtest_dag.base.paths import default_image_dir
from osgtest_dag.engine.local.localrun import run_local
from osgtest_dag.generate import cellconfig, workflow
from osgtest_dag.guest import image, initramfs, qemu
from osgtest_dag.guest.payload import PHASES
from osgtest_dag.model.documents import GuestResult, VmRecord, read_json
from osgtest_dag.model.evidence import read_extraction
from osgtest_dag.model.outcome import Outcome
from osgtest_dag.model.rundir import RunDir, vm_node
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo"
CELL_PARAMS = """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
    selinux: false
    test_command: "hello | grep -q 'Hello, world!'"
vm: {memory: 1024, vcpus: 1}
"""
FLOOR_BOOTS = 3
SHORT = {"environment": "env", "network": "net", "hostname": "host", "repositories": "repos"}
CELL_TARGET_X = 5  # issue 14: one small cell's whole run at most 5x the floor
DEMO_TARGET_S = 180  # issue 14: the 8-cell demo in at most 3 minutes


# ------------------------------------------------------------------------------ the floor
def busybox_initramfs(work: Path) -> Path:
    """The floor's initramfs: this machine's static busybox powering off at once (the one the
    accelerator probe boots)."""
    out = initramfs.poweroff_initramfs(work / "floor-initramfs.gz")
    if out is None:
        raise UserError(
            "the floor needs a static busybox", hint="run scripts/setup (installs busybox-static)"
        )
    return out


def floor_boot(kernel: Path, initramfs: Path, accel: str) -> float:
    """Seconds from qemu's start to its exit, the guest having powered off (the CPU the cell's
    debian_12 guest gets)."""
    argv: list[str | Path] = [
        qemu.QEMU,
        *qemu.accel_args(accel, x86_64_level=2),
        "-smp",
        "1",
        "-m",
        "1024",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-kernel",
        kernel,
        "-initrd",
        initramfs,
        "-append",
        "console=ttyS0 quiet panic=-1",
    ]
    t0 = time.perf_counter()
    proc = command.run(argv, timeout=300)
    wall = time.perf_counter() - t0
    if "reboot: Power down" not in proc.stdout:
        raise RuntimeError(f"the floor guest did not power off:\n{proc.stdout[-2000:]}")
    return wall


# ------------------------------------------------------------------------------ console times
_STAMP = re.compile(rb"\[\s*(\d+\.\d+)\]\s")
_PHASE_LINE = re.compile(rb"\[osgtest [\d:.]+\] phase (\w+): (\w+)")


@dataclass(frozen=True)
class PhaseSpan:
    name: str
    start: float
    end: float | None  # None: the phase never said how it ended
    status: str | None

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass(frozen=True)
class ConsoleTimes:
    """Kernel timestamps (seconds since the kernel started) of the payload's landmarks."""

    payload_start: float | None  # "osgtest-boot: starting"
    phases: tuple[PhaseSpan, ...]
    payload_end: float | None  # "osgtest-boot: powering off"
    power_down: float | None  # "reboot: Power down"


def console_times(text: bytes) -> ConsoleTimes:
    """The landmarks of a serial console log; lines without a kernel timestamp are skipped."""
    payload_start = payload_end = power_down = None
    open_phases: dict[str, float] = {}
    spans: list[PhaseSpan] = []
    for line in text.split(b"\n"):
        stamp = _STAMP.search(line)
        if not stamp:
            continue
        t, rest = float(stamp.group(1)), line[stamp.end() :]
        if phase := _PHASE_LINE.search(rest):
            name, word = phase.group(1).decode(), phase.group(2).decode()
            if word == "start":
                open_phases[name] = t
            elif name in open_phases:
                spans.append(PhaseSpan(name, open_phases.pop(name), t, word.lower()))
        elif b"osgtest-boot: starting" in rest and payload_start is None:
            payload_start = t
        elif b"osgtest-boot: powering off" in rest:
            payload_end = t
        elif b"reboot: Power down" in rest:
            power_down = t
    spans += [PhaseSpan(name, start, None, None) for name, start in open_phases.items()]
    return ConsoleTimes(payload_start, tuple(sorted(spans, key=lambda s: s.start)), payload_end, power_down)


# ------------------------------------------------------------------------------ a cell's parts
@dataclass(frozen=True)
class CellTimes:
    serial: str
    name: str
    qemu_wall: float | None  # local-vm.json: qemu start to exit (the last VM start)
    pre_kernel: float | None  # qemu start to the kernel's time 0
    boot_to_payload: float | None
    payload_setup: float | None  # payload start to its first phase
    phases: tuple[PhaseSpan, ...]
    phase_source: str  # "console" or "result.json" (1-s resolution)
    power_off: float | None  # payload end to qemu exit
    extraction: float | None
    post_script: float | None  # ~1 s resolution


def _utc(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def _phases_from_result(run: RunDir, serial: str) -> tuple[PhaseSpan, ...]:
    path = run.cell(serial).guest_result
    if not path.is_file():
        return ()
    spans = []
    for p in GuestResult.read(path).phases:
        start, end = _utc(p.start), _utc(p.end)
        if start is not None:
            spans.append(PhaseSpan(p.name, start, end, p.status))
    return tuple(spans)


def _post_script_s(run: RunDir, node: str, ended: float | None) -> float | None:
    """Node end minus the start of its last POST script (the log's local time, 1-s)."""
    log = run.logs / f"{node}.post.log"
    if ended is None or not log.is_file():
        return None
    starts = re.findall(r"^--- (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) ", log.read_text(errors="replace"), re.M)
    return ended - time.mktime(time.strptime(starts[-1], "%Y-%m-%dT%H:%M:%S")) if starts else None


def node_spans(dag: Path) -> dict[str, tuple[float, float | None]]:
    """Each node's last attempt, (started, ended), from the executor's state file."""
    state = dag.with_name(f"{dag.name}.local-state.json")
    if not state.is_file():
        return {}
    out = {}
    for name, node in read_json(state)["nodes"].items():
        if node.get("attempts"):
            last = node["attempts"][-1]
            out[name] = (float(last["started"]), last.get("ended"))
    return out


def cell_times(run: RunDir, serial: str, name: str, matrix_nodes: dict) -> CellTimes:
    cell = run.cell(serial)
    records = VmRecord.read_all(cell.local_vm)
    vm = records[-1] if records else None
    console = console_times((cell.path / vm.console).read_bytes()) if vm and vm.console else None
    wall = vm.wall_s if vm else None
    pre = (
        wall - console.power_down if console and wall is not None and console.power_down is not None else None
    )
    to_payload = (
        pre + console.payload_start if pre is not None and console.payload_start is not None else None
    )
    phases, source = (console.phases, "console") if console and console.phases else ((), "")
    if not phases:
        phases, source = _phases_from_result(run, serial), "result.json"
    setup = off = None
    if console and console.payload_start is not None and source == "console":
        setup = phases[0].start - console.payload_start
    if console and console.payload_end is not None and console.power_down is not None:
        off = console.power_down - console.payload_end  # qemu's own exit is counted in `pre`
    extraction = read_extraction(cell)
    node = vm_node(serial)
    ended = matrix_nodes.get(node, (0.0, None))[1]
    return CellTimes(
        serial=serial,
        name=name,
        qemu_wall=wall,
        pre_kernel=pre,
        boot_to_payload=to_payload,
        payload_setup=setup,
        phases=phases,
        phase_source=source,
        power_off=off,
        extraction=float(extraction["seconds"])
        if extraction and extraction.get("seconds") is not None
        else None,
        post_script=_post_script_s(run, node, ended),
    )


# ------------------------------------------------------------------------------ runs
def generate(work: Path, name: str, params: Path) -> tuple[Path, float]:
    t0 = time.perf_counter()
    cat = Catalog.load(image_dir=default_image_dir())
    m = matrix.build([params], cat)
    run = workflow.write_run(
        work / name, list(m.cells), cat, workflow.WorkflowOptions(), param_files=list(m.files)
    )
    return run, time.perf_counter() - t0


def refuse_missing_images(run: Path) -> None:
    image.refuse_missing(
        cellconfig.missing_images(run),
        default_image_dir(),
        "benchmark",
        hint="build them with the commands above, then run the benchmark again",
    )


def timed_run(run: Path, jobs: int) -> float:
    t0 = time.perf_counter()
    # The run takes the accelerator main() printed (qemu.accel_choice, kept per process): its
    # own line about it would only repeat that.
    res = run_local(run, jobs=jobs, progress=False, stream=io.StringIO())
    wall = time.perf_counter() - t0
    if not res.ok or any(o is not Outcome.PASS for o in res.outcomes.values()):
        print(f"warning: {run.name}: workflow ok={res.ok}, outcomes {res.outcomes}", file=sys.stderr)
    return wall


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.{1 if abs(v) >= 1 else 2}f}"


def _row(label: str, seconds: float | None, floor: float | None = None, indent: int = 0) -> str:
    # no ratio for parts under a tenth of the floor: "0.0x" says nothing
    ratio = f"{seconds / floor:7.1f}x" if seconds is not None and floor and seconds >= floor / 10 else ""
    return f"{'  ' * indent + label:<64}{_s(seconds):>8} s {ratio}"


def print_cell(run: Path, t_gen: float, t_run: float, floor: float) -> None:
    layout = RunDir(run)
    outer, inner = node_spans(layout.outer_dag), node_spans(layout.matrix_dag)
    (cfg,) = cellconfig.iter_cells(run)
    c = cell_times(layout, cfg.serial, cfg.label, inner)
    print(f"\none cell: {cfg.platform.id} '{cfg.source.raw}' {cfg.label}, -j 1")
    print(_row("floor (host kernel + busybox initramfs, median)", floor, floor))
    print(_row("generate", t_gen, floor))
    print(_row("run (run_local, whole)", t_run, floor))
    print(_row("generate + run", t_gen + t_run, floor))

    def span(nodes: dict, name: str) -> float | None:
        started, ended = nodes.get(name, (0.0, None))
        return None if ended is None else ended - started

    for name in sorted(outer, key=lambda n: outer[n][0]):
        print(_row(f"node {name}", span(outer, name), floor, 1))
        if name != "Matrix":
            continue
        for sub in sorted(inner, key=lambda n: inner[n][0]):
            print(_row(f"node {sub}", span(inner, sub), floor, 2))
            if sub == vm_node(cfg.serial):
                print_vm_parts(c, floor, span(inner, sub))
        children = sum(v for v in (span(inner, n) for n in inner) if v is not None)
        matrix_s = span(outer, name)
        print(_row("between matrix nodes", None if matrix_s is None else matrix_s - children, None, 2))
    outer_sum = sum(v for v in (span(outer, n) for n in outer) if v is not None)
    print(_row("executor outside the nodes (pins, accelerator, scheduling)", t_run - outer_sum, None, 1))


def print_vm_parts(c: CellTimes, floor: float, node_s: float | None) -> None:
    print(_row("qemu start -> kernel (firmware, bootloader, qemu's exit)", c.pre_kernel, None, 3))
    print(_row("= boot to payload (qemu start -> osgtest-boot starting)", c.boot_to_payload, floor, 3))
    print(_row("payload start -> first phase", c.payload_setup, None, 3))
    for p in c.phases:
        print(_row(f"phase {p.name} ({p.status or 'unfinished'}, {c.phase_source})", p.seconds, None, 3))
    parts = [c.boot_to_payload, c.payload_setup, *(p.seconds for p in c.phases), c.power_off]
    between = None if c.qemu_wall is None or None in parts else c.qemu_wall - sum(filter(None, parts))
    print(_row("between phases, after the last (run-job's own work)", between, None, 3))
    print(_row("power-off (osgtest-boot powering off -> qemu exit)", c.power_off, None, 3))
    print(_row("= qemu wall (local-vm.json)", c.qemu_wall, floor, 3))
    rest = None if node_s is None or c.qemu_wall is None else node_s - c.qemu_wall
    print(_row("node outside qemu (overlay, extraction, POST script)", rest, None, 3))
    # the executor reads the returned disk ahead, before the POST script, which takes that read
    print(_row("extraction (extraction.json: reading, not the launch)", c.extraction, None, 4))
    print(_row("POST script (from its log's start, ~1 s)", c.post_script, None, 4))
    other = None
    if rest is not None and c.post_script is not None and c.extraction is not None:
        other = rest - c.post_script - c.extraction
    print(_row("the rest (overlay, appliance launch; 1-s resolution)", other, None, 4))


def print_demo(run: Path, wall: float, floor: float, jobs: int) -> None:
    layout = RunDir(run)
    inner = node_spans(layout.matrix_dag)
    cells = [
        cell_times(layout, c.serial, f"{c.platform.id} {c.source.raw} / {c.label}", inner)
        for c in cellconfig.iter_cells(run)
    ]
    print(f"\ndemo: {len(cells)} cells, -j {jobs}")
    print(_row("demo run (run_local, whole)", wall, floor), f"(target {DEMO_TARGET_S} s)")
    names = list(PHASES) + sorted({p.name for c in cells for p in c.phases} - set(PHASES))
    head = ["boot", *(SHORT.get(n, n[:6]) for n in names), "off", "qemu", "extr", "post"]
    print(f"{'cell':<44}" + "".join(f"{h:>7}" for h in head))
    for c in cells:
        by_name = {p.name: p.seconds for p in c.phases}
        vals = [c.boot_to_payload, *(by_name.get(n) for n in names), c.power_off, c.qemu_wall]
        vals += [c.extraction, c.post_script]
        mark = "" if c.phase_source == "console" else " *"
        print(f"{c.serial + ' ' + c.name:<44.44}" + "".join(f"{_s(v):>7}" for v in vals) + mark)
    print(
        "boot: qemu start -> payload start; phases: console kernel timestamps (* result.json, 1 s);"
        " off: payload end -> qemu exit; extr: reading the disk (not the launch); post: POST script"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-demo", action="store_true", help="only the floor and the one cell")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="VMs at once in the demo (default 2)")
    ap.add_argument("--keep", type=Path, help="keep the run directories under this directory")
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-cell-", dir=args.keep))
    try:
        params = work / "params-cell"
        params.mkdir()
        (params / "cell.yaml").write_text(CELL_PARAMS)
        cell_run, t_gen = generate(work, "cell", params)
        refuse_missing_images(cell_run)
        demo_run = None
        if not args.skip_demo:
            demo_run, _ = generate(work, "demo", DEMO)
            refuse_missing_images(demo_run)
        kernel = qemu.host_kernel()
        if kernel is None:
            raise UserError("no kernel in /boot for the floor", hint="run scripts/setup (linux-image-amd64)")
        choice = qemu.accel_choice()
        print(choice.line())
        initramfs = busybox_initramfs(work)
        boots = [floor_boot(kernel, initramfs, choice.accel) for _ in range(FLOOR_BOOTS)]
        floor = statistics.median(boots)
        print(f"floor: {kernel.name} + busybox initramfs, {choice.accel}, 1 vCPU, 1 GiB: ", end="")
        print(f"median {floor:.2f} s of {', '.join(f'{b:.2f}' for b in boots)}")

        t_run = timed_run(cell_run, jobs=1)
        print_cell(cell_run, t_gen, t_run, floor)
        print(f"one cell: run {t_run / floor:.1f}x the floor (target {CELL_TARGET_X}x)")
        if demo_run is not None:
            t_demo = timed_run(demo_run, jobs=args.jobs)
            print_demo(demo_run, t_demo, floor, args.jobs)
            print(f"demo: {t_demo:.0f} s = {t_demo / floor:.1f}x the floor (target {DEMO_TARGET_S} s)")
    except UserError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    finally:
        if args.keep:
            print(f"run directories kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
