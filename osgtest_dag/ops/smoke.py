"""The smoke boot of a new base image (after `image import` and `image build`): the image
boots under qemu with a minimal cell's IO disk (no packages, test command `true`, networking
on, a short wall-clock limit) and must start the payload and bring its network up: the
returned disk's output/result.json, read with the hardened extractor, says the `environment`
and `network` phases were ok (the network phase: an address and a default route from DHCP, the
lease's DNS servers, the catalog's check host reachable, as every cell needs). Later phases
are reported but do not decide (an EL image's repositories may be out of reach from here).

An image that fails is not installed (image.Verify); its VM's console log, IO disk and
extracted output stay in `<store>/<platform>.smoke/` and the error names the console log.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.analyze.extract import ExtractJob, extract_disks
from osgtest_dag.base.errors import UserError
from osgtest_dag.generate.cellconfig import cell_platform, write_input_dir
from osgtest_dag.guest import iodisk, qemu
from osgtest_dag.model.cell import (
    CellConfig,
    CellSource,
    CellTest,
    NetworkCheck,
    RepoRetries,
    RepoSetup,
    Repositories,
    VmSize,
)
from osgtest_dag.plan.catalog import Catalog, Platform

log = logging.getLogger("osgtest_dag.ops.smoke")

LIMIT_S = 300  # a payload that starts at all starts well within this, under TCG too
MEMORY_MB = {"el": 1536, "debian": 1024}  # EL cloud images want more than 1 GiB to boot briskly
SERIAL = "000"
# The payload started; the image's network came up (a base image without one runs no cell).
DECIDING_PHASES = ("environment", "network")


@dataclass(frozen=True)
class SmokeResult:
    """How a smoke boot went: `ok` when the payload started and the network came up."""

    ok: bool
    why: str  # what failed, or what passed
    phases: dict[str, str]  # run-job's phases and their status, as far as it got
    status: str | None  # run-job's overall status
    boot: qemu.BootResult
    workdir: Path

    @property
    def console_log(self) -> Path:
        return self.boot.console_log

    def line(self) -> str:
        phases = ", ".join(f"{k} {v}" for k, v in self.phases.items()) or "no phases"
        return f"smoke boot {'passed' if self.ok else 'FAILED'} in {self.boot.wall_s:.0f} s: {self.why} ({phases})"


def smoke_cell(platform: Platform, catalog: Catalog | None = None) -> CellConfig:
    """The minimal cell: the image's own repositories, no packages, `true` as the test."""
    catalog = catalog or Catalog.load()
    return CellConfig(
        serial=SERIAL,
        platform=cell_platform(platform),
        source=CellSource(raw="image smoke boot", test_source=None, series="none", repos=()),
        label="image smoke boot",
        packages=(),
        selinux=False,
        repositories=Repositories(initial=RepoSetup()),
        test=CellTest(command="true", timeout=60, kind="command"),
        # the image's own disk size: no scratch disk, the smoke boot tests the image alone
        vm=VmSize(memory=MEMORY_MB.get(platform.family, 1024), vcpus=1, disk=platform.image_size),
        network=NetworkCheck(check_host=catalog.network_check_host(platform.family), retries=2),
        retries=RepoRetries(count=1, backoff=5),
        param_file="",
    )


def verdict(output: Path | None, boot: qemu.BootResult) -> tuple[bool, str, dict[str, str], str | None]:
    """(ok, why, phases, status) from the extracted output/ (None: nothing came back)."""
    how = "timed out" if boot.timed_out else f"qemu exit {boot.returncode}"
    result = output / "result.json" if output is not None else None
    if result is None or not result.is_file():
        return False, f"the payload never started: no output/result.json ({how})", {}, None
    try:
        doc = json.loads(result.read_text())
        phases = {str(p["name"]): str(p["status"]) for p in doc["phases"]}
        status = doc.get("status")
    except (ValueError, KeyError, TypeError) as e:
        return False, f"output/result.json is unreadable ({e})", {}, None
    for name in DECIDING_PHASES:
        got = phases.get(name)
        if got != "ok":
            return False, f"the payload's {name} phase is {got or 'missing'} ({how})", phases, status
    return (
        True,
        f"the payload started and its network came up ({how}; run-job status {status})",
        phases,
        status,
    )


def smoke_boot(
    image: Path,
    platform: Platform,
    workdir: Path,
    *,
    limit_s: float = LIMIT_S,
    catalog: Catalog | None = None,
) -> SmokeResult:
    """Boot `image` (only read: the VM writes an overlay) with the minimal cell; the result."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    cfg = smoke_cell(platform, catalog)
    disk = iodisk.make_iodisk(write_input_dir(cfg, workdir / "input"), workdir / "io.qcow2")
    log.info("%s: smoke boot of %s (limit %d s)", platform.id, image.name, limit_s)
    boot = qemu.boot(
        image,
        [qemu.Disk(disk, "qcow2")],
        memory_mb=cfg.vm.memory,
        vcpus=cfg.vm.vcpus,
        networking=True,
        timeout_s=limit_s,
        console_log=workdir / "console.log",
        workdir=workdir / "vm",
        base_format="qcow2",
        arch=platform.arch,  # an aarch64 image boots in qemu-system-aarch64, emulated here
        x86_64_level=platform.x86_64_level,
    )
    (report,) = extract_disks([ExtractJob(disk, workdir / "output")])
    output = workdir / "output" if report.get("ok") else None
    ok, why, phases, status = verdict(output, boot)
    if output is None:
        why += f"; extraction: {report.get('error')}"
    return SmokeResult(ok=ok, why=why, phases=phases, status=status, boot=boot, workdir=workdir)


def verify_image(image: Path, platform: Platform, *, limit_s: float = LIMIT_S) -> SmokeResult:
    """image.Verify: the smoke boot of a made image, before it is installed in its store;
    UserError naming the console log when the payload did not start or the network did not
    come up."""
    workdir = image.parent / f"{platform.id}.smoke"
    res = smoke_boot(image, platform, workdir, limit_s=limit_s)
    log.info("%s: %s", platform.id, res.line())
    if not res.ok:
        raise UserError(
            f"{platform.id}: the new image was not installed: {res.line()}",
            where=res.console_log,
            hint=f"the VM's console log is kept in {res.console_log} (its cell in {workdir}); "
            "`--no-smoke` installs the image without this check",
        )
    shutil.rmtree(workdir, ignore_errors=True)
    return res
