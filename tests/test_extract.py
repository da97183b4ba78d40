"""Extraction from hostile result disks: one appliance for a corpus of bad disks in a real run
directory; nothing leaks, nothing is written outside the destinations, and every cell gets the
right outcome (unreadable, backed or non-qcow2 disks: infra with the reason)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from osgtest_dag.analyze import extract, results, untar
from osgtest_dag.base import command
from osgtest_dag.cli import results as cli_results

pytestmark = pytest.mark.vm

GUEST_PASS = {
    "schema": "osgtest-dag/guest-result",
    "version": 1,
    "serial": "x",
    "started": "2026-11-21T22:00:00Z",
    "finished": "2026-11-21T22:10:00Z",
    "phases": [
        {
            "name": "test",
            "start": "2026-11-21T22:00:00Z",
            "end": "2026-11-21T22:05:00Z",
            "exit_code": 0,
            "status": "ok",
            "log": "test.log",
        }
    ],
    "status": "pass",
    "exit_code": 0,
}
MANY = 10_000


def _mkfs(
    tree: Path, dest_qcow2: Path, size: str = "64M", label: str = extract.IO_LABEL, fmt: str = "qcow2"
) -> Path:
    raw = dest_qcow2.with_suffix(".raw")
    command.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            label,
            "-N",
            str(MANY + 2000),
            "-m",
            "0",
            "-E",
            "root_owner=0:0",
            "-d",
            tree,
            raw,
            size,
        ],
        timeout=300,
    )
    if fmt == "raw":
        os.replace(raw, dest_qcow2)
    else:
        command.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, dest_qcow2])
        raw.unlink()
    return dest_qcow2


def _hostile_tree(root: Path) -> Path:
    out = root / "output"
    (out / "sub").mkdir(parents=True)
    (out / "result.json").write_text(json.dumps(GUEST_PASS))
    (out / "test.log").write_text("+ sh -c hello\nHello, world!\n")
    os.symlink("/etc/shadow", out / "shadow")
    os.symlink("../../../../../../etc/passwd", out / "escape")
    os.symlink("../../../..", out / "sub" / "up")
    os.symlink("/etc", out / "linkdir")
    os.mknod(out / "dev", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(out / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(out / "sock"))
    s.close()
    with open(out / "sparse.img", "wb") as f:
        f.truncate(1 << 30)
    os.link(out / "result.json", out / "hard")
    with open(os.path.join(os.fsencode(out), b"bad\xffname"), "wb") as f:
        f.write(b"not utf-8 name")
    (out / "new\nline").write_text("control character in the name")
    (out / "%41literal").write_text("a percent sign in the name")
    (out / "sub" / "...").write_text("three dots is a fine name")
    return root


def _many_tree(root: Path) -> Path:
    out = root / "output" / "many"
    out.mkdir(parents=True)
    (root / "output" / "result.json").write_text(json.dumps(GUEST_PASS))
    for i in range(MANY):
        (out / f"f{i:05d}").write_text(f"{i}\n")
    return root


def _snapshot(root: Path, skip: set[Path]) -> dict:
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if any(d == s or s in d.parents for s in skip):
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = d / n
            st = os.lstat(p)
            snap[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return snap


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A run directory whose result disks are a hostile corpus, extracted in ONE call."""
    if os.geteuid() != 0:
        pytest.skip("making device nodes for the corpus needs root")
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_results_run

    tmp = tmp_path_factory.mktemp("extract")
    r = make_results_run(tmp)
    stage = tmp / "stage"
    cells = {}

    def disk_for(key: str, platform: str, label: str, update: bool = False) -> Path:
        s = r.serial(platform, label, update)
        cells[key] = s
        d = r.dir / "cells" / s
        d.mkdir(parents=True, exist_ok=True)
        return d / f"result-{s}.qcow2"

    _mkfs(_hostile_tree(stage / "hostile"), disk_for("hostile", "rocky_8.x86_64", "XRootD"))
    _mkfs(_many_tree(stage / "many"), disk_for("many", "rocky_8.x86_64", "Condor"))
    # garbage bytes named .qcow2
    disk_for("corrupt", "rocky_9.x86_64", "XRootD").write_bytes(os.urandom(1 << 20))
    # a qcow2 whose backing file is a host file
    command.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "/etc/passwd",
            "-F",
            "raw",
            disk_for("backed", "rocky_9.x86_64", "Condor"),
            "64M",
        ]
    )
    # a raw ext4 image with output/ in it, named .qcow2 (the format is never probed)
    (stage / "raw" / "output").mkdir(parents=True)
    (stage / "raw" / "output" / "result.json").write_text(json.dumps(GUEST_PASS))
    _mkfs(stage / "raw", disk_for("raw", "rocky_9.aarch64", "XRootD"), fmt="raw")
    # a good qcow2 whose filesystem has no output/
    (stage / "empty" / "input").mkdir(parents=True)
    _mkfs(stage / "empty", disk_for("no-output", "rocky_9.aarch64", "Condor"))
    # the result disk path is a symlink to a host file
    os.symlink("/etc/passwd", disk_for("symlink", "alma_10.x86_64", "XRootD"))
    hashes = {
        k: hashlib.sha256(p.read_bytes()).hexdigest()
        for k, p in ((k, extract.result_disk(r.dir, s)) for k, s in cells.items())
        if not p.is_symlink()
    }
    shadow_before = os.stat("/etc/shadow")
    before = _snapshot(tmp, skip={r.dir / "cells" / s / "output" for s in cells.values()})
    reports = extract.extract_cells(r.dir, list(cells.values()))
    after = _snapshot(tmp, skip={r.dir / "cells" / s / "output" for s in cells.values()})
    doc = results.analyze_run(r.dir)
    return {
        "run": r,
        "cells": cells,
        "reports": reports,
        "doc": doc,
        "before": before,
        "after": after,
        "hashes": hashes,
        "shadow_before": shadow_before,
        "tmp": tmp,
    }


