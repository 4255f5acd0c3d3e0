"""Real processes restarted on an empty disk (issue 10): the promise of every start.

A node whose state file is gone (a container without a volume) starts again at
term 0. Before issue 10 such a node had made "no promise" and granted a vote at
once: a follower counted in the leader's lease could help elect a second leader
while that lease ran. Now every start keeps the promise for T, whatever the term.

Each round, on a 3-node cluster of example-app processes behind the fault proxy
(:class:`goelect_harness.faults.FaultCluster`): SIGKILL a node (a follower two
rounds in three, else the leader), delete its state file, and start it again cut
off from the others (nothing but the test reaches it). At once, a vote request
forged from another voter, in a term above any it could have voted in, must be
refused, the refusal's reason (the core's, on the wire) saying the node started
less than T ago; 1.5 × T after its start the same request is granted (the promise
lasts T, not for ever). Then the network heals, and the round checks what every
fault round checks (:func:`goelect_harness.faults.play_round`): an agreed leader
that writes, terms that never go back, one vote per term (on the wire and the
forged ones), and the ledger of the leader-only job: one writer per term, and no
two terms' writes interleaved in time.

The state file's loss is the point here, so the wire check that compares what a
node said before a restart with its state file after skips the restarts on an
empty disk. A lost state file can still cost a second vote in a term the node
voted in, once its promise is over (docs/design.md): the cluster of a round does
not ask for one, and the forged vote is in a fresh term.

``GOELECT_SYSTEM_ROUNDS`` rounds run in CI (default 20, about 35 s); the long run
is ``python -m tests.test_lost_state_system --rounds 50``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from goelect_harness.cluster import LeaderView
from goelect_harness.faultproxy import Fault
from goelect_harness.faults import (
    BOUND,
    FaultCluster,
    Incarnation,
    Report,
    RoundResult,
    WireLog,
    read_state_file,
    report_writer,
    rounds_from_env,
    run_round,
)
from goelect_harness.helpers import wait_until

ROUNDS = rounds_from_env(default=20)
#: Election timeout, heartbeat interval and job interval (ms), as in test_faults_system.
ELECT, HEARTBEAT, JOB = 200, 50, 50
#: The words of the core's refusal during the promise of a start.
START_PROMISE = "after its start"


class LostDiskWireLog(WireLog):
    """The wire check, but for the processes that started on an empty disk: what a
    node said before such a restart is not expected to be in its (new) state file."""

    def __init__(self) -> None:
        super().__init__()
        self.empty_disk: set[int] = set()  # pids

    def _check_before(self, inc: Incarnation, term: int, when: float) -> None:
        if inc.pid not in self.empty_disk:
            super()._check_before(inc, term, when)

    def _check_vote(self, inc: Incarnation, vote: tuple[str, int, str, float]) -> None:
        if inc.pid not in self.empty_disk:
            super()._check_vote(inc, vote)


class LostDiskCluster(FaultCluster):
    """A FaultCluster that can restart a node on an empty disk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wire: LostDiskWireLog = LostDiskWireLog()

    def start_on_empty_disk(self, node_id: str) -> None:
        """Delete the node's state file (it is not running) and start it."""
        self.state_file(node_id).unlink(missing_ok=True)
        self.start_node(node_id)
        pid = self.nodes[node_id].pid
        assert pid is not None
        self.wire.empty_disk.add(pid)


def _reason_age(reason: str) -> float | None:
    """The seconds since its start that the core's refusal states ("started 0.083s ago")."""
    words = reason.split()
    if len(words) > 1 and words[0] == "started" and words[1].endswith("s"):
        try:
            return float(words[1][:-1])
        except ValueError:
            return None
    return None


