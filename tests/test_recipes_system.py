"""The scheduler and consumer recipes on real 3-node clusters under gunicorn.

* Scheduler: Flask-APScheduler in each of the 3 workers of each of the 3 nodes
  (9 schedulers), a job every 200 ms: the runs in the cluster are counted per
  interval; none closer than half an interval, all in one process at a time.
* Consumer: a queue consumed by the leader's ``leader_task`` only; the leader
  is SIGKILLed half way and the new leader finishes the queue.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from goelect_harness.cluster import LocalCluster

pytestmark = pytest.mark.system

pytest.importorskip("gunicorn", reason="gunicorn is not installed")

INTERVAL_MS = 200


class RecipeCluster(LocalCluster):
    """A LocalCluster whose nodes serve a recipe's app under gunicorn."""

    def __init__(self, recipe: str, **kwargs: Any) -> None:
        self.recipe = recipe
        super().__init__(server="gunicorn", **kwargs)

    def server_command(self, node_id: str) -> list[str]:
        command = super().server_command(node_id)
        assert command[-1] == "example_app.wsgi:app"
        return [*command[:-1], f"example_app.recipes.{self.recipe}:serve()"]


def runs_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_scheduler_jobs_run_once_per_interval_in_the_cluster(tmp_path: Path) -> None:
    pytest.importorskip("flask_apscheduler", reason="Flask-APScheduler is not installed")
    runs_path = tmp_path / "runs.jsonl"
    with RecipeCluster(
        "scheduler",
        elect_timeout=300,
        heartbeat_interval=50,
        job_interval=INTERVAL_MS,
        ledger=runs_path,
        state_dir=tmp_path / "nodes",
        server_args=["-w", "3"],
    ) as cluster:
        cluster.start(timeout=60)
        leader = cluster.wait_for_leader(30)
        time.sleep(1.0)  # every worker's scheduler has started
        start = time.time()
        time.sleep(4.0)
        end = time.time()
        workers = {n: len(cluster.worker_pids(n)) for n in cluster.nodes}
    runs = [r for r in runs_of(runs_path) if start <= r["t"] < end]
    interval = INTERVAL_MS / 1000
    buckets = [0] * round((end - start) / interval)
    for r in runs:
        buckets[min(len(buckets) - 1, int((r["t"] - start) / interval))] += 1
    gaps = [b["t"] - a["t"] for a, b in zip(runs, runs[1:], strict=False)]
    print(f"workers per node {workers}; runs per {INTERVAL_MS} ms interval: {buckets}")
    assert workers == {"n1": 3, "n2": 3, "n3": 3}
    assert {(r["node"], r["pid"]) for r in runs} == {(leader.id, runs[0]["pid"])}
    assert len(buckets) - 2 <= len(runs) <= len(buckets) + 1, buckets
    assert min(gaps) > interval / 2, f"two runs {min(gaps) * 1000:.0f} ms apart"
    assert max(buckets) <= 2 and buckets.count(2) <= 1, buckets


def queue_rows(db: Path) -> list[tuple[int, str | None, int | None, int | None]]:
    with sqlite3.connect(db, timeout=5) as conn:
        return list(conn.execute("SELECT id, done_by, done_pid, done_term FROM queue ORDER BY id"))


def test_the_consumer_runs_on_the_leader_only_and_moves_with_it(tmp_path: Path) -> None:
    from example_app.recipes.consumer import enqueue

    db = tmp_path / "queue.db"
    for i in range(400):
        enqueue(str(db), f"message {i}")
    with RecipeCluster(
        "consumer",
        elect_timeout=300,
        heartbeat_interval=50,
        job_interval=0,
        ledger=db,
        state_dir=tmp_path / "nodes",
        server_args=["-k", "gevent", "-w", "2"],
    ) as cluster:
        cluster.start(timeout=60)
        leader = cluster.wait_for_leader(30)
        deadline = time.monotonic() + 20
        while sum(1 for r in queue_rows(db) if r[1]) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.kill(leader.id)
        new = cluster.wait_for_leader(20, exclude=[leader.id], min_term=leader.term + 1)
        deadline = time.monotonic() + 30
        while any(r[1] is None for r in queue_rows(db)) and time.monotonic() < deadline:
            time.sleep(0.1)
    rows = queue_rows(db)
    assert all(r[1] is not None for r in rows), "messages left in the queue"
    by = {(node, term) for _, node, _, term in rows}
    assert by == {(leader.id, leader.term), (new.id, new.term)}, by
    # One process per node consumed (the elector process), never two at once.
    assert len({(node, pid) for _, node, pid, _ in rows}) == 2
    old_ids = [i for i, node, _, _ in rows if node == leader.id]
    new_ids = [i for i, node, _, _ in rows if node == new.id]
    assert max(old_ids) < min(new_ids)
