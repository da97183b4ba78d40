"""payload/run-job on the host: its JSON helpers and its phase/result logic with fake phases.

The real phases (apt, networking...) run only in a guest (test_guest_boot.py); here every
phase function is replaced, so nothing touches the host.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from osgtest_dag.guest import payload

RUN_JOB = payload.payload_file(payload.RUN_JOB)
SHELLS = [s for s in ("dash", "bash", "busybox") if shutil.which(s)]
PHASES = list(payload.PHASES)


def sh(script: str, shell: str = "dash", env: dict | None = None) -> subprocess.CompletedProcess:
    argv = [shell, "sh", "-c", script] if shell == "busybox" else [shell, "-c", script]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "RUN_JOB_LIB": "1", **(env or {})},
    )


TRICKY = [
    "plain",
    "",
    'quote " and backslash \\ end\\',
    "tab\there",
    "new\nline\n\n",
    "cr\r\n",
    "ctrl\x01\x02\x1fgone",
    "unicode é ü 漢",
    '{"json": [1, 2]}',
    "$HOME `x` $(y)",
    "%s %d %%",
    "-n",
    "x" * 5000,
]


@pytest.mark.parametrize("shell", SHELLS)
def test_json_str_round_trips(shell):
    for s in TRICKY:
        r = sh(f". {RUN_JOB}; json_str {shlex.quote(s)}", shell)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        expected = "".join(c for c in s if c in "\t\n\r" or ord(c) >= 0x20)
        assert got == expected, (s, r.stdout)


def test_null_and_int_helpers():
    r = sh(
        f". {RUN_JOB}; json_str_or_null ''; echo; json_str_or_null a; echo; "
        "json_int_or_null 0; echo; json_int_or_null 12; echo; json_int_or_null -1; echo; "
        "json_int_or_null ''"
    )
    assert r.stdout.split("\n") == ["null", '"a"', "0", "12", "null", "null"]


@pytest.mark.parametrize("shell", SHELLS)
def test_the_clock_reads_dates_without_a_program(shell, tmp_path):
    """civil() turns epoch seconds into the date `date -u` prints (leap days, century years,
    year ends, 1970); clock() adds the seconds since boot to one reading of `date`."""
    from datetime import UTC, datetime

    seconds = [0, 59, 86399, 951782400, 951868799, 4107542399, 4107542400, 1709251199, 1764567449, 2**32 + 7]
    script = f". {RUN_JOB}; " + "".join(f"civil {t}; echo $T_ISO $T_HMS; " for t in seconds)
    r = sh(script, shell)
    assert r.returncode == 0, r.stderr
    expected = [datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ %H:%M:%S") for t in seconds]
    assert r.stdout.splitlines() == expected
    uptime = tmp_path / "uptime"
    uptime.write_text("100.08 5.00\n")
    script = f". {RUN_JOB}; clock_start; echo $CLOCK_UP0; echo 1225.09 1.0 > {uptime}; clock; echo $T"
    before = datetime.now(UTC).timestamp()
    r = sh(script, shell, env={"RUN_JOB_UPTIME": str(uptime)})
    up0, t = r.stdout.split()
    assert up0 == "10008"  # not an octal "08"
    assert before + 1125 - 1 <= int(t) <= datetime.now(UTC).timestamp() + 1125 + 1


def _fake_run(
    tmp_path: Path,
    fail: str | None = None,
    cell_env: str | None = None,
    has_update: bool = False,
    extra: str = "",
    reproduce: payload.Reproduction | None = None,
) -> tuple[dict, str, subprocess.CompletedProcess]:
    """Run run-job's main with fake phases; `fail` names the phase that exits 3. With
    `reproduce`, its reproduce.env is on the input and the console is the file `console`."""
    inp, out = tmp_path / "input", tmp_path / "output"
    inp.mkdir()
    if reproduce is not None:
        (inp / payload.REPRODUCE_ENV).write_text(reproduce.env())
    if cell_env is None:
        cell_env = (
            f"CELL_SERIAL='007'\nCELL_PLATFORM='debian_12.x86_64'\nCELL_FAMILY='debian'\n"
            f"HAS_UPDATE='{'true' if has_update else 'false'}'\n"
        )
    (inp / "cell.env").write_text(cell_env)
    fakes = []
    for p in PHASES:
        body = f'echo "fake {p}"; cp "$OUT/result.json" "$OUT/seen-{p}.json"; '
        body += "exit 3" if p == fail else "true"
        fakes.append(f"phase_{p}() {{ {body}; }}")
    script = f". {RUN_JOB}\n" + "\n".join(fakes) + f"\n{extra}\nmain\n"
    console = {"RUN_JOB_CONSOLE": str(tmp_path / "console")}
    r = sh(script, env={"RUN_JOB_INPUT": str(inp), "RUN_JOB_OUTPUT": str(out), **console})
    return json.loads((out / "result.json").read_text()), (out / "exit-status").read_text(), r


def test_all_phases_pass(tmp_path):
    res, code, r = _fake_run(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert res["schema"] == "osgtest-dag/guest-result" and res["version"] == 1
    assert res["serial"] == "007" and res["status"] == "pass" and res["exit_code"] == 0
    assert code == "0\n"
    assert [p["name"] for p in res["phases"]] == PHASES
    st = {p["name"]: p["status"] for p in res["phases"]}
    assert st.pop("update") == "skipped"
    assert set(st.values()) == {"ok"}
    for p in res["phases"]:
        if p["status"] == "ok":
            assert p["exit_code"] == 0 and p["start"].endswith("Z") and p["end"].endswith("Z")
            assert (tmp_path / "output" / p["log"]).read_text() == f"fake {p['name']}\n"
    assert res["started"] and res["finished"] and res["current_phase"] is None


def test_result_rewritten_before_each_phase(tmp_path):
    """A guest dying mid-phase leaves status running and the phase it was in."""
    _fake_run(tmp_path, has_update=True)
    seen = json.loads((tmp_path / "output" / "seen-install.json").read_text())
    assert seen["status"] == "running" and seen["current_phase"] == "install"
    assert [p["name"] for p in seen["phases"]] == ["environment", "network", "hostname", "repositories"]
    assert not list((tmp_path / "output").glob(".*.tmp"))


@pytest.mark.parametrize(
    "phase,status,code",
    [
        ("network", "network", 5),
        ("hostname", "payload", 6),
        ("repositories", "repos", 4),
        ("install", "install", 2),
        ("test", "test", 1),
        ("update", "update", 3),
        ("environment", "payload", 6),
    ],
)
def test_failure_maps_to_status(tmp_path, phase, status, code):
    res, exit_status, r = _fake_run(tmp_path, fail=phase, has_update=True)
    assert r.returncode == code
    assert (res["status"], res["exit_code"], exit_status) == (status, code, f"{code}\n")
    st = {p["name"]: p for p in res["phases"]}
    assert st[phase]["status"] == "failed" and st[phase]["exit_code"] == 3
    after = PHASES[PHASES.index(phase) + 1 : -1]
    assert all(st[p]["status"] == "skipped" and st[p]["start"] is None for p in after)
    assert st["collect"]["status"] == "ok"
    assert f"phase {phase} failed" in res["message"]


def test_collect_failure_keeps_pass(tmp_path):
    res, code, _ = _fake_run(tmp_path, fail="collect")
    assert res["status"] == "pass" and code == "0\n"
    assert res["phases"][-1]["status"] == "failed"


@pytest.mark.parametrize(
    "env,msg",
    [
        ("CELL_SERIAL='1'\nCELL_FAMILY='suse'\n", "CELL_FAMILY must be"),
        ("CELL_FAMILY='debian'\n", "does not set CELL_SERIAL"),
        ("CELL_SERIAL='1\nif then\n", "not valid shell"),
    ],
)
def test_bad_configuration_is_payload(tmp_path, env, msg):
    res, code, r = _fake_run(tmp_path, cell_env=env)
    assert (res["status"], res["exit_code"], code) == ("payload", 6, "6\n")
    assert msg in res["message"]
    assert [p["name"] for p in res["phases"]] == ["collect"]


def test_serial_with_quotes_stays_valid_json(tmp_path):
    env = "CELL_SERIAL='a\"b\\\\c'\nCELL_FAMILY='el'\nCELL_PLATFORM='x'\n"
    res, _, _ = _fake_run(tmp_path, cell_env=env)
    assert res["serial"] == 'a"b\\\\c'


def test_boot_hook_and_unit():
    hook = payload.payload_file(payload.BOOT_HOOK)
    assert subprocess.run(["sh", "-n", str(hook)]).returncode == 0
    text = hook.read_text()
    for needle in (
        "blkid -L",
        "OSGTEST-IO",
        "env -i",
        "console-hook.log",
        "systemctl --force poweroff",
        "poweroff -f",
        "umount",
    ):
        assert needle in text
    unit = payload.payload_file(payload.BOOT_UNIT).read_text()
    for needle in (
        "After=network-online.target",
        "Wants=network-online.target",
        "ExecStart=/usr/local/sbin/osgtest-boot",
        "WantedBy=multi-user.target",
        "StandardOutput=journal+console",
        "TimeoutStartSec=",
        "Type=oneshot",
    ):
        assert needle in unit
    if shutil.which("systemd-analyze"):
        # verify the unit's syntax (it may complain that ExecStart is absent on the host).
        r = subprocess.run(
            ["systemd-analyze", "verify", str(payload.payload_file(payload.BOOT_UNIT))],
            capture_output=True,
            text=True,
        )
        assert "Unknown" not in r.stderr and "Invalid" not in r.stderr, r.stderr


def test_what_the_host_reads_of_a_guest_stopped_mid_run(tmp_path):
    """The console and result.json run-job leaves tell the host whether a VM stopped at its
    limit had reached its test phase (then it is not started again, and is a timeout)."""
    from osgtest_dag.model.documents import GuestResult

    _, _, r = _fake_run(tmp_path, has_update=True)
    out = tmp_path / "output"
    console = tmp_path / "console.log"
    console.write_text(r.stdout)
    assert payload.console_reached_test(console)
    console.write_text(r.stdout[: r.stdout.index("phase test: start")])
    assert not payload.console_reached_test(console)
    assert not payload.console_reached_test(tmp_path / "no-such-console.log")
    reached = {p: GuestResult.read(out / f"seen-{p}.json").reached_test for p in PHASES}
    assert reached == {p: PHASES.index(p) >= PHASES.index("test") for p in PHASES}


def test_phases_are_the_ones_run_job_runs():
    text = RUN_JOB.read_text()
    main = text[text.index("main() {") :]
    assert re.findall(r"\bphase (\w+)(?: phase_\w+)?(?:;|$)", main, re.M) == PHASES[:-1] + ["update"]
    assert [p for p in PHASES if f"phase_{p}()" not in text] == []


MARK = "osgtest-repro-0123456789abcdef"


def test_reproduction_stops_after_its_phase_and_runs_the_command(tmp_path):
    cmd = "echo one; printf 'tab\\there\\n\\n'; echo err >&2; printf 'no newline'; exit 3"
    repro = payload.Reproduction(until="install", mark=MARK, exec_command=cmd)
    res, code, r = _fake_run(tmp_path, has_update=True, reproduce=repro)
    assert r.returncode == 0, r.stdout + r.stderr
    st = {p["name"]: p["status"] for p in res["phases"]}
    assert [p for p, s in st.items() if s == "ok"] == PHASES[: PHASES.index("install") + 1]
    assert {st[p] for p in ("test", "update", "collect")} == {"skipped"}
    assert res["status"] == "pass" and code == "0\n"
    log = (tmp_path / "output" / payload.REPRODUCE_EXEC_LOG).read_bytes()
    assert log == b"one\ntab\there\n\nerr\nno newline"
    # what the host reads back from the console (CR LF as a serial line gives it)
    console = (tmp_path / "console").read_bytes().replace(b"\n", b"\r\n")
    reader = payload.ExecConsole(MARK)
    got = b"".join(t for line in console.splitlines(keepends=True) if (t := reader.line(line)) is not None)
    assert got == log and reader.status == 3


def test_a_reproduction_runs_its_command_after_a_failed_phase(tmp_path):
    repro = payload.Reproduction(until="test", mark=MARK, exec_command="echo here")
    res, code, _ = _fake_run(tmp_path, fail="install", reproduce=repro)
    assert res["status"] == "install" and code == "2\n"
    assert (tmp_path / "output" / payload.REPRODUCE_EXEC_LOG).read_text() == "here\n"
    assert (tmp_path / "console").read_text().endswith(f"{MARK}:status 0\n")


def test_a_reproduction_until_collect_runs_every_phase(tmp_path):
    repro = payload.Reproduction(until="collect", mark=MARK, exec_command="true")
    res, _, _ = _fake_run(tmp_path, reproduce=repro)
    assert [p["status"] for p in res["phases"]] == ["ok"] * 6 + ["skipped", "ok"]


def test_a_bad_reproduction_file_is_a_payload_error(tmp_path):
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / payload.REPRODUCE_ENV).write_text("REPRODUCE_UNTIL=nope\nREPRODUCE_MARK=x\n")
    (inp / "cell.env").write_text("CELL_SERIAL='1'\nCELL_FAMILY='debian'\n")
    r = sh(f". {RUN_JOB}\nmain\n", env={"RUN_JOB_INPUT": str(inp), "RUN_JOB_OUTPUT": str(tmp_path / "out")})
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert r.returncode == 6 and res["status"] == "payload"
    assert "REPRODUCE_UNTIL is not a phase" in res["message"]
    assert not (tmp_path / "console").exists()


# --- the image's package lists (issue: cells skip `apt-get update` when the image's serve) ---


def _apt_tree(tmp_path: Path, sources: str, age_s: int = 10) -> dict:
    """A fake /etc/apt + lists dir + build stamp, as the local builder leaves them."""
    etc, lists = tmp_path / "etc", tmp_path / "lists"
    (etc / "sources.list.d").mkdir(parents=True)
    lists.mkdir()
    (etc / "sources.list").write_text(sources)
    for name in (
        "deb.debian.org_debian_dists_bookworm_InRelease",
        "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages",
        "deb.debian.org_debian_dists_bookworm-updates_InRelease",
        "deb.debian.org_debian_dists_bookworm-updates_main_binary-amd64_Packages.lz4",
    ):
        (lists / name).write_text("x")
    stamp = tmp_path / "stamp"
    r = subprocess.run(["date", "+%s"], capture_output=True, text=True, check=True)
    stamp.write_text(f"{int(r.stdout) - age_s}\n")
    return {
        "RUN_JOB_APT_ETC": str(etc),
        "RUN_JOB_APT_LISTS_DIR": str(lists),
        "RUN_JOB_APT_LISTS_STAMP": str(stamp),
        "RUN_JOB_APT_REFRESHED_MARK": str(tmp_path / "refreshed"),
    }


@pytest.mark.parametrize(
    "sources, max_age, covered, why",
    [
        ("deb http://deb.debian.org/debian bookworm main\n", 3600, True, "cover every source"),
        (
            "# comment\ndeb [trusted=yes] http://deb.debian.org/debian/ bookworm main\n"
            "deb http://deb.debian.org/debian bookworm-updates main\n",
            3600,
            True,
            "cover every source",
        ),
        # a comment after a source is not a component; a * is one, not a glob
        (
            "deb\thttp://deb.debian.org/debian//\tbookworm main  # the image's\n",
            3600,
            True,
            "cover every source",
        ),
        (
            "deb http://deb.debian.org/debian bookworm *\n",
            3600,
            False,
            "none for http://deb.debian.org/debian bookworm *",
        ),
        ("deb http://deb.debian.org/debian bookworm main contrib\n", 3600, False, "bookworm contrib"),
        ("deb http://repo.example.org/osg bookworm main\n", 3600, False, "none for http://repo.example.org"),
        ("deb http://deb.debian.org/debian bookworm main\n", 5, False, "s old (limit 5 s)"),
        ("deb http://deb.debian.org/debian bookworm main\n", 0, False, "fetched for every cell"),
    ],
)
def test_image_package_lists_serve_only_what_they_cover(tmp_path, sources, max_age, covered, why):
    env = _apt_tree(tmp_path, sources)
    for shell in SHELLS:
        r = sh(f". {RUN_JOB}; APT_LISTS_MAX_AGE={max_age}; apt_lists_cover", shell, env)
        assert (r.returncode == 0) is covered, (shell, r.stdout, r.stderr)
        assert why in r.stdout, (shell, r.stdout)


def test_a_deb822_sources_file_means_fetching(tmp_path):
    env = _apt_tree(tmp_path, "deb http://deb.debian.org/debian bookworm main\n")
    (Path(env["RUN_JOB_APT_ETC"]) / "sources.list.d" / "x.sources").write_text("Types: deb\n")
    r = sh(f". {RUN_JOB}; APT_LISTS_MAX_AGE=3600; apt_lists_cover", env=env)
    assert r.returncode == 1 and "x.sources is not read here" in r.stdout


INSTALL_FAKES = """apt_get() {{ echo "apt_get $*" >> {log}; case "$1" in
    update) return 0 ;;
    install) [ -e {refreshed} ] && return 0; return 100 ;;
