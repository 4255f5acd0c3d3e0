"""The election routes: RPCs through a real elector, status routes, and bad input on every route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from core_net import started_long_ago
from flask import Flask
from flask_testing_compat import TestCase
from live_nodes import make_app

from flask_goelect import LeaderElect
from flask_goelect.core import HardState
from flask_goelect.storage import FileStorage
from flask_goelect.testing import make_follower, make_leader
from flask_goelect.views import MAX_BODY, TOKEN_HEADER

P = "/_goelect"
JSON = "application/json"


def vote(sender: str = "n2", term: int = 3, **extra: Any) -> dict[str, Any]:
    return {"sender": sender, "term": term, **extra}


class RoutesTest(TestCase):
    """A node whose elector runs; its peers are unreachable and it never times out
    during a test (election timeout 20 s), so its state changes only through the
    requests the test sends."""

    state_file: Path

    def create_app(self) -> Flask:
        import tempfile

        self._tmp = tempfile.TemporaryDirectory()
        self.state_file = Path(self._tmp.name) / "n1.json"
        app = make_app(
            GOELECT_ELECT_TIMEOUT=20000,
            GOELECT_HEARTBEAT_INTERVAL=2000,
            GOELECT_STATE_FILE=str(self.state_file),
        )
        self.elect = LeaderElect(app)
        return app

    def setUp(self) -> None:
        with started_long_ago():  # its promise of a start would refuse the test's votes
            self.elect.start()

    def tearDown(self) -> None:
        self.elect.stop(transfer=False)
        self._tmp.cleanup()

    def post(self, path: str, body: Any, content_type: str = JSON, **kw: Any) -> Any:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.client.post(P + path, data=data, content_type=content_type, **kw)

    def node_state(self) -> tuple[HardState, str, str | None]:
        storage = FileStorage(self.state_file)
        try:
            hard = storage.load()
        finally:
            storage.close()
        snap = self.elect._state().elector.snapshot
        return hard, snap.state, snap.leader_id

    # -- the RPCs ---------------------------------------------------------------------

    def test_vote_is_granted_and_persisted_before_the_reply(self) -> None:
        response = self.post("/rpc/vote", vote())
        self.assert200(response)
        self.assertEqual(response.mimetype, JSON)
        self.assertEqual(
            response.json,
            {"sender": "n1", "term": 3, "granted": True, "pre_vote": False, "reason": ""},
        )
        self.assertEqual(self.node_state()[0], HardState(3, "n2"))
        # One vote per term: n3 is refused in term 3.
        response = self.post("/rpc/vote", vote("n3"))
        self.assertFalse(response.json["granted"])
        self.assertIn("already voted", response.json["reason"])

    def test_pre_vote_changes_nothing(self) -> None:
        before = self.node_state()
        response = self.post("/rpc/vote", vote(term=9, pre_vote=True))
        self.assert200(response)
        self.assertTrue(response.json["granted"] and response.json["pre_vote"])
        self.assertEqual(self.node_state(), before)

    def test_heartbeat_makes_the_sender_leader(self) -> None:
        hb = {"sender": "n2", "term": 4, "seq": 1, "address": "http://127.0.0.2:1"}
        response = self.post("/rpc/heartbeat", hb)
        self.assert200(response)
        self.assertEqual(response.json, {"sender": "n1", "term": 4, "seq": 1, "success": True})
        self.assertEqual(self.elect.leader.id if self.elect.leader else None, "n2")
        self.assertEqual(self.elect.state, "follower")
        status = self.client.get(P + "/status").json
        self.assertEqual(status["leader_id"], "n2")
        self.assertEqual(status["leader_address"], "http://127.0.0.2:1")

    def test_timeout_now_from_a_non_leader_is_refused(self) -> None:
        response = self.post("/rpc/timeout-now", {"sender": "n3", "term": 0})
        self.assert200(response)
        self.assertFalse(response.json["accepted"])

    def test_a_stranger_changes_nothing(self) -> None:
        # A sender that is not a peer (or this node itself) is refused before the
        # elector sees the message.
        before = self.node_state()
        for sender in ("intruder", "n1"):
            response = self.post("/rpc/vote", vote(sender, 50))
            self.assert_refused(response, 403, "not a peer")
        self.assertEqual(self.node_state(), before)

    # -- bad input: a JSON 4xx that says what is wrong, and no change ------------------

    def assert_refused(self, response: Any, status: int, words: str) -> None:
        self.assertStatus(response, status)
        self.assertEqual(response.mimetype, JSON)
        body = response.json
        self.assertIn(words, body["message"], body)
        self.assertIn("error", body)

    def test_bad_input_on_every_rpc_route_changes_nothing(self) -> None:
        self.post("/rpc/vote", vote())  # some state to keep: term 3, voted for n2
        before = self.node_state()
        self.assertEqual(before[0], HardState(3, "n2"))
        deep = b"[" * 5000 + b"]" * 5000
        good = {
            "/rpc/vote": vote(term=99),
            "/rpc/heartbeat": {"sender": "n2", "term": 99, "seq": 1},
            "/rpc/timeout-now": {"sender": "n2", "term": 99},
        }
        for path, msg in good.items():
            with self.subTest(path=path):
                big = {**msg, "sender": "x" * (MAX_BODY + 10)}
                cases = [
                    (self.post(path, msg, "text/plain"), 415, "application/json"),
                    (self.post(path, msg, "application/x-www-form-urlencoded"), 415, ""),
                    (self.client.post(P + path, data=json.dumps(msg)), 415, "application/json"),
                    (self.post(path, big), 413, "bytes"),
                    (self.post(path, b"{not json"), 400, "not valid JSON"),
                    (self.post(path, b"\xff\xfe"), 400, "not valid JSON"),
                    (self.post(path, deep), 400, ""),
                    (self.post(path, [msg]), 400, "JSON object"),
                    (self.post(path, {"sender": "n2"}), 400, "missing required field"),
                    (self.post(path, {**msg, "x": 1}), 400, "unknown field"),
                    (self.post(path, {**msg, "term": "99"}), 400, "integer"),
                    (self.post(path, {**msg, "term": -1}), 400, "between"),
                    (self.post(path, {**msg, "term": 2**60}), 400, "between"),
                    (self.post(path, {**msg, "term": 99.5}), 400, "integer"),
                    (self.post(path, {**msg, "sender": "../x"}), 400, "invalid"),
                    (self.post(path, {**msg, "term": True}), 400, "integer"),
                    (self.client.get(P + path), 405, "use POST"),
                    (self.client.put(P + path, json=msg), 405, "use POST"),
                    (self.client.delete(P + path), 405, "use POST"),
                ]
                for response, status, words in cases:
                    self.assert_refused(response, status, words)
                    self.assertEqual(self.node_state(), before)
        self.assertEqual(self.client.get(P + "/rpc/vote").headers["Allow"], "POST")

    def test_bad_input_on_the_other_routes(self) -> None:
        before = self.node_state()
        for path in ("/status", "/leader", "/health"):
            for method in ("post", "put", "patch", "delete"):
                response = getattr(self.client, method)(P + path, json=vote(term=99))
                self.assert_refused(response, 405, "use GET")
                self.assertIn("GET", response.headers["Allow"])
        self.assert_refused(self.client.get(P + "/transfer"), 405, "use POST")
        self.assert_refused(self.client.get(P + "/rpc/append"), 404, "not a flask-goelect route")
        self.assert_refused(self.client.post(P + "/nothing/here"), 404, "flask-goelect")
        self.assert_refused(self.client.post(P + "/transfer", json={"to": "n2"}), 403, "token")
        self.assertEqual(self.node_state(), before)

    def test_a_stopped_elector_answers_503(self) -> None:
        self.elect.stop(transfer=False)
        self.assert_refused(self.post("/rpc/vote", vote()), 503, "not running")
        self.assertEqual(self.client.get(P + "/health").status_code, 503)
        self.assertEqual(self.client.get(P + "/status").json["state"], "stopped")

    def test_transfer_needs_the_local_token(self) -> None:
        token = self.elect._state().admin_token
        self.assertTrue(token)
        self.assertIn(token, Path(f"{self.state_file}.lock").read_text())
        response = self.client.post(P + "/transfer", json={}, headers={TOKEN_HEADER: "guess"})
        self.assert_refused(response, 403, "token")
        # With the token, a follower answers that it is not the leader.
        response = self.client.post(
            P + "/transfer", json={"to": "n2"}, headers={TOKEN_HEADER: token}
        )
        self.assert_refused(response, 409, "not the leader")
        response = self.client.post(P + "/transfer", json={"to": 5}, headers={TOKEN_HEADER: token})
        self.assert_refused(response, 400, "node id")

    # -- status routes ----------------------------------------------------------------------

    def test_status_health_and_leader_of_a_follower(self) -> None:
        status = self.client.get(P + "/status")
        self.assert200(status)
        for field in (
            "node_id",
            "state",
            "term",
            "leader_id",
            "leader_address",
            "lease_remaining",
            "voters",
            "observers",
            "last_contact",
        ):
            self.assertIn(field, status.json)
        self.assertEqual(status.json["node_id"], "n1")
        self.assertEqual(status.json["voters"], ["n1", "n2", "n3"])
        self.assertEqual(set(status.json["last_contact"]), {"n2", "n3"})
        self.assert200(self.client.get(P + "/health"))
        leader = self.client.get(P + "/leader")
        self.assertStatus(leader, 503)
        self.assertFalse(leader.json["is_leader"])

    def test_leader_route_follows_the_lease(self) -> None:
        app = self.app
        with make_leader(app, term=5):
            response = self.client.get(P + "/leader")
            self.assert200(response)
            self.assertEqual(response.json["term"], 5)
            self.assertTrue(response.json["is_leader"])
        with make_leader(app, term=5, lease=0.0):  # a leader whose lease ran out
            self.assertStatus(self.client.get(P + "/leader"), 503)
        with make_follower(app, leader_id="n2", term=5):
            response = self.client.get(P + "/leader")
            self.assertStatus(response, 503)
            self.assertEqual(response.json["leader_id"], "n2")
            self.assertEqual(response.json["leader_address"], "http://127.0.0.2:1")


class ForcedTransferTest(TestCase):
    def create_app(self) -> Flask:
        app = make_app()
        self.elect = LeaderElect(app)
        return app

    def test_transfer_route_on_a_forced_leader(self) -> None:
        state = self.elect._state()
        with make_leader(self.app) as fake:
            # No elector runs here: no lock, no token, nothing can be transferred.
            response = self.client.post(P + "/transfer", headers={TOKEN_HEADER: ""})
            self.assertStatus(response, 403)
            self.assertEqual(fake.transfers, [])
        self.assertEqual(state.admin_token, "")


def test_rpc_routes_never_block(tmp_path: Path) -> None:
    """The RPC answer comes from the state machine and storage only: a node whose
    peers are black holes still answers at once."""
    import time

    app = make_app(
        GOELECT_PEERS=[
            "n1=http://127.0.0.1:1",
            "n2=http://10.255.255.1:9",
            "n3=http://10.255.255.2:9",
        ],
        GOELECT_ELECT_TIMEOUT=300,
        GOELECT_HEARTBEAT_INTERVAL=30,
        GOELECT_STATE_FILE=str(tmp_path / "n1.json"),
    )
    elect = LeaderElect(app)
    elect.start()
    try:
        client = app.test_client()
        slowest = 0.0
        for term in range(1, 20):
            t0 = time.perf_counter()
            response = client.post(P + "/rpc/vote", json=vote(term=term * 100, pre_vote=True))
            slowest = max(slowest, time.perf_counter() - t0)
            assert response.status_code == 200
        assert slowest < 0.5, f"an RPC took {slowest:.3f}s"
    finally:
        elect.stop(transfer=False, timeout=1)


@pytest.mark.parametrize("prefix", ["/election", "/a/b"])
def test_url_prefix(prefix: str) -> None:
    app = make_app(GOELECT_URL_PREFIX=prefix)
    LeaderElect(app)
    with app.test_client() as client:
        assert client.get(f"{prefix}/health").status_code == 503
        assert client.get(f"{P}/health").status_code == 404
