"""Signed RPCs: the signing rules (flask_goelect.auth), the security settings, and the
routes refusing what is unsigned, forged, stale, replayed, from another cluster or a stranger."""

from __future__ import annotations

import json
import logging
import time
import timeit
from pathlib import Path
from typing import Any

import pytest
from core_net import started_long_ago
from flask import Flask, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_nodes import Cluster, LiveServer, make_app

from flask_goelect import LeaderElect
from flask_goelect.auth import (
    AUTH_HEADER,
    CLUSTER_HEADER,
    MAX_CLOCK_SKEW,
    SENDER_HEADER,
    SIGNATURE_HEADER,
    AuthError,
    Keyring,
    ReplayCache,
    RequestSigner,
    RequestVerifier,
    is_loopback,
)
from flask_goelect.core import ConfigError, Peer
from flask_goelect.messages import VoteRequest
from flask_goelect.transport import HttpTransport, TransportError
from goelect_harness.helpers import free_port, wait_until

SECRET = "s3cret-s3cret-s3cret-s3cret"
OLD_SECRET = "old-old-old-old-old-old-old"
PEERS = ("n1", "n2", "n3")
PATH = "/_goelect/rpc/vote"
BODY = b'{"sender":"n1","term":3}'


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pair(
    secrets: tuple[str, ...] = (SECRET,),
    verify_secrets: tuple[str, ...] | None = None,
    cluster: str = "prod",
    clock: Clock | None = None,
    sender: str = "n1",
    recipient: str = "n2",
) -> tuple[RequestSigner, RequestVerifier, Clock]:
    clock = clock or Clock()
    signer = RequestSigner(Keyring(secrets), cluster, sender, clock=clock)
    verifier = RequestVerifier(
        Keyring(verify_secrets or secrets),
        cluster,
        recipient,
        PEERS,
        max_age=2.0 + MAX_CLOCK_SKEW,
        clock=clock,
    )
    return signer, verifier, clock


def accept(
    verifier: RequestVerifier,
    headers: dict[str, str],
    body: bytes = BODY,
    method: str = "POST",
    path: str = PATH,
) -> None:
    claim = verifier.check_headers(headers)
    verifier.verify(claim, method, path, body)


def refused(status: int, error: str | None = None) -> Any:
    class Refused:
        def __enter__(self) -> Refused:
            return self

        def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
            assert isinstance(exc, AuthError), f"expected AuthError {status}, got {exc!r}"
            assert exc.status == status, (exc.status, exc.message)
            if error is not None:
                assert exc.error == error, (exc.error, exc.message)
            return True

    return Refused()


# -- requests ------------------------------------------------------------------------------


def fields(headers: dict[str, str]) -> list[str]:
    """The fields of a request's auth header: version, cluster, sender, timestamp, nonce,
    signature."""
    return headers[AUTH_HEADER].split(" ")


def with_field(headers: dict[str, str], index: int, value: str) -> dict[str, str]:
    parts = fields(headers)
    parts[index] = value
    return {**headers, AUTH_HEADER: " ".join(parts)}


def test_a_signed_request_is_accepted_once() -> None:
    signer, verifier, _ = pair()
    headers, nonce = signer.request_headers("POST", PATH, "n2", BODY)
    # One header for the signature's fields (each header costs in every HTTP stack).
    assert set(headers) == {AUTH_HEADER}
    version, cluster, sender, timestamp, sent_nonce, signature = fields(headers)
    assert (version, cluster, sender, sent_nonce) == ("v1", "prod", "n1", nonce)
    assert len(nonce) == 32
    assert timestamp.isdigit() and len(signature) == 64
    accept(verifier, headers)
    with refused(401, "replayed_request"):
        accept(verifier, headers)


def test_every_signed_field_is_bound() -> None:
    signer, verifier, clock = pair()
    headers, _ = signer.request_headers("POST", PATH, "n2", BODY)
    other_node = RequestVerifier(Keyring([SECRET]), "prod", "n3", PEERS, max_age=32.0, clock=clock)
    timestamp, signature = fields(headers)[3], fields(headers)[5]
    cases: list[tuple[str, Any]] = [
        ("body", lambda: accept(verifier, headers, body=BODY.replace(b"3", b"9"))),
        ("body appended", lambda: accept(verifier, headers, body=BODY + b" ")),
        ("method", lambda: accept(verifier, headers, method="PUT")),
        ("path", lambda: accept(verifier, headers, path="/_goelect/rpc/heartbeat")),
        ("recipient", lambda: accept(other_node, headers)),
        ("sender", lambda: accept(verifier, with_field(headers, 2, "n3"))),
        ("timestamp", lambda: accept(verifier, with_field(headers, 3, str(int(timestamp) - 1)))),
        ("nonce", lambda: accept(verifier, with_field(headers, 4, "a" * 32))),
        (
            "signature",
            lambda: accept(
                verifier,
                with_field(headers, 5, signature[:-1] + ("1" if signature[-1] == "0" else "0")),
            ),
        ),
    ]
    for what, attempt in cases:
        with refused(401, "bad_signature"):
            attempt()
        assert what  # named for the failure message above
    # None of the refusals consumed the nonce: the original still passes, once.
    accept(verifier, headers)


