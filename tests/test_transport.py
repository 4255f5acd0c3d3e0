"""Tests of the transport layer: HTTP over loopback with a real gevent server, and in memory.

The test process is not monkey-patched: every gevent server here runs in its own
native thread with its own hub (:class:`ServerThread`), the way the runner runs
its loop in an unpatched process. The helpers at the top are reused by
``test_runner.py``.
"""

from __future__ import annotations

import collections
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
import gevent.event
import gevent.pool
import pytest
import requests
from gevent import pywsgi

from flask_goelect import core, messages
from flask_goelect import transport as transport_module
from flask_goelect.auth import RequestVerifier
from flask_goelect.messages import (
    Heartbeat,
    HeartbeatReply,
    TimeoutNow,
    TimeoutNowReply,
    VoteReply,
    VoteRequest,
)
from flask_goelect.rpc import RpcServer, headers_from_environ
from flask_goelect.serving import NoDelayWSGIHandler
from flask_goelect.state import NotRunning
from flask_goelect.transport import HttpTransport, MemoryTransport, TransportError
from goelect_harness.helpers import wait_until

PREFIX = "/_goelect"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# -- helpers (also used by test_runner.py) -----------------------------------------------


def json_response(start_response: Callable[..., Any], status: int, body: object) -> list[bytes]:
    data = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Error", 503: "Unavailable"}
    start_response(
        f"{status} {reason.get(status, 'Status')}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]


def rpc_app(
    elector: Any,
    prefix: str = PREFIX,
    received: collections.Counter[str] | None = None,
    peers: Iterable[str] = ("n1", "n2", "n3"),
) -> WSGIApp:
    """A plain WSGI app that serves the election routes with the product's own
    server side (:class:`~flask_goelect.rpc.RpcServer`, unsigned) around
    ``elector.handle``, and ``GET <prefix>/status`` from ``elector.status()``.

    ``received`` (if given) counts the requests handed to the elector, by type name;
    ``peers`` are the senders it accepts (with the elector's configured peers).
    """
    node_id = getattr(elector, "node_id", "n2")
    config = getattr(elector, "config", None)
    known = set(peers) | ({p.id for p in config.peers} if config is not None else set())
    verifier = RequestVerifier(None, "", node_id, known, max_age=60.0)

    def handle(msg: messages.Request) -> messages.Reply:
        if received is not None:
            received[type(msg).__name__] += 1
        reply: messages.Reply = elector.handle(msg)
        return reply

    server = RpcServer(verifier, handle, prefix)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if method == "POST" and path.startswith(f"{prefix}/rpc/"):
            answer = server.serve(
                path[len(prefix) + 5 :], headers_from_environ(environ), environ["wsgi.input"]
            )
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Unavailable"}
            start_response(
                f"{answer.status} {reason.get(answer.status, 'Status')}",
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(answer.body))),
                    *answer.headers.items(),
                ],
            )
            return [answer.body]
        if method == "GET" and path == f"{prefix}/status":
            return json_response(start_response, 200, elector.status())
        return json_response(start_response, 404, {"error": "not found"})

    return app


