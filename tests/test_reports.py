"""Renderers (text, HTML in a real browser, JUnit against the Jenkins XSD and a JUnit reader,
JSON), compare, the mail through a real SMTP server on 127.0.0.1, and the CLI commands."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import RESULTS_PARAMS, make_results_run, populate_results_run

from osgtest_dag.analyze import results
from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError
from osgtest_dag.cli import results as cli_results
from osgtest_dag.model.results import ResultsDocument
from osgtest_dag.report import compare
from osgtest_dag.report import email as report_email
from osgtest_dag.report import html as report_html
from osgtest_dag.report import junit as report_junit
from osgtest_dag.report import text as report_text

XSD = Path(__file__).parent / "data" / "junit-10.xsd"


@pytest.fixture
def doc(results_run):
    r, _ = results_run
    return results.analyze_run(r.dir)


def _copy(doc: ResultsDocument) -> ResultsDocument:
    """A deep copy, through the document's JSON, to change without touching `doc`."""
    return ResultsDocument.from_json(json.loads(json.dumps(doc.to_json())), "copy")


@pytest.fixture
def hostile_doc(results_run):
    """The same run, with markup, quotes and control characters in the places users write."""
    r, _ = results_run
    d = results.analyze_run(r.dir)
    c = d.cells[0]
    c["label"] = '<script>alert("x")</script> & "XRootD"'
    c["reason"] = "<img src=x onerror=alert(1)>\x1b[31m red \x00"
    c["failures"] = [
        {
            "test": "t<1>",
            "module": "m&m",
            "class": None,
            "kind": "FAIL",
            "category": "fail",
            "message": "</pre><b>bold</b>\x07",
            "detail": "x\x0by",
            "line": 1,
            "tags": [],
            "waived_by": None,
        }
    ]
    c["outcome"] = "fail"
    return d


# ------------------------------------------------------------------------------ text
def test_text_tables(doc):
    text = report_text.render(doc)
    lines = text.splitlines()
    assert lines[1].startswith(
        "Overall: 4 pass, 1 cleanup, 1 waived, 1 fail, 1 update, 2 install, 2 timeout, 4 infra, 1 missing"
    )
    os_table = lines[lines.index(next(x for x in lines if x.startswith("OS release"))) :]
    assert [x.split()[0:2] for x in os_table[2:6]] == [
        ["Debian", "12"],
        ["Rocky", "8"],
        ["Rocky", "9"],
        ["Alma", "10"],
    ]
    assert any(x.startswith("Package set") for x in lines) and any(x.startswith("Source") for x in lines)
    assert "Cells that did not pass (13):" in text
    # worst first: missing, then infra ...
    first = text.split("Cells that did not pass (13):\n")[1].splitlines()[0]
    assert "missing" in first


# ------------------------------------------------------------------------------ HTML
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
]


def _chromium(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (scripts/setup installs it)")
    profile = tmp_path / "chromium-profile"
    return command.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], timeout=120)


def test_html_renders_in_chromium_without_js_errors(doc, tmp_path):
    out = tmp_path / "report" / "index.html"
    out.parent.mkdir()
    page = report_html.render(doc, out_path=out)
    out.write_text(page)
    # self-contained: no external scripts, styles, images or fonts
    assert not re.search(r"""src=["']?(https?:)?//""", page)  # links (tickets) are fine; assets are not
    assert "<link" not in page and "@import" not in page and "url(" not in page
    proc = _chromium(tmp_path, "--dump-dom", out.as_uri())
    dom = proc.stdout
    assert 'data-js="ok"' in dom, "the page's script did not finish"
    assert 'data-js-error="' not in dom
    assert "Uncaught" not in proc.stderr
    assert dom.count('td class="cell') == 2 * 17  # both views, every cell
    assert 'id="grid-by-source"' in dom and 'id="grid-by-package-set"' in dom
    # columns grouped by OS release, versions sorted numerically: EL 8, EL 9, EL 10
    head = dom.split('id="grid-by-source"')[1].split("</thead>")[0]
    assert head.index("EL 8") < head.index("EL 9") < head.index("EL 10")
    # links to the logs work relative to where the page is
    rel = f"../run/cells/{doc.cells[0]['serial']}/output/test.log"
    assert f'href="{rel}"' in page and (out.parent / rel).resolve().is_file()
    # a screenshot renders too (looked at by hand when changing the page)
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--window-size=1400,1000", f"--screenshot={shot}", out.as_uri())
    assert shot.stat().st_size > 10_000