def test_unsigned_and_malformed_headers_are_refused() -> None:
    signer, verifier, _ = pair()
    headers, _ = signer.request_headers("POST", PATH, "n2", BODY)
    with refused(401, "unauthorized"):
        accept(verifier, {CLUSTER_HEADER: "prod"})
    with refused(401, "unauthorized"):  # the sender alone proves nothing
        accept(verifier, {CLUSTER_HEADER: "prod", SENDER_HEADER: "n1"})
    bad_fields = {
        0: ["v2", "V1", ""],
        1: ["", "-x", "two words"],
        2: ["../n1", "n1\n", "x" * 65, ""],
        3: ["-5", "1e12", "12.5", "9" * 17, ""],
        4: ["short", "n" * 65, "nonce!with!marks!!"],
        5: ["g" * 64, "A" * 64, "abc", "0" * 65],
    }
    for index, values in bad_fields.items():
        for value in values:
            with refused(401, "unauthorized"):
                accept(verifier, with_field(headers, index, value))
    for mangled in (
        headers[AUTH_HEADER] + " ",
        " " + headers[AUTH_HEADER],
        headers[AUTH_HEADER].replace(" ", "  ", 1),
        headers[AUTH_HEADER].replace(" ", "\t"),
        headers[AUTH_HEADER] + " extra",
    ):
        with refused(401, "unauthorized"):
            accept(verifier, {**headers, AUTH_HEADER: mangled})
    accept(verifier, headers)


def test_the_window_ties_to_the_election_timeout_and_the_clock_skew() -> None:
    signer, verifier, clock = pair()
    sent_at = clock.now
    old, _ = signer.request_headers("POST", PATH, "n2", BODY)
    clock.now = sent_at + 2.0 + MAX_CLOCK_SKEW - 0.01
    accept(verifier, old)  # just inside: T + skew
    old2, _ = pair(clock=Clock(sent_at))[0].request_headers("POST", PATH, "n2", BODY)
    clock.now = sent_at + 2.0 + MAX_CLOCK_SKEW + 0.01
    with refused(401, "stale_request"):
        accept(verifier, old2)
    clock.now = sent_at - MAX_CLOCK_SKEW - 0.01  # the receiver's clock is behind
    future, _ = RequestSigner(
        Keyring([SECRET]), "prod", "n1", clock=Clock(sent_at)
    ).request_headers("POST", PATH, "n2", BODY)
    with refused(401, "stale_request"):
        accept(verifier, future)
    clock.now = sent_at - MAX_CLOCK_SKEW + 0.01
    accept(verifier, future)


def test_key_rotation_first_signs_all_verify() -> None:
    # Step 1 of a rotation: every node verifies old and new, still signs with old.
    signer, verifier, _ = pair(secrets=(OLD_SECRET,), verify_secrets=(OLD_SECRET, SECRET))
    accept(verifier, signer.request_headers("POST", PATH, "n2", BODY)[0])
    # Step 2: the new key signs; nodes still on step 1 verify it.
    signer, verifier, _ = pair(secrets=(SECRET, OLD_SECRET), verify_secrets=(OLD_SECRET, SECRET))
    accept(verifier, signer.request_headers("POST", PATH, "n2", BODY)[0])
    # Step 3: the old key is gone; a request signed with it is forged.
    signer, verifier, _ = pair(secrets=(OLD_SECRET,), verify_secrets=(SECRET,))
    with refused(401, "bad_signature"):
        accept(verifier, signer.request_headers("POST", PATH, "n2", BODY)[0])


def test_cluster_names_are_checked_first() -> None:
    for signer_cluster, verifier_cluster in (("staging", "prod"), ("", "prod"), ("prod", "")):
        clock = Clock()
        signer = RequestSigner(Keyring([SECRET]), signer_cluster, "n1", clock=clock)
        verifier = RequestVerifier(
            Keyring([SECRET]), verifier_cluster, "n2", PEERS, max_age=32.0, clock=clock
        )
        headers, _ = signer.request_headers("POST", PATH, "n2", BODY)
        with refused(409, "wrong_cluster"):
            accept(verifier, headers)
        # Even unsigned: the cluster is checked before the signature.
        unsigned = {CLUSTER_HEADER: signer_cluster} if signer_cluster else {}
        with refused(409, "wrong_cluster"):
            accept(verifier, unsigned)


def test_a_stranger_with_the_secret_is_forbidden_only_after_the_signature() -> None:
    clock = Clock()
    verifier = RequestVerifier(Keyring([SECRET]), "prod", "n2", PEERS, max_age=32.0, clock=clock)
    stranger = RequestSigner(Keyring([SECRET]), "prod", "intruder", clock=clock)
    with refused(403, "forbidden"):
        accept(verifier, stranger.request_headers("POST", PATH, "n2", BODY)[0])
    # Without the secret a stranger learns nothing about the peer list: 401.
    guesser = RequestSigner(Keyring(["not-the-secret-at-all"]), "prod", "intruder", clock=clock)
    with refused(401, "bad_signature"):
        accept(verifier, guesser.request_headers("POST", PATH, "n2", BODY)[0])
    # A node's own id is not a peer, except where allowed (its own status queries).
    me = RequestSigner(Keyring([SECRET]), "prod", "n2", clock=clock)
    with refused(403):
        accept(verifier, me.request_headers("POST", PATH, "n2", BODY)[0])
    headers, _ = me.request_headers("GET", "/_goelect/status", "n2", b"")
    verifier.verify(
        verifier.check_headers(headers), "GET", "/_goelect/status", b"", allow_self=True
    )


