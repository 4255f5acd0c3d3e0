"""The HTTP routes of the election, mounted at ``GOELECT_URL_PREFIX``.

The RPC routes are the wire contract between nodes (and between versions)::

    POST <prefix>/rpc/vote          VoteRequest   -> VoteReply      (votes and pre-votes)
    POST <prefix>/rpc/heartbeat     Heartbeat     -> HeartbeatReply
    POST <prefix>/rpc/timeout-now   TimeoutNow    -> TimeoutNowReply

They take and give JSON (see :mod:`flask_goelect.messages`) and never block:
the elector steps its state machine and persists a vote under its lock, and
sends nothing from the request. The other routes are for people, load
balancers and the ``flask goelect`` commands::

    GET  <prefix>/status    this node's view of the election (JSON)
    GET  <prefix>/leader    200 on the leader holding a valid lease, else 503
    GET  <prefix>/health    200 while the elector runs, else 503
    POST <prefix>/transfer  hand leadership over (needs the node's local token)
    GET  <prefix>/ui        the live status page (with GOELECT_STATUS_PAGE), its
                            files and GET <prefix>/ui/cluster.json

Bad input never changes state and gets a JSON error that says what is wrong:
409 for a request of another cluster, 401 for an RPC that is unsigned, forged,
stale or replayed (with ``GOELECT_SECRET``), 403 for a sender that is not a
peer, 415 for a body that is not ``application/json``, 413 for a body over
:data:`MAX_BODY` bytes, 400 for malformed JSON or a message that fails
validation, 405 for a wrong method, 404 for an unknown path under the prefix,
503 when the elector is not running.

The checks of an RPC, cheapest first, are the protocol's server side in
:mod:`flask_goelect.rpc`; this module only routes requests there and turns its
answers into responses. The reply to a signed request is signed (see
:mod:`flask_goelect.auth`).

``GET <prefix>/status`` shows the topology: unless ``GOELECT_STATUS_PUBLIC``,
only signed requests of the peers and requests from this host may read it,
and ``/leader`` and ``/health`` tell others their status code and no more.
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from . import status_page
from ._answers import Answer, error_answer, json_answer
from .app_state import ExtensionState
from .auth import is_local_request
from .rpc import MAX_BODY, RPC_KINDS, RpcServer, StatusRead, headers_from_environ

__all__ = [
    "MAX_BODY",
    "TOKEN_HEADER",
    "add_routes",
    "as_response",
    "create_blueprint",
    "may_read_status",
]

#: The header that carries the node's local token on ``POST <prefix>/transfer``.
TOKEN_HEADER = "X-Goelect-Token"

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

View = Callable[..., Any]


def as_response(answer: Answer) -> Response:
    """An :class:`~flask_goelect._answers.Answer` as a Flask response (JSON)."""
    return Response(
        answer.body, status=answer.status, headers=answer.headers, mimetype="application/json"
    )


def _json(body: Any, status: int = 200) -> Response:
    return as_response(json_answer(body, status))


def _error(status: int, error: str, message: str) -> Response:
    return as_response(error_answer(status, error, message))


def _state() -> ExtensionState:
    state: ExtensionState = current_app.extensions["goelect"]
    return state


def _json_errors(view: View) -> View:
    """Turn every error under the prefix into a JSON answer.

    Done per view rather than with blueprint error handlers so that a host's
    own blueprint (``LeaderElect(app, blueprint=bp)``) keeps its error pages.
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except HTTPException as exc:
            code = exc.code or 500
            name = (exc.name or "error").lower().replace(" ", "_")
            return _error(code, name, exc.description or exc.name or "error")
        except Exception:
            current_app.logger.exception("flask-goelect: error in %s", request.path)
            return _error(500, "internal_error", "the node failed to answer; see its log")

    return wrapper


def _rpc_view(kind: str) -> View:
    def rpc() -> Response:
        answer = _state().serve_rpc(
            kind,
            headers_from_environ(request.environ),
            request.stream,
            request.remote_addr or "",
        )
        return as_response(answer)

    rpc.__name__ = f"rpc_{kind.replace('-', '_')}"
    return rpc


