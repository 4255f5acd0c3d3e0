"""Unit tests of the election core, one rule at a time.

Each test names the Raft paper section (§), the thesis section (thesis §) or the
fault of goelect that it guards against. Time is manual and randomness seeded.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import pytest
from core_net import HB, Net, T, make_config

from flask_goelect.core import (
    JITTER,
    RANK_GAP,
    RANK_GAP_NO_LEADER,
    RANK_SLOTS,
    RANK_SLOTS_NO_LEADER,
    Config,
    ConfigError,
    HardState,
    LeaderInfo,
    Node,
    NotLeaderError,
    Output,
    Peer,
    Resume,
    Role,
    TransferError,
    VoterSetMismatch,
)
from flask_goelect.messages import (
    Heartbeat,
    HeartbeatReply,
    TimeoutNow,
    TimeoutNowReply,
    VoteReply,
    VoteRequest,
)


def fresh(node_id: str = "a", ids: tuple[str, ...] = ("a", "b", "c"), **kw: object) -> Node:
    return Node(make_config(node_id, ids, **kw), HardState(), now=0.0, rng=random.Random(7))


# -- §5.1 terms ------------------------------------------------------------------


def test_higher_term_demotes_leader_and_is_persisted() -> None:
    """§5.1: a message with a higher term makes the receiver a follower of it."""
    net = Net()
    net.elect("a")
    a = net.nodes["a"]
    out = a.step(Heartbeat("b", a.term + 3, 1), net.now)
    assert a.role is Role.FOLLOWER and a.term == 4 and a.leader_id == "b"
    assert out.persist == HardState(4, None)
    assert not a.is_leader(net.now)


@pytest.mark.parametrize(
    ("msg", "reply_type"),
    [
        (Heartbeat("b", 1, 5), HeartbeatReply),
        (VoteRequest("b", 1), VoteReply),
        (TimeoutNow("b", 1), TimeoutNowReply),
    ],
)
def test_stale_term_request_is_refused_with_current_term(msg: object, reply_type: type) -> None:
    """§5.1: a request from an older term is refused, and the reply tells the term."""
    node = Node(make_config("a", "abc"), HardState(5, None), now=0.0, rng=random.Random(1))
    out = node.step(msg, 10.0)  # type: ignore[arg-type]
    assert isinstance(out.reply, reply_type)
    assert out.reply.term == 5
    assert not getattr(out.reply, "granted", getattr(out.reply, "success", False))
    assert node.term == 5 and out.persist is None and node.role is Role.FOLLOWER


def test_terms_never_decrease_under_random_messages() -> None:
    """§5.1: whatever arrives, a node's term only grows."""
    rng = random.Random(3)
    node = fresh()
    last = 0
    for k in range(3000):
        now = k * 0.05
        term = rng.randint(0, 40)
        sender = rng.choice("bc")
        msg = rng.choice(
            [
                Heartbeat(sender, term, k),
                VoteRequest(sender, term, pre_vote=rng.random() < 0.5),
                VoteReply(sender, term, rng.random() < 0.5, rng.random() < 0.5),
                HeartbeatReply(sender, term, k, rng.random() < 0.5),
                TimeoutNow(sender, term),
            ]
        )
        node.step(msg, now)
        if rng.random() < 0.2:
            node.tick(now)
        assert node.term >= last
        last = node.term


# -- §5.2 votes and elections -----------------------------------------------------


def test_goelect_fault_one_vote_per_term() -> None:
    """§5.2, goelect fault "votedFor is written but never read": one vote per term."""
    node = fresh()
    out = node.step(VoteRequest("b", 1), T)  # T: past the promise of its start
    assert isinstance(out.reply, VoteReply) and out.reply.granted
    # The vote is in the same output as the reply: persisted before it leaves.
    assert out.persist == HardState(1, "b")
    out = node.step(VoteRequest("c", 1), T)
    assert isinstance(out.reply, VoteReply) and not out.reply.granted
    assert node.voted_for == "b"
    # Asking again for the same candidate is answered the same (a retry).
    out = node.step(VoteRequest("b", 1), T)
    assert isinstance(out.reply, VoteReply) and out.reply.granted


def test_vote_survives_restart() -> None:
    """§5.2 and goelect fault "term and vote are not persisted"."""
    net = Net()
    net.now = T  # past the promise of the first start
    net.step("a", VoteRequest("b", 1))
    assert net.stored["a"] == HardState(1, "b")
    net.crash("a")
    node = net.restart("a")
    net.now += 2 * T  # past the restart promise
    out = node.step(VoteRequest("c", 1), net.now)
    assert isinstance(out.reply, VoteReply) and not out.reply.granted


def test_election_timer_is_T_then_the_rank_after_the_silent_leader() -> None:
    """§5.2's timer: never before T (the promise), then a spread that only separates
    candidates. Each voter waits its rank after the leader's place among the sorted
    ids times a gap (half a heartbeat interval), plus a jitter below an eighth of
    one, drawn anew each time: the next voter after the leader fires first, and two
    ranks stay at least a gap less a jitter apart."""
    gap, jitter = HB * RANK_GAP, HB * JITTER
    ids = tuple("abcde")
    for me, rank in {"d": 0, "e": 1, "a": 2, "b": 3}.items():
        node = fresh(me, ids)
        draws = []
        for k in range(400):
            now = float(k * 10)
            node.step(Heartbeat("c", 1, k + 1), now)
            draws.append(node.next_deadline() - now)
        low, high = T + rank * gap, T + rank * gap + jitter
        assert all(low <= d < high for d in draws), me
        assert len(set(draws)) == len(draws)
        assert min(draws) < low + 0.05 * jitter and max(draws) > high - 0.05 * jitter


def test_without_a_leader_the_order_turns_with_the_term() -> None:
    """No leader known (a start, a lost campaign, a vote in a new term): the ranks
    count from the place the term gives, so each term campaigned in puts another
    voter first; their timers started at unrelated instants, so the gap is wider
    (4 H, cut to T / 3 so that the spread stays below T), and only the first two
    ranks have a slot: the third draws in the gap after them."""
    gap, jitter = min(HB * RANK_GAP_NO_LEADER, T / (RANK_SLOTS_NO_LEADER + 1)), HB * JITTER
    assert RANK_SLOTS_NO_LEADER == 2 and gap == pytest.approx(T / 3)
    ids = tuple("abc")
    for term in range(6):
        first, second, third = (ids[(term + k) % 3] for k in range(3))
        for me in ids:
            node = Node(make_config(me, ids), HardState(term), now=0.0, rng=random.Random(3))
            d = node.next_deadline()
            if me == first:
                assert T <= d < T + jitter
            elif me == second:
                assert T + gap <= d < T + gap + jitter
            else:
                assert me == third and T + 2 * gap <= d < T + 3 * gap


