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

Bad input never changes state and gets a JSON error that says what is wrong:
409 for a request of another cluster, 401 for an RPC that is unsigned, forged,
stale or replayed (with ``GOELECT_SECRET``), 403 for a sender that is not a
peer, 415 for a body that is not ``application/json``, 413 for a body over
:data:`MAX_BODY` bytes, 400 for malformed JSON or a message that fails
validation, 405 for a wrong method, 404 for an unknown path under the prefix,
503 when the elector is not running.

An RPC is checked in that order, cheapest first: its headers (cluster, then the
signature's fields and timestamp) before its body is read, the signature over
the body before the body is parsed, the message only then. The reply to a
signed request is signed (see :mod:`flask_goelect.auth`).

``GET <prefix>/status`` shows the topology: unless ``GOELECT_STATUS_PUBLIC``,
only signed requests of the peers and requests from this host may read it,
and ``/leader`` and ``/health`` tell others their status code and no more.
"""

from __future__ import annotations

import collections
import functools
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from .auth import (
    AUTH_HEADER,
    CLUSTER_HEADER,
    SENDER_HEADER,
    SIGNATURE_HEADER,
    AuthError,
    Claim,
    RequestVerifier,
    is_local_request,
)
from .messages import REQUEST_TYPES, MessageError, from_wire, to_wire

if TYPE_CHECKING:
    from .extension import ExtensionState

__all__ = ["MAX_BODY", "TOKEN_HEADER", "add_routes", "create_blueprint", "may_read_status"]

#: The largest RPC body accepted, in bytes. The largest valid message (a
#: heartbeat with 32 tags of 256 characters and a 2 KiB address) is about 11 KiB.
MAX_BODY = 16 * 1024
#: The header that carries the node's local token on ``POST <prefix>/transfer``.
TOKEN_HEADER = "X-Goelect-Token"

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

View = Callable[..., Any]

_log = logging.getLogger("flask_goelect")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response that does not depend on the app's JSON provider settings."""
    return Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        headers=headers,
        mimetype="application/json",
    )


