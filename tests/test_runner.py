"""Tests of the runner: Electors with real gevent, in memory and over real HTTP on loopback.

The test process is not monkey-patched, so every Elector here runs its loop in
its own native thread and the rest in native threads (the "thread" mode); the
patched mode (the loop and the calls to peers in a thread with a hub of its own,
callbacks and leader tasks in the server's hub) is tested in subprocesses that
monkey-patch themselves. Timings are short (election timeout 0.2-0.6 s) and the
assertions' bounds generous.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from core_net import started_long_ago
from test_transport import ServerThread, black_hole, rpc_app

from flask_goelect import clock, core
from flask_goelect.messages import (
    Heartbeat,
    HeartbeatReply,
    Reply,
    Request,
    VoteReply,
    VoteRequest,
)
from flask_goelect.runner import Elector, LeaderContext
from flask_goelect.serving import NoDelayWSGIHandler
from flask_goelect.state import NotRunning, Snapshot, State
from flask_goelect.storage import MemoryStorage
from flask_goelect.transport import HttpTransport, MemoryTransport, Transport
from goelect_harness.helpers import wait_until

IDS = ("n1", "n2", "n3")
__all__ = ["black_hole"]  # a fixture shared with test_transport.py


def config(node_id: str, peers: tuple[core.Peer, ...], t: float = 0.2, **kw: Any) -> core.Config:
    return core.Config(node_id, peers, elect_timeout=t, heartbeat_interval=t / 4, **kw)


class Cluster:
    """Electors in one process; everything started is stopped at the end of the test."""

    def __init__(self) -> None:
        self.electors: dict[str, Elector] = {}
        self.servers: dict[str, ServerThread] = {}
        self.net = MemoryTransport()

    def memory(
        self, ids: tuple[str, ...] = IDS, t: float = 0.2, start: bool = True, **kw: Any
    ) -> dict[str, Elector]:
        peers = tuple(core.Peer(i, f"mem://{i}") for i in ids)
        for node_id in ids:
            elector = Elector(config(node_id, peers, t), MemoryStorage(), self.net, **kw)
            self.net.register(node_id, elector.handle, elector.status)
            self.electors[node_id] = elector
        if start:
            self.start()
        return {i: self.electors[i] for i in ids}

    def http(
        self,
        ids: tuple[str, ...] = IDS,
        t: float = 0.2,
        extra_peers: tuple[core.Peer, ...] = (),
        received: dict[str, collections.Counter[str]] | None = None,
        **kw: Any,
    ) -> dict[str, Elector]:
        listeners = {i: socket.create_server(("127.0.0.1", 0)) for i in ids}
        peers = tuple(
            core.Peer(i, f"http://127.0.0.1:{listeners[i].getsockname()[1]}") for i in ids
        )
        for node_id in ids:
            cfg = config(node_id, peers + extra_peers, t)
            elector = Elector(cfg, MemoryStorage(), HttpTransport(), **kw)
            counts = (
                received.setdefault(node_id, collections.Counter())
                if received is not None
                else None
            )
            app = rpc_app(elector, received=counts)
            self.servers[node_id] = ServerThread(app, listeners[node_id], name=f"server-{node_id}")
            self.servers[node_id].start()
            self.electors[node_id] = elector
        self.start()
        return {i: self.electors[i] for i in ids}

    def start(self) -> None:
        for elector in self.electors.values():
            elector.start()

    def leader(self, timeout: float = 10.0) -> Elector:
        """Wait until exactly one running node holds a lease and all running nodes follow it."""
        found: list[Elector] = []

        def agreed() -> bool:
            running = [e for e in self.electors.values() if e.running]
            leaders = [e for e in running if e.is_leader()]
            if len(leaders) != 1:
                return False
            found[:] = leaders
            return all(e.snapshot.leader_id == leaders[0].node_id for e in running)

        assert wait_until(agreed, timeout), self.states()
        return found[0]

    def states(self) -> dict[str, tuple[str, int, str | None]]:
        return {
            i: (e.snapshot.state, e.snapshot.term, e.snapshot.leader_id)
            for i, e in self.electors.items()
        }

    def close(self) -> None:
        self.net.shutdown()
        for elector in self.electors.values():
            elector.stop(transfer=False, timeout=3)
        for server in self.servers.values():
            server.stop()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


# -- elections -------------------------------------------------------------------------------


def test_three_nodes_in_memory_elect_one_leader(cluster):
    electors = cluster.memory()
    leader = cluster.leader()
    term = leader.snapshot.term
    time.sleep(0.5)  # more than two election timeouts: the leader holds on
    assert cluster.leader() is leader and leader.snapshot.term == term
    snap = leader.snapshot
    assert snap.state == "leader" and snap.lease_until > time.monotonic()
    assert snap.voters == IDS and snap.observers == ()
    followers = [e for e in electors.values() if e is not leader]
    assert all(e.snapshot.state == "follower" and not e.is_leader() for e in followers)
    status = followers[0].status()
    assert status["leader_id"] == leader.node_id and status["state"] == "follower"
    assert status["last_contact"][leader.node_id] < 0.2
    assert leader.status()["lease_remaining"] > 0


def test_a_heartbeat_does_not_wake_the_follower_s_loop(cluster, monkeypatch):
    """A follower's deadline is its last heartbeat plus a fixed offset (the ranked
    timer): a heartbeat only moves it later, so the loop sleeps on instead of being
    woken to sleep again (a wake-up per heartbeat is CPU on every idle follower)."""
    cluster.memory()
    leader = cluster.leader()
    seen: list[bool] = []
    finish = Elector._finish

    def recording(self: Elector, stepped: Any) -> None:
        if self is not leader and isinstance(stepped.out.reply, HeartbeatReply):
            seen.append(stepped.wake)
        finish(self, stepped)

    monkeypatch.setattr(Elector, "_finish", recording)
    assert wait_until(lambda: len(seen) >= 40, 10.0)
    assert cluster.leader() is leader
    assert not any(seen), f"{sum(seen)} of {len(seen)} heartbeats woke the loop"


def test_unpatched_mode_runs_the_loop_in_its_own_thread(cluster):
    electors = cluster.memory()
    assert {e.mode for e in electors.values()} == {"thread"}
    loops = [
        t
        for t in threading.enumerate()
        if t.name.startswith("goelect-") and t.name.endswith("-loop")
    ]
    assert len(loops) == 3 and threading.main_thread() not in loops
    leader = cluster.leader()
    # The main thread blocks natively; the election goes on without it.
    before = sum(n for (src, _, kind), n in cluster.net.delivered.items() if kind == "heartbeat")
    time.sleep(0.5)
    after = sum(n for (src, _, kind), n in cluster.net.delivered.items() if kind == "heartbeat")
    assert after - before >= 8  # 2 followers x 10 rounds at 50 ms, generously
    assert leader.is_leader()


def test_observer_follows_and_never_votes(cluster):
    peers = (core.Peer("n1"), core.Peer("n2"), core.Peer("n3", novote=True))
    for node_id in ("n1", "n2", "n3"):
        cfg = core.Config(
            node_id, peers, novote=node_id == "n3", elect_timeout=0.2, heartbeat_interval=0.05
        )
        elector = Elector(cfg, MemoryStorage(), cluster.net)
        cluster.net.register(node_id, elector.handle)
        cluster.electors[node_id] = elector
    cluster.start()
    leader = cluster.leader()
    observer = cluster.electors["n3"]
    assert leader.node_id != "n3"
    assert observer.snapshot.state == "observer" and observer.snapshot.leader_id == leader.node_id
    assert observer.snapshot.observers == ("n3",) and observer.snapshot.voters == ("n1", "n2")


def test_three_nodes_over_http_elect_and_fail_over(cluster):
    electors = cluster.http()
    leader = cluster.leader()
    term = leader.snapshot.term
    # The leader goes away: its elector and its server stop, nothing is handed over.
    t0 = time.monotonic()
    leader.stop(transfer=False)
    cluster.servers[leader.node_id].stop()
    others = [e for e in electors.values() if e is not leader]
    assert wait_until(lambda: any(e.is_leader() for e in others), 10), cluster.states()
    elapsed = time.monotonic() - t0
    new = next(e for e in others if e.is_leader())
    assert new.snapshot.term > term
    assert wait_until(lambda: all(e.snapshot.leader_id == new.node_id for e in others), 5)
    assert elapsed < 5  # typically 0.3-0.6 s at T = 0.2 s
    # The stopped node is reported unreachable, not fatal.
    assert wait_until(lambda: new.status()["send_failures"][leader.node_id] > 0, 5)


def test_calls_to_every_peer_are_prepared_at_start(cluster):
    # A follower calls nobody until it campaigns: its first vote requests must
    # not pay for setting up sessions (or gevent's resolver) on the critical path.
    electors = cluster.http(t=2.0)
    for elector in electors.values():
        transport = elector._transport  # type: ignore[attr-defined]
        # The lean client's per-peer clients (or requests' sessions without it).
        prepared = transport._clients if transport.lean else transport._rpc_links
        others = {p for p in electors if p != elector.node_id}
        assert wait_until(lambda prepared=prepared, others=others: set(prepared) == others, 5)


def test_black_holed_peer_does_not_delay_heartbeats_to_others(cluster, black_hole):
    # n3 accepts connections and never answers. Its calls block until the 2 s read
    # deadline; if sends were serial (goelect) the healthy follower would hear at
    # most one heartbeat per 2 s instead of one per 50 ms.
    received: dict[str, collections.Counter[str]] = {
        "n1": collections.Counter(),
        "n2": collections.Counter(),
    }
    cluster.http(
        ("n1", "n2"),
        t=0.3,
        extra_peers=(core.Peer("n3", black_hole),),
        received=received,
        rpc_timeout=(0.5, 2.0),
    )
    leader = cluster.leader()
    follower = next(i for i in ("n1", "n2") if i != leader.node_id)
    before = received[follower]["Heartbeat"]
    time.sleep(1.0)
    heard = received[follower]["Heartbeat"] - before
    assert heard >= 8, heard  # ~13 expected at a 75 ms interval
    assert leader.is_leader()
    assert leader.status()["last_contact"]["n3"] is None


# -- persistence -------------------------------------------------------------------------------


class RecordingStorage(MemoryStorage):
    """A MemoryStorage that appends ("save", node, state) to a shared log after each save."""

    def __init__(self, node_id: str, log: list[tuple[Any, ...]]) -> None:
        super().__init__()
        self.node_id = node_id
        self.log = log

    def save(self, state: core.HardState) -> None:
        super().save(state)
        self.log.append(("save", self.node_id, state))


class LoggingTransport:
    """Wraps a transport; logs ("send", from, to, msg) before and ("reply", ...) after."""

    def __init__(self, inner: Transport, log: list[tuple[Any, ...]]) -> None:
        self.inner = inner
        self.log = log

    def send(self, peer: core.Peer, msg: Request, timeout: tuple[float, float]) -> Reply:
        self.log.append(("send", msg.sender, peer.id, msg))
        reply = self.inner.send(peer, msg, timeout)
        self.log.append(("reply", peer.id, msg.sender, reply))
        return reply

    def get_status(self, peer: core.Peer, timeout: tuple[float, float]) -> dict[str, Any]:
        return self.inner.get_status(peer, timeout)

    def close(self) -> None:
        self.inner.close()


def test_votes_and_candidacies_are_saved_before_anyone_hears_of_them(cluster):
    log: list[tuple[Any, ...]] = []
    peers = tuple(core.Peer(i) for i in IDS)
    for node_id in IDS:
        elector = Elector(
            config(node_id, peers),
            RecordingStorage(node_id, log),
            LoggingTransport(cluster.net, log),
        )
        cluster.net.register(node_id, elector.handle)
        cluster.electors[node_id] = elector
    cluster.start()
    leader = cluster.leader()
    leader.transfer_leadership()  # a second election, through a transfer
    assert wait_until(lambda: (e := cluster.leader()) is not leader and e.snapshot.term > 1, 5)

    def saved_before(index: int, node: str, ok: Callable[[core.HardState], bool]) -> bool:
        return any(e[0] == "save" and e[1] == node and ok(e[2]) for e in log[:index])

    checked = 0
    for index, entry in enumerate(list(log)):
        if entry[0] == "send" and isinstance(entry[3], VoteRequest) and not entry[3].pre_vote:
            msg = entry[3]  # a candidacy is on disk before the candidate asks for votes
            assert saved_before(
                index,
                msg.sender,
                lambda s, m=msg: s.term > m.term or s == core.HardState(m.term, m.sender),
            ), entry
            checked += 1
        if entry[0] == "reply" and isinstance(entry[3], VoteReply) and entry[3].granted:
            reply, candidate = entry[3], entry[2]
            if not reply.pre_vote:  # a vote is on disk before it leaves the voter
                assert saved_before(
                    index,
                    reply.sender,
                    lambda s, r=reply, c=candidate: (
                        s.term > r.term or s == core.HardState(r.term, c)
                    ),
                ), entry
                checked += 1
    assert checked >= 4  # two elections: two candidacies and at least two votes


class BlockingStorage(MemoryStorage):
    """Holds every save until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def save(self, state: core.HardState) -> None:
        self.entered.set()
        assert self.release.wait(5)
        super().save(state)