def test_html_filter_script_hides_cells(doc, tmp_path):
    """Untick every outcome but 'pass' (as a click would) and let the page's script filter."""
    page = report_html.render(doc)
    for name in ("cleanup", "waived", "fail", "update", "install", "timeout", "infra", "missing"):
        page = page.replace(f'data-filter="{name}" checked', f'data-filter="{name}"')
    out = tmp_path / "filtered.html"
    out.write_text(page)
    dom = _chromium(tmp_path, "--dump-dom", out.as_uri()).stdout
    assert 'data-js="ok"' in dom
    hidden = dom.count('class="cell o-') - dom.count('class="cell o-pass"')
    assert dom.count("hidden") >= hidden > 0
    assert 'class="cell o-pass" data-outcome="pass"' in dom


def test_html_escapes_everything(hostile_doc, tmp_path):
    page = report_html.render(hostile_doc)
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    out = tmp_path / "h.html"
    out.write_text(page)
    dom = _chromium(tmp_path, "--dump-dom", out.as_uri()).stdout
    assert 'data-js="ok"' in dom and 'data-js-error="' not in dom


def test_html_changes_first(tmp_path, doc):
    prev = _copy(doc)
    target = next(c for c in prev.cells if c["outcome"] == "fail")
    target["outcome"] = "pass"
    diff = compare.compare(prev, doc)
    page = report_html.render(doc, diff)
    assert page.index('id="changes"') < page.index('id="by-source"')
    assert "Regressions (1)" in page


# ------------------------------------------------------------------------------ JUnit
def test_junit_valid_and_readable(doc, hostile_doc, tmp_path):
    from junitparser import Error, Failure, JUnitXml, Skipped
    from lxml import etree

    schema = etree.XMLSchema(etree.parse(str(XSD)))
    for d in (doc, hostile_doc):
        xml = report_junit.render(d)
        path = tmp_path / "junit.xml"
        path.write_text(xml, encoding="utf-8")
        tree = etree.parse(str(path))
        assert schema.validate(tree), schema.error_log
    xml = report_junit.render(doc)
    (tmp_path / "junit.xml").write_text(xml)
    suites = {s.name.split()[0]: s for s in JUnitXml.fromfile(str(tmp_path / "junit.xml"))}
    assert len(suites) == 17
    by = {c["serial"]: c for c in doc.cells}
    ok = next(s for k, s in suites.items() if by[k]["outcome"] == "pass" and by[k]["counts"]["run"])
    assert ok.tests == 293 + 8 and ok.failures == 0 and ok.errors == 0 and ok.skipped == 30
    fail = next(s for k, s in suites.items() if by[k]["outcome"] == "fail")
    results_of = [type(r) for case in fail for r in case.result]
    assert results_of.count(Failure) == 10 + 2 + 1  # 10 failures, 2 bad skips, the test phase
    assert results_of.count(Skipped) == 13 + 2 + 1  # ok skips, 2 waived, the skipped update phase
    missing = next(s for k, s in suites.items() if by[k]["outcome"] == "missing")
    assert missing.errors == 1 and [type(r) for c in missing for r in c.result] == [Error]


# ------------------------------------------------------------------------------ compare
def _second_run(tmp_path):
    """The next night: a new platform (serials move), no Debian file, one regression, one fix."""
    params = {"el.yaml": RESULTS_PARAMS["el.yaml"].replace("platforms: [", "platforms: [rocky_8.aarch64, ")}
    r = make_results_run(tmp_path, "run-b", params)
    populate_results_run(r)
    s = r.serial("rocky_8.x86_64", "XRootD")  # pass -> fail, with newer packages
    r.guest(s, "test")
    r.osgtest_log(s, "fail.log")
    r.packages(
        s, {"bash": "5.1-2"}, {"bash": "5.1-2", "osg-xrootd-standalone": "24-2.el8", "xrootd": "5.7.2-1.el8"}
    )
    s = r.serial("rocky_9.x86_64", "Condor")  # install -> pass
    r.guest(s, "pass")
    r.osgtest_log(s, "pass.log")
    return r