esac; }}"""


def test_install_failing_on_the_image_lists_fetches_them_and_retries(tmp_path):
    env = _apt_tree(tmp_path, "deb http://deb.debian.org/debian bookworm main\n")
    log = tmp_path / "apt.log"
    fakes = INSTALL_FAKES.format(log=log, refreshed=env["RUN_JOB_APT_REFRESHED_MARK"])
    script = f". {RUN_JOB}; {fakes}; CELL_FAMILY=debian CELL_PACKAGES=hello REPO_BACKOFF=0 phase_install"
    r = sh(script, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [ln.split()[1] for ln in log.read_text().splitlines()]
    assert calls == ["install", "update", "install"]
    assert "on the image's package lists: fetching them, trying again" in r.stdout


def test_install_failing_after_a_fetch_is_not_retried(tmp_path):
    env = _apt_tree(tmp_path, "deb http://deb.debian.org/debian bookworm main\n")
    log = tmp_path / "apt.log"
    fakes = f'apt_get() {{ echo "apt_get $*" >> {log}; return 100; }}'
    Path(env["RUN_JOB_APT_REFRESHED_MARK"]).write_text("")  # the repositories phase fetched them
    r = sh(f". {RUN_JOB}; {fakes}; CELL_FAMILY=debian CELL_PACKAGES=hello phase_install", env=env)
    assert r.returncode == 100
    assert [ln.split()[1] for ln in log.read_text().splitlines()] == ["install"]


def test_dns_servers_come_from_the_dhcp_lease_only_where_the_image_says_so(tmp_path):
    conf, leases = tmp_path / "resolv.conf", tmp_path / "leases"
    leases.mkdir()
    (leases / "2").write_text("ADDRESS=192.168.122.50\nDNS=192.168.122.1 192.168.122.2\n")
    # the function's paths are fixed: run a copy of its text with them replaced
    text = RUN_JOB.read_text()
    body = text[text.index("dns_from_lease() {") : text.index("\n}\n", text.index("dns_from_lease() {")) + 3]
    body = body.replace("/etc/resolv.conf", str(conf)).replace("/run/systemd/netif/leases", str(leases))
    conf.write_text(
        "# osgtest-dag: replaced with the DHCP lease's DNS servers by run-job\nnameserver 10.0.2.3\n"
    )
    r = sh(body + "\ndns_from_lease", env={})
    assert r.returncode == 0, r.stderr
    assert conf.read_text().splitlines()[1:] == ["nameserver 192.168.122.1", "nameserver 192.168.122.2"]
    conf.write_text("nameserver 8.8.8.8\n")  # an image with its own resolver setup: left alone
    assert sh(body + "\ndns_from_lease", env={}).returncode == 0
    assert conf.read_text() == "nameserver 8.8.8.8\n"


# --- a cluster VM's stages (docs/clusters.md) ---------------------------------------------------

CLUSTER_PARAMS = """\
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Pair
    packages: [curl]
    cluster:
      roles:
        server: {count: 1}
        client: {count: 1}
      stages:
        - name: init
          server: echo "init on $CLUSTER_VM"; exit 4
        - name: run
          all: echo never
        - name: finalize
          server: echo "finalize on $CLUSTER_VM ($CLUSTER_ADDRESS)"
