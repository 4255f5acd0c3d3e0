"""The elector: one node's election driven with real time, real peers and gevent.

An :class:`Elector` owns one :class:`~flask_goelect.core.Node` and carries out
what the core asks for. Its parts live beside it: where work runs
(:mod:`.runtime`), the per-peer senders (:mod:`.senders`), the callbacks
(:mod:`.callbacks`) and the leader tasks (:mod:`.tasks`). Here:

* **The loop** sleeps until ``node.next_deadline()`` (the next heartbeat or
  election timeout) or until it is woken (a step moved the deadline earlier, a
  leader task must start or stop, the elector stops). It never ticks for
  nothing: an idle follower wakes once per election timeout.
* **One lock** serializes access to the node; it is never held across I/O.
  What ``output.persist`` asks for is written to storage *before* the messages
  of that step are sent or its reply is returned (Raft §5.2: a vote must be on
  disk before anyone hears of it). Writes are versioned: whoever flushes writes
  the newest state, so a step never waits for an older write and a state never
  overwrites a newer one. If a write fails the elector stops without sending
  or answering anything more.
* **Readers never take the lock**: after every step a new
  :class:`~flask_goelect.state.Snapshot` replaces the old one, and
  :meth:`Elector.is_leader` is one attribute read and one clock call.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import random
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gevent  # type: ignore[import-untyped]

from .. import _hooks, core
from .. import clock as _clock
from ..messages import Heartbeat, Reply, Request, TimeoutNow, VoteRequest
from ..state import (
    ErrorRecord,
    Gate,
    NotRunning,
    Snapshot,
    State,
    new_error_log,
    status_of,
)
from ..storage import Storage
from ..transport import Transport
from .callbacks import CallbackDispatcher, OnTransition
from .publish import Publisher
from .runtime import LOOP_THREAD_GRACE, HubLock, LoopWaker, Runtime, is_patched
from .senders import PeerSenders
from .tasks import LeaderTasks, TaskFunc

__all__ = ["Elector", "forget_electors_after_fork"]

_log = logging.getLogger("flask_goelect.runner")

_ELECTORS: weakref.WeakSet[Elector] = weakref.WeakSet()

F = TypeVar("F", bound=TaskFunc)


@dataclass
class _Stepped:
    """A step's output plus what the runner needs to carry it out."""

    out: core.Output
    seq: int
    version: int
    snapshot: Snapshot
    wake: bool


class _Run:
    """What one run of an elector (from start to stop) owns.

    A new run gets new locks, senders and workers: nothing of an earlier run
    (or of the parent process, after a fork) is reused.
    """

    def __init__(self, gen: int, runtime: Runtime, node: core.Node, state: core.HardState) -> None:
        self.gen = gen
        self.rt = runtime
        self.node = node
        self.lock: Any = runtime.lock()
        self.persist_lock: Any = runtime.lock()
        self.step_seq = 0
        self.state_version = 0
        self.saved_version = 0
        self.pending_state = state
        self.failed: BaseException | None = None
        #: A leader snapshot waits for its state to reach the disk (see _after_step).
        self.publish_pending = False
        #: Transitions held until the state of their step is on disk (version, transitions,
        #: snapshot), in order: receivers never hear of a term or a vote that a crash
        #: could still undo, and find ``is_leader`` true when told of a leadership.
        self.held_callbacks: collections.deque[
            tuple[int, tuple[core.Transition, ...], Snapshot]
        ] = collections.deque()
        self.loop_deadline = math.inf
        self.waker = LoopWaker()
        self.loop_worker: Any = None
        self.senders: PeerSenders | None = None
        self.callbacks: CallbackDispatcher | None = None


