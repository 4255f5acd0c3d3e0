"""Signed RPCs: who may talk to a node, and proof that a reply is the peer's.

With ``GOELECT_SECRET`` set, every request between nodes carries an
HMAC-SHA256 signature (:mod:`hmac`, compared with :func:`hmac.compare_digest`)
over everything that gives it meaning::

    goelect-v1 request, cluster, method, path, sender, recipient,
    timestamp, nonce, and the exact body bytes

and every reply one over the request it answers::

    goelect-v1 reply, cluster, responder, requester, the request's nonce,
    status code, and the exact body bytes

so that a request cannot be moved to another route, node or cluster, nor a
body swapped, and a recorded reply cannot answer another request. A signed
request carries its fields in one header, :data:`AUTH_HEADER`
(``v1 <cluster or -> <sender> <timestamp> <nonce> <signature>``); a reply its
signature in :data:`SIGNATURE_HEADER` (``v1=<signature>``). The recipient is
not sent, each side knows it. (One header rather than one per field: every
header costs a few microseconds in each HTTP stack it crosses, more than the
HMAC itself.) An unsigned request names its cluster in :data:`CLUSTER_HEADER`
and its sender in :data:`SENDER_HEADER`.

**Freshness.** A request is accepted only if its timestamp (wall clock, in
milliseconds: it crosses machines, so the monotonic clock cannot be used) is at
most ``max_age`` seconds old and at most ``max_ahead`` seconds in the future;
the extension uses the election timeout T plus :data:`MAX_CLOCK_SKEW` and
:data:`MAX_CLOCK_SKEW` (T bounds a request's useful life, since a call's read
timeout is T; the skew allowance keeps a cluster whose clocks drifted apart
electing). Replays inside the window are caught by :class:`ReplayCache`, a
bounded memory of the nonces of accepted requests.

**Key rotation.** A :class:`Keyring` holds one or more secrets: the first
signs, every one verifies.

Without a secret nothing is signed, but the cluster name and the sender id are
still sent and checked, which keeps two deployments on shared hosts apart by
accident (not against an attacker).

This module is pure (standard library only, no I/O, no Flask); the clock is
injected.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "AUTH_HEADER",
    "CLUSTER_HEADER",
    "MAX_CLOCK_SKEW",
    "MAX_SECRETS",
    "MIN_SECRET_LENGTH",
    "SENDER_HEADER",
    "SIGNATURE_HEADER",
    "AuthError",
    "Claim",
    "Keyring",
    "ReplayCache",
    "RequestSigner",
    "RequestVerifier",
    "is_local_request",
    "is_loopback",
    "reply_signing_string",
    "request_signing_string",
]

#: A signed request's fields: ``v1 <cluster or -> <sender> <timestamp ms> <nonce>
#: <hex signature>``.
AUTH_HEADER = "X-Goelect-Auth"
#: A signed reply's signature: ``v1=<hex signature>``.
SIGNATURE_HEADER = "X-Goelect-Signature"
#: The cluster's name on an unsigned request, when one is set (a signed request
#: names it in AUTH_HEADER).
CLUSTER_HEADER = "X-Goelect-Cluster"
#: The sender of an unsigned request (a signed one names it in AUTH_HEADER).
SENDER_HEADER = "X-Goelect-Sender"

#: Seconds two nodes' wall clocks may differ by. NTP keeps hosts within
#: milliseconds; 30 s also covers a host whose sync is late or a VM that was
#: paused, and a cluster that splits because of a clock step is worse than the
#: wider window (replays inside it are caught by the nonce cache anyway).
MAX_CLOCK_SKEW = 30.0
#: A shorter secret could be guessed offline from one recorded request.
MIN_SECRET_LENGTH = 16
#: At most this many secrets (the current one and those being rotated out).
MAX_SECRETS = 8
#: Nonces remembered at most; with a 50 ms heartbeat a peer sends about 700
#: requests in a 35 s window, so this holds the traffic of about 90 peers.
REPLAY_CACHE_SIZE = 65536

_VERSION = "v1"
#: SIGNATURE_HEADER in lower case, as clients that fold header names give it.
_SIGNATURE_KEY = SIGNATURE_HEADER.lower()
_HEX_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
# Cluster ("-" for none: a name cannot start with it), sender (both by the rule
# of messages.NODE_ID_PATTERN, kept here so that this module stays standalone),
# timestamp in ms, nonce, signature: one match.
_NAME = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"
_AUTH_RE = re.compile(
    rf"v1 ({_NAME}|-) ({_NAME}) ([0-9]{{1,16}}) ([A-Za-z0-9_-]{{16,64}}) ([0-9a-f]{{64}})"
)


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x)."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


#: Headers a reverse proxy adds: a request that carries one came through a
#: proxy, so its loopback source address says nothing about the real client.
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Host")


def is_local_request(remote_addr: str | None, headers: Mapping[str, str]) -> bool:
    """True for a request from this host that did not come through a proxy.

    A reverse proxy on the same host makes every request come from loopback;
    it adds ``X-Forwarded-For`` (or ``Forwarded``, ``X-Real-IP``), so such a
    request is not taken as local. A client that adds the header itself only
    makes itself less trusted.
    """
    if not is_loopback(remote_addr):
        return False
    return not any(headers.get(name) for name in FORWARDING_HEADERS)


class AuthError(Exception):
    """A request or reply was refused; ``status``, ``error`` and the text say why."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