def test_reply_waits_for_the_vote_to_be_saved(cluster):
    storage = BlockingStorage()
    elector = Elector(config("n1", tuple(core.Peer(i) for i in IDS), t=2.0), storage, cluster.net)
    cluster.electors["n1"] = elector
    with started_long_ago():  # its promise of a start would refuse the vote
        elector.start()
    replies: list[Reply] = []
    thread = threading.Thread(target=lambda: replies.append(elector.handle(VoteRequest("n2", 1))))
    thread.start()
    assert storage.entered.wait(5)
    time.sleep(0.1)
    assert not replies  # the vote is not out before it is on disk
    storage.release.set()
    thread.join(5)
    assert replies == [VoteReply("n1", 1, True, False)]
    assert storage.state == core.HardState(1, "n2")


class FailingStorage(MemoryStorage):
    def save(self, state: core.HardState) -> None:
        if state.term > 0:
            raise OSError(28, "No space left on device")
        super().save(state)


def test_failed_save_stops_the_node_without_answering(cluster):
    elector = Elector(
        config("n1", tuple(core.Peer(i) for i in IDS), t=2.0), FailingStorage(), cluster.net
    )
    cluster.electors["n1"] = elector
    with started_long_ago():
        elector.start()
    with pytest.raises(OSError, match="No space"):
        elector.handle(VoteRequest("n2", 1))
    assert not elector.running and elector.snapshot.state == "stopped"
    assert [e.kind for e in elector.errors] == ["storage"]
    with pytest.raises(NotRunning):
        elector.handle(Heartbeat("n2", 1, 1))


