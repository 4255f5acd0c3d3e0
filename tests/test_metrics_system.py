"""The is-leader gauge through a failover: a real 3-node cluster of the example app
under ``gunicorn -k gevent -w 3`` per node, each node's ``GET /metrics`` scraped in
rounds (every node once per round) before and after SIGKILL of the leader.

Asserted over every round: never two nodes at 1; the 1 is on the old leader
before the kill and on the new one after; and, scraping each node many times at
once (its workers answer), every worker of a node reports the same values.
``python -m tests.test_metrics_system`` prints the table of scrapes.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from goelect_harness.cluster import LocalCluster

pytestmark = pytest.mark.system

pytest.importorskip("prometheus_client", reason="the [metrics] extra is not installed")
pytest.importorskip("gunicorn", reason="gunicorn is not installed")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

WORKERS = 3


@dataclass(frozen=True)
class Scrape:
    """One scrape of one node: when (seconds since the kill; negative before), what."""

    at: float
    node: str
    is_leader: float | None  # None: no answer
    term: float | None


def scrape(cluster: LocalCluster, node_id: str) -> tuple[float | None, float | None]:
    url = cluster.nodes[node_id].address + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            text = response.read().decode()
    except (OSError, urllib.error.URLError):
        return None, None
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("goelect_is_leader", "goelect_term"):
                values[sample.name] = sample.value
    return values.get("goelect_is_leader"), values.get("goelect_term")


def scrape_round(cluster: LocalCluster, at: float) -> list[Scrape]:
    return [Scrape(at, node_id, *scrape(cluster, node_id)) for node_id in cluster.nodes]


def workers_agree(cluster: LocalCluster, asks: int = 24) -> dict[str, set[tuple[Any, Any]]]:
    """Each node scraped ``asks`` times at once: the set of answers per node."""
    jobs = [n for n in cluster.nodes for _ in range(asks)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda n: (n, scrape(cluster, n)), jobs))
    seen: dict[str, set[tuple[Any, Any]]] = {n: set() for n in cluster.nodes}
    for node_id, values in answers:
        seen[node_id].add(values)
    return seen


@dataclass
class FailoverRun:
    old: str
    new: str
    rounds: list[list[Scrape]]
    agreement: dict[str, set[tuple[Any, Any]]]


def run_failover(before: float = 1.5, after: float = 2.0, pause: float = 0.02) -> FailoverRun:
    with LocalCluster(
        3,
        elect_timeout=300,
        heartbeat_interval=50,
        job_interval=0,
        server="gunicorn",
        server_args=["-k", "gevent", "-w", str(WORKERS)],
    ) as cluster:
        cluster.start(timeout=60)
        leader = cluster.wait_for_leader(30)
        time.sleep(0.5)  # every worker of every node has joined
        agreement = workers_agree(cluster)
        rounds = []
        start = time.monotonic()
        while time.monotonic() - start < before:
            rounds.append(scrape_round(cluster, time.monotonic() - start - before))
            time.sleep(pause)
        killed = cluster.kill(leader.id)
        # Scraping goes on through the election, without waiting for it.
        while time.monotonic() - killed < after:
            rounds.append(scrape_round(cluster, time.monotonic() - killed))
            time.sleep(pause)
        new = cluster.wait_for_leader(20, exclude=[leader.id], min_term=leader.term + 1)
        return FailoverRun(leader.id, new.id, rounds, agreement)


def leaders_of(round_: list[Scrape]) -> list[str]:
    return [s.node for s in round_ if s.is_leader == 1]


def check(run: FailoverRun) -> None:
    for node_id, answers in run.agreement.items():
        assert len(answers) == 1, f"the workers of {node_id} disagree: {answers}"
    double = [r for r in run.rounds if len(leaders_of(r)) > 1]
    assert not double, f"two nodes at 1 in one round: {double[:3]}"
    before = [r for r in run.rounds if r[0].at < 0]
    after = [r for r in run.rounds if r[0].at >= 0]
    assert before and all(leaders_of(r) == [run.old] for r in before)
    assert leaders_of(after[-1]) == [run.new]
    assert all(leaders_of(r) in ([], [run.new]) for r in after)


def test_the_is_leader_gauge_moves_and_is_never_1_twice() -> None:
    run = run_failover()
    check(run)


def table(run: FailoverRun) -> list[str]:
    """One line per round where a node's answer changed, plus the first and last."""
    lines = ["| t (ms from kill) | " + " | ".join(s.node for s in run.rounds[0]) + " |"]
    lines.append("| --- |" + " --- |" * len(run.rounds[0]))
    previous = None
    for i, r in enumerate(run.rounds):
        cells = tuple(
            "down" if s.is_leader is None else f"{int(s.is_leader)} (term {int(s.term or 0)})"
            for s in r
        )
        if cells != previous or i == len(run.rounds) - 1:
            lines.append(f"| {r[0].at * 1000:+.0f} | " + " | ".join(cells) + " |")
        previous = cells
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="failovers to run")
    args = parser.parse_args(argv)
    for i in range(args.rounds):
        run = run_failover()
        check(run)
        doubles = sum(1 for r in run.rounds if len(leaders_of(r)) > 1)
        print(
            f"failover {i + 1}: {run.old} -> {run.new}; {len(run.rounds)} rounds,"
            f" {sum(len(r) for r in run.rounds)} scrapes, rounds with two nodes at 1: {doubles};"
            " (is_leader, term) answered by the workers of each node to 24 scrapes at once:"
            f" {sorted((n, sorted(a)) for n, a in run.agreement.items())}"
        )
        print("\n".join(table(run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
