"""A wheel, installed without the source tree, carries and finds payload/, image_templates/
and submit_templates/ (an editable install finds them in the tree)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_an_installed_wheel_finds_its_shipped_files(tmp_path):
    # Build from a copy: setuptools leaves build/ and egg-info in the tree it builds.
    tree = tmp_path / "tree"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "*.egg-info", "__pycache__", "demo-run", "cache"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path / "dist",
            tree,
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("osgtest_dag-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in (
        "payload/run-job",
        "payload/osgtest-boot",
        "payload/osgtest-boot.service",
        "image_templates/debian_12.tdl",
        "submit_templates/test-run.sub.j2",
        "submit_templates/local-node.sub.j2",
        "data/platforms.yaml",
        "data/repositories.yaml",
    ):
        assert f"osgtest_dag/{'' if shipped.startswith('data/') else '_'}{shipped}" in names, shipped
    assert "osgtest_dag/devpool/data/libvirt_script.awk" in names
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel],
        check=True,
        capture_output=True,
    )
    # Run from elsewhere, with only the installed copy importable as osgtest_dag.
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import osgtest_dag, sys; from osgtest_dag.guest import payload, oz_builder; from osgtest_dag.generate import workflow; "
            "print(osgtest_dag.__file__); print(payload.payload_dir()); print(workflow.SHIPPED_TEMPLATES); "
            "print(oz_builder.template_dir()); from osgtest_dag.devpool import config; "
            "assert config.libvirt_xml_script().startswith('#!/usr/bin/awk -f')",
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    module, *dirs = probe.stdout.split()
    assert module.startswith(str(site))
    assert dirs == [
        str(site / "osgtest_dag" / f"_{d}") for d in ("payload", "submit_templates", "image_templates")
    ]
    # The installed tool generates a run and makes an IO disk holding the shipped run-job.
    cli = [sys.executable, "-c", "from osgtest_dag.cli.main import main; main()"]
    run = tmp_path / "run"
    subprocess.run(
        [*cli, "generate", ROOT / "examples" / "demo", "-o", run],
        check=True,
        capture_output=True,
        env=env,
        cwd=tmp_path,
    )
    assert "osgtest-dag" in (run / "submit" / "test-run.sub").read_text()
    disk = subprocess.run(
        [*cli, "node", "create-io-disk", "000", "--offset", "0", "--run-dir", run],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    ).stdout.strip()
    subprocess.run(["qemu-img", "convert", "-O", "raw", disk, tmp_path / "io.raw"], check=True)
    run_job = subprocess.run(
        ["debugfs", "-R", "cat /run-job", tmp_path / "io.raw"], check=True, capture_output=True
    ).stdout
    assert run_job == (ROOT / "payload" / "run-job").read_bytes()
