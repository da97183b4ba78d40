"""The private network of one cluster cell: a hub in the runner's process.

Each VM's second NIC is a qemu `dgram` netdev on a pair of unix datagram sockets in a directory
of the runner's own; every Ethernet frame one VM sends goes to every other VM of the cell, and
nowhere else. Nothing on the host changes (no bridge, no tap, no root), and two cells running at
once have two hubs that share nothing, so their VMs never see each other even though every
cluster uses the same addresses (model/cluster.py).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from pathlib import Path

log = logging.getLogger(__name__)

MAX_FRAME = 65536


class Hub:
    """Ports 0..n-1, one per VM; `start()` forwards frames in a thread until `close()`."""

    def __init__(self, sockets_dir: Path, ports: int):
        self.dir = sockets_dir
        self.frames = [0] * ports  # frames received from each port
        self._socks: list[socket.socket] = []
        for i in range(ports):
            path = self.hub_path(i)
            path.unlink(missing_ok=True)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind(str(path))
            s.setblocking(False)
            self._socks.append(s)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._forward, name="cluster-hub", daemon=True)

    def hub_path(self, port: int) -> Path:
        return self.dir / f"hub-{port}.sock"

    def vm_path(self, port: int) -> Path:
        return self.dir / f"nic-{port}.sock"

    def qemu_args(self, port: int, mac: str, *, boot: bool = False) -> list[str]:
        """The VM's private NIC, joined to this hub's `port`; `boot`: the NIC it boots from."""
        netdev = (
            f"dgram,id=private,local.type=unix,local.path={self.vm_path(port)},"
            f"remote.type=unix,remote.path={self.hub_path(port)}"
        )
        device = f"virtio-net-pci,netdev=private,mac={mac}" + (",bootindex=1" if boot else "")
        return ["-netdev", netdev, "-device", device]

    def start(self) -> None:
        self._thread.start()

    def _forward(self) -> None:
        by_fd = {s.fileno(): i for i, s in enumerate(self._socks)}
        while True:
            ready, _, _ = select.select([*by_fd, self._stop_r], [], [])
            for fd in ready:
                if fd == self._stop_r:
                    return
                port = by_fd[fd]
                try:
                    frame = self._socks[port].recv(MAX_FRAME)
                except OSError:
                    continue
                self.frames[port] += 1
                for j, out in enumerate(self._socks):
                    if j == port:
                        continue
                    try:  # a VM not started yet, or gone, has no socket: its frames are lost
                        out.sendto(frame, str(self.vm_path(j)))
                    except OSError:
                        pass

    def close(self) -> None:
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
        for s in self._socks:
            s.close()
        os.close(self._stop_r)
        os.close(self._stop_w)