def test_failed_save_of_a_candidacy_sends_no_vote_request(cluster):
    asked: list[Request] = []

    def granter(node_id: str) -> Callable[[Request], Reply]:
        def handle(msg: Request) -> Reply:
            asked.append(msg)
            assert isinstance(msg, VoteRequest)
            return VoteReply(node_id, msg.term, True, msg.pre_vote)

        return handle

    cluster.net.register("n2", granter("n2"))
    cluster.net.register("n3", granter("n3"))
    peers = tuple(core.Peer(i) for i in IDS)
    elector = Elector(config("n1", peers, t=0.1), FailingStorage(), cluster.net)
    cluster.electors["n1"] = elector
    elector.start()
    # The pre-vote wins; the candidacy (term 1, voted for itself) cannot be saved.
    assert wait_until(lambda: not elector.running, 5)
    assert asked and all(isinstance(m, VoteRequest) and m.pre_vote for m in asked)
    assert "storage" in [e.kind for e in elector.errors]


# -- callbacks ------------------------------------------------------------------------------------


def test_failing_and_slow_callbacks_are_recorded_and_never_stall_the_election(cluster):
    calls: list[tuple[str, core.Transition, Snapshot]] = []
    lock = threading.Lock()

    def make_callback(node_id: str) -> Callable[[core.Transition, Snapshot], None]:
        def on_transition(transition: core.Transition, snap: Snapshot) -> None:
            with lock:
                calls.append((node_id, transition, snap))
                n = len(calls)
            if n == 1:
                raise RuntimeError("receiver bug")
            if n == 2:
                time.sleep(1.0)  # overruns callback_timeout

        return on_transition

    peers = tuple(core.Peer(i) for i in IDS)
    for node_id in IDS:
        elector = Elector(
            config(node_id, peers),
            MemoryStorage(),
            cluster.net,
            on_transition=make_callback(node_id),
            callback_timeout=0.2,
        )
        cluster.net.register(node_id, elector.handle)
        cluster.electors[node_id] = elector
    cluster.start()
    leader = cluster.leader()
    assert wait_until(lambda: len(calls) >= 5, 5)

    def kinds() -> list[str]:
        return sorted(r.kind for e in cluster.electors.values() for r in e.errors)

    assert wait_until(lambda: kinds() == ["callback", "callback-timeout"], 5), kinds()
    records = [r for e in cluster.electors.values() for r in e.errors]
    assert any("receiver bug" in r.repr for r in records)
    # Every node got its transitions in order, with the snapshot of the step.
    leader_calls = [(t, s) for n, t, s in calls if n == leader.node_id]
    assert leader_calls[-1][0].role is core.Role.LEADER and leader_calls[-1][1].state == "leader"
    roles = [t.role for t, _ in leader_calls]
    assert roles.index(core.Role.CANDIDATE) < roles.index(core.Role.LEADER)
    # Transfer: the election goes on and the callbacks keep coming.
    before = len(calls)
    leader.transfer_leadership()
    assert wait_until(lambda: len(calls) > before + 2, 5)
    cluster.leader()


# -- hand-over and stop -------------------------------------------------------------------------


def test_stop_hands_leadership_over_well_within_an_election_timeout(cluster):
    t = 0.6
    electors = cluster.memory(t=t)
    leader = cluster.leader()
    term = leader.snapshot.term
    others = [e for e in electors.values() if e is not leader]
    t0 = time.monotonic()
    leader.stop()  # transfer=True by default
    assert wait_until(lambda: any(e.is_leader() for e in others), 5)
    elapsed = time.monotonic() - t0
    # Without the hand-over the followers would wait at least T (stickiness), then
    # a random [T, 2T) timeout: more than 0.6 s. The hand-over takes milliseconds.
    assert elapsed < t / 2, elapsed
    new = next(e for e in others if e.is_leader())
    assert new.snapshot.term == term + 1
    assert leader.snapshot.state == "stopped" and not leader.running


def test_transfer_leadership_to_a_chosen_node_and_errors(cluster):
    electors = cluster.memory()
    leader = cluster.leader()
    follower = next(e for e in electors.values() if e is not leader)
    with pytest.raises(core.NotLeaderError):
        follower.transfer_leadership()
    with pytest.raises(core.TransferError):
        leader.transfer_leadership(to=leader.node_id)
    assert leader.transfer_leadership(to=follower.node_id) == follower.node_id
    assert not leader.is_leader()  # the lease is dropped at once
    assert wait_until(follower.is_leader, 5)
    assert cluster.leader() is follower


