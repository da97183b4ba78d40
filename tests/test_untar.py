"""The host side of extraction without a VM: a hostile tar stream, built here, through the
Unpacker. Only directories and regular files land, inside the destination; everything else
is in the report."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from osgtest_dag.analyze import untar


def test_escape_name():
    assert untar.escape_name(b"plain.txt") == "plain.txt"
    assert untar.escape_name("héllo".encode()) == "héllo"
    assert untar.escape_name(b"a\xffb") == "a%FFb"
    assert untar.escape_name(b"100%") == "100%25"
    assert untar.escape_name(b"tab\there") == "tab%09here"
    assert untar.components("../x") is None and untar.components("/etc/passwd") is None
    assert untar.components("./a/./b") == [b"a", b"b"]


def _member(
    tf: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _hostile_stream() -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _member(tf, "./", tarfile.DIRTYPE)
        _member(tf, "./result.json", data=b"{}")
        _member(tf, "./sub", tarfile.DIRTYPE)
        _member(tf, "./sub/log", data=b"log\n")
        _member(tf, "./../escape", data=b"x")
        _member(tf, "/etc/evil", data=b"x")
        _member(tf, "./link", tarfile.SYMTYPE, linkname="/etc/passwd")
        _member(tf, "./sub/log", tarfile.SYMTYPE, linkname="/etc/shadow")  # a clash, as a link
        _member(tf, "./dev", tarfile.CHRTYPE)
        _member(tf, "./pipe", tarfile.FIFOTYPE)
        _member(tf, "./copy", tarfile.LNKTYPE, linkname="./sub/log")
        _member(tf, "./dangling", tarfile.LNKTYPE, linkname="./nowhere")
        _member(tf, "./big", data=b"y" * 100)
        _member(tf, "./100%\x07", data=b"z")
    buf.seek(0)
    return buf


def test_hostile_stream_lands_only_files_and_dirs_inside(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    rep = untar.ExtractionReport(disk="d", dest=str(dest))
    untar.Unpacker(dest, rep, budget=1 << 20, max_files=10, max_bytes=1 << 20, max_file_bytes=50).run(
        _hostile_stream()
    )
    landed = sorted(
        os.path.relpath(os.path.join(d, n), dest) for d, dirs, files in os.walk(dest) for n in dirs + files
    )
    assert landed == ["100%25%07", "copy", "result.json", "sub", "sub/log"]
    assert not any(os.path.islink(dest / n) for n in landed)
    assert (dest / "copy").read_bytes() == b"log\n" and not os.path.samefile(dest / "copy", dest / "sub/log")
    assert not (tmp_path / "escape").exists()
    assert rep.skipped_by_kind == {
        "unsafe-name": 2,
        "symlink": 2,
        "device": 1,
        "fifo": 1,
        "hardlink": 1,
        "too-large": 1,
    }
    assert rep.files == 4 and rep.dirs == 1 and rep.renamed_count == 1
    doc = rep.to_json()
    assert doc["schema"] == untar.REPORT_SCHEMA and doc["ok"]


def test_file_cap_and_budget(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    rep = untar.ExtractionReport(disk="d", dest=str(dest))
    untar.Unpacker(dest, rep, budget=1 << 20, max_files=2, max_bytes=1 << 20, max_file_bytes=1 << 20).run(
        _hostile_stream()
    )
    assert rep.files == 2 and rep.skipped_by_kind["file-cap"] >= 1
    (tmp_path / "again").mkdir()
    with pytest.raises(untar.Cancel, match="budget"):
        untar.Unpacker(
            tmp_path / "again",
            untar.ExtractionReport(disk="d", dest=""),
            budget=4096,
            max_files=10,
            max_bytes=1 << 20,
            max_file_bytes=1 << 20,
        ).run(_hostile_stream())
