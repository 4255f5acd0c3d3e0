"""Hostile input against a running, secured three-node cluster.

A hypothesis-driven fuzzer sends at least 10,000 generated requests over real HTTP
(loopback, one ``gevent.pywsgi`` server per node, as in production) to a cluster with
``GOELECT_SECRET`` and ``GOELECT_CLUSTER`` set, in batches. The attacks carry bodies that
*would* change the election if they were accepted (terms far ahead, heartbeats that claim
leadership, hand-over orders from the leader), so a single accepted one shows. After every
batch it checks that every answer was the expected refusal (or, for well-signed input from
a peer, a 4xx or a valid signed reply), that no answer was a 5xx, that every node still
runs, and that the leader and every node's term are unchanged.

Kinds of request (the expected answer in brackets):

* ``unsigned``: no signature headers [401]
* ``forged``: signature headers with a made-up, altered or truncated signature [401]
* ``wrong_key``: signed with another secret [401]
* ``stale``: signed with the secret, timestamp outside the window [401]
* ``replay``: a request a node really sent and its peer accepted, sent again to the
  same node [401] or to another one [401]
* ``wrong_cluster``: another cluster's name, signed or not [409]
* ``unknown_sender``: signed with the secret, but by an id that is not a peer [403]
* ``peer_garbage``: signed by a real peer, with random bytes, near-valid JSON, wrong
  types, huge numbers, unicode, odd content types and sizes [400/403/413/415, or a valid
  signed reply to a harmless (stale) message]
* ``routes``: wrong methods, unknown paths, the hand-over route without its token,
  RPCs without any of the cluster's headers [404/405/403/409/401], and the status routes
  [200 from loopback; /leader answers 503 on followers, as documented]

The figures are printed at the end (``pytest -s`` shows them).
"""

from __future__ import annotations

import collections
import http.client
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from live_nodes import Cluster

from flask_goelect import messages
from flask_goelect.auth import (
    AUTH_HEADER,
    CLUSTER_HEADER,
    MAX_CLOCK_SKEW,
    SENDER_HEADER,
    Keyring,
    RequestSigner,
)
from flask_goelect.views import MAX_BODY, TOKEN_HEADER

SECRET = "fuzz-secret-0123456789abcdef"
CLUSTER = "fuzz"
P = "/_goelect"
RPC = {"vote": "/rpc/vote", "heartbeat": "/rpc/heartbeat", "timeout-now": "/rpc/timeout-now"}
#: Requests per hypothesis example (one batch) and batches: 25 x 404 > 10,000.
BATCH = 25
BATCHES = int(os.environ.get("GOELECT_FUZZ_BATCHES", "404"))
MIN_REQUESTS = 10_000 if BATCHES >= 404 else BATCH * BATCHES

#: What each kind of request must get.
EXPECTED: dict[str, set[int]] = {
    "unsigned": {401},
    "forged": {401},
    "wrong_key": {401},
    "stale": {401},
    "replay": {401},
    "wrong_cluster": {409},
    "unknown_sender": {403},
    "peer_garbage": {200, 400, 403, 413, 415},
    # 400: gevent.pywsgi refuses a HEAD request with a body itself. 308: Werkzeug
    # merges "//" in a path and redirects to the merged path (checked below).
    "routes": {200, 308, 400, 401, 403, 404, 405, 409, 503},
}
ATTACKS = ("unsigned", "forged", "wrong_key", "stale", "replay", "wrong_cluster", "unknown_sender")


@dataclass
class Fuzzed:
    """One generated request, before the live parts (time, term, target) are filled in."""

    kind: str
    target: int  # index of the node it goes to
    route: str = "vote"
    method: str = "POST"
    path: str | None = None  # for "routes": the path under the prefix
    body: bytes | None = None
    body_spec: Any = None  # for attacks: which dangerous message to send
    message: dict[str, Any] | None = None  # for peer_garbage: a valid message (made stale)
    content_type: str = "application/json"
    sender: int = 0  # index among the node's peers, or a stranger's id
    variant: int = 0
    extra_headers: dict[str, str] = field(default_factory=dict)


