"""The runner: drives the election core with real time, real peers and gevent.

This is the only module that touches gevent. An :class:`Elector` owns one
:class:`~flask_goelect.core.Node` and carries out what the core asks for:

* **Where it runs.** In a monkey-patched process (gunicorn ``-k gevent``, a
  ``gevent.pywsgi`` server) the election loop is a greenlet in the current
  (the server's) hub, and so is everything else. Otherwise (``flask run``,
  gunicorn sync or gthread workers) the loop is a greenlet in a dedicated
  native daemon thread with its own hub, and the blocking work (calls to peers,
  callbacks, leader tasks) runs in native threads, so that nothing the
  application does can stall the election and nothing the election does can
  block the application.
* **The loop** sleeps until ``node.next_deadline()`` (the next heartbeat or
  election timeout) or until it is woken (a step moved the deadline earlier, a
  leader task must start or stop, the elector stops). It never ticks for
  nothing: an idle follower wakes once per election timeout.
* **Sends** go through one mailbox and one sender per peer (a greenlet, or a
  native thread when not patched): a peer gets one call at a time over its
  keep-alive connection, a newer message of a kind replaces an unsent older one
  (a heartbeat that is still queued when the next round starts is worthless),
  and a black-holed peer holds up its own sender only, until the call's
  deadline (goelect freezes its whole leader loop here).
* **One lock** serializes access to the node; it is never held across I/O.
  What ``output.persist`` asks for is written to storage *before* the messages
  of that step are sent or its reply is returned (Raft §5.2: a vote must be on
  disk before anyone hears of it). Writes are versioned: whoever flushes writes
  the newest state, so a step never waits for an older write and a state never
  overwrites a newer one. If a write fails the elector stops without sending
  or answering anything more.
* **Readers never take the lock**: after every step a new :class:`Snapshot`
  (a small frozen object) replaces the old one, and :meth:`Elector.is_leader`
  is one attribute read and one clock call.
* **Callbacks** (``on_transition``, which the Flask glue turns into signals) run
  off the loop, in order, each bounded by ``callback_timeout``; an exception or
  an overrun is logged and kept in :attr:`Elector.errors` and never stalls the
  election.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import queue
import random
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import gevent  # type: ignore[import-untyped]
import gevent.event  # type: ignore[import-untyped]
import gevent.lock  # type: ignore[import-untyped]
import gevent.monkey  # type: ignore[import-untyped]
import gevent.pool  # type: ignore[import-untyped]
import gevent.queue  # type: ignore[import-untyped]
from gevent import pywsgi

from . import core
from .messages import Heartbeat, Reply, Request, TimeoutNow, VoteRequest
from .storage import Storage
from .transport import Transport, TransportError

__all__ = [
    "ElectorNotRunning",
    "Elector",
    "ErrorRecord",
    "LeaderContext",
    "NoDelayWSGIHandler",
    "Snapshot",
]

_log = logging.getLogger(__name__)

#: How the core's roles are shown to readers (a pre-candidate is a candidate).
_STATE_OF_ROLE: dict[core.Role, str] = {
    core.Role.FOLLOWER: "follower",
    core.Role.PRE_CANDIDATE: "candidate",
    core.Role.CANDIDATE: "candidate",
    core.Role.LEADER: "leader",
    core.Role.OBSERVER: "observer",
}

#: At most this many transitions wait for the callback; more are dropped and recorded.
MAX_PENDING_CALLBACKS = 1000
#: At most this many error records are kept in ``Elector.errors``.
MAX_ERROR_RECORDS = 100


class ElectorNotRunning(RuntimeError):
    """The elector is not running (not started yet, stopped, or stopped by a failure)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything readers need, replaced as a whole after every step (never mutated).

    ``state`` is ``"leader"``, ``"follower"``, ``"candidate"`` (pre-candidates
    included), ``"observer"`` or ``"stopped"``. ``lease_until`` is a value of
    the elector's clock (``time.monotonic`` by default), ``0.0`` when this node
    holds no lease. Plain values only, so that it can later be shared with the
    other worker processes of the node.
    """

    node_id: str
    state: str
    term: int
    leader_id: str | None
    leader_address: str
    leader_tags: Mapping[str, str]
    lease_until: float
    voters: tuple[str, ...]
    observers: tuple[str, ...]

    def is_leader(self, now: float | None = None) -> bool:
        """True if this node led and held a valid lease at ``now`` (default: now)."""
        if now is None:
            now = time.monotonic()
        return self.state == "leader" and now < self.lease_until

    @property
    def leader(self) -> core.LeaderInfo | None:
        """The known leader (this node when it leads), or None."""
        if self.leader_id is None:
            return None
        return core.LeaderInfo(self.leader_id, self.leader_address, self.leader_tags)


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """A failure kept in :attr:`Elector.errors`: wall-clock ``time``, ``kind``, ``repr``.

    Kinds: ``"callback"`` (a callback raised), ``"callback-timeout"`` (it
    overran ``callback_timeout`` and was abandoned), ``"callback-dropped"``,
    ``"leader-task"``, ``"storage"``, ``"send"`` (an unexpected error while
    sending, not a plain :class:`TransportError`), ``"crash"`` (a background
    greenlet or thread died).
    """

    time: float
    kind: str
    repr: str


class _Event(Protocol):
    def set(self) -> None: ...
    def clear(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass
class LeaderContext:
    """Handed to a :meth:`Elector.leader_task` function.

    ``term`` is the fencing token of this leadership: pass it to downstream
    systems so that they can refuse the writes of a deposed leader.
    ``cancelled`` is set when leadership is lost or the elector stops.
    """

    term: int
    cancelled: _Event
    _elector: Elector = field(repr=False)

    def is_leader(self) -> bool:
        """True while this node still leads *in this term* and holds a valid lease."""
        return self._elector.is_leader() and self._elector.snapshot.term == self.term

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for cancellation; True if cancelled.

        ``while not ctx.wait(interval): do_work()`` is a periodic leader job.
        """
        return self.cancelled.wait(timeout)


