"""Signals sent when this node's role or the leader it knows changes.

Connect to them with blinker, for one app or for all::

    from flask_goelect import signals

    @signals.enter_leader.connect_via(app)
    def on_lead(app, term, **kwargs):
        app.logger.info("leading in term %d", term)

Every signal is sent with the application (the real object, not the
``current_app`` proxy) as its sender and these keyword arguments:

``term``
    The election term after the change: the fencing token.
``state``
    This node's state after the change: ``"leader"``, ``"follower"``,
    ``"candidate"``, ``"observer"``, or ``"stopped"`` when the elector stops.
``previous_state``
    Its state before the change.
``leader_id``
    The id of the leader this node knows after the change, or None.
``previous_leader_id``
    The leader it knew before, or None.
``node_id``
    This node's id.
``reason``
    A short text saying why the change happened (for logs).

Receivers are called by the elector's callback worker, never by the election
loop itself: in order, one change at a time, inside an application context of
the sender, each change bounded by ``GOELECT_CALLBACK_TIMEOUT``. A receiver that
raises is logged and recorded in ``elect.errors``; the other receivers still run
and the election goes on. A slow receiver delays the receivers after it, never
the election.

For one change the signals are sent in this order: ``leave_<old state>``,
``enter_<new state>``, then ``leader_changed`` if the known leader changed. An
observer (a no-vote node) has no enter/leave signals of its own; it gets
``leader_changed``. When the elector stops, the last state entered is left
(``state="stopped"``, ``leader_id=None``): a leader stopped without a
hand-over still gets ``leave_leader``. A pre-candidate (asking for pre-votes)
counts as a candidate.

Note that a node leaving ``leader`` has already stopped being the leader (its
lease is gone) when ``leave_leader`` is received: stop leader-only work there,
but do not rely on the receiver to stop it in time; check ``elect.is_leader``
(or use ``@leader_only``) where it matters.
"""

from __future__ import annotations

import logging

from blinker import Namespace
from flask import Flask

from .state import State

__all__ = [
    "ReceiverErrors",
    "enter_candidate",
    "enter_follower",
    "enter_leader",
    "leader_changed",
    "leave_candidate",
    "leave_follower",
    "leave_leader",
    "send_change",
]

_log = logging.getLogger("flask_goelect")

_signals = Namespace()

# Sent when this node becomes the leader of a term (it just won an election).
# sender: the app; kwargs: term, state, previous_state, leader_id,
# previous_leader_id, node_id, reason.
enter_leader = _signals.signal("goelect-enter-leader")

# Sent when this node stops being the leader (lost its quorum, saw a higher
# term, handed leadership over or stopped). Same sender and kwargs.
leave_leader = _signals.signal("goelect-leave-leader")

# Sent when this node becomes a follower. Same sender and kwargs.
enter_follower = _signals.signal("goelect-enter-follower")

# Sent when this node stops being a follower (it campaigns or stops).
# Same sender and kwargs.
leave_follower = _signals.signal("goelect-leave-follower")

# Sent when this node starts an election: it asks for (pre-)votes. Same sender
# and kwargs.
enter_candidate = _signals.signal("goelect-enter-candidate")

# Sent when this node stops campaigning (won, lost or heard from a leader).
# Same sender and kwargs.
leave_candidate = _signals.signal("goelect-leave-candidate")

# Sent when the leader this node knows changes, including to or from None
# (no leader known) and to this node itself. Same sender and kwargs.
leader_changed = _signals.signal("goelect-leader-changed")

#: The enter/leave signals by state, for :func:`send_change`.
ENTER = {
    State.LEADER: enter_leader,
    State.FOLLOWER: enter_follower,
    State.CANDIDATE: enter_candidate,
}
LEAVE = {
    State.LEADER: leave_leader,
    State.FOLLOWER: leave_follower,
    State.CANDIDATE: leave_candidate,
}


class ReceiverErrors(Exception):
    """Several signal receivers failed on one change; ``errors`` has each exception."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        super().__init__(f"{len(errors)} signal receivers failed: " + "; ".join(map(repr, errors)))


def send_change(
    app: Flask,
    *,
    previous_state: str,
    state: str,
    term: int,
    leader_id: str | None,
    previous_leader_id: str | None,
    node_id: str,
    reason: str = "",
) -> None:
    """Send the signals of one change with ``app`` as the sender, in order, inside
    an app context: ``leave_<previous_state>``, ``enter_<state>``, then
    ``leader_changed`` if the leader changed.

    Every receiver runs even if an earlier one raises; the failure (or
    :class:`ReceiverErrors` for several) is raised at the end.
    """
    kwargs = {
        "term": term,
        "state": str(state),
        "previous_state": str(previous_state),
        "leader_id": leader_id,
        "previous_leader_id": previous_leader_id,
        "node_id": node_id,
        "reason": reason,
    }
    to_send = []
    if state != previous_state:
        if previous_state in LEAVE:
            to_send.append(LEAVE[State(previous_state)])
        if state in ENTER:
            to_send.append(ENTER[State(state)])
    if leader_id != previous_leader_id:
        to_send.append(leader_changed)
    if not to_send:
        return
    failures: list[Exception] = []
    with app.app_context():
        for signal in to_send:
            # Each receiver on its own: one that raises must not keep the
            # others (and the signals after it) from running.
            for receiver in list(signal.receivers_for(app)):
                try:
                    receiver(app, **kwargs)
                except Exception as exc:
                    _log.exception("flask-goelect: receiver %r of %s failed", receiver, signal.name)
                    failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise ReceiverErrors(failures)