def _status_answer(state: ExtensionState, path: str, *, full: bool) -> Answer:
    """The status (``full``), or whether this request may read it; or the refusal.

    A request signed by a peer (or this node) for ``path`` may read it from
    anywhere; an unsigned one if the status is public, the request comes
    from this host's loopback, not through a proxy, or it carries the node's
    local token (:func:`_shows_token`).
    """
    may_read_unsigned = (
        state.settings.status_public
        or is_local_request(
            request.remote_addr,
            request.headers,  # type: ignore[arg-type]
        )
        or _shows_token(state)
    )
    read = StatusRead(
        request.method,
        path,
        headers_from_environ(request.environ),
        request.stream,
        request.remote_addr or "",
        may_read_unsigned,
    )
    return state.status_answer(read, full=full)


def _shows_token(state: ExtensionState) -> bool:
    """Whether the request carries the node's local token: it comes from a process
    that can read the files of the node's running elector, on the node's host
    (the ``flask goelect`` commands), whatever address it reached the node at."""
    given = request.headers.get(TOKEN_HEADER, "")
    if not given:
        return False
    token = state.admin_token
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


def _sees_details(state: ExtensionState, route: str) -> bool:
    """Whether ``/leader`` and ``/health`` may show ids, terms and addresses."""
    return _status_answer(state, state.url_prefix + route, full=False).status == 200


def may_read_status() -> bool:
    """Whether the current request may see the cluster's topology.

    True when ``GOELECT_STATUS_PUBLIC`` is set, for a request from this host
    (loopback, not through a proxy), and for a request a peer signed for this
    path (its nonce is then spent). Pages of the host app that show
    ``elect.status()`` or ``elect.cluster_state()`` use it to follow the same
    rule as ``GET <prefix>/status``.
    """
    return _status_answer(_state(), request.path, full=False).status == 200


def status() -> Response:
    """This node's view of the election (for the peers and this host, unless public)."""
    state = _state()
    return as_response(_status_answer(state, state.url_prefix + "/status", full=True))


def leader() -> Response:
    """200 only on the leader holding a valid lease (and not stepping down): a load
    balancer's health check."""
    state = _state()
    snap = state.snapshot
    # A stopping leader (GOELECT_HANDOVER_DRAIN) still leads, but asks the balancer
    # to send its traffic elsewhere before it hands over.
    stepping_down = state.stepping_down
    is_leader = snap.is_leader() and not stepping_down
    body: dict[str, Any] = {"is_leader": is_leader}
    if stepping_down:
        body["stepping_down"] = True
    if _sees_details(state, "/leader"):
        body = {
            "node_id": snap.node_id,
            "is_leader": is_leader,
            "state": snap.state,
            "term": snap.term,
            "leader_id": snap.leader_id,
            "leader_address": snap.leader_address or None,
            "stepping_down": stepping_down,
            "process": state.process(),
        }
    return _json(body, 200 if is_leader else 503)


def health() -> Response:
    """200 while the elector runs (whatever its role), else 503."""
    state = _state()
    running = state.running
    body: dict[str, Any] = {"running": running}
    if _sees_details(state, "/health"):
        snap = state.snapshot
        body = {
            "node_id": snap.node_id,
            "running": running,
            "state": snap.state,
            "process": state.process(),
        }
    return _json(body, 200 if running else 503)


def transfer() -> Response:
    """Hand leadership over; used by ``flask goelect transfer`` on the node's host."""
    state = _state()
    if not _shows_token(state):
        return _error(
            403,
            "forbidden",
            f"send the node's local token in {TOKEN_HEADER} (the flask goelect transfer"
            " command reads it from the state file's lock)",
        )
    data: Any = {}
    if request.content_length:
        body = RpcServer.read_body(headers_from_environ(request.environ), request.stream)
        if isinstance(body, Answer):
            return as_response(body)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            return _error(400, "bad_request", f"the body is not valid JSON: {exc}")
    if not isinstance(data, dict) or set(data) - {"to"}:
        return _error(400, "bad_request", 'send {"to": "<node id>"} or {"to": null}')
    to = data.get("to")
    if to is not None and not isinstance(to, str):
        return _error(400, "bad_request", "'to' must be a node id or null")
    try:
        target = state.transfer_leadership(to)
    except Exception as exc:  # not leader, bad target, not running
        return _error(409, "conflict", str(exc))
    return _json({"transferred_to": target, "term": state.snapshot.term})