def test_compare_matches_by_what_cells_test(results_run, tmp_path):
    a, _ = results_run
    b = _second_run(tmp_path)
    da, db = results.analyze_run(a.dir), results.analyze_run(b.dir)
    assert a.serial("rocky_8.x86_64", "XRootD") != b.serial("rocky_8.x86_64", "XRootD")
    diff = compare.compare(da, db)
    assert [(c["platform"], c["label"], c["before"], c["after"]) for c in diff["regressions"]] == [
        ("rocky_8.x86_64", "XRootD", "pass", "fail")
    ]
    reg = diff["regressions"][0]
    assert reg["packages"] == [
        {"name": "osg-xrootd-standalone", "before": "24-1.el8", "after": "24-2.el8"},
        {"name": "xrootd", "before": "5.7.1-1.el8", "after": "5.7.2-1.el8"},
    ]
    assert [(c["platform"], c["label"], c["before"]) for c in diff["fixes"]] == [
        ("rocky_9.x86_64", "Condor", "install")
    ]
    assert {c["platform"] for c in diff["new"]} == {"rocky_8.aarch64"} and len(diff["new"]) == 4
    assert [c["platform"] for c in diff["vanished"]] == ["debian_12.x86_64"]
    assert diff["unchanged"] == 14
    text = compare.text(diff)
    assert "Regressions (passed before, not now): 1" in text and "xrootd: 5.7.1-1.el8 -> 5.7.2-1.el8" in text


# ------------------------------------------------------------------------------ email
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Sink:
    def __init__(self):
        self.messages = []
        self.event = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        self.event.set()
        return "250 OK"


def _smtpd(**kwargs):
    from aiosmtpd.controller import Controller

    sink = _Sink()
    ctl = Controller(sink, hostname="127.0.0.1", port=_free_port(), **kwargs)
    ctl.start()
    return ctl, sink


def _parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_email_plain_smtp(doc, tmp_path):
    ctl, sink = _smtpd()
    try:
        s = report_email.SmtpSettings.from_env(
            {},
            host="127.0.0.1",
            port=ctl.port,
            sender="nightly@example.org",
            recipients=("a@example.org", "b@example.org"),
        )
        msg = report_email.build_message(doc, s)
        report_email.send(msg, s)
        assert sink.event.wait(10)
    finally:
        ctl.stop()
    mail_from, rcpt, raw = sink.messages[0]
    assert mail_from == "nightly@example.org" and rcpt == ["a@example.org", "b@example.org"]
    m = _parse(raw)
    assert m["Subject"].startswith("osgtest-dag run: 4 pass, 1 cleanup")
    plain = m.get_body(("plain",)).get_content()
    html = m.get_body(("html",)).get_content()
    assert "Cells that did not pass (13)" in plain and "<table" in html
    att = list(m.iter_attachments())
    assert len(att) == 1 and att[0].get_filename() == "osgtest-dag-run.html"
    assert 'id="grid-by-source"' in att[0].get_content()


