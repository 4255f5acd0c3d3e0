"""The snapshot an elector publishes, and the callers waiting for it to change.

Readers never take the elector's lock: after every step a new
:class:`~flask_goelect.state.Snapshot` replaces the old one as a whole (one
attribute write), and only when something readers see has changed. Callers
that wait for a change (``wait_for_leader``, a hand-over on stop) are woken by
each new snapshot instead of polling; listeners (e.g. a record shared with the
other processes of the node) are told of each one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import core
from ..state import STATE_OF_ROLE, Snapshot, State
from .runtime import native_lock

__all__ = ["Publisher"]


class Publisher:
    """The current snapshot of one node, and who waits for or listens to it."""

    def __init__(self, node_id: str, voters: tuple[str, ...], observers: tuple[str, ...]) -> None:
        self.node_id = node_id
        self.voters = voters
        self.observers = observers
        #: Called with every new snapshot, in the publishing thread (must not block).
        self.listeners: list[Callable[[Snapshot], None]] = []
        self._lock = native_lock()  # held for a list's append or remove only
        self._waiters: list[Any] = []
        self.current = self.stopped(0)

    def stopped(self, term: int) -> Snapshot:
        """The snapshot of this node when its elector does not run."""
        return Snapshot.stopped(self.node_id, term, self.voters, self.observers)

    def of(self, node: core.Node) -> Snapshot:
        """The snapshot of ``node``: the current one itself if nothing readers see changed.

        Most steps (a heartbeat on a follower, the second ack of a round on the
        leader) change nothing readers see; keeping the object saves building a
        new one, and tells waiters there is nothing new.
        """
        current = self.current
        leader = node.leader
        state = STATE_OF_ROLE[node.role]
        lease_until = node.lease_until if state is State.LEADER else 0.0
        if (
            current.state is state
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
            voters=self.voters,
            observers=self.observers,
        )

    def publish(self, snap: Snapshot) -> None:
        """Make ``snap`` the current snapshot (if it is a new one) and tell everyone."""
        if snap is self.current:
            return
        self.current = snap
        if self._waiters:
            self.wake()
        for listener in self.listeners:
            listener(snap)

    def wake(self) -> None:
        """Wake every waiter (to look at the snapshot, or to see the elector stopped)."""
        for event in list(self._waiters):
            event.set()

    def wait_for(
        self,
        predicate: Callable[[Snapshot], bool],
        deadline: float,
        new_event: Callable[[], Any],
        running: Callable[[], bool],
    ) -> bool:
        """Wait until ``predicate(snapshot)`` holds (True), or ``deadline`` (on
        ``time.monotonic``) passes or ``running()`` turns false (False)."""
        if predicate(self.current):
            return True
        if not running():
            return False
        event = new_event()
        with self._lock:
            self._waiters.append(event)
        try:
            while True:
                if predicate(self.current):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not running():
                    return False
                event.wait(remaining)
                event.clear()
        finally:
            with self._lock:
                self._waiters.remove(event)

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's waiters are gone; a lock may have been held."""
        self._lock = native_lock()  # held for a list's append or remove only
        self._waiters = []
        self.current = self.stopped(self.current.term)