# -- strategies ------------------------------------------------------------------------------

ids = st.sampled_from(["n1", "n2", "n3"])
texts = st.text(max_size=30)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**53 - 1, 2**53, 2**63, 10**400, 2**31]),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=8,
)
FIELDS = ["sender", "term", "seq", "pre_vote", "transfer", "address", "tags", "granted", "x"]


@st.composite
def near_valid_json(draw: st.DrawFn) -> bytes:
    """A message that is nearly right: real field names, some values of the wrong type."""
    route = draw(st.sampled_from(list(RPC)))
    base: dict[str, Any] = {"sender": draw(ids), "term": draw(st.integers(0, 20))}
    if route == "heartbeat":
        base["seq"] = draw(st.integers(0, 1000))
    for _ in range(draw(st.integers(0, 3))):
        base[draw(st.sampled_from(FIELDS))] = draw(json_values)
    if draw(st.booleans()) and base:
        del base[draw(st.sampled_from(sorted(base)))]
    text = json.dumps(base, default=str)
    cut = draw(st.sampled_from([None, None, None, -1, len(text) // 2]))
    return (text[:cut] if cut is not None else text).encode()


HEADER_SENDER = "<the signed sender>"


@st.composite
def valid_message(draw: st.DrawFn, route: str) -> dict[str, Any]:
    """A message that passes validation (unicode, edge numbers, full tag sets included)."""
    big = st.sampled_from([0, 1, 2**31, 2**53 - 1])
    msg: dict[str, Any] = {
        "sender": draw(st.sampled_from([HEADER_SENDER, HEADER_SENDER, "n1", "n2", "n3"])),
        "term": draw(st.one_of(st.integers(0, 50), big)),
    }
    if route == "vote":
        for name in ("pre_vote", "transfer"):
            if draw(st.booleans()):
                msg[name] = draw(st.booleans())
    elif route == "heartbeat":
        msg["seq"] = draw(st.one_of(st.integers(0, 10**6), big))
        if draw(st.booleans()):
            msg["address"] = draw(st.text(max_size=60))
        if draw(st.booleans()):
            msg["tags"] = draw(
                st.dictionaries(st.text(min_size=1, max_size=64), st.text(max_size=40), max_size=6)
            )
    return msg


bodies = st.one_of(
    st.binary(max_size=300),
    near_valid_json(),
    json_values.map(lambda v: json.dumps(v, default=str).encode()),
    st.text(max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            b"",
            b"{}",
            b"[]",
            b"null",
            b'{"sender":"n2","term":1e999}',
            b'{"sender":"n2","term":' + b"9" * 5000 + b"}",
            b"[" * 3000 + b"]" * 3000,
            '{"sender":"n\u00e9","term":1}'.encode(),
            b'{"sender":"n2","term":NaN}',
            b'{"sender":"n2","term":1,"term":2}',
            b"\xef\xbb\xbf{}",
            b"x" * (MAX_BODY + 1),
        ]
    ),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json",
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "text/plain",
        "",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json-patch+json",
    ]
)
#: Dangerous messages for the attacks: each would move a term or the leader if accepted.
body_specs = st.sampled_from(
    [
        ("vote", "far_term"),
        ("vote", "pre_vote_far"),
        ("vote", "transfer"),
        ("heartbeat", "claim_leader"),
        ("heartbeat", "far_term"),
        ("timeout-now", "from_leader"),
    ]
)


@st.composite
def fuzzed(draw: st.DrawFn) -> Fuzzed:
    kind = draw(
        st.sampled_from(
            [
                # Hypothesis leans to the first entries a little: garbage from a
                # peer, the widest kind, comes first.
                "peer_garbage",
                "peer_garbage",
                "unsigned",
                "forged",
                "wrong_key",
                "stale",
                "replay",
                "wrong_cluster",
                "unknown_sender",
                "peer_garbage",
                "routes",
            ]
        )
    )
    item = Fuzzed(kind=kind, target=draw(st.integers(0, 2)))
    item.variant = draw(st.integers(0, 7))
    if kind == "peer_garbage":
        item.route = draw(st.sampled_from(list(RPC)))
        if draw(st.integers(0, 3)) == 0:
            item.message = draw(valid_message(item.route))
        else:
            item.body = draw(bodies)
        item.content_type = draw(content_types)
        item.sender = draw(st.integers(0, 1))
    elif kind == "routes":
        item.method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]))
        item.path = draw(
            st.one_of(
                st.sampled_from(
                    ["/status", "/leader", "/health", "/transfer", *RPC.values(), "/rpc/append"]
                ),
                st.text(
                    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_./%", min_size=1, max_size=30
                ).map(lambda s: "/" + s),
            )
        )
        item.body = draw(st.one_of(st.none(), bodies))
        item.content_type = draw(content_types)
        if draw(st.booleans()):
            item.extra_headers[TOKEN_HEADER] = draw(
                st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEF0123456789_-", max_size=40)
            )
    else:
        item.body_spec = draw(body_specs)
        item.route = item.body_spec[0]
        item.sender = draw(st.integers(0, 1))
        if kind == "unknown_sender":
            item.extra_headers["id"] = draw(
                st.one_of(
                    st.just("self"),
                    st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True).filter(
                        lambda s: s not in ("n1", "n2", "n3", "self")
                    ),
                )
            )
        if kind == "wrong_cluster":
            item.extra_headers["cluster"] = draw(
                st.one_of(
                    st.just(""),
                    st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True).filter(
                        lambda s: s != CLUSTER
                    ),
                )
            )
    return item