def test_hand_over_skips_a_voter_that_does_not_answer(cluster):
    # A voter whose last call failed (or that was not heard from within T) would
    # not campaign at once: the hand-over goes to one that answers.
    for _ in range(4):
        electors = cluster.electors or cluster.memory()
        leader = cluster.leader()
        mute, other = (e for e in electors.values() if e is not leader)
        run = leader._run
        run.senders.unreachable.add(mute.node_id)
        with run.lock:  # and make it look like the freshest contact
            run.node.last_contact[mute.node_id] = leader._clock() + 1
        assert leader._transfer_target() == other.node_id
        assert leader.transfer_leadership() == other.node_id
        assert wait_until(other.is_leader, 5)
    leader = cluster.leader()
    stale = leader._clock() - 2 * leader.config.elect_timeout
    with leader._run.lock:
        for peer in leader._run.node.last_contact:
            leader._run.node.last_contact[peer] = stale
    assert leader._transfer_target() is None  # nobody answers: the core chooses


def test_snapshot_is_replaced_only_when_readers_would_see_a_change(cluster):
    electors = cluster.memory()
    leader = cluster.leader()
    follower = next(e for e in electors.values() if e is not leader)
    before = follower.snapshot
    time.sleep(0.25)  # five heartbeats
    assert follower.snapshot is before
    lease = leader.snapshot
    assert wait_until(lambda: leader.snapshot.lease_until > lease.lease_until, 2)


def test_wait_for_leader_is_woken_by_the_election(cluster):
    electors = cluster.memory(start=False)
    found: list[Any] = []
    waiters = [
        threading.Thread(target=lambda e=e: found.append(e.wait_for_leader(5)))
        for e in electors.values()
    ]
    cluster.start()
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join(6)
    leader = cluster.leader()
    # Each waiter returns the leader as soon as its node knows it (the leader
    # itself once it holds its lease), and leaves no event behind.
    assert [info.id for info in found] == [leader.node_id] * 3
    assert leader.is_leader()
    assert all(not e._pub._waiters for e in electors.values())


def test_quiet_server_formats_no_access_log_lines(cluster, monkeypatch):
    formatted: list[int] = []

    def format_request(self: Any) -> str:
        formatted.append(1)
        return "access line"

    monkeypatch.setattr(NoDelayWSGIHandler, "format_request", format_request)
    electors = cluster.http(ids=("n1", "n2"))  # servers with log=None
    assert cluster.leader() in electors.values()
    assert formatted == []
    handler = NoDelayWSGIHandler.__new__(NoDelayWSGIHandler)
    handler.server = types.SimpleNamespace(log=io.StringIO())  # a server that logs
    handler.log_request()
    assert handler.server.log.getvalue() == "access line\n"


def test_lifecycle(cluster):
    electors = cluster.memory(ids=("n1",), start=False)
    elector = electors["n1"]
    assert not elector.running and elector.snapshot.state == "stopped" and elector.mode is None
    with pytest.raises(NotRunning):
        elector.handle(Heartbeat("n2", 1, 1))
    assert elector.wait_for_leader(0.05) is None
    elector.start()
    elector.start()  # idempotent
    info = elector.wait_for_leader(5)  # a one-node cluster elects itself
    assert info is not None and info.id == "n1" and elector.is_leader()
    elector.stop()
    elector.stop()  # idempotent
    assert not elector.running and elector.snapshot.state == "stopped" and not elector.is_leader()
    assert elector.status()["state"] == "stopped"
    with pytest.raises(RuntimeError, match="create a new Elector"):
        elector.start()
    with pytest.raises(NotRunning):
        elector.transfer_leadership()
    assert not [t for t in threading.enumerate() if t.name.startswith("goelect-n1-")]


def test_is_leader_is_cheap(cluster):
    elector = cluster.memory(ids=("n1",))["n1"]
    assert elector.wait_for_leader(5) is not None
    n = 100_000
    t0 = time.perf_counter()
    for _ in range(n):
        elector.is_leader()
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 20e-6, per_call  # target 2 us; 10x margin for slow machines


# -- leader tasks --------------------------------------------------------------------------------


def test_leader_task_runs_while_leading_and_is_cancelled_on_loss(cluster):
    events: list[tuple[Any, ...]] = []

    def make_task(node_id: str) -> Callable[[LeaderContext], None]:
        def task(ctx: LeaderContext) -> None:
            events.append(("start", node_id, ctx.term, ctx.is_leader()))
            ctx.cancelled.wait(10)
            events.append(("cancelled", node_id, ctx.term, ctx.is_leader()))

        return task

    def crashing(ctx: LeaderContext) -> None:
        raise ValueError("task bug")

    electors = cluster.memory(start=False)
    for node_id, elector in electors.items():
        elector.leader_task(make_task(node_id))
        elector.leader_task(crashing)
    cluster.start()
    leader = cluster.leader()
    term = leader.snapshot.term
    assert wait_until(lambda: ("start", leader.node_id, term, True) in events, 5), events
    assert wait_until(lambda: any(r.kind == "leader-task" for r in leader.errors), 5)
    # Cut the leader off: check-quorum makes it step down, and its task is cancelled.
    cluster.net.isolate(leader.node_id)
    assert wait_until(lambda: ("cancelled", leader.node_id, term, False) in events, 5), events
    others = [e for e in electors.values() if e is not leader]
    assert wait_until(lambda: any(e.is_leader() for e in others), 5)
    new = next(e for e in others if e.is_leader())
    assert wait_until(lambda: ("start", new.node_id, new.snapshot.term, True) in events, 5)
    assert sum(1 for e in events if e[0] == "start") == 2


# -- fork and patched mode ------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_child_forgets_the_parent_loop_and_can_restart(cluster):
    elector = cluster.memory(ids=("n1",))["n1"]
    assert elector.wait_for_leader(5) is not None
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads: that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return to pytest
        code = 1
        try:
            if not elector.running and elector.snapshot.state == "stopped":
                code = 2
                elector.reset_after_fork()
                if elector.running and elector.wait_for_leader(5) is not None:
                    code = 0
                    elector.stop(transfer=False)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert elector.running and elector.is_leader()  # the parent is unaffected


