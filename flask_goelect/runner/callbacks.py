"""Callbacks off the election loop: in order, one change at a time, each bounded.

The elector hands every change of role or leader to :class:`CallbackDispatcher`,
which calls ``on_transition(transition, snapshot)`` in a worker of its own. A
callback that raises is logged and recorded; one that overruns the timeout is
abandoned (a greenlet is killed; a native thread cannot be) and recorded. The
election never waits for a callback (goelect runs them inline, and a slow one
stalls its state machine).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from .. import core
from ..state import Snapshot
from .runtime import HubWorker, Runtime

__all__ = ["MAX_PENDING_CALLBACKS", "CallbackDispatcher", "OnTransition"]

#: At most this many changes wait for the callback; more are dropped and recorded.
MAX_PENDING_CALLBACKS = 1000

OnTransition = Callable[[core.Transition, Snapshot], None]

_STOP = object()


class CallbackDispatcher:
    """Calls ``callback`` for each change, in order, each call bounded by ``timeout``."""

    def __init__(
        self,
        node_id: str,
        callback: OnTransition,
        timeout: float,
        runtime: Runtime,
        *,
        record: Callable[[str, BaseException | str], None],
        log: logging.Logger,
    ) -> None:
        self.node_id = node_id
        self.callback = callback
        self.timeout = timeout
        self._rt = runtime
        self._record = record
        self.log = log
        self._queue: Any = runtime.queue()
        self._worker: Any = None
        self._pid = os.getpid()

    def start(self) -> None:
        self._worker = self._rt.spawn(f"goelect-{self.node_id}-callbacks", self._run)

    def enqueue(self, transitions: Sequence[core.Transition], snap: Snapshot) -> None:
        for t in transitions:
            if self._queue.qsize() >= MAX_PENDING_CALLBACKS:
                self._record("callback-dropped", f"on_transition({t!r}) dropped: queue full")
                continue
            self._queue.put((t, snap))

    def stop(self) -> None:
        """Let the worker end after the changes already queued."""
        self._queue.put(_STOP)

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's changes are not this process's to tell.
        The worker's greenlet (a patched process forks it with its hub) is killed,
        and whatever it still runs first finds the pid changed and tells nothing."""
        if isinstance(self._worker, HubWorker):
            self._worker.kill_in_child()

    def join(self, timeout: float) -> None:
        if not self._rt.join(self._worker, timeout):
            self._rt.abandon(self._worker)

    def _run(self) -> None:
        rt = self._rt
        while True:
            item = self._queue.get()
            if item is _STOP or os.getpid() != self._pid:
                return  # stopped, or a copy of the worker in a forked child
            transition, snap = item
            worker = rt.spawn(f"goelect-{self.node_id}-callback", self._call, transition, snap)
            if not rt.join(worker, self.timeout):
                rt.abandon(worker)
                self.log.warning(
                    "goelect %s: on_transition callback still running after %gs; abandoned",
                    self.node_id,
                    self.timeout,
                )
                self._record(
                    "callback-timeout",
                    f"{self.callback!r} for {transition!r} overran {self.timeout:g}s",
                )

    def _call(self, transition: core.Transition, snap: Snapshot) -> None:
        try:
            self.callback(transition, snap)
        except Exception as exc:
            self.log.exception("goelect %s: on_transition callback failed", self.node_id)
            self._record("callback", exc)