def restart_on_an_empty_disk(
    cluster: LostDiskCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """SIGKILL a node, delete its state file, restart it alone: it grants nothing for T."""
    T = cluster.T
    victim = (
        leader.id
        if rng.random() < 1 / 3
        else rng.choice([n for n in cluster.nodes if n != leader.id])
    )
    rival = rng.choice([n for n in cluster.nodes if n != victim])
    time.sleep(rng.uniform(0, T))
    cluster.kill(victim)
    lost = read_state_file(cluster.state_file(victim))
    result.counts["leader restarted" if victim == leader.id else "follower restarted"] += 1
    # A term it cannot have voted in: above its state file and any term seen so far.
    seen = [s["term"] for n in cluster.nodes if n != victim and (s := cluster.status(n))]
    term = max([lost.term, leader.term, *seen]) + 1
    cluster.proxy.isolate(victim, Fault.DROP)
    cluster.start_on_empty_disk(victim)
    assert read_state_file(cluster.state_file(victim)).term == 0
    asked = time.monotonic()
    reply = cluster.forge_vote_request(victim, rival, term, transfer=False)
    if reply.get("granted"):
        result.violations.append(
            f"{victim}, restarted on an empty disk, granted a vote at once (term {term},"
            f" to {rival}): a follower counted in a lease could elect a second leader"
        )
        return
    reason = str(reply.get("reason", ""))
    age = _reason_age(reason)
    if START_PROMISE not in reason or age is None or age >= T:
        result.violations.append(
            f"{victim} refused the vote at once, but not for the promise of its start:"
            f" {reason!r} (it should say it started less than {T:g}s ago)"
        )
        return
    result.extra["refused, age of the node at the request"].append(age)
    result.counts["refused during its start promise"] += 1
    # The promise lasts T: by 1.5 T after the start the same request is granted.
    started = asked - age
    time.sleep(max(0.0, started + 1.5 * T - time.monotonic()))
    reply = cluster.forge_vote_request(victim, rival, term, transfer=False)
    if not reply.get("granted"):
        result.violations.append(
            f"{victim} still refused the vote {time.monotonic() - started:.3f}s after its"
            f" start (T {T:g}s): {reply}"
        )
        return
    result.counts["granted after its promise"] += 1
    if not wait_until(lambda: read_state_file(cluster.state_file(victim)).term == term, BOUND):
        result.violations.append(f"{victim} granted a vote in term {term} but did not persist it")


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest) -> Report:
    table = Report(f"restarts on an empty disk, real processes ({ROUNDS} rounds)")
    request.addfinalizer(report_writer(request.config, table))
    return table


@pytest.fixture(scope="module")
def cluster() -> Iterator[LostDiskCluster]:
    with LostDiskCluster(
        3,
        elect_timeout=ELECT,
        heartbeat_interval=HEARTBEAT,
        job_interval=JOB,
        lifetime=600.0 + ROUNDS * 30.0,
    ) as nodes:
        nodes.start(timeout=60.0)
        yield nodes


@pytest.mark.system
def test_restarts_on_an_empty_disk_grant_nothing_for_T_and_keep_the_ledger_clean(
    cluster: LostDiskCluster, report: Report
) -> None:
    for _ in range(ROUNDS):
        run_round(cluster, report, "restart on an empty disk (3 nodes)", restart_on_an_empty_disk)
    assert not cluster.ledger_violations()
    writers = {(e.node, e.term) for e in cluster.ledger_entries()}
    assert len({term for _, term in writers}) == len(writers), "one writer per term"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.test_lost_state_system",
        description="Restart nodes of a real 3-node cluster on an empty disk, N rounds, and"
        " print the table of rounds, violations and what each restart refused.",
    )
    parser.add_argument("--rounds", type=int, default=50, help="rounds (default 50)")
    parser.add_argument("--report", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    os.environ["GOELECT_SYSTEM_ROUNDS"] = str(args.rounds)
    if args.report:
        os.environ["GOELECT_SYSTEM_REPORT"] = str(Path(args.report).resolve())
    here = str(Path(__file__).resolve())
    return int(pytest.main([here, "-q", "-p", "no:cacheprovider", "--durations=0"]))


if __name__ == "__main__":
    sys.exit(main())
