"""Scale benchmark: 5 voters and 45 observers of the example app on one machine.

::

    python -m bench.scale --voters 5 --observers 45 --watch-seconds 60

Every node is a separate example-app process on loopback (``LocalCluster``
with observers: no-vote nodes that follow the leader but never vote, campaign
or count in a quorum). The timings are the library's defaults (election
timeout 2000 ms, heartbeat 200 ms), which suit 50 Python processes sharing a
few cores: the leader sends 49 heartbeats per round, and every node costs
some CPU per heartbeat. Measured:

* **time to a leader**: from the moment every elector starts (together, at a
  Unix time given to every node once all are spawned) to the first lease, and
  to the moment every one of the 50 nodes names that leader;
* **CPU** over the watch period (``/proc/<pid>/stat``), for the leader, the
  voting followers and the observers, and of all nodes together;
* **elections after the first leader** over the watch period: candidacies
  (``state`` events to ``candidate``, pre-votes included), new leases and term
  changes seen by any node. Every one counts as spurious: nothing is disturbed;
* **memory** of each node (``VmRSS`` at the end of the watch period).

Every process is stopped by its PID; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.election import RESULTS_DIR, Figure, _agreed_at, _machine, format_table
from goelect_harness.cluster import ClusterError, LocalCluster, process_cpu_seconds

__all__ = ["ScaleConfig", "main", "rss_mib", "run_scale", "scale_title"]


@dataclass
class ScaleConfig:
    """What to run; times in milliseconds unless named."""

    voters: int = 5
    observers: int = 45
    elect_timeout: int = 2000
    heartbeat_interval: int = 200
    watch_seconds: float = 60.0
    host: str = "127.0.0.1"
    verbose: bool = True

    @property
    def nodes(self) -> int:
        return self.voters + self.observers

    @property
    def spawn_seconds(self) -> float:
        """How long to give every process to import and listen before the electors start.

        About 0.25 s of one core per process was measured (13 s for 50 on 2
        CPUs); this leaves room for a busier machine.
        """
        return 3.0 + 0.8 * self.nodes / max(1, os.cpu_count() or 1)

    @property
    def bound(self) -> float:
        return max(10.0, 10 * self.elect_timeout / 1000)


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (``VmRSS`` in ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for process {pid}")


def _say(config: ScaleConfig, text: str) -> None:
    if config.verbose:
        print(text, file=sys.stderr, flush=True)


def run_scale(config: ScaleConfig) -> dict[str, Any]:
    """Start the cluster, measure, stop it; returns the results as a JSON-ready dict."""
    t_total = time.monotonic()
    first = Figure("time to a leader: electors started -> first lease", "ms")
    agreed = Figure(f"time to a leader known by all {config.nodes} nodes", "ms")
    leader_cpu = Figure("CPU, leader", "% of a core")
    voter_cpu = Figure("CPU, voting follower", "% of a core")
    observer_cpu = Figure("CPU, observer", "% of a core")
    total_cpu = Figure(f"CPU, all {config.nodes} nodes together", "% of a core")
    elections = Figure(
        f"elections after the first leader, over {config.watch_seconds:g} s", "count", target="0"
    )
    terms = Figure(
        f"term changes after the first leader, over {config.watch_seconds:g} s",
        "count",
        target="0",
    )
    rss = Figure("memory per node (RSS)", "MiB")
    spawn = Figure("node process: spawn -> serving", "ms")
    figures = [
        first,
        agreed,
        leader_cpu,
        voter_cpu,
        observer_cpu,
        total_cpu,
        elections,
        terms,
        rss,
        spawn,
    ]
    _say(
        config,
        f"scale: {config.voters} voters + {config.observers} observers, election timeout"
        f" {config.elect_timeout} ms, heartbeat {config.heartbeat_interval} ms",
    )
    with LocalCluster(
        config.voters,
        observers=config.observers,
        host=config.host,
        elect_timeout=config.elect_timeout,
        heartbeat_interval=config.heartbeat_interval,
        job_interval=0,
        log_level="WARNING",
    ) as cluster:
        delay = config.spawn_seconds
        start_at = time.time() + delay
        start_mono = time.monotonic() + (start_at - time.time())
        try:
            cluster.start(start_at=start_at, timeout=delay + config.bound)
            cluster.wait_for_leader(timeout=config.bound)
        except ClusterError as exc:
            first.failures += 1
            first.note = str(exc)[:500]
            _say(config, f"  FAILED: {exc}")
            return _results(config, figures, time.monotonic() - t_total)
        for e in cluster.events:
            started = cluster.nodes[e.node].started_mono
            if e.kind == "ready" and started is not None:
                spawn.samples.append((e.mono - started) * 1000)
        # At the set time all processes wake at once on a few cores: the last
        # elector starts a little later than the first.
        starts = [e.mono for e in cluster.events if e.kind == "started"]
        lag = (max(starts) - start_mono) * 1000
        first.note = agreed.note = f"the last elector started {lag:.0f} ms after the set time"
        # /status shows the leader a moment before every node's event lines are
        # printed (by their callbacks) and read here: wait for them, bounded.
        deadline = time.monotonic() + config.bound
        while True:
            leases = [e for e in cluster.events if e.kind == "lease"]
            when = _agreed_at(list(cluster.events), set(cluster.nodes), "lease")
            if (leases and when is not None) or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        if not leases or when is None:
            first.failures += 1
            first.note = "no lease or no agreement in the events"
            return _results(config, figures, time.monotonic() - t_total)
        leader, term, agreed_mono = when
        first.samples.append((leases[0].mono - start_mono) * 1000)
        agreed.samples.append((agreed_mono - start_mono) * 1000)
        _say(
            config,
            f"  {leader} leads term {term}: first lease after {first.samples[0]:.0f} ms,"
            f" known by every node after {agreed.samples[0]:.0f} ms",
        )

        pids = {n.id: n.pid for n in cluster.nodes.values() if n.pid is not None}
        mark = cluster.mark()
        t0 = time.monotonic()
        before = {n: process_cpu_seconds(pid) for n, pid in pids.items()}
        _say(config, f"  watching for {config.watch_seconds:g} s")
        time.sleep(config.watch_seconds)
        after = {n: process_cpu_seconds(pid) for n, pid in pids.items()}
        elapsed = time.monotonic() - t0
        for node_id, pid in pids.items():
            rss.samples.append(rss_mib(pid))
            percent = 100 * (after[node_id] - before[node_id]) / elapsed
            if node_id == leader:
                leader_cpu.samples.append(percent)
            elif node_id in cluster.observers:
                observer_cpu.samples.append(percent)
            else:
                voter_cpu.samples.append(percent)
        total_cpu.samples.append(sum(after[n] - before[n] for n in pids) * 100 / elapsed)

        # Everything after the first agreement, the watch period included.
        later = [e for e in cluster.events if e.mono > agreed_mono]
        candidacies = [e for e in later if e.kind == "state" and e.data.get("state") == "candidate"]
        new_leases = [e for e in later if e.kind == "lease"]
        seen_terms = {
            int(e.data["term"])
            for e in later
            if isinstance(e.data.get("term"), int) and e.kind in ("state", "leader_changed")
        }
        elections.samples.append(float(len(candidacies) + len(new_leases)))
        terms.samples.append(float(len(seen_terms - {term})))
        exits = [e for e in cluster.events[mark:] if e.kind == "exit"]
        if exits:
            elections.note = f"nodes exited during the watch: {[e.node for e in exits]}"
        _say(
            config,
            f"  leader CPU {leader_cpu.samples[0]:.1f} %, all nodes {total_cpu.samples[0]:.1f} %"
            f" of a core; {len(candidacies)} candidacies, {len(new_leases)} new leases,"
            f" terms seen {sorted(seen_terms)}",
        )
    return _results(config, figures, time.monotonic() - t_total)


def _results(config: ScaleConfig, figures: list[Figure], duration: float) -> dict[str, Any]:
    failures = sum(f.failures for f in figures)
    for f in figures:
        if f.target == "0" and any(s != 0 for s in f.samples):
            failures += 1
    return {
        "benchmark": "bench.scale",
        "system": "flask-goelect",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(duration, 1),
        "config": {
            "nodes": config.nodes,
            "voters": config.voters,
            "observers": config.observers,
            "rounds": 1,
            "elect_timeout_ms": config.elect_timeout,
            "heartbeat_interval_ms": config.heartbeat_interval,
            "watch_seconds": config.watch_seconds,
            "host": config.host,
        },
        "machine": _machine(),
        "figures": [f.summary() for f in figures],
        "failures": failures,
    }


def scale_title(results: dict[str, Any]) -> str:
    c, m = results["config"], results["machine"]
    return (
        f"flask-goelect at scale: {c['voters']} voters + {c['observers']} observers on"
        f" {c['host']}, election timeout {c['elect_timeout_ms']} ms, heartbeat"
        f" {c['heartbeat_interval_ms']} ms, watched {c['watch_seconds']:g} s ({m['cpus']} CPUs,"
        f" Python {m['python']})"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description="Start voters and observers of the example app on this machine and"
        " measure the time to a leader, CPU, spurious elections and memory.",
    )
    parser.add_argument("--voters", type=int, default=5)
    parser.add_argument("--observers", type=int, default=45)
    parser.add_argument("--elect-timeout", type=int, default=2000, metavar="MS")
    parser.add_argument("--heartbeat-interval", type=int, default=200, metavar="MS")
    parser.add_argument("--watch-seconds", type=float, default=60.0, metavar="S")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.voters < 1 or args.observers < 0:
        parser.error("--voters must be at least 1 and --observers at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_scale(
        ScaleConfig(
            voters=args.voters,
            observers=args.observers,
            elect_timeout=args.elect_timeout,
            heartbeat_interval=args.heartbeat_interval,
            watch_seconds=args.watch_seconds,
            verbose=not args.quiet,
        )
    )
    print(format_table(results, scale_title(results)))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    paths = [RESULTS_DIR / f"scale-{results['config']['nodes']}n-{stamp}.json"]
    if args.json:
        paths.append(Path(args.json))
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {path}")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
