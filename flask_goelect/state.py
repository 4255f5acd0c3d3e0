"""What every reader of the election sees: one model of a node's state.

* :class:`State`: the states users see (``"leader"``, ``"follower"``,
  ``"candidate"``, ``"observer"``, ``"stopped"``); :data:`STATE_OF_ROLE` maps the
  core's roles to them (a pre-candidate asks for pre-votes: it campaigns).
* :class:`Snapshot`: the immutable view of a node that the elector replaces as a
  whole after every step. Readers (``elect.is_leader``, the decorators, the
  routes) read it without a lock; plain values only, so that it can be shared
  with the other processes of the node.
* :class:`NotRunning`: the one error for "the elector of this node is not running".
* :class:`ElectorLike`: what the Flask glue asks of an elector; the runner's
  ``Elector`` is one, :class:`FixedElector` another (a fixed answer: a node that
  was never started, or a state forced by :mod:`flask_goelect.testing`).

This module is a pure leaf: no I/O, no threads, no Flask, no gevent.
"""

from __future__ import annotations

import collections
import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import clock
from .core import LeaderInfo, Role, TransferError
from .messages import Reply, Request

__all__ = [
    "MAX_ERROR_RECORDS",
    "Gate",
    "InFlight",
    "STATE_OF_ROLE",
    "ElectorLike",
    "ErrorRecord",
    "FixedElector",
    "NotRunning",
    "Snapshot",
    "State",
    "new_error_log",
    "status_of",
]


class State(str, enum.Enum):
    """A node's state as users see it (``str(state)`` is its name)."""

    LEADER = "leader"
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    OBSERVER = "observer"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


#: The state users see for each role of the core (a pre-candidate campaigns).
STATE_OF_ROLE: Mapping[Role, State] = {
    Role.LEADER: State.LEADER,
    Role.FOLLOWER: State.FOLLOWER,
    Role.PRE_CANDIDATE: State.CANDIDATE,
    Role.CANDIDATE: State.CANDIDATE,
    Role.OBSERVER: State.OBSERVER,
}


class NotRunning(RuntimeError):
    """The elector of this node is not running (not started, stopped, or failed)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything readers need about one node, replaced as a whole (never mutated).

    ``lease_until`` is a time on :func:`flask_goelect.clock.now`, ``0.0`` when
    this node holds no lease.
    """

    node_id: str
    state: State
    term: int = 0
    leader_id: str | None = None
    leader_address: str = ""
    leader_tags: Mapping[str, str] = field(default_factory=dict)
    lease_until: float = 0.0
    voters: tuple[str, ...] = ()
    observers: tuple[str, ...] = ()

    @classmethod
    def stopped(
        cls,
        node_id: str,
        term: int = 0,
        voters: tuple[str, ...] = (),
        observers: tuple[str, ...] = (),
    ) -> Snapshot:
        """The snapshot of a node whose elector does not run."""
        return cls(node_id, State.STOPPED, term, voters=voters, observers=observers)

    def is_leader(self, now: float | None = None) -> bool:
        """True if this node leads and holds a valid lease at ``now`` (default: now)."""
        if self.state is not State.LEADER:
            return False
        return (clock.now() if now is None else now) < self.lease_until

    def lease_remaining(self, now: float | None = None) -> float:
        """Seconds of lease left at ``now`` (0 when not leading)."""
        if self.state is not State.LEADER:
            return 0.0
        return max(0.0, self.lease_until - (clock.now() if now is None else now))

    @property
    def leader(self) -> LeaderInfo | None:
        """The leader this node knows (itself when it leads), or None."""
        if self.leader_id is None:
            return None
        return LeaderInfo(self.leader_id, self.leader_address, self.leader_tags)


def status_of(snap: Snapshot, now: float | None = None) -> dict[str, Any]:
    """The part of a node's status that its snapshot tells, JSON-ready."""
    if now is None:
        now = clock.now()
    return {
        "node_id": snap.node_id,
        "state": snap.state.value,
        "term": snap.term,
        "leader_id": snap.leader_id,
        "leader_address": snap.leader_address or None,
        "leader_tags": dict(snap.leader_tags),
        "is_leader": snap.is_leader(now),
        "lease_remaining": round(snap.lease_remaining(now), 6),
        "voters": list(snap.voters),
        "observers": list(snap.observers),
    }


#: At most this many error records are kept in an elector's ``errors``.
MAX_ERROR_RECORDS = 100


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """A failure kept in ``elect.errors``: wall-clock ``time``, ``kind``, ``repr``.

    Kinds: ``"callback"`` (a signal receiver raised), ``"callback-timeout"`` (it
    overran ``GOELECT_CALLBACK_TIMEOUT`` and was abandoned), ``"callback-dropped"``,
    ``"leader-task"``, ``"storage"``, ``"send"`` (an unexpected error while
    sending), ``"crash"`` (a background greenlet or thread died), ``"loop"``.
    """

    time: float
    kind: str
    repr: str


