"""How a node reaches its peers: one request, one reply, with a deadline on every call.

:class:`Transport` is what the runner needs: :meth:`~Transport.send` delivers a
request to a peer and returns the peer's reply, :meth:`~Transport.get_status`
reads a peer's view of the cluster, :meth:`~Transport.close` releases
everything; a transport may also have ``prepare(peer)``, which the runner calls
once per peer at start to set up what a first call would otherwise pay for.
Every failure (peer down, timeout, HTTP error, a reply that does not
parse or that claims to come from another node) is one exception type,
:class:`TransportError`, whose text names the peer and the problem; a peer
configured with another voter set answers 409 ``voter_set_mismatch``, and the
text names it and says what to check.

:class:`HttpTransport` speaks the wire contract of DESIGN.md over HTTP with
``requests``: ``POST {address}{prefix}/rpc/{vote|heartbeat|timeout-now}`` with the
JSON of the message, JSON reply. There are no retries: the election timer is the
retry, and a retried heartbeat arrives too late to be worth anything.

:class:`MemoryTransport` delivers in-process to registered handlers, for tests:
it can cut links (both ways or one way), black-hole a node (calls hang until
their deadline, then fail) and delay every delivery.

This module does blocking I/O and knows nothing about gevent: the runner
decides where a call runs (a greenlet in a monkey-patched process, a native
thread otherwise) so that one slow peer never delays the others.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, Protocol

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import ConnectionPool, HTTPConnectionPool

from . import _hooks, core, messages
from ._httpclient import HttpError, RpcClient
from .auth import AuthError, RequestSigner
from .messages import Reply, Request

__all__ = [
    "RPC_KINDS",
    "HttpTransport",
    "MemoryTransport",
    "Transport",
    "TransportError",
    "ask_statuses",
    "forget_connections_after_fork",
]

#: The route name of each request type (``POST {prefix}/rpc/{kind}``).
RPC_KINDS: dict[type[Request], str] = {cls: kind for kind, cls in messages.REQUEST_TYPES.items()}

#: A ``(connect, read)`` deadline in seconds, as ``requests`` takes it.
Timeout = tuple[float, float]


class TransportError(Exception):
    """A call to a peer failed; the text says which peer and what went wrong."""


class Transport(Protocol):
    """Sends requests to peers and returns their replies.

    Implementations must be safe to call concurrently for *different* peers
    (the runner sends to each peer from its own greenlet or thread).
    """

    def send(self, peer: core.Peer, msg: Request, timeout: Timeout) -> Reply:
        """Deliver ``msg`` to ``peer`` and return its reply.

        Blocks for at most about ``connect + read`` seconds.

        :raises TransportError: the peer cannot be reached in time, answered
            with an error, or sent a reply that is malformed or not its own.
        """
        ...

    def get_status(self, peer: core.Peer, timeout: Timeout) -> dict[str, Any]:
        """Return ``peer``'s view of the cluster (its ``GET {prefix}/status``).

        :raises TransportError: as for :meth:`send`.
        """
        ...

    def close(self) -> None:
        """Release connections; later calls raise :class:`TransportError`. Idempotent."""
        ...


def _check_reply(peer: core.Peer, msg: Request, reply: object) -> Reply:
    """Accept ``reply`` only if it answers ``msg`` and comes from ``peer``."""
    expected = messages.REPLY_FOR[type(msg)]
    if not isinstance(reply, expected):
        raise TransportError(
            f"peer {peer.id!r} answered a {type(msg).__name__} with"
            f" {type(reply).__name__}, not {expected.__name__}"
        )
    if reply.sender != peer.id:
        # A misrouted or forged reply must not be counted as the peer's vote or ack.
        raise TransportError(
            f"reply from peer {peer.id!r} claims to come from {reply.sender!r};"
            " check that the peer's address belongs to that node"
        )
    return reply


# -- HTTP -------------------------------------------------------------------------

#: Largest reply body accepted from a peer (replies are well under 1 KiB).
MAX_REPLY_BYTES = 64 * 1024

_LIVE_HTTP_TRANSPORTS: weakref.WeakSet[HttpTransport] = weakref.WeakSet()


class _PeerLink:
    """One peer's session, and its routes prepared once each."""

    __slots__ = ("address", "routes", "session")

    def __init__(self, address: str, session: requests.Session) -> None:
        self.address = address
        self.session = session
        self.routes: dict[tuple[str, str], _Route] = {}


