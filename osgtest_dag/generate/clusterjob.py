"""A cluster cell's TestRun node (docs/clusters.md): the VARS of submit/cluster-run.sub, the
cluster runner's job, and which nodes run it instead of a VM job."""

from __future__ import annotations

from pathlib import Path

from osgtest_dag.model import rundir
from osgtest_dag.model.cell import CellConfig
from osgtest_dag.model.rundir import NodeName

# The runner and each VM's qemu process beside the guests' own memory (MB).
CLUSTER_MEMORY_OVERHEAD_MB = 256
CLUSTER_RUN_SUB = "cluster-run.sub"


def cluster_vars(cfg: CellConfig) -> dict:
    """A cluster cell's TestRun VARS (submit_templates/cluster-run.sub.j2): its VMs' IO (and
    scratch) disks in, their disks and consoles back where the run directory keeps them, and
    the resources of all its VMs at once."""
    vms = cfg.cluster_vms()
    booted = [v for v in vms if not v.network_boot]
    cell_dir = rundir.RunDir(Path(".")).cell(cfg.serial)

    def io(vm: str) -> str:
        return cell_dir.vm_dir(vm).io_disk.name

    def returned(path: Path) -> str:
        return path.relative_to(cell_dir.path).as_posix()

    # each VM's scratch disk goes in beside its IO disk, and never comes back
    scratch = [returned(cell_dir.vm_dir(v.name).scratch_disk) for v in booted if cfg.vm_scratch_mb(v)]
    remaps = [f"{io(v.name)}={returned(cell_dir.vm_dir(v.name).result_disk)}" for v in booted]
    remaps += [f"{rundir.vm_console(v.name)}={rundir.vm_console_returned(v.name)}" for v in vms]
    return {
        "vms": str(len(vms)),
        "request_memory": str(sum(v.memory for v in vms) + CLUSTER_MEMORY_OVERHEAD_MB),
        "request_cpus": str(sum(v.vcpus for v in vms)),
        "request_disk": f"{sum(v.disk for v in vms)}MB",
        "vm_inputs": ",".join([returned(cell_dir.vm_dir(v.name).io_disk) for v in booted] + scratch),
        "vm_outputs": ",".join([io(v.name) for v in booted] + [rundir.vm_console(v.name) for v in vms]),
        "vm_remaps": ";".join(remaps),
    }


def cluster_submit_files(configs: list[CellConfig]) -> dict[str, str]:
    """The TestRun nodes that run the cluster runner, with their submit file."""
    return {
        NodeName(rundir.TEST_RUN, c.serial).format(): f"submit/{CLUSTER_RUN_SUB}"
        for c in configs
        if c.cluster is not None
    }