test_timeout: 30
"""


class _Runner:
    """The cluster runner's end of a VM's sync port: a pty the payload opens as its port; it
    answers each `ready` line from `answers` and records every line."""

    def __init__(self, answers: list[str]):
        import os
        import pty
        import threading
        import tty

        self.master, slave = pty.openpty()
        tty.setraw(slave)  # no echo, no line discipline: the bytes as a virtio port carries them
        self.path = os.ttyname(slave)
        self._slave = slave
        self.answers, self.lines = list(answers), []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import os

        buf = b""
        while True:
            try:
                data = os.read(self.master, 256)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self.lines.append(line.decode())
                if line.startswith(b"ready "):
                    os.write(self.master, (self.answers.pop(0) + "\n").encode())

    def close(self) -> None:
        import os

        os.close(self._slave)
        os.close(self.master)


def _cluster_input(tmp_path: Path, vm_name: str) -> Path:
    from osgtest_dag.generate.cellconfig import cell_config, write_input_dir
    from osgtest_dag.plan import matrix
    from osgtest_dag.plan.catalog import Catalog

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "c.yaml").write_text(CLUSTER_PARAMS)
    cat = Catalog.load(image_dir="/images")
    cfg = cell_config(matrix.build([tmp_path / "p"], cat).cells[0], cat)
    vm = next(v for v in cfg.cluster_vms() if v.name == vm_name)
    return write_input_dir(cfg, tmp_path / "input", vm=vm)


def test_cluster_stages_follow_the_runners_answers(tmp_path):
    """server-1's test phase: it reports before each stage and does what the runner says; its
    init fails (exit 4), so it reports `failed` from then on; the runner skips `run` and lets
    `finalize` run. The result has the stages, and the VM's status is test (exit 1)."""
    inp = _cluster_input(tmp_path, "server-1")
    assert (inp / "stages" / "1.sh").read_text().endswith('echo "init on $CLUSTER_VM"; exit 4\n')
    assert (inp / "stages" / "2.sh").is_file() and (inp / "stages" / "3.sh").is_file()
    runner = _Runner(["run", "skip", "run"])
    out = tmp_path / "out"
    try:
        r = sh(
            f'. {RUN_JOB}\nload_config || exit 9\nmkdir -p "$OUT"\ncluster_stages\nwrite_result\n',
            env={"RUN_JOB_INPUT": str(inp), "RUN_JOB_OUTPUT": str(out), "RUN_JOB_SYNC_PORT": runner.path},
        )
    finally:
        runner.close()
    assert r.returncode == 0, r.stdout + r.stderr
    assert runner.lines == ["ready 1 ok", "ready 2 failed", "ready 3 failed", "done failed"]
    res = json.loads((out / "result.json").read_text())
    assert (res["vm"], res["role"], res["status"], res["exit_code"]) == ("server-1", "server", "test", 1)
    assert res["message"] == "stage init failed with exit code 4"
    got = [(s["name"], s["status"], s["exit_code"], s["log"]) for s in res["stages"]]
    assert got == [
        ("init", "failed", 4, "stages/1-init.log"),
        ("run", "skipped", None, None),
        ("finalize", "ok", 0, "stages/3-finalize.log"),
    ]
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", res["stages"][0][k]) for k in ("start", "end")
    )
    assert (out / "stages" / "1-init.log").read_text() == "init on server-1\n"
    assert (out / "stages" / "3-finalize.log").read_text() == "finalize on server-1 (10.77.0.11)\n"
    assert [(p["name"], p["status"]) for p in res["phases"]] == [("test", "failed")]