class _Route:
    """A request to one peer's route, prepared once, and how to send copies of it.

    The session's headers, auth, cookies, proxies and TLS settings are applied
    once, when the route is first used; each call then goes straight to the
    session's adapter (what ``Session.send`` would do, without resolving the
    proxies, running hooks and storing cookies again on every heartbeat).
    """

    __slots__ = ("adapter", "cert", "proxies", "template", "verify")

    def __init__(self, session: requests.Session, template: requests.PreparedRequest) -> None:
        url = template.url or ""
        self.template = template
        self.adapter = session.get_adapter(url)
        # As Session.send passes them (its types are looser than the adapter's).
        self.verify: Any = session.verify
        self.cert: Any = session.cert
        self.proxies = requests.utils.resolve_proxies(
            template, dict(session.proxies), session.trust_env
        )

    def new_request(self) -> requests.PreparedRequest:
        """A copy of the template to send (without its cookie jar: the session's
        cookies are already in its headers, and nothing reads the jar)."""
        template = self.template
        request = requests.PreparedRequest()
        request.method = template.method
        request.url = template.url
        request.headers = template.headers.copy()
        request.hooks = template.hooks
        return request


class _PeerConnection(HTTPConnection):
    """A plain-HTTP connection tuned for small calls on a kept-alive socket.

    * The request goes out in one ``send``: ``http.client`` sends the header
      block and the body separately, and on loopback each send costs a
      segment, an ACK and a wake-up of the peer.
    * Before a pooled connection is reused, urllib3 asks whether the peer
      closed it (a restarted peer does) with a ``poll()``, which in a
      gevent-patched process is a trip through the hub; a non-blocking
      ``MSG_PEEK`` answers the same question (readable: closed, or stray bytes;
      would block: still good) at a fraction of the cost.
    """

    _joining = False
    _head: bytes | None = None

    def request(
        self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any
    ) -> None:
        # The first send of a request is the header block: it waits for the body.
        self._joining = True
        try:
            super().request(method, url, body, headers, **kwargs)
            head, self._head = self._head, None
            if head is not None:  # no body followed
                super().send(head)
        finally:
            self._joining = False
            self._head = None

    def send(self, data: Any) -> None:
        if self._joining:
            head = self._head
            if head is None and isinstance(data, bytes):
                self._head = data
                return
            self._joining = False
            self._head = None
            if head is not None:
                if isinstance(data, bytes):
                    data = head + data
                else:
                    super().send(head)
        super().send(data)

    @property
    def is_connected(self) -> bool:
        sock = self.sock
        if sock is None:
            return False
        timeout = sock.gettimeout()
        try:
            sock.settimeout(0.0)
            sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True  # nothing to read: idle and open
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)
        return False  # end of stream, or bytes nobody asked for


class _PeerPool(HTTPConnectionPool):
    ConnectionCls = _PeerConnection