def test_without_a_secret_only_the_cluster_is_checked() -> None:
    clock = Clock()
    signer = RequestSigner(None, "prod", "n1", clock=clock)
    headers, nonce = signer.request_headers("POST", PATH, "n2", BODY)
    assert headers == {SENDER_HEADER: "n1", CLUSTER_HEADER: "prod"} and nonce == ""
    verifier = RequestVerifier(None, "prod", "n2", PEERS, max_age=32.0, clock=clock)
    claim = verifier.check_headers(headers)
    verifier.verify(claim, "POST", PATH, BODY)
    verifier.verify(claim, "POST", PATH, BODY)  # no replay cache without signatures
    assert verifier.reply_headers(claim, 200, b"{}") == {}
    with refused(409):
        verifier.check_headers({SENDER_HEADER: "n1"})
    with refused(403):
        verifier.check_sender("intruder")
    signer.verify_reply("n2", "", 200, {}, b"{}")  # nothing to check


# -- replies -------------------------------------------------------------------------------


def test_replies_are_bound_to_the_request() -> None:
    signer, verifier, _ = pair()
    headers, nonce = signer.request_headers("POST", PATH, "n2", BODY)
    claim = verifier.check_headers(headers)
    verifier.verify(claim, "POST", PATH, BODY)
    reply = b'{"sender":"n2","term":3,"granted":true}'
    reply_headers = verifier.reply_headers(claim, 200, reply)
    signer.verify_reply("n2", nonce, 200, reply_headers, reply)

    other_headers, other_nonce = signer.request_headers("POST", PATH, "n2", BODY)
    cases = [
        ("recorded reply to another request", "n2", other_nonce, 200, reply_headers, reply),
        ("body", "n2", nonce, 200, reply_headers, reply.replace(b"true", b"false")),
        ("status", "n2", nonce, 201, reply_headers, reply),
        ("responder", "n3", nonce, 200, reply_headers, reply),
    ]
    for what, responder, n, status, h, body in cases:
        with refused(401, "bad_reply_signature"):
            signer.verify_reply(responder, n, status, h, body)
        assert what
    with refused(401, "unsigned_reply"):
        signer.verify_reply("n2", nonce, 200, {}, reply)
    forger = RequestVerifier(
        Keyring(["a-forger-without-the-secret"]), "prod", "n2", PEERS, max_age=32.0
    )
    with refused(401, "bad_reply_signature"):
        signer.verify_reply("n2", nonce, 200, forger.reply_headers(claim, 200, reply), reply)
    assert other_headers


@settings(max_examples=300, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=200),
    position=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_any_changed_byte_of_a_signed_request_is_refused(
    body: bytes, position: int, flip: int
) -> None:
    signer, verifier, _ = pair()
    headers, _ = signer.request_headers("POST", PATH, "n2", body)
    if not body:
        body = b"x"
    index = position % len(body)
    changed = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    with refused(401, "bad_signature"):
        accept(verifier, headers, body=changed)


# -- the replay cache --------------------------------------------------------------------------


def test_replay_cache_forgets_old_nonces_but_never_readmits_them() -> None:
    cache = ReplayCache(capacity=3)
    assert cache.add("n1", "a", 1000, oldest_ms=0)
    assert not cache.add("n1", "a", 1000, oldest_ms=0)
    assert cache.add("n2", "a", 1000, oldest_ms=0)  # nonces are per sender
    assert cache.add("n1", "b", 1001, oldest_ms=0)
    # Full: the oldest entry goes, and nothing at or below its time is accepted.
    assert cache.add("n1", "c", 1002, oldest_ms=0)
    assert len(cache) == 3 and cache.floor == 1000
    assert not cache.add("n1", "a", 1000, oldest_ms=0)
    assert not cache.add("n1", "fresh", 999, oldest_ms=0)
    # Entries older than the window are forgotten, and the floor follows.
    assert cache.add("n1", "d", 5000, oldest_ms=4000)
    assert len(cache) == 1 and cache.floor == 1002
    # The wall clock stepped back (oldest_ms goes down): still refused.
    assert not cache.add("n1", "c", 1002, oldest_ms=0)


def test_a_replay_after_the_cache_forgot_is_too_old() -> None:
    signer, verifier, clock = pair()
    headers, _ = signer.request_headers("POST", PATH, "n2", BODY)
    accept(verifier, headers)
    clock.now += 2.0 + MAX_CLOCK_SKEW + 1
    accept(verifier, signer.request_headers("POST", PATH, "n2", BODY)[0])  # expires the old one
    with refused(401, "stale_request"):
        accept(verifier, headers)
    clock.now -= 10  # a clock step back brings the old timestamp into the window again
    with refused(401, "replayed_request"):
        accept(verifier, headers)


# -- small parts -----------------------------------------------------------------------------