def new_error_log() -> collections.deque[ErrorRecord]:
    """An empty, bounded list of :class:`ErrorRecord` (oldest dropped first)."""
    return collections.deque(maxlen=MAX_ERROR_RECORDS)


class ElectorLike(Protocol):
    """What the Flask glue needs of an elector.

    ``runs_jobs`` says whether ``@elect.leader_only`` jobs may run where it
    answers: in the node's elector process only.
    """

    runs_jobs: bool

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def running(self) -> bool: ...

    @property
    def errors(self) -> collections.deque[ErrorRecord]: ...

    def handle(self, msg: Request) -> Reply:
        """Step a peer's request; raises :class:`NotRunning` when not running."""
        ...

    def status(self) -> dict[str, Any]:
        """This node's view, JSON-ready."""
        ...

    def wait_for_leader(self, timeout: float) -> LeaderInfo | None: ...

    def transfer_leadership(self, to: str | None = None) -> str: ...


class FixedElector:
    """An elector whose answers are fixed by its snapshot (it runs jobs: a state
    forced by tests is the whole node).

    It stands in before the first start (a stopped node) and for the states
    :mod:`flask_goelect.testing` forces (``forced=True``): it takes part in no
    election, answers peers' requests with :class:`NotRunning`, and records the
    transfers asked of it in ``transfers``.
    """

    runs_jobs = True

    def __init__(self, snapshot: Snapshot, *, forced: bool = False) -> None:
        self.snapshot = snapshot
        self.forced = forced
        self.running = snapshot.state is not State.STOPPED
        self.errors = new_error_log()
        #: The ``to`` of every :meth:`transfer_leadership` call, in order.
        self.transfers: list[str | None] = []

    def __repr__(self) -> str:
        kind = "forced" if self.forced else "fixed"
        return f"<FixedElector {self.snapshot.node_id!r} {kind} {self.snapshot.state}>"

    def is_leader(self) -> bool:
        return self.snapshot.is_leader()

    def handle(self, msg: Request) -> Reply:
        if self.forced:
            raise NotRunning("this node's answers are forced by flask_goelect.testing")
        raise NotRunning("the elector of this node is not running")

    def status(self) -> dict[str, Any]:
        status = status_of(self.snapshot)
        status["running"] = self.running
        if self.forced:
            status["forced"] = True
        return status

    def wait_for_leader(self, timeout: float) -> LeaderInfo | None:
        return self.snapshot.leader

    def transfer_leadership(self, to: str | None = None) -> str:
        """Records ``to``; a forced leader answers it, anything else refuses."""
        self.transfers.append(to)
        if self.snapshot.state is State.LEADER:
            return to or "<forced>"
        if self.forced:
            raise TransferError("this node is not the leader (forced by flask_goelect.testing)")
        raise NotRunning("the elector of this node is not running; start it first")


class Gate(Protocol):
    """What a leader drains before it hands leadership over on purpose."""

    @property
    def count(self) -> int:
        """How many leader-only calls are running."""
        ...

    def drain(self, timeout: float) -> bool:
        """Admit no new call; wait up to ``timeout`` for those running (True: none left)."""
        ...

    def reopen(self) -> None:
        """Admit calls again."""
        ...


class InFlight:
    """The leader-only calls running in this process, and the gate they pass.

    Before a leader gives its leadership up on purpose (a hand-over to another
    node, or its elector to another process of the node), it closes the gate
    (:meth:`drain`): no new ``@leader_only`` call starts, and it waits, bounded,
    for the ones running to end. Only then does it tell the next leader to take
    over, so that work that passed its check a moment before does not overlap
    the next leader's.
    """

    #: How often :meth:`drain` looks whether the running calls have ended.
    POLL = 0.001

    def __init__(self) -> None:
        # One entry per running call. Appending and popping are single steps under
        # the GIL, so a call pays no lock: entering appends, then looks at the gate,
        # and leaves again if it found it closed; draining closes the gate, then
        # waits for the deque to empty. Whichever comes first, a call never runs
        # past a drain that returned.
        self._running: collections.deque[None] = collections.deque()
        self._closed = False

    def __repr__(self) -> str:
        gate = "closed" if self._closed else "open"
        return f"<InFlight {len(self._running)} running, {gate}>"

    @property
    def count(self) -> int:
        """How many calls are running."""
        return len(self._running)

    def enter(self) -> bool:
        """A call starts: False (and it must not run) while the gate is closed."""
        running = self._running
        running.append(None)
        if self._closed:
            running.pop()
            return False
        return True

    def leave(self) -> None:
        """A call that :meth:`enter` admitted has ended."""
        self._running.pop()

    def drain(self, timeout: float) -> bool:
        """Close the gate and wait up to ``timeout`` seconds for the running calls;
        True if none is left."""
        self._closed = True
        deadline = time.monotonic() + timeout
        while self._running:
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.POLL)
        return True

    def reopen(self) -> None:
        """Admit calls again (the gate is only a pause between two leaders)."""
        self._closed = False