def test_cluster_vm_after_a_failed_install_still_meets_the_barrier(tmp_path):
    """A VM whose install failed reports `failed` at every barrier (the others do not wait for
    it in vain) and runs only what the runner lets run; its status stays install."""
    inp = _cluster_input(tmp_path, "client-1")
    assert not (inp / "stages" / "1.sh").exists()  # the client has nothing to do in init
    runner = _Runner(["skip", "skip", "run"])
    out = tmp_path / "out"
    try:
        r = sh(
            f'. {RUN_JOB}\nload_config || exit 9\nmkdir -p "$OUT"\n'
            "FAILED_PHASE=install STATUS=install EXIT_CODE=2\ncluster_stages\nwrite_result\n",
            env={"RUN_JOB_INPUT": str(inp), "RUN_JOB_OUTPUT": str(out), "RUN_JOB_SYNC_PORT": runner.path},
        )
    finally:
        runner.close()
    assert r.returncode == 0, r.stdout + r.stderr
    assert runner.lines == ["ready 1 failed", "ready 2 failed", "ready 3 failed", "done failed"]
    res = json.loads((out / "result.json").read_text())
    assert (res["status"], res["exit_code"]) == ("install", 2)
    assert [(s["name"], s["status"]) for s in res["stages"]] == [
        ("init", "skipped"),
        ("run", "skipped"),
        ("finalize", "ok"),
    ]
    assert (out / "stages" / "3-finalize.log").read_text() == "(no command for role client in this stage)\n"
    assert [(p["name"], p["status"]) for p in res["phases"]] == [("test", "skipped")]


