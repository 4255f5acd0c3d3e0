"""The simulator: a clean core passes thousands of schedules; broken cores are caught.

A checker that cannot fail proves nothing, so each deliberately broken core
below must be caught, with the kind of violation its bug leads to.
"""

from __future__ import annotations

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
from flask_goelect.core import Config, Node, Role
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


def quorum_of_listed_peers(config: Config, state: Any, *, now: float, rng: random.Random) -> Node:
    """goelect's fault: the quorum counts only the listed peers, not the node itself."""
    config = _ListedPeersConfig(
        config.node_id,
        config.peers,
        novote=config.novote,
        elect_timeout=config.elect_timeout,
        heartbeat_interval=config.heartbeat_interval,
        max_drift=config.max_drift,
    )
    return Node(config, state, now=now, rng=rng)


@pytest.mark.parametrize(
    ("factory", "sim", "expected"),
    [
        (IgnoresVotedFor, SimConfig(), {"double-vote", "two-leaders"}),
        (LeaseFromReceiveTime, SimConfig(), {"lease-overlap"}),
        (NoPreVote, SimConfig(), {"disruption"}),
        (NotPersisted, SimConfig(), {"term-regression", "double-vote"}),
        (NoStickiness, SimConfig(), {"lease-overlap", "disruption"}),
        (ForgetsPromiseOnRestart, SimConfig(nodes=3, observers=0), {"lease-overlap"}),
        (TransferKeepsLease, SimConfig(), {"lease-overlap", "two-leaders"}),
        (quorum_of_listed_peers, SimConfig(nodes=4), {"two-leaders", "lease-overlap"}),
    ],
    ids=lambda v: getattr(v, "__name__", "") if callable(v) else "",
)
def test_broken_core_is_caught(factory: Any, sim: SimConfig, expected: set[str]) -> None:
    summary = run_schedules(sim, 400, seed=1, node_factory=factory, stop_on_violation=True)
    assert summary.failed, f"{factory.__name__} survived {summary.schedules} schedules"
    kind = summary.failed[0].violations[0][0]
    assert kind in expected


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


def test_failover_is_measured_and_bounded() -> None:
    summary = run_schedules(SimConfig(), 30, seed=100)
    assert not summary.failed
    assert len(summary.failovers) >= 25
    # T - heartbeat <= failover < 2T + a few round trips, by construction of the
    # timers (the crash lands anywhere between two heartbeats).
    assert all(0.15 <= f < 0.5 for f in summary.failovers), summary.failovers


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
