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
            assert response.json["error"] == "not_leader"

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

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

from flask import Flask

from . import clock
from .app_state import ExtensionState
from .state import FixedElector, Snapshot, State

__all__ = ["FixedElector", "force_state", "make_follower", "make_leader", "send_signals"]


def _state_of(app: Flask) -> ExtensionState:
    state = app.extensions.get("goelect")
    if not isinstance(state, ExtensionState):
        raise RuntimeError("flask-goelect is not set up on this app: call LeaderElect(app) first")
    return state


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
) -> Iterator[FixedElector]:
    """Make ``app``'s extension answer as a node in ``state`` until the block ends.

    ``leader_address`` and ``leader_tags`` default to the configured ones of
    ``leader_id``. ``lease`` is how long a forced leader's lease lasts from now
    (seconds; ``inf`` by default): use a small value to test a lease running out.
    Yields the :class:`~flask_goelect.state.FixedElector` (its ``transfers``
    record the hand-overs asked of it); blocks nest.
    """
    try:
        forced = State(state)
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise ValueError(f"state must be one of {names}, not {state!r}") from None
    ext = _state_of(app)
    settings = ext.settings
    if forced is State.LEADER:
        leader_id = settings.node_id
    peer = settings.election.peer(leader_id) if leader_id is not None else None
    if leader_address is None:
        leader_address = peer.address if peer is not None else ""
    if leader_tags is None:
        leader_tags = dict(peer.tags) if peer is not None else {}
    snapshot = Snapshot(
        node_id=settings.node_id,
        state=forced,
        term=term,
        leader_id=leader_id,
        leader_address=leader_address,
        leader_tags=dict(leader_tags),
        lease_until=clock.now() + lease if forced is State.LEADER else 0.0,
        voters=tuple(sorted(settings.election.voters)),
        observers=tuple(sorted(settings.election.observers)),
    )
    fake = FixedElector(snapshot, forced=True)
    previous = ext.force(fake)
    try:
        yield fake
    finally:
        ext.force(previous)


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
