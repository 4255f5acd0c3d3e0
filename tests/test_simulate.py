"""The simulator: a clean core passes thousands of schedules; broken cores are caught.

A checker that cannot fail proves nothing, so each deliberately broken core
below must be caught, with the kind of violation its bug leads to. The margin
bugs (a lease or a promise a few percent off) open windows of milliseconds that
random schedules rarely hit: the checker must see them by checking the lease
against the promises at every step, within a few schedules.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flask_goelect import simulate
from flask_goelect.core import Config, HardState, Node, Resume, Role
from flask_goelect.messages import Heartbeat, HeartbeatReply, Request, VoteRequest
from flask_goelect.simulate import SimConfig, Simulation, run_schedules

# CI runs the full count; a developer may lower it locally.
CI_SCHEDULES = int(os.environ.get("GOELECT_SIM_SCHEDULES", "2000"))


class IgnoresVotedFor(Node):
    """goelect's fault: votes for every candidate whose term is not behind."""

    def _can_grant(self, candidate: str) -> bool:
        return True


class LeaseFromReceiveTime(Node):
    """Counts the lease from when the ack arrived instead of when the round was sent."""

    def _lease_base(self, seq: int, sent: float) -> float:
        return self._now


class NoPreVote(Node):
    """Campaigns straight away, raising its term on every timeout."""

    def _campaign(self, *, transfer: bool) -> None:
        if self._voter:
            self._become_candidate(transfer=transfer)


class NotPersisted(Node):
    """Never asks for its term and vote to be saved."""

    def _end(self) -> Any:
        out = super()._end()
        out.persist = None
        return out


class NoStickiness(Node):
    """Votes even while it hears from a live leader."""

    def _in_lease(self, now: float) -> bool:
        return self.role is Role.LEADER


class ForgetsPromiseOnRestart(Node):
    """A restarted node votes at once, forgetting what it promised before the crash."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._promise_until = self._started_until = kwargs["now"]


class TransferKeepsLease(Node):
    """Sends TimeoutNow but goes on leading with its lease."""

    def transfer_leadership(self, now: float, to: str | None = None) -> Any:
        lease = self.lease_until
        out = super().transfer_leadership(now, to)
        self.role, self.leader_id, self.lease_until = Role.LEADER, self.id, lease
        self._heartbeat_due = now
        return out


class _ListedPeersConfig(Config):
    @property
    def quorum(self) -> int:
        return (len(self.voters) - 1) // 2 + 1


def quorum_of_listed_peers(
    config: Config,
    state: HardState,
    *,
    now: float,
    rng: random.Random,
    resume: Resume | None = None,
) -> Node:
    """goelect's fault: the quorum counts only the listed peers, not the node itself."""
    config = _ListedPeersConfig(
        config.node_id,
        config.peers,
        novote=config.novote,
        elect_timeout=config.elect_timeout,
        heartbeat_interval=config.heartbeat_interval,
        max_drift=config.max_drift,
    )
    return Node(config, state, now=now, rng=rng, resume=resume)


class IgnoresVoterSet(Node):
    """Counts requests from nodes configured with another voter set."""

    def _check_voter_set(self, msg: Request) -> None:
        pass


# -- margin bugs: each is a few percent or one round off, nothing an accident shows


class LeaseThreePercentLong(Node):
    """The lease runs 3 % past ``T × (1 − drift)``."""

    def _update_lease(self) -> None:
        before = self.lease_until
        super()._update_lease()
        if self.lease_until != before:
            self.lease_until += 0.03 * self._lease_span


class PromiseThreePercentShort(Node):
    """A follower promises ``0.97 T`` after a heartbeat instead of ``T``."""

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        before = self._promise_until
        super()._on_heartbeat(msg)
        self._promise_until = max(before, self._now + 0.97 * self._T)


class LeaseIgnoresDrift(Node):
    """The lease is ``T`` after the round's send time: the drift bound is forgotten."""

    def _lease_base(self, seq: int, sent: float) -> float:
        return sent + self._T * self.config.max_drift


class AckCountedForNewestRound(Node):
    """An ack of an older round is counted as an ack of the newest round sent."""

    def _on_heartbeat_reply(self, msg: HeartbeatReply) -> None:
        if msg.success and msg.seq < self._seq:
            msg = HeartbeatReply(msg.sender, msg.term, self._seq, True)
        super()._on_heartbeat_reply(msg)


class PromiseFromPreviousHeartbeat(Node):
    """A follower's promise counts from the heartbeat before the one it acks."""

    _previous: float | None = None

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        before, previous = self._promise_until, self._previous
        super()._on_heartbeat(msg)
        self._previous = self._now
        self._promise_until = max(before, (self._now if previous is None else previous) + self._T)


