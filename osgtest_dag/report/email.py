"""The summary mail: text and HTML alternatives, the full HTML report attached, sent over SMTP.

Settings come from options, else from the environment: OSGTEST_DAG_SMTP_HOST, _PORT,
_STARTTLS (1/0), _USER, _PASSWORD, _FROM, _TO (comma separated), _CAFILE (a CA bundle to trust
for STARTTLS, e.g. a site's own CA). There is no default host: nothing is sent anywhere
unless one is given.
"""

from __future__ import annotations

import html
import logging
import os
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from osgtest_dag.base.errors import UserError
from osgtest_dag.model.history import History
from osgtest_dag.model.outcome import ORDERED, Outcome
from osgtest_dag.model.results import ResultsDocument
from osgtest_dag.report import compare as compare_mod
from osgtest_dag.report import history_section
from osgtest_dag.report import html as report_html
from osgtest_dag.report import text as report_text

log = logging.getLogger(__name__)

ENV_PREFIX = "OSGTEST_DAG_SMTP_"


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 25
    starttls: bool = False
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str = "osgtest-dag@localhost"
    recipients: tuple[str, ...] = ()
    cafile: str | None = None
    timeout: float = 60.0

    @classmethod
    def from_env(cls, env=None, **overrides) -> SmtpSettings:
        """Options (`overrides`, None meaning unset) over the environment."""
        env = os.environ if env is None else env

        def get(key: str, name: str):
            v = overrides.get(name)
            return v if v is not None else env.get(ENV_PREFIX + key) or None

        host = get("HOST", "host")
        if not host:
            raise UserError("no SMTP server given", hint=f"pass --smtp-host or set {ENV_PREFIX}HOST")
        port = get("PORT", "port")
        try:
            port = int(port) if port is not None else 25
        except ValueError:
            raise UserError(f"SMTP port must be a number, not {port!r}") from None
        tls = overrides.get("starttls")
        if tls is None:
            tls = (env.get(ENV_PREFIX + "STARTTLS") or "0").lower() in ("1", "true", "yes", "on")
        to = overrides.get("recipients")
        if not to:
            raw = env.get(ENV_PREFIX + "TO") or ""
            to = tuple(a.strip() for a in raw.split(",") if a.strip())
        if not to:
            raise UserError("no recipients", hint=f"pass --to ADDRESS or set {ENV_PREFIX}TO")
        user = get("USER", "user")
        password = get("PASSWORD", "password")
        if user and password is None:
            raise UserError("an SMTP user needs a password", hint=f"set {ENV_PREFIX}PASSWORD")
        return cls(
            host=host,
            port=port,
            starttls=bool(tls),
            user=user,
            password=password,
            sender=get("FROM", "sender") or "osgtest-dag@localhost",
            recipients=tuple(to),
            cafile=get("CAFILE", "cafile"),
        )


def subject(doc: ResultsDocument, diff: dict | None = None) -> str:
    counts = doc.counts["by_outcome"]
    parts = [f"{n} {o}" for o, n in counts.items() if n]
    s = f"osgtest-dag {doc.run.name}: " + ", ".join(parts)
    if diff is not None and diff["regressions"]:
        s += f" ({len(diff['regressions'])} regression{'s' if len(diff['regressions']) != 1 else ''})"
    return s


def html_summary(doc: ResultsDocument, diff: dict | None = None, *, history: History | None = None) -> str:
    """A short HTML body (mail clients drop scripts and style sheets: inline styles only)."""
    e = html.escape
    counts = doc.counts
    out = [
        '<html><body style="font-family:sans-serif">',
        f"<h2>osgtest-dag results: {e(doc.run.name)}</h2>",
        "<p>",
    ]
    for o, n in counts["by_outcome"].items():
        if n:
            bg, fg = report_html.COLORS.get(o, ("#eee", "#000"))
            out.append(
                f'<span style="background:{bg};color:{fg};padding:2px 8px;border-radius:8px">'
                f"{e(o)} {n}</span> "
            )
    out.append("</p>")
    if diff is not None:
        out.append(f"<h3>What changed since {e(diff['previous']['name'])}</h3>")
        out.append(f"<pre>{e(compare_mod.text(diff))}</pre>")
    if history is not None:  # a nightly: its flaky and slower cells
        out += history_section.email(history)
    present = [o.value for o in ORDERED if counts["by_outcome"][o.value]]
    out.append(
        '<table style="border-collapse:collapse" border="1" cellpadding="3"><tr><th>OS release</th>'
        + "".join(f"<th>{e(o)}</th>" for o in present)
        + "<th>total</th></tr>"
    )
    for g in counts["by_os"]:
        out.append(
            f"<tr><td>{e(g['name'])}</td>"
            + "".join(f"<td align=right>{g['counts'][o] or ''}</td>" for o in present)
            + f"<td align=right>{g['cells']}</td></tr>"
        )
    out.append("</table>")
    bad = sorted(
        (c for c in doc.cells if c["outcome"] != "pass"),
        key=lambda c: (-Outcome(c["outcome"]).severity, c["serial"]),
    )
    if bad:
        out.append(f"<h3>Cells that did not pass ({len(bad)})</h3><ul>")
        for c in bad[:200]:
            out.append(
                f"<li><b>{e(c['outcome'])}</b> {e(c['platform']['name'])} | {e(c['label'])} | "
                f"{e(c['source']['display'])}: {e(c.get('reason') or '')}</li>"
            )
        if len(bad) > 200:
            out.append(f"<li>... and {len(bad) - 200} more (see the attached report)</li>")
        out.append("</ul>")
    out.append("<p>The full report is attached.</p></body></html>")
    return "\n".join(out)


def build_message(
    doc: ResultsDocument,
    settings: SmtpSettings,
    diff: dict | None = None,
    subject_prefix: str = "",
    *,
    history: History | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject_prefix + subject(doc, diff)
    msg["From"] = settings.sender
    msg["To"] = ", ".join(settings.recipients)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=settings.sender.rpartition("@")[2] or "localhost")
    msg.set_content(report_text.render(doc, diff, history=history))
    msg.add_alternative(html_summary(doc, diff, history=history), subtype="html")
    report = report_html.render(doc, diff, history=history)
    msg.add_attachment(
        report.encode("utf-8"), maintype="text", subtype="html", filename=f"osgtest-dag-{doc.run.name}.html"
    )
    return msg


def send(msg: EmailMessage, settings: SmtpSettings) -> None:
    """Deliver over SMTP (STARTTLS and login when configured); UserError on failure."""
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout) as s:
            s.ehlo()
            if settings.starttls:
                ctx = ssl.create_default_context(cafile=settings.cafile)
                s.starttls(context=ctx)
                s.ehlo()
            if settings.user:
                s.login(settings.user, settings.password or "")
            refused = s.send_message(msg, from_addr=settings.sender, to_addrs=list(settings.recipients))
    except (OSError, smtplib.SMTPException) as e:
        raise UserError(
            f"sending the mail via {settings.host}:{settings.port} failed: {e}",
            hint="check the SMTP settings (host, port, STARTTLS, login)",
        ) from None
    if refused:
        log.warning("recipients refused: %s", ", ".join(refused))
    log.info("mail sent to %s via %s:%d", ", ".join(settings.recipients), settings.host, settings.port)
