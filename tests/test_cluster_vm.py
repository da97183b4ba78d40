"""Real virtual clusters run locally (docs/clusters.md): VMs boot under qemu, a private network
joins each cell's VMs and nothing else, and the stages keep in step across them."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

# Three cluster cells at once (-j 7 holds them all). The web cluster passes: the clients fetch a page
# only their own server-1 serves. The other fails its init on server-1, so its run stage is
# skipped everywhere; its finalize still runs, and client-1 checks there that 10.77.0.13 - the
# web cluster's client-2, up at that moment (its run stage sleeps) - is out of its reach while
# its own server-1 answers. The third, OSCAR's case: node-1 has no disk and boots over PXE from
# head-1, whose stage serves it (dnsmasq: DHCP and TFTP of a kernel and a busybox initramfs) and
# waits until the initramfs went out.
CLUSTERS = r"""
platforms: [debian_12.x86_64]
sources: ['stable; main']
package_sets:
  - label: Web cluster
    packages: [curl]
    selinux: false
    cluster:
      roles:
        server: {count: 1, packages: [nginx-light]}
        client: {count: 2}
      stages:
        - name: init
          server: echo "$CELL_SERIAL" > /var/www/html/cell.txt && systemctl start nginx
        - name: run
          client: curl -fsS http://server-1/cell.txt | grep -qx "$CELL_SERIAL" && sleep 20
        - name: finalize
          all: ip -4 -o addr show
  - label: Failing cluster
    packages: [hello]
    selinux: false
    cluster:
      roles:
        server: {count: 1}
        client: {count: 1}
      stages:
        - name: init
          server: echo "init fails here"; exit 3
        - name: run
          all: 'true'
        - name: finalize
          client: busybox ping -c 1 -W 5 server-1 && ! busybox ping -c 3 -W 2 10.77.0.13
  - label: Network boot
    packages: [dnsmasq-base]
    selinux: false
    cluster:
      roles:
        head: {count: 1}
        node: {count: 1, boot: network, vm: {memory: 512}}
      stages:
        - name: serve
          head: |
            set -e
            mkdir -p /srv/tftp/root/bin /srv/tftp/root/proc
            cp /bin/busybox /srv/tftp/root/bin/busybox
            printf '#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n/bin/busybox echo "osgtest-netboot: $(/bin/busybox cat /proc/cmdline)"\n/bin/busybox poweroff -f\n' > /srv/tftp/root/init
            chmod +x /srv/tftp/root/init
            (cd /srv/tftp/root && find . | busybox cpio -o -H newc | gzip -1 > ../initrd.gz)
            cp "$(ls /boot/vmlinuz-* | tail -n 1)" /srv/tftp/vmlinuz
            printf '#!ipxe\nkernel tftp://%s/vmlinuz console=ttyS0 panic=-1 quiet\ninitrd tftp://%s/initrd.gz\nboot\n' "$CLUSTER_ADDRESS" "$CLUSTER_ADDRESS" > /srv/tftp/boot.ipxe
            nic=$(ip -o -4 addr show | awk -v a="$CLUSTER_ADDRESS/" 'index($4, a) == 1 {print $2}')
            hosts=$(printf '%s\n' "$CLUSTER_NETBOOT" | awk '{printf " --dhcp-host=%s,%s,%s", $2, $3, $1}')
            dnsmasq --port=0 --interface="$nic" --bind-interfaces --dhcp-range=10.77.0.0,static $hosts \
              --dhcp-boot=boot.ipxe --enable-tftp --tftp-root=/srv/tftp --log-dhcp \
              --log-facility=/var/log/osgtest-dnsmasq.log --dhcp-leasefile=/run/osgtest-dnsmasq.leases
        - name: wait
          head: |
            timeout 240 sh -c 'until grep -q "sent /srv/tftp/initrd.gz" /var/log/osgtest-dnsmasq.log; do sleep 2; done'
            rc=$?
            cat /var/log/osgtest-dnsmasq.log
            cat /run/osgtest-dnsmasq.leases
            exit $rc
