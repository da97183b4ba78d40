"""The daily schedule: a systemd service + timer (and the equivalent cron line) running
`osgtest-dag nightly --params DIR --runs-root DIR`."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.base.atomic import write_text_atomic
from osgtest_dag.base.errors import UserError

UNIT = "osgtest-dag-nightly"
_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Schedule:
    at: str
    params: Path
    runs_root: Path
    tool: str
    unit_dir: Path
    extra_args: tuple[str, ...] = ()

    @property
    def command(self) -> list[str]:
        return [
            self.tool,
            "nightly",
            "--params",
            str(self.params),
            "--runs-root",
            str(self.runs_root),
            *self.extra_args,
        ]

    @property
    def hour_minute(self) -> tuple[int, int]:
        m = _TIME.match(self.at)
        if m is None:
            raise ValueError(f"not a time of day (HH:MM): {self.at!r}")
        return int(m.group(1)), int(m.group(2))


def parse_time(at: str) -> str:
    m = _TIME.match(at.strip())
    if not m:
        raise UserError(f"--at {at!r}: expected HH:MM (24-hour)", hint="e.g. --at 04:23")
    return f"{int(m.group(1)):02d}:{m.group(2)}"


def default_unit_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/etc/systemd/system")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def _systemd_quote(argv: list[str]) -> str:
    """ExecStart quoting: double quotes, backslash escapes; % must be doubled (specifiers)."""
    out = []
    for a in argv:
        a = a.replace("%", "%%")
        if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", a):
            out.append(a)
        else:
            out.append('"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return " ".join(out)


def service_text(s: Schedule) -> str:
    env = []
    for var in ("OSGTEST_DAG_CACHE", "OSGTEST_DAG_IMAGES", "CONDOR_CONFIG"):
        value = os.environ.get(var)
        # the htcondor2 bindings set CONDOR_CONFIG=/dev/null in-process when there is no
        # configuration: that is not the user's setting
        if value and not (var == "CONDOR_CONFIG" and value == "/dev/null"):
            env.append(f"Environment={_systemd_quote([f'{var}={value}'])}")
    env_lines = ("\n".join(env) + "\n") if env else ""
    return f"""\
# Written by `osgtest-dag schedule install`: the nightly test run.
[Unit]
Description=osgtest-dag nightly: generate and submit the test matrix
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
{env_lines}ExecStart={_systemd_quote(s.command)}
"""


def timer_text(s: Schedule) -> str:
    h, m = s.hour_minute
    return f"""\
# Written by `osgtest-dag schedule install`: runs {UNIT}.service daily at {h:02d}:{m:02d}.
[Unit]
Description=osgtest-dag nightly at {h:02d}:{m:02d}

[Timer]
OnCalendar=*-*-* {h:02d}:{m:02d}:00
Persistent=true
Unit={UNIT}.service

[Install]
WantedBy=timers.target
"""


def cron_line(s: Schedule) -> str:
    h, m = s.hour_minute
    log = Path(s.runs_root) / "nightly.log"
    return f"{m} {h} * * * {shlex.join(s.command)} >> {shlex.quote(str(log))} 2>&1"


def install(s: Schedule) -> dict:
    """Write the service and timer units into `s.unit_dir`. Returns their paths, the commands
    that enable them and the equivalent cron line."""
    params = Path(s.params)
    if not params.exists():
        raise UserError("parameter files not found", where=params)
    s.unit_dir.mkdir(parents=True, exist_ok=True)
    service = s.unit_dir / f"{UNIT}.service"
    timer = s.unit_dir / f"{UNIT}.timer"
    for path, text in ((service, service_text(s)), (timer, timer_text(s))):
        write_text_atomic(path, text)
    user = "" if s.unit_dir == Path("/etc/systemd/system") else " --user"
    return {
        "service": str(service),
        "timer": str(timer),
        "cron": cron_line(s),
        "enable": [f"systemctl{user} daemon-reload", f"systemctl{user} enable --now {UNIT}.timer"],
    }