def test_outcomes(corpus):
    by = {c["serial"]: c for c in corpus["doc"].cells}
    cells = corpus["cells"]
    got = {k: (by[s]["outcome"], by[s]["reason"]) for k, s in cells.items()}
    assert got["hostile"][0] == "pass" and got["many"][0] == "pass"
    assert (
        got["corrupt"] == ("infra", got["corrupt"][1]) and "not a readable qcow2 image" in got["corrupt"][1]
    )
    assert got["backed"][0] == "infra" and "backing file (/etc/passwd): refused" in got["backed"][1]
    assert got["raw"][0] == "infra" and "not a readable qcow2" in got["raw"][1]
    assert got["no-output"][0] == "infra" and "output/" in got["no-output"][1]
    assert got["symlink"][0] == "infra" and "not a regular file" in got["symlink"][1]
    # and the disks the guest left are untouched (added read-only)
    for k, h in corpus["hashes"].items():
        disk = extract.result_disk(corpus["run"].dir, cells[k])
        assert hashlib.sha256(disk.read_bytes()).hexdigest() == h, k


def test_nothing_leaks_or_lands_outside(corpus):
    r, cells = corpus["run"], corpus["cells"]
    new = set(corpus["after"]) - set(corpus["before"])
    allowed = {str(r.dir / "cells" / s / "extraction.json") for s in cells.values()} | {
        str(r.dir / "cells" / s / "output") for s in cells.values()
    }
    assert new <= allowed, sorted(new - allowed)[:10]
    changed = {p for p in corpus["before"] if corpus["after"].get(p) != corpus["before"][p]}
    assert changed <= {str(r.dir / "cells" / s) for s in cells.values()}, sorted(changed)[:10]
    assert os.stat("/etc/shadow").st_mtime_ns == corpus["shadow_before"].st_mtime_ns
    shadow = Path("/etc/shadow").read_bytes()
    for s in cells.values():
        out = r.dir / "cells" / s / "output"
        if not out.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(out):
            for n in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, n))
                assert stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode), os.path.join(dirpath, n)
                if stat.S_ISREG(st.st_mode):
                    assert st.st_nlink == 1
                    data = Path(dirpath, n).read_bytes()
                    assert data != shadow and b"root:" not in data
    # no extraction temp directories left behind
    assert not [p for s in cells.values() for p in (r.dir / "cells" / s).glob(".output.*")]