# -- the live cluster -----------------------------------------------------------------------


class Capture:
    """WSGI middleware that keeps signed RPCs a node accepted (for the replays)."""

    def __init__(self) -> None:
        self.accepted: collections.deque[tuple[int, str, dict[str, str], bytes]] = (
            collections.deque(maxlen=300)
        )
        self.lock = threading.Lock()

    def snapshot(self) -> list[tuple[int, str, dict[str, str], bytes]]:
        with self.lock:
            return list(self.accepted)

    def wrap(self, index: int, app: Any) -> None:
        inner = app.wsgi_app

        def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            path = environ.get("PATH_INFO", "")
            if not path.startswith(P + "/rpc/") or "HTTP_X_GOELECT_AUTH" not in environ:
                return inner(environ, start_response)
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if 0 < length <= MAX_BODY else b""
            if length > MAX_BODY:
                return inner(environ, start_response)
            environ["wsgi.input"] = io.BytesIO(body)
            statuses: list[str] = []

            def recording_start(status: str, headers: Any, exc_info: Any = None) -> Any:
                statuses.append(status)
                return start_response(status, headers, exc_info)

            result = inner(environ, recording_start)
            if statuses and statuses[0].startswith("200"):
                headers = {
                    name[5:].replace("_", "-").title(): value
                    for name, value in environ.items()
                    if name.startswith("HTTP_X_GOELECT_")
                }
                with self.lock:
                    self.accepted.append((index, path, headers, body))
            return result

        app.wsgi_app = wsgi


