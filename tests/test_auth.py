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
from flask import Flask
from flask_testing_compat import make_app, no_leaked_context  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_goelect import LeaderElect
from flask_goelect.auth import (
    CLUSTER_HEADER,
    MAX_CLOCK_SKEW,
    NONCE_HEADER,
    SENDER_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AuthError,
    Keyring,
    ReplayCache,
    RequestSigner,
    RequestVerifier,
    is_loopback,
)
from flask_goelect.core import ConfigError

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


def test_a_signed_request_is_accepted_once() -> None:
    signer, verifier, _ = pair()
    headers, nonce = signer.request_headers("POST", PATH, "n2", BODY)
    assert set(headers) == {
        SENDER_HEADER,
        CLUSTER_HEADER,
        TIMESTAMP_HEADER,
        NONCE_HEADER,
        SIGNATURE_HEADER,
    }
    assert headers[NONCE_HEADER] == nonce and len(nonce) == 32
    assert headers[SIGNATURE_HEADER].startswith("v1=")
    accept(verifier, headers)
    with refused(401, "replayed_request"):
        accept(verifier, headers)


def test_every_signed_field_is_bound() -> None:
    signer, verifier, clock = pair()
    headers, _ = signer.request_headers("POST", PATH, "n2", BODY)
    other_node = RequestVerifier(Keyring([SECRET]), "prod", "n3", PEERS, max_age=32.0, clock=clock)
    cases: list[tuple[str, Any]] = [
        ("body", lambda: accept(verifier, headers, body=BODY.replace(b"3", b"9"))),
        ("body appended", lambda: accept(verifier, headers, body=BODY + b" ")),
        ("method", lambda: accept(verifier, headers, method="PUT")),
        ("path", lambda: accept(verifier, headers, path="/_goelect/rpc/heartbeat")),
        ("recipient", lambda: accept(other_node, headers)),
        ("sender", lambda: accept(verifier, {**headers, SENDER_HEADER: "n3"})),
        (
            "timestamp",
            lambda: accept(
                verifier, {**headers, TIMESTAMP_HEADER: str(int(headers[TIMESTAMP_HEADER]) - 1)}
            ),
        ),
        ("nonce", lambda: accept(verifier, {**headers, NONCE_HEADER: "a" * 32})),
        (
            "signature",
            lambda: accept(
                verifier,
                {**headers, SIGNATURE_HEADER: headers[SIGNATURE_HEADER][:-1] + "0"}
                if not headers[SIGNATURE_HEADER].endswith("0")
                else {**headers, SIGNATURE_HEADER: headers[SIGNATURE_HEADER][:-1] + "1"},
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
    for name in (SENDER_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER):
        partial = {k: v for k, v in headers.items() if k != name}
        with refused(401, "unauthorized") as info:
            accept(verifier, partial)
        assert info
    bad_values = {
        SENDER_HEADER: ["../n1", "n1\n", "x" * 65],
        TIMESTAMP_HEADER: ["-5", "1e12", "12.5", "9" * 17, " 1"],
        NONCE_HEADER: ["short", "n" * 65, "nonce with spaces!!"],
        SIGNATURE_HEADER: ["v1=" + "g" * 64, "v2=" + "a" * 64, "v1=" + "A" * 64, "v1=abc"],
    }
    for name, values in bad_values.items():
        for value in values:
            with refused(401):
                accept(verifier, {**headers, name: value})
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
        with refused(409, "wrong_cluster"):
            accept(verifier, {k: v for k, v in headers.items() if k == CLUSTER_HEADER})


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
    assert abs(int(headers[TIMESTAMP_HEADER]) / 1000 - time.time()) < 5
    assert CLUSTER_HEADER not in headers  # no cluster name, no header


def test_a_local_request_is_from_loopback_and_not_proxied() -> None:
    from flask_goelect.auth import is_local_request

    assert is_local_request("127.0.0.1", {})
    assert is_local_request("::1", {"Accept": "*/*"})
    assert not is_local_request("10.0.0.5", {})
    assert not is_local_request(None, {})
    for header in ("Forwarded", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Host"):
        assert not is_local_request("127.0.0.1", {header: "203.0.113.9"})