def test_hostile_disk_report(corpus):
    r, s = corpus["run"], corpus["cells"]["hostile"]
    rep = corpus["reports"][s]
    assert rep["ok"], rep
    assert json.loads((r.dir / "cells" / s / "extraction.json").read_text()) == rep
    kinds = {(e["path"], e["kind"]): e for e in rep["skipped"]}
    assert kinds[("shadow", "symlink")]["detail"] == "/etc/shadow"
    assert (
        ("escape", "symlink") in kinds and ("sub/up", "symlink") in kinds and ("linkdir", "symlink") in kinds
    )
    assert kinds[("dev", "device")]["detail"] == "char 1,3"
    assert ("fifo", "fifo") in kinds and ("sock", "socket") in kinds
    assert kinds[("sparse.img", "too-large")]["size"] == 1 << 30
    out = r.dir / "cells" / s / "output"
    assert sorted(os.listdir(out)) == sorted(
        ["result.json", "test.log", "hard", "bad%FFname", "new%0Aline", "%2541literal", "sub"]
    )
    assert os.listdir(out / "sub") == ["..."]
    assert (out / "hard").read_text() == (out / "result.json").read_text()
    assert (out / "bad%FFname").read_bytes() == b"not utf-8 name"
    assert {x["as"] for x in rep["renamed"]} == {"bad%FFname", "new%0Aline", "%2541literal"}
    assert rep["files"] == 7 and rep["bytes"] < 10_000


def test_file_cap(corpus):
    r, s = corpus["run"], corpus["cells"]["many"]
    rep = corpus["reports"][s]
    lim = extract.ExtractLimits()
    assert rep["ok"] and rep["files"] == lim.max_files
    # chosen before the stream, shallow files first: result.json always comes out
    assert rep["skipped_by_kind"] == {"file-cap": MANY + 1 - lim.max_files}
    assert len(rep["skipped"]) == untar.SKIPPED_LIST_CAP
    assert (r.dir / "cells" / s / "output" / "result.json").is_file()
    # the cell's summary in results.json keeps the extraction report short
    cell = next(c for c in corpus["doc"].cells if c["serial"] == s)
    assert (
        cell["extraction"]["skipped_count"] == MANY + 1 - lim.max_files
        and len(cell["extraction"]["skipped"]) == 20
    )


def test_cli_extract(corpus, tmp_path):
    """The command: per-disk directories and reports, a failed disk does not stop the rest."""
    r, cells = corpus["run"], corpus["cells"]
    good = extract.result_disk(r.dir, cells["hostile"])
    bad = extract.result_disk(r.dir, cells["backed"])
    from click import Group

    group = Group()
    cli_results.register(group)
    res = CliRunner().invoke(
        group,
        [
            "extract",
            str(good),
            str(bad),
            "-o",
            str(tmp_path / "x"),
            "--max-file-bytes",
            "1K",
            "--max-files",
            "3",
        ],
    )
    assert res.exit_code == 1
    assert "backing file" in res.output
    rep = json.loads((tmp_path / "x" / good.stem / "extraction.json").read_text())
    # the three smallest top-level files; the rest (and everything the listing could not
    # name) past the file cap
    assert rep["ok"] and rep["files"] == 3 and rep["skipped_by_kind"]["file-cap"] >= 3
    assert sorted(os.listdir(tmp_path / "x" / good.stem / "output")) == [
        "%2541literal",
        "result.json",
        "sub",
        "test.log",
    ]
    assert not json.loads((tmp_path / "x" / bad.stem / "extraction.json").read_text())["ok"]
