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

Only processes of the same user may call: an abstract socket has no file
permissions, so the elector process checks each caller's credentials
(``SO_PEERCRED``) and closes the connections of other users at once.
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
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LocalClient", "LocalError", "LocalServer", "socket_address"]

_LENGTH = struct.Struct("<I")
#: The largest header or body of a frame (RPC bodies are at most 16 KiB).
MAX_FRAME = 1024 * 1024
#: How many callers the elector process serves at once (one worker each); more
#: are closed at once (a member then answers its peer 503).
MAX_CONNECTIONS = 1024

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


def _peer_uid(sock: socket.socket) -> int | None:
    """The user id of the process at the other end, where the platform says (Linux)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # pragma: no cover - not Linux
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _same_user(sock: socket.socket) -> bool:
    """Whether the other end runs as this process's user (or the platform cannot tell)."""
    uid = _peer_uid(sock)
    return uid is None or uid == os.geteuid()


def _recv_exactly(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    chunks = []
    while n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the other end did not answer in time")
            sock.settimeout(remaining)
        chunk = sock.recv(min(n, 65536))
        if not chunk:
            raise ConnectionError("the other end closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _send_frame(sock: socket.socket, header: dict[str, Any], body: bytes) -> None:
    data = json.dumps({**header, "body": len(body)}, separators=(",", ":")).encode()
    sock.sendall(_LENGTH.pack(len(data)) + data + body)


def _recv_frame(sock: socket.socket, deadline: float | None = None) -> tuple[dict[str, Any], bytes]:
    """One frame; :exc:`ValueError` (or a subclass) if it is malformed."""
    (length,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size, deadline))
    if length > MAX_FRAME:
        raise ValueError(f"a frame header of {length} bytes")
    header = json.loads(_recv_exactly(sock, length, deadline))
    if not isinstance(header, dict):
        raise ValueError(f"a frame header that is a JSON {type(header).__name__}")
    size = header.pop("body", 0)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FRAME:
        raise ValueError(f"a frame body of {size!r} bytes")
    return header, _recv_exactly(sock, size, deadline) if size else b""


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
                if self._closed:
                    return
                # Out of descriptors or memory for a moment: the others keep being
                # served; try again shortly rather than stop accepting for good.
                _log.warning("flask-goelect: accepting a local call failed", exc_info=True)
                time.sleep(0.05)
                continue
            try:
                refused = not _same_user(conn)
            except OSError:
                refused = True
            if refused:
                _log.warning("flask-goelect: refused a local call from a process of another user")
                conn.close()
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                if len(self._connections) >= MAX_CONNECTIONS:
                    conn.close()
                    continue
                self._connections.add(conn)
            try:
                self._start("goelect-local-conn", functools.partial(self._serve, conn))
            except Exception:  # no thread to be had: this caller only is refused
                _log.warning("flask-goelect: cannot serve a local call", exc_info=True)
                with self._lock:
                    self._connections.discard(conn)
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while not self._closed:
                try:
                    header, body = _recv_frame(conn)
                except (OSError, ValueError, RecursionError):
                    # Gone, or a malformed frame: this connection only is closed.
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
        # Every call ends within ``timeout``: a kept-alive connection that turns
        # out closed is replaced once, within the same deadline, but a call that
        # timed out is never sent again (the elector may have received it).
        self.address = address
        self.timeout = timeout
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def call(self, header: dict[str, Any], body: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """Send one request, return the answer.

        :raises LocalError: the elector process is not there or did not answer.
        """
        deadline = time.monotonic() + self.timeout
        with self._lock:
            sock = self._idle.pop() if self._idle else None
        fresh = sock is None
        for attempt in range(2):
            if sock is None:
                sock = self._connect(deadline)
                fresh = True
            try:
                sock.settimeout(max(1e-3, deadline - time.monotonic()))
                _send_frame(sock, header, body)
                answer = _recv_frame(sock, deadline)
            except (OSError, ValueError, RecursionError) as exc:
                sock.close()
                sock = None
                if fresh or attempt or isinstance(exc, TimeoutError):
                    raise LocalError(f"the node's elector process did not answer: {exc}") from None
                continue  # a kept-alive connection to an elector that has gone: once more
            with self._lock:
                self._idle.append(sock)
            if "error" in answer[0]:
                raise LocalError(f"the node's elector process failed: {answer[0]['error']}")
            return answer
        raise LocalError("the node's elector process did not answer")  # pragma: no cover

    def _connect(self, deadline: float) -> socket.socket:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LocalError("the node's elector process did not answer in time")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(remaining)
        try:
            sock.connect(self.address)
            if not _same_user(sock):
                raise OSError(f"{self.address!r} is held by a process of another user")
        except OSError as exc:
            sock.close()
            raise LocalError(f"no elector process of this node answers: {exc}") from None
        return sock

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()
