"""Where a run's Publish node publishes: inputs/publish.json (PublishConfig), written by
`generate`/`nightly` from a publish configuration file, so the node needs nothing from the
submitter's environment (DAGMan gives node jobs only PATH).

The configuration file (YAML; `nightly` reads ~/.config/osgtest-dag/publish.yaml when there,
`generate` only with --publish-config FILE):

    publish_dir: /srv/www/osgtest          # report.html (and history.html) go to DIR/<run name>/
    smtp:                                  # leave out: no mail
      host: smtp.example.org
      port: 587                            # default 25
      starttls: true                       # default false
      credentials: ~/.config/osgtest-dag/smtp-credentials
      cafile: /etc/pki/site-ca.pem         # a CA to trust for STARTTLS (default: the system's)
      from: osgtest@example.org
      to: [team@example.org]
      subject_prefix: "[nightly] "

The credentials file holds `user = NAME` and `password = SECRET` lines and must be readable by
its owner only. Only its path is recorded: the Publish node reads it when it sends, so the
password is never copied into the run directory, a log, or a DAG or submit file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osgtest_dag.base import yamlsrc
from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import Fields, JsonObject, check_document, read_json
from osgtest_dag.model.rundir import RunDir

HINT = "a run directory from an incompatible osgtest-dag version: regenerate it"
CREDENTIALS_HINT = "write `user = NAME` and `password = SECRET` lines, then chmod 600 the file"


def default_publish_config() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "osgtest-dag" / "publish.yaml"


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 25
    starttls: bool = False
    credentials: str | None = None  # path of the credentials file; None: no login
    cafile: str | None = None
    sender: str = "osgtest-dag@localhost"
    recipients: tuple[str, ...] = ()
    subject_prefix: str = ""

    def to_json(self) -> JsonObject:
        return {
            "host": self.host,
            "port": self.port,
            "starttls": self.starttls,
            "credentials": self.credentials,
            "cafile": self.cafile,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "subject_prefix": self.subject_prefix,
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> SmtpConfig:
        f = Fields(data, where, "smtp.")
        return cls(
            host=f.text("host"),
            port=f.integer("port"),
            starttls=f.flag("starttls"),
            credentials=f.opt_text("credentials"),
            cafile=f.opt_text("cafile"),
            sender=f.text("sender"),
            recipients=f.texts("recipients"),
            subject_prefix=f.text("subject_prefix"),
        )


@dataclass(frozen=True)
class PublishConfig:
    """inputs/publish.json."""

    SCHEMA = "osgtest-dag/publish"
    VERSION = 1
    publish_dir: str | None = None
    smtp: SmtpConfig | None = None

    def to_json(self) -> JsonObject:
        return {
            "schema": self.SCHEMA,
            "version": self.VERSION,
            "publish_dir": self.publish_dir,
            "smtp": self.smtp.to_json() if self.smtp else None,
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str) -> PublishConfig:
        f = Fields(check_document(data, cls.SCHEMA, cls.VERSION, where, HINT), where)
        smtp = f.data.get("smtp")
        return cls(
            publish_dir=f.opt_text("publish_dir"),
            smtp=None if smtp is None else SmtpConfig.from_json(smtp, where),
        )

    @classmethod
    def read(cls, run_dir: Path) -> PublishConfig | None:
        """The run's publishing configuration; None when it has none."""
        path = RunDir(run_dir).publish_config
        if not path.exists():
            return None
        return cls.from_json(read_json(path, hint=HINT), path)

    @classmethod
    def load(cls, path: Path) -> PublishConfig:
        """A publish configuration file (the module's docstring), paths made absolute; the
        credentials file is checked (present, private, well-formed) but not copied."""
        doc = yamlsrc.load(Path(path))
        data = doc.data or {}
        if not isinstance(data, dict):
            raise UserError("a publish configuration must be a mapping", where=doc.where())
        _known(doc, data, (), {"publish_dir", "smtp"})
        publish_dir = data.get("publish_dir")
        if publish_dir is not None and not isinstance(publish_dir, str):
            raise UserError("publish_dir must be a directory path", where=doc.where("publish_dir"))
        smtp = data.get("smtp")
        return cls(
            publish_dir=_absolute(publish_dir) if publish_dir else None,
            smtp=None if smtp is None else _smtp(doc, smtp),
        )


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _known(doc: yamlsrc.Document, data: dict[str, Any], key: tuple[str, ...], known: set[str]) -> None:
    for k in data:
        if k == "password":
            raise UserError(
                "a password does not belong in the publish configuration",
                where=doc.key_where(*key, k),
                hint="name a credentials file instead (smtp: credentials: FILE); " + CREDENTIALS_HINT,
            )
        if k not in known:
            raise UserError(
                f"unknown key {k!r}", where=doc.key_where(*key, k), hint=f"known: {', '.join(sorted(known))}"
            )


def _smtp(doc: yamlsrc.Document, data: Any) -> SmtpConfig:
    where = doc.where("smtp")
    if not isinstance(data, dict):
        raise UserError("smtp must be a mapping", where=where)
    known = {"host", "port", "starttls", "credentials", "cafile", "from", "to", "subject_prefix"}
    _known(doc, data, ("smtp",), known)
    host, port, starttls = data.get("host"), data.get("port", 25), data.get("starttls", False)
    if not isinstance(host, str) or not host:
        raise UserError("smtp needs a host", where=doc.where("smtp", "host"))
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise UserError("smtp port must be a port number", where=doc.where("smtp", "port"))
    if not isinstance(starttls, bool):
        raise UserError("smtp starttls must be true or false", where=doc.where("smtp", "starttls"))
    to = data.get("to")
    to = [to] if isinstance(to, str) else to
    if not isinstance(to, list) or not to or not all(isinstance(a, str) and "@" in a for a in to):
        raise UserError("smtp needs recipients: to: [ADDRESS, ...]", where=doc.where("smtp", "to"))
    credentials, cafile = data.get("credentials"), data.get("cafile")
    for name, value in (("credentials", credentials), ("cafile", cafile)):
        if value is not None and (not isinstance(value, str) or not Path(value).expanduser().is_file()):
            raise UserError(f"smtp {name}: no such file {value!r}", where=doc.where("smtp", name))
    if credentials is not None:
        read_credentials(Path(_absolute(credentials)))
    return SmtpConfig(
        host=host,
        port=port,
        starttls=starttls,
        credentials=_absolute(credentials) if credentials else None,
        cafile=_absolute(cafile) if cafile else None,
        sender=str(data.get("from") or "osgtest-dag@localhost"),
        recipients=tuple(to),
        subject_prefix=str(data.get("subject_prefix") or ""),
    )


def read_credentials(path: Path) -> tuple[str, str]:
    """(user, password) from a credentials file. Errors name the file and the line number,
    never a line's text (it may hold the password)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cannot read the SMTP credentials file: {e.strerror}", where=path) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(
            "the SMTP credentials file is readable by others", where=path, hint=f"chmod 600 {path}"
        )
    values: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not eq or key.strip() not in ("user", "password"):
            raise UserError(f"line {n} is not `user = NAME` or `password = SECRET`", where=path)
        values[key.strip()] = value.strip()
    if not values.get("user") or "password" not in values:
        raise UserError(
            "the SMTP credentials file needs a user and a password", where=path, hint=CREDENTIALS_HINT
        )
    return values["user"], values["password"]
