"""A fork server: one long-lived process of a Python program, with its modules loaded, that
forks a child per call instead of starting the program again.

Why: the local executor runs `osgtest-dag node ...` for every node of every cell (six to eight
per cell, the POST script among them). Each start loads Python and the node commands, ~0.24 s
of CPU, where the node's own work takes 0.01-0.03 s. A child forked from a process that has
loaded them starts in a few milliseconds, and runs the same code on the same arguments, in the
same directory, environment and files, in its own session (process group), as a new process
would: only the interpreter's start-up is shared.

The protocol, over a SOCK_SEQPACKET socket pair (the server's end is its stdin), one message
each, fields separated by NUL bytes (which no argument, path or environment entry can hold):
    request  ID, CWD, N, N argv words, then NAME=VALUE for each environment variable; with two
             file descriptors (the child's stdout and stderr)
    replies  "ID pid PID" once forked, then "ID exit CODE" (negative: killed by that signal)
The server's children are its own: when the client's end closes (the executor ended, or was
killed with -9) the server kills the ones still running and exits.

Besides `command`, this module is the only one that makes processes (a fork without exec, in
the server only).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.base.errors import CommandError

log = logging.getLogger(__name__)

_MAX_MESSAGE = 1 << 20  # a request holds argv and the environment


@dataclass(frozen=True)
class Request:
    id: int
    cwd: str
    argv: tuple[str, ...]
    env: dict[str, str]


def encode_request(request: Request) -> bytes:
    words = [str(request.id), request.cwd, str(len(request.argv)), *request.argv]
    words += [f"{name}={value}" for name, value in request.env.items()]
    return b"\0".join(os.fsencode(w) for w in words)


def decode_request(message: bytes) -> Request:
    words = [os.fsdecode(w) for w in message.split(b"\0")]
    n = int(words[2])
    argv, env = words[3 : 3 + n], words[3 + n :]
    return Request(int(words[0]), words[1], tuple(argv), dict(e.split("=", 1) for e in env))


# ------------------------------------------------------------------------------ the server
def serve(sock: socket.socket, run: Callable[[list[str]], int]) -> None:
    """Fork a child per request on `sock` that runs `run(argv)` and exits with its result, until
    the client's end closes. Call it in the program's main thread (it handles SIGCHLD)."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    running: dict[int, int] = {}  # pid -> request id
    try:
        while True:
            ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
            if wake_r in ready:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
            _reap(sock, running)
            if sock.fileno() in ready:
                msg, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 2)
                if not msg:
                    return  # the client has gone
                request = decode_request(msg)
                pid = os.fork()
                if pid == 0:
                    _child(request, fds, (sock.fileno(), wake_r, wake_w), run)
                for fd in fds:
                    os.close(fd)
                running[pid] = request.id
                sock.send(f"{request.id} pid {pid}".encode())
    finally:
        for pid in running:  # the client went while they ran: nothing of its outlives it
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def _reap(sock: socket.socket, running: dict[int, int]) -> None:
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        request_id = running.pop(pid, None)
        if request_id is not None:
            code = os.waitstatus_to_exitcode(status)
            try:
                sock.send(f"{request_id} exit {code}".encode())
            except OSError:
                pass  # the client has gone; the loop sees it next


def _child(
    request: Request, fds: list[int], server_fds: Sequence[int], run: Callable[[list[str]], int]
) -> None:
    """In the forked child: become the program run with the request's argv, then exit."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for fd in server_fds:
            os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in {devnull, *fds} - {0, 1, 2}:
            os.close(fd)
        os.chdir(request.cwd)
        os.environ.clear()
        os.environ.update(request.env)
        sys.argv = list(request.argv)
        code = run(sys.argv)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code & 0xFF)


# ------------------------------------------------------------------------------ the client
class ForkedCall:
    """One call: its pid once forked, its exit code once it ended (None: the server went first)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.exit: int | None = None
        self.forked = threading.Event()
        self.ended = threading.Event()

    def wait_forked(self) -> int | None:
        self.forked.wait()
        return self.pid

    def wait(self) -> int | None:
        self.ended.wait()
        return self.exit

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.pid is not None and not self.ended.is_set():
            try:
                os.killpg(self.pid, sig)
            except OSError:
                pass


class ForkServer:
    """The client: starts `argv` (a program that calls `serve` on its stdin) once, and sends it
    calls. Unusable (`call` returns None) when it could not start or has gone."""

    def __init__(self, argv: Sequence[str], on_start: Callable[[ForkServer], None] | None = None):
        self.argv = list(argv)
        self.on_start = on_start  # called once the server runs
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._calls: dict[int, ForkedCall] = {}
        self._next_id = 0
        self._dead = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def process_name(self) -> str:
        """What /proc says the server (and so each child) runs: its interpreter, for a script."""
        try:
            return Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, IndexError):
            return self.argv[0]

    def _start(self) -> bool:
        if self._sock is not None or self._dead:
            return not self._dead
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = command.spawn(self.argv, stdin=theirs.fileno(), stdout=subprocess.DEVNULL)
        except CommandError as e:
            log.debug("no fork server: %s", e)
            ours.close()
            self._dead = True
            return False
        finally:
            theirs.close()
        self._sock = ours
        threading.Thread(target=self._read_replies, name="fork-server", daemon=True).start()
        if self.on_start:
            self.on_start(self)
        return True

    def call(
        self, argv: Sequence[str], *, cwd: Path, stdout: int, stderr: int, env: Mapping[str, str] | None
    ) -> ForkedCall | None:
        """Ask for `argv` in `cwd` with those descriptors and `env` added to this process's
        environment (as command.spawn); None when the server cannot take it (run the program
        as a new process instead)."""
        env = command.merged_env(env) or dict(os.environ)
        with self._lock:
            if not self._start():
                return None
            assert self._sock is not None
            self._next_id += 1
            call_id, call = self._next_id, ForkedCall()
            self._calls[call_id] = call
            message = encode_request(Request(call_id, str(cwd), tuple(argv), dict(env)))
            try:
                socket.send_fds(self._sock, [message], [stdout, stderr])
            except OSError as e:
                log.debug("fork server gone: %s", e)
                del self._calls[call_id]
                self._dead = True
                return None
        return call

    def _read_replies(self) -> None:
        assert self._sock is not None
        while True:
            try:
                msg = self._sock.recv(_MAX_MESSAGE)
            except OSError:
                msg = b""
            if not msg:
                break
            call_id, what, number = msg.decode().split()
            with self._lock:
                call = self._calls.get(int(call_id))
                if call is not None and what == "pid":
                    call.pid = int(number)
                    call.forked.set()
                elif call is not None and what == "exit":
                    del self._calls[int(call_id)]
                    call.exit = int(number)
                    call.ended.set()
        with self._lock:  # the server has gone: calls it had not forked can run elsewhere
            self._dead = True
            for call in self._calls.values():
                call.forked.set()
                call.ended.set()
            self._calls.clear()

    def close(self) -> None:
        """End the server (it kills what still runs) and wait for it."""
        with self._lock:
            sock, self._sock, self._dead = self._sock, None, True
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader; the server reads the end
            except OSError:
                pass
            sock.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