vm: {memory: 640, vcpus: 1}
test_timeout: 300
"""


def _time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _generate(cli, tmp_path: Path, image: Path) -> Path:
    params = tmp_path / "params"
    params.mkdir()
    (params / "clusters.yaml").write_text(CLUSTERS)
    run = tmp_path / "run"
    r = cli("generate", params, "-o", run, "--image-dir", image.parent)
    assert r.returncode == 0, r.stderr
    return run


def test_cluster_cells_in_step_apart_and_network_booted(tmp_path, cli, debian12_image):
    run = _generate(cli, tmp_path, debian12_image)
    r = cli("run", run, "-j", "7", "--no-progress", timeout=1500)  # seven VMs on two cores
    assert r.returncode == 1, r.stdout + r.stderr  # a product failure (the failing init), no infra
    cells = {c["label"]: c for c in json.loads((run / "results.json").read_text())["cells"]}
    web, failing, netboot = cells["Web cluster"], cells["Failing cluster"], cells["Network boot"]

    # The web cluster passes on all three VMs, every stage ok.
    assert web["outcome"] == "pass", web
    assert [(v["name"], v["role"], v["outcome"]) for v in web["vms"]] == [
        ("server-1", "server", "pass"),
        ("client-1", "client", "pass"),
        ("client-2", "client", "pass"),
    ]
    for vm in web["vms"]:
        assert [(s["name"], s["status"], s["exit_code"]) for s in vm["stages"]] == [
            ("init", "ok", 0),
            ("run", "ok", 0),
            ("finalize", "ok", 0),
        ], vm
    # The barrier, in host time (the runner's record): a VM reports `ready k+1` only once it has
    # finished stage k, so each stage was released after every VM had finished the one before.
    record = json.loads((run / "cells" / web["serial"] / "cluster.json").read_text())
    barriers = record["barriers"]
    assert [b["name"] for b in barriers] == ["init", "run", "finalize"]
    for b in barriers:
        assert sorted(b["arrivals"]) == ["client-1", "client-2", "server-1"], b
        assert b["decision"] == "run" and b["released"] >= max(a["time"] for a in b["arrivals"].values())
    for before, after in zip(barriers, barriers[1:], strict=False):
        assert min(a["time"] for a in after["arrivals"].values()) >= before["released"], (before, after)
    # ... and in the guests' own timestamps, which agree within their clocks' skew (each VM's
    # clock is set from the host's at boot and drifts under emulation: a second or two)
    names = ("init", "run", "finalize")
    for before, after in zip(names, names[1:], strict=False):
        ended = max(_time(s["end"]) for v in web["vms"] for s in v["stages"] if s["name"] == before)
        started = min(_time(s["start"]) for v in web["vms"] for s in v["stages"] if s["name"] == after)
        assert started >= ended - 5.0, (before, after, ended, started)
    assert all(r["returncode"] == 0 and not r["timed_out"] for r in record["vms"]), record["vms"]

    # The failing cluster: init failed on server-1, run skipped everywhere, finalize ok everywhere.
    assert failing["outcome"] == "fail", failing
    assert "init" in failing["reason"] and "server-1" in failing["reason"], failing["reason"]
    stages = {
        v["name"]: {s["name"]: (s["status"], s["exit_code"]) for s in v["stages"]} for v in failing["vms"]
    }
    assert stages == {
        "server-1": {"init": ("failed", 3), "run": ("skipped", None), "finalize": ("ok", 0)},
        "client-1": {"init": ("ok", 0), "run": ("skipped", None), "finalize": ("ok", 0)},
    }
    # Apart: the failing cluster's finalize (client-1 reached its own server-1 and not
    # 10.77.0.13) ran while the web cluster's client-2 held that address - between the end
    # of its network phase and the end of its run stage.
    fin = next(
        s for v in failing["vms"] if v["name"] == "client-1" for s in v["stages"] if s["name"] == "finalize"
    )
    client2 = json.loads(
        (run / "cells" / web["serial"] / "vms" / "client-2" / "output" / "result.json").read_text()
    )
    net_up = _time(next(p["end"] for p in client2["phases"] if p["name"] == "network"))
    run_end = _time(next(s["end"] for s in client2["stages"] if s["name"] == "run"))
    assert net_up - 1.0 <= _time(fin["start"]) and _time(fin["end"]) <= run_end + 1.0, (net_up, fin, run_end)

    # Network boot: the head served node-1, whose console shows the kernel and initramfs it got.
    assert netboot["outcome"] == "pass", netboot
    head = next(v for v in netboot["vms"] if v["name"] == "head-1")
    assert [(s["name"], s["status"]) for s in head["stages"]] == [("serve", "ok"), ("wait", "ok")], head
    console = (run / "cells" / netboot["serial"] / "vms" / "node-1" / "console.log").read_text()
    assert "osgtest-netboot: console=ttyS0" in console and "reboot: Power down" in console, console[-2000:]

    # Reports: the VM x stage grid, a JUnit testcase per VM and stage.
    assert "server-1" in (run / "report.html").read_text()
    junit = (run / "junit.xml").read_text()
    assert 'name="server-1.init"' in junit and 'name="client-1.run"' in junit

    # Run again: both cells are finished, no VM starts again.
    consoles = {p: p.stat().st_mtime_ns for p in run.glob("cells/*/vms/*/console.log")}
    assert len(consoles) == 7
    r = cli("run", run, "-j", "7", "--no-progress")
    assert r.returncode == 1, r.stdout + r.stderr
    assert {p: p.stat().st_mtime_ns for p in run.glob("cells/*/vms/*/console.log")} == consoles
