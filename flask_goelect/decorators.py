"""``@leader_only``: run code on exactly one replica, the leader holding a valid lease.

Two decorators, one rule:

* :func:`leader_only` (``from flask_goelect import leader_only``) for **views**.
  On a node that is not the leader it answers ``503`` with a JSON body and a
  ``Retry-After`` header, or, with ``GOELECT_FOLLOWER_RESPONSE = "redirect"``,
  a ``307`` redirect to the same path on the leader (``503`` when no leader is
  known). What the answer tells about the leader (nothing, its id, its
  address) is ``GOELECT_FOLLOWER_REVEALS``; ``GOELECT_PUBLIC_URLS`` gives the
  URLs clients reach the nodes at.
* ``elect.leader_only`` (a method of :class:`~flask_goelect.LeaderElect`) for
  **jobs** called outside requests (schedulers, threads, commands). On a node
  that is not the leader the call is skipped and returns None, or raises
  :exc:`NotLeader` with ``@elect.leader_only(raise_on_follower=True)``.

The check is the leader's **lease** on the elector's clock
(:mod:`flask_goelect.clock`), read at the moment of the call: a leader paused
(GC, SIGSTOP, an overloaded host) past its lease does not run the function when
it wakes, even before it has heard of the new leader.

**The fencing token.** Inside a decorated function (view or job, sync or async)
:func:`current_term` returns the term the check passed in. Pass it to whatever
the function writes to, so that the store can refuse a write from an older
term: a lease only says that no other node *was* leader at the moment of the
check; the token protects what happens after it.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, request

from . import clock
from ._answers import error_answer, json_answer
from .app_state import ExtensionState
from .core import LeaderInfo, NotLeaderError
from .state import Snapshot
from .views import as_response

__all__ = ["NotLeader", "current_term", "leader_only"]

F = TypeVar("F", bound=Callable[..., Any])

_TERM: contextvars.ContextVar[int] = contextvars.ContextVar("goelect_term")


class NotLeader(NotLeaderError):
    """Raised by ``@elect.leader_only(raise_on_follower=True)`` on a non-leader.

    ``leader`` is the leader this node knows (``id``, ``address``, ``tags``) or
    None; ``term`` is this node's term; ``node_id`` is this node's id.
    """

    def __init__(self, node_id: str, term: int, leader: LeaderInfo | None) -> None:
        self.node_id = node_id
        self.term = term
        self.leader = leader
        if leader is not None and leader.id == node_id:
            text = (
                f"node {node_id!r} leads (term {term}), but its jobs run in its elector"
                " process, not in this one"
            )
        else:
            where = (
                f"the leader is {leader.id!r} at {leader.address!r}"
                if leader
                else "no leader is known"
            )
            text = f"node {node_id!r} is not the leader (term {term}); {where}"
        super().__init__(text)


def current_term() -> int:
    """The term (fencing token) of the ``@leader_only`` call in progress.

    :raises RuntimeError: called outside a function decorated with
        ``@leader_only`` or ``@elect.leader_only``.
    """
    try:
        return _TERM.get()
    except LookupError:
        raise RuntimeError(
            "current_term() is only known inside a function decorated with @leader_only"
            " or @elect.leader_only; elsewhere read elect.term"
        ) from None


def _state_of_current_app() -> ExtensionState:
    try:
        state: ExtensionState = current_app.extensions["goelect"]
    except KeyError:
        raise RuntimeError(
            "@leader_only needs flask-goelect on this app: call LeaderElect(app) or"
            " elect.init_app(app)"
        ) from None
    return state


def _follower_response(state: ExtensionState, snap: Snapshot) -> Any:
    settings = state.settings
    reveals = settings.follower_reveals
    leader = snap.leader
    # Elsewhere than the leader we cannot tell its lease apart from a dead
    # leader's: a leader known but not this node is worth trying.
    elsewhere = leader is not None and leader.id != settings.node_id
    public = settings.public_urls.get(leader.id, "") if leader is not None and elsewhere else ""
    internal = leader.address if leader is not None and reveals == "address" else ""
    target = public or internal
    if settings.follower_response == "redirect" and elsewhere and target:
        location = target.rstrip("/") + request.path
        if request.query_string:
            location += "?" + request.query_string.decode("latin-1")
        return as_response(
            error_answer(
                307,
                "not_leader",
                f"this node is not the leader; send this request to {location}",
                {"Location": location},
            )
        )
    # An election takes one to two election timeouts; a known leader is
    # reachable now.
    retry_after = 1 if elsewhere else max(1, math.ceil(2 * settings.elect_timeout))
    named = reveals != "nothing"
    this = f"node {settings.node_id!r}" if named else "this node"
    if elsewhere and target:
        assert leader is not None
        who = f" {leader.id!r}" if named else ""
        message = f"{this} is not the leader; send this request to the leader{who} at {target}"
    elif elsewhere:
        assert leader is not None
        who = f" is {leader.id!r}" if named else " is known"
        message = f"{this} is not the leader; the leader{who}: retry in {retry_after}s"
    else:
        message = (
            f"{this} is not the leader and no leader is known (an election may be in"
            f" progress); retry in {retry_after}s"
        )
    body: dict[str, Any] = {"error": "not_leader", "message": message}
    if named:
        body.update(node_id=settings.node_id, state=snap.state, term=snap.term)
        body["leader"] = None
        if leader is not None:
            body["leader"] = {"id": leader.id}
            if reveals == "address":
                body["leader"]["address"] = leader.address or None
    if public:
        body["leader_url"] = public
    return as_response(json_answer(body, 503, {"Retry-After": str(retry_after)}))


def leader_only(func: F) -> F:
    """Decorate a view so that it runs only on the leader holding a valid lease.

    Uses the flask-goelect extension of ``current_app``. Works on ``async def``
    views (through ``current_app.ensure_sync``). Inside the view,
    :func:`current_term` is the fencing token.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = _state_of_current_app()
        gate = state.inflight
        # Through the gate first, then the check: a hand-over closes the gate and
        # waits for the calls inside before the next leader can take over.
        entered = gate.enter()
        try:
            now = clock.now()  # before the snapshot: a lease dropped meanwhile is seen
            snap = state.snapshot
            if not entered or not snap.is_leader(now):
                return _follower_response(state, snap)
            token = _TERM.set(snap.term)
            try:
                return current_app.ensure_sync(func)(*args, **kwargs)
            finally:
                _TERM.reset(token)
        finally:
            if entered:
                gate.leave()

    return wrapper  # type: ignore[return-value]