class Client:
    """Keep-alive HTTP/1.1 to one node, reconnecting when the server closes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.conn.close()


@dataclass
class Tally:
    sent: int = 0
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    by_answer: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    server_errors: int = 0
    follower_leader_503: int = 0
    valid_replies: int = 0
    batches: int = 0

    def report(self) -> str:
        lines = [f"fuzz: {self.sent} requests in {self.batches} batches"]
        for kind in EXPECTED:
            answers = {s: n for (k, s), n in sorted(self.by_answer.items()) if k == kind}
            lines.append(f"  {kind:15} {self.by_kind[kind]:6}  {answers}")
        attacks = sum(self.by_kind[k] for k in ATTACKS)
        refused = sum(n for (k, s), n in self.by_answer.items() if k in ATTACKS and s >= 400)
        lines.append(
            f"  attacks refused: {refused}/{attacks}; 5xx answers: {self.server_errors}"
            f" (besides GET /leader's documented 503 on a follower:"
            f" {self.follower_leader_503}); valid signed replies to peer input:"
            f" {self.valid_replies}"
        )
        return "\n".join(lines)


@pytest.fixture(scope="module")
def secured_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Capture]]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    # A timeout that a busy test process cannot reach by accident: only an accepted
    # attack can move the leader or a term during the run.
    cluster = Cluster(
        3,
        folder,
        start=False,
        GOELECT_SECRET=SECRET,
        GOELECT_CLUSTER=CLUSTER,
        GOELECT_ELECT_TIMEOUT=3000,
        GOELECT_HEARTBEAT_INTERVAL=100,
        GOELECT_CONNECT_TIMEOUT=1.0,
    )
    capture = Capture()
    for index, node_id in enumerate(cluster.ids):
        capture.wrap(index, cluster.apps[node_id])
    try:
        for node_id in cluster.ids:
            cluster.state(node_id).start()
        cluster.wait_for_one_leader(timeout=20)
        yield cluster, capture
    finally:
        cluster.close()


def test_fuzz_every_route_of_a_secured_cluster(
    secured_cluster: tuple[Cluster, Capture],
) -> None:
    cluster, capture = secured_cluster
    ids = cluster.ids
    leader = cluster.wait_for_one_leader(timeout=20)
    # Let the cluster carry traffic for the replays.
    deadline = time.monotonic() + 10
    while len(capture.accepted) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(capture.accepted) >= 30, "the nodes' own requests were not captured"

    terms = {i: cluster.snapshot(i).term for i in ids}
    term = terms[leader]
    clients = [Client(port) for port in cluster.ports]
    good_key = Keyring([SECRET])
    other_key = Keyring(["an-attacker-guess-0123456789"])
    tally = Tally()

    def peers_of(index: int) -> list[str]:
        return [i for j, i in enumerate(ids) if j != index]

    def dangerous(spec: tuple[str, str], sender: str) -> bytes:
        route, what = spec
        far = term + 1000
        msg: dict[str, Any]
        if what == "far_term":
            msg = {"sender": sender, "term": far}
            if route == "heartbeat":
                msg["seq"] = 1
        elif what == "pre_vote_far":
            msg = {"sender": sender, "term": far, "pre_vote": True}
        elif what == "transfer":
            msg = {"sender": sender, "term": term + 1, "transfer": True}
        elif what == "claim_leader":
            msg = {"sender": sender, "term": term, "seq": 99, "address": "http://evil:1"}
        else:  # a hand-over order in the leader's name
            msg = {"sender": leader, "term": term}
        return json.dumps(msg).encode()

    def signed_headers(
        signer: RequestSigner, method: str, path: str, recipient: str, body: bytes
    ) -> dict[str, str]:
        headers, _ = signer.request_headers(method, path, recipient, body)
        return headers

    def harmless(route: str, body: bytes, peer: str) -> bytes:
        """A body that parses as a valid message is made stale: it must not move anything."""
        try:
            data = json.loads(body)
            messages.from_wire(messages.REQUEST_TYPES[route], data)  # type: ignore[type-var]
        except (ValueError, RecursionError, messages.MessageError):
            return body
        data["term"] = max(0, term - 1)
        return json.dumps(data).encode()

    def build(item: Fuzzed) -> tuple[str, str, bytes | None, dict[str, str]]:
        """Method, path, body and headers of one generated request."""
        target = ids[item.target]
        peers = peers_of(item.target)
        sender = peers[item.sender % len(peers)]
        path = P + RPC[item.route]
        base = {"Content-Type": item.content_type} if item.content_type else {}
        if item.kind == "routes":
            headers = {**base, **item.extra_headers}
            return item.method, P + (item.path or "/"), item.body, headers
        if item.kind == "peer_garbage":
            if item.message is not None:
                named = item.message["sender"]
                item.body = json.dumps(
                    {**item.message, "sender": sender if named == HEADER_SENDER else named}
                ).encode()
            body = harmless(item.route, item.body or b"", sender)
            signer = RequestSigner(good_key, CLUSTER, sender)
            return (
                "POST",
                path,
                body,
                {**base, **signed_headers(signer, "POST", path, target, body)},
            )
        body = dangerous(item.body_spec, sender)
        if item.kind == "unsigned":
            headers = {CLUSTER_HEADER: CLUSTER}
            if item.variant % 2:
                headers[SENDER_HEADER] = sender
            return "POST", path, body, {**base, **headers}
        if item.kind == "forged":
            headers = signed_headers(
                RequestSigner(good_key, CLUSTER, sender), "POST", path, target, body
            )
            version, cluster, name, stamp, nonce, sig = headers[AUTH_HEADER].split(" ")
            forgeries = [
                [version, cluster, name, stamp, nonce, "0" * 64],
                [version, cluster, name, stamp, nonce, sig[:-1] + ("0" if sig[-1] != "0" else "1")],
                [version, cluster, name, stamp, nonce, sig[:-2]],
                [version, cluster, name, stamp, nonce, sig.upper()],
                ["v2", cluster, name, stamp, nonce, sig],
                [],
                [version, cluster, name, stamp, nonce, sig + "00"],
                [version, cluster, name, stamp, nonce, sig[::-1]],
            ]
            forged = " ".join(forgeries[item.variant % len(forgeries)])
            # No auth header at all: an unsigned request that names the cluster.
            headers = {AUTH_HEADER: forged} if forged else {CLUSTER_HEADER: CLUSTER}
            return "POST", path, body, {**base, **headers}
        if item.kind == "wrong_key":
            signer = RequestSigner(other_key, CLUSTER, sender)
            return (
                "POST",
                path,
                body,
                {**base, **signed_headers(signer, "POST", path, target, body)},
            )
        if item.kind == "stale":
            offset = 3.0 + MAX_CLOCK_SKEW + 1 + item.variant * 60
            when = (
                time.time() - offset
                if item.variant % 2 == 0
                else time.time() + MAX_CLOCK_SKEW + 1 + item.variant
            )
            signer = RequestSigner(good_key, CLUSTER, sender, clock=lambda: when)
            return (
                "POST",
                path,
                body,
                {**base, **signed_headers(signer, "POST", path, target, body)},
            )
        if item.kind == "wrong_cluster":
            other = item.extra_headers["cluster"]
            if item.variant % 2:
                signer = RequestSigner(good_key, other, sender)
                headers = signed_headers(signer, "POST", path, target, body)
            else:
                headers = {SENDER_HEADER: sender}
                if other:
                    headers[CLUSTER_HEADER] = other
            if not other:
                headers.pop(CLUSTER_HEADER, None)
            return "POST", path, body, {**base, **headers}
        if item.kind == "unknown_sender":
            stranger = target if item.extra_headers["id"] == "self" else item.extra_headers["id"]
            body = dangerous(item.body_spec, stranger)
            signer = RequestSigner(good_key, CLUSTER, stranger)
            return (
                "POST",
                path,
                body,
                {**base, **signed_headers(signer, "POST", path, target, body)},
            )
        raise AssertionError(item.kind)  # pragma: no cover

    def replay(item: Fuzzed) -> tuple[int, str, bytes, dict[str, str]]:
        captured = capture.snapshot()
        index, path, headers, body = captured[(item.variant * 37 + item.target) % len(captured)]
        # Half to the node that accepted it, half to another node.
        to = index if item.variant % 2 == 0 else (index + 1 + item.target % 2) % 3
        return to, path, body, {**headers, "Content-Type": "application/json"}

    def check_cluster() -> None:
        for node_id in ids:
            state = cluster.state(node_id)
            assert state.running, f"{node_id} stopped: {list(state.elector.errors)}"
            snap = state.elector.snapshot
            assert snap.term == terms[node_id], f"the term of {node_id} moved: {snap.term}"
            assert snap.leader_id == leader, f"{node_id} follows {snap.leader_id}, not {leader}"
            crashes = [e for e in state.elector.errors if e.kind in ("crash", "storage", "loop")]
            assert not crashes, crashes

    @settings(
        max_examples=BATCHES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(fuzzed(), min_size=BATCH, max_size=BATCH))
    def run_batch(batch: list[Fuzzed]) -> None:
        for item in batch:
            if item.kind == "replay":
                to, path, body, headers = replay(item)
                method = "POST"
                target = to
            else:
                method, path, body_or_none, headers = build(item)
                body = body_or_none if body_or_none is not None else b""
                target = item.target
            status, resp_headers, data = clients[target].send(
                method, path, body if (body or method != "GET") else None, headers
            )
            tally.sent += 1
            tally.by_kind[item.kind] += 1
            tally.by_answer[(item.kind, status)] += 1
            allowed = EXPECTED[item.kind]
            what = f"{item.kind} {method} {path} -> {ids[target]}: {status} {data[:200]!r}"
            assert status in allowed, what
            if status >= 500:
                is_leader_route = path == P + "/leader" and method in ("GET", "HEAD")
                assert is_leader_route and ids[target] != leader, what
                tally.follower_leader_503 += 1
                continue
            if status == 308:
                # Only Werkzeug's merge of "//": to the same path, slashes merged.
                assert "//" in path, what
                location = urlsplit(resp_headers["location"])
                assert location.path.startswith(P + "/") and "//" not in location.path, what
                continue
            if status >= 400:
                # Our routes answer JSON; a path that no route of the prefix matches
                # ("/_goelect//") is the host app's 404, and HEAD has no body.
                if method != "HEAD" and not path.startswith(P + "//"):
                    error = json.loads(data)
                    assert set(error) == {"error", "message"} and error["message"], what
                    assert resp_headers["content-type"] == "application/json", what
                continue
            if item.kind == "peer_garbage":
                # A valid reply, signed for this request by the node it went to.
                kind = next(k for k, v in RPC.items() if path == P + v)
                reply_type: Any = messages.REPLY_FOR[messages.REQUEST_TYPES[kind]]
                reply = messages.from_wire(reply_type, json.loads(data))
                assert reply.sender == ids[target], what
                assert reply.term == terms[ids[target]], what
                _, _, signed_by, _, nonce, _ = headers[AUTH_HEADER].split(" ")
                RequestSigner(good_key, CLUSTER, signed_by).verify_reply(
                    ids[target],
                    nonce,
                    status,
                    resp_headers_cased(resp_headers),
                    data,
                )
                tally.valid_replies += 1
        tally.batches += 1
        check_cluster()

    started = time.monotonic()
    try:
        run_batch()
    finally:
        for client in clients:
            client.close()
        tally.server_errors = (
            sum(n for (k, s), n in tally.by_answer.items() if s >= 500) - tally.follower_leader_503
        )
        print()
        print(tally.report())
        print(f"  in {time.monotonic() - started:.1f}s; leader {leader}, term {term} throughout")
    assert tally.sent >= MIN_REQUESTS
    for kind in ATTACKS:
        assert tally.by_kind[kind] > 100, f"too few {kind} requests: {tally.by_kind[kind]}"
    assert tally.server_errors == 0
    assert tally.valid_replies > 100, "too few valid messages reached the elector"
    check_cluster()


def resp_headers_cased(headers: dict[str, str]) -> dict[str, str]:
    """Response headers under their canonical names (the client lower-cased them)."""
    return {"-".join(p.capitalize() for p in k.split("-")): v for k, v in headers.items()}
