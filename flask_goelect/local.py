"""Calls between the processes of one node, over a Unix socket.

A peer's RPC may land on any worker process of a node, but only the node's
elector process may answer it: it alone steps the election, keeps the vote and
the replay cache of signed requests. The other processes hand such requests to
it as they came (:class:`LocalClient`), and the elector process answers them
(:class:`LocalServer`) with the same code that answers the requests it
receives itself. Forwarding the raw request, rather than a parsed message,
keeps every check (signature, nonce, sender) in the one process that can make
it node-wide.

The socket lives in Linux's abstract namespace (no file, nothing stale after a
crash, no path length limit), named after the node's state file; elsewhere it
is a file next to the state file. Frames are ``<4-byte length><JSON header>``
followed by ``header["body"]`` bytes of body.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["LocalClient", "LocalError", "LocalServer", "socket_address"]

_LENGTH = struct.Struct("<I")
#: The largest header or body of a frame (RPC bodies are at most 16 KiB).
MAX_FRAME = 1024 * 1024

_log = logging.getLogger("flask_goelect")

Handler = Callable[[dict[str, Any], bytes], tuple[dict[str, Any], bytes]]


class LocalError(Exception):
    """The node's elector process cannot be reached (gone, or not started yet)."""


def socket_address(state_file: str | os.PathLike[str]) -> str:
    """Where the elector process of the node of ``state_file`` listens."""
    real = os.path.realpath(os.fspath(state_file))
    digest = hashlib.sha256(real.encode()).hexdigest()[:40]
    if sys.platform.startswith("linux"):
        return f"\0goelect-{digest}"
    return os.path.join(os.path.dirname(real), f".goelect-{digest[:16]}.sock")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 65536))
        if not chunk:
            raise ConnectionError("the other end closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _send_frame(sock: socket.socket, header: dict[str, Any], body: bytes) -> None:
    data = json.dumps({**header, "body": len(body)}, separators=(",", ":")).encode()
    sock.sendall(_LENGTH.pack(len(data)) + data + body)


def _recv_frame(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    (length,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size))
    if length > MAX_FRAME:
        raise ConnectionError(f"a frame header of {length} bytes")
    header = json.loads(_recv_exactly(sock, length))
    size = int(header.pop("body", 0))
    if not 0 <= size <= MAX_FRAME:
        raise ConnectionError(f"a frame body of {size} bytes")
    return header, _recv_exactly(sock, size) if size else b""


class LocalServer:
    """Answers the node's other processes in the elector process.

    :param address: from :func:`socket_address`.
    :param handle: ``handle(header, body) -> (header, body)``; an exception is
        answered as ``{"error": ...}``.
    :param start_thread: starts a background worker (a thread, or a greenlet
        in a monkey-patched process: the socket then cooperates).
    """

    def __init__(
        self,
        address: str,
        handle: Handler,
        start_thread: Callable[[str, Callable[[], None]], object],
    ) -> None:
        self.address = address
        self._handle = handle
        self._start = start_thread
        self._closed = False
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if not address.startswith("\0"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(address)
            sock.bind(address)
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def start(self) -> None:
        self._start("goelect-local-accept", self._accept_loop)

    def close(self) -> None:
        """Stop listening and close every connection."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        if not self.address.startswith("\0"):
            with contextlib.suppress(OSError):
                os.unlink(self.address)

    def forget_after_fork(self) -> None:
        """In a forked child: close this process's copies of the sockets only."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.close()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.close()
        self._connections = set()
        self._lock = threading.Lock()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._connections.add(conn)
            self._start("goelect-local-conn", functools.partial(self._serve, conn))

    def _serve(self, conn: socket.socket) -> None:
        try:
            while not self._closed:
                try:
                    header, body = _recv_frame(conn)
                except (ConnectionError, OSError, ValueError):
                    return
                try:
                    out_header, out_body = self._handle(header, body)
                except Exception as exc:
                    _log.exception("flask-goelect: a call from another process failed")
                    out_header, out_body = {"error": f"{type(exc).__name__}: {exc}"}, b""
                try:
                    _send_frame(conn, out_header, out_body)
                except OSError:
                    return
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()


class LocalClient:
    """Calls the node's elector process; kept-alive connections, one call each at a time.

    :param timeout: seconds for one call (connect, send and answer).
    """

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def call(self, header: dict[str, Any], body: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """Send one request, return the answer.

        :raises LocalError: the elector process is not there or did not answer.
        """
        with self._lock:
            sock = self._idle.pop() if self._idle else None
        fresh = sock is None
        for attempt in range(2):
            if sock is None:
                sock = self._connect()
                fresh = True
            try:
                sock.settimeout(self.timeout)
                _send_frame(sock, header, body)
                answer = _recv_frame(sock)
            except (OSError, ConnectionError, ValueError) as exc:
                sock.close()
                sock = None
                if fresh or attempt:
                    raise LocalError(f"the node's elector process did not answer: {exc}") from None
                continue  # a kept-alive connection to an elector that has gone: once more
            with self._lock:
                self._idle.append(sock)
            if "error" in answer[0]:
                raise LocalError(f"the node's elector process failed: {answer[0]['error']}")
            return answer
        raise LocalError("the node's elector process did not answer")  # pragma: no cover

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.address)
        except OSError as exc:
            sock.close()
            raise LocalError(f"no elector process of this node answers: {exc}") from None
        return sock

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()
