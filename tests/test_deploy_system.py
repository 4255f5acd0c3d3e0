"""Every way Flask is served: a real 3-node cluster of the example app under each server.

Each server of the matrix runs 3 nodes (separate process groups on loopback,
T = 300 ms, heartbeat 50 ms, a leader-only job every 100 ms) and must show:

* one leader agreed by every worker: at least 300 requests to ``/_goelect/leader``
  spread over the nodes and their workers, every answer naming the same leader
  and term, 200 from every worker of the leader node and 503 from the others;
* a failover after SIGKILL of the leader node's whole process group;
* a ledger (the leader-only job's) where no term goes back, no term is written
  by two nodes, no process writes again after another process of its node took
  over, and no two runs come closer than half the job's interval (N workers
  scheduling the job never mean N runs).

``python -m tests.test_deploy_system --rounds 5`` runs the whole matrix several
times and prints the table that docs/deployment.md quotes.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from example_app.ledger import check_ledger, shortest_gap
from goelect_harness.cluster import LeaderView, LocalCluster

pytestmark = pytest.mark.system

#: A secret for the signed rounds (every RPC and status read between nodes signed).
SECRET = "deploy-matrix-secret-0123456789"

#: name -> (server, server options)
MATRIX: dict[str, tuple[str, list[str]]] = {
    "flask run": ("flask", []),
    "gevent.pywsgi": ("pywsgi", []),
    "gunicorn -k gevent -w 1": ("gunicorn", ["-k", "gevent", "-w", "1"]),
    "gunicorn -k gevent -w 3": ("gunicorn", ["-k", "gevent", "-w", "3"]),
    "gunicorn -k sync -w 3": ("gunicorn", ["-k", "sync", "-w", "3"]),
    "gunicorn -k gthread -w 2 --threads 4": (
        "gunicorn",
        ["-k", "gthread", "-w", "2", "--threads", "4"],
    ),
    "gunicorn --preload -k gevent -w 2": ("gunicorn", ["--preload", "-k", "gevent", "-w", "2"]),
    "uwsgi --master --processes 3": ("uwsgi", ["--master", "--processes", "3"]),
    "uwsgi --master --processes 3 --lazy-apps": (
        "uwsgi",
        ["--master", "--processes", "3", "--lazy-apps"],
    ),
    "uwsgi --processes 3 (no master)": ("uwsgi", ["--processes", "3"]),
    "waitress": ("waitress", ["--threads=4"]),
    "gunicorn -k sync -w 3, signed": ("gunicorn", ["-k", "sync", "-w", "3"]),
}

ELECT_TIMEOUT = 300
HEARTBEAT = 50
JOB_INTERVAL = 100
AGREEMENT_REQUESTS = 300


def server_available(server: str) -> str | None:
    """Why ``server`` cannot run here, or None."""
    if server == "uwsgi" and not (Path(sys.executable).parent / "uwsgi").exists():
        return "uWSGI is not installed (pip install pyuwsgi)"
    modules = {"gunicorn": "gunicorn", "waitress": "waitress"}
    if server in modules:
        import importlib.util

        if importlib.util.find_spec(modules[server]) is None:
            return f"{server} is not installed"
    return None


@dataclass
class MatrixResult:
    """What one round of one server showed."""

    requests: int = 0
    workers: dict[str, int] = field(default_factory=dict)
    disagreements: list[str] = field(default_factory=list)
    failover_ms: float | None = None
    ledger_entries: int = 0
    ledger_violations: list[str] = field(default_factory=list)
    shortest_gap_ms: float | None = None
    #: Signed rounds: the cluster page's view of the other nodes (signed status
    #: reads that land on any worker), ``{node: [peers it could not read]}``.
    unreadable: dict[str, list[str]] = field(default_factory=dict)
    #: Where each node's election runs (``status()["mode"]``), and where it must
    #: under this server ("thread+hub" in a gevent-patched process).
    modes: dict[str, str | None] = field(default_factory=dict)
    expected_mode: str = "thread"


def _leader_answer(cluster: LocalCluster, node_id: str) -> tuple[str, int, Any]:
    url = cluster.nodes[node_id].address + "/_goelect/leader"
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return node_id, response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return node_id, exc.code, json.loads(exc.read())


def check_agreement(cluster: LocalCluster, leader: LeaderView, result: MatrixResult) -> None:
    """Ask ``/_goelect/leader`` of every node many times at once (reaching its
    workers): every answer must name ``leader``, and only its workers answer 200."""
    ids = list(cluster.nodes)
    asks = [ids[i % len(ids)] for i in range(AGREEMENT_REQUESTS)]
    pids: dict[str, set[int]] = collections.defaultdict(set)
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda n: _leader_answer(cluster, n), asks))
    for node_id, status, body in answers:
        result.requests += 1
        pids[node_id].add(int(body["process"]["pid"]))
        expected = 200 if node_id == leader.id else 503
        view = (body["leader_id"], body["term"])
        if status != expected or view != (leader.id, leader.term):
            result.disagreements.append(
                f"{node_id} pid {body['process']['pid']} ({body['process']['role']}): {status}"
                f" naming {view}, expected {expected} naming {(leader.id, leader.term)}"
            )
    result.workers = {node_id: len(found) for node_id, found in sorted(pids.items())}


def check_signed_reads(cluster: LocalCluster, result: MatrixResult) -> None:
    """Each node's cluster page reads every other node's status with a signed
    request: it must find them all reachable, whichever worker answers."""
    for node_id in cluster.nodes:
        for _ in range(5):
            answer = cluster.get(node_id, "/jobs", timeout=5)
            assert answer is not None and answer[0] == 200
            url = cluster.nodes[node_id].address + "/"
            with urllib.request.urlopen(url, timeout=10) as response:
                page = response.read().decode()
            errors = re.findall(r"<td>no: ([^<]*)</td>", page)
            if errors:
                result.unreadable.setdefault(node_id, []).extend(errors)


def run_round(
    server: str, server_args: list[str], state_dir: Path | None = None, *, signed: bool = False
) -> MatrixResult:
    result = MatrixResult()
    with LocalCluster(
        3,
        elect_timeout=ELECT_TIMEOUT,
        heartbeat_interval=HEARTBEAT,
        job_interval=JOB_INTERVAL,
        server=server,
        server_args=server_args,
        state_dir=state_dir,
        log_level="WARNING",
        node_args=["--secret", SECRET] if signed else [],
    ) as cluster:
        cluster.start(timeout=60)
        leader = cluster.wait_for_leader(20)
        patched = server == "pywsgi" or "gevent" in server_args
        result.expected_mode = "thread+hub" if patched else "thread"
        for node in cluster.nodes:
            result.modes[node] = (cluster.status(node, timeout=10) or {}).get("mode")
        check_agreement(cluster, leader, result)
        if signed:
            check_signed_reads(cluster, result)
        time.sleep(0.5)
        killed_at = cluster.kill(leader.id)
        new = cluster.wait_for_leader(20, exclude=[leader.id], min_term=leader.term + 1)
        result.failover_ms = (new.mono - killed_at) * 1000
        time.sleep(1.0)
        cluster.stop()
        entries = cluster.ledger_entries()
        result.ledger_entries = len(entries)
        result.ledger_violations = check_ledger(entries)
        gap = shortest_gap(entries)
        result.shortest_gap_ms = gap * 1000 if gap is not None else None
    return result


def assert_round(result: MatrixResult) -> None:
    # Under gunicorn --preload -k gevent the election started before the worker
    # patched itself ran on the original threads: failovers of seconds.
    assert set(result.modes.values()) == {result.expected_mode}, result.modes
    assert result.requests >= AGREEMENT_REQUESTS
    assert result.disagreements == [], result.disagreements[:5]
    assert result.unreadable == {}, result.unreadable
    assert result.ledger_violations == [], result.ledger_violations[:5]
    assert result.ledger_entries >= 5, "the leader-only job did not run"
    assert result.shortest_gap_ms is not None and result.shortest_gap_ms >= JOB_INTERVAL / 2, (
        f"two runs of the job {result.shortest_gap_ms:.0f} ms apart (interval {JOB_INTERVAL} ms)"
    )


@pytest.mark.parametrize("name", list(MATRIX))
def test_server(name: str) -> None:
    server, args = MATRIX[name]
    reason = server_available(server)
    if reason is not None:
        pytest.skip(reason)
    assert_round(run_round(server, args, signed=name.endswith("signed")))


# -- the long run ------------------------------------------------------------------------------


def table(results: dict[str, list[MatrixResult]]) -> list[str]:
    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.0f}" if values else "-"

    width = max(len(n) for n in results)
    lines = [
        f"{'server':<{width}}  rounds  requests agreed  workers seen  failover ms (median / max)"
        "  ledger violations  shortest job gap ms"
    ]
    for name, rounds in results.items():
        agreed = sum(r.requests - len(r.disagreements) for r in rounds)
        asked = sum(r.requests for r in rounds)
        workers = max((max(r.workers.values(), default=0) for r in rounds), default=0)
        fail = [r.failover_ms for r in rounds if r.failover_ms is not None]
        gaps = [r.shortest_gap_ms for r in rounds if r.shortest_gap_ms is not None]
        lines.append(
            f"{name:<{width}}  {len(rounds):>6}  {agreed:>6} / {asked:<6}  {workers:>12}"
            f"  {median(fail):>6} / {max(fail) if fail else 0:<6.0f}"
            f"               {sum(len(r.ledger_violations) for r in rounds):>17}"
            f"  {min(gaps) if gaps else 0:>19.0f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.test_deploy_system")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append", default=[], help="a server of the matrix")
    args = parser.parse_args(argv)
    results: dict[str, list[MatrixResult]] = {}
    failed = 0
    for name, (server, server_args) in MATRIX.items():
        if args.only and name not in args.only:
            continue
        reason = server_available(server)
        if reason is not None:
            print(f"{name}: skipped: {reason}", flush=True)
            continue
        for _ in range(args.rounds):
            result = run_round(server, server_args, signed=name.endswith("signed"))
            results.setdefault(name, []).append(result)
            try:
                assert_round(result)
            except AssertionError as exc:
                failed += 1
                print(f"{name}: FAILED: {exc}", flush=True)
        print("\n".join(table({name: results[name]})[1:]), flush=True)
    print("\n".join(table(results)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