# --- the test phase by TEST_KIND, with fake package managers on PATH ---


def _fake_tools(tmp_path: Path, dpkg_audit: str = "", dpkg_rc: int = 0, apt_check_rc: int = 0) -> dict:
    """A bin directory first on PATH whose dpkg, apt-get and dnf record their arguments in
    calls.log; `dpkg --audit` prints `dpkg_audit` and exits `dpkg_rc`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    tools = {
        "dpkg": f'[ "$1" = --audit ] && {{ printf %s {shlex.quote(dpkg_audit)}; exit {dpkg_rc}; }}',
        "apt-get": f'for a; do [ "$a" = check ] && exit {apt_check_rc}; done; exit 0',
        "dnf": "exit 0",
    }
    for name, body in tools.items():
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{body}\n')
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def _calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def _run_with_real_test_phase(tmp_path: Path, env: dict, cell_env: str) -> tuple[dict, str]:
    """run-job's test phase as main runs it (main itself resets PATH, which the fakes are on):
    the result and test.log."""
    inp, out = tmp_path / "input", tmp_path / "output"
    inp.mkdir()
    out.mkdir()
    (inp / "cell.env").write_text(cell_env)
    script = (
        f". {RUN_JOB}\nload_config || exit 9\nrun_phase test phase_test\n"
        '[ -z "$FAILED_PHASE" ] && STATUS=pass EXIT_CODE=0\nwrite_result\n'
    )
    r = sh(script, env={"RUN_JOB_INPUT": str(inp), "RUN_JOB_OUTPUT": str(out), **env})
    assert r.returncode == 0 and (out / "result.json").exists(), r.stdout + r.stderr
    return json.loads((out / "result.json").read_text()), (out / "test.log").read_text()


DEBIAN_INSTALL_ONLY = (
    "CELL_SERIAL='000'\nCELL_FAMILY='debian'\nCELL_PACKAGES='hello'\nTEST_KIND='install-only'\n"
)


def test_an_install_only_cell_passes_when_the_package_check_is_clean(tmp_path):
    res, log = _run_with_real_test_phase(tmp_path, _fake_tools(tmp_path), DEBIAN_INSTALL_ONLY)
    assert res["status"] == "pass", log
    assert "this cell has no test of its own (install-only)" in log
    assert "checking: dpkg --audit, apt-get check" in log and "package check: clean" in log
    assert [c.split()[:1] + c.split()[-1:] for c in _calls(tmp_path)] == [
        ["dpkg", "--audit"],
        ["apt-get", "check"],
    ]


@pytest.mark.parametrize(
    "tools, says",
    [
        (
            {"dpkg_audit": "The following packages are only half configured:\n hello  example\n"},
            "packages are not correctly installed (exit 0)",
        ),
        ({"dpkg_rc": 2}, "packages are not correctly installed (exit 2)"),
        ({"apt_check_rc": 100}, "apt-get check failed (exit 100)"),
    ],
    ids=["audit-prints", "audit-exits", "apt-check"],
)
def test_an_install_only_cell_fails_on_a_broken_package_state(tmp_path, tools, says):
    res, log = _run_with_real_test_phase(tmp_path, _fake_tools(tmp_path, **tools), DEBIAN_INSTALL_ONLY)
    assert (res["status"], res["exit_code"]) == ("test", 1), log
    assert {p["name"]: p["status"] for p in res["phases"]}["test"] == "failed"
    assert says in log and "package check: clean" not in log
    if "dpkg_audit" in tools:
        assert "hello  example" in log  # what dpkg --audit said is in the log


def test_a_test_command_runs_as_before_a_cluster_runs_none_an_unknown_kind_fails(tmp_path):
    env = "CELL_SERIAL='000'\nCELL_FAMILY='debian'\nTEST_KIND='command'\nTEST_COMMAND='echo hi; exit 3'\n"
    res, log = _run_with_real_test_phase(tmp_path / "a", _fake_tools(tmp_path / "a"), env)
    assert res["status"] == "test" and "hi\n" in log and "test exit code: 3" in log
    assert _calls(tmp_path / "a") == []  # no package check
    res, log = _run_with_real_test_phase(
        tmp_path / "b", _fake_tools(tmp_path / "b"), "CELL_SERIAL='0'\nCELL_FAMILY='debian'\n"
    )
    assert res["status"] == "test" and "TEST_KIND '' is not a test run-job runs" in log
    # a cluster VM's update phase ends with run_test: its stages are its test, nothing runs there
    env = "CELL_SERIAL='0'\nCELL_FAMILY='debian'\nTEST_KIND='stages'\n"
    res, log = _run_with_real_test_phase(tmp_path / "c", _fake_tools(tmp_path / "c"), env)
    assert res["status"] == "pass" and "its stages" in log and _calls(tmp_path / "c") == []


@pytest.mark.parametrize(
    "family, kind, installed",
    [
        ("debian", "install-only", "hello jq"),
        ("debian", "command", "hello jq"),
        ("el", "command", "hello jq"),
        ("el", "stages", "hello jq"),
    ],
)
def test_only_an_osg_test_cell_installs_osg_test(tmp_path, family, kind, installed):
    env = _fake_tools(tmp_path)
    script = f". {RUN_JOB}; CELL_FAMILY={family} CELL_PACKAGES='hello jq' TEST_KIND={kind} phase_install"
    r = sh(script, env={**env, "RUN_JOB_APT_REFRESHED_MARK": str(tmp_path / "refreshed")})
    assert r.returncode == 0, r.stdout + r.stderr
    (call,) = _calls(tmp_path)
    assert call.split()[0] == ("apt-get" if family == "debian" else "dnf")
    if family == "el":
        assert "--enablerepo" not in call  # no INITIAL_ENABLE: none for the transaction
    assert call.endswith(f"install {installed}") or call.endswith(
        f"install --no-install-recommends {installed}"
    )


def test_an_el_osg_test_cell_installs_what_osg_test_needs_not_its_packages(tmp_path):
    """As the reference: osg-test installs the cell's packages itself; without a test source's
    tarballs osg-test comes from the cell's repositories, enabled for that transaction
    (tests/test_el_payload.py runs the whole branch with real dnf)."""
    env = _fake_tools(tmp_path)
    (tmp_path / "input").mkdir()
    script = (
        f". {RUN_JOB}; IN={tmp_path / 'input'} CELL_FAMILY=el CELL_MAJOR=9 CELL_PACKAGES='hello jq' "
        "INITIAL_ENABLE='osg osg-testing' TEST_KIND=osg-test phase_install"
    )
    r = sh(script, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    dnf = "dnf -y --setopt=retries=5"
    assert _calls(tmp_path) == [
        f"{dnf} install python3 python3-rpm",
        f"{dnf} install /usr/bin/openssl",
        f"{dnf} --enablerepo=osg --enablerepo=osg-testing install osg-test",
    ]


def test_the_image_sources_stay_when_they_are_the_cells(tmp_path):
    """apt trusts the image's package cache only while its sources file is older: sources that
    are the cell's already are left alone; others replace them (the old ones kept aside)."""
    env = _apt_tree(tmp_path, "# the image's\ndeb http://deb.debian.org/debian bookworm main\n")
    etc = Path(env["RUN_JOB_APT_ETC"])
    before = (etc / "sources.list").stat().st_mtime_ns
    for shell in SHELLS:
        r = sh(f". {RUN_JOB}; write_apt_sources 'deb http://deb.debian.org/debian bookworm main'", shell, env)
        assert r.returncode == 0, r.stderr
        assert "apt sources: the image's, which are the cell's" in r.stdout
        assert (etc / "sources.list").stat().st_mtime_ns == before
        assert sorted(p.name for p in etc.rglob("*")) == ["sources.list", "sources.list.d"]
    other = "deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian bookworm-updates main"
    r = sh(f". {RUN_JOB}; write_apt_sources '{other}'", env=env)
    assert r.returncode == 0 and "apt sources now:" in r.stdout
    assert (etc / "sources.list.d" / "osgtest.list").read_text() == other + "\n"
    assert (etc / "osgtest-disabled" / "sources.list").is_file() and not (etc / "sources.list").exists()