class VoteLeaseFromReplyArrival(Node):
    """The lease of the vote round counts from when the deciding vote arrived, not from
    when the vote requests were sent: a round trip too long."""

    def _lease_base(self, seq: int, sent: float) -> float:
        return self._now if seq == 0 else sent


class VotePromisesNothing(Node):
    """The lease counts from the vote round, but a granted vote promises nothing."""

    def _on_vote_request(self, msg: VoteRequest) -> None:
        before = self._promise_until
        super()._on_vote_request(msg)
        self._promise_until = before


class ResumedPromiseThreePercentShort(Node):
    """The promise carried from the previous process of the node ends 3 % of ``T``
    early."""

    def _resume(self, state: HardState, resume: Resume) -> str:
        text = super()._resume(state, resume)
        if resume.promise_until is not None and self._started_until <= self._now:
            self._promise_until -= 0.03 * self._T
        return text


MARGIN_BUGS = [
    LeaseThreePercentLong,
    PromiseThreePercentShort,
    LeaseIgnoresDrift,
    AckCountedForNewestRound,
    PromiseFromPreviousHeartbeat,
    VoteLeaseFromReplyArrival,
    VotePromisesNothing,
    ResumedPromiseThreePercentShort,
]


# -- resuming in another process of the node, broken


class ResumeIgnoresTerm(Node):
    """Resumes leadership from its record even when the state file moved on to a newer
    term (the old process voted or stepped down after it published the record)."""

    def _resume(self, state: HardState, resume: Resume) -> str:
        if resume.leader is not None and resume.leader.id == self.id:
            self.role, self.leader_id = Role.LEADER, self.id
            self._start_leading(self._now, min(resume.lease_until, self._now + self._lease_span))
            self._heartbeat_due = self._now
            return "resumed as leader, whatever the state file says"
        return super()._resume(state, resume)


class ResumeTakesAFreshLease(Node):
    """A resumed leader takes a full lease from the moment it resumes."""

    def _resume(self, state: HardState, resume: Resume) -> str:
        text = super()._resume(state, resume)
        if self.role is Role.LEADER:
            self.lease_until = self._now + self._lease_span
        return text


def _name(value: object) -> str:
    return getattr(value, "__name__", "") if callable(value) else ""


@pytest.mark.parametrize(
    ("factory", "sim", "expected"),
    [
        (IgnoresVotedFor, SimConfig(), {"double-vote", "two-leaders"}),
        (LeaseFromReceiveTime, SimConfig(), {"lease-margin"}),
        (NoPreVote, SimConfig(), {"disruption"}),
        (NotPersisted, SimConfig(), {"term-regression", "double-vote"}),
        (NoStickiness, SimConfig(), {"promise-broken"}),
        (ForgetsPromiseOnRestart, SimConfig(nodes=3, observers=0), {"lease-margin"}),
        (TransferKeepsLease, SimConfig(), {"lease-overlap", "two-leaders"}),
        (quorum_of_listed_peers, SimConfig(nodes=4), {"lease-margin"}),
        (ResumeIgnoresTerm, SimConfig(), {"two-leaders", "lease-margin", "lease-overlap"}),
        (ResumeTakesAFreshLease, SimConfig(), {"lease-margin"}),
        (
            IgnoresVoterSet,
            SimConfig(nodes=5, stale_nodes=1, stale_voters=3),
            {"two-leaders", "lease-overlap"},
        ),
    ],
    ids=_name,
)
def test_broken_core_is_caught(factory: Any, sim: SimConfig, expected: set[str]) -> None:
    summary = run_schedules(sim, 400, seed=1, node_factory=factory, stop_on_violation=True)
    assert summary.failed, f"{factory.__name__} survived {summary.schedules} schedules"
    kind = summary.failed[0].violations[0][0]
    assert kind in expected


@pytest.mark.parametrize("factory", MARGIN_BUGS, ids=_name)
def test_margin_bug_is_caught_within_50_schedules(factory: Any) -> None:
    """The checker proves the lease-promise inequality at every step: a lease or a
    promise a few percent off is caught at the first lease, not by luck."""
    summary = run_schedules(SimConfig(), 50, seed=1, node_factory=factory, stop_on_violation=True)
    assert summary.failed, f"{factory.__name__} survived 50 schedules"
    assert summary.schedules <= 50
    assert summary.failed[0].violations[0][0] == "lease-margin"


class _AccidentsOnly(Simulation):
    """The checker without the margin check: it sees an overlap only if one occurs."""

    def _check_margin(self, i: int, node: Node) -> None:
        pass


@pytest.mark.parametrize("factory", [LeaseThreePercentLong, LeaseIgnoresDrift], ids=_name)
def test_boundary_schedules_turn_a_margin_bug_into_an_accident(factory: Any) -> None:
    """At the edge (no delay, extreme rates, the earliest timers, the leader cut off
    right after a renewal) the overlap itself happens: the margin is real."""
    sim = SimConfig(boundary=1.0)
    seeds = (_AccidentsOnly(sim, seed, node_factory=factory).run() for seed in range(1, 101))
    caught = next((r for r in seeds if r.violations), None)
    assert caught is not None and caught.boundary
    assert caught.violations[0][0] == "lease-overlap"


