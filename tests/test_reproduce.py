"""`osgtest-dag reproduce`: which VM and phases it chooses, what it refuses, the report's line;
and (marked vm) real reproductions of a cell of a real local run, with a command and with a
root shell driven through tmux."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_results_run

from osgtest_dag.analyze import results
from osgtest_dag.base.errors import UserError
from osgtest_dag.engine.local import reproduce
from osgtest_dag.generate import workflow
from osgtest_dag.guest import payload
from osgtest_dag.model.rundir import RunDir
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog
from osgtest_dag.report import html as report_html

PARAMS = """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
    selinux: false
    test_command: hello
vm: {memory: 1536, vcpus: 2}
"""


@pytest.fixture
def generated(tmp_path):
    """A generated one-cell run whose base image is a small file in an image store."""
    store = tmp_path / "images"
    store.mkdir()
    img = store / "debian_12.x86_64.qcow2"
    img.write_bytes(b"the image")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "hello.yaml").write_text(PARAMS)
    cat = Catalog.load(image_dir=str(store))
    m = matrix.build([tmp_path / "p"], cat)
    opts = workflow.WorkflowOptions(tool="/opt/osgtest/bin/osgtest-dag")
    run = workflow.write_run(tmp_path / "run", list(m.cells), cat, opts, param_files=list(m.files))
    return Path(run), img


def test_prepare_takes_the_vm_the_run_gave_the_cell(generated):
    run, img = generated
    t = reproduce.prepare(run, "000")
    assert (t.image, t.image_format) == (img, "qcow2")
    assert (t.memory_mb, t.vcpus, t.networking) == (1536, 2, True)
    assert t.max_wall == workflow.WorkflowOptions().max_wall
    assert t.until == "collect" and "no guest result" in t.until_why
    assert t.warnings == ()
    with pytest.raises(UserError, match="unknown phase"):
        reproduce.prepare(run, "000", until="nope")


@pytest.mark.parametrize(
    "status,current,until,why",
    [
        ("pass", None, "collect", "passed"),
        ("install", None, "install", "failed in its install phase"),
        ("test", None, "test", "failed in its test phase"),
        ("repos", None, "repositories", "failed in its repositories phase"),
        ("running", "test", "test", "stopped in its test phase"),  # a guest stopped at its limit
        ("payload", None, "environment", "failed in its environment phase"),
    ],
)
def test_the_default_phase_is_the_one_that_failed(tmp_path, status, current, until, why):
    r = make_results_run(tmp_path, params={"deb.yaml": PARAMS})
    r.guest("000", status, current_phase=current)
    assert reproduce.default_until(RunDir(r.dir).cell("000")) == (
        until,
        f"cell 000 {why}: " + ("running all phases" if until == "collect" else "running the phases up to it"),
    )


def test_a_cell_whose_configuration_was_refused_runs_all_phases(tmp_path):
    r = make_results_run(tmp_path, params={"deb.yaml": PARAMS})
    doc = r.guest("000", "pass")
    doc.update(status="payload", phases=[], exit_code=6)
    r.file("000", "result.json", json.dumps(doc))
    assert reproduce.default_until(RunDir(r.dir).cell("000")) == (
        "collect",
        "cell 000 ended payload: running all phases",
    )


def test_unknown_cell_and_missing_image_are_refused(generated):
    run, img = generated
    with pytest.raises(UserError, match="no cell '007' in this run"):
        reproduce.prepare(run, "007")
    img.unlink()
    with pytest.raises(UserError, match="base image.* missing") as e:
        reproduce.prepare(run, "000")
    assert "osgtest-dag image build debian_12.x86_64" in str(e.value)


def test_a_changed_image_is_refused_unless_allowed(generated):
    run, img = generated
    img.write_bytes(b"the image, rebuilt")
    with pytest.raises(UserError, match="cannot reproduce: 1 base image") as e:
        reproduce.prepare(run, "000")
    assert "--allow-image-change" in str(e.value) and "the run used" in str(e.value)
    t = reproduce.prepare(run, "000", allow_image_change=True)
    assert len(t.warnings) == 1 and t.warnings[0].startswith("--allow-image-change: debian_12.x86_64:")


def test_a_run_without_pins_says_so(generated):
    run, _ = generated
    RunDir(run).image_pins.unlink()
    (t,) = [reproduce.prepare(run, "000")]
    assert len(t.warnings) == 1 and "pinned no identity" in t.warnings[0]


def test_cli_refuses_before_booting(generated, cli):
    run, img = generated
    r = cli("reproduce", run, "007", "--exec", "true")
    assert r.returncode == 2 and "no cell '007'" in r.stderr, r.stderr
    r = cli("reproduce", run, "000", "--until", "later")
    assert r.returncode == 2 and "Invalid value for '--until'" in r.stderr
    r = cli("reproduce", run, "000")  # a shell on the console, with no terminal for it
    assert r.returncode == 2 and "needs a terminal" in r.stderr, r.stderr
    img.write_bytes(b"changed")
    r = cli("reproduce", run, "000", "--exec", "true")
    assert r.returncode == 2 and "--allow-image-change" in r.stderr, r.stderr


def test_reproduction_file_and_console_reading(tmp_path):
    repro = payload.Reproduction(
        until="install", mark="osgtest-repro-abcdef12", exec_command="echo 'a b' $HOME"
    )
    env = tmp_path / "reproduce.env"
    env.write_text(repro.env())
    got = subprocess.run(
        ["sh", "-c", f'. {env}; printf "%s|" "$REPRODUCE_UNTIL" "$REPRODUCE_MODE" "$REPRODUCE_EXEC"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert got == "install|exec|echo 'a b' $HOME|"
    assert "REPRODUCE_MODE=shell" in payload.Reproduction(until="test", mark="osgtest-repro-abcdef12").env()
    with pytest.raises(UserError):
        payload.Reproduction(until="later", mark="osgtest-repro-abcdef12")
    reader = payload.ExecConsole("osgtest-repro-abcdef12")
    lines = [
        b"[   52.6] osgtest-boot[304]: [osgtest 14:28:40] reproduce: running the command\r\n",
        b"osgtest-repro-abcdef12|Hello, world!\r\n",
        b"[  60.1] random: crng init done\r\n",  # the kernel between two of its lines
        b"osgtest-repro-abcdef12|\r\n",
        b"osgtest-repro-abcdef12|lastosgtest-repro-abcdef12:status 7\r\n",
    ]
    assert [reader.line(x) for x in lines] == [None, b"Hello, world!\n", None, b"\n", b"last"]
    assert reader.status == 7


def test_report_shows_how_to_reproduce_each_cell_that_did_not_pass(results_run):
    r, expected = results_run
    doc = results.analyze_run(r.dir)
    page = report_html.render(doc)
    for c in doc.cells:
        line = report_html.e(shlex.join(["osgtest-dag", "reproduce", doc.run.dir, c["serial"]]))
        assert (line in page) == (c["outcome"] != "pass"), c["serial"]


# ------------------------------------------------------------------------------ real VMs
HELLO = """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
    selinux: false
    test_command: hello | grep -q 'Hello, world!'
