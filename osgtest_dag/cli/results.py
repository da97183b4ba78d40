"""Result commands: `analyze`, `report`, `compare`, `email`, `extract`. Thin wrappers over
analyze/ (results, extract) and report/; cli/main.py calls `register(main)`."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import click

from osgtest_dag.analyze import extract, results
from osgtest_dag.base.atomic import write_text_atomic
from osgtest_dag.base.errors import UserError
from osgtest_dag.guest import qemu
from osgtest_dag.model.results import ResultsDocument
from osgtest_dag.report import compare
from osgtest_dag.report import email as report_email
from osgtest_dag.report import text as report_text
from osgtest_dag.report.render import FORMATS, render

RUN_DIR = click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
PREVIOUS = click.option(
    "--previous",
    type=click.Path(path_type=Path),
    help="A previous run (directory or results.json): show what changed since.",
)


class Size(click.ParamType):
    """Bytes, with an optional K/M/G suffix (powers of 1024)."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)i?[bB]?\s*", str(value))
        if not m:
            self.fail(f"{value!r} is not a size (e.g. 512M)", param, ctx)
        return int(m[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[m[2].lower()]


def _write_or_echo(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, text)
    click.echo(f"wrote {output}", err=True)


def _previous_diff(doc: ResultsDocument, previous: Path | None):
    if previous is None:
        return None
    return compare.compare(ResultsDocument.read(previous), doc)


@click.command("analyze")
@RUN_DIR
@click.option(
    "--known-failures",
    "known_failures",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Known failures (reference test-exceptions.yaml or extended format); repeatable. "
    "Default: RUN_DIR/known-failures.yaml or RUN_DIR/test-exceptions.yaml.",
)
@click.option(
    "--component-tags",
    type=click.Path(path_type=Path, dir_okay=False),
    help="component-tags.yaml (default: RUN_DIR/component-tags.yaml if there).",
)
@click.option("-q", "--quiet", is_flag=True, help="Write results.json only; print nothing.")
def analyze_cmd(run_dir: Path, known_failures, component_tags, quiet: bool):
    """Analyze every cell of RUN_DIR into RUN_DIR/results.json (and print a summary)."""
    doc = results.analyze_run(
        run_dir, known_failures=list(known_failures) or None, component_tags=component_tags
    )
    if not quiet:
        click.echo(report_text.render(doc), nl=False)


@click.command("report")
@RUN_DIR
@click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Write to FILE (default: stdout)."
)
@PREVIOUS
@click.option(
    "--link-base", metavar="URL", help="HTML: link logs under URL (where the run directory is published)."
)
def report_cmd(run_dir: Path, fmt: str, output: Path | None, previous: Path | None, link_base: str | None):
    """Render RUN_DIR/results.json as text, HTML (one self-contained page), JUnit XML or JSON."""
    doc = ResultsDocument.read(run_dir)
    diff = _previous_diff(doc, previous) if fmt in ("text", "html") else None
    _write_or_echo(render(doc, fmt, diff=diff, out_path=output, link_base=link_base), output)


@click.command("compare")
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option("-f", "--format", "fmt", type=click.Choice(("text", "json")), default="text", show_default=True)
@click.option("--fail-on-regression", is_flag=True, help="Exit 1 when RUN_B has regressions.")
@click.pass_context
def compare_cmd(ctx, run_a: Path, run_b: Path, fmt: str, fail_on_regression: bool):
    """What changed from RUN_A to RUN_B: regressions, fixes, new and vanished cells, and the
    package versions that changed in each changed cell (cells matched by platform, source and
    package set)."""
    diff = compare.compare(ResultsDocument.read(run_a), ResultsDocument.read(run_b))
    if fmt == "json":
        click.echo(json.dumps(diff, indent=1, ensure_ascii=False))
    else:
        click.echo(compare.text(diff), nl=False)
    if fail_on_regression and diff["regressions"]:
        ctx.exit(1)


@click.command("email")
@RUN_DIR
@PREVIOUS
@click.option("--smtp-host", help="SMTP server ($OSGTEST_DAG_SMTP_HOST).")
@click.option("--smtp-port", type=int, help="SMTP port ($OSGTEST_DAG_SMTP_PORT, default 25).")
@click.option("--starttls/--no-starttls", default=None, help="Use STARTTLS ($OSGTEST_DAG_SMTP_STARTTLS).")
@click.option(
    "--smtp-user",
    help="Log in as USER ($OSGTEST_DAG_SMTP_USER; the password only from $OSGTEST_DAG_SMTP_PASSWORD).",
)
@click.option(
    "--cafile",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CA bundle to trust for STARTTLS ($OSGTEST_DAG_SMTP_CAFILE).",
)
@click.option("--from", "sender", help="Sender address ($OSGTEST_DAG_SMTP_FROM).")
@click.option(
    "--to", "recipients", multiple=True, help="Recipient; repeatable ($OSGTEST_DAG_SMTP_TO, comma separated)."
)
@click.option("--subject-prefix", default="", help="Text before the subject, e.g. '[nightly] '.")
@click.option(
    "--save",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the message (RFC 822) to FILE.",
)
@click.option("--dry-run", is_flag=True, help="Build the message (and --save it) but send nothing.")
def email_cmd(
    run_dir: Path,
    previous,
    smtp_host,
    smtp_port,
    starttls,
    smtp_user,
    cafile,
    sender,
    recipients,
    subject_prefix,
    save,
    dry_run,
):
    """Mail the summary of RUN_DIR/results.json (text + HTML, the HTML report attached)."""
    doc = ResultsDocument.read(run_dir)
    diff = _previous_diff(doc, previous)
    env = dict(os.environ)
    if dry_run and not (smtp_host or env.get(report_email.ENV_PREFIX + "HOST")):
        smtp_host = "localhost"  # never contacted: only the headers need a value
    settings = report_email.SmtpSettings.from_env(
        env,
        host=smtp_host,
        port=smtp_port,
        starttls=starttls,
        user=smtp_user,
        cafile=str(cafile) if cafile else None,
        sender=sender,
        recipients=tuple(recipients) or None,
    )
    msg = report_email.build_message(doc, settings, diff, subject_prefix=subject_prefix)
    if save:
        Path(save).write_bytes(bytes(msg))
    if dry_run:
        click.echo(f"not sent (dry run): {msg['Subject']}")
        return
    report_email.send(msg, settings)
    click.echo(f"sent to {', '.join(settings.recipients)}: {msg['Subject']}")


@click.command("extract")
@click.argument("disks", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory for DIR/<disk name>/output/ and DIR/<disk name>/extraction.json.",
)
@click.option("--max-bytes", type=Size(), default=None, help="Bytes of files per disk (default 512M).")
@click.option("--max-files", type=int, default=None, help="Files per disk (default 5000).")
@click.option("--max-file-bytes", type=Size(), default=None, help="Bytes of one file (default 256M).")
@click.pass_context
def extract_cmd(ctx, disks, out_dir: Path, max_bytes, max_files, max_file_bytes):
    """Extract output/ from result disks (qcow2, read-only, one appliance for all of them),
    treating each as hostile: links, devices, fifos and sockets are recorded, never created."""
    limits = extract.ExtractLimits()
    if max_bytes is not None:
        limits = replace(limits, max_bytes=max_bytes)
    if max_files is not None:
        limits = replace(limits, max_files=max_files)
    if max_file_bytes is not None:
        limits = replace(limits, max_file_bytes=max_file_bytes)
    names = [Path(d).name.removesuffix(".qcow2") for d in disks]
    if len(set(names)) != len(names):
        raise UserError("two disks have the same name; they would extract into the same directory")
    click.echo(qemu.accel_choice().line(), err=True)  # libguestfs' appliance runs under it
    jobs = [extract.ExtractJob(Path(d), out_dir / n / "output") for d, n in zip(disks, names, strict=True)]
    reports = extract.extract_disks(jobs, limits)
    failed = 0
    for n, rep in zip(names, reports, strict=True):
        (out_dir / n).mkdir(parents=True, exist_ok=True)
        extract.write_report(out_dir / n / "extraction.json", rep)
        if rep["ok"]:
            skipped = (
                f", skipped {rep['skipped_count']} ({', '.join(f'{k} {v}' for k, v in sorted(rep['skipped_by_kind'].items()))})"
                if rep["skipped_count"]
                else ""
            )
            click.echo(f"{n}: {rep['files']} files, {rep['bytes']} bytes{skipped}")
        else:
            failed += 1
            click.echo(f"{n}: FAILED: {rep['error']}", err=True)
    if failed:
        ctx.exit(1)


def register(group: click.Group) -> None:
    """Add the result commands to the main group."""
    for cmd in (analyze_cmd, report_cmd, compare_cmd, email_cmd, extract_cmd):
        group.add_command(cmd)