class _PeerAdapter(HTTPAdapter):
    """``requests``' adapter, trimmed for many small calls to one peer.

    No retries (the election timer is the retry), a pool of up to 4
    connections (one per call in flight: the runner makes one at a time per
    peer, a status query may add one), :class:`_PeerConnection` for plain
    HTTP. Per call it skips what only matters to a general-purpose client:
    looking the connection pool up and parsing the URL again (both are kept
    per URL), extracting cookies into the :class:`requests.Response` (the
    caller reads the body from ``response.raw``).
    """

    def __init__(self) -> None:
        self._pools: dict[tuple[str, Any, Any], ConnectionPool] = {}
        self._paths: dict[str, str] = {}
        super().__init__(pool_connections=1, pool_maxsize=4, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        classes = dict(self.poolmanager.pool_classes_by_scheme)
        classes["http"] = _PeerPool
        self.poolmanager.pool_classes_by_scheme = classes
        self._pools = {}

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: Mapping[str, str] | None = None,
        cert: Any = None,
    ) -> ConnectionPool:
        if proxies:
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        key = (request.url or "", verify, cert)
        pool = self._pools.get(key)
        if isinstance(pool, HTTPConnectionPool) and pool.pool is not None:
            return pool
        # Not seen yet, or closed (the pool manager was cleared).
        pool = self._pools[key] = super().get_connection_with_tls_context(
            request, verify, proxies, cert
        )
        return pool

    def request_url(
        self, request: requests.PreparedRequest, proxies: Mapping[str, str] | None
    ) -> str:
        if proxies:
            return super().request_url(request, proxies)
        url = request.url or ""
        path = self._paths.get(url)
        if path is None:
            path = self._paths[url] = super().request_url(request, proxies)
        return path

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = resp.status
        response.headers = CaseInsensitiveDict(resp.headers)
        response.reason = resp.reason
        response.raw = resp
        response.url = req.url or ""
        response.request = req
        response.connection = self
        return response

    def close(self) -> None:
        self._pools = {}
        super().close()