vm: {memory: 1024, vcpus: 1}
test_timeout: 300
"""


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` (and every directory) with its content's hash and mode."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        key = str(p.relative_to(root))
        if p.is_file() and not p.is_symlink():
            out[key] = (
                f"{st.st_mode:o} {st.st_size} {st.st_mtime_ns} " + hashlib.sha256(p.read_bytes()).hexdigest()
            )
        else:
            out[key] = f"{st.st_mode:o}"
    return out


@pytest.fixture(scope="module")
def hello_run(tmp_path_factory, debian12_image):
    """A real local run of one passing hello cell (one TCG boot, 2-3 minutes)."""
    tmp = tmp_path_factory.mktemp("reproduce")
    (tmp / "p").mkdir()
    (tmp / "p" / "m.yaml").write_text(HELLO)
    exe = Path(sys.executable).parent / "osgtest-dag"
    env = dict(os.environ)
    run = tmp / "run"
    r = subprocess.run(
        [str(exe), "generate", tmp / "p", "-o", run, "--image-dir", debian12_image.parent],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [str(exe), "run", run, "--no-progress"], capture_output=True, text=True, env=env, timeout=900
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return run


@pytest.mark.vm
def test_reproduce_runs_a_command_and_leaves_the_run_alone(hello_run, tmp_path):
    before = _tree_digest(hello_run)
    exe = Path(sys.executable).parent / "osgtest-dag"
    t0 = time.monotonic()
    r = subprocess.run(
        [str(exe), "reproduce", hello_run, "000", "--until", "install", "--exec", "hello", "--keep"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    print(f"reproduce --exec: {time.monotonic() - t0:.0f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == "Hello, world!\n", r.stdout + r.stderr
    assert "phase install" in r.stderr and "phase test" not in r.stderr, r.stderr
    assert _tree_digest(hello_run) == before
    kept = Path(r.stderr.split("kept in ", 1)[1].split(":", 1)[0])  # --keep says where
    try:
        assert (kept / "io-000.qcow2").is_file() and list(kept.glob("overlay-*.qcow2"))
        console = (kept / "console.log").read_text(errors="replace")
        assert "phase install: start" in console and "phase test: start" not in console
    finally:
        shutil.rmtree(kept)


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def _wait_for(session: str, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", session)
        if text in screen:
            return screen
        time.sleep(1)
    raise AssertionError(f"{text!r} not on the screen after {timeout:g} s:\n{screen}")


@pytest.mark.vm
def test_reproduce_gives_a_root_shell_on_the_console(hello_run, tmp_path):
    if not shutil.which("tmux"):
        pytest.fail("tmux is missing: `make setup` installs it")
    before = _tree_digest(hello_run)
    exe = Path(sys.executable).parent / "osgtest-dag"
    session = f"osgtest-reproduce-{os.getpid()}"
    status = tmp_path / "status"
    cmd = f"{shlex.join([str(exe), 'reproduce', str(hello_run), '000', '--until', 'install'])}; echo $? > {status}"
    _tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "50", "sh", "-c", f"{cmd}; sleep 600")
    try:
        screen = _wait_for(session, "Ctrl-a x", 30)
        assert "poweroff" in screen
        _wait_for(session, "a root shell: type poweroff", 900)  # TCG, on a loaded host
        time.sleep(2)  # the shell's prompt
        _tmux("send-keys", "-t", session, "id -u; hello", "Enter")
        screen = _wait_for(session, "Hello, world!", 120)
        assert "\n0\n" in screen.replace("\r", "")
        _tmux("send-keys", "-t", session, "poweroff", "Enter")
        deadline = time.monotonic() + 300
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(1)
        assert status.exists(), _tmux("capture-pane", "-p", "-t", session)
        assert status.read_text().strip() == "0", _tmux("capture-pane", "-p", "-t", session)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert _tree_digest(hello_run) == before
