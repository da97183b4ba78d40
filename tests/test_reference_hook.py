"""An image with a boot hook of its own, as the reference's images have (issue 15): the catalog
says `hook: own`, osgtest-dag neither builds nor customizes it, and the IO disk it is given works
with that hook as with ours. The reference's hook is emulated exactly in a Debian image: mount
/dev/vdb at /mnt/user, run /mnt/user/run-job, power off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from osgtest_dag.base import command
from osgtest_dag.base.errors import UserError
from osgtest_dag.guest import gfs, image
from osgtest_dag.plan.catalog import Catalog

# The reference's hook, as its images run it at boot (/etc/osg-test.init; the reference's
# make-interactive-image replaces this file to stop it).
REFERENCE_HOOK = """\
#!/bin/sh
mkdir -p /mnt/user
mount /dev/vdb /mnt/user
/mnt/user/run-job
poweroff
"""
REFERENCE_UNIT = """\
[Unit]
Description=VM test hook (the reference's /etc/osg-test.init, emulated)
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/etc/osg-test.init
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

CATALOG = """\
platforms:
  debian_12ref:
    family: debian
    distro: debian
    display: Debian with the reference's hook
    major: 12
    codename: bookworm
    arches: [x86_64]
    image: {image}
    image_format: qcow2
    hook: own
"""

PARAMS = """\
platforms: [debian_12ref.x86_64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
    selinux: false
    test_command: hello | grep -q 'Hello, world!'
vm: {memory: 1024, vcpus: 2}
test_timeout: 300
"""


def reference_image(base: Path, dest: Path) -> Path:
    """Our Debian image with its hook swapped for the reference's (an overlay on `base`)."""
    command.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", dest])
    with gfs.open_disks([(dest, "qcow2")], readonly=False) as g:
        (root,) = g.inspect_os()
        g.mount(root, "/")
        ours = g.glob_expand("/etc/systemd/system/*.wants/osgtest-boot.service")
        assert ours, "the base image has no osgtest-boot.service to swap"
        for link in ours:
            g.rm(link)
        g.write("/etc/osg-test.init", REFERENCE_HOOK)
        g.chmod(0o755, "/etc/osg-test.init")
        g.write("/etc/systemd/system/osg-test-init.service", REFERENCE_UNIT)
        g.ln_sf("/etc/systemd/system/osg-test-init.service", "/etc/systemd/system/multi-user.target.wants/")
    return dest


def _catalog(tmp_path: Path, image_path: Path) -> Path:
    cat = tmp_path / "catalog.yaml"
    cat.write_text(CATALOG.format(image=image_path))
    return cat


def test_an_own_hook_image_is_never_built(tmp_path):
    cat = Catalog.load([_catalog(tmp_path, tmp_path / "ref.qcow2")])
    assert cat.platform("debian_12ref.x86_64").hook == "own"
    with pytest.raises(UserError, match="has a boot hook of its own") as e:
        image.build_image("debian_12ref.x86_64", tmp_path / "store", catalog=cat)
    assert e.value.hint == f"put the image at {tmp_path / 'ref.qcow2'}"


def test_a_bad_hook_is_refused_with_its_line(tmp_path):
    cat = tmp_path / "catalog.yaml"
    cat.write_text(CATALOG.format(image="/x.qcow2").replace("hook: own", "hook: theirs"))
    with pytest.raises(UserError, match="hook must be one of osgtest, own") as e:
        Catalog.load([cat])
    assert str(e.value.where).endswith("catalog.yaml:11:11")


@pytest.mark.vm
def test_the_references_hook_runs_our_io_disk(tmp_path, cli, debian12_image):
    ref = reference_image(debian12_image, tmp_path / "debian_12ref.x86_64.qcow2")
    cat = _catalog(tmp_path, ref)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "m.yaml").write_text(PARAMS)
    run = tmp_path / "run"
    r = cli("generate", tmp_path / "p", "-o", run, "--catalog", cat)
    assert r.returncode == 0, r.stderr
    cell_json = json.loads((run / "cells.jsonl").read_text().splitlines()[0])
    assert cell_json["platform"]["hook"] == "own"
    r = cli("run", run, "-j", "1", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    (cell,) = json.loads((run / "results.json").read_text())["cells"]
    assert cell["outcome"] == "pass", cell
    out = run / "cells" / "000" / "output"
    result = json.loads((out / "result.json").read_text())
    assert [p["name"] for p in result["phases"] if p["status"] == "ok"] == [
        "environment",
        "network",
        "hostname",
        "repositories",
        "install",
        "test",
        "collect",
    ]
    assert "hello\t" in (out / "packages-end.txt").read_text()
    # the reference's hook ran it: ours would have left its log (console-hook.log) beside
    assert not (out / "console-hook.log").exists()
    console = next((run / "cells" / "000").glob("console.*.log")).read_text(errors="replace")
    assert "phase install: ok" in console and "osgtest-boot" not in console, console[-3000:]
