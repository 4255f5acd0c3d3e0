"""Helpers for testing an app that uses flask-goelect, without a cluster.

Force what the extension answers, for the length of a ``with`` block::

    from flask_goelect.testing import make_follower, make_leader

    def test_rebuild_runs_on_the_leader(app, client):
        with make_leader(app, term=7):
            assert client.post("/reports/rebuild").status_code == 200

    def test_rebuild_is_refused_on_a_follower(app, client):
        with make_follower(app, leader_id="n2", leader_address="http://n2:5000"):
            response = client.post("/reports/rebuild")
            assert response.status_code == 503
            assert response.json["leader"]["id"] == "n2"

Inside the block ``elect.is_leader``, ``elect.state``, ``elect.term``,
``elect.leader``, ``elect.status()``, both ``@leader_only`` decorators and the
``<prefix>/leader`` and ``<prefix>/health`` routes answer as told. The RPC
routes answer 503 (there is no real election to take part in). Set
``GOELECT_AUTOSTART = False`` in test configs so that no real elector runs;
if one does, it keeps running underneath and its signals are still sent.

:func:`send_signals` sends the signals of a change, exactly as the elector
would (in order, inside an app context), to test your receivers.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

from flask import Flask

from .core import LeaderInfo, TransferError
from .extension import ExtensionState, NotRunning, StaticSnapshot
from .messages import Reply, Request

__all__ = ["FakeElector", "force_state", "make_follower", "make_leader", "send_signals"]

_STATES = ("leader", "follower", "candidate", "observer", "stopped")


def _state_of(app: Flask) -> ExtensionState:
    state = app.extensions.get("goelect")
    if not isinstance(state, ExtensionState):
        raise RuntimeError("flask-goelect is not set up on this app: call LeaderElect(app) first")
    return state


class FakeElector:
    """An elector whose answers are fixed: what :func:`force_state` installs."""

    def __init__(self, snapshot: StaticSnapshot) -> None:
        self.snapshot = snapshot
        self.running = snapshot.state != "stopped"
        self.errors: collections.deque[Any] = collections.deque(maxlen=100)
        self.transfers: list[str | None] = []

    def is_leader(self) -> bool:
        return self.snapshot.is_leader()

    def handle(self, msg: Request) -> Reply:
        raise NotRunning("this node's answers are forced by flask_goelect.testing")

    def status(self) -> dict[str, Any]:
        return {"forced": True}

    def wait_for_leader(self, timeout: float) -> LeaderInfo | None:
        snap = self.snapshot
        if snap.leader_id is None:
            return None
        return LeaderInfo(snap.leader_id, snap.leader_address, snap.leader_tags)

    def transfer_leadership(self, to: str | None = None) -> str:
        """Records the request in ``transfers``; raises unless forced to lead."""
        self.transfers.append(to)
        if self.snapshot.state != "leader":
            raise TransferError("this node is not the leader (forced by flask_goelect.testing)")
        return to or "<forced>"


@contextlib.contextmanager
def force_state(
    app: Flask,
    state: str,
    *,
    term: int = 1,
    leader_id: str | None = None,
    leader_address: str | None = None,
    leader_tags: Mapping[str, str] | None = None,
    lease: float = math.inf,
) -> Iterator[FakeElector]:
    """Make ``app``'s extension answer as a node in ``state`` until the block ends.

    ``leader_address`` and ``leader_tags`` default to the configured ones of
    ``leader_id``. ``lease`` is how long a forced leader's lease lasts from now
    (seconds; ``inf`` by default): use a small value to test a lease running out.
    Yields the :class:`FakeElector`; blocks nest.
    """
    import time

    if state not in _STATES:
        raise ValueError(f"state must be one of {', '.join(_STATES)}, not {state!r}")
    ext = _state_of(app)
    settings = ext.settings
    if state == "leader":
        leader_id = settings.node_id
    peer = settings.election.peer(leader_id) if leader_id is not None else None
    if leader_address is None:
        leader_address = peer.address if peer is not None else ""
    if leader_tags is None:
        leader_tags = dict(peer.tags) if peer is not None else {}
    snapshot = StaticSnapshot(
        node_id=settings.node_id,
        state=state,
        term=term,
        leader_id=leader_id,
        leader_address=leader_address,
        leader_tags=dict(leader_tags),
        lease_until=time.monotonic() + lease if state == "leader" else 0.0,
        voters=tuple(sorted(settings.election.voters)),
        observers=tuple(sorted(settings.election.observers)),
    )
    fake = FakeElector(snapshot)
    previous = ext._forced
    ext._forced = fake
    ext._refresh()
    try:
        yield fake
    finally:
        ext._forced = previous
        ext._refresh()


def make_leader(app: Flask, *, term: int = 1, lease: float = math.inf) -> Any:
    """Context manager: this node leads in ``term`` with a lease of ``lease`` seconds."""
    return force_state(app, "leader", term=term, lease=lease)


def make_follower(
    app: Flask,
    *,
    leader_id: str | None = None,
    leader_address: str | None = None,
    term: int = 1,
) -> Any:
    """Context manager: this node follows ``leader_id`` (None: no leader known)."""
    return force_state(
        app, "follower", term=term, leader_id=leader_id, leader_address=leader_address
    )


def send_signals(
    app: Flask,
    *,
    previous_state: str,
    state: str,
    term: int = 1,
    leader_id: str | None = None,
    previous_leader_id: str | None = None,
    reason: str = "sent by flask_goelect.testing",
) -> None:
    """Send the signals of one change as the elector would (in order, in an app context).

    A receiver that raises does not stop the others; the first failure is
    raised at the end.
    """
    _state_of(app).send_signals(
        previous_state=previous_state,
        state=state,
        term=term,
        leader_id=leader_id,
        previous_leader_id=previous_leader_id,
        reason=reason,
    )
