"""One mailbox and one sender per peer.

A peer gets one call at a time over its kept-alive connection; a newer message
of a kind replaces an unsent older one (a heartbeat that is still queued when
the next round starts is worthless); and a black-holed peer holds up its own
sender only, until the call's deadline (goelect freezes its whole leader loop
there). There are no retries: the election timer is the retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import core
from ..messages import REQUEST_TYPES, Reply, Request
from ..state import NotRunning
from ..transport import Transport, TransportError
from .runtime import Event, Runtime

__all__ = ["CallStats", "Mailbox", "PeerSenders"]


@dataclass
class CallStats:
    """Calls of one kind to one peer: how many, how many failed, how long they took."""

    calls: int = 0
    failures: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0
    last_seconds: float = 0.0

    def add(self, seconds: float, failed: bool) -> None:
        self.calls += 1
        if failed:
            self.failures += 1
            return
        self.total_seconds += seconds
        self.last_seconds = seconds
        if seconds > self.max_seconds:
            self.max_seconds = seconds

    def to_json(self) -> dict[str, Any]:
        answered = self.calls - self.failures
        return {
            "calls": self.calls,
            "failures": self.failures,
            "mean_ms": round(self.total_seconds / answered * 1000, 3) if answered else None,
            "max_ms": round(self.max_seconds * 1000, 3),
            "last_ms": round(self.last_seconds * 1000, 3),
        }


class Mailbox:
    """What is waiting to be sent to one peer: the newest message of each kind.

    Messages are numbered by the step that produced them; a newer message of a
    kind replaces an unsent older one, and the oldest waiting is sent first.
    """

    __slots__ = ("_lock", "_pending", "event")

    def __init__(self, lock: Any, event: Event) -> None:
        self._lock = lock
        self._pending: dict[type[Request], tuple[int, Request]] = {}
        self.event = event

    def put(self, seq: int, msg: Request) -> None:
        kind = type(msg)
        with self._lock:
            current = self._pending.get(kind)
            if current is None or current[0] < seq:
                self._pending[kind] = (seq, msg)
        self.event.set()

    def take(self) -> Request | None:
        with self._lock:
            if not self._pending:
                return None
            pending = self._pending
            kind = min(pending, key=lambda k: pending[k][0])
            return pending.pop(kind)[1]


class PeerSenders:
    """The senders of one run of an elector, and what they learned of each peer.

    :param live: whether this run still goes on (checked before every send).
    :param is_stale: whether a queued message is no longer worth sending.
    :param on_reply: steps a peer's reply (raises ``NotRunning`` once stopped).
    :param record: keeps an unexpected failure in the elector's errors.
    """

    def __init__(
        self,
        node_id: str,
        peers: dict[str, core.Peer],
        transport: Transport,
        runtime: Runtime,
        rpc_timeout: tuple[float, float],
        *,
        live: Callable[[], bool],
        is_stale: Callable[[Request], bool],
        on_reply: Callable[[Reply], None],
        record: Callable[[str, BaseException | str], None],
        log: logging.Logger,
    ) -> None:
        self.node_id = node_id
        self._peers = peers
        self._transport = transport
        self._rt = runtime
        self._rpc_timeout = rpc_timeout
        self._live = live
        self._is_stale = is_stale
        self._on_reply = on_reply
        self._record = record
        self.log = log
        self._boxes = {p: Mailbox(runtime.lock(), runtime.event()) for p in peers}
        self._workers: dict[str, Any] = {}
        #: Calls that failed, per peer.
        self.failures: dict[str, int] = {p: 0 for p in peers}
        #: The last failure of each peer that had one.
        self.last_error: dict[str, str] = {}
        #: Peers whose last call failed: the first failure is a warning, the rest debug.
        self.unreachable: set[str] = set()
        #: Per peer and message kind (``"Heartbeat"``...): the calls and their times
        #: (every kind there from the start: readers iterate while senders add).
        self.stats: dict[str, dict[str, CallStats]] = {
            p: {cls.__name__: CallStats() for cls in REQUEST_TYPES.values()} for p in peers
        }

    def start(self) -> None:
        name = f"goelect-{self.node_id}-send"
        for peer_id in self._peers:
            self._workers[peer_id] = self._rt.spawn_io(f"{name}-{peer_id}", self._run, peer_id)

    def put(self, peer_id: str, seq: int, msg: Request) -> None:
        box = self._boxes.get(peer_id)
        if box is not None:
            box.put(seq, msg)

    def wake_all(self) -> None:
        """Wake every sender (to see that the run is over)."""
        for box in self._boxes.values():
            box.event.set()

    def join(self, remaining: Callable[[], float]) -> None:
        """Wait for the senders; a sender blocked on a black-holed peer returns at
        its call's deadline, or is abandoned at ``remaining()``."""
        for worker in self._workers.values():
            if not self._rt.join(worker, remaining()):
                self._rt.abandon(worker)

    def _run(self, peer_id: str) -> None:
        box = self._boxes[peer_id]
        peer = self._peers[peer_id]
        # Optional in a Transport: set up the peer's connection state now, so that
        # the first call (a vote request, on the critical path) does not pay for it.
        prepare = getattr(self._transport, "prepare", None)
        if prepare is not None:
            try:
                prepare(peer)
            except Exception as exc:
                self.log.debug("goelect %s: preparing calls to %s: %r", self.node_id, peer_id, exc)
        while True:
            box.event.wait()
            box.event.clear()
            while True:
                if not self._live():
                    return
                msg = box.take()
                if msg is None:
                    break
                if self._is_stale(msg):
                    continue
                try:
                    self._send(peer, msg)
                except NotRunning:
                    return
                except Exception as exc:
                    self.log.exception("goelect %s: sending to %s failed", self.node_id, peer_id)
                    self._record("send", exc)

    def _send(self, peer: core.Peer, msg: Request) -> None:
        stats = self.stats[peer.id][type(msg).__name__]
        started = time.perf_counter()
        try:
            reply = self._transport.send(peer, msg, self._rpc_timeout)
        except TransportError as exc:
            stats.add(time.perf_counter() - started, True)
            self.failures[peer.id] = self.failures.get(peer.id, 0) + 1
            self.last_error[peer.id] = str(exc)
            if peer.id in self.unreachable:
                self.log.debug("goelect %s: %s", self.node_id, exc)
            else:
                self.unreachable.add(peer.id)
                self.log.warning("goelect %s: %s", self.node_id, exc)
            return
        stats.add(time.perf_counter() - started, False)
        if peer.id in self.unreachable:
            self.unreachable.discard(peer.id)
            self.log.info("goelect %s: peer %r answers again", self.node_id, peer.id)
        if self._live():
            self._on_reply(reply)
