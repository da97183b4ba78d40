"""The CPU a VM gets under TCG follows the x86-64 level its platform is built for: RHEL 10 and
its rebuilds need x86-64-v3 (AVX2); the other platforms' guests get no AVX, which TCG emulates
more slowly than SSE. KVM guests get the host's CPU, whatever the platform."""

from __future__ import annotations

import pytest

from osgtest_dag.base import command
from osgtest_dag.engine.local.submit import read_job
from osgtest_dag.engine.local.vmjob import x86_64_level
from osgtest_dag.generate import workflow
from osgtest_dag.guest import initramfs, machines, qemu
from osgtest_dag.model import dagfile
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog

PARAMS = """\
platforms: [debian_12.x86_64, alma_9.x86_64, alma_10.x86_64, centos_stream_10.x86_64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
    selinux: false
"""
NO_AVX = "max,avx=off,avx2=off,fma=off,f16c=off,vaes=off,vpclmulqdq=off"


def test_the_levels_of_the_catalogs_platforms():
    cat = Catalog.load(image_dir="/images")
    levels = {i: cat.platform(i).x86_64_level for i in cat.platform_ids() if i.endswith(".x86_64")}
    assert {i for i, level in levels.items() if level == 3} == {
        "alma_10.x86_64",
        "rocky_10.x86_64",
        "centos_stream_10.x86_64",
    }
    assert levels["rocky_9.x86_64"] == levels["debian_13.x86_64"] == 2


def test_the_executor_reads_the_platform_from_the_submit_file_and_picks_the_cpu(tmp_path):
    """The generated submit file names the cell's platform (+OsgtestDagPlatform); htcondor2's
    parser expands it with the node's VARS; the VM's `-cpu` under TCG follows its level."""
    params = tmp_path / "params"
    params.mkdir()
    (params / "m.yaml").write_text(PARAMS)
    cat = Catalog.load(image_dir="/images")
    m = matrix.build([params], cat)
    run = workflow.write_run(
        tmp_path / "run", list(m.cells), cat, workflow.WorkflowOptions(), param_files=list(m.files)
    )
    dag = dagfile.parse(run / "matrix.dag")
    cpus = {}
    for cell in m.cells:
        node = f"TestRun{cell.serial}"
        spec = read_job(run / "submit" / "test-run.sub", dag.nodes[node].vars, run, node_name=node)
        assert spec.platform == cell.platform.id
        argv = qemu.qemu_argv(
            tmp_path / "ov.qcow2",
            [],
            accel="tcg",
            memory_mb=1024,
            vcpus=1,
            networking=True,
            console_log=tmp_path / "c.log",
            x86_64_level=x86_64_level(spec.platform),
        )
        cpus[spec.platform] = argv[argv.index("-cpu") + 1]
    assert cpus == {
        "debian_12.x86_64": NO_AVX,
        "alma_9.x86_64": NO_AVX,
        "alma_10.x86_64": "max",
        "centos_stream_10.x86_64": "max",
    }
    # a job that names no platform, or one the catalog does not know: every feature
    assert x86_64_level("") == x86_64_level("solaris_11.x86_64") == 3


def test_kvm_and_aarch64_guests_get_the_same_cpu_at_every_level():
    x86, arm = machines.machine("x86_64"), machines.machine("aarch64")
    assert x86.args("kvm", 2) == x86.args("kvm", 3) == ["-machine", "q35,accel=kvm", "-cpu", "host"]
    assert x86.args("tcg", 3) == ["-machine", "q35,accel=tcg", "-cpu", "max"]
    assert (
        arm.args("tcg", 2)
        == arm.args("tcg", 3)
        == ["-machine", "virt,accel=tcg", "-cpu", "max,pauth-impdef=on"]
    )


CPUINFO_INIT = """\
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox echo "flags-begin $(/bin/busybox grep -m1 '^flags' /proc/cpuinfo) flags-end"
exec /bin/busybox poweroff -f
"""


@pytest.mark.vm
@pytest.mark.parametrize("level", [2, 3])
def test_a_guest_sees_avx_only_at_level_3(tmp_path, level):
    """This machine's kernel and busybox, under TCG with the level's CPU: the guest's own
    /proc/cpuinfo (a few seconds a boot)."""
    kernel = qemu.host_kernel()
    initrd = initramfs.poweroff_initramfs(tmp_path / "cpuinfo.img", init=CPUINFO_INIT)
    if kernel is None or initrd is None:
        pytest.fail("the set-up installs a kernel in /boot and busybox-static")
    argv = [
        "qemu-system-x86_64",
        *machines.machine("x86_64").args("tcg", level),
        *("-m", "512", "-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio"),
        *("-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet"),
    ]
    out = command.run(argv, timeout=120).stdout
    flags = out.split("flags-begin", 1)[1].split("flags-end", 1)[0].split()
    assert "sse4_2" in flags and "popcnt" in flags  # x86-64-v2 either way
    assert ("avx" in flags, "avx2" in flags, "fma" in flags) == ((True,) * 3 if level == 3 else (False,) * 3)