class ServerThread:
    """A ``gevent.pywsgi`` server on loopback in its own native thread and hub.

    Uses :class:`NoDelayWSGIHandler`. ``connections`` counts accepted connections.
    """

    def __init__(self, app: WSGIApp, listener: socket.socket | None = None, name: str = "server"):
        self.listener = listener or socket.create_server(("127.0.0.1", 0))
        # gevent's server accepts until EWOULDBLOCK: a blocking listener would hang it.
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._app = app
        self._ready = threading.Event()
        self._watcher: Any = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(5), "the test server did not start"
        return self

    def _main(self) -> None:
        hub = gevent.get_hub()
        stopping = gevent.event.Event()
        watcher = hub.loop.async_()
        watcher.start(stopping.set)
        server_self = self

        class Handler(NoDelayWSGIHandler):
            def handle(self) -> None:
                server_self.connections += 1
                super().handle()

        server = pywsgi.WSGIServer(
            self.listener, self._app, handler_class=Handler, spawn=gevent.pool.Pool(), log=None
        )
        try:
            server.start()
            self._watcher = watcher
            self._ready.set()
            stopping.wait()
        finally:
            server.stop(timeout=0.05)  # kills idle keep-alive handlers, closes their sockets
            watcher.close()
            hub.destroy(destroy_loop=True)

    def stop(self) -> None:
        if self._thread.is_alive() and self._watcher is not None:
            self._watcher.send()
            self._thread.join(5)
        self.listener.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., ServerThread]]:
    """Start test servers; all are stopped at the end of the test."""
    started: list[ServerThread] = []

    def start(app: WSGIApp, **kwargs: Any) -> ServerThread:
        server = ServerThread(app, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(params=["lean", "requests"])
def http(request: pytest.FixtureRequest) -> Iterator[HttpTransport]:
    """Both ways RPCs leave: the lean client and ``requests``."""
    transport = HttpTransport(lean=request.param == "lean")
    yield transport
    transport.close()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """The URL of a socket that accepts connections (in the kernel) and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()  # resets the connections still waiting in the backlog


class FakeNode:
    """Answers every request as node ``node_id`` would, with a chosen sender."""

    def __init__(self, node_id: str, sender: str | None = None) -> None:
        self.node_id = node_id
        self.sender = sender or node_id
        self.seen: list[messages.Request] = []

    def handle(self, msg: messages.Request) -> messages.Reply:
        self.seen.append(msg)
        if isinstance(msg, VoteRequest):
            return VoteReply(self.sender, msg.term, True, msg.pre_vote)
        if isinstance(msg, Heartbeat):
            return HeartbeatReply(self.sender, msg.term, msg.seq, True)
        return TimeoutNowReply(self.sender, msg.term, True)

    def status(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "state": "follower", "term": 1, "leader_id": None}


def raw_app(status: int, body: bytes) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response(f"{status} X", [("Content-Length", str(len(body)))])
        return [body]

    return app


HB = Heartbeat("n1", 3, 7, "http://n1", {"zone": "a"})

# -- HttpTransport ------------------------------------------------------------------------


def test_http_send_each_rpc_and_parse_the_reply(servers, http):
    node = FakeNode("n2")
    received: collections.Counter[str] = collections.Counter()
    server = servers(rpc_app(node, received=received))
    peer = core.Peer("n2", server.url)
    assert http.send(peer, HB, (1, 1)) == HeartbeatReply("n2", 3, 7, True)
    assert http.send(peer, VoteRequest("n1", 4, pre_vote=True), (1, 1)) == VoteReply(
        "n2", 4, True, True
    )
    assert http.send(peer, TimeoutNow("n1", 4), (1, 1)) == TimeoutNowReply("n2", 4, True)
    assert node.seen == [HB, VoteRequest("n1", 4, pre_vote=True), TimeoutNow("n1", 4)]
    assert received == {"Heartbeat": 1, "VoteRequest": 1, "TimeoutNow": 1}


def test_http_keeps_one_connection_per_peer_and_replies_fast(servers, http):
    # TCP_NODELAY on the server side: a reused connection does not wait ~40 ms
    # for the delayed ACK on every reply.
    server = servers(rpc_app(FakeNode("n2")))
    peer = core.Peer("n2", server.url)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        http.send(peer, HB, (1, 1))
        times.append(time.perf_counter() - t0)
    assert server.connections == 1
    assert statistics.median(times[1:]) < 0.02, times


def test_http_reply_from_another_node_is_refused(servers, http):
    server = servers(rpc_app(FakeNode("n2", sender="n3")))
    with pytest.raises(TransportError, match="claims to come from 'n3'"):
        http.send(core.Peer("n2", server.url), HB, (1, 1))


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (500, b"boom", "answered HTTP 500: boom"),
        (404, b"", "answered HTTP 404"),
        (200, b"not json", "not JSON"),
        (200, b'{"sender": "n2", "term": 3}', "malformed heartbeat reply"),
        (200, b'{"sender": "n2", "term": 3, "seq": 7, "success": true, "x": 1}', "unknown"),
        (200, b"[1, 2]", "malformed"),
    ],
)
def test_http_bad_replies_raise_transport_error(servers, http, status, body, match):
    server = servers(raw_app(status, body))
    with pytest.raises(TransportError, match=match) as info:
        http.send(core.Peer("n2", server.url), HB, (1, 1))
    assert "'n2'" in str(info.value)


def test_http_oversized_reply_is_refused(servers, http):
    server = servers(raw_app(200, b" " * 100_000))
    with pytest.raises(TransportError, match="too large"):
        http.send(core.Peer("n2", server.url), HB, (1, 1))


def test_http_unreachable_peer(http):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(TransportError, match="peer 'n2' at .* is unreachable"):
        http.send(core.Peer("n2", f"http://127.0.0.1:{port}"), HB, (1, 1))


def test_http_black_holed_peer_times_out_at_the_read_deadline(http, black_hole):
    t0 = time.monotonic()
    with pytest.raises(TransportError, match=r"no reply within 0\.2s"):
        http.send(core.Peer("n2", black_hole), HB, (1, 0.2))
    assert 0.15 < time.monotonic() - t0 < 2


def test_http_black_hole_does_not_delay_other_peers(servers, http, black_hole):
    # Concurrent sends to different peers share the transport safely.
    server = servers(rpc_app(FakeNode("n2")))
    stuck = threading.Thread(
        target=lambda: pytest.raises(
            TransportError, http.send, core.Peer("n3", black_hole), HB, (1, 1)
        )
    )
    stuck.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    for _ in range(10):
        http.send(core.Peer("n2", server.url), HB, (1, 1))
    assert time.monotonic() - t0 < 0.5
    stuck.join(5)


def test_http_get_status(servers, http):
    server = servers(rpc_app(FakeNode("n2")))
    status = http.get_status(core.Peer("n2", server.url), (1, 1))
    assert status["node_id"] == "n2"
    array = servers(raw_app(200, b"[]"))
    with pytest.raises(TransportError, match="not an object"):
        http.get_status(core.Peer("n2", array.url), (1, 1))


def test_http_prefix_and_trailing_slash(servers):
    server = servers(rpc_app(FakeNode("n2"), prefix="/api/elect"))
    transport = HttpTransport("/api/elect/")
    try:
        assert transport.send(core.Peer("n2", server.url + "/"), HB, (1, 1)).success
    finally:
        transport.close()
    with pytest.raises(ValueError, match="must start with '/'"):
        HttpTransport("api")


def test_http_closed_transport_refuses_calls(servers):
    server = servers(rpc_app(FakeNode("n2")))
    transport = HttpTransport()
    transport.send(core.Peer("n2", server.url), HB, (1, 1))
    transport.close()
    transport.close()
    with pytest.raises(TransportError, match="closed"):
        transport.send(core.Peer("n2", server.url), HB, (1, 1))


def test_http_sessions_do_not_read_the_environment(servers, monkeypatch):
    # A proxy set for the application's outbound traffic must not capture the
    # traffic between replicas (nor cost a .netrc read per heartbeat).
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    server = servers(rpc_app(FakeNode("n2")))
    transport = HttpTransport()
    try:
        assert transport.send(core.Peer("n2", server.url), HB, (1, 1)).success
    finally:
        transport.close()


def chunked_app(size: int) -> WSGIApp:
    """Answers 200 with ``size`` bytes and no Content-Length (sent chunked)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        for _ in range(size // 1000):
            yield b" " * 1000

    return app


def test_http_chunked_reply_is_read_only_up_to_the_limit(servers, http):
    apps = iter([chunked_app(10_000_000), rpc_app(FakeNode("n2"))])

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return next(apps)(environ, start_response)

    server = servers(app)
    peer = core.Peer("n2", server.url)
    t0 = time.monotonic()
    with pytest.raises(TransportError, match="too large"):
        http.send(peer, HB, (1, 1))
    assert time.monotonic() - t0 < 1  # not 10 MB read first
    assert http.send(peer, HB, (1, 1)).success
    # The connection with unread bytes was dropped, never reused.
    assert server.connections == 2


def test_http_connection_is_kept_after_any_complete_reply(servers, http):
    replies = iter([(500, b"boom"), (200, b"{}"), (200, b"{}")])

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        environ["wsgi.input"].read()
        status, body = next(replies)
        start_response(f"{status} X", [("Content-Length", str(len(body)))])
        return [body]

    server = servers(app)
    peer = core.Peer("n2", server.url)
    for _ in range(3):
        with pytest.raises(TransportError):
            http.send(peer, HB, (1, 1))  # 500, then replies that are not heartbeat replies
    assert server.connections == 1


def test_http_request_leaves_in_one_send():
    # Header block and body in one segment: one wake-up of the peer, not two.
    sent: list[bytes] = []

    class Sock:
        def sendall(self, data: bytes) -> None:
            sent.append(bytes(data))

        def settimeout(self, timeout: float | None) -> None:
            pass

    post = transport_module._PeerConnection("127.0.0.1", 9)
    post.sock = Sock()  # type: ignore[assignment]
    post.request("POST", "/rpc", body=b'{"a":1}', headers={"Content-Type": "application/json"})
    assert len(sent) == 1
    assert sent[0].startswith(b"POST /rpc HTTP/1.1\r\n")
    assert sent[0].endswith(b"\r\n\r\n" + b'{"a":1}')
    sent.clear()
    get = transport_module._PeerConnection("127.0.0.1", 9)
    get.sock = Sock()  # type: ignore[assignment]
    get.request("GET", "/status")
    assert len(sent) == 1 and sent[0].endswith(b"\r\n\r\n")


def test_http_idle_connection_check():
    # A pooled connection is reused only while the peer keeps it open and silent.
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        conn = transport_module._PeerConnection("127.0.0.1", listener.getsockname()[1])
        assert not conn.is_connected
        conn.connect()
        peer, _ = listener.accept()
        assert conn.is_connected
        assert conn.sock is not None and conn.sock.gettimeout() == conn.timeout
        peer.sendall(b"x")  # bytes nobody asked for
        assert wait_until(lambda: not conn.is_connected, 2)
        conn.close()
        conn.connect()
        peer2, _ = listener.accept()
        assert conn.is_connected
        peer2.close()  # a restarted peer
        assert wait_until(lambda: not conn.is_connected, 2)
        conn.close()
        peer.close()
    finally:
        listener.close()


def test_http_client_sockets_have_nodelay(servers, http):
    # Both ends: a reply (or a request) never waits for the other side's delayed ACK.
    server = servers(rpc_app(FakeNode("n2")))
    peer = core.Peer("n2", server.url)
    http.send(peer, HB, (1, 1))
    if http.lean:
        sock = http._clients["n2"]._idle[0].sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        return
    route = http._route(peer, "POST", "/rpc/heartbeat")
    pool = route.adapter.get_connection_with_tls_context(route.new_request(), True)
    conn = pool.pool.get()  # type: ignore[attr-defined]
    try:
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        pool.pool.put(conn)  # type: ignore[attr-defined]


def test_http_restarted_peer_costs_no_failed_call(servers, http):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    first = servers(rpc_app(FakeNode("n2")), listener=listener)
    peer = core.Peer("n2", first.url)
    assert http.send(peer, HB, (1, 1)).success
    first.stop()  # closes the kept-alive connection
    second = servers(rpc_app(FakeNode("n2")), listener=socket.create_server(("127.0.0.1", port)))
    assert http.send(peer, HB, (1, 1)).success
    assert second.connections == 1


def test_http_prepare_sets_up_a_peer_without_calling_it(servers, http):
    server = servers(rpc_app(FakeNode("n2")))
    peer = core.Peer("n2", server.url)
    http.prepare(peer)
    if http.lean:
        assert "n2" in http._clients
    else:
        assert set(http._rpc_links["n2"].routes) == {
            ("POST", "/rpc/vote"),
            ("POST", "/rpc/heartbeat"),
            ("POST", "/rpc/timeout-now"),
        }
    time.sleep(0.05)
    assert server.connections == 0
    assert http.send(peer, HB, (1, 1)).success
    http.close()
    with pytest.raises(TransportError, match="closed"):
        http.prepare(peer)


def test_http_heartbeat_round_is_encoded_once(servers, http, monkeypatch):
    encoded: list[object] = []
    to_wire = messages.to_wire

    def counting(msg: Any) -> dict[str, Any]:
        if isinstance(msg, Heartbeat):  # not the test servers' replies
            encoded.append(msg)
        return to_wire(msg)

    monkeypatch.setattr(messages, "to_wire", counting)
    received: collections.Counter[str] = collections.Counter()
    a = servers(rpc_app(FakeNode("n2"), received=received))
    b = servers(rpc_app(FakeNode("n3"), received=received))
    hb = Heartbeat("n1", 3, 8)
    assert http.send(core.Peer("n2", a.url), hb, (1, 1)).success
    assert http.send(core.Peer("n3", b.url), hb, (1, 1)).success
    assert http.send(core.Peer("n2", a.url), Heartbeat("n1", 3, 8), (1, 1)).success
    assert encoded == [hb, hb] and received["Heartbeat"] == 3


def test_http_uses_the_sessions_headers_and_settings(servers):
    seen: list[dict[str, Any]] = []
    node = FakeNode("n2")
    inner = rpc_app(node)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(environ)
        return inner(environ, start_response)

    server = servers(app)

    def factory() -> requests.Session:
        session = requests.Session()
        session.headers["X-Deploy"] = "blue"
        session.cookies.set("k", "v")
        return session

    transport = HttpTransport(session_factory=factory)
    try:
        for _ in range(2):
            assert transport.send(core.Peer("n2", server.url), HB, (1, 1)).success
    finally:
        transport.close()
    assert [e.get("HTTP_X_DEPLOY") for e in seen] == ["blue", "blue"]
    assert [e.get("HTTP_COOKIE") for e in seen] == ["k=v", "k=v"]
    assert all(e["CONTENT_TYPE"] == "application/json" for e in seen)


# -- MemoryTransport ----------------------------------------------------------------------


@pytest.fixture
def net() -> Iterator[MemoryTransport]:
    network = MemoryTransport()
    yield network
    network.shutdown()


P2, P1 = core.Peer("n2"), core.Peer("n1")


def test_memory_delivers_and_counts(net):
    node = FakeNode("n2")
    net.register("n2", node.handle, node.status)
    assert net.send(P2, HB, (1, 1)) == HeartbeatReply("n2", 3, 7, True)
    assert net.delivered == {("n1", "n2", "heartbeat"): 1}
    assert net.get_status(P2, (1, 1))["node_id"] == "n2"
    net.close()  # shared network: one node closing does not end it
    assert net.send(P2, HB, (1, 1)).success


def test_memory_cut_both_ways_and_heal(net):
    n1, n2 = FakeNode("n1"), FakeNode("n2")
    net.register("n1", n1.handle)
    net.register("n2", n2.handle)
    net.cut("n1", "n2")
    with pytest.raises(TransportError, match="unreachable"):
        net.send(P2, HB, (1, 1))
    with pytest.raises(TransportError, match="unreachable"):
        net.send(P1, Heartbeat("n2", 3, 1), (1, 1))
    assert not n1.seen and not n2.seen
    net.heal()
    assert net.send(P2, HB, (1, 1)).success


def test_memory_cut_one_way(net):
    n1, n2 = FakeNode("n1"), FakeNode("n2")
    net.register("n1", n1.handle)
    net.register("n2", n2.handle)
    net.cut_one_way("n1", "n2")
    with pytest.raises(TransportError, match="unreachable"):
        net.send(P2, HB, (1, 1))
    assert not n2.seen
    # n2 reaches n1, but n1's reply is lost on the way back.
    with pytest.raises(TransportError, match="reply was lost"):
        net.send(P1, Heartbeat("n2", 3, 1), (1, 1))
    assert n1.seen == [Heartbeat("n2", 3, 1)]


def test_memory_isolate(net):
    for node_id in ("n1", "n2", "n3"):
        net.register(node_id, FakeNode(node_id).handle)
    net.isolate("n1")
    with pytest.raises(TransportError):
        net.send(P2, HB, (1, 1))
    assert net.send(core.Peer("n3"), Heartbeat("n2", 3, 1), (1, 1)).success


def test_memory_black_hole_hangs_until_the_deadline(net):
    node = FakeNode("n2")
    net.register("n2", node.handle)
    net.black_hole("n2")
    t0 = time.monotonic()
    with pytest.raises(TransportError, match=r"no reply within 0\.1s"):
        net.send(P2, HB, (1, 0.1))
    assert 0.09 < time.monotonic() - t0 < 1
    assert not node.seen


def test_memory_delay(net):
    node = FakeNode("n2")
    net.register("n2", node.handle)
    net.set_delay(0.05)
    t0 = time.monotonic()
    assert net.send(P2, HB, (1, 1)).success
    assert time.monotonic() - t0 >= 0.045
    net.set_delay(0.5)
    with pytest.raises(TransportError, match="no reply within"):
        net.send(P2, HB, (1, 0.1))
    with pytest.raises(ValueError):
        net.set_delay(-1)


def test_memory_refuses_foreign_and_failed_replies(net):
    net.register("n2", FakeNode("n2", sender="n3").handle)
    with pytest.raises(TransportError, match="claims to come from 'n3'"):
        net.send(P2, HB, (1, 1))

    def broken(msg: messages.Request) -> messages.Reply:
        raise NotRunning("not running")

    net.register("n2", broken)
    with pytest.raises(TransportError, match="failed to handle heartbeat"):
        net.send(P2, HB, (1, 1))
    net.unregister("n2")
    with pytest.raises(TransportError, match="unreachable"):
        net.send(P2, HB, (1, 1))
    with pytest.raises(TransportError, match="unreachable"):
        net.get_status(P2, (1, 1))


def test_memory_shutdown_releases_waiting_calls(net):
    net.register("n2", FakeNode("n2").handle)
    net.black_hole("n2")
    errors: list[BaseException] = []

    def call() -> None:
        try:
            net.send(P2, HB, (1, 30))
        except TransportError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    net.shutdown()
    thread.join(5)
    assert time.monotonic() - t0 < 1 and errors
    with pytest.raises(TransportError, match="shut down"):
        net.send(P2, HB, (1, 1))


def test_a_forked_child_forgets_the_lean_client_s_connections_without_its_lock() -> None:
    # The lock may have been held at the fork by a thread of the parent (the
    # election loop's): the child's hook must not wait for it.
    from flask_goelect._httpclient import RpcClient

    client = RpcClient("http://127.0.0.1:9")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with client._lock:
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(5)
    try:
        done = threading.Event()
        forgetter = threading.Thread(
            target=lambda: (client.forget_after_fork(), done.set()), daemon=True
        )
        forgetter.start()
        assert done.wait(2), "forget_after_fork waited for a lock"
    finally:
        release.set()
        holder.join(5)