def _page_refusal(state: ExtensionState) -> Response | None:
    """Why the status page is not served to this request, or None."""
    if not status_page.enabled(state.settings):
        return _error(
            404,
            "not_found",
            "the status page is off: set GOELECT_STATUS_PAGE = True to serve it",
        )
    if not may_read_status():
        return _error(
            401,
            "unauthorized",
            "the status page shows the cluster's topology: it is served to this host and"
            " the peers (set GOELECT_STATUS_PUBLIC to serve it to anyone)",
        )
    return None


def page() -> Response:
    """The live status page (``GOELECT_STATUS_PAGE``)."""
    state = _state()
    refused = _page_refusal(state)
    if refused is not None:
        return refused
    html = status_page.page(state.url_prefix, state.settings.node_id)
    return Response(
        html,
        mimetype="text/html",
        headers={
            "Cache-Control": "no-store",
            # Everything comes from this node; the drawing's inline <style> needs the last.
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'",
        },
    )


def page_cluster() -> Response:
    """The status page's data: this node's view of every node (JSON)."""
    state = _state()
    refused = _page_refusal(state)
    if refused is not None:
        return refused
    response = _json(status_page.cluster_view(state))
    response.headers["Cache-Control"] = "no-store"
    return response


def page_asset(name: str) -> Response:
    """The status page's stylesheet, script and drawing."""
    state = _state()
    refused = _page_refusal(state)
    if refused is not None:
        return refused
    found = status_page.asset(name)
    if found is None:
        return _not_found()
    content, content_type = found
    return Response(content, headers={"Content-Type": content_type})


def _not_allowed(allowed: tuple[str, ...]) -> View:
    def not_allowed(**kwargs: Any) -> Response:
        shown = (*allowed, "HEAD", "OPTIONS") if "GET" in allowed else allowed
        return as_response(
            error_answer(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed here; use {', '.join(allowed)}",
                {"Allow": ", ".join(shown)},
            )
        )

    return not_allowed


def _not_found(**kwargs: Any) -> Response:
    return _error(
        404,
        "not_found",
        f"{request.path} is not a flask-goelect route; see the routes in the docs (api.md)",
    )


_ROUTES: list[tuple[str, str, Callable[[], View], tuple[str, ...]]] = [
    *(
        (
            f"/rpc/{kind}",
            f"rpc_{kind.replace('-', '_')}",
            functools.partial(_rpc_view, kind),
            ("POST",),
        )
        for kind in RPC_KINDS
    ),
    ("/status", "status", lambda: status, ("GET",)),
    ("/leader", "leader", lambda: leader, ("GET",)),
    ("/health", "health", lambda: health, ("GET",)),
    ("/transfer", "transfer", lambda: transfer, ("POST",)),
    ("/ui", "page", lambda: page, ("GET",)),
    ("/ui/cluster.json", "page_cluster", lambda: page_cluster, ("GET",)),
    ("/ui/<name>", "page_asset", lambda: page_asset, ("GET",)),
]


def add_routes(bp: Blueprint, endpoint_prefix: str = "goelect_") -> None:
    """Add the election's routes to ``bp`` (a host's blueprint or our own)."""
    for path, endpoint, make_view, methods in _ROUTES:
        bp.add_url_rule(
            path, endpoint_prefix + endpoint, _json_errors(make_view()), methods=list(methods)
        )
        # Wrong methods on a known path get a JSON 405 from this second rule
        # (Flask's default 405 page is HTML, and blueprint error handlers do
        # not see routing errors).
        others = [m for m in _METHODS if m not in methods]
        bp.add_url_rule(
            path,
            f"{endpoint_prefix}{endpoint}_405",
            _not_allowed(methods),
            methods=others,
            provide_automatic_options=False,
        )


def create_blueprint(url_prefix: str) -> Blueprint:
    """The extension's own blueprint, named ``goelect``, at ``url_prefix``."""
    bp = Blueprint("goelect", __name__, url_prefix=url_prefix or None)
    add_routes(bp, "")
    # Anything else under the prefix is a JSON 404 (only on our own blueprint:
    # on a host's blueprint this rule would swallow the host's 404 pages).
    bp.add_url_rule(
        "/<path:rest>",
        "not_found",
        _json_errors(_not_found),
        methods=list(_METHODS),
        provide_automatic_options=False,
    )
    return bp