def test_keyring_never_shows_a_secret() -> None:
    keyring = Keyring([SECRET, OLD_SECRET])
    assert SECRET not in repr(keyring) and len(keyring) == 2
    signer = RequestSigner(keyring, "prod", "n1")
    verifier = RequestVerifier(keyring, "prod", "n1", PEERS, max_age=1)
    assert SECRET not in repr(signer) + repr(verifier)
    with pytest.raises(ValueError):
        Keyring([])
    assert not keyring.verify(b"x", "not a signature")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("example.com", False),
        ("127.0.0.1.example.com", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_signing_is_cheap() -> None:
    """Per heartbeat: the leader signs a request and checks a reply, the follower checks
    the request and signs the reply."""
    signer, verifier, clock = pair()
    reply = b'{"sender":"n2","term":3,"seq":17,"success":true}'
    body = b'{"sender":"n1","term":3,"seq":17,"address":"http://10.0.0.1:5000","tags":{}}'

    def round_trip() -> None:
        headers, nonce = signer.request_headers("POST", PATH, "n2", body)
        claim = verifier.check_headers(headers)
        verifier.verify(claim, "POST", PATH, body)
        signer.verify_reply("n2", nonce, 200, verifier.reply_headers(claim, 200, reply), reply)

    n = 5000
    per_round = min(timeit.repeat(round_trip, number=n, repeat=3)) / n * 1e6
    sign = min(
        timeit.repeat(lambda: signer.request_headers("POST", PATH, "n2", body), number=n, repeat=3)
    )
    print(f"\nsign request: {sign / n * 1e6:.1f} us; full signed round trip: {per_round:.1f} us")
    assert per_round < 200, per_round


# -- settings ---------------------------------------------------------------------------------


BAD_SECURITY_CONFIGS = [
    ({"GOELECT_SECRET": "short"}, "GOELECT_SECRET", "at least 16"),
    ({"GOELECT_SECRET": ["x" * 20, "tiny"]}, "GOELECT_SECRET entry 2", "at least 16"),
    ({"GOELECT_SECRET": []}, "GOELECT_SECRET", "at least one secret"),
    ({"GOELECT_SECRET": 12345}, "GOELECT_SECRET", "string"),
    ({"GOELECT_SECRET": [b"x" * 20, 5]}, "GOELECT_SECRET entry 2", "string"),
    ({"GOELECT_SECRET": ["k" * 20 + str(i) for i in range(9)]}, "GOELECT_SECRET", "at most 8"),
    ({"GOELECT_CLUSTER": "two words"}, "GOELECT_CLUSTER", "same on every node"),
    ({"GOELECT_CLUSTER": 7}, "GOELECT_CLUSTER", "A-Z"),
    ({"GOELECT_TLS_CA": "/no/such/ca.pem"}, "GOELECT_TLS_CA", "not a file"),
    ({"GOELECT_TLS_CERT": "/no/such/cert.pem"}, "GOELECT_TLS_CERT", "client certificate"),
    ({"GOELECT_TLS_CERT": 5}, "GOELECT_TLS_CERT", "path"),
    ({"GOELECT_STATUS_PUBLIC": "sometimes"}, "GOELECT_STATUS_PUBLIC", "true or false"),
]


@pytest.mark.parametrize(("changes", "key", "fix"), BAD_SECURITY_CONFIGS)
def test_bad_security_config_names_the_key_and_the_fix(
    changes: dict[str, Any], key: str, fix: str
) -> None:
    app = make_app(**changes)
    with pytest.raises(ConfigError) as info:
        LeaderElect(app)
    assert key in str(info.value) and fix in str(info.value), str(info.value)
    for secret in ("short", "tiny"):
        assert f"'{secret}'" not in str(info.value), "a secret must never be shown"


def test_tls_key_needs_a_cert(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not really a key")
    app = make_app(GOELECT_TLS_KEY=str(key))
    with pytest.raises(ConfigError, match="GOELECT_TLS_KEY is set but GOELECT_TLS_CERT"):
        LeaderElect(app)


def test_security_settings_are_read() -> None:
    app = make_app(
        GOELECT_SECRET=f" {SECRET} , {OLD_SECRET} ",
        GOELECT_CLUSTER="billing-prod",
        GOELECT_STATUS_PUBLIC="yes",
    )
    LeaderElect(app)
    state = app.extensions["goelect"]
    s = state.settings
    assert s.secrets == (SECRET.encode(), OLD_SECRET.encode())
    assert s.cluster == "billing-prod" and s.status_public is True
    assert SECRET not in repr(s)
    assert s.auth_max_age == s.elect_timeout + MAX_CLOCK_SKEW
    assert state.verifier.peers == {"n2", "n3"} and state.signer.signs
    defaults = make_app()
    LeaderElect(defaults)
    d = defaults.extensions["goelect"].settings
    assert d.secrets == () and d.cluster == "" and d.status_public is False
    assert not defaults.extensions["goelect"].signer.signs


def _start_and_stop(app: Flask) -> None:
    elect = LeaderElect(app)
    elect.start()
    elect.stop(transfer=False)


def test_warning_at_start_when_peers_are_remote_and_nothing_is_signed(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    remote = ["n1=http://127.0.0.1:1", "n2=http://10.9.9.9:1", "n3=http://db.internal:1"]
    with caplog.at_level(logging.WARNING, logger="flask_goelect"):
        _start_and_stop(make_app(GOELECT_PEERS=remote))
    text = caplog.text
    assert "GOELECT_SECRET is not set" in text and "n2, n3" in text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flask_goelect"):
        _start_and_stop(make_app(GOELECT_PEERS=remote, GOELECT_SECRET=SECRET))
        _start_and_stop(make_app())  # every peer on loopback
    assert "GOELECT_SECRET" not in caplog.text


def test_warning_when_tls_settings_are_unused(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    with caplog.at_level(logging.WARNING, logger="flask_goelect"):
        _start_and_stop(make_app(GOELECT_TLS_CA=str(ca)))
    assert "no peer has an https:// address" in caplog.text


def test_status_of_a_node_is_signed_json() -> None:
    # The JSON of an answer is exactly the bytes its signature covers.
    signer, verifier, _ = pair()
    headers, nonce = signer.request_headers("GET", "/_goelect/status", "n2", b"")
    claim = verifier.check_headers(headers)
    verifier.verify(claim, "GET", "/_goelect/status", b"")
    body = json.dumps({"node_id": "n2"}).encode()
    signer.verify_reply("n2", nonce, 200, verifier.reply_headers(claim, 200, body), body)


def test_request_timestamps_are_wall_clock_milliseconds() -> None:
    signer = RequestSigner(Keyring([SECRET]), "", "n1")
    headers, _ = signer.request_headers("POST", PATH, "n2", BODY)
    assert abs(int(fields(headers)[3]) / 1000 - time.time()) < 5
    assert fields(headers)[1] == "-"  # no cluster name


def test_a_local_request_is_from_loopback_and_not_proxied() -> None:
    from flask_goelect.auth import is_local_request

    assert is_local_request("127.0.0.1", {})
    assert is_local_request("::1", {"Accept": "*/*"})
    assert not is_local_request("10.0.0.5", {})
    assert not is_local_request(None, {})
    for header in ("Forwarded", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Host"):
        assert not is_local_request("127.0.0.1", {header: "203.0.113.9"})


# -- the routes of a node with a secret ---------------------------------------------------------

P = "/_goelect"


class SecuredNode:
    """A running node n1 (peers unreachable, never times out during a test) with a secret,
    and signers for its peers, to talk to it through the Flask test client."""

    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.state_file = tmp_path / "n1.json"
        self.app = make_app(
            GOELECT_SECRET=SECRET,
            GOELECT_CLUSTER="prod",
            GOELECT_ELECT_TIMEOUT=20000,
            GOELECT_HEARTBEAT_INTERVAL=2000,
            GOELECT_STATE_FILE=str(self.state_file),
            **config,
        )
        self.elect = LeaderElect(self.app)
        with started_long_ago():  # its promise of a start would refuse the test's votes
            self.elect.start()
        self.client = self.app.test_client()
        self.keyring = Keyring([SECRET])

    def signer(
        self, sender: str = "n2", keyring: Keyring | None = None, **kw: Any
    ) -> RequestSigner:
        return RequestSigner(keyring or self.keyring, kw.pop("cluster", "prod"), sender, **kw)

    def post(
        self,
        route: str,
        msg: Any,
        *,
        signer: RequestSigner | None = None,
        headers: dict[str, str] | None = None,
        recipient: str = "n1",
    ) -> tuple[Any, str]:
        body = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
        nonce = ""
        all_headers = {"Content-Type": "application/json"}
        if signer is not None:
            signed, nonce = signer.request_headers("POST", P + route, recipient, body)
            all_headers.update(signed)
        all_headers.update(headers or {})
        return self.client.post(P + route, data=body, headers=all_headers), nonce

    def node_state(self) -> tuple[Any, str, str | None, int]:
        from flask_goelect.storage import FileStorage

        storage = FileStorage(self.state_file)
        try:
            hard = storage.load()
        finally:
            storage.close()
        snap = self.app.extensions["goelect"].elector.snapshot
        return hard, snap.state, snap.leader_id, snap.term

    def close(self) -> None:
        self.elect.stop(transfer=False)


@pytest.fixture
def node(tmp_path: Path) -> Any:
    secured = SecuredNode(tmp_path)
    try:
        yield secured
    finally:
        secured.close()


def reply_headers_of(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items()}


def test_a_signed_vote_is_granted_and_its_reply_signed(node: SecuredNode) -> None:
    signer = node.signer("n2")
    response, nonce = node.post("/rpc/vote", {"sender": "n2", "term": 3}, signer=signer)
    assert response.status_code == 200, response.json
    assert response.json["granted"] is True
    signer.verify_reply("n1", nonce, 200, reply_headers_of(response), response.data)
    hard = node.node_state()[0]
    assert (hard.term, hard.voted_for) == (3, "n2")


def test_refused_requests_change_nothing(node: SecuredNode) -> None:
    # The one vote this node grants (a vote promises no other for T, 20 s here).
    danger = {"sender": "n3", "term": 99}  # would make n1 vote in term 99
    heartbeat = {"sender": "n3", "term": 99, "seq": 1}
    recorded, _ = node.signer("n3").request_headers(
        "POST", P + "/rpc/vote", "n1", json.dumps(danger).encode()
    )
    accepted, _ = node.post("/rpc/vote", danger, headers={**recorded})  # the original
    assert accepted.status_code == 200
    before = node.node_state()
    assert before[3] == 99
    far = {"sender": "n3", "term": 500}
    cases: list[tuple[str, Any, int, str]] = [
        (
            "unsigned",
            node.post("/rpc/vote", far, headers={CLUSTER_HEADER: "prod"})[0],
            401,
            "not signed",
        ),
        (
            "unsigned but names a sender",
            node.post("/rpc/vote", far, headers={SENDER_HEADER: "n3", CLUSTER_HEADER: "prod"})[0],
            401,
            "not signed",
        ),
        (
            "wrong secret",
            node.post(
                "/rpc/vote", far, signer=node.signer("n3", Keyring(["a-guess-a-guess-a-guess"]))
            )[0],
            401,
            "does not match",
        ),
        (
            "meant for another node",
            node.post("/rpc/vote", far, signer=node.signer("n3"), recipient="n2")[0],
            401,
            "does not match",
        ),
        (
            "replayed",
            node.post("/rpc/vote", danger, headers={**recorded})[0],
            401,
            "already received",
        ),
        (
            "body swapped",
            node.post("/rpc/vote", far, headers={**recorded})[0],
            401,
            "does not match",
        ),
        (
            "too old",
            node.post("/rpc/vote", far, signer=node.signer("n3", clock=lambda: time.time() - 600))[
                0
            ],
            401,
            "ago",
        ),
        (
            "from the future",
            node.post("/rpc/vote", far, signer=node.signer("n3", clock=lambda: time.time() + 600))[
                0
            ],
            401,
            "future",
        ),
        (
            "heartbeat route, vote signature",
            node.post("/rpc/heartbeat", heartbeat, headers={**recorded})[0],
            401,
            "does not match",
        ),
        (
            "another cluster",
            node.post("/rpc/vote", far, signer=node.signer("n3", cluster="staging"))[0],
            409,
            "another cluster",
        ),
        (
            "no cluster",
            node.post("/rpc/vote", far, signer=node.signer("n3", cluster=""))[0],
            409,
            "another cluster",
        ),
        (
            "a stranger with the secret",
            node.post("/rpc/vote", {**far, "sender": "n9"}, signer=node.signer("n9"))[0],
            403,
            "not a peer",
        ),
        (
            "itself",
            node.post("/rpc/vote", {**far, "sender": "n1"}, signer=node.signer("n1"))[0],
            403,
            "not a peer",
        ),
        (
            "signed by one peer, in the name of another",
            node.post("/rpc/vote", far, signer=node.signer("n2"))[0],
            403,
            "not the sender",
        ),
    ]
    for what, response, status, words in cases:
        assert response.status_code == status, (what, response.json)
        assert response.mimetype == "application/json", what
        assert words in response.json["message"], (what, response.json)
        assert SIGNATURE_HEADER not in response.headers, what
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Goelect-HMAC-SHA256"), what
        assert node.node_state() == before, what


def test_bad_input_is_checked_after_the_signature(node: SecuredNode) -> None:
    signer = node.signer("n2")
    before = node.node_state()
    for body, content_type, status in [
        (b"{not json", "application/json", 400),
        (json.dumps({"sender": "n2", "term": -1}).encode(), "application/json", 400),
        (json.dumps({"sender": "n2", "term": 1}).encode(), "text/plain", 415),
        (b"x" * 20000, "application/json", 413),
    ]:
        response, _ = node.post(
            "/rpc/vote", body, signer=signer, headers={"Content-Type": content_type}
        )
        assert response.status_code == status, response.json
    # An unsigned request is refused before its body is looked at.
    response, _ = node.post(
        "/rpc/vote", b"x" * 20000, headers={"Content-Type": "text/plain", CLUSTER_HEADER: "prod"}
    )
    assert response.status_code == 401
    assert node.node_state() == before


def test_refusals_are_logged_but_not_flooded(
    node: SecuredNode, caplog: pytest.LogCaptureFixture
) -> None:
    from flask_goelect import rpc

    rpc.refusals._last.clear()
    with caplog.at_level(logging.WARNING, logger="flask_goelect"):
        for _ in range(5):
            response, _ = node.post(
                "/rpc/vote", {"sender": "n3", "term": 9}, signer=node.signer("n3", cluster="other")
            )
            assert response.status_code == 409
    lines = [r.getMessage() for r in caplog.records if "wrong_cluster" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "'other'" in lines[0] and "n3" in lines[0] and "127.0.0.1" in lines[0]
    log = rpc.RefusalLog(interval=0.0)
    with caplog.at_level(logging.WARNING, logger="flask_goelect"):
        caplog.clear()
        log.log("n1", "x", "refused one")
        log.log("n1", "x", "refused two")
    assert len(caplog.records) == 2


REMOTE = {"REMOTE_ADDR": "203.0.113.7"}


def test_status_is_for_the_peers_and_this_host(node: SecuredNode) -> None:
    client = node.client
    assert client.get(P + "/status").status_code == 200  # loopback
    remote = client.get(P + "/status", environ_base=REMOTE)
    assert remote.status_code == 401 and remote.json["error"] == "status_not_public"
    proxied = client.get(P + "/status", headers={"X-Forwarded-For": "203.0.113.7"})
    assert proxied.status_code == 401
    # A peer signs its request: it may read from anywhere, and the reply is signed.
    signer = node.signer("n2")
    headers, nonce = signer.request_headers("GET", P + "/status", "n1", b"")
    signed = client.get(P + "/status", headers=headers, environ_base=REMOTE)
    assert signed.status_code == 200 and signed.json["node_id"] == "n1"
    signer.verify_reply("n1", nonce, 200, reply_headers_of(signed), signed.data)
    # ... once.
    again = client.get(P + "/status", headers=headers, environ_base=REMOTE)
    assert again.status_code == 401 and again.json["error"] == "replayed_request"
    # Its own id is allowed here (flask goelect status on the node's host).
    headers, _ = node.signer("n1").request_headers("GET", P + "/status", "n1", b"")
    assert client.get(P + "/status", headers=headers, environ_base=REMOTE).status_code == 200
    # The health checks keep their codes, without details, for others.
    leader = client.get(P + "/leader", environ_base=REMOTE)
    assert leader.status_code == 503 and leader.json == {"is_leader": False}
    health = client.get(P + "/health", environ_base=REMOTE)
    assert health.status_code == 200 and health.json == {"running": True}
    assert client.get(P + "/health").json["node_id"] == "n1"


def test_public_status(tmp_path: Path) -> None:
    secured = SecuredNode(tmp_path, GOELECT_STATUS_PUBLIC=True)
    try:
        remote = secured.client.get(P + "/status", environ_base=REMOTE)
        assert remote.status_code == 200 and remote.json["node_id"] == "n1"
        assert secured.client.get(P + "/leader", environ_base=REMOTE).json["node_id"] == "n1"
    finally:
        secured.close()


def test_without_a_secret_the_cluster_and_sender_are_still_checked(tmp_path: Path) -> None:
    app = make_app(
        GOELECT_CLUSTER="prod", GOELECT_ELECT_TIMEOUT=20000, GOELECT_HEARTBEAT_INTERVAL=2000
    )
    elect = LeaderElect(app)
    with started_long_ago():
        elect.start()
    try:
        client = app.test_client()
        vote = {"sender": "n2", "term": 3}
        assert client.post(P + "/rpc/vote", json=vote).status_code == 409
        ok = client.post(P + "/rpc/vote", json=vote, headers={CLUSTER_HEADER: "prod"})
        assert ok.status_code == 200 and SIGNATURE_HEADER not in ok.headers
        stranger = client.post(
            P + "/rpc/vote", json={"sender": "n9", "term": 4}, headers={CLUSTER_HEADER: "prod"}
        )
        assert stranger.status_code == 403
        mismatch = client.post(
            P + "/rpc/vote",
            json={"sender": "n2", "term": 4},
            headers={CLUSTER_HEADER: "prod", SENDER_HEADER: "n3"},
        )
        assert mismatch.status_code == 403
        assert elect.term == 3
    finally:
        elect.stop(transfer=False)


# -- replies, end to end ------------------------------------------------------------------------


def test_the_transport_refuses_unsigned_forged_and_replayed_replies() -> None:
    peer_keyring = Keyring([SECRET])
    verifier = RequestVerifier(peer_keyring, "prod", "n2", PEERS, max_age=32.0)
    mode = {"now": "signed"}
    recorded: dict[str, str] = {}
    fake = Flask("fake_peer")

    @fake.post(P + "/rpc/vote")
    def vote() -> Any:
        claim = verifier.check_headers(request.headers)  # type: ignore[arg-type]
        verifier.verify(claim, "POST", P + "/rpc/vote", request.get_data())
        body = json.dumps({"sender": "n2", "term": 1, "granted": True}).encode()
        headers = {"Content-Type": "application/json"}
        if mode["now"] == "signed":
            headers.update(verifier.reply_headers(claim, 200, body))
            recorded.update(headers)
        elif mode["now"] == "forged":
            forger = RequestVerifier(
                Keyring(["not-the-secret-at-all"]), "prod", "n2", PEERS, max_age=32
            )
            headers.update(forger.reply_headers(claim, 200, body))
        elif mode["now"] == "replayed":
            headers.update(recorded)
        return body, 200, headers

    server = LiveServer(fake, free_port()).start()
    transport = HttpTransport(signer=RequestSigner(Keyring([SECRET]), "prod", "n1"))
    peer = Peer("n2", server.url)
    try:
        assert transport.send(peer, VoteRequest("n1", 1), (1.0, 2.0)).granted
        for what, words in [
            ("unsigned", "not signed"),
            ("forged", "wrong signature"),
            ("replayed", "wrong signature"),
        ]:
            mode["now"] = what
            with pytest.raises(TransportError, match=words):
                transport.send(peer, VoteRequest("n1", 1), (1.0, 2.0))
        mode["now"] = "signed"
        assert transport.send(peer, VoteRequest("n1", 1), (1.0, 2.0)).granted
    finally:
        transport.close()
        server.stop()


def _node_app(node_id: str, peers: list[str], folder: Path, **config: Any) -> Flask:
    return make_app(
        node_id,
        GOELECT_PEERS=peers,
        GOELECT_STATE_FILE=str(folder / f"{node_id}.json"),
        GOELECT_ELECT_TIMEOUT=300,
        GOELECT_HEARTBEAT_INTERVAL=30,
        GOELECT_CONNECT_TIMEOUT=0.3,
        **config,
    )


@pytest.mark.parametrize(
    "odd_one",
    [
        {"GOELECT_SECRET": "another-secret-another-secret"},
        {"GOELECT_SECRET": None},
        {"GOELECT_CLUSTER": "staging"},
    ],
    ids=["wrong-secret", "no-secret", "other-cluster"],
)
def test_a_node_with_other_credentials_cannot_disturb_the_cluster(
    tmp_path: Path, odd_one: dict[str, Any]
) -> None:
    ports = [free_port() for _ in range(3)]
    ids = ["n1", "n2", "n3"]
    peers = [f"{i}=http://127.0.0.1:{p}" for i, p in zip(ids, ports, strict=True)]
    base = {"GOELECT_SECRET": SECRET, "GOELECT_CLUSTER": "prod"}
    apps = {
        i: _node_app(i, peers, tmp_path, **(base | (odd_one if i == "n3" else {}))) for i in ids
    }
    elect = LeaderElect()
    servers = []
    for app, port in zip(apps.values(), ports, strict=True):
        elect.init_app(app)
        servers.append(LiveServer(app, port).start())
    states = {i: apps[i].extensions["goelect"] for i in ids}
    try:
        for node_id in ("n1", "n2"):
            states[node_id].start()

        def one_leader() -> str | None:
            leaders = [i for i in ("n1", "n2") if states[i].elector.snapshot.is_leader()]
            return leaders[0] if len(leaders) == 1 else None

        leader = wait_until(one_leader, 10)
        assert leader is not None, "no one leader within 10s"
        term = states[leader].elector.snapshot.term
        states["n3"].start()
        time.sleep(1.5)  # n3 times out several times and campaigns
        assert one_leader() == leader
        assert states[leader].elector.snapshot.term == term
        n3 = states["n3"].elector.snapshot
        assert not n3.is_leader()
        if odd_one.get("GOELECT_SECRET", SECRET) is None:
            # A node without the secret takes anyone's word (it is the unprotected
            # one), but the others take none of its answers.
            error = states[leader].status()["last_send_error"]["n3"]
            assert "not signed" in error, error
        else:
            assert n3.leader_id is None and n3.state == "candidate"
            errors = states["n3"].status()["last_send_error"]
            assert errors and all("401" in e or "409" in e for e in errors.values()), errors
    finally:
        for state in states.values():
            state.stop(transfer=False, timeout=2)
        for server in servers:
            server.stop()


def test_a_secured_cluster_elects_and_shows_its_status(tmp_path: Path) -> None:
    cluster = Cluster(3, tmp_path, GOELECT_SECRET=[SECRET, OLD_SECRET], GOELECT_CLUSTER="prod")
    try:
        leader = cluster.wait_for_one_leader()
        view = cluster.state(leader).cluster_state(timeout=3)
        assert all(entry["reachable"] for entry in view.values()), view
        assert {entry["leader_id"] for entry in view.values()} == {leader}
        # Hand-over and failover work signed.
        cluster.state(leader).transfer_leadership()
        second = cluster.wait_for_one_leader(exclude=leader)
        cluster.state(second).stop(transfer=False)
        cluster.wait_for_one_leader(exclude=second)
    finally:
        cluster.close()


# -- real processes ------------------------------------------------------------------------------


@pytest.mark.system
def test_a_secured_example_app_cluster_elects_fails_over_and_refuses_strangers() -> None:
    """Three ``python -m example_app --secret ... --cluster ...`` processes."""
    import http.client

    from goelect_harness.cluster import LocalCluster

    with LocalCluster(
        3,
        elect_timeout=200,
        heartbeat_interval=50,
        job_interval=0,
        node_args=["--secret", SECRET, "--cluster", "prod"],
    ) as cluster:
        cluster.start(timeout=60.0)
        leader = cluster.wait_for_leader(timeout=15)

        def attack(node_id: str, headers: dict[str, str]) -> int:
            node = cluster.nodes[node_id]
            conn = http.client.HTTPConnection(node.host, node.port, timeout=5)
            try:
                body = json.dumps({"sender": "n1", "term": leader.term + 100})
                conn.request(
                    "POST",
                    P + "/rpc/vote",
                    body=body,
                    headers={"Content-Type": "application/json", **headers},
                )
                return conn.getresponse().status
            finally:
                conn.close()

        for node_id in cluster.nodes:
            assert attack(node_id, {CLUSTER_HEADER: "prod", SENDER_HEADER: "n1"}) == 401
            assert attack(node_id, {CLUSTER_HEADER: "staging"}) == 409
        assert cluster.wait_for_leader(timeout=15).term == leader.term
        killed_at = cluster.kill(leader.id)
        after = cluster.wait_for_leader(timeout=15, exclude=[leader.id])
        assert after.id != leader.id and after.term > leader.term and after.mono > killed_at
