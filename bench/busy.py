"""The election while the app is busy: leader changes and heartbeat delay under load.

``python -m bench.busy`` runs 3 nodes of the example app under a server (by
default gunicorn sync workers) and keeps every worker of every node busy with
slow requests (``GET /slow?ms=...``: waiting, or computing with ``--cpu``) for
``--seconds`` (``--target leader`` or ``follower``: only the leader, or only one
follower), then reports:

* how many times the leader changed during the load (every change of leader or
  term the nodes printed);
* the heartbeats as the leader's elector saw them: calls, failures, mean and
  slowest reply per follower (``calls`` in its status, read after the load);
* the slow requests served and failed.

::

    python -m bench.busy --server gunicorn --server-args="-k sync -w 3" --seconds 30
    python -m bench.busy --server-args="-k gevent -w 1" --cpu --ms 2500 --clients 1
    python -m bench.busy --elect-timeout 200 --heartbeat 50 --ms 500
    python -m bench.busy --server-args="-k gevent -w 1" --cpu --ms 20000 --target follower
    python -m bench.busy --server-args="-k gevent -w 1" --cpu --ms 60 --duty 0.6 --clients 1

``--duty D`` keeps each client's worker busy for a fraction ``D`` of the time
(a pause after each request, of its length times ``(1 - D) / D``): with
``--cpu``, one client per node at ``--duty 0.6`` is an app computing at about
60 % of a core. Each node's CPU during the load (its whole process group) is
reported.

Timing defaults are the library's (election timeout 2000 ms, heartbeat 200 ms):
the case users live in.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import shlex
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from goelect_harness.cluster import LocalCluster, process_cpu_seconds


def _load(
    address: str, ms: float, cpu: bool, duty: float, stop: threading.Event, counts: Any
) -> None:
    url = f"{address}/slow?ms={ms:g}" + ("&cpu=1" if cpu else "")
    while not stop.is_set():
        began = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=ms / 1000 + 30) as response:
                response.read()
                counts["served"] += 1
        except (urllib.error.URLError, OSError):
            counts["failed"] += 1
            stop.wait(0.05)
            continue
        if duty < 1.0:
            stop.wait((time.monotonic() - began) * (1.0 - duty) / duty)


def _node_cpu_seconds(cluster: LocalCluster, node_id: str) -> float:
    """CPU time so far of the node's live processes: the one started and its workers."""
    pid = cluster.nodes[node_id].pid
    total = 0.0
    for p in ([pid] if pid else []) + cluster.worker_pids(node_id):
        with contextlib.suppress(OSError, ValueError):
            total += process_cpu_seconds(p)
    return total


def run(args: argparse.Namespace) -> dict[str, Any]:
    server_args = shlex.split(args.server_args)
    with LocalCluster(
        3,
        elect_timeout=args.elect_timeout,
        heartbeat_interval=args.heartbeat,
        job_interval=0,
        server=args.server,
        server_args=server_args,
        log_level="INFO" if args.state_dir else "WARNING",
        state_dir=args.state_dir,
        keep=args.state_dir is not None,
    ) as cluster:
        cluster.start(timeout=60)
        leader = cluster.wait_for_leader(30)
        time.sleep(1.0)
        mark = cluster.mark()
        stop = threading.Event()
        counts: collections.Counter[str] = collections.Counter()
        if args.target == "all":
            targets = list(cluster.nodes)
        elif args.target == "leader":
            targets = [leader.id]
        else:
            targets = [min(n for n in cluster.nodes if n != leader.id)]
        threads = [
            threading.Thread(
                target=_load,
                args=(cluster.nodes[n].address, args.ms, args.cpu, args.duty, stop, counts),
                daemon=True,
            )
            for n in targets
            for _ in range(args.clients)
        ]
        cpu_before = {n: _node_cpu_seconds(cluster, n) for n in cluster.nodes}
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(args.seconds)
        cpu_after = {n: _node_cpu_seconds(cluster, n) for n in cluster.nodes}
        loaded = time.monotonic() - started
        stop.set()
        for thread in threads:
            thread.join(args.ms / 1000 + 35)
        duration = time.monotonic() - started
        changes = [
            (e.node, e.data.get("term"))
            for e in cluster.events[mark:]
            if e.kind == "leader" and e.mono <= started + duration
        ]
        time.sleep(0.5)
        after = cluster.wait_for_leader(60)
        status = cluster.status(after.id, timeout=30) or {}
        where = {"all": "every node", "leader": "the leader"}.get(
            args.target, f"one follower ({targets[0]})"
        )
        return {
            "server": f"{args.server} {args.server_args}".strip(),
            "load": f"{len(threads)} clients on {where} of GET /slow?ms={args.ms:g}"
            + ("&cpu=1" if args.cpu else "")
            + (f", busy {args.duty:.0%} of the time" if args.duty < 1.0 else ""),
            "cpu_percent_per_node": {
                n: round(100 * (cpu_after[n] - cpu_before[n]) / loaded, 1)
                for n in sorted(cpu_after)
                if n in cpu_before
            },
            "elect_timeout_ms": args.elect_timeout,
            "heartbeat_ms": args.heartbeat,
            "seconds": round(duration, 1),
            "leader_before": [leader.id, leader.term],
            "leader_after": [after.id, after.term],
            "leader_changes": len(changes),
            "new_leaders": changes,
            "slow_requests": dict(counts),
            "heartbeats_seen_by_the_leader": {
                peer: kinds.get("Heartbeat") for peer, kinds in status.get("calls", {}).items()
            },
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.busy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--server", default="gunicorn")
    parser.add_argument("--server-args", default="-k sync -w 3")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--ms", type=float, default=1000.0, help="length of a slow request")
    parser.add_argument("--cpu", action="store_true", help="compute instead of waiting")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients per node")
    parser.add_argument(
        "--duty",
        type=float,
        default=1.0,
        help="fraction of the time each client keeps its request running (default 1)",
    )
    parser.add_argument(
        "--target",
        "--nodes",
        dest="target",
        choices=("all", "leader", "follower"),
        default="all",
        help="which nodes get the load: every node, the leader, or one follower",
    )
    parser.add_argument(
        "--state-dir", help="keep the nodes' state and INFO logs there (default: dropped)"
    )
    parser.add_argument("--elect-timeout", type=int, default=2000)
    parser.add_argument("--heartbeat", type=int, default=200)
    args = parser.parse_args(argv)
    if not 0.0 < args.duty <= 1.0:
        parser.error("--duty must be more than 0 and at most 1")
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
