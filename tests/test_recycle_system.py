"""Losing the elector's process is not losing the node: worker recycling and reloads.

Real 3-node clusters of the example app under gunicorn:

* ``-k sync -w 3 --max-requests 20`` with traffic on every node: workers exit
  and are replaced every few seconds, the node's elector among them;
* a HUP reload of the leader node (``-k gevent -w 3``): gunicorn starts new
  workers, then stops the old ones.

The node keeps its leadership through it (the elector passes to another process
of the node, with its term and lease), the ledger of the leader-only job stays
clean (never two nodes in a term, never two processes at once, never twice per
interval), and every request is answered.

``python -m tests.test_recycle_system --seconds 60`` is the long run that
docs/deployment.md quotes.
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest

from example_app.ledger import check_ledger, shortest_gap
from goelect_harness.cluster import ClusterError, LocalCluster

pytestmark = pytest.mark.system

# Workers that boot import the app on a busy CPU: timings that such a pause does not
# turn into an election, so that what is counted is what recycling costs.
ELECT_TIMEOUT = 1000
HEARTBEAT = 100
JOB_INTERVAL = 100
#: How often the watcher asks the nodes' /status: each ask is a request to a
#: worker, and counts towards --max-requests like the traffic's. Asked every
#: 10 ms, the watcher alone recycled each worker (and the elector) more often
#: than the election timeout.
POLL = 0.1


@dataclass
class RecycleResult:
    seconds: float = 0.0
    leaders: list[tuple[str, int]] = field(default_factory=list)
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    elector_processes: dict[str, int] = field(default_factory=dict)
    ledger_entries: int = 0
    ledger_violations: list[str] = field(default_factory=list)
    shortest_gap_ms: float | None = None

    @property
    def leader_node_changes(self) -> int:
        nodes = [node for node, _ in self.leaders]
        return sum(1 for a, b in zip(nodes, nodes[1:], strict=False) if a != b)


class Traffic:
    """Clients that call every node's ``/jobs`` page until stopped (bounded)."""

    def __init__(self, cluster: LocalCluster, per_node: int = 2, pause: float = 0.02) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(cluster.nodes[n].address, pause), daemon=True)
            for n in cluster.nodes
            for _ in range(per_node)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self, address: str, pause: float) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(address + "/jobs", timeout=5) as response:
                    response.read()
                    self.counts[str(response.status)] += 1
            except urllib.error.HTTPError as exc:
                self.counts[str(exc.code)] += 1
            except OSError as exc:
                self.counts[type(exc).__name__] += 1
            self._stop.wait(pause)


def watch_leaders(cluster: LocalCluster, seconds: float, result: RecycleResult) -> None:
    """Record every (leader, term) the cluster agrees on, polling for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            view = cluster.wait_for_leader(
                timeout=min(5.0, max(0.1, deadline - time.monotonic())), poll=POLL
            )
        except ClusterError:
            continue
        if not result.leaders or result.leaders[-1] != (view.id, view.term):
            result.leaders.append((view.id, view.term))
        time.sleep(POLL)


def finish(cluster: LocalCluster, result: RecycleResult) -> None:
    cluster.stop()
    entries = cluster.ledger_entries()
    result.ledger_entries = len(entries)
    result.ledger_violations = check_ledger(entries)
    gap = shortest_gap(entries)
    result.shortest_gap_ms = gap * 1000 if gap is not None else None
    result.elector_processes = {
        node: len({e.pid for e in entries if e.node == node}) for node in cluster.nodes
    }


def run_max_requests(seconds: float) -> RecycleResult:
    result = RecycleResult(seconds=seconds)
    with LocalCluster(
        3,
        elect_timeout=ELECT_TIMEOUT,
        heartbeat_interval=HEARTBEAT,
        job_interval=JOB_INTERVAL,
        server="gunicorn",
        # The jitter keeps the workers from all recycling at once (then the node
        # would have no process at all, and no elector).
        server_args=[
            "-k",
            "sync",
            "-w",
            "3",
            "--max-requests",
            "20",
            "--max-requests-jitter",
            "10",
        ],
        log_level="WARNING",
    ) as cluster:
        cluster.start(timeout=60)
        cluster.wait_for_leader(20, poll=POLL)
        # About 10 requests a second per node: each worker recycles every few
        # seconds, the jitter keeps them from all going at once (see docs).
        with Traffic(cluster, per_node=1, pause=0.1) as traffic:
            watch_leaders(cluster, seconds, result)
        result.requests = traffic.counts
        finish(cluster, result)
    return result


def run_hup(rounds: int) -> RecycleResult:
    result = RecycleResult()
    with LocalCluster(
        3,
        elect_timeout=ELECT_TIMEOUT,
        heartbeat_interval=HEARTBEAT,
        job_interval=JOB_INTERVAL,
        server="gunicorn",
        server_args=["-k", "gevent", "-w", "3"],
        log_level="WARNING",
    ) as cluster:
        cluster.start(timeout=60)
        with Traffic(cluster) as traffic:
            for _ in range(rounds):
                leader = cluster.wait_for_leader(20, poll=POLL)
                result.leaders.append((leader.id, leader.term))
                cluster.signal(leader.id, signal.SIGHUP)
                watch_leaders(cluster, 3.0, result)
        result.requests = traffic.counts
        finish(cluster, result)
    return result


def assert_safe(result: RecycleResult) -> None:
    assert result.ledger_violations == [], result.ledger_violations[:5]
    assert result.ledger_entries > 0
    assert result.shortest_gap_ms is not None and result.shortest_gap_ms >= JOB_INTERVAL / 2
    assert result.leaders, "no leader was ever agreed"


def test_worker_recycling_keeps_the_node_and_the_ledger_clean() -> None:
    result = run_max_requests(15.0)
    assert_safe(result)
    assert max(result.elector_processes.values()) >= 2, "no elector process was recycled"
    assert result.leader_node_changes == 0, result.leaders


def test_hup_reload_keeps_the_leader() -> None:
    result = run_hup(2)
    assert_safe(result)
    assert result.leader_node_changes == 0, result.leaders


def describe(name: str, result: RecycleResult) -> str:
    requests = sum(result.requests.values())
    failed = requests - result.requests.get("200", 0)
    return (
        f"{name}: leaders {result.leaders}; leader node changes {result.leader_node_changes};"
        f" elector processes per node {result.elector_processes}; requests {requests},"
        f" not 200: {failed} {dict(result.requests)}; ledger {result.ledger_entries} lines,"
        f" violations {len(result.ledger_violations)}, shortest gap"
        f" {result.shortest_gap_ms or 0:.0f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.test_recycle_system")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--hups", type=int, default=5)
    args = parser.parse_args(argv)
    print(describe("gunicorn -k sync -w 3 --max-requests 20", run_max_requests(args.seconds)))
    print(describe("gunicorn -k gevent -w 3, HUP of the leader", run_hup(args.hups)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
