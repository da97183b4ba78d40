"""The nightly without a person: inputs pinned at generate time (known failures, component tags,
osg-test configuration, catalog entries, the previous comparable run, the publish
configuration), the Analyze/Report/Publish nodes working from the run directory alone (a
PATH-only environment, as DAGMan gives node jobs), the mail received by a real SMTP server
with STARTTLS and a login, no secret anywhere; host exclusions and retention in the nightly's
log; rerun from the pinned inputs, refused on a changed base image unless allowed."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import FIXTURES, KNOWN_FAILURES_2014, RESULTS_PARAMS, ResultsRun, populate_results_run

from osgtest_dag.analyze import results
from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError
from osgtest_dag.generate import cellconfig, workflow
from osgtest_dag.generate.inputs import InputFiles, osg_test_base
from osgtest_dag.guest.image import sha256_file
from osgtest_dag.model.inputs import RunInputs
from osgtest_dag.model.publish import PublishConfig, read_credentials
from osgtest_dag.model.rundir import RunDir
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog

PASSWORD = "pl4nted-S3cret-9f2c"  # must appear nowhere but in the credentials file
EXE = Path(sys.executable).parent / "osgtest-dag"
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ------------------------------------------------------------------------------ helpers
class _Sink:
    def __init__(self):
        self.messages = []
        self.logins = []
        self.event = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.content)
        self.event.set()
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server(tmp_path):
    """aiosmtpd on 127.0.0.1 requiring STARTTLS and a login (user bot, the planted password)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    key, cert = tmp_path / "smtp-key.pem", tmp_path / "smtp-cert.pem"
    command.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert]
        + ["-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    sink = _Sink()

    def auth(server, session, envelope, mechanism, auth_data):
        sink.logins.append(auth_data.login)
        return AuthResult(success=auth_data.login == b"bot" and auth_data.password == PASSWORD.encode())

    ctl = Controller(
        sink,
        hostname="127.0.0.1",
        port=_free_port(),
        tls_context=ctx,
        require_starttls=True,
        auth_require_tls=True,
        authenticator=auth,
    )
    ctl.start()
    try:
        yield ctl.port, cert, sink
    finally:
        ctl.stop()


def _run(args, *, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EXE), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def _node(run_dir: Path, action: str, captured: list[str]) -> subprocess.CompletedProcess:
    """A node job as DAGMan starts it: in the run directory, with PATH only (plus this test
    tree's PYTHONPATH, so the console script imports the code under test)."""
    env = {"PATH": NODE_PATH}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    r = _run(["node", action], env=env, cwd=run_dir)
    captured += [r.stdout, r.stderr]
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _mail(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def _files_holding(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and secret in p.read_bytes()]


# ------------------------------------------------------------------------------ two nightlies
def test_two_nightlies_mail_the_regression_and_the_waived_failure(tmp_path, smtp_server):
    port, cert, sink = smtp_server
    params = tmp_path / "params"
    params.mkdir()
    for name, text in RESULTS_PARAMS.items():
        (params / name).write_text(text)
    known = tmp_path / "known-failures.yaml"
    known.write_text(KNOWN_FAILURES_2014)
    tags = tmp_path / "component-tags.yaml"
    shutil.copy(FIXTURES / "component-tags.yaml", tags)
    creds = tmp_path / "smtp-credentials"
    creds.write_text(f"# the nightly's mail account\nuser = bot\npassword = {PASSWORD}\n")
    creds.chmod(0o600)
    pub = tmp_path / "pub"
    publish = tmp_path / "publish.yaml"
    publish.write_text(
        f"publish_dir: {pub}\nsmtp:\n  host: 127.0.0.1\n  port: {port}\n  starttls: true\n"
        f"  credentials: {creds}\n  cafile: {cert}\n  from: nightly@example.org\n"
        "  to: [team@example.org]\n  subject_prefix: '[nightly] '\n"
    )
    excluded = tmp_path / "excluded-hosts.yaml"
    excluded.write_text(
        "hosts:\n  - host: bad.example.org\n    until: 2999-01-01\n    reason: VMGAHP errors\n"
        "  - host: old.example.org\n    until: 2000-01-01\n"
    )
    runs = tmp_path / "runs"
    env = dict(os.environ, OSGTEST_DAG_IMAGES="/images", XDG_CONFIG_HOME=str(tmp_path / "config"))
    nightly = [
        "nightly", "--params", params, "--runs-root", runs, "--known-failures", known,
        "--component-tags", tags, "--publish-config", publish, "--excluded-hosts", excluded, "--no-submit",
    ]  # fmt: skip
    captured: list[str] = []

    def night(*extra) -> tuple[Path, str]:
        r = _run([*nightly, *extra], env=env)
        captured.extend([r.stdout, r.stderr])
        assert r.returncode == 0, r.stdout + r.stderr
        made = re.search(r"^nightly: generated (\S+): ", r.stdout, re.M)
        return Path(made[1]), r.stdout

    # night 1: nothing to compare with
    run1, out1 = night("--max-usage", "100", "--keep-at-least", "1")
    assert "previous run: none comparable" in out1
    assert "VM jobs avoid bad.example.org until 2999-01-01T00:00:00Z (VMGAHP errors)" in out1
    assert "exclusion of old.example.org expired 2000-01-01T00:00:00Z" in out1
    assert re.search(r"retention: disk usage [\d.]+% -> [\d.]+% \(limit 100%\), 1 run\(s\) kept", out1)
    assert '!member(TARGET.Machine, {"bad.example.org"})' in (run1 / "submit" / "test-run.sub").read_text()
    r1 = ResultsRun(run1)
    populate_results_run(r1)
    for hand_copied in ("known-failures.yaml", "component-tags.yaml"):  # the pinned ones must do
        (run1 / hand_copied).unlink()
    for action in ("analyze", "report", "publish"):
        _node(run1, action, captured)
    assert sink.event.wait(10)
    first = _mail(sink.messages[0])
    assert first["Subject"].startswith("[nightly] osgtest-dag ") and "Changes since" not in str(first)

    # night 2: the first is found as the previous run; a regression is planted
    run2, out2 = night()
    assert f"previous run: {run1} " in out2
    pinned = RunInputs.read(run2)
    assert pinned.previous.run_name == run1.name
    assert pinned.parameter_set == RunInputs.read(run1).parameter_set
    r2 = ResultsRun(run2)
    populate_results_run(r2)
    for hand_copied in ("known-failures.yaml", "component-tags.yaml"):
        (run2 / hand_copied).unlink()
    s = r2.serial("rocky_8.x86_64", "XRootD")  # pass -> fail, with newer packages
    r2.guest(s, "test")
    r2.osgtest_log(s, "fail.log")
    r2.packages(
        s, {"bash": "5.1-2"}, {"bash": "5.1-2", "osg-xrootd-standalone": "24-2.el8", "xrootd": "5.7.2-1.el8"}
    )
    sink.event.clear()
    for action in ("analyze", "report", "publish"):
        _node(run2, action, captured)
    assert sink.event.wait(10) and len(sink.messages) == 2
    assert sink.logins == [b"bot", b"bot"]

    results2 = json.loads((run2 / "results.json").read_text())
    assert results2["known_failures"]["files"] == ["inputs/known-failures-0.yaml"]  # the pinned copy
    second = _mail(sink.messages[1])
    assert "(1 regression)" in second["Subject"]
    plain = second.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert plain.index(f"Changes since {run1.name}") < plain.index("OS release")
    assert re.search(
        r"Regressions \(passed before, not now\): 1\n +pass -> fail +rocky_8\.x86_64 +XRootD", plain
    )
    assert "xrootd: 5.7.1-1.el8 -> 5.7.2-1.el8" in plain
    assert re.search(r"waived +rocky_9\.x86_64 +XRootD", plain)
    assert "FAIL test_55_condorce.test_04_trace (waived)" in plain
    html = second.get_body(("html",)).get_content()
    assert f"What changed since {run1.name}" in html
    changes = json.loads((run2 / "changes.json").read_text())
    assert [(c["platform"], c["label"]) for c in changes["regressions"]] == [("rocky_8.x86_64", "XRootD")]

    published = pub / run2.name
    assert "What changed since" in (published / "report.html").read_text()
    page = (published / "history.html").read_text()  # the Report node's, from the run index
    assert page.startswith("<!DOCTYPE html>") and run1.name in page and run2.name in page
    assert (published / "changes.json").is_file() and (pub / run1.name / "report.html").is_file()

    # night 3 compares with night 2 (the latest analyzed) and retention deletes night 1
    run3, out3 = night("--max-usage", "0.0001", "--keep-at-least", "2")
    assert f"previous run: {run2} " in out3
    assert f"retention: deleted {run1} " in out3 and not run1.exists()

    # the password is in the credentials file, and nowhere else
    secret = PASSWORD.encode()
    assert secret in creds.read_bytes()
    assert _files_holding(runs, secret) == [] and _files_holding(pub, secret) == []
    assert not any(PASSWORD in text for text in captured)
    assert str(creds) in (run2 / "inputs" / "publish.json").read_text()  # its path only


# ------------------------------------------------------------------------------ generate
HELLO = """\
platforms: [debian_12.x86_64, debian_13.x86_64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
"""


def _generate(tmp_path, name="run", **inputs) -> Path:
    store = tmp_path / "images"
    store.mkdir(exist_ok=True)
    pdir = tmp_path / "p"
    pdir.mkdir(exist_ok=True)
    (pdir / "hello.yaml").write_text(HELLO)
    cat = Catalog.load(image_dir=str(store))
    m = matrix.build([pdir], cat)
    opts = workflow.WorkflowOptions(tool="/opt/osgtest/bin/osgtest-dag")
    return workflow.write_run(
        tmp_path / name, list(m.cells), cat, opts, param_files=list(m.files), inputs=InputFiles(**inputs)
    )


def test_generate_pins_copies_and_the_catalog_entries(tmp_path, cli):
    known = tmp_path / "kf.yaml"
    known.write_text(KNOWN_FAILURES_2014)
    conf = tmp_path / "osg-test.conf"
    conf.write_text("[Config]\nadduser = True\ntimeout = 7200\n")
    r = cli("generate", _params(tmp_path), "-o", tmp_path / "run",
            "--known-failures", known, "--osg-test-config", conf, "--image-dir", tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    pinned = RunInputs.read(run)
    assert [k.origin for k in pinned.known_failures] == [str(known)]
    assert (run / "inputs" / pinned.known_failures[0].copy).read_text() == KNOWN_FAILURES_2014
    assert pinned.previous is None and not (run / "inputs" / "publish.json").exists()
    # the catalog entries the cells used, in the catalog-file format
    entries = json.loads((run / "inputs" / "catalog.json").read_text())
    assert sorted(entries["platforms"]) == ["debian_12", "debian_13"] and list(
        entries["debian"]["repos"]
    ) == ["main"]
    again = Catalog.load([run / "inputs" / "catalog.json"], image_dir=str(tmp_path))
    for cfg in cellconfig.iter_cells(run):
        assert again.platform(cfg.platform.id).image == cfg.platform.image
    # CreateDisk appends each cell's keys to the pinned osg-test configuration
    assert osg_test_base(run) == conf.read_text()
    cfg = next(cellconfig.iter_cells(run))
    written = cellconfig.write_input_dir(cfg, tmp_path / "input", osg_test_base(run))
    text = (written / "osg-test.conf").read_text() if cfg.test.osg_test else None
    assert text is None or (text.startswith(conf.read_text()) and "packages = hello" in text)
    # a comparable run: the same parameter set identity
    r = cli("generate", _params(tmp_path), "-o", tmp_path / "run2", "--image-dir", tmp_path)
    assert r.returncode == 0 and RunInputs.read(tmp_path / "run2").parameter_set == pinned.parameter_set
    r = cli("generate", _params(tmp_path), "-o", tmp_path / "run3", "--only", "platform=debian_12*",
            "--image-dir", tmp_path)  # fmt: skip
    assert r.returncode == 0 and RunInputs.read(tmp_path / "run3").parameter_set != pinned.parameter_set


def _params(tmp_path) -> Path:
    pdir = tmp_path / "params"
    pdir.mkdir(exist_ok=True)
    (pdir / "hello.yaml").write_text(HELLO)
    return pdir


def test_generate_refuses_bad_inputs(tmp_path, cli):
    params = _params(tmp_path)
    conf = tmp_path / "osg-test.conf"
    conf.write_text("[Config]\npackages = condor\n")
    r = cli("generate", params, "-o", tmp_path / "r1", "--osg-test-config", conf)
    assert r.returncode == 2 and "sets packages, which each cell sets" in r.stderr
    bad = tmp_path / "kf.yaml"
    bad.write_text("- [only_a_name]\n")
    r = cli("generate", params, "-o", tmp_path / "r2", "--known-failures", bad)
    assert r.returncode == 2 and "kf.yaml" in r.stderr
    r = cli("generate", params, "-o", tmp_path / "r3", "--previous", params)
    assert r.returncode == 2 and "results.json" in r.stderr
    publish = tmp_path / "publish.yaml"
    publish.write_text("smtp:\n  host: mail\n  to: [a@example.org]\n  password: hunter2\n")
    r = cli("generate", params, "-o", tmp_path / "r4", "--publish-config", publish)
    assert r.returncode == 2 and "a password does not belong" in r.stderr and "hunter2" not in r.stderr
    assert not any((tmp_path / n).exists() for n in ("r1", "r2", "r3", "r4"))


def test_credentials_file_private_and_well_formed(tmp_path):
    creds = tmp_path / "creds"
    creds.write_text(f"user = bot\npassword = {PASSWORD}\n")
    creds.chmod(0o644)
    with pytest.raises(UserError, match="readable by others"):
        read_credentials(creds)
    creds.chmod(0o600)
    assert read_credentials(creds) == ("bot", PASSWORD)
    creds.write_text(f"bot:{PASSWORD}\n")
    with pytest.raises(UserError) as e:
        read_credentials(creds)
    assert PASSWORD not in str(e.value) and "line 1" in str(e.value)
    config = tmp_path / "publish.yaml"
    config.write_text(
        f"publish_dir: {tmp_path}/pub\nsmtp:\n  host: mail\n  to: a@example.org\n  credentials: {creds}\n"
    )
    with pytest.raises(UserError, match="line 1"):
        PublishConfig.load(config)
    creds.write_text(f"user = bot\npassword = {PASSWORD}\n")
    loaded = PublishConfig.load(config)
    assert loaded.smtp.credentials == str(creds) and loaded.smtp.recipients == ("a@example.org",)
    assert PublishConfig.from_json(json.loads(json.dumps(loaded.to_json())), "x") == loaded


# ------------------------------------------------------------------------------ rerun
def _store_image(store: Path, platform: str, content: bytes) -> Path:
    path = store / f"{platform}.qcow2"
    path.write_bytes(content)
    meta = {
        "schema": "osgtest-dag/image",
        "version": 1,
        "platform": platform,
        "builder": "local",
        "sha256": sha256_file(path),
        "size": len(content),
        "inputs_hash": "x",
        "inputs": {},
        "built": "2026-11-30T10:00:00Z",
    }
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def test_rerun_uses_the_pinned_inputs_and_refuses_a_changed_image(tmp_path, cli):
    (tmp_path / "images").mkdir()
    img = _store_image(tmp_path / "images", "debian_12.x86_64", b"twelve")
    known = tmp_path / "kf.yaml"
    known.write_text(KNOWN_FAILURES_2014)
    source = _generate(tmp_path, known_failures=(known,))
    pinned = RunInputs.read(source)
    known.write_text("[]\n")  # today's file differs: the rerun keeps the pinned copy

    img.write_bytes(b"TWELVE, rebuilt")
    img.with_suffix(".json").unlink()
    r = cli("rerun", source, "-o", tmp_path / "rerun")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cannot rerun: 1 base image(s) changed" in r.stderr and "debian_12.x86_64" in r.stderr
    assert "--allow-image-change" in r.stderr and not (tmp_path / "rerun").exists()

    r = cli("rerun", source, "-o", tmp_path / "rerun", "--allow-image-change")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rerunning on changed base images (--allow-image-change):" in r.stdout
    assert f"debian_12.x86_64: {img} is now " in r.stdout
    assert f"known failures: {known} changed since the run pinned it" in r.stdout
    new = tmp_path / "rerun"
    doc = json.loads((new / "rerun.json").read_text())
    assert doc["allow_image_change"] is True and len(doc["image_changes"]) == 1
    assert list(doc["images"]) == [str(img)]
    again = RunInputs.read(new)
    assert (new / "inputs" / again.known_failures[0].copy).read_text() == KNOWN_FAILURES_2014
    assert again.known_failures[0].sha256 == pinned.known_failures[0].sha256
    assert again.parameter_set == pinned.parameter_set and again.previous is None
    assert (new / "inputs" / "catalog.json").read_bytes() == (source / "inputs" / "catalog.json").read_bytes()
    assert RunDir(new).rerun.is_file()


# ------------------------------------------------------------------------------ on the pool
# The done-when on the personal pool: two nightlies in a row, submitted with --test-pool, with
# real VMs. The Waived cell prints an osg-test log whose one failure the pinned known failures
# waive; the Regress cell passes the first night and fails the second (its parameter file is
# edited in between: the same parameter set).
WAIVED_LOG = """\
test_01_start (osgtest.tests.test_10_hello.TestHello) ... ok
test_04_trace (osgtest.tests.test_55_condorce.TestCondorCE) ... FAIL

======================================================================
FAIL: test_04_trace (osgtest.tests.test_55_condorce.TestCondorCE)
----------------------------------------------------------------------
Traceback (most recent call last):
  File "/usr/lib/python3/osgtest/tests/test_55_condorce.py", line 39, in test_04_trace
    self.fail("ce trace")
AssertionError: ce trace

----------------------------------------------------------------------
Ran 2 tests in 1.000s

FAILED (failures=1)
"""
# One line (printf's \n): run-job echoes the command into test.log before its output.
WAIVED_COMMAND = "printf '" + WAIVED_LOG.replace("\n", "\\n") + "'; exit 1"
POOL_PARAMS = f"""\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Regress
    packages: [hello]
    selinux: false
    test_command: 'REGRESS'
  - label: Waived
    packages: [hello]
    selinux: false
    test_command: {json.dumps(WAIVED_COMMAND)}
vm: {{memory: 1024, vcpus: 1}}
"""
POOL_KNOWN_FAILURES = (
    "- test: test_04_trace\n  module: test_55_condorce\n  reason: planted for the pool test\n"
)


def test_the_pool_tests_waived_cell_is_waived(tmp_path):
    """What the pool test's Waived cell leaves in test.log (run-job's echo of the command, its
    output) is a waived osg-test run under the pinned known failures."""
    params = tmp_path / "params"
    params.mkdir()
    (params / "nightly.yaml").write_text(POOL_PARAMS.replace("REGRESS", "true"))
    known = tmp_path / "kf.yaml"
    known.write_text(POOL_KNOWN_FAILURES)
    cat = Catalog.load(image_dir="/images")
    m = matrix.build([params], cat)
    run = workflow.write_run(
        tmp_path / "run", list(m.cells), cat, workflow.WorkflowOptions(tool="/opt/osgtest-dag"),
        param_files=list(m.files), inputs=InputFiles(known_failures=(known,)),
    )  # fmt: skip
    r = ResultsRun(run)
    s = r.serial("debian_12.x86_64", "Waived")
    [cell] = [c for c in m.cells if c.serial == s]
    printed = subprocess.run(["sh", "-c", cell.test_command], capture_output=True, text=True)
    assert printed.returncode == 1 and printed.stdout == WAIVED_LOG
    r.guest(s, "test")
    r.file(
        s, "test.log", f"+ sh -c {cell.test_command}  (timeout 3600 s)\n{printed.stdout}test exit code: 1\n"
    )
    [entry] = [c for c in results.analyze_run(run).cells if c["serial"] == s]
    assert entry["outcome"] == "waived" and entry["counts"]["run"] == 2, entry


@pytest.mark.pool
@pytest.mark.vm
def test_two_nightlies_on_the_pool(test_pool, pool_workdir, smtp_server):
    from conftest import condor_cli
    from test_pool import vm_lock

    from osgtest_dag.base.paths import default_image_dir
    from osgtest_dag.devpool.chroot import POOL_UID
    from osgtest_dag.guest import image

    port, cert, sink = smtp_server
    with vm_lock():
        image.build_image("debian_12.x86_64", default_image_dir(), builder="local")
    params = pool_workdir / "params"
    params.mkdir()
    (params / "nightly.yaml").write_text(POOL_PARAMS.replace("REGRESS", "true"))
    known = pool_workdir / "known-failures.yaml"
    known.write_text(POOL_KNOWN_FAILURES)
    creds = pool_workdir / "smtp-credentials"
    creds.write_text(f"user = bot\npassword = {PASSWORD}\n")
    creds.chmod(0o600)
    os.chown(creds, POOL_UID, POOL_UID)  # the Publish node runs as the pool's job owner
    shutil.copy(cert, pool_workdir / "smtp-ca.pem")
    (pool_workdir / "smtp-ca.pem").chmod(0o644)
    pub = pool_workdir / "pub"
    pub.mkdir()
    os.chown(pub, POOL_UID, POOL_UID)
    publish = pool_workdir / "publish.yaml"
    publish.write_text(
        f"publish_dir: {pub}\nsmtp:\n  host: 127.0.0.1\n  port: {port}\n  starttls: true\n"
        f"  credentials: {creds}\n  cafile: {pool_workdir / 'smtp-ca.pem'}\n  to: [team@example.org]\n"
    )
    runs = pool_workdir / "runs"
    nightly = ["nightly", "--params", params, "--runs-root", runs, "--known-failures", known]
    nightly += ["--publish-config", publish, "--excluded-hosts", pool_workdir / "none.yaml", "--test-pool"]
    outputs = []

    def night(expect_exit: int) -> Path:
        r = condor_cli(*nightly)
        outputs.append(r.output)
        assert r.exit_code == 0, r.output
        run = Path(re.search(r"^nightly: generated (\S+): ", r.output, re.M)[1])
        with vm_lock():
            w = condor_cli("watch", run, "--interval", "5", "--timeout", "2400")
        outputs.append(w.output)
        assert w.exit_code == expect_exit, w.output
        return run

    run1 = night(0)  # pass, waived: two cells, the pool's two VM slots
    assert sink.event.wait(120)
    (params / "nightly.yaml").write_text(POOL_PARAMS.replace("REGRESS", "false"))
    sink.event.clear()
    run2 = night(1)  # Regress fails now
    assert sink.event.wait(120) and len(sink.messages) == 2
    outcomes = {c["label"]: c["outcome"] for c in json.loads((run2 / "results.json").read_text())["cells"]}
    assert outcomes == {"Regress": "fail", "Waived": "waived"}
    mail = _mail(sink.messages[1])
    plain = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "(1 regression)" in mail["Subject"] and f"Changes since {run1.name}" in plain
    assert re.search(r"pass -> fail +debian_12\.x86_64 +Regress", plain)
    assert "FAIL test_55_condorce.test_04_trace (waived)" in plain
    assert (pub / run2.name / "report.html").is_file() and (pub / run1.name / "report.html").is_file()
    page = (pub / run2.name / "history.html").read_text()
    assert run1.name in page and run2.name in page
    from click.testing import CliRunner

    from osgtest_dag.cli.main import main

    listed = json.loads(CliRunner().invoke(main, ["history", str(runs), "--format", "json"]).output)
    assert [r["name"] for r in listed["runs"]] == [run1.name, run2.name]
    secret = PASSWORD.encode()
    assert _files_holding(runs, secret) == [] and _files_holding(pub, secret) == []
    assert not any(PASSWORD in text for text in outputs)
