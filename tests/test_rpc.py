"""The RPC server's refusals: another voter set (409), counted by code, logged at a bounded rate.

Issue 10: nothing checked that nodes agree on who votes; a change of the voter
set made on some nodes only lets two majorities elect two leaders in one term.
Every request states the fingerprint of its sender's voter set; the core refuses
one that differs from its own without changing anything, the server answers
409 ``voter_set_mismatch`` with what to check, and the sender's transport says
so in its error.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any

import pytest
from core_net import make_config
from test_transport import ServerThread, rpc_app

from flask_goelect import core
from flask_goelect.auth import RequestVerifier
from flask_goelect.messages import Heartbeat, TimeoutNow, VoteRequest, to_wire
from flask_goelect.rpc import RefusalLog, RpcServer, StatusRead
from flask_goelect.transport import HttpTransport, TransportError

THREE = make_config("n1", ["n1", "n2", "n3"]).voter_set_fingerprint
FIVE = make_config("n1", ["n1", "n2", "n3", "n4", "n5"]).voter_set_fingerprint
JSON = {"content-type": "application/json"}


class CoreElector:
    """Just enough of an elector to serve: a core node stepped at a fixed time."""

    def __init__(self, node_id: str, ids: list[str]) -> None:
        self.node_id = node_id
        self.config = make_config(node_id, ids)
        self.node = core.Node(self.config, core.HardState(4, None), now=0.0, rng=random.Random(1))
        self.now = 10.0  # past the promise of its start

    def handle(self, msg: Any) -> Any:
        reply = self.node.step(msg, self.now).reply
        assert reply is not None
        return reply

    def status(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "term": self.node.term}

    def state(self) -> tuple[object, ...]:
        n = self.node
        return (n.term, n.voted_for, n.role, n.leader_id, n.promise_until, dict(n.last_contact))


@pytest.fixture
def served(caplog: pytest.LogCaptureFixture) -> tuple[RpcServer, CoreElector]:
    elector = CoreElector("n1", ["n1", "n2", "n3"])
    verifier = RequestVerifier(None, "", "n1", ["n1", "n2", "n3"], max_age=60.0)
    log = RefusalLog(interval=60.0, logger=logging.getLogger("test_rpc"))
    caplog.set_level(logging.WARNING, "test_rpc")
    return RpcServer(verifier, elector.handle, refusal_log=log), elector


def post(server: RpcServer, kind: str, msg: Any) -> tuple[int, Any]:
    body = json.dumps(to_wire(msg) if not isinstance(msg, dict) else msg).encode()
    answer = server.serve(kind, {**JSON, "content-length": str(len(body))}, body)
    return answer.status, json.loads(answer.body)


@pytest.mark.parametrize(
    ("kind", "msg"),
    [
        ("heartbeat", Heartbeat("n2", 9, 1, voter_set=FIVE)),
        ("vote", VoteRequest("n2", 9, voter_set=FIVE)),
        ("vote", VoteRequest("n2", 9, pre_vote=True, voter_set=FIVE)),
        ("timeout-now", TimeoutNow("n2", 4, FIVE)),
    ],
    ids=["heartbeat", "vote", "pre-vote", "timeout-now"],
)
def test_another_voter_set_is_refused_with_409_and_changes_nothing(
    served: tuple[RpcServer, CoreElector],
    caplog: pytest.LogCaptureFixture,
    kind: str,
    msg: Any,
) -> None:
    server, elector = served
    before = elector.state()
    status, body = post(server, kind, msg)
    assert status == 409 and body["error"] == "voter_set_mismatch"
    text = body["message"]
    for words in ("5 voters", "3 voters", FIVE, THREE, "GOELECT_PEERS", "GOELECT_NOVOTE"):
        assert words in text
    assert "docs/membership.md" in text
    assert elector.state() == before
    assert server.refused == {"voter_set_mismatch": 1}
    (line,) = [r.getMessage() for r in caplog.records]
    assert "voter_set_mismatch" in line and "'n1'" in line


def test_refusals_of_another_voter_set_are_logged_at_a_bounded_rate(
    served: tuple[RpcServer, CoreElector], caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = served
    for seq in range(1, 51):
        assert post(server, "heartbeat", Heartbeat("n2", 9, seq, voter_set=FIVE))[0] == 409
    assert server.refused["voter_set_mismatch"] == 50
    assert len(caplog.records) == 1


def test_the_same_voter_set_or_none_stated_is_answered(
    served: tuple[RpcServer, CoreElector],
) -> None:
    server, elector = served
    status, body = post(server, "heartbeat", Heartbeat("n2", 5, 1, voter_set=THREE))
    assert status == 200 and body["success"] and elector.node.leader_id == "n2"
    # A sender of an earlier version states no voter set: it is not checked.
    status, body = post(server, "heartbeat", {"sender": "n2", "term": 5, "seq": 2})
    assert status == 200 and body["success"]
    assert not server.refused


def test_every_refusal_is_counted_by_its_code(served: tuple[RpcServer, CoreElector]) -> None:
    server, _ = served
    assert server.serve("nope", JSON, b"{}").status == 404
    assert server.serve("vote", {"content-type": "text/plain"}, b"{}").status == 415
    assert server.serve("vote", JSON, b"{not json").status == 400
    assert server.serve("vote", JSON, b'{"sender": "n2"}').status == 400
    assert server.serve("vote", JSON, b'{"sender": "n9", "term": 1}').status == 403
    assert post(server, "vote", VoteRequest("n2", 9, voter_set=FIVE))[0] == 409
    refused = server.reader(StatusRead("GET", "/_goelect/status", {}, b"", "", False))
    assert refused is not None and getattr(refused, "status", None) == 401
    assert server.refused == {
        "not_found": 1,
        "unsupported_media_type": 1,
        "bad_request": 2,
        "forbidden": 1,
        "voter_set_mismatch": 1,
        "status_not_public": 1,
    }


def test_the_transport_names_the_voter_set_mismatch() -> None:
    """Over HTTP, the sender's error says what the refusing node said."""
    elector = CoreElector("n2", ["n1", "n2", "n3", "n4", "n5"])
    server = ServerThread(rpc_app(elector, peers=["n1"])).start()
    transport = HttpTransport()
    try:
        peer = core.Peer("n2", server.url)
        with pytest.raises(TransportError) as info:
            transport.send(peer, Heartbeat("n1", 9, 1, voter_set=THREE), (1.0, 2.0))
        text = str(info.value)
        assert "'n2'" in text and "voter_set_mismatch" in text and "409" in text
        assert "GOELECT_PEERS" in text and "docs/membership.md" in text
        assert elector.node.term == 4
        reply = transport.send(peer, Heartbeat("n1", 9, 2, voter_set=FIVE), (1.0, 2.0))
        assert reply.success and elector.node.term == 9
    finally:
        transport.close()
        server.stop()