def error_response(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return json_response({"error": error, "message": message}, status, headers)


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
            return error_response(code, name, exc.description or exc.name or "error")
        except Exception:
            current_app.logger.exception("flask-goelect: error in %s", request.path)
            return error_response(500, "internal_error", "the node failed to answer; see its log")

    return wrapper


class _RefusalLog:
    """Logs refused requests: at most one line per node and kind per interval.

    A flood of bad requests must not flood the log; the next line says how many
    were not logged.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}
        self._skipped: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()

    def log(self, node_id: str, kind: str, text: str) -> None:
        now = time.monotonic()
        key = (node_id, kind)
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._skipped[key] += 1
                return
            self._last[key] = now
            skipped = self._skipped.pop(key, 0)
        more = f" ({skipped} more like it in the last {self.interval:g}s not logged)"
        _log.warning("flask-goelect: node %r %s%s", node_id, text, more if skipped else "")


_refusals = _RefusalLog()


def _refuse(state: ExtensionState, exc: AuthError) -> Response:
    """The answer to a request refused by :mod:`flask_goelect.auth`, logged."""
    sender, cluster = _claimed(request.headers)
    _refusals.log(
        state.settings.node_id,
        exc.error,
        f"refused {request.method} {request.path[:100]!r} from {request.remote_addr}"
        f" (sender {sender!r}, cluster {cluster!r}):"
        f" {exc.status} {exc.error}: {exc.message}",
    )
    extra = (
        {"WWW-Authenticate": 'Goelect-HMAC-SHA256 realm="goelect"'} if exc.status == 401 else None
    )
    return error_response(exc.status, exc.error, exc.message, extra)


def _claimed(headers: Any) -> tuple[str, str]:
    """Who a request says it comes from, and its cluster (for the log: not checked)."""
    parts = headers.get(AUTH_HEADER, "").split(" ", 3)
    if len(parts) == 4:
        return parts[2][:70], parts[1][:70]
    return headers.get(SENDER_HEADER, "")[:70], headers.get(CLUSTER_HEADER, "")[:70]


def _check_request(verifier: RequestVerifier) -> Claim:
    """The request's claim, read straight from the WSGI environ: werkzeug's header
    lookup costs more than the rest of the check."""
    environ = request.environ
    return verifier.check(
        environ.get("HTTP_X_GOELECT_AUTH", ""),
        environ.get("HTTP_X_GOELECT_CLUSTER", ""),
        environ.get("HTTP_X_GOELECT_SENDER", ""),
    )


def _read_body(*, json_only: bool = True) -> bytes | Response:
    """The body, read at most to :data:`MAX_BODY`; a 415 or 413 answer instead."""
    if json_only and request.mimetype != "application/json":
        got = request.mimetype or "no Content-Type"
        return error_response(
            415, "unsupported_media_type", f"send the message as application/json, not {got}"
        )
    length = request.content_length
    if length is not None and length > MAX_BODY:
        return error_response(
            413, "payload_too_large", f"the body is {length} bytes; at most {MAX_BODY} allowed"
        )
    body = request.stream.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        return error_response(
            413, "payload_too_large", f"the body is over {MAX_BODY} bytes; that is the limit"
        )
    return body


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        return error_response(400, "bad_request", f"the body is not valid JSON: {exc}")


def _read_message_body() -> Any:
    body = _read_body()
    if isinstance(body, Response):
        return body
    return _parse_json(body)


def _signed(response: Response, state: ExtensionState, claim: Claim | None) -> Response:
    """Sign ``response`` for the verified request of ``claim`` (nothing without one)."""
    if claim is not None and claim.signed:
        signature = state.verifier.reply_signature(claim, response.status_code, response.get_data())
        response.headers[SIGNATURE_HEADER] = signature
    return response


def _rpc_view(kind: str) -> View:
    cls: Any = REQUEST_TYPES[kind]
    route = f"/rpc/{kind}"

    def rpc() -> Response:
        state = _state()
        verifier = state.verifier
        try:
            claim = _check_request(verifier)
        except AuthError as exc:
            return _refuse(state, exc)
        body = _read_body()
        if isinstance(body, Response):
            return body
        try:
            verifier.verify(claim, "POST", state.url_prefix + route, body)
        except AuthError as exc:
            return _refuse(state, exc)
        data = _parse_json(body)
        if isinstance(data, Response):
            return data
        try:
            msg = from_wire(cls, data)
        except MessageError as exc:
            return error_response(400, "bad_request", str(exc))
        try:
            if claim.sender and msg.sender != claim.sender:
                raise AuthError(
                    403,
                    "forbidden",
                    f"the message's sender {msg.sender!r} is not the sender of the request"
                    f" ({claim.sender!r})",
                )
            verifier.check_sender(msg.sender)
        except AuthError as exc:
            return _refuse(state, exc)
        reply = state.handle(msg)
        if reply is None:
            return error_response(503, "not_running", "the elector of this node is not running")
        return _signed(json_response(to_wire(reply)), state, claim)

    rpc.__name__ = f"rpc_{kind.replace('-', '_')}"
    return rpc


def _reader(state: ExtensionState, path: str) -> Claim | Response | None:
    """May this request read the node's status? Its verified claim if it is signed
    (for ``path``, the path it was signed for), None if it may read without one,
    else the refusal."""
    verifier = state.verifier
    if verifier.signs and request.environ.get("HTTP_X_GOELECT_AUTH"):
        try:
            claim = _check_request(verifier)
        except AuthError as exc:
            return _refuse(state, exc)
        body = _read_body(json_only=False)
        if isinstance(body, Response):
            return body
        try:
            verifier.verify(claim, request.method, path, body, allow_self=True)
        except AuthError as exc:
            return _refuse(state, exc)
        return claim
    if state.settings.status_public or is_local_request(
        request.remote_addr,
        request.headers,  # type: ignore[arg-type]
    ):
        return None
    return error_response(
        401,
        "status_not_public",
        "the status of this node is not public (GOELECT_STATUS_PUBLIC is false): read it"
        " from the node's host, or as a peer with a signed request",
        {"WWW-Authenticate": 'Goelect-HMAC-SHA256 realm="goelect"'},
    )


def _sees_details(state: ExtensionState, route: str) -> bool:
    """Whether ``/leader`` and ``/health`` may show ids, terms and addresses."""
    return not isinstance(_reader(state, state.url_prefix + route), Response)


def may_read_status() -> bool:
    """Whether the current request may see the cluster's topology.

    True when ``GOELECT_STATUS_PUBLIC`` is set, for a request from this host
    (loopback, not through a proxy), and for a request a peer signed for this
    path (its nonce is then spent). Pages of the host app that show
    ``elect.status()`` or ``elect.cluster_state()`` use it to follow the same
    rule as ``GET <prefix>/status``.
    """
    return not isinstance(_reader(_state(), request.path), Response)


def status() -> Response:
    """This node's view of the election (for the peers and this host, unless public)."""
    state = _state()
    reader = _reader(state, state.url_prefix + "/status")
    if isinstance(reader, Response):
        return reader
    return _signed(json_response(state.status()), state, reader)


def leader() -> Response:
    """200 only on the leader holding a valid lease: a load balancer's health check."""
    state = _state()
    snap = state.elector.snapshot
    is_leader = snap.is_leader()
    body: dict[str, Any] = {"is_leader": is_leader}
    if _sees_details(state, "/leader"):
        body = {
            "node_id": snap.node_id,
            "is_leader": is_leader,
            "state": snap.state,
            "term": snap.term,
            "leader_id": snap.leader_id,
            "leader_address": snap.leader_address or None,
        }
    return json_response(body, 200 if is_leader else 503)


def health() -> Response:
    """200 while the elector runs (whatever its role), else 503."""
    state = _state()
    running = state.running
    body: dict[str, Any] = {"running": running}
    if _sees_details(state, "/health"):
        snap = state.elector.snapshot
        body = {"node_id": snap.node_id, "running": running, "state": snap.state}
    return json_response(body, 200 if running else 503)


def transfer() -> Response:
    """Hand leadership over; used by ``flask goelect transfer`` on the node's host."""
    state = _state()
    token = state.admin_token
    given = request.headers.get(TOKEN_HEADER, "")
    if not token or not hmac.compare_digest(given.encode(), token.encode()):
        return error_response(
            403,
            "forbidden",
            f"send the node's local token in {TOKEN_HEADER} (the flask goelect transfer"
            " command reads it from the state file's lock)",
        )
    data: Any = {}
    if request.content_length:
        data = _read_message_body()
        if isinstance(data, Response):
            return data
    if not isinstance(data, dict) or set(data) - {"to"}:
        return error_response(400, "bad_request", 'send {"to": "<node id>"} or {"to": null}')
    to = data.get("to")
    if to is not None and not isinstance(to, str):
        return error_response(400, "bad_request", "'to' must be a node id or null")
    try:
        target = state.transfer_leadership(to)
    except Exception as exc:  # not leader, bad target, not running
        return error_response(409, "conflict", str(exc))
    return json_response({"transferred_to": target, "term": state.elector.snapshot.term})


def _not_allowed(allowed: tuple[str, ...]) -> View:
    def not_allowed(**kwargs: Any) -> Response:
        return error_response(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed here; use {', '.join(allowed)}",
            {"Allow": ", ".join((*allowed, "HEAD", "OPTIONS") if "GET" in allowed else allowed)},
        )

    return not_allowed


def _not_found(**kwargs: Any) -> Response:
    return error_response(
        404,
        "not_found",
        f"{request.path} is not a flask-goelect route; see the routes in the docs (api.md)",
    )


_ROUTES: list[tuple[str, str, Callable[[], View], tuple[str, ...]]] = [
    ("/rpc/vote", "rpc_vote", lambda: _rpc_view("vote"), ("POST",)),
    ("/rpc/heartbeat", "rpc_heartbeat", lambda: _rpc_view("heartbeat"), ("POST",)),
    ("/rpc/timeout-now", "rpc_timeout_now", lambda: _rpc_view("timeout-now"), ("POST",)),
    ("/status", "status", lambda: status, ("GET",)),
    ("/leader", "leader", lambda: leader, ("GET",)),
    ("/health", "health", lambda: health, ("GET",)),
    ("/transfer", "transfer", lambda: transfer, ("POST",)),
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