#: The access log of a ``gevent.pywsgi`` server started with ``log=None``.
_NOOP_ACCESS_LOG: Any = getattr(pywsgi, "_NoopLog", ())


class NoDelayWSGIHandler(pywsgi.WSGIHandler):  # type: ignore[misc]
    """A ``gevent.pywsgi`` handler that sets ``TCP_NODELAY`` on each connection.

    Without it a reply on a reused keep-alive connection waits for the client's
    delayed ACK: about 40 ms per heartbeat instead of well under a millisecond.
    Use it as ``WSGIServer(addr, app, handler_class=NoDelayWSGIHandler)``; with
    ``log=None`` it also skips formatting the access-log line that pywsgi would
    otherwise build for every request and throw away (a few percent of an idle
    node's CPU at 20 heartbeats a second).
    """

    def handle(self) -> None:
        # Not a TCP socket (a Unix socket): nothing to do.
        with contextlib.suppress(OSError, AttributeError):
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()

    def log_request(self) -> None:
        if not isinstance(self.server.log, _NOOP_ACCESS_LOG):
            super().log_request()


# -- where background work runs ------------------------------------------------------


class _Runtime:
    """Greenlets of the current hub (monkey-patched process) or native threads.

    Every primitive the runner uses to wait or to run something in the
    background comes from here, so that the two modes share all the logic.
    """

    def __init__(self, patched: bool, on_crash: Callable[[str, BaseException], None]) -> None:
        self.patched = patched
        self._on_crash = on_crash
        self.group: Any = gevent.pool.Group() if patched else None

    def lock(self) -> Any:
        return gevent.lock.Semaphore() if self.patched else threading.Lock()

    def event(self) -> _Event:
        event: _Event = gevent.event.Event() if self.patched else threading.Event()
        return event

    def queue(self) -> Any:
        return gevent.queue.Queue() if self.patched else queue.SimpleQueue()

    def spawn(self, name: str, func: Callable[..., object], *args: object) -> Any:
        """Start ``func(*args)``; a crash is logged and recorded, never silent."""
        if self.patched:
            greenlet = self.group.spawn(func, *args)
            greenlet.name = name
            greenlet.link_exception(self._greenlet_crashed)
            return greenlet
        thread = threading.Thread(
            target=self._thread_main, args=(name, func, args), name=name, daemon=True
        )
        thread.start()
        return thread

    def _greenlet_crashed(self, greenlet: Any) -> None:
        self._on_crash(str(greenlet.name), greenlet.exception)

    def _thread_main(
        self, name: str, func: Callable[..., object], args: tuple[object, ...]
    ) -> None:
        try:
            func(*args)
        except BaseException as exc:  # a native thread must not die silently
            self._on_crash(name, exc)

    def is_current(self, worker: Any) -> bool:
        if self.patched:
            return bool(worker is gevent.getcurrent())
        return bool(worker is threading.current_thread())

    def join(self, worker: Any, timeout: float) -> bool:
        """Wait up to ``timeout`` for ``worker`` to end; True if it has ended."""
        if worker is None:
            return True
        if self.is_current(worker):
            return False
        worker.join(max(0.0, timeout))
        return bool(worker.dead) if self.patched else not worker.is_alive()

    def abandon(self, worker: Any) -> None:
        """Give up on ``worker``: a greenlet is killed, a native thread cannot be."""
        if self.patched and worker is not None and not worker.dead and not self.is_current(worker):
            worker.kill(block=False)


class _Mailbox:
    """What is waiting to be sent to one peer: the newest message of each kind.

    Messages are numbered by the step that produced them; a newer message of a
    kind replaces an unsent older one, and the oldest waiting is sent first.
    """

    __slots__ = ("_lock", "_pending", "event")

    def __init__(self, lock: Any, event: _Event) -> None:
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