def test_email_starttls_login_and_changes_first(doc, tmp_path, results_run):
    from aiosmtpd.smtp import AuthResult

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    command.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ]
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    logins = []

    def auth(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.login == b"bot" and auth_data.password == b"s3cret")

    ctl, sink = _smtpd(tls_context=ctx, require_starttls=True, auth_require_tls=True, authenticator=auth)
    prev = _copy(doc)
    next(c for c in prev.cells if c["outcome"] == "fail")["outcome"] = "pass"
    diff = compare.compare(prev, doc)
    try:
        env = {
            "OSGTEST_DAG_SMTP_HOST": "127.0.0.1",
            "OSGTEST_DAG_SMTP_PORT": str(ctl.port),
            "OSGTEST_DAG_SMTP_STARTTLS": "1",
            "OSGTEST_DAG_SMTP_USER": "bot",
            "OSGTEST_DAG_SMTP_PASSWORD": "s3cret",
            "OSGTEST_DAG_SMTP_TO": "team@example.org",
            "OSGTEST_DAG_SMTP_CAFILE": str(cert),
        }
        s = report_email.SmtpSettings.from_env(env)
        report_email.send(report_email.build_message(doc, s, diff), s)
        assert sink.event.wait(10)
        # wrong password: a clear UserError
        # (aiosmtpd does not answer a refused login; the client's time-out ends it)
        bad = dataclasses.replace(
            report_email.SmtpSettings.from_env({**env, "OSGTEST_DAG_SMTP_PASSWORD": "nope"}), timeout=3
        )
        with pytest.raises(UserError, match="sending the mail"):
            report_email.send(report_email.build_message(doc, bad), bad)
    finally:
        ctl.stop()
    assert logins[0] == (b"bot", b"s3cret")
    m = _parse(sink.messages[0][2])
    assert "(1 regression)" in m["Subject"]
    plain = m.get_body(("plain",)).get_content()
    assert plain.index("Changes since") < plain.index("OS release")


def test_email_settings_errors():
    with pytest.raises(UserError, match="no SMTP server"):
        report_email.SmtpSettings.from_env({})
    with pytest.raises(UserError, match="no recipients"):
        report_email.SmtpSettings.from_env({"OSGTEST_DAG_SMTP_HOST": "127.0.0.1"})
    with pytest.raises(UserError, match="password"):
        report_email.SmtpSettings.from_env(
            {"OSGTEST_DAG_SMTP_HOST": "127.0.0.1", "OSGTEST_DAG_SMTP_TO": "a@b", "OSGTEST_DAG_SMTP_USER": "u"}
        )


# ------------------------------------------------------------------------------ CLI
@pytest.fixture
def cli_group():
    @click.group()
    def group():
        pass

    cli_results.register(group)
    return group


def test_cli_analyze_report_compare_email(cli_group, results_run, tmp_path):
    r, _ = results_run
    run = CliRunner()
    res = run.invoke(cli_group, ["analyze", str(r.dir)])
    assert res.exit_code == 0, res.output
    assert "Overall: 4 pass" in res.output and (r.dir / "results.json").is_file()
    for fmt in ("text", "html", "junit", "json"):
        out = tmp_path / f"report.{fmt}"
        res = run.invoke(cli_group, ["report", str(r.dir), "--format", fmt, "-o", str(out)])
        assert res.exit_code == 0, res.output
        assert out.stat().st_size > 1000
    assert json.loads((tmp_path / "report.json").read_text())["schema"] == "osgtest-dag/results"
    res = run.invoke(
        cli_group,
        [
            "report",
            str(r.dir),
            "-f",
            "html",
            "--previous",
            str(r.dir),
            "--link-base",
            "https://example.org/runs/x/",
        ],
    )
    assert res.exit_code == 0 and 'href="https://example.org/runs/x/cells/' in res.output
    res = run.invoke(cli_group, ["compare", str(r.dir), str(r.dir / "results.json"), "-f", "json"])
    assert res.exit_code == 0 and json.loads(res.output)["unchanged"] == 17
    ctl, sink = _smtpd()
    try:
        res = run.invoke(
            cli_group,
            [
                "email",
                str(r.dir),
                "--smtp-host",
                "127.0.0.1",
                "--smtp-port",
                str(ctl.port),
                "--to",
                "x@example.org",
                "--save",
                str(tmp_path / "m.eml"),
            ],
        )
        assert res.exit_code == 0, res.output
        assert sink.event.wait(10)
    finally:
        ctl.stop()
    assert (tmp_path / "m.eml").read_bytes().startswith(b"Subject: osgtest-dag run:")


def test_cli_report_needs_analysis(cli_group, results_run):
    r, _ = results_run
    res = CliRunner().invoke(cli_group, ["report", str(r.dir)])
    assert res.exit_code != 0 and isinstance(res.exception, UserError)
    assert "analyze" in res.exception.hint