# -- a voter set changed on some nodes only ----------------------------------------------


def test_a_node_left_on_the_old_voter_list_cannot_elect_a_second_leader() -> None:
    """A change from 3 to 5 voters with one node still on the old list: it would win
    with one vote from the new list while the rest elect another leader in the term
    (IgnoresVoterSet, above). Refusing requests of another voter set, none does."""
    sim = SimConfig(nodes=5, stale_nodes=1, stale_voters=3)
    summary = run_schedules(sim, 60, seed=1)
    assert not summary.failed, summary.failed[0].violations
    assert summary.refused > 0 and summary.elections > 60


def test_the_check_cannot_save_a_change_of_two_voters_at_once() -> None:
    """Its limit, and why docs/membership.md changes one voter at a time: n1 and n2 are
    a majority of the old list (n1-n3), n3-n5 one of the new (n1-n5). Each side
    agrees with itself, so nothing is refused, and each elects a leader."""
    sim = SimConfig(nodes=5, stale_nodes=2, stale_voters=3)
    summary = run_schedules(sim, 20, seed=1, stop_on_violation=True)
    assert summary.failed
    assert summary.failed[0].violations[0][0] in {"two-leaders", "lease-overlap"}


@pytest.mark.parametrize("stale", [1, 2, 3])
def test_one_voter_added_at_a_time_is_safe_at_every_step(stale: int) -> None:
    """From 3 voters to 4, with 1, 2 or 3 nodes still on the old list: no two leaders,
    no two leases. (The old and the new majorities always overlap. The nodes on
    each list count only each other meanwhile, so the cluster tolerates fewer
    losses until the change is done: a rejoin may depose a leader.)"""
    sim = SimConfig(nodes=4, observers=0, stale_nodes=stale, stale_voters=3)
    summary = run_schedules(sim, 30, seed=1)
    assert set(summary.violations) <= {"disruption"}, summary.failed[0].violations


def test_violation_replays_exactly_from_its_seed() -> None:
    summary = run_schedules(SimConfig(), 100, node_factory=IgnoresVotedFor, stop_on_violation=True)
    first = summary.failed[0]
    again = Simulation(SimConfig(), first.seed, node_factory=IgnoresVotedFor).run()
    assert again.violations == first.violations
    assert again.trace == first.trace and again.trace


def test_clean_core_small_run_all_fault_kinds_one_at_a_time() -> None:
    for fault in simulate.FAULTS:
        summary = run_schedules(SimConfig(faults=frozenset({fault})), 5, seed=11)
        assert not summary.failed, (fault, summary.failed[0].violations)
        assert summary.elections >= 5
    handoffs = run_schedules(SimConfig(faults=frozenset({"handoff"})), 10, seed=11)
    assert handoffs.handoffs >= 10 and not handoffs.failed


class TimerBeforePromise(Node):
    """The election timer counts 0.97 T, not T, before its spread: a node may campaign
    (vote for itself) before the end of the promise it gave with its last ack."""

    def _reset_election_timer(self, now: float) -> None:
        self._election_deadline = now + 0.97 * self._T + self._timer_spread()