PATCHED_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import json, os, socket, sys, time
    import gevent
    from gevent import pywsgi
    from test_transport import rpc_app
    from flask_goelect import core
    from flask_goelect.runner import Elector
    from flask_goelect.serving import NoDelayWSGIHandler
    from flask_goelect.storage import MemoryStorage
    from flask_goelect.transport import HttpTransport

    ids = ("n1", "n2", "n3")
    listeners = {i: socket.create_server(("127.0.0.1", 0)) for i in ids}
    peers = tuple(core.Peer(i, "http://127.0.0.1:%d" % listeners[i].getsockname()[1]) for i in ids)
    electors, servers, tasks = {}, [], {}

    main_hub = gevent.get_hub()
    in_main_hub = []

    def threads():
        return len(os.listdir("/proc/self/task"))

    def task(ctx):
        tasks[ctx.term] = gevent.getcurrent()
        in_main_hub.append(gevent.get_hub() is main_hub)
        while True:
            gevent.sleep(0.01)

    for i in ids:
        cfg = core.Config(i, peers, elect_timeout=0.2, heartbeat_interval=0.05)
        electors[i] = Elector(cfg, MemoryStorage(), HttpTransport())
        electors[i].leader_task(task)
        server = pywsgi.WSGIServer(listeners[i], rpc_app(electors[i]),
                                   handler_class=NoDelayWSGIHandler, log=None)
        server.start()
        servers.append(server)
    threads_before = threads()
    for e in electors.values():
        e.start()
    modes = sorted({e.mode for e in electors.values()})
    threads_running = threads()
    info = electors["n1"].wait_for_leader(10)
    leader = electors[info.id]
    deadline = time.monotonic() + 5
    while leader.snapshot.term not in tasks and time.monotonic() < deadline:
        gevent.sleep(0.01)
    term = leader.snapshot.term
    t0 = time.monotonic()
    leader.stop()
    others = [e for e in electors.values() if e is not leader]
    while not any(e.is_leader() for e in others) and time.monotonic() - t0 < 5:
        gevent.sleep(0.001)
    handover = time.monotonic() - t0
    gevent.sleep(0.05)
    result = {
        "modes": modes,
        "handover": handover,
        "new_leader": [e.node_id for e in others if e.is_leader()],
        "old_task_killed": term in tasks and tasks[term].dead,
        "errors": [r.repr for e in electors.values() for r in e.errors],
    }
    for e in others:
        e.stop(transfer=False)
    deadline = time.monotonic() + 5
    while threads() > threads_before and time.monotonic() < deadline:
        gevent.sleep(0.01)
    result.update(
        threads=[threads_before, threads_running, threads()], task_in_main_hub=in_main_hub
    )
    for s in servers:
        s.stop(timeout=0.1)
    print(json.dumps(result))
    """
)


def run_patched(script: str, *args: str, timeout: float = 60, **kw: Any) -> dict[str, Any]:
    """Run ``script`` in a child Python that monkey-patches itself; its last line's JSON."""
    # The child imports test_transport from this folder, and what that imports
    # from the repository root.
    tests_dir = Path(__file__).resolve().parent
    path = os.pathsep.join([str(tests_dir), str(tests_dir.parent)])
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": path},
        **kw,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_patched_process_runs_the_election_in_a_thread_of_its_own():
    # The loop and the calls to peers run in a native thread with a hub of its
    # own (a view that computes without yielding cannot starve them); leader
    # tasks (and callbacks) stay greenlets of the server's hub, where they can
    # be killed; every thread the electors started is gone once they stop.
    result = run_patched(PATCHED_SCRIPT)
    assert result["modes"] == ["thread+hub"]
    assert len(result["new_leader"]) == 1
    assert result["handover"] < 0.1, result  # T = 0.2 s; typically a few ms
    assert result["old_task_killed"], result
    assert result["task_in_main_hub"] and all(result["task_in_main_hub"]), result
    before, running, after = result["threads"]
    assert running >= before + 3 and after == before, result
    assert result["errors"] == []


FORK_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()
    import json, os, sys, time, warnings

    import gevent

    from flask_goelect import core
    from flask_goelect.runner import Elector
    from flask_goelect.storage import MemoryStorage
    from flask_goelect.transport import HttpTransport

    out = sys.argv[1]
    cfg = core.Config(
        "n1", (core.Peer("n1", "http://127.0.0.1:9"),), elect_timeout=0.2,
        heartbeat_interval=0.05,
    )
    elector = Elector(cfg, MemoryStorage(), HttpTransport())

    def job(ctx):
        # The documented periodic job: its wait returns in the child first.
        while not ctx.wait(0.02):
            with open(out, "a") as f:
                f.write("job %d\\n" % os.getpid())

    def loop(ctx):
        # A task that never looks at its ctx: killed in the child, at the end
        # of the child's first pass of its event loop at the latest.
        while True:
            with open(out, "a") as f:
                f.write("loop %d\\n" % os.getpid())
            gevent.sleep(0.02)

    elector.leader_task(job)
    elector.leader_task(loop)
    elector.start()
    assert elector.wait_for_leader(5) is not None
    gevent.sleep(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            gevent.sleep(0.5)  # the child's hub runs whatever it inherited
        finally:
            os._exit(0)
    gevent.sleep(0.6)
    os.waitpid(pid, 0)
    elector.stop(transfer=False)
    runs = [line.split() for line in open(out).read().splitlines()]
    print(json.dumps({
        "parent": os.getpid(), "child": pid,
        "job_ran_in": sorted({int(p) for kind, p in runs if kind == "job"}),
        "loop_runs_in_child": sum(1 for kind, p in runs if int(p) == pid),
    }))
    """
)


PATCHED_FORK_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import json, os, socket, sys, warnings
    import gevent
    from gevent import pywsgi
    from test_transport import rpc_app
    from flask_goelect import core
    from flask_goelect.runner import Elector
    from flask_goelect.serving import NoDelayWSGIHandler
    from flask_goelect.storage import MemoryStorage
    from flask_goelect.transport import HttpTransport

    ids = ("n1", "n2", "n3")
    listeners = {i: socket.create_server(("127.0.0.1", 0)) for i in ids}
    peers = tuple(core.Peer(i, "http://127.0.0.1:%d" % listeners[i].getsockname()[1]) for i in ids)
    electors, servers = {}, []
    for i in ids:
        cfg = core.Config(i, peers, elect_timeout=0.2, heartbeat_interval=0.05)
        electors[i] = Elector(cfg, MemoryStorage(), HttpTransport())
        server = pywsgi.WSGIServer(listeners[i], rpc_app(electors[i]),
                                   handler_class=NoDelayWSGIHandler, log=None)
        server.start()
        servers.append(server)
    for e in electors.values():
        e.start()
    leader = electors[electors["n1"].wait_for_leader(10).id]
    gevent.sleep(0.2)  # kept-alive connections to every peer, in the loop threads' hubs
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads: that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit code
        code = 1
        try:
            # The parent's loop threads are gone: each elector forgot its run (and
            # its transport the sockets of the parent's hubs); one starts again.
            if all(not e.running and e.mode is None for e in electors.values()):
                code = 2
                leader.reset_after_fork()
                if leader.running and leader.mode == "thread+hub":
                    code = 3
                    gevent.sleep(0.3)
                    leader.stop(transfer=False)
                    code = 0 if not leader.running and not leader.errors else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    gevent.sleep(0.3)
    result = {
        "child": os.waitstatus_to_exitcode(status),
        "leaders": [e.node_id for e in electors.values() if e.is_leader()],
        "errors": [r.repr for e in electors.values() for r in e.errors],
    }
    for e in electors.values():
        e.stop(transfer=False)
    for s in servers:
        s.stop(timeout=0.1)
    print(json.dumps(result))
    """
)