class HttpTransport:
    """Calls peers over HTTP: the RPCs through a lean client on kept-alive sockets,
    status queries with ``requests`` (one ``Session`` per peer); no retries.

    :param url_prefix: where the peers mounted the election routes
        (``GOELECT_URL_PREFIX``, default ``/_goelect``).
    :param session_factory: makes the per-peer sessions (for TLS settings,
        client certificates, custom adapters); an adapter with ``max_retries=0``
        is mounted on each for ``http://`` and ``https://`` (an adapter the
        factory mounted for a longer prefix, e.g. the peer's own URL, wins).
    :param trust_env: whether sessions read proxy and ``.netrc`` settings from the
        environment. Off by default: traffic between replicas should go direct,
        and reading ``~/.netrc`` on every heartbeat costs CPU.
    :param ssl_context: the TLS settings of the lean client for ``https://`` peers
        (default: the system's trust store).
    :param lean: send the RPCs through :class:`~flask_goelect._httpclient.RpcClient`
        (a fifth of the CPU of ``requests``); default: unless ``session_factory``
        is given (its sessions' headers, auth and adapters then apply to the RPCs
        too). Status queries always go through ``requests``.
    :param signer: signs every request and checks the signature of every reply
        (:mod:`flask_goelect.auth`); an unsigned or forged reply is a
        :class:`TransportError`. Without one, requests go unsigned.

    Every call has a ``(connect, read)`` timeout. Note that ``requests``' read
    timeout bounds each wait for data, not the whole reply; the replies here are
    a few hundred bytes, so in practice it bounds the call.

    A leader calls every peer many times a second, so each route's request is
    prepared once per peer (the session's headers, auth, cookies, proxies and
    TLS settings as they are then) and each call hands a copy of it straight
    to the session's adapter. Session response hooks do not run and reply
    cookies are not kept: the RPCs are stateless.
    """

    def __init__(
        self,
        url_prefix: str = "/_goelect",
        *,
        session_factory: Callable[[], requests.Session] = requests.Session,
        trust_env: bool = False,
        signer: RequestSigner | None = None,
        ssl_context: ssl.SSLContext | None = None,
        lean: bool | None = None,
    ) -> None:
        if url_prefix and not url_prefix.startswith("/"):
            raise ValueError(f"url_prefix must start with '/', not {url_prefix!r}")
        self.url_prefix = url_prefix.rstrip("/")
        self._session_factory = session_factory
        self._trust_env = trust_env
        self._signer = signer
        self._ssl_context = ssl_context
        # RPCs through the lean client (see _httpclient), unless proxies from the
        # environment apply or a session of the caller's must carry them.
        if lean is None:
            lean = session_factory is requests.Session
        self.lean = lean and not trust_env
        self._clients: dict[str, RpcClient] = {}
        # Per peer, a session for status queries and, without the lean client,
        # another for the RPCs: the runner may call peers from a thread of its own
        # (a hub of its own, in a gevent-patched process), status queries come from
        # the application's, and a kept-alive socket must stay with one of them.
        self._links: dict[str, _PeerLink] = {}
        self._rpc_links: dict[str, _PeerLink] = {}
        self._lock = threading.Lock()
        self._closed = False
        # The last message encoded, and its body: a heartbeat round sends one
        # message object to every peer, so it is encoded once per round.
        self._encoded: tuple[Request, bytes] | None = None
        _LIVE_HTTP_TRANSPORTS.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._links) + len(self._rpc_links)} sessions"
        return f"HttpTransport({self.url_prefix!r}, {state})"

    def send(self, peer: core.Peer, msg: Request, timeout: Timeout) -> Reply:
        """POST ``msg`` to ``{peer.address}{prefix}/rpc/{kind}`` and return the reply."""
        kind = RPC_KINDS[type(msg)]
        encoded = self._encoded
        if encoded is not None and encoded[0] is msg:
            body = encoded[1]
        else:
            body = messages.encode(msg)
            self._encoded = (msg, body)
        if self.lean:
            data = self._rpc(peer, f"/rpc/{kind}", body, timeout)
        else:
            data = self._exchange(peer, "POST", f"/rpc/{kind}", body, timeout)
        reply_type: Any = messages.REPLY_FOR[type(msg)]
        try:
            reply: object = messages.from_wire(reply_type, data)
        except messages.MessageError as exc:
            raise TransportError(f"peer {peer.id!r} sent a malformed {kind} reply: {exc}") from None
        return _check_reply(peer, msg, reply)

    def get_status(self, peer: core.Peer, timeout: Timeout) -> dict[str, Any]:
        """GET ``{peer.address}{prefix}/status`` and return the JSON object."""
        data = self._exchange(peer, "GET", "/status", None, timeout)
        if not isinstance(data, dict):
            raise TransportError(
                f"peer {peer.id!r} sent a status that is a JSON {type(data).__name__},"
                " not an object"
            )
        return data

    def prepare(self, peer: core.Peer) -> None:
        """Get ready to call ``peer``: build its session and routes, resolve its host.

        No request is sent. A follower calls nobody until it campaigns, and its
        first call would otherwise pay for all of this on the critical path of
        an election or a hand-over: in a gevent-patched process the first name
        lookup also starts gevent's resolver thread pool (10-20 ms, once).
        The runner calls it for each peer when it starts.
        """
        if self.lean:
            self._client(peer)
        else:
            for kind in RPC_KINDS.values():
                self._route(peer, "POST", f"/rpc/{kind}")
        url = urllib3.util.parse_url(peer.address)
        port = url.port or (443 if url.scheme == "https" else 80)
        if url.host:
            with contextlib.suppress(OSError, UnicodeError):
                socket.getaddrinfo(url.host.strip("[]"), port, type=socket.SOCK_STREAM)

    def close(self) -> None:
        """Close every session; later calls raise :class:`TransportError`."""
        with self._lock:
            self._closed = True
            links = [*self._links.values(), *self._rpc_links.values()]
            self._links, self._rpc_links = {}, {}
            clients, self._clients = self._clients, {}
        for link in links:
            link.session.close()
        for client in clients.values():
            client.close()

    def drop_connections(self) -> None:
        """Close the kept-alive connections of the RPCs (not of status queries);
        the next call opens new ones.

        The runner calls it from the thread that made the RPCs, when it stops
        calling peers: in a gevent-patched process their sockets belong to that
        thread's hub, and must be closed there, before the hub goes away.
        """
        with self._lock:
            links, self._rpc_links = self._rpc_links, {}
            clients = list(self._clients.values())
        for link in links.values():
            link.session.close()
        for client in clients:
            client.drop_idle()

    def _client(self, peer: core.Peer) -> RpcClient:
        """The peer's lean client, made on first use (and again if its address changed)."""
        with self._lock:
            if self._closed:
                raise TransportError(f"cannot reach peer {peer.id!r}: the transport is closed")
            client = self._clients.get(peer.id)
            if client is None or client.base_url != peer.address:
                if client is not None:
                    client.close()
                try:
                    client = RpcClient(
                        peer.address, ssl_context=self._ssl_context, max_body=MAX_REPLY_BYTES
                    )
                except ValueError as exc:
                    raise TransportError(f"peer {peer.id!r}: {exc}") from None
                self._clients[peer.id] = client
            return client

    # The places where a request leaves and a reply comes back (_rpc for the RPCs,
    # _exchange for the status): the request is signed there (one signature per
    # peer: the recipient is part of it), and the reply's signature is checked
    # there, before the reply is parsed.
    def _rpc(self, peer: core.Peer, path: str, body: bytes, timeout: Timeout) -> object:
        client = self._client(peer)
        route = self.url_prefix + path

        def what() -> str:  # for an error's text only: not built on every call
            return f"peer {peer.id!r} at {peer.address.rstrip('/')}{route}"

        headers: dict[str, str] = {}
        signer = self._signer
        nonce = ""
        if signer is not None:
            headers, nonce = signer.request_headers("POST", route, peer.id, body)
        try:
            reply = client.call("POST", route, body, headers, timeout)
        except HttpError as exc:
            if exc.kind == "timeout":
                raise TransportError(f"{what()}: no reply within {timeout[1]:g}s") from None
            if exc.kind == "connect" and "no connection within" in str(exc):
                raise TransportError(f"{what()}: no connection within {timeout[0]:g}s") from None
            if exc.kind == "protocol" and "too large" in str(exc):
                raise TransportError(f"{what()} sent {exc}") from None
            raise TransportError(f"{what()} is unreachable: {exc}") from None
        if reply.status == 409:
            raise TransportError(_conflict_text(what(), reply.body[:4096]))
        if not 200 <= reply.status < 300:
            text = " ".join(reply.body[:200].decode("utf-8", "replace").split())
            raise TransportError(f"{what()} answered HTTP {reply.status}: {text or '(no body)'}")
        if signer is not None:
            try:
                # The lean client's header names are in lower case.
                signer.verify_reply(peer.id, nonce, reply.status, reply.headers, reply.body)
            except AuthError as exc:
                raise TransportError(f"{what()}: {exc.message}") from None
        try:
            return json.loads(reply.body)
        except ValueError:
            raise TransportError(f"{what()} sent a reply that is not JSON") from None

    def _exchange(
        self, peer: core.Peer, method: str, path: str, body: bytes | None, timeout: Timeout
    ) -> object:
        route = self._route(peer, method, path)
        template = route.template
        what = f"peer {peer.id!r} at {template.url}"
        request = route.new_request()
        if body is not None:
            request.body = body
            request.headers["Content-Length"] = str(len(body))
        signer = self._signer
        nonce = ""
        if signer is not None:
            signed, nonce = signer.request_headers(
                method, self.url_prefix + path, peer.id, body or b""
            )
            request.headers.update(signed)
        done = False
        try:
            resp = route.adapter.send(
                request,
                stream=True,
                timeout=timeout,
                verify=route.verify,
                cert=route.cert,
                proxies=route.proxies,
            )
            raw = resp.raw
            try:
                if resp.status_code == 409:
                    raise TransportError(_conflict(what, resp))
                if not 200 <= resp.status_code < 300:
                    raise TransportError(
                        f"{what} answered HTTP {resp.status_code}: {_snippet(resp)}"
                    )
                declared = resp.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > MAX_REPLY_BYTES:
                    raise TransportError(f"{what} sent a {declared}-byte reply; too large")
                content = raw.read(MAX_REPLY_BYTES + 1, decode_content=True)
                if len(content) > MAX_REPLY_BYTES:
                    raise TransportError(
                        f"{what} sent a reply over {MAX_REPLY_BYTES} bytes; too large"
                    )
                status, reply_headers = resp.status_code, resp.headers
                done = True
            finally:
                if done:
                    raw.release_conn()  # read to the end: keep the connection
                else:
                    resp.close()  # bytes may be left unread: never reuse it
        except requests.ConnectTimeout:
            raise TransportError(f"{what}: no connection within {timeout[0]:g}s") from None
        except (requests.Timeout, urllib3.exceptions.ReadTimeoutError):
            raise TransportError(f"{what}: no reply within {timeout[1]:g}s") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise TransportError(f"{what} is unreachable: {_reason(exc)}") from None
        if signer is not None:
            try:
                signer.verify_reply(peer.id, nonce, status, reply_headers, content)
            except AuthError as exc:
                raise TransportError(f"{what}: {exc.message}") from None
        try:
            return json.loads(content)
        except ValueError:
            raise TransportError(f"{what} sent a reply that is not JSON") from None

    def _route(self, peer: core.Peer, method: str, path: str) -> _Route:
        """The peer's route, prepared on first use (and again if its address changed).

        Preparing (merging the session's headers, auth and cookies, parsing the
        URL, resolving proxies) costs about a third of a small call; heartbeats
        go out many times a second, so it is done once per peer and route.
        """
        with self._lock:
            if self._closed:
                raise TransportError(f"cannot reach peer {peer.id!r}: the transport is closed")
            links = self._rpc_links if path.startswith("/rpc/") else self._links
            link = links.get(peer.id)
            if link is None or link.address != peer.address:
                session = self._session_factory()
                session.trust_env = self._trust_env
                adapter = _PeerAdapter()
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                if link is not None:
                    link.session.close()
                link = links[peer.id] = _PeerLink(peer.address, session)
            route = link.routes.get((method, path))
            if route is None:
                url = f"{peer.address.rstrip('/')}{self.url_prefix}{path}"
                headers = {"Accept": "application/json"}
                if method == "POST":
                    headers["Content-Type"] = "application/json"
                request = requests.Request(method, url, headers=headers)
                template = link.session.prepare_request(request)
                route = link.routes[(method, path)] = _Route(link.session, template)
            return route

    def _after_fork_in_child(self) -> None:
        # The sessions' sockets are shared with the parent: never use them here.
        self._lock = threading.Lock()
        clients, self._clients = self._clients, {}
        for client in clients.values():
            client.forget_after_fork()  # this process's copies of the descriptors only
        links = [*self._links.values(), *self._rpc_links.values()]
        self._links, self._rpc_links = {}, {}
        for link in links:
            # Closes this process's copies of the descriptors only; best effort.
            with contextlib.suppress(Exception):
                link.session.close()


