"""Calls between the processes of one node over a Unix socket (``flask_goelect.local``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from node_procs import child_env

from flask_goelect import local
from flask_goelect.local import LocalClient, LocalError, LocalServer, socket_address

SERVER = """
import os, sys, threading, time
from flask_goelect.local import LocalServer

def handle(header, body):
    return {"pid": os.getpid(), "op": header.get("op")}, body

def start(name, func):
    threading.Thread(target=func, name=name, daemon=True).start()

address = sys.argv[1].replace("@", chr(0), 1) if sys.argv[1][:1] == "@" else sys.argv[1]
if len(sys.argv) > 2:  # run as another user from here on
    os.setgid(int(sys.argv[2]))
    os.setuid(int(sys.argv[2]))
server = LocalServer(address, handle, start)
server.start()
print("ready", flush=True)
sys.stdin.read()
"""


def _thread(name: str, func: Callable[[], None]) -> None:
    threading.Thread(target=func, name=name, daemon=True).start()


def echo(header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
    if header.get("op") == "fail":
        raise RuntimeError("the handler failed")
    return {"echo": header}, body


@pytest.fixture
def address(tmp_path: Path) -> str:
    return socket_address(tmp_path / "n1.json") + f"-{os.getpid()}-test"


@pytest.fixture
def server(address: str) -> Iterator[LocalServer]:
    served = LocalServer(address, echo, _thread)
    served.start()
    yield served
    served.close()


def _arg(address: str) -> str:
    """An abstract address as a command-line argument (which cannot hold a NUL)."""
    return "@" + address[1:] if address.startswith("\0") else address


def _closed(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock`` without answering."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:  # closed with what we sent still unread
        return True


class ServerProcess:
    """A LocalServer in a process of its own (the node's elector process)."""

    def __init__(self, address: str, user: int | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, _arg(address), *([str(user)] if user else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def close(self) -> None:
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture
def server_process(address: str) -> Iterator[ServerProcess]:
    process = ServerProcess(address)
    yield process
    process.close()


def test_socket_address_is_abstract_and_names_the_state_file(tmp_path: Path) -> None:
    a = socket_address(tmp_path / "n1.json")
    assert a.startswith("\0goelect-") and a == socket_address(str(tmp_path / "n1.json"))
    assert a != socket_address(tmp_path / "n2.json")


def test_round_trip(server: LocalServer, address: str) -> None:
    client = LocalClient(address, timeout=2.0)
    try:
        header, body = client.call({"op": "x", "n": [1, "two"]}, b"\x00body\xff")
        assert header == {"echo": {"op": "x", "n": [1, "two"]}} and body == b"\x00body\xff"
        big = os.urandom(local.MAX_FRAME)
        assert client.call({"op": "big"}, big)[1] == big
        with pytest.raises(LocalError, match="RuntimeError: the handler failed"):
            client.call({"op": "fail"})
        assert client.call({"op": "again"}) == ({"echo": {"op": "again"}}, b"")
    finally:
        client.close()


def test_a_kept_alive_connection_is_reused(address: str) -> None:
    started: list[str] = []

    def counting(name: str, func: Callable[[], None]) -> None:
        started.append(name)
        _thread(name, func)

    served = LocalServer(address, echo, counting)
    served.start()
    client = LocalClient(address, timeout=2.0)
    try:
        client.call({"op": "one"})
        (sock,) = client._idle
        for n in range(20):
            client.call({"op": "more", "n": n})
        assert client._idle == [sock]
        assert started == ["goelect-local-accept", "goelect-local-conn"]
        assert len(served._connections) == 1
    finally:
        client.close()
        served.close()


def test_the_elector_process_gone_is_a_local_error_at_once(
    server_process: ServerProcess, address: str
) -> None:
    kept, fresh = LocalClient(address, timeout=5.0), LocalClient(address, timeout=5.0)
    try:
        assert kept.call({"op": "hello"})[0]["pid"] == server_process.proc.pid
        server_process.proc.kill()
        server_process.proc.communicate(timeout=10)
        for client in (kept, fresh):
            started = time.monotonic()
            with pytest.raises(LocalError):
                client.call({"op": "hello"})
            assert time.monotonic() - started < 0.5
    finally:
        kept.close()
        fresh.close()


def test_a_stopped_elector_process_is_a_local_error_within_the_deadline(
    server_process: ServerProcess, address: str
) -> None:
    # SIGSTOP (or a process stuck in the kernel): connecting still works (the
    # kernel queues the connection), nothing answers. Every call ends by its
    # deadline, kept-alive connection or not, and is not sent twice.
    timeout = 0.4
    kept, fresh = LocalClient(address, timeout), LocalClient(address, timeout)
    try:
        kept.call({"op": "hello"})
        stop(server_process.proc.pid)
        for client in (kept, fresh):
            started = time.monotonic()
            with pytest.raises(LocalError):
                client.call({"op": "hello"})
            elapsed = time.monotonic() - started
            assert timeout * 0.9 < elapsed < timeout * 1.5, elapsed
        os.kill(server_process.proc.pid, signal.SIGCONT)
        assert fresh.call({"op": "hello"})[0]["op"] == "hello"
    finally:
        kept.close()
        fresh.close()


def stop(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every thread of it has stopped."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        states = []
        for task in tasks.iterdir():
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except OSError:
                continue
        if states and all(state in "tT" for state in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop")


def _frame(header: Any, body: bytes = b"", size: Any = None) -> bytes:
    data = (
        dict(header, body=len(body) if size is None else size)
        if isinstance(header, dict)
        else header
    )
    raw = json.dumps(data).encode()
    return struct.pack("<I", len(raw)) + raw + body


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack("<I", 0xFFFFFFFF),
        struct.pack("<I", local.MAX_FRAME + 1) + b"{",
        struct.pack("<I", 0),
        struct.pack("<I", 8) + b"not json",
        struct.pack("<I", 2) + b"\xff\xfe",
        _frame([1, 2]),
        _frame("text"),
        _frame({"op": "x"}, size=-1),
        _frame({"op": "x"}, size=local.MAX_FRAME + 1),
        _frame({"op": "x"}, size="12"),
        _frame({"op": "x"}, size=[1]),
        _frame({"op": "x"}, size=True),
        struct.pack("<I", 3000) + b"[" * 3000,
    ],
)
def test_a_malformed_frame_closes_that_connection_only(
    server: LocalServer, address: str, garbage: bytes
) -> None:
    client = LocalClient(address, timeout=2.0)
    try:
        client.call({"op": "before"})
        bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bad.settimeout(5)
        bad.connect(address)
        bad.sendall(garbage)
        try:
            assert _closed(bad)  # no answer
        finally:
            bad.close()
        # The server goes on, on the kept-alive connection and on new ones.
        assert client.call({"op": "after"})[0] == {"echo": {"op": "after"}}
        other = LocalClient(address, timeout=2.0)
        assert other.call({"op": "new"})[0] == {"echo": {"op": "new"}}
        other.close()
    finally:
        client.close()


def test_a_caller_that_sends_nothing_holds_up_nobody(server: LocalServer, address: str) -> None:
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(address)
    idle.sendall(b"\x10\x00")  # half a length
    client = LocalClient(address, timeout=2.0)
    try:
        assert client.call({"op": "meanwhile"})[0] == {"echo": {"op": "meanwhile"}}
    finally:
        client.close()
        idle.close()


def test_no_thread_for_a_caller_refuses_that_caller_only(address: str) -> None:
    calls = []

    def flaky(name: str, func: Callable[[], None]) -> None:
        calls.append(name)
        if name == "goelect-local-conn" and calls.count(name) == 1:
            raise RuntimeError("can't start new thread")
        _thread(name, func)

    served = LocalServer(address, echo, flaky)
    served.start()
    try:
        with pytest.raises(LocalError):
            LocalClient(address, timeout=2.0).call({"op": "unlucky"})
        client = LocalClient(address, timeout=2.0)
        assert client.call({"op": "next"})[0] == {"echo": {"op": "next"}}
        client.close()
    finally:
        served.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_processes_of_another_user_are_refused(server: LocalServer, address: str) -> None:
    # An abstract socket has no file permissions: any user of the machine could
    # connect, and ask for a leadership transfer or the status without the token.
    intruder = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; from flask_goelect.local import LocalClient, LocalError\n"
            "address = sys.argv[1].replace('@', chr(0), 1)\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "try:\n"
            "    print(LocalClient(address, 2.0).call({'op': 'transfer'}))\n"
            "except LocalError as exc:\n"
            "    print('refused', exc)\n",
            _arg(address),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=30,
    )
    assert intruder.stdout.startswith("refused"), intruder.stdout + intruder.stderr
    # And a server of another user is not taken for the node's elector process.
    theirs = address + "-theirs"
    squatter = ServerProcess(theirs, user=65534)
    try:
        with pytest.raises(LocalError, match="another user"):
            LocalClient(theirs, 2.0).call({"op": "rpc"})
    finally:
        squatter.close()