def test_a_leader_task_greenlet_does_not_run_on_in_a_forked_child(tmp_path: Path) -> None:
    # A patched process forks its hub with every greenlet in it: the leader
    # task's greenlet would go on in the child, a second process running it.
    tests_dir = Path(__file__).resolve().parent
    proc = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(tests_dir.parent)},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["job_ran_in"] == [result["parent"]], result
    # The child's first pass may resume a task that looks at nothing (a timer due
    # at the fork); the kill comes at the end of that pass: one run at most.
    assert result["loop_runs_in_child"] <= 1, result


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_patched_fork_child_forgets_the_parent_loop_and_can_restart():
    # In a patched process the election runs in native threads, which a fork does
    # not copy: the child forgets them (and the sockets bound to their hubs) and
    # can start an elector again; the parent's cluster goes on.
    result = run_patched(PATCHED_FORK_SCRIPT)
    assert result["child"] == 0, result
    assert len(result["leaders"]) == 1, result
    assert result["errors"] == [], result


PATCHED_HELD_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import json, time
    import gevent
    from flask_goelect import core
    from flask_goelect.runner import Elector
    from flask_goelect.storage import MemoryStorage
    from flask_goelect.transport import MemoryTransport

    main_hub = gevent.get_hub()
    saves, told = [], []

    class SlowStorage(MemoryStorage):
        def save(self, state):
            if state.term >= 1:
                saves.append(gevent.get_hub() is main_hub)
                time.sleep(0.3)  # patched: yields to the hub of the thread that saves
            super().save(state)

    def on_transition(t, snap):
        told.append([gevent.get_hub() is main_hub, t.role.value, t.term,
                     storage.state.term, elector.is_leader()])

    storage = SlowStorage()
    cfg = core.Config("solo", (core.Peer("solo"),), elect_timeout=0.2, heartbeat_interval=0.05)
    elector = Elector(cfg, storage, MemoryTransport(), on_transition=on_transition)
    elector.start()
    deadline = time.monotonic() + 10
    while not any(role == "leader" for _, role, *_ in told) and time.monotonic() < deadline:
        gevent.sleep(0.01)
    result = {"mode": elector.mode, "saves": saves, "told": told,
              "errors": [r.repr for r in elector.errors]}
    elector.stop(transfer=False)
    print(json.dumps(result))
    """
)


def test_patched_callbacks_wait_for_the_save_and_run_in_the_server_hub():
    # A one-voter cluster becomes candidate and leader in one step of the loop,
    # in the loop's thread, whose save then holds the callbacks back. Once the
    # term is on disk they are started from that thread, as greenlets of the
    # server's hub, in order; the one told of the leadership finds it.
    result = run_patched(PATCHED_HELD_SCRIPT)
    assert result["mode"] == "thread+hub", result
    assert result["saves"] and not any(result["saves"]), result  # saved in the loop's thread
    told = result["told"]
    assert [role for _, role, *_ in told] == ["pre-candidate", "candidate", "leader"], result
    assert all(in_main_hub for in_main_hub, *_ in told), result
    assert all(saved >= term for _, _, term, saved, _ in told), result
    assert told[-1] == [True, "leader", 1, 1, True], result
    assert result["errors"] == [], result


BUSY_NODE_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import json, socket, sys, time
    import gevent
    from gevent import pywsgi
    from test_transport import rpc_app
    from flask_goelect import core
    from flask_goelect.runner import Elector
    from flask_goelect.serving import NoDelayWSGIHandler
    from flask_goelect.storage import MemoryStorage
    from flask_goelect.transport import HttpTransport

    me, fd, addresses, t, start_at, busy = sys.argv[1:]
    t, start_at, busy = float(t), float(start_at), float(busy)
    peers = tuple(core.Peer(i, a) for i, a in sorted(json.loads(addresses).items()))
    cfg = core.Config(me, peers, elect_timeout=t, heartbeat_interval=t / 4)
    elector = Elector(cfg, MemoryStorage(), HttpTransport())
    seen = []  # every (term, leader) this node published
    elector.add_listener(lambda s: seen.append((s.term, s.leader_id, s.state)))
    server = pywsgi.WSGIServer(socket.socket(fileno=int(fd)), rpc_app(elector),
                               handler_class=NoDelayWSGIHandler, log=None)
    server.start()
    elector.start()

    def compute(seconds):  # a view that never yields: it holds the server's hub
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    def sleep_until(when):
        gevent.sleep(max(0.0, when - time.monotonic()))

    sleep_until(start_at)
    snap = elector.snapshot
    before = (snap.term, snap.leader_id)
    mark = len(seen)
    # The leader computes first, then the first follower (by id).
    followers = sorted(p.id for p in peers if p.id != snap.leader_id)
    for phase, who in enumerate((snap.leader_id, followers[0] if followers else None)):
        sleep_until(start_at + phase * (busy + 1.5 * t * 4))
        if who == me:
            gevent.spawn(compute, busy).join()
    sleep_until(start_at + 2 * (busy + 1.5 * t * 4))
    snap = elector.snapshot
    calls = elector.status()["calls"]
    print(json.dumps({
        "node": me,
        "before": before,
        "after": (snap.term, snap.leader_id),
        "seen": seen[mark:],
        "heartbeats": {p: c.get("Heartbeat") for p, c in calls.items()},
        "errors": [r.repr for r in elector.errors],
    }))
    elector.stop(transfer=False)
    server.stop(timeout=0.1)
    """
)