def _shown(value: str) -> str:
    """A header value as it may appear in a message or a log: short and escaped."""
    return repr(value[:40] + ("..." if len(value) > 40 else ""))


class Keyring:
    """The shared secrets: the first signs, every one verifies.

    Its ``repr`` never shows a secret, so that a log of the settings does not
    leak it.
    """

    __slots__ = ("_macs",)

    def __init__(self, secrets: Iterable[str | bytes]) -> None:
        keys = tuple(s.encode() if isinstance(s, str) else bytes(s) for s in secrets)
        if not keys:
            raise ValueError("a Keyring needs at least one secret")
        # The keyed state is computed once per key and copied per message: a
        # third cheaper than hmac.digest(), which derives it on every call.
        self._macs = tuple(hmac.new(key, digestmod=hashlib.sha256) for key in keys)

    def __repr__(self) -> str:
        return f"<Keyring of {len(self._macs)} secret(s)>"

    def __len__(self) -> int:
        return len(self._macs)

    @staticmethod
    def _mac(keyed: hmac.HMAC, data: bytes) -> str:
        mac = keyed.copy()
        mac.update(data)
        return mac.hexdigest()

    def sign(self, data: bytes) -> str:
        """The signature of ``data`` with the first secret (64 hex digits)."""
        return self._mac(self._macs[0], data)

    def verify(self, data: bytes, signature: str) -> bool:
        """True if ``signature`` (64 hex digits) signs ``data`` with one of the secrets."""
        if not _HEX_SIGNATURE_RE.fullmatch(signature):
            return False
        given = signature.encode("ascii")
        ok = False
        for keyed in self._macs:
            # Every key is tried, so the time taken does not say which one matched.
            ok |= hmac.compare_digest(self._mac(keyed, data).encode("ascii"), given)
        return ok


def request_signing_string(
    *,
    cluster: str,
    method: str,
    path: str,
    sender: str,
    recipient: str,
    timestamp: str,
    nonce: str,
    body: bytes,
) -> bytes:
    """What a request's signature covers.

    Every field but the body is checked to be free of newlines before it gets
    here (ids and the cluster by pattern, the path is the route's), so joining
    a fixed number of fields with newlines cannot make two requests look alike.
    """
    head = "\n".join(
        ("goelect-v1 request", cluster, method, path, sender, recipient, timestamp, nonce, "")
    )
    return head.encode("utf-8") + body


def reply_signing_string(
    *, cluster: str, responder: str, requester: str, nonce: str, status: int, body: bytes
) -> bytes:
    """What a reply's signature covers: it is bound to the request's nonce."""
    head = "\n".join(("goelect-v1 reply", cluster, responder, requester, nonce, str(status), ""))
    return head.encode("utf-8") + body