class WithoutPreVote(Node):
    """A clean core configured without pre-vote (``Config(pre_vote=False)``)."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(dataclasses.replace(config, pre_vote=False), *args, **kwargs)


class TimerBeforePromiseWithoutPreVote(TimerBeforePromise, WithoutPreVote):
    """The short timer where nothing but the timer keeps a campaign out of the promise."""


def test_a_timer_shorter_than_the_promise_is_caught() -> None:
    """The ranked timer's first part is the promise. Without pre-vote, a timer 3 % short
    makes the first voter in the order campaign (vote for itself) before the end of its
    promise: caught in the first schedule. With pre-vote, a second guard holds (a
    pre-candidate campaigns only after its promise): no violation, but every failover
    wastes a pre-vote round, refused by voters still inside their promises. No
    partitions: without pre-vote a rejoining node deposes the leader (``NoPreVote``)."""
    sim = SimConfig(faults=frozenset(simulate.FAULTS) - {"partition"})
    caught = run_schedules(
        sim, 200, seed=1, node_factory=TimerBeforePromiseWithoutPreVote, stop_on_violation=True
    )
    assert caught.failed, f"survived {caught.schedules} schedules"
    kind, _, detail = caught.failed[0].violations[0]
    assert kind == "promise-broken" and "campaigned" in detail, detail
    assert caught.schedules == 1
    for clean in (WithoutPreVote, Node):
        assert not run_schedules(sim, 30, seed=1, node_factory=clean).failed, clean
    short = run_schedules(sim, 30, seed=1, node_factory=TimerBeforePromise)
    good = run_schedules(sim, 30, seed=1)
    assert not short.failed and len(short.failovers) == len(good.failovers) > 20
    # Nearly one pre-vote round per failover: a fast clock (the drift fault) can still
    # fire the first voter's timer a little before the others' promises end.
    assert len(good.failovers) <= good.failover_pre_votes <= len(good.failovers) + 3
    assert short.failover_pre_votes > 1.5 * good.failover_pre_votes


class FixedTimer(Node):
    """Every election timer is exactly T: followers of one leader fire together."""

    def _reset_election_timer(self, now: float) -> None:
        self._election_deadline = now + self._T


def test_campaigns_and_split_votes_are_counted() -> None:
    """The figures that say how well the timers separate candidates can see a bad one:
    with no spread at all, the followers of a crashed leader split the vote."""
    sim = SimConfig(nodes=5, observers=0, faults=frozenset({"crash"}), boundary=0.0)
    good = run_schedules(sim, 20, seed=1)
    bad = run_schedules(sim, 20, seed=1, node_factory=FixedTimer)
    assert not good.failed and not bad.failed
    assert good.campaigns >= good.elections > 20 and good.pre_votes >= good.campaigns
    assert bad.split_votes > 5 * max(good.split_votes, 1)
    assert bad.failover_campaigns > good.failover_campaigns
    assert good.failover_pre_votes >= good.failover_campaigns >= len(good.failovers)


def test_failover_is_measured_and_bounded() -> None:
    summary = run_schedules(SimConfig(boundary=0.0), 30, seed=100)
    assert not summary.failed
    assert len(summary.failovers) >= 25
    # T - heartbeat <= failover < T + heartbeat: the crash lands anywhere between two
    # heartbeats, and the next voter in the order campaigns at the end of its promise,
    # within its jitter (H/8), and wins in a round (the ranked timer; [T, 2T) at
    # random took up to 2T and more).
    assert all(0.15 <= f < 0.25 for f in summary.failovers), summary.failovers


def test_ci_run_thousands_of_schedules_without_a_violation() -> None:
    """The headline safety run: 5 voters + 1 observer, every fault, no violation."""
    jobs = str(min(2, os.cpu_count() or 1))
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flask_goelect.simulate",
            "--schedules",
            str(CI_SCHEDULES),
            "--nodes",
            "5",
            "--observers",
            "1",
            "--faults",
            "all",
            "--jobs",
            jobs,
            "--json",
            "--seed",
            "1000",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    figures = json.loads(proc.stdout)
    assert figures["schedules"] == CI_SCHEDULES
    assert sum(figures["violations"].values()) == 0
    assert figures["elections"] > CI_SCHEDULES
    # Printed for the CI log: the simulator's throughput is a benchmark figure.
    print(
        f"\nsimulator: {figures['schedules']} schedules in {time.perf_counter() - started:.1f}s,"
        f" {figures['schedules_per_second']} schedules/s on {jobs} process(es),"
        f" failover median {figures['failover_ms_median']} ms p99 {figures['failover_ms_p99']} ms"
    )


def test_cli_exit_codes_and_replay(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate.main(["--schedules", "3", "--duration", "10"]) == 0
    out = capsys.readouterr().out
    assert "schedules: 3" in out and "violations:" in out
    assert simulate.main(["--replay", "5", "--duration", "10"]) == 0
    out = capsys.readouterr().out
    assert "schedule 5:" in out and "become leader" in out
    with pytest.raises(SystemExit):
        simulate.main(["--faults", "meteor"])


def test_core_reads_no_clock_and_no_global_randomness(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time and randomness are injected: the core must not reach for its own."""

    def forbidden(*args: object, **kwargs: object) -> Any:
        raise AssertionError("the core read a clock or the global random generator")

    for name in ("time", "monotonic", "perf_counter", "monotonic_ns", "time_ns"):
        monkeypatch.setattr(time, name, forbidden)
    for name in ("random", "uniform", "randint", "choice", "shuffle", "getrandbits"):
        monkeypatch.setattr(random, name, forbidden)
    result = Simulation(SimConfig(duration=10), 3).run()
    assert result.elections and not result.violations
    source = Path(sys.modules["flask_goelect.core"].__file__ or "").read_text(encoding="utf-8")
    assert "import time" not in source and "datetime" not in source


def test_core_imports_no_web_or_gevent_modules() -> None:
    code = (
        "import sys\n"
        "import flask_goelect.core, flask_goelect.messages, flask_goelect.storage,"
        " flask_goelect.simulate\n"
        "bad = [m for m in ('flask', 'werkzeug', 'gevent', 'requests', 'greenlet')"
        " if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.strip() == ""