def _snippet(resp: requests.Response) -> str:
    try:
        text = resp.raw.read(200, decode_content=True).decode("utf-8", "replace")
    except Exception:
        text = ""
    text = " ".join(text.split())
    return text or resp.reason or "(no body)"


def _conflict(what: str, resp: requests.Response) -> str:
    """The text of a 409: another cluster, or another voter set (the peer's message)."""
    try:
        body = resp.raw.read(4096, decode_content=True)
    except Exception:
        body = b""
    return _conflict_text(what, body, resp.reason)


def _conflict_text(what: str, body: bytes, reason: str | None = None) -> str:
    try:
        data = json.loads(body)
        error, message = data["error"], data["message"]
    except Exception:
        return f"{what} answered HTTP 409: {reason or 'conflict'}"
    if error == "voter_set_mismatch":
        return f"{what} refused the request (HTTP 409 voter_set_mismatch): {str(message)[:600]}"
    return f"{what} answered HTTP 409: {str(error)[:64]}: {str(message)[:300]}"


def _reason(exc: BaseException) -> str:
    # requests wraps urllib3 errors several levels deep; the innermost says it best.
    inner: BaseException = exc
    while inner.args and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
    reason = getattr(inner, "reason", None)
    if isinstance(reason, BaseException):
        inner = reason
    return f"{type(inner).__name__}: {inner}"