class ReplayCache:
    """The nonces of accepted requests, until they are too old to be accepted anyway.

    :meth:`add` returns False for a nonce already seen. Entries leave the cache
    when their timestamp falls out of the window, or, when more than
    ``capacity`` are held, the oldest first; either way the cache remembers the
    newest timestamp it forgot (:attr:`floor`) and refuses any request not newer
    than it. A nonce it forgot can therefore never be accepted again, even if
    the wall clock steps back. Only requests with a valid signature are added:
    an attacker without the secret cannot fill it.
    """

    def __init__(self, capacity: int = REPLAY_CACHE_SIZE) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, not {capacity!r}")
        self.capacity = capacity
        #: Requests with a timestamp at or below this (ms) are refused.
        self.floor = -1
        self._seen: set[tuple[str, str]] = set()
        self._by_time: list[tuple[int, str, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, sender: str, nonce: str, timestamp_ms: int, oldest_ms: int) -> bool:
        """Remember ``nonce``; False if it was seen (a replay) or is below the floor.

        ``oldest_ms`` is the oldest timestamp the window still accepts: older
        entries are forgotten first.
        """
        key = (sender, nonce)
        with self._lock:
            heap = self._by_time
            while heap and (heap[0][0] < oldest_ms or len(heap) >= self.capacity):
                ts, s, n = heapq.heappop(heap)
                self._seen.discard((s, n))
                if ts > self.floor:
                    self.floor = ts
            if timestamp_ms <= self.floor or key in self._seen:
                return False
            self._seen.add(key)
            heapq.heappush(heap, (timestamp_ms, sender, nonce))
            return True


def _new_nonce() -> str:
    return os.urandom(16).hex()


class _Party:
    """What both ends of a signed exchange hold: the keys, the cluster, this node."""

    keyring: Keyring | None
    cluster: str
    node_id: str

    def __repr__(self) -> str:
        signed = "signed" if self.keyring is not None else "unsigned"
        return f"<{type(self).__name__} {self.node_id!r} cluster={self.cluster!r} {signed}>"

    @property
    def signs(self) -> bool:
        """Whether a secret is configured (else nothing is signed or checked)."""
        return self.keyring is not None


class RequestSigner(_Party):
    """The client's side: headers for a request, and the check of its reply.

    :param keyring: the secrets, or None to sign nothing (only the cluster and
        sender headers are sent).
    :param cluster: this cluster's name (``""`` for none).
    :param node_id: this node's id, the sender of every request.
    :param clock: wall-clock time in seconds (``time.time``).
    """

    def __init__(
        self,
        keyring: Keyring | None,
        cluster: str,
        node_id: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keyring = keyring
        self.cluster = cluster
        self.node_id = node_id
        self._clock = clock

    def request_headers(
        self, method: str, path: str, recipient: str, body: bytes
    ) -> tuple[dict[str, str], str]:
        """The headers of one request and its nonce (``""`` when nothing is signed).

        ``path`` is the path after the peer's base address (``<prefix>/rpc/vote``).
        """
        keyring = self.keyring
        if keyring is None:
            headers = {SENDER_HEADER: self.node_id}
            if self.cluster:
                headers[CLUSTER_HEADER] = self.cluster
            return headers, ""
        timestamp = str(int(self._clock() * 1000))
        nonce = _new_nonce()
        data = request_signing_string(
            cluster=self.cluster,
            method=method,
            path=path,
            sender=self.node_id,
            recipient=recipient,
            timestamp=timestamp,
            nonce=nonce,
            body=body,
        )
        signature = keyring.sign(data)
        cluster = self.cluster or "-"
        auth = f"{_VERSION} {cluster} {self.node_id} {timestamp} {nonce} {signature}"
        return {AUTH_HEADER: auth}, nonce

    def verify_reply(
        self,
        recipient: str,
        nonce: str,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> None:
        """Accept a reply only if ``recipient`` signed it for the request of ``nonce``.

        :raises AuthError: unsigned or forged (nothing is checked without a secret).
        """
        keyring = self.keyring
        if keyring is None:
            return
        signature = headers.get(SIGNATURE_HEADER) or headers.get(_SIGNATURE_KEY) or ""
        if not signature:
            raise AuthError(
                401,
                "unsigned_reply",
                f"the reply of {recipient!r} is not signed: is GOELECT_SECRET set on that node?",
            )
        data = reply_signing_string(
            cluster=self.cluster,
            responder=recipient,
            requester=self.node_id,
            nonce=nonce,
            status=status,
            body=body,
        )
        if not (signature.startswith("v1=") and keyring.verify(data, signature[3:])):
            raise AuthError(
                401,
                "bad_reply_signature",
                f"the reply of {recipient!r} has a wrong signature: check that GOELECT_SECRET"
                " and GOELECT_CLUSTER are the same on both nodes",
            )


@dataclass(frozen=True, slots=True)
class Claim:
    """Who a request says it comes from, read from its headers (not yet proved)."""

    sender: str
    timestamp: str
    nonce: str
    signature: str

    @property
    def signed(self) -> bool:
        return bool(self.signature)


class RequestVerifier(_Party):
    """The server's side: is a request from a peer of this cluster, fresh and unseen?

    Checks run cheapest first, and a body is read only after its headers passed
    (:meth:`check_headers`, then :meth:`verify` over the body). Refusals raise
    :class:`AuthError`: 409 for another cluster, 401 for a request that is
    unsigned, forged, too old, from the future or replayed, 403 for a sender
    that is not a peer of this node.

    :param keyring: the secrets, or None: then only the cluster and the sender
        are checked, and :meth:`verify` accepts every body.
    :param cluster: this cluster's name (``""`` for none).
    :param node_id: this node's id (the recipient in the signature).
    :param peers: the ids that may send requests (this node excluded).
    :param max_age: seconds a request's timestamp may be in the past.
    :param max_ahead: seconds it may be in the future.
    :param clock: wall-clock time in seconds (``time.time``).
    """

    def __init__(
        self,
        keyring: Keyring | None,
        cluster: str,
        node_id: str,
        peers: Iterable[str],
        *,
        max_age: float,
        max_ahead: float = MAX_CLOCK_SKEW,
        clock: Callable[[], float] = time.time,
        cache: ReplayCache | None = None,
    ) -> None:
        if max_age <= 0 or max_ahead < 0:
            raise ValueError(f"bad window: max_age={max_age!r}, max_ahead={max_ahead!r}")
        self.keyring = keyring
        self.cluster = cluster
        self.node_id = node_id
        self.peers = frozenset(peers) - {node_id}
        self.max_age = float(max_age)
        self.max_ahead = float(max_ahead)
        self.cache = cache if cache is not None else ReplayCache()
        self._clock = clock

    def _check_cluster(self, claimed: str) -> None:
        """409 unless the request names this node's cluster (or none, when it has none)."""
        if claimed != self.cluster:
            raise AuthError(
                409,
                "wrong_cluster",
                f"this node belongs to another cluster than {_shown(claimed)}: check"
                " GOELECT_CLUSTER and GOELECT_PEERS of the sender",
            )

    def check_headers(self, headers: Mapping[str, str]) -> Claim:
        """Check what the headers claim before any body is read (see :meth:`check`)."""
        return self.check(
            headers.get(AUTH_HEADER) or "",
            headers.get(CLUSTER_HEADER) or "",
            headers.get(SENDER_HEADER) or "",
        )

    def check(self, auth: str, cluster: str = "", sender: str = "") -> Claim:
        """Check the values of a request's :data:`AUTH_HEADER`, :data:`CLUSTER_HEADER`
        and :data:`SENDER_HEADER` (``""`` for a missing one) before its body is read.

        :raises AuthError: 409 (another cluster, named in the auth header or, on
            an unsigned request, in the cluster header), 401 (unsigned, malformed
            or stale). Without a secret only the cluster is checked; the caller
            checks the sender the message names (:meth:`check_sender`).
        """
        match = _AUTH_RE.fullmatch(auth) if auth else None
        if match is not None:
            claimed = match.group(1)
            self._check_cluster("" if claimed == "-" else claimed)
        elif not auth or self.keyring is None:
            self._check_cluster(cluster)
        if self.keyring is None:
            return Claim(match.group(2) if match is not None else sender, "", "", "")
        if not auth:
            raise AuthError(
                401,
                "unauthorized",
                f"the request is not signed (no {AUTH_HEADER} header): nodes of this cluster"
                " sign every request with GOELECT_SECRET",
            )
        if match is None:
            raise AuthError(
                401,
                "unauthorized",
                f"{AUTH_HEADER} must be 'v1 <cluster or -> <sender> <Unix time in ms> <nonce of"
                " 16-64 [A-Za-z0-9_-]> <64 hex digits>'",
            )
        _, sender, timestamp, nonce, signature = match.groups()
        now_ms = self._clock() * 1000
        age = (now_ms - int(timestamp)) / 1000
        if age > self.max_age:
            raise AuthError(
                401,
                "stale_request",
                f"the request was signed {age:.1f}s ago; at most {self.max_age:g}s is accepted"
                " (a replay, or the clocks of the nodes differ: keep them in sync with NTP)",
            )
        if -age > self.max_ahead:
            raise AuthError(
                401,
                "stale_request",
                f"the request is signed {-age:.1f}s in the future; at most {self.max_ahead:g}s"
                " is accepted (the clocks of the nodes differ: keep them in sync with NTP)",
            )
        return Claim(sender, timestamp, nonce, signature)

    def check_sender(self, sender: str, *, allow_self: bool = False) -> None:
        """403 unless ``sender`` is a peer of this node (or this node, with ``allow_self``)."""
        if sender not in self.peers and not (allow_self and sender == self.node_id):
            raise AuthError(
                403,
                "forbidden",
                f"{_shown(sender)} is not a peer of this node: list it in GOELECT_PEERS",
            )

    def verify(
        self, claim: Claim, method: str, path: str, body: bytes, *, allow_self: bool = False
    ) -> None:
        """Check the signature over the body, then that the request is new.

        The nonce is remembered only once the signature holds, so that forged
        requests cannot fill the cache. The sender is checked against the peers
        only then too: who is a peer is not told to strangers. ``allow_self``
        accepts this node's own id (its ``flask goelect`` commands read its status).

        :raises AuthError: 401 (forged, replayed), 403 (not a peer).
        """
        keyring = self.keyring
        if keyring is None:
            return
        data = request_signing_string(
            cluster=self.cluster,
            method=method,
            path=path,
            sender=claim.sender,
            recipient=self.node_id,
            timestamp=claim.timestamp,
            nonce=claim.nonce,
            body=body,
        )
        if not keyring.verify(data, claim.signature):
            raise AuthError(
                401,
                "bad_signature",
                "the signature does not match: check that GOELECT_SECRET and GOELECT_CLUSTER"
                " are the same on every node and that the request reached the node it was"
                " signed for",
            )
        self.check_sender(claim.sender, allow_self=allow_self)
        oldest_ms = int((self._clock() - self.max_age) * 1000)
        if not self.cache.add(claim.sender, claim.nonce, int(claim.timestamp), oldest_ms):
            raise AuthError(401, "replayed_request", "this request was already received")

    def reply_signature(self, claim: Claim, status: int, body: bytes) -> str:
        """The :data:`SIGNATURE_HEADER` value of the reply to a verified signed request."""
        keyring = self.keyring
        if keyring is None or not claim.nonce:
            raise ValueError("only the reply to a verified signed request is signed")
        data = reply_signing_string(
            cluster=self.cluster,
            responder=self.node_id,
            requester=claim.sender,
            nonce=claim.nonce,
            status=status,
            body=body,
        )
        return f"{_VERSION}={keyring.sign(data)}"

    def reply_headers(self, claim: Claim, status: int, body: bytes) -> dict[str, str]:
        """The signature header of the reply to a verified request (none unsigned)."""
        if self.keyring is None or not claim.nonce:
            return {}
        return {SIGNATURE_HEADER: self.reply_signature(claim, status, body)}