def job_wrapper(state_of: Callable[[], ExtensionState], func: F, raise_on_follower: bool) -> F:
    """The wrapper behind ``elect.leader_only`` (kept lean: it runs on every call).

    ``state_of`` finds the state of the app the call is for.
    """
    now = clock.now

    def admit(state: ExtensionState) -> Snapshot | None:
        """The snapshot the call runs under, through the gate; None if refused (and
        out of the gate again). Through the gate first, then the check (see
        leader_only)."""
        gate = state.inflight
        if not gate.enter():
            return None
        t = now()  # before the snapshot: a lease dropped meanwhile is seen
        elector = state.elector
        snap = elector.snapshot
        # Jobs run in one process of the cluster: the leader's elector process
        # (schedulers in every worker must not mean a run in every worker); a job
        # called inside a leader-only call that passed in this term runs there.
        if snap.is_leader(t) and (elector.runs_jobs or _TERM.get(None) == snap.term):
            return snap
        gate.leave()
        return None

    def refuse(state: ExtensionState) -> None:
        if raise_on_follower:
            snap = state.snapshot
            raise NotLeader(state.settings.node_id, snap.term, snap.leader)

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            state = state_of()
            snap = admit(state)
            if snap is None:
                return refuse(state)
            token = _TERM.set(snap.term)
            try:
                return await func(*args, **kwargs)
            finally:
                _TERM.reset(token)
                state.inflight.leave()

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = state_of()
        snap = admit(state)
        if snap is None:
            return refuse(state)
        token = _TERM.set(snap.term)
        try:
            return func(*args, **kwargs)
        finally:
            _TERM.reset(token)
            state.inflight.leave()

    return wrapper  # type: ignore[return-value]