def test_a_busy_greenlet_does_not_cost_the_leadership():
    # Three patched processes. The leader's server hub, then a follower's, is
    # held by a greenlet that computes for 5 election timeouts without yielding
    # (a CPU-bound view under gunicorn -k gevent). The leader's heartbeats go on
    # from the election's own thread, and a follower that cannot answer is
    # refused by the others (pre-vote, stickiness): the same leader in the same
    # term throughout. (With the loop in the server's hub, the leader's lost its
    # leadership a few hundred milliseconds into the computation.)
    t, busy = 0.4, 2.0
    listeners = {i: socket.create_server(("127.0.0.1", 0)) for i in IDS}
    addresses = {i: f"http://127.0.0.1:{s.getsockname()[1]}" for i, s in listeners.items()}
    start_at = time.monotonic() + 6.0  # time to start, elect, and settle
    tests_dir = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests_dir), str(tests_dir.parent)])}
    procs = []
    try:
        for i in IDS:
            fd = listeners[i].fileno()
            args = [i, str(fd), json.dumps(addresses), str(t), repr(start_at), str(busy)]
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-W", "error", "-c", BUSY_NODE_SCRIPT, *args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                    pass_fds=(fd,),
                )
            )
        for s in listeners.values():
            s.close()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
        for s in listeners.values():
            s.close()
    assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outs]
    results = {r["node"]: r for r in (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)}
    term, leader = results["n1"]["before"]
    assert leader is not None, results
    for node, r in results.items():
        assert r["before"] == [term, leader], results
        # Never another term, never another leader: not even for a moment.
        assert r["after"] == [term, leader], (node, results)
        assert all(s[0] == term and s[1] in (leader, None) for s in r["seen"]), (node, results)
        assert r["errors"] == [], results


class HeldStorage(MemoryStorage):
    """Holds every save of a term from 1 on until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def save(self, state: core.HardState) -> None:
        if state.term >= 1:
            self.entered.set()
            assert self.release.wait(10)
        super().save(state)


def test_leadership_is_published_only_once_its_term_is_on_disk(cluster):
    # A one-voter cluster becomes candidate and leader in one step: readers
    # (is_leader, the fencing token ctx.term) must not see that leadership until
    # the term is saved, or a crash meanwhile hands the same token out twice.
    storage = HeldStorage()
    told: list[tuple[str, int, int, bool]] = []

    def on_transition(t: core.Transition, snap: Snapshot) -> None:
        told.append((t.role.value, t.term, storage.state.term, elector.is_leader()))

    elector = Elector(
        config("solo", (core.Peer("solo"),), t=0.2),
        storage,
        cluster.net,
        on_transition=on_transition,
    )
    cluster.electors["solo"] = elector
    seen: list[tuple[str, int, int]] = []
    with started_long_ago():
        elector.start()
    assert storage.entered.wait(5)
    deadline = time.monotonic() + 0.5  # over two election timeouts
    while time.monotonic() < deadline:
        snap = elector.snapshot
        seen.append((snap.state, snap.term, storage.state.term))
        assert not elector.is_leader(), seen[-1]
        time.sleep(0.005)
    assert all(state != "leader" for state, _, _ in seen)
    assert told == []  # receivers hear of no term that a crash could undo
    storage.release.set()
    assert wait_until(elector.is_leader, 5)
    assert elector.snapshot.term == storage.state.term == 1
    # Told in order, once the term is on disk; a receiver told of the leadership sees it.
    assert wait_until(lambda: any(role == "leader" for role, *_ in told), 5), told
    assert [role for role, *_ in told] == ["pre-candidate", "candidate", "leader"], told
    assert all(saved >= term for _, term, saved, _ in told), told
    assert told[-1] == ("leader", 1, 1, True), told


def test_leader_tasks_end_when_the_lease_lapses_not_at_the_step_down(cluster):
    # The lease (T(1 - drift) from the last acknowledged round) lapses well before
    # check-quorum's next tick (every heartbeat interval) steps the leader down:
    # its tasks must stop at the lapse, before another node can lead.
    ends: dict[str, float] = {}
    peers = tuple(core.Peer(i) for i in IDS)
    for node_id in IDS:
        cfg = core.Config(node_id, peers, elect_timeout=2.0, heartbeat_interval=1.0, max_drift=0.45)
        elector = Elector(cfg, MemoryStorage(), cluster.net)
        cluster.net.register(node_id, elector.handle, elector.status)
        cluster.electors[node_id] = elector

        def task(ctx: LeaderContext, node_id: str = node_id) -> None:
            ctx.cancelled.wait(30)
            ends[node_id] = clock.now()

        elector.leader_task(task)
    with started_long_ago():
        cluster.start()
    leader = cluster.leader(timeout=20)
    time.sleep(1.2)  # the task runs, rounds are acknowledged
    cluster.net.isolate(leader.node_id)
    lease_until = leader.snapshot.lease_until  # no round is acknowledged from now on
    assert wait_until(lambda: leader.node_id in ends, 10)
    # Lease 1.1 s after the last acknowledged send, step-down at the first tick
    # 2 s after it: ending within half the gap of the lapse tells them apart.
    assert ends[leader.node_id] - lease_until < 0.45, (ends, lease_until)
    assert leader.snapshot.lease_until <= ends[leader.node_id]


def test_a_callback_dispatcher_copied_into_a_forked_child_tells_nothing() -> None:
    # A patched process forks the dispatcher's greenlet with its hub, with the
    # changes still queued: a signal receiver must not run in the child. The pid
    # the dispatcher was made in stands for the fork here.
    import logging

    from flask_goelect.runner.callbacks import CallbackDispatcher
    from flask_goelect.runner.runtime import Runtime

    told: list[core.Transition] = []
    rt = Runtime(False, lambda name, exc: None)
    log = logging.getLogger("test")
    snap = Snapshot.stopped("n1", 0, ("n1",), ())
    change = core.Transition(
        core.Role.FOLLOWER, core.Role.LEADER, None, "n1", 1, 0.0, "won the election"
    )
    for pid_seen in (os.getpid(), -1):
        dispatcher = CallbackDispatcher(
            "n1", lambda t, s: told.append(t), 1.0, rt, record=lambda *a: None, log=log
        )
        dispatcher._pid = pid_seen  # -1: the worker runs in "another" process
        dispatcher.enqueue([change], snap)
        dispatcher.start()
        dispatcher.stop()
        dispatcher.join(5)
    assert told == [change]  # told once: by the dispatcher of this process only


def test_the_loop_waker_sets_its_event_at_once_from_the_loop_s_own_hub() -> None:
    """A step made in the loop's hub (a peer's reply that makes this node leader)
    wakes the loop before the hub polls again: the leader tasks start at once. From
    another thread the wake goes through the hub's async watcher."""
    import gevent

    from flask_goelect.runner.runtime import LoopWaker

    waker = LoopWaker()
    seen: dict[str, object] = {}
    attached = threading.Event()
    done = threading.Event()

    def loop_thread() -> None:
        event = waker.attach()
        attached.set()
        waker.send()
        seen["same hub, at once"] = event.is_set()
        event.clear()
        seen["other thread, within 5 s"] = event.wait(5.0)
        waker.detach()
        gevent.get_hub().destroy(destroy_loop=True)
        done.set()

    threading.Thread(target=loop_thread, daemon=True).start()
    assert attached.wait(5.0)
    time.sleep(0.05)  # the loop thread waits on its event by now
    waker.send()
    assert done.wait(10.0)
    assert seen == {"same hub, at once": True, "other thread, within 5 s": True}
    waker.send()  # detached: does nothing