def _spreads(
    me: str, ids: tuple[str, ...], leader: str | None, draws: int = 200, **kw: Any
) -> list[float]:
    """``draws`` election timers of ``me`` after a reset, minus the reset time."""
    node = Node(make_config(me, ids, **kw), HardState(1), now=0.0, rng=random.Random(me))
    out = []
    for k in range(draws):
        now = float(k * 10)
        if leader is None:
            node.step(VoteRequest(ids[(ids.index(me) + 1) % len(ids)], k + 2), now)
        else:
            node.step(Heartbeat(leader, 1, k + 1), now)
        assert (node.leader_id is None) == (leader is None)
        out.append(node.next_deadline() - now)
    return out


@pytest.mark.parametrize("voters", [9, 25, 50])
def test_the_spread_is_bounded_whatever_the_number_of_voters(voters: int) -> None:
    """Many voters (up to 50) do not stretch the timer: after a known leader every
    voter fires within T + 2.5 H of its reset (the first four ranks in their slots,
    half a heartbeat interval apart; the rest at random in the half interval after
    them); without one, within 2T (the two first ranks in slots T/3 apart, the
    rest in the third after them). Never before T, the promise."""
    ids = tuple(f"n{k:02d}" for k in range(voters))
    leader = ids[0]
    known = {me: _spreads(me, ids, leader, 60) for me in ids[1:]}
    gap = HB * RANK_GAP
    for rank, me in enumerate(ids[1:]):
        assert all(T <= d < T + 2.5 * HB for d in known[me]), me
        if rank < RANK_SLOTS:
            assert all(T + rank * gap <= d < T + rank * gap + HB * JITTER for d in known[me])
        else:
            assert all(T + RANK_SLOTS * gap <= d for d in known[me])
    tail = [d for me in ids[1 + RANK_SLOTS :] for d in known[me]]
    assert max(tail) - min(tail) > 0.9 * gap  # spread over the gap, not one instant
    for me in ids[:: max(1, voters // 8)]:
        assert all(T <= d < 2 * T for d in _spreads(me, ids, None, 60)), me


def test_the_spread_stays_below_T_at_the_widest_heartbeat() -> None:
    """A heartbeat interval of T / 2 (the widest allowed): the gaps are cut so that
    no timer reaches 2T, with a leader known or not."""
    ids = tuple("abcdefghi")
    for me in ids[1:]:
        for leader in ("a", None):
            draws = _spreads(me, ids, leader, 60, heartbeat_interval=T / 2)
            assert all(T <= d < 2 * T for d in draws), (me, leader)


def test_a_leader_appears_when_the_next_two_voters_died_with_it() -> None:
    """A rack lost: the leader and the next two voters in its order crash at once.
    The third campaigns when its slot comes, two gaps after the first, and wins
    alone: within T + H + H/8 of the last heartbeat (+ one step of the test's
    clock), not one gap per voter of the cluster."""
    net = Net(ids="abcdefghi")
    net.elect("b")
    net.advance(2 * HB)
    last_heartbeat = net.now
    for dead in "bcd":
        net.crash(dead)
    net.advance(2 * T)
    assert net.leaders() == ["e"] and net.nodes["e"].term == 2
    won = next(t.at for i, t in net.transitions if i == "e" and t.role is Role.LEADER)
    assert won <= last_heartbeat + T + 2 * HB * RANK_GAP + HB * JITTER + 0.01
    campaigns = [t for _, t in net.transitions if t.role is Role.CANDIDATE and t.term > 1]
    assert len(campaigns) == 1


def test_the_next_voter_after_a_crashed_leader_wins_at_once() -> None:
    """After the leader's crash its next voter campaigns first, within a jitter of the
    end of its promise, and wins without a split vote."""
    net = Net(ids="abcde")
    net.elect("b")
    net.advance(2 * HB)
    last_heartbeat = net.now
    net.crash("b")
    net.advance(1.5 * T)
    c = net.nodes["c"]
    assert net.leaders() == ["c"] and c.term == 2
    won = next(t.at for i, t in net.transitions if i == "c" and t.role is Role.LEADER)
    assert won <= last_heartbeat + T + HB * JITTER + 0.01  # + one step of advance
    campaigns = [t for _, t in net.transitions if t.role is Role.CANDIDATE and t.term > 1]
    assert len(campaigns) == 1


def test_goelect_fault_candidate_asks_only_in_the_term_it_started() -> None:
    """§5.2: a candidate increments its term, votes for itself, persists, then asks."""
    node = Node(
        make_config("a", "abc", pre_vote=False), HardState(4), now=0.0, rng=random.Random(2)
    )
    out = node.tick(node.next_deadline())
    assert node.role is Role.CANDIDATE and node.term == 5 and node.voted_for == "a"
    assert out.persist == HardState(5, "a")
    assert {to for to, _ in out.messages} == {"b", "c"}
    assert all(isinstance(m, VoteRequest) and m.term == 5 for _, m in out.messages)
    # A vote reply for another term does not count.
    node.step(VoteReply("b", 4, True), node.next_deadline() - 0.5)
    assert node.role is Role.CANDIDATE


def test_majority_of_votes_elects_and_leader_heartbeats_at_once() -> None:
    """§5.2: a majority (self included) elects; the new leader sends heartbeats."""
    net = Net(ids="abcde")
    net.elect("c")
    assert net.leaders() == ["c"]
    assert all(net.nodes[i].leader_id == "c" for i in "abcde")
    assert all(net.nodes[i].term == 1 for i in "abcde")


def test_split_vote_resolves() -> None:
    """§5.2: randomized timeouts make split votes resolve."""
    for seed in range(20):
        net = Net(ids="abcd", seed=seed)
        net.advance(10 * T)
        assert len(net.leaders()) == 1, seed


# -- thesis §9.6 pre-vote ---------------------------------------------------------


def test_pre_vote_changes_no_term() -> None:
    """Thesis §9.6: asking "would you vote for me?" changes no one's term."""
    net = Net()
    a = net.nodes["a"]
    net.now = a.next_deadline()
    out = net.tick("a")
    assert a.role is Role.PRE_CANDIDATE and a.term == 0 and out.persist is None
    assert all(isinstance(m, VoteRequest) and m.pre_vote and m.term == 1 for _, m in out.messages)
    net.cut |= {("b", "a"), ("c", "a")}  # replies lost
    net.deliver()
    assert [net.nodes[i].term for i in "abc"] == [0, 0, 0]


def test_partitioned_node_does_not_inflate_its_term() -> None:
    """Thesis §9.6: an isolated node's timer fires again and again, term unchanged."""
    net = Net()
    net.elect("a")
    net.isolate("c")
    net.advance(20 * T)
    assert net.nodes["c"].term == 1
    assert net.nodes["c"].role is Role.PRE_CANDIDATE


def test_goelect_fault_rejoining_node_does_not_depose_healthy_leader() -> None:
    """Thesis §9.6 + §4.2.3, goelect fault "a rejoining node deposes a healthy leader"."""
    net = Net(ids="abcde")
    net.elect("a")
    net.isolate("e")
    net.advance(15 * T)
    assert net.leaders() == ["a"] and net.nodes["a"].term == 1
    net.heal()
    net.advance(10 * T)
    assert net.leaders() == ["a"] and net.nodes["a"].term == 1
    assert net.nodes["e"].leader_id == "a"


def test_pre_candidate_needs_a_majority_of_pre_votes() -> None:
    net = Net(ids="abcde")
    a = net.nodes["a"]
    net.now = a.next_deadline()
    net.tick("a")
    net.step("a", VoteReply("b", 1, True, pre_vote=True))
    assert a.role is Role.PRE_CANDIDATE
    net.step("a", VoteReply("c", 1, True, pre_vote=True))
    assert a.role is Role.CANDIDATE and a.term == 1


def test_pre_candidate_refused_by_a_majority_is_a_follower_again() -> None:
    """A refused pre-vote carries the voter's own term, the pre-candidate's: it is a no.
    (It used to be ignored, as a reply for another term: the pre-candidate stayed one
    until its timer fired again, and the branch for a lost pre-vote never ran.)"""
    net = Net(ids="abcde")
    net.elect("a")
    e = net.nodes["e"]
    net.isolate("e")
    net.advance(e.next_deadline() - net.now + 0.005)  # its pre-votes are lost
    assert e.role is Role.PRE_CANDIDATE
    net.advance(e.next_deadline() - net.now - 0.005)  # b, c and d still hear a
    net.heal()
    net.now = e.next_deadline()
    assert net.tick("e").persist is None
    net.deliver()  # b, c and d refuse, each with its term (1)
    assert e.role is Role.FOLLOWER and e.term == 1 and e.voted_for == "a"
    lost = [t for i, t in net.transitions if i == "e"][-1]
    assert lost.previous_role is Role.PRE_CANDIDATE and lost.reason == "lost the pre-vote"
    assert net.leaders() == ["a"] and net.nodes["a"].term == 1


def test_pre_vote_refusals_count_only_for_the_pre_candidates_term() -> None:
    node = fresh("a", tuple("abcde"))
    node.tick(node.next_deadline())
    assert node.role is Role.PRE_CANDIDATE and node.term == 0
    now = node.next_deadline() - 0.5
    for voter in "bc":  # granted pre-votes of an earlier round carry term 0: not grants
        node.step(VoteReply(voter, 0, True, pre_vote=True), now)
    assert node.role is Role.PRE_CANDIDATE and node._votes == {"a": True}
    for voter in "bcd":
        node.step(VoteReply(voter, 0, False, pre_vote=True), now)
    assert node.role is Role.FOLLOWER and node.term == 0


def test_a_pre_candidate_that_granted_a_vote_campaigns_only_after_its_promise() -> None:
    """A pre-candidate may still grant its vote to a candidate of its own term (a
    request that was delayed): that vote promises no other for T, its own included.
    A pre-vote majority that arrives meanwhile (replies that were delayed too) does
    not make it a candidate; its timer, reset by the grant, asks again after T."""
    node = fresh("a", tuple("abcde"))
    node.tick(node.next_deadline())
    assert node.role is Role.PRE_CANDIDATE and node.term == 0
    granted_at = node.next_deadline() - 0.5
    out = node.step(VoteRequest("b", 0), granted_at)
    assert isinstance(out.reply, VoteReply) and out.reply.granted
    assert node.role is Role.PRE_CANDIDATE and node.promise_until == granted_at + T
    for voter in "cd":
        node.step(VoteReply(voter, 1, True, pre_vote=True), granted_at + 0.01)
    assert node.role is Role.PRE_CANDIDATE and node.term == 0 and node.voted_for == "b"
    assert node.next_deadline() >= node.promise_until
    node.tick(node.next_deadline())
    for voter in "cd":
        node.step(VoteReply(voter, 1, True, pre_vote=True), node.promise_until + 0.01)
    assert node.role is Role.CANDIDATE and node.term == 1


# -- thesis §4.2.3 / §6.4 stickiness and the follower's promise ----------------------


def test_follower_in_contact_with_leader_refuses_votes_and_pre_votes() -> None:
    """Thesis §4.2.3: a follower that heard from the leader < T ago refuses, term unchanged."""
    net = Net()
    net.elect("a")
    b = net.nodes["b"]
    for msg in (VoteRequest("c", 2), VoteRequest("c", 2, pre_vote=True)):
        out = b.step(msg, net.now + 0.5 * T)
        assert isinstance(out.reply, VoteReply) and not out.reply.granted
        assert b.term == 1 and b.voted_for == "a" and out.persist is None


def test_follower_votes_once_the_leader_has_been_silent_for_T() -> None:
    net = Net()
    net.elect("a")
    b = net.nodes["b"]
    out = b.step(VoteRequest("c", 2, pre_vote=True), net.now + T + 0.01)
    assert isinstance(out.reply, VoteReply) and out.reply.granted and out.reply.term == 2
    out = b.step(VoteRequest("c", 2), net.now + T + 0.02)
    assert isinstance(out.reply, VoteReply) and out.reply.granted and b.term == 2


def test_promise_is_kept_across_a_term_change() -> None:
    """The lease needs the promise to hold even if the follower sees a newer term."""
    net = Net()
    net.elect("a")
    b = net.nodes["b"]
    # A late reply from an old campaign carries a higher term: b follows the term...
    b.step(VoteReply("c", 7, False), net.now + 0.1)
    assert b.term == 7 and b.leader_id is None
    # ...but still grants no vote before T after a's last heartbeat.
    out = b.step(VoteRequest("c", 8), net.now + 0.2)
    assert isinstance(out.reply, VoteReply) and not out.reply.granted and b.voted_for is None
    out = b.step(VoteRequest("c", 8), net.now + T + 0.01)
    assert isinstance(out.reply, VoteReply) and out.reply.granted


def test_restarted_node_keeps_promises_for_T() -> None:
    """A node restarted with term > 0 may have promised a leader: it waits T."""
    node = Node(make_config("b", "abc"), HardState(3, None), now=100.0, rng=random.Random(1))
    out = node.step(VoteRequest("c", 4), 100.0 + 0.9 * T)
    assert isinstance(out.reply, VoteReply) and not out.reply.granted and node.term == 3
    out = node.step(VoteRequest("c", 4), 100.0 + 1.01 * T)
    assert isinstance(out.reply, VoteReply) and out.reply.granted


def test_every_start_keeps_the_promise_even_at_term_0() -> None:
    """Issue 10: a node cannot tell a fresh disk from a lost one, so term 0 waits T too."""
    node = Node(make_config("b", "abc"), HardState(), now=100.0, rng=random.Random(1))
    assert node.promise_until == 100.0 + T
    assert "after its start" in node.start_reason
    for transfer in (False, True):  # not even a transfer's vote: which leader hands over?
        out = node.step(VoteRequest("c", 1, transfer=transfer), 100.0 + 0.99 * T)
        assert isinstance(out.reply, VoteReply) and not out.reply.granted
        assert "after its start" in out.reply.reason
        assert node.term == 0 and node.voted_for is None and out.persist is None
    out = node.step(VoteRequest("c", 1, pre_vote=True), 100.0 + 0.99 * T)
    assert isinstance(out.reply, VoteReply) and not out.reply.granted
    out = node.step(VoteRequest("c", 1), 100.0 + T)
    assert isinstance(out.reply, VoteReply) and out.reply.granted


def test_follower_restarted_on_an_empty_disk_does_not_elect_a_second_leader() -> None:
    """Issue 10: a follower counted in the lease loses its disk (a container without
    a volume) and restarts at term 0: it must not help elect a leader inside the lease."""
    net = Net()
    net.elect("a")
    a, now = net.nodes["a"], net.now
    assert a.is_leader(now)
    net.crash("b")
    net.stored["b"] = HardState()  # the state file is gone
    b = net.restart("b")
    # c, cut off from a, campaigns at once (its pre-vote and vote go to b).
    for pre_vote in (True, False):
        out = b.step(VoteRequest("c", 2, pre_vote=pre_vote), now)
        assert isinstance(out.reply, VoteReply) and not out.reply.granted
    assert b.term == 0 and b.voted_for is None and a.is_leader(now)


# -- thesis §6.2 check quorum -----------------------------------------------------


def test_leader_cut_off_from_majority_steps_down_within_T() -> None:
    """Thesis §6.2: a leader without replies from a majority within T steps down."""
    net = Net(ids="abcde")
    net.elect("a")
    net.advance(3 * T)
    for peer in "bcd":
        net.cut |= {("a", peer), (peer, "a")}
    start = net.now
    net.advance(3 * T)
    stepped = [t for i, t in net.transitions if i == "a" and t.previous_role is Role.LEADER]
    assert stepped and stepped[-1].at - start <= T + 2 * HB + 1e-9
    assert net.nodes["a"].role is not Role.LEADER


def test_leader_with_majority_stays() -> None:
    net = Net(ids="abcde")
    net.elect("a")
    net.cut |= {("a", "d"), ("d", "a"), ("a", "e"), ("e", "a")}
    net.advance(20 * T)
    assert net.leaders() == ["a"] and net.nodes["a"].term == 1


@pytest.mark.parametrize(("reply_delay", "stays"), [(0.5, True), (0.995, False)])
def test_check_quorum_counts_an_ack_by_its_rounds_send_time(
    reply_delay: float, stays: bool
) -> None:
    """Issue 10: replies that keep arriving between T(1 - drift) and T after their
    round was sent give no lease (it counts from the send time); counted by arrival
    they kept the leader from stepping down, and the followers, hearing heartbeats,
    never timed out: a leader nobody could use, for ever."""
    ids = "abc"
    nodes = {i: Node(make_config(i, ids), HardState(), now=0.0, rng=random.Random(i)) for i in ids}
    a = nodes["a"]
    t = a.next_deadline()
    a.tick(t)  # a asks for pre-votes, b grants them and then its vote
    a.step(VoteReply("b", 1, True, pre_vote=True), t)
    out = a.step(VoteReply("b", 1, True), t)
    assert a.role is Role.LEADER and a.is_leader(t)  # the lease of its vote round
    elected = t
    pending: list[tuple[float, HeartbeatReply]] = []
    leader_until, held_lease = elected, False
    while t < elected + 10 * T:
        for to, msg in out.messages:
            reply = nodes[to].step(msg, t).reply  # heartbeats arrive at once...
            assert isinstance(reply, HeartbeatReply)
            pending.append((t + reply_delay * T, reply))  # ...their replies late
        t = round(t + 0.01, 6)
        for i in "bc":
            assert nodes[i].next_deadline() > t, "a follower timed out while a heartbeats"
        out = a.tick(t) if a.role is Role.LEADER and a.next_deadline() <= t else Output()
        for due in [p for p in pending if p[0] <= t]:
            pending.remove(due)
            a.step(due[1], t)
        if a.role is not Role.LEADER:
            break
        # Past the vote round's lease, only a heartbeat round can give one.
        leader_until = t
        held_lease = held_lease or (a.is_leader(t) and t >= elected + T)
    assert held_lease is stays
    if stays:
        assert a.role is Role.LEADER
    else:
        assert a.role is Role.FOLLOWER
        # Past the grace of T, at the first tick once no majority-acked round is
        # younger than T(1 - drift).
        assert leader_until - elected <= T + 2 * HB


# -- thesis §6.4.1 leader lease ---------------------------------------------------


def test_lease_needs_a_majority_ack_and_counts_from_send_time() -> None:
    """The lease runs from the *send* time of the newest majority-acked round."""
    cfg = make_config("a", "abc", pre_vote=False, max_drift=0.05)
    a = Node(cfg, HardState(), now=0.0, rng=random.Random(1))
    a.tick(a.next_deadline())
    t0 = 2.5
    out = a.step(VoteReply("b", 1, True), t0)
    assert a.role is Role.LEADER and not a.is_leader(t0)
    hb = next(m for _, m in out.messages if isinstance(m, Heartbeat))
    # The ack arrives late; the lease still counts from t0, when the round was sent.
    a.step(HeartbeatReply("b", 1, hb.seq, True), t0 + 0.3)
    assert a.lease_until == pytest.approx(t0 + T * 0.95)
    assert a.is_leader(t0 + 0.3) and a.is_leader(t0 + 0.94)
    assert not a.is_leader(t0 + 0.951)


def test_a_granted_vote_promises_no_other_vote_for_T() -> None:
    """A vote carries the promise of a heartbeat's ack: no other vote (nor pre-vote)
    until T after it was granted, on the voter's clock, whatever terms it sees."""
    b = fresh("b")
    r = 2.0 * T
    out = b.step(VoteRequest("a", 1), r)
    assert isinstance(out.reply, VoteReply) and out.reply.granted
    assert b.promise_until == pytest.approx(r + T)
    for msg in (VoteRequest("c", 2, pre_vote=True), VoteRequest("c", 2)):
        out = b.step(msg, r + 0.99 * T)
        assert isinstance(out.reply, VoteReply) and not out.reply.granted
        assert b.term == 1 and b.voted_for == "a" and out.persist is None
    out = b.step(VoteRequest("c", 2), r + T)
    assert isinstance(out.reply, VoteReply) and out.reply.granted and b.voted_for == "c"


def test_the_vote_it_gave_is_given_again_inside_its_promise() -> None:
    """A retried or duplicated request for the vote it already gave is granted again
    (that is no other vote), even inside the promise, even just after a restart."""
    b = fresh("b")
    b.step(VoteRequest("a", 1), 2 * T)
    out = b.step(VoteRequest("a", 1), 2.5 * T)
    assert isinstance(out.reply, VoteReply) and out.reply.granted and out.persist is None
    restarted = Node(b.config, b.hard_state, now=3 * T, rng=random.Random(1))
    out = restarted.step(VoteRequest("a", 1), 3.1 * T)
    assert isinstance(out.reply, VoteReply) and out.reply.granted
    out = restarted.step(VoteRequest("c", 1), 3.1 * T)
    assert isinstance(out.reply, VoteReply) and not out.reply.granted


def test_lease_counts_from_the_send_time_of_the_vote_requests() -> None:
    """The new leader holds a lease as soon as a majority granted its vote: from when
    its vote requests were *sent*, for T(1 - drift), like a heartbeat round's. A vote
    that arrives late shortens the lease; it never lengthens it."""
    cfg = make_config("a", "abcde", pre_vote=False, max_drift=0.05)
    a = Node(cfg, HardState(), now=0.0, rng=random.Random(1))
    sent = a.next_deadline()
    a.tick(sent)
    assert a.role is Role.CANDIDATE
    a.step(VoteReply("b", 1, True), sent + 0.3)
    assert a.role is Role.CANDIDATE  # 2 of 5
    a.step(VoteReply("c", 1, False), sent + 0.3)
    out = a.step(VoteReply("d", 1, True), sent + 0.4)
    assert a.role is Role.LEADER and a.is_leader(sent + 0.4)
    assert a.lease_until == pytest.approx(sent + 0.95 * T)
    assert not a.is_leader(sent + 0.951 * T)
    # Heartbeat rounds extend it as before, from their own send times.
    hb = next(m for _, m in out.messages if isinstance(m, Heartbeat))
    a.step(HeartbeatReply("b", 1, hb.seq, True), sent + 0.5)
    assert a.lease_until == pytest.approx(sent + 0.95 * T)  # one ack of 4 others
    a.step(HeartbeatReply("e", 1, hb.seq, True), sent + 0.5)
    assert a.lease_until == pytest.approx(sent + 0.4 + 0.95 * T)


def test_a_vote_round_older_than_the_lease_gives_none() -> None:
    cfg = make_config("a", "abc", pre_vote=False)
    a = Node(cfg, HardState(), now=0.0, rng=random.Random(1))
    sent = a.next_deadline()
    a.tick(sent)
    a.step(VoteReply("b", 1, True), sent + T)
    assert a.role is Role.LEADER and not a.is_leader(sent + T)


def test_only_granted_votes_of_the_round_count_for_its_lease() -> None:
    """Round 0 stands for the vote round in the leader's count; a heartbeat reply
    that names round 0 (no heartbeat has it) is no vote."""
    cfg = make_config("a", "abcde", pre_vote=False)
    a = Node(cfg, HardState(), now=0.0, rng=random.Random(1))
    sent = a.next_deadline()
    a.tick(sent)
    a.step(VoteReply("b", 1, True), sent + 0.01)
    a.step(VoteReply("c", 1, True), sent + 0.01)
    assert a.role is Role.LEADER and a.lease_until == pytest.approx(sent + 0.99 * T)
    a.lease_until = 0.0  # as if it had run out: only a new majority may renew it
    for voter in "de":
        a.step(HeartbeatReply(voter, 1, 0, True), sent + 0.02)
    assert a.lease_until == 0.0


def test_lease_expires_without_any_input() -> None:
    """A leader paused (GC, SIGSTOP) past its lease is not leader when it wakes."""
    net = Net()
    net.elect("a")
    a = net.nodes["a"]
    assert a.is_leader(net.now)
    assert a.role is Role.LEADER and not a.is_leader(net.now + T)


def test_observer_acks_do_not_make_a_lease() -> None:
    net = Net(ids="abo", observers="o")
    net.crash("b")
    a = net.nodes["a"]
    net.now = a.next_deadline()
    net.tick("a")
    net.deliver()
    assert a.role is Role.PRE_CANDIDATE and not a.is_leader(net.now)


def test_duplicate_old_ack_does_not_extend_the_lease() -> None:
    net = Net()
    net.elect("a")
    a = net.nodes["a"]
    lease = a.lease_until
    a.step(HeartbeatReply("b", 1, 1, True), net.now + 0.5)
    a.step(HeartbeatReply("c", 1, 1, True), net.now + 0.5)
    assert a.lease_until == lease


# -- thesis §3.10 leadership transfer -----------------------------------------------


def test_goelect_fault_transfer_hands_over_in_one_round_trip() -> None:
    """Thesis §3.10, goelect fault "no stop, resign or hand-over"."""
    net = Net(ids="abcde")
    net.elect("a")
    net.advance(2 * HB)
    a = net.nodes["a"]
    out = net.handle("a", a.transfer_leadership(net.now, "c"))
    assert a.role is Role.FOLLOWER and not a.is_leader(net.now) and a.lease_until == 0.0
    assert out.messages == [("c", TimeoutNow("a", 1, a.config.voter_set_fingerprint))]
    c = net.nodes["c"]
    while c.role is not Role.LEADER:  # TimeoutNow, c's vote requests, the votes
        _, dst, msg = net.queue.popleft()
        net.step(dst, msg)
    # No time passed (the followers are all sticky to a), no heartbeat was answered:
    # c leads with the lease of its vote round.
    assert net.leaders() == ["c"] and c.term == 2 and c.is_leader(net.now)
    assert not any(isinstance(m, HeartbeatReply) and dst == "c" for _, dst, m in net.sent)


def test_transfer_picks_a_voter_when_not_told() -> None:
    net = Net(ids="abco", observers="o")
    net.elect("a")
    net.advance(2 * HB)
    net.handle("a", net.nodes["a"].transfer_leadership(net.now))
    net.deliver()
    assert net.leaders()[0] in "bc"


def test_transfer_errors() -> None:
    net = Net(ids="abco", observers="o")
    with pytest.raises(NotLeaderError):
        net.nodes["a"].transfer_leadership(0.0)
    net.elect("a")
    for bad in ("a", "o", "zz"):
        with pytest.raises(TransferError):
            net.nodes["a"].transfer_leadership(net.now, bad)
    solo = Node(make_config("a", "a"), HardState(), now=0.0, rng=random.Random(1))
    solo.tick(solo.next_deadline())
    assert solo.role is Role.LEADER
    with pytest.raises(TransferError):
        solo.transfer_leadership(5.0)


def test_timeout_now_only_from_the_current_leader() -> None:
    net = Net()
    net.elect("a")
    b = net.nodes["b"]
    out = b.step(TimeoutNow("c", 1), net.now)
    assert isinstance(out.reply, TimeoutNowReply) and not out.reply.accepted
    assert b.role is Role.FOLLOWER and b.term == 1


def test_transfer_campaign_still_needs_a_free_vote() -> None:
    """A transfer bypasses stickiness, never the one-vote-per-term rule."""
    node = fresh("b")
    out = node.step(VoteRequest("a", 3, transfer=True), T)
    assert isinstance(out.reply, VoteReply) and out.reply.granted
    out = node.step(VoteRequest("c", 3, transfer=True), T)
    assert isinstance(out.reply, VoteReply) and not out.reply.granted


# -- no-vote nodes -----------------------------------------------------------------


def test_observer_follows_never_votes_never_campaigns() -> None:
    net = Net(ids="abo", observers="o")
    o = net.nodes["o"]
    assert o.role is Role.OBSERVER and o.next_deadline() == math.inf
    out = o.step(VoteRequest("a", 1), 0.0)
    assert isinstance(out.reply, VoteReply) and not out.reply.granted and o.voted_for is None
    net.elect("a")
    assert o.role is Role.OBSERVER and o.leader_id == "a" and o.term == 1
    net.advance(30 * T)
    assert o.role is Role.OBSERVER


def test_vote_request_from_an_observer_is_refused() -> None:
    node = fresh("a", ("a", "b", "o"), observers=("o",))
    out = node.step(VoteRequest("o", 1), 0.0)
    assert isinstance(out.reply, VoteReply) and not out.reply.granted


def test_message_from_a_stranger_changes_nothing() -> None:
    node = fresh()
    out = node.step(Heartbeat("mallory", 99, 1), 0.0)
    assert node.term == 0 and node.leader_id is None and out.persist is None
    assert isinstance(out.reply, HeartbeatReply) and not out.reply.success


# -- quorum and configuration -------------------------------------------------------


def test_goelect_fault_quorum_counts_self_even_when_not_listed() -> None:
    """goelect counts only the listed peers; the quorum here is over all voters."""
    peers = tuple(Peer(i, f"http://{i}") for i in "bcd")
    cfg = Config("a", peers, address="http://a", elect_timeout=T, heartbeat_interval=HB)
    assert cfg.voters == {"a", "b", "c", "d"} and cfg.quorum == 3
    assert Config("a", peers[:2], elect_timeout=T, heartbeat_interval=HB).quorum == 2


def test_four_voters_need_three() -> None:
    net = Net(ids="abcd")
    net.crash("c")
    net.crash("d")
    net.advance(10 * T)
    assert net.leaders() == []


@pytest.mark.parametrize(
    ("kwargs", "fragment", "field"),
    [
        ({"peers": (Peer("b"), Peer("b"))}, "listed twice", "peers"),
        ({"heartbeat_interval": 0.6}, "at most half", "heartbeat_interval"),
        ({"elect_timeout": 0}, "elect_timeout", "elect_timeout"),
        ({"heartbeat_interval": -1}, "heartbeat_interval", "heartbeat_interval"),
        ({"max_drift": 0.7}, "max_drift", "max_drift"),
        ({"max_drift": float("nan")}, "max_drift", "max_drift"),
        ({"peers": (Peer("a", "http://x"),), "address": "http://y"}, "two addresses", "address"),
        ({"peers": (Peer("a", novote=True),)}, "make them agree", "novote"),
        ({"peers": (Peer("b bad"),)}, "invalid", "peers"),
        ({"tags": {"zone": 1}}, "tags", "tags"),
        ({"novote": True}, "no voters", "novote"),
    ],
)
def test_config_errors_say_what_to_fix(
    kwargs: dict[str, object], fragment: str, field: str
) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        Config("a", **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_config_error_names_its_field_only_when_there_is_one() -> None:
    with pytest.raises(ConfigError) as info:
        Config("bad id!")
    assert info.value.field == "node_id"
    assert ConfigError("the whole config").field is None


# -- the voter set every request states (issue 10) --------------------------------------


def test_voter_set_fingerprint_depends_on_who_votes_only() -> None:
    abc = make_config("a", "abc").voter_set_fingerprint
    assert abc.startswith("3:") and len(abc) == 2 + 16
    assert make_config("b", "cba").voter_set_fingerprint == abc  # order, and which node
    assert make_config("a", "abco", observers="o").voter_set_fingerprint == abc
    moved = Config("a", (Peer("a", "http://x"), Peer("b", "http://y", tags={"z": "1"}), Peer("c")))
    assert moved.voter_set_fingerprint == abc  # addresses and tags are not votes
    assert make_config("a", "abcd").voter_set_fingerprint.startswith("4:")
    assert make_config("a", "abc", observers="c").voter_set_fingerprint != abc


def _mirror(node: Node) -> tuple[object, ...]:
    return (
        node.term,
        node.voted_for,
        node.role,
        node.leader_id,
        node.promise_until,
        node.next_deadline(),
        dict(node.last_contact),
        node.hard_state,
    )


@pytest.mark.parametrize(
    "msg",
    [
        VoteRequest("c", 5),
        VoteRequest("c", 5, pre_vote=True),
        VoteRequest("c", 5, transfer=True),
        Heartbeat("c", 5, 1),
        TimeoutNow("c", 1),
    ],
    ids=lambda m: type(m).__name__ + ("-pre" if getattr(m, "pre_vote", False) else ""),
)
def test_request_of_another_voter_set_is_refused_and_changes_nothing(msg: object) -> None:
    """Issue 10: nodes that count different majorities must not count each other."""
    net = Net()
    net.elect("a")
    net.advance(2 * T)
    b = net.nodes["b"]
    five = make_config("c", "abcde").voter_set_fingerprint
    before = _mirror(b)
    with pytest.raises(VoterSetMismatch) as info:
        b.step(dataclasses.replace(msg, voter_set=five), net.now + 3 * T)  # type: ignore[type-var]
    assert _mirror(b) == before
    assert (info.value.sender, info.value.theirs) == ("c", five)
    assert info.value.ours == b.config.voter_set_fingerprint
    assert "5 voters" in str(info.value) and "3 voters" in str(info.value)
    assert "docs/membership.md" in str(info.value)


def test_every_request_states_the_voter_set_and_one_that_does_not_is_not_checked() -> None:
    net = Net(ids="abcde")
    net.elect("a")
    net.advance(2 * T)
    net.nodes["a"].transfer_leadership(net.now, "b")
    fingerprint = net.nodes["a"].config.voter_set_fingerprint
    requests = [m for _, _, m in net.sent if isinstance(m, (VoteRequest, Heartbeat, TimeoutNow))]
    assert {type(m) for m in requests} == {VoteRequest, Heartbeat}
    assert {m.voter_set for m in requests} == {fingerprint}
    # A sender of an earlier version (or a tool) states none: it is answered.
    out = net.nodes["c"].step(Heartbeat("a", 1, 99), net.now)
    assert isinstance(out.reply, HeartbeatReply) and out.reply.success


def test_a_node_left_on_the_old_voter_list_wins_no_vote_from_the_new_one() -> None:
    """A change from 3 to 5 voters half done: n1 still lists n1-n3 (quorum 2). Were
    n2's vote counted, n1 would lead while n3-n5 elect another leader in the term."""
    old = make_config("n1", ["n1", "n2", "n3"])
    new = make_config("n2", [f"n{i}" for i in range(1, 6)])
    n1 = Node(old, HardState(4, None), now=0.0, rng=random.Random(1))
    n2 = Node(new, HardState(4, None), now=0.0, rng=random.Random(2))
    out = n1.tick(n1.next_deadline())
    requests = [m for to, m in out.messages if to == "n2"]
    assert requests and all(m.voter_set == old.voter_set_fingerprint for m in requests)
    with pytest.raises(VoterSetMismatch):
        n2.step(requests[0], 5 * T)
    assert n2.term == 4 and n2.voted_for is None


# -- resuming in another process of the same node (issue 10) ------------------------------


def _record(node: Node) -> Resume:
    """The snapshot a process publishes, as the next process of its node reads it."""
    return Resume(node.term, node.leader, node.lease_until)


def test_resume_as_the_leader_it_was_keeps_term_lease_and_heartbeats_at_once() -> None:
    net = Net()
    net.elect("a")
    net.advance(3 * HB)
    a = net.nodes["a"]
    record, lease = _record(a), a.lease_until
    net.crash("a")
    net.now += 0.02  # the next process takes over from the same state file
    cfg = net.config("a")
    a2 = Node(cfg, net.stored["a"], now=net.now, rng=random.Random(3), resume=record)
    net.nodes["a"] = a2
    net.crashed.discard("a")
    assert a2.role is Role.LEADER and a2.term == 1 and a2.leader == a.leader
    assert a2.lease_until == lease and a2.is_leader(net.now)
    assert "resumed as leader of term 1" in a2.start_reason
    assert a2.next_deadline() == net.now  # heartbeats at the first tick
    out = net.tick("a")
    assert sorted(to for to, m in out.messages if isinstance(m, Heartbeat)) == ["b", "c"]
    net.deliver()
    assert a2.lease_until > lease  # the followers ack it as their leader of term 1
    net.advance(5 * T)
    assert net.leaders() == ["a"] and a2.term == 1 and a2.is_leader(net.now)


def test_resumed_lease_is_capped_and_check_quorum_gives_T_of_grace() -> None:
    cfg = make_config("a", "abc")
    state = HardState(7, "a")
    record = Resume(7, LeaderInfo("a", "http://a", {}), lease_until=100.0 + 5 * T)
    a = Node(cfg, state, now=100.0, rng=random.Random(1), resume=record)
    assert a.lease_until == pytest.approx(100.0 + T * (1 - cfg.max_drift))
    a.tick(100.0)
    a.tick(100.0 + 0.95 * T)  # nobody answers, but the grace runs from the resume
    assert a.role is Role.LEADER
    a.tick(100.0 + T + HB)
    assert a.role is Role.FOLLOWER and not a.is_leader(100.0 + T + HB)


@pytest.mark.parametrize(
    ("state", "words"),
    [
        (HardState(8, "c"), "the state file is in term 8"),  # died after persisting
        (HardState(7, "b"), "voted for b"),
        (HardState(7, None), "voted for None"),
    ],
)
def test_no_leadership_is_resumed_that_the_state_file_does_not_back(
    state: HardState, words: str
) -> None:
    """Newer on disk than in the record: the old process voted or campaigned after
    publishing it. Same term but no vote for itself: it did not win that term."""
    record = Resume(7, LeaderInfo("a", "http://a", {}), lease_until=100.0 + 0.5 * T)
    a = Node(make_config("a", "abc"), state, now=100.0, rng=random.Random(1), resume=record)
    assert a.role is Role.FOLLOWER and a.leader_id is None and not a.is_leader(100.0)
    assert (a.term, a.voted_for) == (state.term, state.voted_for)
    assert words in a.start_reason and "not resumed" in a.start_reason


def test_follower_resumes_knowing_its_leader_and_keeps_the_start_promise() -> None:
    leader = LeaderInfo("a", "http://a", {"zone": "z1"})
    b = Node(
        make_config("b", "abc"),
        HardState(7, "a"),
        now=100.0,
        rng=random.Random(1),
        resume=Resume(7, leader),
    )
    assert b.role is Role.FOLLOWER and b.leader == leader and b.term == 7
    assert "resumed following leader a" in b.start_reason
    assert b.promise_until == 100.0 + T
    out = b.step(VoteRequest("c", 8), 100.0 + 0.5 * T)
    assert isinstance(out.reply, VoteReply) and not out.reply.granted
    stale = Node(
        make_config("b", "abc"), HardState(8, None), now=0.0, rng=random.Random(1),
        resume=Resume(7, leader),
    )  # fmt: skip
    assert stale.leader_id is None and stale.term == 8


def test_a_handed_off_follower_keeps_the_promise_it_made_not_a_fresh_one() -> None:
    """The previous process stopped between two steps and left the end of its
    promise in its record: the next one keeps that promise, exactly, instead of a
    fresh T (a node whose elector moves more often than every T would otherwise
    never vote). A carried promise is never longer than one made now."""
    leader = LeaderInfo("a", "http://a", {})
    cfg = make_config("b", "abc")
    b = Node(
        cfg,
        HardState(7, "a"),
        now=100.0,
        rng=random.Random(1),
        resume=Resume(7, leader, promise_until=100.0 + 0.25 * T, started_until=90.0),
    )
    assert b.promise_until == 100.0 + 0.25 * T and b.started_until == 90.0
    assert f"keeps the previous process's promise ({0.25 * T:.3f}s left)" in b.start_reason
    assert "grants no vote until" not in b.start_reason
    refused = b.step(VoteRequest("c", 8), 100.0 + 0.2 * T)
    assert isinstance(refused.reply, VoteReply) and not refused.reply.granted
    granted = b.step(VoteRequest("c", 8), 100.0 + 0.3 * T)
    assert isinstance(granted.reply, VoteReply) and granted.reply.granted
    capped = Node(
        cfg, HardState(7, "a"), now=100.0, rng=random.Random(1),
        resume=Resume(7, leader, promise_until=100.0 + 5 * T),
    )  # fmt: skip
    assert capped.promise_until == 100.0 + T
    # A record of another term is not this node's last step: the promise of a start.
    stale = Node(
        cfg, HardState(8, None), now=100.0, rng=random.Random(1),
        resume=Resume(7, leader, promise_until=100.0),
    )  # fmt: skip
    assert stale.promise_until == 100.0 + T
    # The previous process had started less than T before: its start's guard goes
    # on (no vote at all, not even a transfer's: the node may have lost its disk).
    young = Node(
        cfg, HardState(7, "a"), now=100.0, rng=random.Random(1),
        resume=Resume(7, leader, promise_until=100.0, started_until=100.0 + 0.5 * T),
    )  # fmt: skip
    assert young.started_until == 100.0 + 0.5 * T
    transfer = VoteRequest("c", 8, transfer=True)
    early = young.step(transfer, 100.0 + 0.4 * T)
    assert isinstance(early.reply, VoteReply) and not early.reply.granted
    later = young.step(transfer, 100.0 + 0.6 * T)
    assert isinstance(later.reply, VoteReply) and later.reply.granted
    # A guard not carried (an older record): the guard of this start.
    unknown = Node(
        cfg, HardState(7, "a"), now=100.0, rng=random.Random(1),
        resume=Resume(7, leader, promise_until=100.0),
    )  # fmt: skip
    assert unknown.started_until == 100.0 + T


@pytest.mark.parametrize("handoff", [False, True], ids=["no-handoff", "handoff"])
def test_a_hand_off_inside_a_start_s_first_T_keeps_its_guard(handoff: bool) -> None:
    """A follower counted in the lease loses its disk and restarts; 0.05 T later its
    elector moves to another worker (a graceful hand-off). A stale TimeoutNow then
    makes another node campaign by transfer: the follower must still refuse it (the
    guard of its start), or that term gets two leaders. Found by a review: the first
    carrying of the promise dropped the guard."""
    net = Net()
    net.elect("a")  # term 1
    net.advance(0.5 * T)
    a = net.nodes["a"]
    # a hands leadership to c; its TimeoutNow to c is held up (a listen queue).
    out = a.transfer_leadership(net.now, "c")
    stale = [m for to, m in out.messages if to == "c" and isinstance(m, TimeoutNow)][0]
    net.handle("a", out)
    net.queue.clear()
    net.crashed.add("c")  # c is paused (SIGSTOP, a VM pause): no timer, no delivery
    net.advance(5 * T)
    (leader,) = net.leaders()
    follower = "b" if leader == "a" else "a"
    assert net.nodes[leader].term == 2 and net.nodes["c"].term == 1
    net.crash(follower)
    net.stored[follower] = HardState()
    first = net.restart(follower)
    net.cut |= {(leader, follower)}  # the leader's heartbeats have not reached it yet
    handoff_at = net.now + 0.05 * T
    carried = Resume(
        first.term,
        first.leader,
        promise_until=first.promise_until,
        started_until=first.started_until,
    )
    if handoff:
        net.nodes[follower] = Node(
            net.config(follower),
            net.stored[follower],
            now=handoff_at,
            rng=random.Random(3),
            resume=carried,
        )
    net.now = handoff_at
    net.crashed.discard("c")
    net.cut |= {("c", leader), (leader, "c")}
    net.step("c", stale)
    net.deliver()
    leading = [i for i in net.ids if net.nodes[i].is_leader(net.now)]
    assert len(leading) <= 1, f"two leaders hold leases at once: {leading}"


# -- who leads ---------------------------------------------------------------------------


def test_followers_know_leader_address_and_tags() -> None:
    peers = (Peer("a", "http://a:1", tags={"zone": "z1"}), Peer("b", "http://b:1"))
    a = Node(
        Config("a", peers, tags={"zone": "z1"}, pre_vote=False),
        HardState(),
        now=0.0,
        rng=random.Random(1),
    )
    b = Node(Config("b", peers), HardState(), now=0.0, rng=random.Random(2))
    out = a.tick(a.next_deadline())
    vote = b.step(out.messages[0][1], 5.0).reply
    assert vote is not None
    out = a.step(vote, 5.0)
    hb = out.messages[0][1]
    b.step(hb, 5.0)
    leader = b.leader
    assert leader is not None
    assert (leader.id, leader.address, dict(leader.tags)) == ("a", "http://a:1", {"zone": "z1"})
    assert a.leader is not None and a.leader.id == "a"


def test_transitions_report_role_and_leader_changes() -> None:
    net = Net()
    net.elect("a")
    roles = [(i, t.role, t.leader_id) for i, t in net.transitions]
    assert ("a", Role.LEADER, "a") in roles
    assert ("b", Role.FOLLOWER, "a") in roles
    assert all(t.term >= 0 and t.reason for _, t in net.transitions)