@dataclass
class _Stepped:
    """A step's output plus what the runner needs to carry it out."""

    out: core.Output
    seq: int
    version: int
    snapshot: Snapshot
    wake: bool


_STOP = object()
_ELECTORS: weakref.WeakSet[Elector] = weakref.WeakSet()

TaskFunc = Callable[[LeaderContext], object]
F = TypeVar("F", bound=TaskFunc)


class Elector:
    """Runs one node of the election: loop, sends, persistence, callbacks, tasks.

    :param config: this node and its peers, and the election timing.
    :param storage: where the term and vote are kept (loaded at :meth:`start`).
    :param transport: how peers are reached.
    :param on_transition: called as ``on_transition(transition, snapshot)`` for
        every change of role or leader, off the election loop, in order, each
        call bounded by ``callback_timeout`` seconds (see the module docs).
    :param rpc_timeout: ``(connect, read)`` deadline of every call to a peer.
        Default ``(T, T)`` with T the election timeout: a heartbeat reply later
        than T can no longer extend the lease nor count for check-quorum, and a
        connection that takes longer than T cannot deliver a useful reply.
    :param clock: the monotonic clock (seconds) the lease and timers use.
    :param rng: randomness for election timeouts (default: seeded from the OS).
    :param logger: where to log (default ``flask_goelect.runner``).

    An elector that was stopped cannot be started again (its storage and
    transport are closed): create a new one.
    """

    def __init__(
        self,
        config: core.Config,
        storage: Storage,
        transport: Transport,
        *,
        on_transition: Callable[[core.Transition, Snapshot], None] | None = None,
        callback_timeout: float = 5.0,
        rpc_timeout: tuple[float, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not callback_timeout > 0:
            raise ValueError(f"callback_timeout must be positive, not {callback_timeout!r}")
        elect_timeout = float(config.elect_timeout)
        if rpc_timeout is None:
            rpc_timeout = (elect_timeout, elect_timeout)
        if len(rpc_timeout) != 2 or not all(t > 0 for t in rpc_timeout):
            raise ValueError(
                f"rpc_timeout must be a (connect, read) pair of positive seconds,"
                f" not {rpc_timeout!r}"
            )
        self.config = config
        self.node_id = config.node_id
        self.callback_timeout = float(callback_timeout)
        self.rpc_timeout: tuple[float, float] = (float(rpc_timeout[0]), float(rpc_timeout[1]))
        self.log = logger if logger is not None else _log
        #: Recent failures of callbacks, leader tasks, storage and background work.
        self.errors: collections.deque[ErrorRecord] = collections.deque(maxlen=MAX_ERROR_RECORDS)
        self._storage = storage
        self._transport = transport
        self._on_transition = on_transition
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._peers = {p.id: p for p in config.peers if p.id != self.node_id}
        self._voters = tuple(sorted(config.voters))
        self._observers = tuple(sorted(config.observers))
        self._tasks: list[TaskFunc] = []
        # Lifecycle; _life_lock guards the flags only and is never held while waiting.
        self._life_lock = threading.Lock()
        self._wake_lock = threading.Lock()
        # Events of callers waiting for a change of the snapshot (set on each new one).
        self._waiters_lock = threading.Lock()
        self._waiters: list[_Event] = []
        self._running = False
        self._stopping = False
        self._closed = False
        self._gen = 0
        self._pid: int | None = None
        self._snapshot = self._stopped_snapshot(0)
        self._reset_run_state()
        _ELECTORS.add(self)

    def _reset_run_state(self) -> None:
        self._rt: _Runtime | None = None
        self._node: core.Node | None = None
        self._lock: Any = threading.Lock()
        self._persist_lock: Any = threading.Lock()
        self._step_seq = 0
        self._state_version = 0
        self._saved_version = 0
        self._pending_state = core.HardState()
        self._failed: BaseException | None = None
        self._loop_deadline = math.inf
        self._loop_worker: Any = None
        self._wake_event: Any = None
        self._watcher: Any = None
        self._mailboxes: dict[str, _Mailbox] = {}
        self._senders: dict[str, Any] = {}
        self._send_failures: dict[str, int] = {p: 0 for p in self._peers}
        self._last_send_error: dict[str, str] = {}
        # Peers whose last call failed: the first failure is a warning, the rest debug.
        self._unreachable: set[str] = set()
        self._dispatch_queue: Any = None
        self._dispatcher: Any = None
        self._task_term: int | None = None
        self._task_workers: dict[int, tuple[LeaderContext, Any]] = {}

    def __repr__(self) -> str:
        snap = self._snapshot
        return f"<Elector {self.node_id!r} {snap.state} term={snap.term} mode={self.mode}>"

    # -- readers (no lock) ----------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` (or a fatal failure)."""
        return self._running

    @property
    def snapshot(self) -> Snapshot:
        """The current :class:`Snapshot` (an immutable object; read it once per use)."""
        return self._snapshot

    @property
    def mode(self) -> str | None:
        """``"hub"`` (greenlets in the current hub), ``"thread"`` (own thread), or None."""
        rt = self._rt
        if rt is None or not self._running:
            return None
        return "hub" if rt.patched else "thread"

    def is_leader(self) -> bool:
        """True only while this node leads and holds a valid lease. Cheap: no lock."""
        snap = self._snapshot
        return snap.state == "leader" and self._clock() < snap.lease_until

    def wait_for_leader(self, timeout: float) -> core.LeaderInfo | None:
        """Wait up to ``timeout`` seconds until a leader is known; return it, or None.

        When the leader is this node, waits until it holds its lease too, so that
        :meth:`is_leader` is true when this returns it.
        """

        def known(snap: Snapshot) -> bool:
            return snap.leader_id is not None and (
                snap.leader_id != self.node_id or snap.is_leader(self._clock())
            )

        if self._wait_for(known, time.monotonic() + timeout):
            return self._snapshot.leader
        return None

    def _wait_for(self, predicate: Callable[[Snapshot], bool], deadline: float) -> bool:
        """Wait until ``predicate(snapshot)`` holds (True), or the deadline or a stop.

        Woken by every new snapshot, not by polling: a waiter costs nothing
        while nothing changes, and sees a change at once.
        """
        rt = self._rt
        if predicate(self._snapshot):
            return True
        if rt is None or not self._running:
            return False
        event = rt.event()
        with self._waiters_lock:
            self._waiters.append(event)
        try:
            while True:
                if predicate(self._snapshot):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._running:
                    return False
                event.wait(remaining)
                event.clear()
        finally:
            with self._waiters_lock:
                self._waiters.remove(event)

    def _wake_waiters(self) -> None:
        for event in list(self._waiters):
            event.set()

    def status(self) -> dict[str, Any]:
        """This node's view, JSON-ready (the ``GET /status`` route shows it)."""
        snap = self._snapshot
        now = self._clock()
        node = self._node
        last_contact: dict[str, float] = {}
        if node is not None:
            with self._lock:
                last_contact = dict(node.last_contact)
        return {
            "node_id": self.node_id,
            "state": snap.state,
            "term": snap.term,
            "leader_id": snap.leader_id,
            "leader_address": snap.leader_address or None,
            "leader_tags": dict(snap.leader_tags),
            "is_leader": snap.is_leader(now),
            "lease_remaining": round(max(0.0, snap.lease_until - now), 6),
            "voters": list(snap.voters),
            "observers": list(snap.observers),
            "last_contact": {
                p: (round(now - last_contact[p], 6) if p in last_contact else None)
                for p in sorted(self._peers)
            },
            "send_failures": dict(sorted(self._send_failures.items())),
            "last_send_error": dict(sorted(self._last_send_error.items())),
            "errors": len(self.errors),
            "running": self._running,
            "mode": self.mode,
        }

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Load the state, create the node and start the loop. Idempotent while running.

        :raises RuntimeError: the elector was stopped (create a new one).
        :raises storage.StorageError: the state cannot be loaded.
        """
        with self._life_lock:
            if self._running or self._stopping:
                return
            if self._closed:
                raise RuntimeError(
                    f"elector {self.node_id!r} was stopped and its storage and transport"
                    " closed; create a new Elector to start again"
                )
            patched = bool(gevent.monkey.is_module_patched("socket"))
            state = self._storage.load()
            self._reset_run_state()
            rt = _Runtime(patched, self._crashed)
            node = core.Node(self.config, state, now=self._clock(), rng=self._rng)
            self._gen += 1
            gen = self._gen
            self._rt = rt
            self._lock = rt.lock()
            self._persist_lock = rt.lock()
            self._node = node
            self._pending_state = state
            self._pid = os.getpid()
            self._mailboxes = {p: _Mailbox(rt.lock(), rt.event()) for p in self._peers}
            if self._on_transition is not None:
                self._dispatch_queue = rt.queue()
            self._snapshot = self._make_snapshot(node)
            self._running = True
            try:
                self._start_workers(rt, gen)
            except BaseException:
                self._running = False
                self._gen += 1
                self._snapshot = self._stopped_snapshot(node.term)
                raise
        mode = "the current hub" if patched else "its own thread"
        self.log.info(
            "goelect %s: started in %s (term %d, voted for %s)",
            self.node_id,
            mode,
            state.term,
            state.voted_for,
        )

    def _start_workers(self, rt: _Runtime, gen: int) -> None:
        name = f"goelect-{self.node_id}"
        if self._dispatch_queue is not None:
            self._dispatcher = rt.spawn(f"{name}-callbacks", self._dispatch_loop, gen)
        for peer_id in self._peers:
            self._senders[peer_id] = rt.spawn(
                f"{name}-send-{peer_id}", self._send_loop, gen, peer_id
            )
        if rt.patched:
            # The server's hub: the loop is a greenlet next to the request handlers.
            event = gevent.event.Event()
            watcher = gevent.get_hub().loop.async_()
            watcher.start(event.set)
            with self._wake_lock:
                self._wake_event, self._watcher = event, watcher
            self._loop_worker = rt.spawn(f"{name}-loop", self._run_loop, gen)
            return
        ready = threading.Event()
        thread = threading.Thread(
            target=self._loop_thread_main, args=(gen, ready), name=f"{name}-loop", daemon=True
        )
        self._loop_worker = thread
        thread.start()
        if not ready.wait(10.0):  # pragma: no cover - a hub that cannot start
            raise RuntimeError(f"the election loop of {self.node_id!r} did not start")

    def _loop_thread_main(self, gen: int, ready: threading.Event) -> None:
        # A dedicated native thread with its own hub: only the loop greenlet runs
        # here, so nothing the application does can delay a heartbeat.
        hub = gevent.get_hub()
        watcher = None
        try:
            event = gevent.event.Event()
            watcher = hub.loop.async_()
            watcher.start(event.set)
            with self._wake_lock:
                if self._gen == gen:
                    self._wake_event, self._watcher = event, watcher
            ready.set()
            loop = gevent.spawn(self._run_loop, gen)
            loop.link_exception(lambda g: self._crashed("loop", g.exception))
            loop.join()
        except BaseException as exc:  # reported, never silent
            self._crashed("loop thread", exc)
        finally:
            with self._wake_lock:
                if self._watcher is watcher:
                    self._watcher = None
            if watcher is not None:
                watcher.close()
            hub.destroy(destroy_loop=True)

    def stop(self, transfer: bool = True, timeout: float = 5.0) -> None:
        """Stop the elector; first hand leadership over if it leads and ``transfer``.

        The hand-over waits (at most one election timeout) until the new leader
        is heard from. Then the loop, senders and callback worker are stopped
        (joined up to ``timeout`` seconds in all; greenlets that overrun are
        killed), leader tasks are cancelled, and the transport and storage are
        closed. The state becomes ``"stopped"``. Calling it again does nothing.
        """
        deadline = time.monotonic() + timeout
        with self._life_lock:
            if self._closed or self._stopping:
                return
            self._stopping = True
        try:
            if transfer and self._running and self._snapshot.state == "leader":
                self._hand_over(min(deadline, time.monotonic() + self.config.elect_timeout))
            self._halt()
            self._join_workers(deadline)
        finally:
            for what, close in (
                ("transport", self._transport.close),
                ("storage", self._storage.close),
            ):
                try:
                    close()
                except Exception as exc:
                    self.log.warning(
                        "goelect %s: closing the %s failed: %r", self.node_id, what, exc
                    )
            with self._life_lock:
                self._closed = True
                self._stopping = False
            self.log.info("goelect %s: stopped", self.node_id)

    def _hand_over(self, deadline: float) -> None:
        try:
            target = self.transfer_leadership()
        except (core.NotLeaderError, core.TransferError, ElectorNotRunning) as exc:
            self.log.info("goelect %s: no hand-over on stop: %s", self.node_id, exc)
            return

        def new_leader(snap: Snapshot) -> bool:
            return snap.leader_id is not None and snap.leader_id != self.node_id

        if self._wait_for(new_leader, deadline):
            leader = self._snapshot.leader_id
            self.log.info("goelect %s: handed leadership over to %s", self.node_id, leader)
            return
        self.log.info(
            "goelect %s: stopping before %s was heard from as the new leader",
            self.node_id,
            target,
        )

    def _halt(self) -> None:
        """Stop everything from sending or answering; safe from any thread or greenlet."""
        with self._life_lock:
            if not self._running:
                return
            self._running = False
            self._snapshot = self._stopped_snapshot(self._snapshot.term)
        self._wake_waiters()
        self._wake_loop()
        for box in self._mailboxes.values():
            box.event.set()
        if self._dispatch_queue is not None:
            self._dispatch_queue.put(_STOP)
        self._cancel_tasks()

    def _join_workers(self, deadline: float) -> None:
        rt = self._rt
        if rt is None:
            return

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        if not rt.join(self._loop_worker, remaining()):
            rt.abandon(self._loop_worker)
        for sender in self._senders.values():
            # A sender blocked on a black-holed peer returns at its call's deadline.
            if not rt.join(sender, remaining()):
                rt.abandon(sender)
        if not rt.join(self._dispatcher, remaining()):
            rt.abandon(self._dispatcher)
        # Again, now that the loop is over: it may have started a task after _halt.
        self._cancel_tasks()
        if rt.patched:
            with self._wake_lock:
                watcher, self._watcher = self._watcher, None
            if watcher is not None:
                watcher.close()

    def reset_after_fork(self) -> None:
        """Restart this elector in a forked child process.

        Threads and hubs do not survive ``fork()``: the child forgets the parent's
        loop (this happens by itself right after the fork) and this call starts a
        new one, with a node loaded afresh from the storage. Does nothing more than
        :meth:`start` in the process that started the elector.
        """
        if self._pid is not None and self._pid != os.getpid():
            self._forget_after_fork()
        self.start()

    def _forget_after_fork(self) -> None:
        # Runs in the child right after fork(): the parent's threads are gone, and
        # greenlets that did survive (a patched process) see a new generation and
        # end without doing anything. Locks are replaced: one may have been held.
        self._gen += 1
        self._life_lock = threading.Lock()
        self._wake_lock = threading.Lock()
        self._waiters_lock = threading.Lock()
        self._waiters = []
        self._running = False
        self._stopping = False
        self._pid = None
        self._snapshot = self._stopped_snapshot(self._snapshot.term)
        self._reset_run_state()

    # -- inbound -----------------------------------------------------------------------

    def handle(self, msg: Request) -> Reply:
        """Answer a request from a peer (called by the RPC routes, from any thread).

        Steps the node, writes what must be persisted, queues the messages the
        step produced for the senders, and returns the reply. Does no network I/O.

        :raises ElectorNotRunning: the elector is not running.
        """
        if not self._running:
            raise ElectorNotRunning(f"elector {self.node_id!r} is not running")
        stepped = self._step(lambda node, now: node.step(msg, now))
        self._finish(stepped)
        reply = stepped.out.reply
        if reply is None:
            raise TypeError(f"{type(msg).__name__} is not a request")
        return reply

    def transfer_leadership(self, to: str | None = None) -> str:
        """Hand leadership over to ``to`` (default: the most responsive voter).

        This node stops leading at once (its lease is dropped) and tells the
        target to campaign; returns the target's id.

        :raises core.NotLeaderError: this node is not the leader.
        :raises core.TransferError: ``to`` is not another voter, or there is none.
        :raises ElectorNotRunning: the elector is not running.
        """
        if to is None:
            to = self._transfer_target()
        stepped = self._step(lambda node, now: node.transfer_leadership(now, to))
        self._finish(stepped)
        for peer_id, msg in stepped.out.messages:
            if isinstance(msg, TimeoutNow):
                self.log.info("goelect %s: transferring leadership to %s", self.node_id, peer_id)
                return peer_id
        raise core.TransferError("the core started no transfer")  # pragma: no cover

    def _transfer_target(self) -> str | None:
        """The voter to hand over to: one that answers, the most recently heard first.

        A voter whose last call failed, or not heard from within an election
        timeout, would not campaign at once (a dead or partitioned node never
        does, and the hand-over would then cost an election timeout). None (no
        such voter) lets the core choose.
        """
        node = self._node
        if node is None:
            return None
        with self._lock:
            heard = dict(node.last_contact)
        since = self._clock() - self.config.elect_timeout
        answering = [
            v
            for v in self._voters
            if v != self.node_id and v not in self._unreachable and heard.get(v, -math.inf) > since
        ]
        return max(answering, key=lambda v: heard[v]) if answering else None

    def leader_task(self, func: F) -> F:
        """Run ``func(ctx)`` while this node leads; cancel it when leadership is lost.

        It starts each time this node becomes leader and holds its lease, with a
        :class:`LeaderContext` whose ``term`` is the fencing token. On loss of
        leadership (or on stop) ``ctx.cancelled`` is set; in a monkey-patched
        process the greenlet is also killed. A native thread cannot be killed:
        outside a patched process the function must watch ``ctx.cancelled`` (or
        call ``ctx.wait(interval)``) and check ``ctx.is_leader()`` before acting.
        A function that returns or raises is not restarted until the next
        leadership. Usable as a decorator; returns ``func``.
        """
        with self._life_lock:
            self._tasks.append(func)
        if self._running:
            self._wake_loop()
        return func

    # -- stepping the core ---------------------------------------------------------------

    def _step(self, fn: Callable[[core.Node, float], core.Output]) -> _Stepped:
        """Run ``fn(node, now)`` under the lock and publish the new snapshot."""
        with self._lock:
            node = self._node
            if not self._running or node is None:
                raise ElectorNotRunning(f"elector {self.node_id!r} is not running")
            now = self._clock()
            out = fn(node, now)
            return self._after_step(node, out, now, from_loop=False)

    def _after_step(
        self, node: core.Node, out: core.Output, now: float, *, from_loop: bool
    ) -> _Stepped:
        # Called with the lock held.
        self._step_seq += 1
        if out.persist is not None:
            self._state_version += 1
            self._pending_state = out.persist
        snap = self._make_snapshot(node, self._snapshot)
        if snap is not self._snapshot:
            self._snapshot = snap
            if self._waiters:
                self._wake_waiters()
        deadline = node.next_deadline()
        if from_loop:
            self._loop_deadline = deadline
            wake = False
        else:
            wake = deadline < self._loop_deadline
        if out.transitions:
            if self._dispatch_queue is not None:
                self._enqueue_callbacks(out.transitions, snap)
            if self._tasks:
                wake = wake or any(
                    core.Role.LEADER in (t.role, t.previous_role) for t in out.transitions
                )
        if self._tasks and not wake and snap.state == "leader" and self._task_term != snap.term:
            wake = now < snap.lease_until  # the first lease of this term: start the tasks
        return _Stepped(out, self._step_seq, self._state_version, snap, wake)

    def _finish(self, stepped: _Stepped) -> None:
        """Carry out a step: persist first, then queue its messages, then wake the loop."""
        self._flush(stepped.version)
        for t in stepped.out.transitions:
            change = f"{t.previous_role} -> {t.role}" if t.role is not t.previous_role else t.role
            self.log.info(
                "goelect %s: %s in term %d, leader %s: %s",
                self.node_id,
                change,
                t.term,
                t.leader_id,
                t.reason,
            )
        for peer_id, msg in stepped.out.messages:
            box = self._mailboxes.get(peer_id)
            if box is not None:
                box.put(stepped.seq, msg)
        if stepped.wake:
            self._wake_loop()

    def _flush(self, version: int) -> None:
        """Make sure the state of step ``version`` (or a newer one) is in storage."""
        if self._saved_version >= version:
            return
        with self._persist_lock:
            if self._failed is not None:
                raise ElectorNotRunning(
                    f"elector {self.node_id!r} stopped: saving its state failed"
                ) from self._failed
            if self._saved_version >= version:
                return
            with self._lock:
                state, latest = self._pending_state, self._state_version
            try:
                self._storage.save(state)
            except Exception as exc:
                self._failed = exc
                self._fail("storage", exc)
                raise
            self._saved_version = latest

    def _make_snapshot(self, node: core.Node, current: Snapshot | None = None) -> Snapshot:
        """The snapshot of ``node``: ``current`` itself if nothing readers see changed.

        Most steps (a heartbeat on a follower, the second ack of a round on the
        leader) change nothing readers see; keeping the object saves building a
        new one, and tells waiters there is nothing new.
        """
        leader = node.leader
        is_leader = node.role is core.Role.LEADER
        state = _STATE_OF_ROLE[node.role]
        lease_until = node.lease_until if is_leader else 0.0
        if (
            current is not None
            and current.state == state
            and current.term == node.term
            and current.lease_until == lease_until
            and (
                current.leader_id is None
                if leader is None
                else current.leader_id == leader.id
                and current.leader_address == leader.address
                and current.leader_tags == leader.tags
            )
        ):
            return current
        return Snapshot(
            node_id=self.node_id,
            state=state,
            term=node.term,
            leader_id=leader.id if leader is not None else None,
            leader_address=leader.address if leader is not None else "",
            leader_tags=dict(leader.tags) if leader is not None else {},
            lease_until=lease_until,
            voters=self._voters,
            observers=self._observers,
        )

    def _stopped_snapshot(self, term: int) -> Snapshot:
        return Snapshot(
            self.node_id, "stopped", term, None, "", {}, 0.0, self._voters, self._observers
        )

    # -- the loop --------------------------------------------------------------------------

    def _run_loop(self, gen: int) -> None:
        event = self._wake_event
        while self._gen == gen and self._running:
            event.clear()
            with self._lock:
                node = self._node
                if not self._running or node is None:
                    return
                now = self._clock()
                stepped = None
                if now >= node.next_deadline():
                    stepped = self._after_step(node, node.tick(now), now, from_loop=True)
                else:
                    self._loop_deadline = node.next_deadline()
            if stepped is not None:
                try:
                    self._finish(stepped)
                except Exception:
                    return  # a storage failure: _flush has stopped the elector
            if self._tasks or self._task_workers:
                self._reconcile_tasks()
            delay = self._loop_deadline - self._clock()
            if delay > 0:
                event.wait(None if math.isinf(delay) else delay)

    def _wake_loop(self) -> None:
        # Thread-safe: an async watcher wakes the loop's hub from any thread.
        with self._wake_lock:
            if self._watcher is not None:
                self._watcher.send()

    # -- sending -------------------------------------------------------------------------------

    def _send_loop(self, gen: int, peer_id: str) -> None:
        box = self._mailboxes[peer_id]
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
                if self._gen != gen or not self._running:
                    return
                msg = box.take()
                if msg is None:
                    break
                if self._is_stale(msg):
                    continue
                try:
                    self._send_one(peer, msg)
                except ElectorNotRunning:
                    return
                except Exception as exc:
                    self.log.exception("goelect %s: sending to %s failed", self.node_id, peer_id)
                    self._record("send", exc)

    def _send_one(self, peer: core.Peer, msg: Request) -> None:
        try:
            reply = self._transport.send(peer, msg, self.rpc_timeout)
        except TransportError as exc:
            self._send_failures[peer.id] = self._send_failures.get(peer.id, 0) + 1
            self._last_send_error[peer.id] = str(exc)
            if peer.id in self._unreachable:
                self.log.debug("goelect %s: %s", self.node_id, exc)
            else:
                self._unreachable.add(peer.id)
                self.log.warning("goelect %s: %s", self.node_id, exc)
            return
        if peer.id in self._unreachable:
            self._unreachable.discard(peer.id)
            self.log.info("goelect %s: peer %r answers again", self.node_id, peer.id)
        if not self._running:
            return
        stepped = self._step(lambda node, now: node.step(reply, now))
        self._finish(stepped)

    def _is_stale(self, msg: Request) -> bool:
        # A heartbeat of a leadership that is over, or a vote request of a campaign
        # that is over, would only mislead the peer (a late heartbeat renews its
        # promise not to vote): drop it. The snapshot is at least as new as the
        # step that queued the message.
        snap = self._snapshot
        if isinstance(msg, Heartbeat):
            return snap.state != "leader" or snap.term != msg.term
        if isinstance(msg, VoteRequest):
            return snap.state != "candidate" or msg.term < snap.term
        return False

    # -- callbacks ---------------------------------------------------------------------------

    def _enqueue_callbacks(self, transitions: list[core.Transition], snap: Snapshot) -> None:
        q = self._dispatch_queue
        for t in transitions:
            if q.qsize() >= MAX_PENDING_CALLBACKS:
                self._record("callback-dropped", f"on_transition({t!r}) dropped: queue full")
                continue
            q.put((t, snap))

    def _dispatch_loop(self, gen: int) -> None:
        q = self._dispatch_queue
        callback = self._on_transition
        rt = self._rt
        assert rt is not None and callback is not None
        while True:
            item = q.get()
            if item is _STOP or self._gen != gen:
                return
            transition, snap = item
            worker = rt.spawn(
                f"goelect-{self.node_id}-callback",
                self._call_callback,
                callback,
                transition,
                snap,
            )
            if not rt.join(worker, self.callback_timeout):
                rt.abandon(worker)
                self.log.warning(
                    "goelect %s: on_transition callback still running after %gs; abandoned",
                    self.node_id,
                    self.callback_timeout,
                )
                self._record(
                    "callback-timeout",
                    f"{callback!r} for {transition!r} overran {self.callback_timeout:g}s",
                )

    def _call_callback(
        self,
        callback: Callable[[core.Transition, Snapshot], None],
        transition: core.Transition,
        snap: Snapshot,
    ) -> None:
        try:
            callback(transition, snap)
        except Exception as exc:
            self.log.exception("goelect %s: on_transition callback failed", self.node_id)
            self._record("callback", exc)

    # -- leader tasks ------------------------------------------------------------------------

    def _reconcile_tasks(self) -> None:
        # Runs in the loop only: start the tasks on a new leadership, cancel on loss.
        rt = self._rt
        if rt is None:
            return
        snap = self._snapshot
        if self._task_term is not None and (snap.state != "leader" or snap.term != self._task_term):
            self._cancel_tasks()
        if self._running and snap.is_leader(self._clock()):
            if self._task_term != snap.term:
                self._task_term = snap.term
                self._task_workers = {}
            for index, func in enumerate(list(self._tasks)):
                if index in self._task_workers:
                    continue
                ctx = LeaderContext(snap.term, rt.event(), self)
                name = f"goelect-{self.node_id}-leader-task-{index}"
                worker = rt.spawn(name, self._run_task, func, ctx)
                self._task_workers[index] = (ctx, worker)
                self.log.info(
                    "goelect %s: started leader task %r for term %d",
                    self.node_id,
                    func,
                    snap.term,
                )

    def _cancel_tasks(self) -> None:
        workers, self._task_workers = self._task_workers, {}
        self._task_term = None
        rt = self._rt
        for ctx, worker in workers.values():
            ctx.cancelled.set()
            if rt is not None:
                rt.abandon(worker)

    def _run_task(self, func: TaskFunc, ctx: LeaderContext) -> None:
        try:
            func(ctx)
        except Exception as exc:
            self.log.exception("goelect %s: leader task %r failed", self.node_id, func)
            self._record("leader-task", exc)

    # -- failures ------------------------------------------------------------------------------

    def _record(self, kind: str, what: BaseException | str) -> None:
        text = what if isinstance(what, str) else repr(what)
        self.errors.append(ErrorRecord(time.time(), kind, text))

    def _crashed(self, name: str, exc: BaseException | None) -> None:
        if exc is None or isinstance(exc, gevent.GreenletExit):
            return
        self.log.error(
            "goelect %s: %s died", self.node_id, name, exc_info=(type(exc), exc, exc.__traceback__)
        )
        self._record("crash", exc)
        if name == "loop" or name.endswith("-loop"):
            self._fail("loop", exc)

    def _fail(self, kind: str, exc: BaseException) -> None:
        """A fatal failure: stop sending and answering now, and stop in the background."""
        self.log.error(
            "goelect %s: %s failed, stopping the elector: %r",
            self.node_id,
            kind,
            exc,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        self._record(kind, exc)
        running = self._running
        self._halt()
        rt = self._rt
        if running and rt is not None:
            rt.spawn(f"goelect-{self.node_id}-stop", self.stop, False)


def _after_fork_in_child() -> None:
    for elector in list(_ELECTORS):
        elector._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