def test_a_stop_that_cancels_while_the_loop_starts_tasks_misses_none() -> None:
    """``cancel`` (a stop, from another thread) while ``reconcile`` is between two
    spawns: the cancel waits for the reconcile, then cancels every task it started
    (before, a task started after the cancel's swap ran on, uncancelled)."""
    from flask_goelect.runner.tasks import LeaderTasks

    tasks = LeaderTasks("n1", logging.getLogger("test"))
    contexts: list[LeaderContext] = []
    cancellers: list[threading.Thread] = []

    class Rt:
        def event(self) -> threading.Event:
            return threading.Event()

        def spawn(self, name: str, func: Any, *args: Any) -> object:
            contexts.append(args[1])
            if not cancellers:
                thread = threading.Thread(target=tasks.cancel, args=(self,))
                cancellers.append(thread)
                thread.start()
                thread.join(0.2)  # the cancel runs now, unless it waits for us
            return object()

        def abandon(self, worker: object) -> None:
            pass

    rt = Rt()
    tasks.add(lambda ctx: None)
    tasks.add(lambda ctx: None)
    snap = Snapshot("n1", State.LEADER, term=3, leader_id="n1", lease_until=clock.now() + 60)
    tasks.reconcile(
        snap,
        clock.now(),
        rt,  # type: ignore[arg-type]
        running=lambda: True,
        source=lambda: snap,
        clock=clock.now,
        record=lambda kind, what: None,
    )
    cancellers[0].join(5.0)
    assert len(contexts) == 2
    assert all(ctx.cancelled.is_set() for ctx in contexts)
    assert not tasks.running


def test_a_loop_that_fails_before_it_runs_fails_the_start_at_once(cluster, monkeypatch):
    """Before: the loop's thread reported the crash and waited for the elector's
    lock, which the start held while it waited 10 s for the loop; then the elector
    was stopped and closed for good. Now the start fails at once with the cause,
    and a later start works."""
    from flask_goelect.runner.runtime import LoopWaker

    electors = cluster.memory(ids=("n1",), start=False)
    elector = electors["n1"]
    attach = LoopWaker.attach

    def broken(self: LoopWaker) -> Any:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(LoopWaker, "attach", broken)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="did not start") as exc:
        elector.start()
    assert time.monotonic() - started < 5.0
    assert isinstance(exc.value.__cause__, OSError)
    assert not elector.running and elector.errors_total == 0
    monkeypatch.setattr(LoopWaker, "attach", attach)
    elector.start()
    assert wait_until(elector.is_leader, 10.0)


def test_the_last_snapshot_is_the_state_at_the_moment_the_elector_stopped(cluster):
    """What a hand-off writes for the next process: the state when the elector
    stopped stepping (a snapshot read before the stop could miss a step, a
    transfer that dropped the lease say)."""
    cluster.memory()
    leader = cluster.leader()
    leader.stop(transfer=False, timeout=3)
    assert leader.snapshot.state == "stopped"
    last = leader.last_snapshot
    assert last.state == "leader" and last.lease_until > 0
    assert leader.promise_until is not None and leader.started_until is not None


def test_a_failed_start_tells_nothing_and_leaves_no_dispatcher(monkeypatch):
    """The start's resumed leader was queued, then the loop failed to start: the
    receivers must not be told of it, no dispatcher thread may be left, a stop
    after it is quick, and a restart leaves one dispatcher (found by a review)."""
    from flask_goelect.runner.runtime import LoopWaker

    told: list[core.Transition] = []
    peers = tuple(core.Peer(i, f"mem://{i}") for i in IDS)
    storage = MemoryStorage(core.HardState(3))
    elector = Elector(
        config("n1", peers, 0.2),
        storage,
        MemoryTransport(),
        on_transition=lambda t, s: told.append(t),
    )

    def dispatchers() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "goelect-n1-callbacks")

    def broken(self: LoopWaker) -> Any:
        raise OSError(24, "Too many open files")

    before = dispatchers()
    monkeypatch.setattr(LoopWaker, "attach", broken)
    resume = core.Resume(3, core.LeaderInfo("n2", "mem://n2", {}), lease_until=clock.now() + 5)
    with pytest.raises(RuntimeError, match="did not start"):
        elector.start(resume=resume)
    time.sleep(0.3)
    assert told == [] and dispatchers() == before
    monkeypatch.undo()
    elector.start()
    assert dispatchers() == before + 1
    started = time.monotonic()
    elector.stop(transfer=False, timeout=2.0)
    assert time.monotonic() - started < 1.5  # not its whole timeout (2 s), as before
    assert wait_until(lambda: dispatchers() == before, 5.0)


def test_no_leader_task_starts_once_a_stop_said_the_elector_is_not_running() -> None:
    """The loop read "leader, running", then a stop halted the elector and cancelled
    (nothing to cancel yet): the loop's reconcile must not start the tasks then. The
    running flag is asked under the lock the cancel takes."""
    from flask_goelect.runner.tasks import LeaderTasks

    tasks = LeaderTasks("n1", logging.getLogger("test"))
    started: list[LeaderContext] = []
    running = [True]

    class Rt:
        def event(self) -> threading.Event:
            return threading.Event()

        def spawn(self, name: str, func: Any, *args: Any) -> object:
            started.append(args[1])
            return object()

        def abandon(self, worker: object) -> None:
            pass

    tasks.add(lambda ctx: None)
    snap = Snapshot("n1", State.LEADER, term=3, leader_id="n1", lease_until=clock.now() + 60)
    running[0] = False  # the stop: not running any more, then its cancel (nothing yet)
    tasks.cancel(Rt())  # type: ignore[arg-type]
    tasks.reconcile(
        snap,
        clock.now(),
        Rt(),  # type: ignore[arg-type]
        running=lambda: running[0],
        source=lambda: snap,
        clock=clock.now,
        record=lambda kind, what: None,
    )
    assert started == [] and not tasks.running
