"""The server side of the election protocol, without Flask: ``(kind, headers, body) -> answer``.

:class:`RpcServer` answers what a peer's :class:`~flask_goelect.transport.HttpTransport`
sends (``POST <prefix>/rpc/<kind>``) and checks who may read a node's status
(``GET <prefix>/status``). The Flask routes (:mod:`flask_goelect.views`) only
route requests here and turn the :class:`~flask_goelect._answers.Answer` into a
response; the tests, the fuzzer and a plain WSGI app can call it directly.

An RPC is checked cheapest first, and its state is never touched by bad input:

1. the headers (:meth:`~flask_goelect.auth.RequestVerifier.check`): 409 for
   another cluster, 401 for a missing, malformed or stale signature;
2. the body's type and size, before and while it is read: 415 unless
   ``application/json``, 413 over :data:`MAX_BODY` bytes;
3. the signature over the body, then the nonce (401 forged or replayed);
4. the JSON and the message (400), then the message's sender against the
   request's (403);
5. only then the elector steps the message (503 when it is not running), and
   the reply to a signed request is signed. The core refuses a message from a
   node configured with another voter set before it reads anything else in it
   (:class:`~flask_goelect.core.VoterSetMismatch`): 409 ``voter_set_mismatch``.

Refusals are logged at most once per node and kind per ten seconds, and
counted by their error code in :attr:`RpcServer.refused`.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, NamedTuple

from ._answers import Answer, error_answer, json_answer
from .auth import (
    AUTH_HEADER,
    CLUSTER_HEADER,
    SENDER_HEADER,
    SIGNATURE_HEADER,
    AuthError,
    Claim,
    RequestVerifier,
)
from .core import VoterSetMismatch
from .messages import REQUEST_TYPES, MessageError, Reply, Request, from_wire, to_wire
from .state import NotRunning

__all__ = [
    "MAX_BODY",
    "StatusRead",
    "RPC_KINDS",
    "Body",
    "Headers",
    "RefusalLog",
    "RpcServer",
    "headers_from_environ",
]

#: The largest RPC body accepted, in bytes. The largest valid message (a
#: heartbeat with 32 tags of 256 characters and a 2 KiB address) is about 11 KiB.
MAX_BODY = 16 * 1024

#: The RPC kinds, as in ``POST <prefix>/rpc/<kind>``.
RPC_KINDS = tuple(REQUEST_TYPES)

#: The request headers the server reads, by lower-case name.
Headers = Mapping[str, str]
#: A request body: its bytes, or a stream to read it from (read only if needed).
Body = bytes | IO[bytes]


class StatusRead(NamedTuple):
    """A request to read a node's status (``GET <prefix>/status``, ``/leader``...).

    ``may_read_unsigned``: whether it may read without a signature (the status
    is public, or the request comes from this host, not through a proxy).
    """

    method: str
    path: str
    headers: Headers
    body: Body
    remote_addr: str
    may_read_unsigned: bool


#: ``WWW-Authenticate`` of every 401.
_CHALLENGE = {"WWW-Authenticate": 'Goelect-HMAC-SHA256 realm="goelect"'}

#: WSGI environ key -> the header name the server reads.
_ENVIRON_HEADERS = {
    "CONTENT_TYPE": "content-type",
    "CONTENT_LENGTH": "content-length",
    "HTTP_" + AUTH_HEADER.upper().replace("-", "_"): AUTH_HEADER.lower(),
    "HTTP_" + CLUSTER_HEADER.upper().replace("-", "_"): CLUSTER_HEADER.lower(),
    "HTTP_" + SENDER_HEADER.upper().replace("-", "_"): SENDER_HEADER.lower(),
}

_log = logging.getLogger("flask_goelect")


def headers_from_environ(environ: Mapping[str, Any]) -> dict[str, str]:
    """The headers :class:`RpcServer` reads, straight from a WSGI environ.

    Reading five keys of the environ costs far less than a framework's header
    object, which matters on a path taken by every heartbeat.
    """
    return {name: environ[key] for key, name in _ENVIRON_HEADERS.items() if key in environ}


class RefusalLog:
    """Logs refused requests: at most one line per node and kind per interval.

    A flood of bad requests must not flood the log; the next line says how many
    were not logged.
    """

    def __init__(self, interval: float = 10.0, logger: logging.Logger | None = None) -> None:
        self.interval = interval
        self._logger = logger if logger is not None else _log
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
        self._logger.warning("flask-goelect: node %r %s%s", node_id, text, more if skipped else "")


#: The log every server of this process shares.
refusals = RefusalLog()


def _claimed(headers: Headers) -> tuple[str, str]:
    """Who a request says it comes from, and its cluster (for the log: not checked)."""
    parts = headers.get(AUTH_HEADER.lower(), "").split(" ", 3)
    if len(parts) == 4:
        return parts[2][:70], parts[1][:70]
    return headers.get(SENDER_HEADER.lower(), "")[:70], headers.get(CLUSTER_HEADER.lower(), "")[:70]


def _voters(fingerprint: str) -> str:
    count = fingerprint.partition(":")[0]
    return f"{count} voter{'' if count == '1' else 's'}"


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def _mimetype(headers: Headers) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


class RpcServer:
    """Answers one node's peers: RPCs, and who may read its status.

    :param verifier: checks the requests and signs the replies.
    :param handle: steps a message and returns the reply; raises
        :class:`~flask_goelect.state.NotRunning` when the elector does not run.
    :param url_prefix: where the routes are mounted (part of what is signed);
        it may be set later, when a host's blueprint is registered.
    :param refusal_log: where refusals are logged (default: the shared one).
    """

    def __init__(
        self,
        verifier: RequestVerifier,
        handle: Callable[[Request], Reply],
        url_prefix: str = "/_goelect",
        *,
        refusal_log: RefusalLog | None = None,
    ) -> None:
        self.verifier = verifier
        self.handle = handle
        self.url_prefix = url_prefix
        self.refusals = refusal_log if refusal_log is not None else refusals
        #: Requests answered with an error, by its code (``"voter_set_mismatch"``,
        #: ``"bad_signature"``, ``"bad_request"``, ...), since this server was made.
        self.refused: collections.Counter[str] = collections.Counter()
        self._refused_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<RpcServer {self.verifier.node_id!r} at {self.url_prefix!r}>"

    # -- RPCs ------------------------------------------------------------------------

    def serve(self, kind: str, headers: Headers, body: Body, *, remote_addr: str = "") -> Answer:
        """Answer ``POST <prefix>/rpc/<kind>`` (``headers`` by lower-case name)."""
        answer = self._serve(kind, headers, body, remote_addr)
        if answer.status != 200:
            self._count(answer)
        return answer

    def _serve(self, kind: str, headers: Headers, body: Body, remote_addr: str) -> Answer:
        cls: Any = REQUEST_TYPES.get(kind)
        path = f"{self.url_prefix}/rpc/{kind}"
        if cls is None:
            return error_answer(404, "not_found", f"{path} is not an RPC of this protocol")
        verifier = self.verifier
        try:
            claim = self._check_headers(headers)
        except AuthError as exc:
            return self.refuse(exc, "POST", path, headers, remote_addr)
        data = self.read_body(headers, body)
        if isinstance(data, Answer):
            return data
        try:
            verifier.verify(claim, "POST", path, data)
        except AuthError as exc:
            return self.refuse(exc, "POST", path, headers, remote_addr)
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError) as exc:
            return error_answer(400, "bad_request", f"the body is not valid JSON: {exc}")
        try:
            msg = from_wire(cls, parsed)
        except MessageError as exc:
            return error_answer(400, "bad_request", str(exc))
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
            return self.refuse(exc, "POST", path, headers, remote_addr)
        try:
            reply = self.handle(msg)
        except NotRunning:
            return error_answer(503, "not_running", "the elector of this node is not running")
        except VoterSetMismatch as exc:
            return self.sign(self._voter_set_mismatch(exc, path, remote_addr), claim)
        return self.sign(json_answer(to_wire(reply)), claim)

    def _voter_set_mismatch(self, exc: VoterSetMismatch, path: str, remote_addr: str) -> Answer:
        """409: the sender counts another voter set; nothing was changed."""
        message = (
            f"node {exc.sender!r} sent a voter set of {_voters(exc.theirs)} (fingerprint"
            f" {exc.theirs}) but node {exc.node_id!r} has {_voters(exc.ours)} (fingerprint"
            f" {exc.ours}): nodes that count different majorities can elect two leaders in"
            " one term, so they refuse each other. Check GOELECT_PEERS and GOELECT_NOVOTE"
            " on both nodes; to change who votes, see docs/membership.md"
        )
        self.refusals.log(
            self.verifier.node_id,
            "voter_set_mismatch",
            f"refused POST {path[:100]!r} from {remote_addr or None}: 409 voter_set_mismatch:"
            f" {message}",
        )
        return error_answer(409, "voter_set_mismatch", message)

    def _count(self, answer: Answer) -> None:
        try:
            error = json.loads(answer.body)["error"]
        except (ValueError, KeyError, TypeError):
            error = f"http_{answer.status}"
        with self._refused_lock:
            self.refused[str(error)[:64]] += 1

    # -- status readers ----------------------------------------------------------------

    def reader(self, read: StatusRead) -> Claim | Answer | None:
        """May this request read the node's status?

        Its verified :class:`~flask_goelect.auth.Claim` if a peer (or this node)
        signed it for ``read.path``; None if it may read unsigned
        (``read.may_read_unsigned``: the status is public, or the request is
        local); else the refusal to send (counted in :attr:`refused`).
        """
        result = self._reader(*read)
        if isinstance(result, Answer):
            self._count(result)
        return result

    def _reader(
        self,
        method: str,
        path: str,
        headers: Headers,
        body: Body,
        remote_addr: str,
        may_read_unsigned: bool,
    ) -> Claim | Answer | None:
        verifier = self.verifier
        if verifier.signs and headers.get(AUTH_HEADER.lower()):
            try:
                claim = self._check_headers(headers)
            except AuthError as exc:
                return self.refuse(exc, method, path, headers, remote_addr)
            data = self.read_body(headers, body, json_only=False)
            if isinstance(data, Answer):
                return data
            try:
                verifier.verify(claim, method, path, data, allow_self=True)
            except AuthError as exc:
                return self.refuse(exc, method, path, headers, remote_addr)
            return claim
        if may_read_unsigned:
            return None
        return error_answer(
            401,
            "status_not_public",
            "the status of this node is not public (GOELECT_STATUS_PUBLIC is false): read it"
            " from the node's host, or as a peer with a signed request",
            dict(_CHALLENGE),
        )

    # -- pieces ----------------------------------------------------------------------------

    def _check_headers(self, headers: Headers) -> Claim:
        return self.verifier.check(
            headers.get(AUTH_HEADER.lower(), ""),
            headers.get(CLUSTER_HEADER.lower(), ""),
            headers.get(SENDER_HEADER.lower(), ""),
        )

    @staticmethod
    def read_body(headers: Headers, body: Body, *, json_only: bool = True) -> bytes | Answer:
        """The body, read at most to :data:`MAX_BODY`; a 415 or 413 answer instead."""
        if json_only:
            mimetype = _mimetype(headers)
            if mimetype != "application/json":
                got = mimetype or "no Content-Type"
                return error_answer(
                    415,
                    "unsupported_media_type",
                    f"send the message as application/json, not {got}",
                )
        length = _content_length(headers)
        if length is not None and length > MAX_BODY:
            return error_answer(
                413, "payload_too_large", f"the body is {length} bytes; at most {MAX_BODY} allowed"
            )
        data = body if isinstance(body, bytes) else body.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            return error_answer(
                413, "payload_too_large", f"the body is over {MAX_BODY} bytes; that is the limit"
            )
        return data

    def sign(self, answer: Answer, claim: Claim | None) -> Answer:
        """``answer`` signed for the verified request of ``claim`` (as is without one)."""
        if claim is None or not claim.signed:
            return answer
        signature = self.verifier.reply_signature(claim, answer.status, answer.body)
        return Answer(answer.status, {**answer.headers, SIGNATURE_HEADER: signature}, answer.body)

    def refuse(
        self, exc: AuthError, method: str, path: str, headers: Headers, remote_addr: str = ""
    ) -> Answer:
        """The answer to a request refused by :mod:`flask_goelect.auth`, logged."""
        sender, cluster = _claimed(headers)
        self.refusals.log(
            self.verifier.node_id,
            exc.error,
            f"refused {method} {path[:100]!r} from {remote_addr or None}"
            f" (sender {sender!r}, cluster {cluster!r}):"
            f" {exc.status} {exc.error}: {exc.message}",
        )
        return error_answer(
            exc.status, exc.error, exc.message, dict(_CHALLENGE) if exc.status == 401 else None
        )
