"""Real example-app processes under injected faults: crashes, pauses, partitions, black holes.

Clusters of 3 and 5 nodes (separate processes, real HTTP, gevent) reach each
other only through a fault-injecting proxy (:mod:`goelect_harness.faultproxy`): every directed
link has its own port, so a test can reset, black-hole, delay or cut one
direction of any link at any moment. Every scenario runs
``GOELECT_SYSTEM_ROUNDS`` rounds (default 1) per cluster size, each with fresh
random choices and timing (victims, phases, durations); after each round every
fault is healed and the round checks:

* liveness: one leader agreed by every node, writing to the ledger in its term;
* terms never go backwards: per process in its status answers and event lines,
  and across restarts against its state file; what a node stated on the wire
  never exceeds what its state file held when it restarted;
* one vote per term: no node granted votes to two candidates in a term
  (every vote reply the proxy forwarded, and the votes this test forged);
* the ledger of the leader-only job: in file order the term never decreases,
  one writer per term, and the writes of different terms never interleave in
  time (see :func:`goelect_harness.faults.ledger_violations` for why that is provable).

A table of rounds, violations and time without a leader per scenario is
printed at the end of the module. The full run (at least 100 fault rounds) is
``python -m tests.test_faults_system --rounds 5``; see ``docs/testing.md``.

"Time without a leader" is measured from the fault (the signal, or the moment
the leader is cut off) to the first ``lease`` event of a new term, on the
nodes' monotonic clock; for a partition it includes the rest of the old
leader's lease (at most T).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from example_app.ledger import LedgerEntry, check_ledger
from flask_goelect.core import HardState
from goelect_harness.cluster import ClusterError, Event, LeaderView
from goelect_harness.faultproxy import Exchange, Fault, FaultProxy, ProxyError
from goelect_harness.faults import (
    BOUND,
    FaultCluster,
    Incarnation,
    Monitor,
    Report,
    RoundResult,
    Sample,
    Scenario,
    WireLog,
    check_no_inflation,
    ledger_violations,
    new_lease,
    partition_leader_minority,
    partition_then_heal,
    play_round,
    read_state_file,
    report_writer,
    rounds_from_env,
    run_round,
    vote_violations,
    wait_for_write,
)
from goelect_harness.helpers import wait_until

ROUNDS = rounds_from_env()
#: Election timeout, heartbeat interval and job interval (ms) per cluster size.
TIMING = {3: (200, 50, 50), 5: (250, 50, 50)}


# -- the proxy itself (no node processes) ------------------------------------------------------


class _Echo:
    """A tiny HTTP/1.1 server on loopback that answers every POST with its JSON body."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.address = self.sock.getsockname()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.2)
            buf = b""
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    if len(rest) < length:
                        break
                    body, buf = rest[:length], rest[length:]
                    reply = json.dumps({"echo": json.loads(body or b"null")}).encode()
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(reply)}\r\n\r\n".encode()
                        + reply
                    )

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._accept.join(5)
        for thread in self._threads:
            thread.join(5)