DEBCONF_ONLY = (
    'DPkg::Pre-Install-Pkgs "";\nDPkg::Pre-Install-Pkgs:: "/usr/sbin/dpkg-preconfigure --apt || true";\n'
)


@pytest.mark.parametrize(
    "dump,extracttemplates,skipped",
    [
        (DEBCONF_ONLY, False, True),
        # another hook too: apt keeps its configuration as it is
        (
            DEBCONF_ONLY + 'DPkg::Pre-Install-Pkgs:: "/usr/bin/apt-listchanges --apt || test $? -lt 10";\n',
            False,
            False,
        ),
        ('APT::Architecture "amd64";\n', False, False),  # no hook at all
        # apt-utils installed (by the cell's packages): the preconfiguration does its work
        (DEBCONF_ONLY, True, False),
    ],
)
def test_apt_skips_a_preconfiguration_that_would_do_nothing(tmp_path, dump, extracttemplates, skipped):
    """Without apt-utils, debconf's dpkg-preconfigure only says "delaying package configuration":
    when it is apt's only pre-install hook, apt-get gets a file that clears it."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (tmp_path / "dump").write_text(dump)
    fakes = {
        "apt-config": f'[ "$1" = dump ] && cat {tmp_path / "dump"}',
        "apt-get": f'echo "$*" > {tmp_path / "apt-get.args"}',
    }
    if extracttemplates:
        fakes["apt-extracttemplates"] = "true"
    for name, body in fakes.items():
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    conf = tmp_path / "no-preconfigure.conf"
    r = sh(
        f". {RUN_JOB}; apt_preconfigure_check; apt_get install hello",
        env={"PATH": f"{bin_}:/usr/bin:/bin", "RUN_JOB_APT_NO_PRECONFIGURE": str(conf)},
    )
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "apt-get.args").read_text().split()
    if skipped:
        assert conf.read_text() == "#clear DPkg::Pre-Install-Pkgs;\n"
        assert args[:2] == ["-c", str(conf)] and args[-2:] == ["install", "hello"]
        assert "skipped while apt-utils is not installed" in r.stdout
        # the real apt reads the file after its own configuration: the hook is gone
        if shutil.which("apt-config"):
            real = subprocess.run(["apt-config", "-c", str(conf), "dump"], capture_output=True, text=True)
            assert "dpkg-preconfigure" not in real.stdout
    else:
        assert "-c" not in args and args[-2:] == ["install", "hello"]
        assert not conf.exists() or extracttemplates


def test_apt_keeps_its_package_cache_in_memory(tmp_path):
    """Every apt-get of a cell clears Dir::Cache::pkgcache: after dpkg, apt would otherwise
    write a new 36 MB pkgcache.bin that nothing in the VM reads again."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "apt-get").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "apt-get.args"}\n')
    (bin_ / "apt-get").chmod(0o755)
    r = sh(f". {RUN_JOB}; apt_get install hello", env={"PATH": f"{bin_}:/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "apt-get.args").read_text().splitlines()
    options = [args[i + 1] for i, a in enumerate(args) if a == "-o"]
    assert "Dir::Cache::pkgcache=" in options and args[-2:] == ["install", "hello"]
    if shutil.which("apt-config"):  # the real apt reads it as "no cache file"
        real = subprocess.run(
            ["apt-config", "-o", "Dir::Cache::pkgcache=", "dump", "Dir::Cache::pkgcache"],
            capture_output=True,
            text=True,
        )
        assert real.stdout == 'Dir::Cache::pkgcache "";\n', real.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_show_and_count_lines_read_files_as_cat_head_and_wc_do(shell, tmp_path):
    """The environment phase's files are printed by the shell itself (a program costs ~60 ms in
    an emulated guest): the same bytes as cat and head -n, the same count as wc -l."""
    f = tmp_path / "f"
    f.write_text("  lead and trail  \n\ttab\\backslash $HOME `x`\n\n-n\nlast, no newline")
    for lines in ("", "3"):
        want = subprocess.run(["head", "-n", lines or "1000", str(f)], capture_output=True, text=True).stdout
        r = sh(f". {RUN_JOB}; show {f} {lines}", shell=shell)
        assert r.returncode == 0 and r.stdout == (want + "\n" if not lines else want), r.stdout
    assert sh(f". {RUN_JOB}; count_lines {f}", shell=shell).stdout == "5\n"  # wc -l says 4: no final newline
    r = sh(f". {RUN_JOB}; show {tmp_path / 'absent'}", shell=shell)
    assert r.returncode == 1 and r.stdout == f"(no {tmp_path / 'absent'})\n"