class Elector:
    """Runs one node of the election: loop, sends, persistence, callbacks, tasks.

    :param config: this node and its peers, and the election timing.
    :param storage: where the term and vote are kept (loaded at :meth:`start`).
    :param transport: how peers are reached.
    :param on_transition: called as ``on_transition(transition, snapshot)`` for
        every change of role or leader, off the election loop, in order, each
        call bounded by ``callback_timeout`` seconds.
    :param rpc_timeout: ``(connect, read)`` deadline of every call to a peer.
        Default ``(T, T)`` with T the election timeout: a heartbeat reply later
        than T can no longer extend the lease nor count for check-quorum, and a
        connection that takes longer than T cannot deliver a useful reply.
    :param gate: the leader-only calls of this process
        (:class:`~flask_goelect.state.InFlight`): before this node hands its
        leadership over on purpose (:meth:`transfer_leadership`, a stop with a
        hand-over), no new one starts, and those running may end (for up to an
        election timeout).
    :param clock: the monotonic clock (seconds) the lease and timers use.
    :param rng: randomness for election timeouts (default: seeded from the OS).
    :param logger: where to log (default ``flask_goelect.runner``).

    An elector that was stopped cannot be started again (its storage and
    transport are closed): create a new one.
    """

    #: Jobs run where the elector runs (see :class:`~flask_goelect.state.ElectorLike`).
    runs_jobs = True

    def __init__(
        self,
        config: core.Config,
        storage: Storage,
        transport: Transport,
        *,
        on_transition: OnTransition | None = None,
        callback_timeout: float = 5.0,
        rpc_timeout: tuple[float, float] | None = None,
        gate: Gate | None = None,
        clock: Callable[[], float] = _clock.now,
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
        self.errors = new_error_log()
        #: Every failure recorded since this elector was made (``errors`` keeps the last).
        self.errors_total = 0
        #: Changes of role since this elector was made, by ``"<from> -> <to>"``
        #: (``"pre-candidate -> candidate"`` is an election started, ``"candidate ->
        #: leader"`` one won), for the status and the metrics.
        self.transitions: collections.Counter[str] = collections.Counter()
        self._storage = storage
        self._transport = transport
        self._on_transition = on_transition
        self._gate = gate
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._peers = {p.id: p for p in config.peers if p.id != self.node_id}
        self._voters = tuple(sorted(config.voters))
        self._observers = tuple(sorted(config.observers))
        self._tasks = LeaderTasks(self.node_id, self.log)
        # Lifecycle; _life_lock guards the flags (and a start). A HubLock: the loop's
        # thread takes it too (a fatal failure halts the elector from there).
        self._life_lock = HubLock()
        self._running = False
        self._stopping = False
        self._closed = False
        self._gen = 0
        self._pid: int | None = None
        self._run: _Run | None = None
        self._pub = Publisher(self.node_id, self._voters, self._observers)
        self._last_running: Snapshot = self._pub.current
        _ELECTORS.add(self)

    def __repr__(self) -> str:
        snap = self._pub.current
        return f"<Elector {self.node_id!r} {snap.state} term={snap.term} mode={self.mode}>"

    # -- readers (no lock) ----------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` (or a fatal failure)."""
        return self._running

    @property
    def snapshot(self) -> Snapshot:
        """The current :class:`~flask_goelect.state.Snapshot` (read it once per use)."""
        return self._pub.current

    @property
    def mode(self) -> str | None:
        """Where the election runs, or None when stopped. ``"thread"``: the loop
        in a native thread of its own, calls to peers, callbacks and leader tasks
        in native threads (a process that is not monkey-patched).
        ``"thread+hub"``: the loop and the calls to peers in a native thread with
        a hub of its own, callbacks and leader tasks in the server's hub (a
        gevent-patched process). See :mod:`flask_goelect.runner.runtime`."""
        run = self._run
        if run is None or not self._running:
            return None
        return run.rt.where

    def add_listener(self, listener: Callable[[Snapshot], None]) -> None:
        """Call ``listener(snapshot)`` with every new snapshot, where it is made
        (under the elector's lock: it must be quick and must not call back)."""
        self._pub.listeners.append(listener)

    def remove_listeners(self) -> None:
        """Stop calling every listener."""
        self._pub.listeners.clear()

    def is_leader(self) -> bool:
        """True only while this node leads and holds a valid lease. Cheap: no lock."""
        now = self._clock()  # before the snapshot: a lease dropped meanwhile is seen
        return self._pub.current.is_leader(now)

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
            return self._pub.current.leader
        return None

    def _wait_for(self, predicate: Callable[[Snapshot], bool], deadline: float) -> bool:
        """Wait until ``predicate(snapshot)`` holds (True), or the deadline or a stop."""
        run = self._run
        if run is None:
            return predicate(self._pub.current)
        return self._pub.wait_for(predicate, deadline, run.rt.event, lambda: self._running)

    def status(self) -> dict[str, Any]:
        """This node's view, JSON-ready (the ``GET /status`` route shows it)."""
        snap = self._pub.current
        now = self._clock()
        run = self._run
        last_contact: dict[str, float] = {}
        if run is not None:
            with run.lock:
                last_contact = dict(run.node.last_contact)
        senders = run.senders if run is not None else None
        failures = senders.failures if senders is not None else {p: 0 for p in self._peers}
        last_error = senders.last_error if senders is not None else {}
        status = status_of(snap, now)
        status.update(
            last_contact={
                p: (round(now - last_contact[p], 6) if p in last_contact else None)
                for p in sorted(self._peers)
            },
            send_failures=dict(sorted(failures.items())),
            last_send_error=dict(sorted(last_error.items())),
            calls={
                peer: {kind: c.to_json() for kind, c in sorted(kinds.items())}
                for peer, kinds in sorted(senders.stats.items())
            }
            if senders is not None
            else {},
            errors=len(self.errors),
            errors_total=self.errors_total,
            transitions=dict(sorted(self.transitions.items())),
            voter_set=self.config.voter_set_fingerprint,
            running=self._running,
            mode=self.mode,
        )
        return status

    @property
    def promise_until(self) -> float | None:
        """The end of the promise of this elector's node (:attr:`core.Node.promise_until`,
        on :func:`flask_goelect.clock.now`); None before the first start. Read after
        :meth:`stop`, it is final: a stopped elector promises nothing more."""
        return self._read_node(lambda node: node.promise_until)

    @property
    def started_until(self) -> float | None:
        """The end of the guard of this elector's start (:attr:`core.Node.started_until`);
        None before the first start."""
        return self._read_node(lambda node: node.started_until)

    def _read_node(self, read: Callable[[core.Node], float]) -> float | None:
        run = self._run
        if run is None:
            return None
        with run.lock:
            return read(run.node)

    @property
    def last_snapshot(self) -> Snapshot:
        """The last snapshot published while it ran: after :meth:`stop`, the node's
        state at the moment it stopped stepping (the current one says stopped)."""
        return self._last_running

    # -- lifecycle --------------------------------------------------------------------

    def start(self, resume: core.Resume | None = None) -> None:
        """Load the state, create the node and start the loop. Idempotent while running.

        ``resume``: where a previous process of this node left off (its last
        published snapshot); the core takes what it can trust of it
        (:class:`~flask_goelect.core.Resume`). A node that starts as the leader
        it was, or knowing its leader, reports that as a change to the callbacks
        (its signals run in this process from now on).

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
            patched = is_patched()
            state = self._storage.load()
            rt = Runtime(patched, self._crashed)
            now = self._clock()
            node = core.Node(self.config, state, now=now, rng=self._rng, resume=resume)
            self._gen += 1
            run = self._run = _Run(self._gen, rt, node, state)
            self._tasks.cancel(None)
            self._pid = os.getpid()
            run.senders = PeerSenders(
                self.node_id,
                self._peers,
                self._transport,
                rt,
                self.rpc_timeout,
                live=lambda: self._gen == run.gen and self._running,
                is_stale=self._is_stale,
                on_reply=self._on_reply,
                record=self._record,
                log=self.log,
            )
            if self._on_transition is not None:
                run.callbacks = CallbackDispatcher(
                    self.node_id,
                    self._on_transition,
                    self.callback_timeout,
                    rt,
                    record=self._record,
                    log=self.log,
                )
            self._pub.publish(self._pub.of(node))
            self._running = True
            try:
                if run.callbacks is not None:
                    # Queued now, told once the dispatcher starts (after the loop):
                    # a start that fails tells nothing and leaves no dispatcher.
                    if node.leader_id is not None:
                        # Resumed: to this process's callbacks, that is a change.
                        voter = self.node_id in self.config.voters
                        start_role = core.Role.FOLLOWER if voter else core.Role.OBSERVER
                        run.callbacks.enqueue(
                            [
                                core.Transition(
                                    start_role,
                                    node.role,
                                    None,
                                    node.leader_id,
                                    node.term,
                                    now,
                                    node.start_reason,
                                )
                            ],
                            self._pub.current,
                        )
                run.loop_worker = rt.start_loop(
                    f"goelect-{self.node_id}-loop",
                    lambda event: self._loop(run, event),
                    run.waker,
                    on_exit=self._drop_connections,
                )
                # After the loop: patched, the senders are greenlets of its hub.
                run.senders.start()
                if run.callbacks is not None:
                    run.callbacks.start()
            except BaseException:
                self._running = False
                self._gen += 1
                self._pub.publish(self._pub.stopped(node.term))
                raise
        mode = (
            "its own thread (callbacks and leader tasks in the server's hub)"
            if patched
            else "its own thread"
        )
        self.log.info(
            "goelect %s: started in %s (term %d, voted for %s): %s",
            self.node_id,
            mode,
            state.term,
            state.voted_for,
            node.start_reason,
        )

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
            if transfer and self._running and self._pub.current.state is State.LEADER:
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
        except (core.NotLeaderError, core.TransferError, NotRunning) as exc:
            self.log.info("goelect %s: no hand-over on stop: %s", self.node_id, exc)
            return

        def new_leader(snap: Snapshot) -> bool:
            return snap.leader_id is not None and snap.leader_id != self.node_id

        if self._wait_for(new_leader, deadline):
            leader = self._pub.current.leader_id
            self.log.info("goelect %s: handed leadership over to %s", self.node_id, leader)
            return
        self.log.info(
            "goelect %s: stopping before %s was heard from as the new leader",
            self.node_id,
            target,
        )

    def _halt(self) -> None:
        """Stop everything from sending or answering; safe from any thread or greenlet."""
        run = self._run
        with self._life_lock:
            if not self._running:
                return
            # Under the run's lock too: no step can publish a snapshot after this one.
            with run.lock if run is not None else contextlib.nullcontext():
                self._running = False
                self._last_running = self._pub.current
                self._pub.publish(self._pub.stopped(self._pub.current.term))
        self._pub.wake()
        if run is not None:
            run.waker.send()
            if run.senders is not None:
                run.senders.wake_all()
            if run.callbacks is not None:
                run.callbacks.stop()
        self._tasks.cancel(run.rt if run is not None else None)

    def _join_workers(self, deadline: float) -> None:
        run = self._run
        if run is None:
            return
        rt = run.rt

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        if not rt.join(run.loop_worker, remaining()):
            rt.abandon(run.loop_worker)
        if run.senders is not None:
            run.senders.join(remaining)
        if run.callbacks is not None:
            run.callbacks.join(remaining())
        # Again, now that the loop is over: it may have started a task after _halt.
        self._tasks.cancel(rt)
        # A task in a native thread ends at its next ctx.wait(): wait for it, so
        # that no leader work of this elector runs on once it has stopped.
        if not self._tasks.join(rt, remaining):
            self.log.warning(
                "goelect %s: a leader task was still running when the elector stopped",
                self.node_id,
            )
        # Patched: the loop's thread ends once its senders have (they were killed
        # at the deadline at the latest), after closing their connections.
        if not rt.join_loop_thread(remaining() + LOOP_THREAD_GRACE):
            self.log.warning(
                "goelect %s: the election's thread was still running when the elector stopped",
                self.node_id,
            )

    def _drop_connections(self) -> None:
        # In the loop's thread, at its end: the connections of the calls to peers
        # belong to its hub, which is about to be destroyed.
        drop = getattr(self._transport, "drop_connections", None)
        if drop is not None:
            drop()

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
        run = self._run
        if run is not None and run.callbacks is not None:
            run.callbacks.forget_after_fork()
        self._gen += 1
        self._life_lock = HubLock()
        self._running = False
        self._stopping = False
        self._pid = None
        self._run = None
        self._tasks.forget()
        self._pub.forget_after_fork()

    # -- inbound -----------------------------------------------------------------------

    def handle(self, msg: Request) -> Reply:
        """Answer a request from a peer (called by the RPC routes, from any thread).

        Steps the node, writes what must be persisted, queues the messages the
        step produced for the senders, and returns the reply. Does no network I/O.

        :raises NotRunning: the elector is not running.
        """
        if not self._running:
            raise NotRunning(f"elector {self.node_id!r} is not running")
        stepped = self._step(lambda node, now: node.step(msg, now))
        self._finish(stepped)
        reply = stepped.out.reply
        if reply is None:
            raise TypeError(f"{type(msg).__name__} is not a request")
        return reply

    def _on_reply(self, reply: Reply) -> None:
        self._finish(self._step(lambda node, now: node.step(reply, now)))

    def transfer_leadership(self, to: str | None = None) -> str:
        """Hand leadership over to ``to`` (default: the most responsive voter).

        This node stops leading at once (its lease is dropped) and tells the
        target to campaign; returns the target's id.

        :raises core.NotLeaderError: this node is not the leader.
        :raises core.TransferError: ``to`` is not another voter, or there is none.
        :raises NotRunning: the elector is not running.
        """
        gate = self._gate
        if gate is not None and self._pub.current.state is State.LEADER:
            # Leader-only work that passed its check must end before the next
            # leader can get a lease (bounded: an election timeout).
            if not gate.drain(float(self.config.elect_timeout)):
                self.log.warning(
                    "goelect %s: hands leadership over while %d leader-only calls still run",
                    self.node_id,
                    gate.count,
                )
        try:
            if to is None:
                to = self._transfer_target()
            stepped = self._step(lambda node, now: node.transfer_leadership(now, to))
            self._finish(stepped)
        finally:
            if gate is not None:
                gate.reopen()  # what starts now sees the lease gone
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
        run = self._run
        if run is None:
            return None
        with run.lock:
            heard = dict(run.node.last_contact)
        unreachable = run.senders.unreachable if run.senders is not None else set()
        since = self._clock() - self.config.elect_timeout
        answering = [
            v
            for v in self._voters
            if v != self.node_id and v not in unreachable and heard.get(v, -math.inf) > since
        ]
        return max(answering, key=lambda v: heard[v]) if answering else None

    def leader_task(self, func: F) -> F:
        """Run ``func(ctx)`` while this node leads; cancel it when leadership is lost.

        It starts each time this node becomes leader and holds its lease, with a
        :class:`~flask_goelect.runner.LeaderContext` whose ``term`` is the fencing
        token. On loss of leadership (or on stop) ``ctx.cancelled`` is set; in a
        monkey-patched process the greenlet is also killed. A native thread
        cannot be killed: outside a patched process the function must watch
        ``ctx.cancelled`` (or call ``ctx.wait(interval)``) and check
        ``ctx.is_leader()`` before acting. A function that returns or raises is
        not restarted until the next leadership. Usable as a decorator; returns
        ``func``.
        """
        with self._life_lock:
            self._tasks.add(func)
        run = self._run
        if self._running and run is not None:
            run.waker.send()
        return func

    # -- stepping the core ---------------------------------------------------------------

    def _step(self, fn: Callable[[core.Node, float], core.Output]) -> _Stepped:
        """Run ``fn(node, now)`` under the lock and publish the new snapshot."""
        run = self._run
        if run is None:
            raise NotRunning(f"elector {self.node_id!r} is not running")
        with run.lock:
            if not self._running or run is not self._run or self._pid != os.getpid():
                # Stopped; or a copy in a child forked where no at-fork hook ran.
                raise NotRunning(f"elector {self.node_id!r} is not running")
            now = self._clock()
            out = fn(run.node, now)
            return self._after_step(run, out, now, from_loop=False)

    def _after_step(self, run: _Run, out: core.Output, now: float, *, from_loop: bool) -> _Stepped:
        # Called with the run's lock held.
        node = run.node
        run.step_seq += 1
        if out.persist is not None:
            run.state_version += 1
            run.pending_state = out.persist
        snap = self._pub.of(node)
        if snap.state is State.LEADER and run.saved_version < run.state_version:
            # A leadership whose term is not on disk yet (a one-voter cluster
            # becomes candidate and leader in one step) is published once it is:
            # a fencing token must never be handed out twice after a crash.
            run.publish_pending = True
        else:
            self._pub.publish(snap)
        deadline = node.next_deadline()
        if from_loop:
            run.loop_deadline = deadline
            wake = False
        else:
            wake = deadline < run.loop_deadline
        has_tasks = bool(self._tasks.funcs)
        if out.transitions:
            if run.callbacks is not None:
                if run.saved_version < run.state_version or run.held_callbacks:
                    run.held_callbacks.append((run.state_version, tuple(out.transitions), snap))
                else:
                    run.callbacks.enqueue(out.transitions, snap)
            if has_tasks:
                wake = wake or any(
                    core.Role.LEADER in (t.role, t.previous_role) for t in out.transitions
                )
        if has_tasks and not wake:
            wake = self._tasks.pending_start(snap, now)
        return _Stepped(out, run.step_seq, run.state_version, snap, wake)

    def _finish(self, stepped: _Stepped) -> None:
        """Carry out a step: persist first, then queue its messages, then wake the loop."""
        run = self._run
        if run is None:
            raise NotRunning(f"elector {self.node_id!r} is not running")
        self._flush(run, stepped.version)
        for t in stepped.out.transitions:
            change = f"{t.previous_role} -> {t.role}" if t.role is not t.previous_role else t.role
            if t.role is not t.previous_role:
                self.transitions[change] += 1
            self.log.info(
                "goelect %s: %s in term %d, leader %s: %s",
                self.node_id,
                change,
                t.term,
                t.leader_id,
                t.reason,
            )
        senders = run.senders
        if senders is not None:
            for peer_id, msg in stepped.out.messages:
                senders.put(peer_id, stepped.seq, msg)
        if stepped.wake:
            run.waker.send()

    def _flush(self, run: _Run, version: int) -> None:
        """Make sure the state of step ``version`` (or a newer one) is in storage."""
        if run.saved_version >= version:
            return
        with run.persist_lock:
            if run.failed is not None:
                raise NotRunning(
                    f"elector {self.node_id!r} stopped: saving its state failed"
                ) from run.failed
            if run.saved_version >= version:
                return
            with run.lock:
                state, latest = run.pending_state, run.state_version
            try:
                self._storage.save(state)
            except Exception as exc:
                run.failed = exc
                self._fail("storage", exc)
                raise
            run.saved_version = latest
            if run.publish_pending or run.held_callbacks:
                with run.lock:
                    self._after_save(run)

    def _after_save(self, run: _Run) -> None:
        """Publish and tell receivers what waited for the save (run's lock held)."""
        if not self._running or run is not self._run:
            return
        if run.publish_pending:
            snap = self._pub.of(run.node)
            if snap.state is not State.LEADER or run.saved_version >= run.state_version:
                run.publish_pending = False
                self._pub.publish(snap)
        held = run.held_callbacks
        while held and held[0][0] <= run.saved_version and run.callbacks is not None:
            _, transitions, snap = held.popleft()
            run.callbacks.enqueue(transitions, snap)

    # -- the loop --------------------------------------------------------------------------

    def _loop(self, run: _Run, event: Any) -> None:
        while self._gen == run.gen and self._running:
            event.clear()
            with run.lock:
                if not self._running or run is not self._run:
                    return
                node = run.node
                now = self._clock()
                stepped = None
                if now >= node.next_deadline():
                    stepped = self._after_step(run, node.tick(now), now, from_loop=True)
                else:
                    run.loop_deadline = node.next_deadline()
            if stepped is not None:
                try:
                    self._finish(stepped)
                except Exception:
                    return  # a storage failure: _flush has stopped the elector
            if self._tasks:
                self._tasks.reconcile(
                    self._pub.current,
                    self._clock(),
                    run.rt,
                    running=lambda: self._running,
                    source=lambda: self._pub.current,
                    clock=self._clock,
                    record=self._record,
                )
            deadline = run.loop_deadline
            now = self._clock()
            if self._tasks.running:
                # Leader tasks end when the lease does, not at the next heartbeat
                # (a lease already over is not a deadline: the loop must not spin).
                lease = self._pub.current.lease_until
                if now < lease < deadline:
                    deadline = lease
            delay = deadline - now
            if delay > 0:
                event.wait(None if math.isinf(delay) else delay)

    def _is_stale(self, msg: Request) -> bool:
        # A heartbeat of a leadership that is over, or a vote request of a campaign
        # that is over, would only mislead the peer (a late heartbeat renews its
        # promise not to vote): drop it. The snapshot is at least as new as the
        # step that queued the message.
        snap = self._pub.current
        if isinstance(msg, Heartbeat):
            return snap.state is not State.LEADER or snap.term != msg.term
        if isinstance(msg, VoteRequest):
            return snap.state is not State.CANDIDATE or msg.term < snap.term
        return False

    # -- failures ------------------------------------------------------------------------------

    def _record(self, kind: str, what: BaseException | str) -> None:
        text = what if isinstance(what, str) else repr(what)
        self.errors_total += 1
        self.errors.append(ErrorRecord(time.time(), kind, text))

    def _crashed(self, name: str, exc: BaseException | None) -> None:
        if exc is None or isinstance(exc, gevent.GreenletExit):
            return
        self.log.error(
            "goelect %s: %s died", self.node_id, name, exc_info=(type(exc), exc, exc.__traceback__)
        )
        self._record("crash", exc)
        if name.endswith("-loop") or name.endswith("-loop thread"):
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
        run = self._run
        if running and run is not None:
            run.rt.spawn(f"goelect-{self.node_id}-stop", self.stop, False)


def forget_electors_after_fork() -> None:
    """In a forked child: every elector forgets the parent's run (threads, hubs, locks)."""
    for elector in list(_ELECTORS):
        elector._forget_after_fork()


_hooks.in_child("electors", forget_electors_after_fork)