def forget_connections_after_fork() -> None:
    """In a forked child: every HTTP transport drops the sockets it shares with the parent."""
    for transport in list(_LIVE_HTTP_TRANSPORTS):
        transport._after_fork_in_child()


_hooks.in_child("connections", forget_connections_after_fork)


def ask_statuses(
    transport: Transport, peers: list[core.Peer], timeout: Timeout, wait: float
) -> dict[str, dict[str, Any] | str]:
    """Every peer's status, asked concurrently: ``{id: status or the error's text}``.

    Returns within about ``wait`` seconds; a peer that has not answered by then
    maps to ``"timed out"``. Never raises because of a peer.
    """
    result: dict[str, dict[str, Any] | str] = {peer.id: "timed out" for peer in peers}
    if not peers:
        return result
    pool = ThreadPoolExecutor(max_workers=len(peers), thread_name_prefix="goelect-status")
    try:
        futures = {pool.submit(transport.get_status, peer, timeout): peer for peer in peers}
        done, _ = wait_futures(futures, timeout=wait)
        for future in done:
            peer_id = futures[future].id
            exc = future.exception()
            if exc is not None:
                result[peer_id] = str(exc) or type(exc).__name__
                continue
            status = future.result()
            result[peer_id] = (
                status if isinstance(status, Mapping) else "the status is not a JSON object"
            )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return result