def _ask(port: int, payload: object, timeout: float = 1.0) -> object:
    """POST ``payload`` through ``port``; the decoded reply, or the exception's class name."""
    body = json.dumps(payload).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(
                b"POST /_goelect/rpc/vote HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    return "closed"
                data += chunk
            return json.loads(data.partition(b"\r\n\r\n")[2])
    except OSError as exc:
        return type(exc).__name__


@pytest.fixture
def proxied() -> Iterator[tuple[FaultProxy, _Echo, _Echo]]:
    a, b = _Echo(), _Echo()
    proxy = FaultProxy({"a": a.address, "b": b.address}, lifetime=60)
    try:
        proxy.start()
        yield proxy, a, b
    finally:
        proxy.close()
        a.close()
        b.close()
    assert proxy.errors == []
    assert not proxy.running


def test_proxy_passes_and_records_each_exchange(
    proxied: tuple[FaultProxy, _Echo, _Echo],
) -> None:
    proxy, _, _ = proxied
    assert _ask(proxy.port("a", "b"), {"term": 3}) == {"echo": {"term": 3}}
    assert wait_until(lambda: proxy.exchanges(), 5.0)
    (exchange,) = proxy.exchanges()
    assert (exchange.src, exchange.dst, exchange.path) == ("a", "b", "/_goelect/rpc/vote")
    assert exchange.request == {"term": 3} and exchange.reply == {"echo": {"term": 3}}
    assert exchange.delivered and exchange.reply_delivered and exchange.status == 200


def test_proxy_faults_per_link(proxied: tuple[FaultProxy, _Echo, _Echo]) -> None:
    proxy, _, _ = proxied
    ab, ba = proxy.port("a", "b"), proxy.port("b", "a")
    proxy.set_link("a", "b", Fault.DROP)
    assert _ask(ab, 1) in ("ConnectionResetError", "closed", "BrokenPipeError")
    assert _ask(ba, 2) == {"echo": 2}, "the other direction is another link"
    proxy.set_link("a", "b", Fault.BLACKHOLE)
    started = time.monotonic()
    assert _ask(ab, 3, timeout=0.3) == "TimeoutError"
    assert time.monotonic() - started >= 0.25
    proxy.set_link("a", "b", Fault.LOSE_REPLIES)
    assert _ask(ab, 4, timeout=0.3) == "TimeoutError"
    lost = wait_until(lambda: [e for e in proxy.exchanges() if e.request == 4], 5.0)
    assert lost and lost[0].delivered and lost[0].reply == {"echo": 4}
    assert not lost[0].reply_delivered
    proxy.set_link("a", "b", delay_ms=100)
    started = time.monotonic()
    assert _ask(ab, 5) == {"echo": 5}
    assert time.monotonic() - started >= 0.19, "100 ms each way"
    proxy.heal()
    assert _ask(ab, 6) == {"echo": 6}
    proxy.cut_one_way("a", "b")
    assert _ask(ab, 7, timeout=0.3) == "TimeoutError"
    assert _ask(ba, 8, timeout=0.3) == "TimeoutError", "b is heard by a but hears nothing back"
    proxy.heal()
    assert _ask(ba, 9) == {"echo": 9}


def test_proxy_schedule_flaps_a_link_then_passes(
    proxied: tuple[FaultProxy, _Echo, _Echo],
) -> None:
    proxy, _, _ = proxied
    done = proxy.schedule([("a", "b")], [("drop", 0.3), ("pass", 0.3), ("drop", 0.3)])
    outcomes = []
    deadline = time.monotonic() + 10
    while not done.is_set() and time.monotonic() < deadline:
        outcomes.append(_ask(proxy.port("a", "b"), 0, timeout=0.3) == {"echo": 0})
        time.sleep(0.05)
    assert done.is_set()
    assert False in outcomes and True in outcomes
    assert proxy.links()[("a", "b")].fault is Fault.PASS
    assert _ask(proxy.port("a", "b"), 1) == {"echo": 1}


def test_proxy_stops_by_itself_and_refuses_changes_then() -> None:
    a, b = _Echo(), _Echo()
    try:
        proxy = FaultProxy({"a": a.address, "b": b.address}, lifetime=0.3)
        proxy.start()
        assert wait_until(lambda: not proxy.running, 5.0)
        with pytest.raises(ProxyError):
            proxy.set_link("a", "b", "drop")
        proxy.close()
        assert proxy.errors == []
    finally:
        a.close()
        b.close()


# -- the checks, on made-up evidence (they must not be vacuous) --------------------------------


def _entry(node: str, term: int, at: float) -> LedgerEntry:
    return LedgerEntry(node, term, 1, at)


def test_ledger_check_accepts_a_quick_hand_over_and_flags_overlapping_terms() -> None:
    clean = [_entry("a", 1, 10.0), _entry("a", 1, 10.1), _entry("b", 2, 10.12)]
    assert ledger_violations(clean) == []
    assert ledger_violations([*clean, _entry("a", 1, 10.2)])  # a stale leader wrote last
    assert ledger_violations([_entry("a", 1, 10.0), _entry("b", 1, 10.1)])  # two writers
    # In file order, but b read its time (inside its lease) before a's last write:
    # both held a lease at once.
    overlapping = [_entry("a", 1, 10.0), _entry("a", 1, 10.1), _entry("b", 2, 10.05)]
    assert check_ledger(overlapping) == [], "file order alone does not see it"
    assert any("overlap" in v for v in ledger_violations(overlapping))


def _exchange(
    src: str, dst: str, kind: str, request: dict[str, Any], reply: dict[str, Any], at: float
) -> Exchange:
    return Exchange(src, dst, "POST", f"/_goelect/rpc/{kind}", request, at, True, 200, reply,
                    at + 0.001, True)  # fmt: skip


def test_vote_check_flags_two_candidates_in_one_term() -> None:
    votes = [("c", 5, "a", 1.0), ("c", 5, "a", 1.1), ("c", 6, "b", 2.0)]
    assert vote_violations(votes) == []
    assert vote_violations([*votes, ("c", 6, "a", 2.1)])


def test_wire_log_compares_what_a_node_said_with_its_state_file() -> None:
    vote = _exchange("a", "c", "vote", {"sender": "a", "term": 5}, {"term": 5, "granted": True}, 1)
    pre_vote = _exchange(
        "c", "a", "vote", {"sender": "c", "term": 6, "pre_vote": True},
        {"term": 6, "granted": True, "pre_vote": True}, 1.5,
    )  # fmt: skip
    exchanges = [vote, pre_vote]
    ready = {("c", 2): 3.0}

    def check(state: HardState, later: Sequence[Exchange] = ()) -> list[str]:
        log = WireLog()
        restarts = [Incarnation("c", 1, 0.0, HardState()), Incarnation("c", 2, 2.0, state)]
        log.update(exchanges, restarts, lambda node, pid: ready.get((node, pid)))
        log.update([*exchanges, *later], [], lambda node, pid: ready.get((node, pid)))
        return log.violations

    assert check(HardState(5, "a")) == [], "a pre-vote for 6 does not put c in term 6"
    assert check(HardState(6, None)) == []
    assert check(HardState(4, None)), "c said term 5 but its file held 4"
    assert check(HardState(5, "b")), "c voted for a in 5 but its file says b"
    assert check(HardState(5, None)), "c voted in 5 but its file forgot the vote"
    stale = _exchange("c", "a", "heartbeat", {"sender": "c", "term": 4, "seq": 1},
                      {"term": 5, "seq": 1, "success": False}, 4.0)  # fmt: skip
    assert check(HardState(5, "a"), [stale]), "the new process said term 4 after loading 5"


def test_monitor_flags_a_term_going_back_per_process_and_against_the_state_file() -> None:
    monitor = Monitor(types.SimpleNamespace(nodes={}), lifetime=1.0)  # type: ignore[arg-type]

    def event(kind: str, term: int, index: int, **more: object) -> Event:
        return Event(index, "a", kind, float(index), {"event": kind, "term": term, **more})

    for index, (kind, term) in enumerate(
        [("ready", 0), ("started", 3), ("state", 3), ("lease", 5), ("state", 4), ("state", 5)]
    ):
        monitor.on_event(event(kind, term, index, pid=7))
    monitor.samples["a"] += [Sample("a", 7, 1.0, 5, "leader", "a", True)]
    restart = [Incarnation("a", 7, 0.0, HardState(3, "a"))]
    # The lease line comes from a leader task: it is not ordered with the signal lines.
    assert monitor.term_violations(restart) == []
    monitor.on_event(event("leader_changed", 4, 6))
    monitor.samples["a"] += [Sample("a", 7, 2.0, 4, "follower", None, False)]
    assert len(monitor.term_violations(restart)) == 2
    assert len(monitor.term_violations([Incarnation("a", 7, 0.0, HardState(6, None))])) > 2


# -- the clusters --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest) -> Report:
    table = Report(f"fault rounds on real processes ({ROUNDS} per scenario and cluster size)")
    request.addfinalizer(report_writer(request.config, table))
    return table


@pytest.fixture(scope="module", params=sorted(TIMING), ids=lambda n: f"{n}nodes")
def cluster(request: pytest.FixtureRequest) -> Iterator[FaultCluster]:
    size: int = request.param
    elect, heartbeat, job = TIMING[size]
    # Generous: the proxy and the monitor stop by themselves after this.
    lifetime = 600.0 + ROUNDS * len(SCENARIOS) * 60.0
    with FaultCluster(
        size,
        elect_timeout=elect,
        heartbeat_interval=heartbeat,
        job_interval=job,
        lifetime=lifetime,
    ) as nodes:
        nodes.start(timeout=60.0)
        yield nodes


def _followers(cluster: FaultCluster, leader: LeaderView) -> list[str]:
    return [n for n in cluster.nodes if n != leader.id]


def _changed(
    cluster: FaultCluster, mark: int, leader: LeaderView, result: RoundResult
) -> Event | None:
    """Count (not fail) a change of leader since ``mark``: the new leader's first lease."""
    lease = new_lease(cluster, mark, leader.term, timeout=0)
    if lease is not None:
        result.counts["leader changed"] += 1
    return lease


def sigkill_leader(
    cluster: FaultCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """SIGKILL the leader at a random moment; another leads; the dead one restarts."""
    time.sleep(rng.uniform(0, cluster.T))
    mark = cluster.mark()
    killed_at = cluster.kill(leader.id)
    lease = new_lease(cluster, mark, leader.term, among=_followers(cluster, leader))
    if lease is None:
        result.violations.append(f"no new leader within {BOUND}s of the SIGKILL")
        return
    result.leaderless.append(lease.mono - killed_at)
    cluster.start_node(leader.id)


def sigkill_follower(
    cluster: FaultCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """SIGKILL a follower for T to 3T, then restart it (the leader should not change)."""
    victim = rng.choice(_followers(cluster, leader))
    time.sleep(rng.uniform(0, cluster.T))
    mark = cluster.mark()
    cluster.kill(victim)
    time.sleep(rng.uniform(cluster.T, 3 * cluster.T))
    _changed(cluster, mark, leader, result)
    cluster.start_node(victim)


def sigkill_leader_repeatedly(
    cluster: FaultCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """Kill three leaders in a row, each at a random moment of its leadership; dead nodes
    restart only when one more death would leave no majority."""
    tolerated = (len(cluster.nodes) - 1) // 2
    dead: list[str] = []
    current = (leader.id, leader.term)
    for _ in range(3):
        time.sleep(rng.uniform(0, 2 * cluster.T))
        mark = cluster.mark()
        killed_at = cluster.kill(current[0])
        dead.append(current[0])
        alive = [n for n in cluster.nodes if n not in dead]
        lease = new_lease(cluster, mark, current[1], among=alive)
        if lease is None:
            result.violations.append(f"no new leader within {BOUND}s of killing {current[0]}")
            return
        result.leaderless.append(lease.mono - killed_at)
        current = (lease.node, int(lease.data["term"]))
        if len(dead) >= tolerated:
            cluster.start(dead, timeout=60.0)
            dead.clear()


def _ledger_after(path: Path, offset: int) -> list[LedgerEntry]:
    """The complete ledger lines after byte ``offset``."""
    with open(path, "rb") as f:
        f.seek(offset)
        lines = f.read().splitlines(keepends=True)
    out = []
    for line in lines:
        if line.endswith(b"\n"):
            data = json.loads(line)
            out.append(LedgerEntry(data["node"], data["term"], data["seq"], data["time"]))
    return out


def sigstop_leader(
    cluster: FaultCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """SIGSTOP the leader for 3 × T (longer if no other leader holds a lease yet), then
    SIGCONT: it must write nothing in its old term after waking."""
    time.sleep(rng.uniform(0, cluster.T))
    mark = cluster.mark()
    stopped_at = cluster.pause(leader.id)  # returns once the kernel shows it stopped
    offset = cluster.ledger.stat().st_size if cluster.ledger.exists() else 0
    time.sleep(max(0.0, stopped_at + 3 * cluster.T - time.monotonic()))
    lease = new_lease(cluster, mark, leader.term, among=_followers(cluster, leader))
    if lease is None:
        result.violations.append(f"no new leader within {BOUND}s while {leader.id} was stopped")
        return
    if lease.mono > stopped_at + 3 * cluster.T:
        result.counts["pause extended past 3T"] += 1
    result.leaderless.append(lease.mono - stopped_at)
    cluster.resume(leader.id)
    learned = wait_until(
        lambda: (s := cluster.status(leader.id)) is not None and s["term"] > leader.term, BOUND
    )
    if not learned:
        result.violations.append(f"{leader.id} did not learn of the new term within {BOUND}s")
    after = _ledger_after(cluster.ledger, offset)
    stale = [e for e in after if e.node == leader.id and e.term <= leader.term]
    result.counts["writes after waking"] += len(stale)
    if stale:
        result.violations.append(
            f"{leader.id} wrote {len(stale)} ledger entries in term {leader.term} after waking"
        )


def one_way_link(
    cluster: FaultCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """What one node sends never reaches another (the reverse direction works)."""
    followers = _followers(cluster, leader)
    if rng.random() < 0.5:
        follower = rng.choice(followers)
        src, dst = (leader.id, follower) if rng.random() < 0.5 else (follower, leader.id)
    else:
        src, dst = rng.sample(followers, 2)
    time.sleep(rng.uniform(0, cluster.T))
    mark = cluster.mark()
    cut = time.monotonic()
    cluster.proxy.cut_one_way(src, dst)
    time.sleep(rng.uniform(3 * cluster.T, 6 * cluster.T))
    lease = _changed(cluster, mark, leader, result)
    if lease is not None:
        result.leaderless.append(lease.mono - cut)
    cluster.proxy.heal()


def flapping_link(
    cluster: FaultCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """The link between the leader and a follower goes down and up at random for 1-2 s."""
    follower = rng.choice(_followers(cluster, leader))
    fault = rng.choice([Fault.DROP, Fault.BLACKHOLE])
    steps: list[tuple[Fault, float]] = []
    total, until = 0.0, rng.uniform(1.0, 2.0)
    while total < until:
        for step in (fault, Fault.PASS):
            seconds = rng.uniform(0.25 * cluster.T, 2 * cluster.T)
            steps.append((step, seconds))
            total += seconds
    mark = cluster.mark()
    done = cluster.proxy.schedule(cluster.proxy.links_between([leader.id], [follower]), steps)
    if not done.wait(total + BOUND):
        result.violations.append("the flapping schedule did not end")
    _changed(cluster, mark, leader, result)


def blackholed_peer(
    cluster: FaultCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """A node accepts every connection and never answers, and nothing it sends arrives.

    A follower (two rounds in three): the leader must keep leading without a
    gap (goelect's leader loop froze here); the leader: the others elect one.
    """
    victim = leader.id if rng.random() < 1 / 3 else rng.choice(_followers(cluster, leader))
    others = [n for n in cluster.nodes if n != victim]
    time.sleep(rng.uniform(0, cluster.T))
    mark = cluster.mark()
    cut = time.monotonic()
    cut_wall = time.time()
    cluster.proxy.set_links(cluster.proxy.links_between([victim], others), Fault.BLACKHOLE)
    if victim == leader.id:
        lease = new_lease(cluster, mark, leader.term, among=others)
        if lease is None:
            result.violations.append(f"no new leader within {BOUND}s of black-holing {victim}")
            return
        result.leaderless.append(lease.mono - cut)
        time.sleep(rng.uniform(0, 2 * cluster.T))
    else:
        time.sleep(rng.uniform(3 * cluster.T, 6 * cluster.T))
        if not _changed(cluster, mark, leader, result):
            # The leader kept its lease: it wrote about every job interval meanwhile.
            written = [
                e.time
                for e in cluster.ledger_entries()
                if e.node == leader.id and e.term == leader.term and e.time >= cut_wall
            ]
            times = [cut_wall, *written, time.time()]
            gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
            result.extra["leader's longest ledger gap"].append(max(gaps))
    cluster.proxy.heal()


def restart_same_state(
    cluster: FaultCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """A node that just voted is SIGKILLed and restarted with its state file.

    Kill the leader; as soon as a follower ``v`` takes part in the new election
    (asks for or answers a vote), SIGKILL ``v``: its state file must hold every
    vote it gave (the wire log checks it). ``v`` restarts cut off from the
    others; once its restart promise is over, vote requests forged in its term
    from a voter it did not vote for are refused, and in a new term it grants
    one vote only.
    """
    victim = rng.choice(_followers(cluster, leader))
    others = [n for n in cluster.nodes if n not in (victim, leader.id)]
    time.sleep(rng.uniform(0, cluster.T))
    mark = cluster.mark()
    seen = len(cluster.proxy.exchanges())
    killed_at = cluster.kill(leader.id)

    def took_part() -> bool:
        for e in cluster.proxy.exchanges(seen):
            if not isinstance(e.request, dict) or e.request.get("pre_vote"):
                continue
            if e.path.endswith("/rpc/vote") and victim in (e.src, e.dst):
                return True
        return False

    if not wait_until(took_part, BOUND, 0.002):
        result.violations.append(f"{victim} took no part in an election within {BOUND}s")
        return
    time.sleep(rng.uniform(0, 0.03))
    cluster.kill(victim)
    state = read_state_file(cluster.state_file(victim))
    result.counts[f"voted_for {'self' if state.voted_for == victim else 'other'}"] += 1
    # The leader elected meanwhile (if any) loses its majority with two nodes down
    # in a 3-node cluster; that is fine, the cluster heals at the end.
    lease = new_lease(cluster, mark, leader.term, among=others, timeout=0)
    if lease is not None:
        result.leaderless.append(lease.mono - killed_at)
    cluster.proxy.isolate(victim, Fault.DROP)
    cluster.start_node(victim)
    time.sleep(2 * cluster.T)  # past its restart promise
    now_state = read_state_file(cluster.state_file(victim))
    voters = [n for n in cluster.nodes if n != victim]
    if now_state.voted_for is not None:
        # The vote it persisted before the crash still binds it.
        rival = next(n for n in voters if n != now_state.voted_for)
        for transfer in (False, True):
            reply = cluster.forge_vote_request(victim, rival, now_state.term, transfer=transfer)
            if reply.get("granted"):
                result.violations.append(
                    f"{victim} (restarted) granted a vote in term {now_state.term} to {rival}"
                    f" after voting for {now_state.voted_for}: {reply}"
                )
        result.counts["persisted vote kept"] += 1
    # And one vote per term in a term it has not voted in yet. (It is cut off
    # and its promise is over, so it grants the first; when the network heals,
    # its higher term makes the cluster elect again: that is Raft.)
    first, second = rng.sample(voters, 2)
    term = now_state.term + 1
    if cluster.forge_vote_request(victim, first, term, transfer=False).get("granted"):
        reply = cluster.forge_vote_request(victim, second, term, transfer=False)
        if reply.get("granted"):
            result.violations.append(
                f"{victim} granted votes in term {term} to {first} and to {second}: {reply}"
            )
        result.counts["second vote refused"] += 1


def _campaign_of(node: str, term: int) -> Callable[[Event], bool]:
    """Matches the event of ``node`` becoming a candidate in ``term``."""

    def match(e: Event) -> bool:
        return (
            e.kind == "state"
            and e.node == node
            and e.data.get("term") == term
            and e.data.get("state") == "candidate"
        )

    return match


def rolling_restart(
    cluster: FaultCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """SIGTERM every node in turn, restarting each before the next.

    When the leader is stopped it hands over: the new leader campaigned for a
    transfer (not after an election timeout), and the ledger's gap between the
    old and the new leader's writes stays near one job interval (at most one job
    interval plus T).
    """
    job = cluster.job_interval / 1000
    for node in rng.sample(list(cluster.nodes), len(cluster.nodes)):
        current = cluster.leader_view()
        time.sleep(rng.uniform(0, 2 * job))
        mark = cluster.mark()
        signalled_at = cluster.terminate(node)
        if node == current.id:
            lease = new_lease(cluster, mark, current.term, among=set(cluster.nodes) - {node})
            if lease is None:
                result.violations.append(f"no new leader within {BOUND}s of the SIGTERM")
                return
            result.leaderless.append(lease.mono - signalled_at)
            term = int(lease.data["term"])
            campaign = cluster.wait_for_event(_campaign_of(lease.node, term), BOUND, since=mark)
            reason = campaign.data.get("reason", "") if campaign is not None else "?"
            if "transfer" not in str(reason):
                result.violations.append(
                    f"{lease.node} won term {term} after SIGTERM of {node} by an election"
                    f" ({reason!r}), not by a hand-over"
                )
            first = wait_for_write(cluster, lease.node, term)
            old = [e for e in cluster.ledger_entries() if e.node == node and e.term == current.term]
            if first is not None and old:
                gap = first.time - old[-1].time
                result.extra["job gap"].append(gap)
                # Near one job interval: a change of leader by election leaves the
                # job idle for at least T after the old leader's last heartbeat.
                if gap > job + cluster.T:
                    result.violations.append(
                        f"the job was idle {gap * 1000:.0f} ms during the hand-over from {node}"
                        f" to {lease.node} (job interval {job * 1000:.0f} ms, T"
                        f" {cluster.T * 1000:.0f} ms)"
                    )
        status = cluster.wait_exit(node, BOUND)
        if status != 0:
            result.violations.append(f"{node} exited with status {status} after SIGTERM")
        cluster.start_node(node)


SCENARIOS: dict[str, Scenario] = {
    "sigkill-leader": sigkill_leader,
    "sigkill-follower": sigkill_follower,
    "sigkill-leader-repeatedly": sigkill_leader_repeatedly,
    "sigstop-leader": sigstop_leader,
    "partition-leader-minority": partition_leader_minority,
    "partition-then-heal": partition_then_heal,
    "one-way-link": one_way_link,
    "flapping-link": flapping_link,
    "blackholed-peer": blackholed_peer,
    "restart-same-state": restart_same_state,
    "rolling-restart": rolling_restart,
}


@pytest.mark.system
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fault_rounds(cluster: FaultCluster, report: Report, scenario: str) -> None:
    name = f"{scenario} ({len(cluster.nodes)} nodes)"
    for _ in range(ROUNDS):
        run_round(cluster, report, name, SCENARIOS[scenario])


# -- the checks catch broken nodes (a check that cannot fail proves nothing) --------------------


def isolate_a_follower(
    cluster: FaultCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """Cut one follower off for 4 × T: long enough for its election timer to fire."""
    follower = rng.choice(_followers(cluster, leader))
    cut = time.monotonic()
    cluster.proxy.isolate(follower, Fault.DROP)
    time.sleep(4 * cluster.T)
    check_no_inflation(cluster, result, [follower], leader.term, cut, time.monotonic())


def cut_off_the_leader(
    cluster: FaultCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """Cut the leader off until another has led for 4 × T, then heal."""
    mark = cluster.mark()
    cluster.proxy.isolate(leader.id, Fault.DROP)
    lease = new_lease(cluster, mark, leader.term, among=_followers(cluster, leader))
    if lease is None:
        result.violations.append(f"no new leader within {BOUND}s")
        return
    time.sleep(4 * cluster.T)


#: A broken node (code run in every node before the app), a scenario that
#: exposes it, and words the violations found must contain.
BROKEN: dict[str, tuple[str, Scenario, str]] = {
    # goelect's fault: voted_for is written but never read. (The storage refuses
    # to record a second vote in a term and stops the elector: that guard goes too.)
    "votes-twice-in-a-term": (
        "import flask_goelect.core as core, flask_goelect.storage as storage\n"
        "core.Node._can_grant = lambda self, candidate: True\n"
        # A vote's own promise (no other vote for T after it) would refuse the
        # second vote of a term asked for at once: the broken node skips it too.
        "core.Node._sticky_refusal = lambda self, msg, now: None\n"
        "storage.check_transition = lambda old, new: None",
        restart_same_state,
        "two votes in a term",
    ),
    # The term and vote never reach the disk.
    "forgets-its-votes": (
        "import flask_goelect.storage as storage\n"
        "storage.FileStorage.save = lambda self, state: None",
        restart_same_state,
        "its state file held term 0",
    ),
    # No pre-vote: a node cut off raises its term at every election timeout.
    "no-pre-vote": (
        "import flask_goelect.core as core\n"
        "core.Node._campaign = lambda self, *, transfer: self._become_candidate(transfer=transfer)",
        isolate_a_follower,
        "pre-vote must keep its term",
    ),
    # goelect's leader: no check quorum, and "leader" without a lease.
    "leads-without-a-lease": (
        "import flask_goelect.core as core, flask_goelect.state as state\n"
        "core.Node._has_quorum_contact = lambda self, now: True\n"
        "state.Snapshot.is_leader = lambda self, now=None: self.state == 'leader'",
        cut_off_the_leader,
        "wrote in term",
    ),
}


@pytest.mark.system
@pytest.mark.parametrize("broken", list(BROKEN))
def test_checks_catch_a_broken_node(broken: str) -> None:
    patch, scenario, expected = BROKEN[broken]
    elect, heartbeat, job = TIMING[3]
    with FaultCluster(
        3,
        elect_timeout=elect,
        heartbeat_interval=heartbeat,
        job_interval=job,
        lifetime=300.0,
        node_patch=patch,
    ) as nodes:
        nodes.start(timeout=60.0)
        try:
            result = play_round(nodes, scenario, seed=random.SystemRandom().randrange(2**32))
            violations = result.violations
        except ClusterError as exc:
            # The broken node may break the cluster before the round starts (two
            # leaders of one term that never agree): what it left behind is checked.
            violations = [*nodes.violations(), f"no agreed leader: {exc}"]
    found = [v for v in violations if expected in v]
    assert found, f"{broken}: no violation with {expected!r} among {violations}"


# -- the full run from the command line -----------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.test_faults_system",
        description="Run the fault scenarios on real processes, N rounds each per cluster size,"
        " and print the table of rounds, violations and time without a leader.",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds per scenario and size")
    parser.add_argument("-k", default=None, help="pytest -k expression to pick scenarios")
    parser.add_argument("--netns", action="store_true", help="also run tests/test_netns_system.py")
    parser.add_argument("--report", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    os.environ["GOELECT_SYSTEM_ROUNDS"] = str(args.rounds)
    if args.report:
        os.environ["GOELECT_SYSTEM_REPORT"] = str(Path(args.report).resolve())
    here = Path(__file__).resolve()
    paths = [str(here)] + ([str(here.with_name("test_netns_system.py"))] if args.netns else [])
    pytest_args = [*paths, "-q", "-p", "no:cacheprovider", "--durations=0"]
    if args.k:
        pytest_args += ["-k", args.k]
    return int(pytest.main(pytest_args))


if __name__ == "__main__":
    sys.exit(main())
