"""Leader tasks: functions that run in the background while this node leads.

Each registered function starts when this node becomes leader and holds its
lease, with a :class:`LeaderContext` whose ``term`` is the fencing token, and is
cancelled when leadership is lost or the elector stops: ``ctx.cancelled`` is
set and, in a monkey-patched process, the greenlet is killed. A native thread
cannot be killed: outside a patched process the function must watch
``ctx.cancelled`` (or call ``ctx.wait(interval)``) and check ``ctx.is_leader()``
before acting. A function that returns or raises is not restarted until the
next leadership.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..state import Snapshot, State
from .runtime import Event, HubEvent, HubWorker, Runtime, native_lock

__all__ = ["LeaderContext", "LeaderTasks", "TaskFunc"]


@dataclass
class LeaderContext:
    """Handed to a leader task.

    ``term`` is the fencing token of this leadership: pass it to downstream
    systems so that they can refuse the writes of a deposed leader.
    ``cancelled`` is set when leadership is lost or the elector stops.

    In a process forked from the one the task started in (a patched process
    forks its greenlets with it), the task is cancelled: :meth:`wait` returns
    True and :meth:`is_leader` False there, whatever ran first in the child.
    """

    term: int
    cancelled: Event
    _snapshot: Callable[[], Snapshot] = field(repr=False)
    _clock: Callable[[], float] = field(repr=False)
    _pid: int = field(default_factory=os.getpid, repr=False)

    def is_leader(self) -> bool:
        """True while this node still leads *in this term* and holds a valid lease."""
        now = self._clock()  # before the snapshot: a lease dropped meanwhile is seen
        snap = self._snapshot()
        return snap.term == self.term and snap.is_leader(now) and os.getpid() == self._pid

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for cancellation; True if cancelled.

        ``while not ctx.wait(interval): do_work()`` is a periodic leader job.
        """
        cancelled = self.cancelled.wait(timeout)
        return bool(cancelled) or os.getpid() != self._pid


TaskFunc = Callable[[LeaderContext], object]


class LeaderTasks:
    """The registered functions, and their workers in the current leadership.

    Registered functions survive stop and start; :meth:`reconcile` (called by
    the election loop only) starts them on a new leadership and cancels them
    when it ends. :meth:`cancel` may come from any thread (a stop) while the loop
    reconciles: both hold a lock of their own, so that no task started by one is
    missed by the other.
    """

    def __init__(self, node_id: str, log: logging.Logger) -> None:
        self.node_id = node_id
        self.log = log
        self.funcs: list[TaskFunc] = []
        self._term: int | None = None
        self._workers: dict[int, tuple[LeaderContext, Any]] = {}
        # Workers cancelled and not yet seen to end (a native thread cannot be killed).
        self._ending: list[Any] = []
        # Held while the workers change (never while waiting for one to end).
        self._lock = native_lock()

    def __bool__(self) -> bool:
        """Whether there is anything to start or cancel."""
        return bool(self.funcs or self._workers)

    @property
    def running(self) -> bool:
        """Whether tasks of a leadership are running (to be cancelled at its end)."""
        return bool(self._workers)

    def add(self, func: TaskFunc) -> None:
        self.funcs.append(func)

    def pending_start(self, snap: Snapshot, now: float) -> bool:
        """Whether a task must start now: the first lease of a new leadership."""
        return (
            bool(self.funcs)
            and snap.state is State.LEADER
            and self._term != snap.term
            and now < snap.lease_until
        )

    def reconcile(
        self,
        snap: Snapshot,
        now: float,
        runtime: Runtime,
        *,
        running: Callable[[], bool],
        source: Callable[[], Snapshot],
        clock: Callable[[], float],
        record: Callable[[str, BaseException | str], None],
    ) -> None:
        """Start the tasks on a new leadership, cancel them when it is over: when
        the node steps down, and as soon as its lease lapses (a task must not
        overlap the next leader). ``running()`` says whether the elector still
        runs; it is asked under the lock :meth:`cancel` takes."""
        started: list[TaskFunc] = []
        with self._lock:
            if self._term is not None and (snap.term != self._term or not snap.is_leader(now)):
                self._cancel(runtime)
            # Asked under the lock: a stop that said "not running" before cancels
            # after, so no task can start between the two.
            if snap.is_leader(now) and running():
                if self._term != snap.term:
                    self._term = snap.term
                    self._workers = {}
                for index, func in enumerate(list(self.funcs)):
                    if index in self._workers:
                        continue
                    ctx = LeaderContext(snap.term, runtime.event(), source, clock)
                    name = f"goelect-{self.node_id}-leader-task-{index}"
                    worker = runtime.spawn(name, self._run, func, ctx, record)
                    self._workers[index] = (ctx, worker)
                    started.append(func)
        for func in started:  # (outside the lock: a log handler may do I/O)
            self.log.info(
                "goelect %s: started leader task %r for term %d", self.node_id, func, snap.term
            )

    def cancel(self, runtime: Runtime | None) -> None:
        """Cancel every task of the current leadership (from any thread)."""
        with self._lock:
            self._cancel(runtime)

    def _cancel(self, runtime: Runtime | None) -> None:
        workers, self._workers = self._workers, {}
        self._term = None
        for ctx, worker in workers.values():
            ctx.cancelled.set()
            if runtime is not None:
                runtime.abandon(worker)
            self._ending.append(worker)

    def join(self, runtime: Runtime, remaining: Callable[[], float]) -> bool:
        """Wait until the cancelled tasks have ended, until ``remaining()`` is 0;
        True if they all have (work in them then no longer runs)."""
        with self._lock:
            ending, self._ending = self._ending, []
        left = [w for w in ending if not runtime.join(w, remaining())]
        with self._lock:
            self._ending.extend(left)
        return not left

    def forget(self) -> None:
        """In a forked child: drop the parent's workers. A native thread did not
        survive the fork; a greenlet did (a patched process forks its hub with
        it), and would run the parent's leader task in this process too: it is
        killed here, without waiting (its ``ctx`` says cancelled)."""
        self._lock = native_lock()  # it may have been held at the fork
        workers, ending = list(self._workers.values()), self._ending
        self._term = None
        self._workers = {}
        self._ending = []
        for ctx, _ in workers:
            if isinstance(ctx.cancelled, HubEvent):
                ctx.cancelled.set_in_child()
        for worker in [w for _, w in workers] + ending:
            if isinstance(worker, HubWorker):
                worker.kill_in_child()

    def _run(
        self, func: TaskFunc, ctx: LeaderContext, record: Callable[[str, BaseException | str], None]
    ) -> None:
        try:
            func(ctx)
        except Exception as exc:
            self.log.exception("goelect %s: leader task %r failed", self.node_id, func)
            record("leader-task", exc)