# -- in memory ----------------------------------------------------------------------

Handler = Callable[[Request], Reply]


class MemoryTransport:
    """Delivers requests in-process to registered handlers: for tests.

    Register each node's handler (an Elector's ``handle``) under its id. A call
    from ``msg.sender`` to ``peer.id`` runs the handler in the caller's thread or
    greenlet. Faults, all reversible with :meth:`heal`:

    * :meth:`cut` / :meth:`cut_one_way`: packets from one node never reach the
      other. A request over a cut link fails at once (like a refused
      connection); a reply over a cut link is lost after the request was handled
      (the caller fails at once, as on a reset connection).
    * :meth:`black_hole`: calls to the node hang until their read deadline, then
      fail (a host that accepts connections and never answers).
    * :meth:`set_delay`: every delivery waits this long first; a delay past the
      read deadline fails the call at the deadline.

    One instance is the whole network, shared by every node of a test cluster,
    so :meth:`close` (called by each elector when it stops) leaves it working;
    :meth:`shutdown` ends it. ``delivered`` counts requests handed to handlers,
    by ``(sender, receiver, kind)``.
    """

    def __init__(self, *, sleep: Callable[[float], None] | None = None) -> None:
        """``sleep`` waits in the caller (default ``time.sleep``, cooperative when patched)."""
        self._handlers: dict[str, Handler] = {}
        self._status: dict[str, Callable[[], dict[str, Any]]] = {}
        self._cuts: set[tuple[str, str]] = set()
        self._black_holes: set[str] = set()
        self._delay = 0.0
        self._sleep = sleep
        self._lock = threading.Lock()
        self._closed = threading.Event()
        #: Requests delivered to handlers, by (sender, receiver, kind).
        self.delivered: Counter[tuple[str, str, str]] = Counter()

    def register(
        self,
        node_id: str,
        handler: Handler,
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Route requests for ``node_id`` to ``handler`` (and status reads to ``status``)."""
        with self._lock:
            self._handlers[node_id] = handler
            if status is not None:
                self._status[node_id] = status

    def unregister(self, node_id: str) -> None:
        """Forget ``node_id``: calls to it fail at once, as to a stopped server."""
        with self._lock:
            self._handlers.pop(node_id, None)
            self._status.pop(node_id, None)

    def cut(self, a: str, b: str) -> None:
        """Cut the link between ``a`` and ``b`` in both directions."""
        with self._lock:
            self._cuts |= {(a, b), (b, a)}

    def cut_one_way(self, a: str, b: str) -> None:
        """Drop what ``a`` sends to ``b``; ``b`` still reaches ``a``."""
        with self._lock:
            self._cuts.add((a, b))

    def isolate(self, node_id: str) -> None:
        """Cut ``node_id`` from every registered node."""
        with self._lock:
            for other in self._handlers:
                if other != node_id:
                    self._cuts |= {(node_id, other), (other, node_id)}

    def black_hole(self, node_id: str) -> None:
        """Calls to ``node_id`` hang until their read deadline, then fail."""
        with self._lock:
            self._black_holes.add(node_id)

    def set_delay(self, seconds: float) -> None:
        """Delay every delivery by ``seconds`` (0 for none)."""
        if seconds < 0:
            raise ValueError(f"delay must not be negative, not {seconds!r}")
        self._delay = float(seconds)

    def heal(self) -> None:
        """Restore every cut link and black-holed node (the delay stays)."""
        with self._lock:
            self._cuts.clear()
            self._black_holes.clear()

    def send(self, peer: core.Peer, msg: Request, timeout: Timeout) -> Reply:
        """Deliver ``msg`` to the handler of ``peer.id`` and return its reply."""
        src, dst = msg.sender, peer.id
        what = f"peer {dst!r}"
        with self._lock:
            handler = self._handlers.get(dst)
            cut = (src, dst) in self._cuts
            black_hole = dst in self._black_holes
        if self._closed.is_set():
            raise TransportError(f"cannot reach {what}: the in-memory network was shut down")
        if handler is None or cut:
            raise TransportError(f"{what} is unreachable (connection refused)")
        read = timeout[1]
        if black_hole or self._delay >= read:
            self._wait(read)
            raise TransportError(f"{what}: no reply within {read:g}s")
        if self._delay:
            self._wait(self._delay)
        kind = RPC_KINDS[type(msg)]
        with self._lock:
            self.delivered[(src, dst, kind)] += 1
        try:
            reply = handler(msg)
        except Exception as exc:
            raise TransportError(f"{what} failed to handle {kind}: {exc!r}") from None
        with self._lock:
            reply_lost = (dst, src) in self._cuts
        if reply_lost:
            raise TransportError(f"{what}: connection reset (the reply was lost)")
        return _check_reply(peer, msg, reply)

    def get_status(self, peer: core.Peer, timeout: Timeout) -> dict[str, Any]:
        """Return what the status callable registered for ``peer.id`` returns."""
        with self._lock:
            status = self._status.get(peer.id)
            unreachable = status is None or peer.id in self._black_holes
        if status is None or unreachable:
            raise TransportError(f"peer {peer.id!r} is unreachable")
        return status()

    def close(self) -> None:
        """Do nothing: the network is shared, and one node stopping must not end it."""

    def shutdown(self) -> None:
        """End the network: later calls fail, waits on a black hole or delay end at once."""
        self._closed.set()

    def _wait(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
        else:
            # Ends early on shutdown, so that tests stop promptly.
            if self._closed.wait(seconds):
                raise TransportError("the in-memory network was shut down")
