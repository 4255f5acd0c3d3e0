"""Election benchmark on real example-app processes.

::

    python -m bench.election --nodes 3 --rounds 20 --elect-timeout 200 --heartbeat-interval 50

Prints a table and writes JSON (``--json PATH``, and always a copy under
``bench/results/``) with the median, p90 and max of:

* **cold start**: from the moment every node's elector starts (the nodes are
  spawned first and told to start their electors together, so that Python's
  start-up is not counted) to one leader with a valid lease that every node
  names. The time from spawning a node to its server listening is reported
  next to it.
* **failover after SIGKILL of the leader**: the time without a leader, from the
  SIGKILL to the moment another node holds a valid lease; once a short moment
  after the previous round settled (two election timeouts), and once after the
  leader has led for ``--steady`` seconds (default 10): connections that sat
  idle meanwhile (pysyncobj's followers drop theirs after 3.5 s) and every
  other cost of a long quiet period are then on the path.
* **hand-over after SIGTERM of the leader**: from the SIGTERM (a graceful stop,
  which hands leadership over) to the moment another node holds a valid lease.
* **idle CPU** of each node over a quiet period (``/proc/<pid>/stat`` user +
  system time), leader and followers separately, in percent of one core.
* **``@elect.leader_only`` overhead per call**: ``timeit`` in this process, on an
  app whose elector is a real leader (a one-node cluster), against the plain
  function.

``--system pysyncobj`` runs the same workload (cold start, failover, idle CPU)
on pysyncobj nodes (:mod:`bench.pysyncobj_node`) with equal timeouts; a
pysyncobj node "leads" from the moment it enters the leader state (it has no
lease). ``python -m bench`` runs both systems in one invocation and compares
them.

Times come from the nodes' event lines (see :mod:`example_app.node`): a node
prints ``lease`` with its ``time.monotonic()`` the moment it holds a lease, and
the launcher reads the same clock just before it sends a signal. The
leader-only job of the example app is off (``--job-interval 0`` by default), so
that idle CPU is the election's alone. Every process is stopped by its PID;
every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goelect_harness.cluster import (
    ClusterError,
    Event,
    LeaderView,
    LocalCluster,
    process_cpu_seconds,
)

__all__ = [
    "GOELECT",
    "PYSYNCOBJ",
    "SYSTEMS",
    "BenchConfig",
    "Figure",
    "System",
    "format_table",
    "main",
    "run",
    "summarize",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class BenchConfig:
    """What to run; times in milliseconds (as on the command line) unless named."""

    nodes: int = 3
    rounds: int = 20
    elect_timeout: int = 200
    heartbeat_interval: int = 50
    job_interval: int = 0
    idle_seconds: float = 20.0
    #: Seconds of steady leadership before the SIGKILL of the "after steady
    #: leadership" failover rounds (0: no such rounds).
    steady: float = 10.0
    overhead_calls: int = 200_000
    host: str = "127.0.0.1"
    #: Print progress lines while running.
    verbose: bool = True

    @property
    def bound(self) -> float:
        """Seconds to wait for any one change before counting the round as failed."""
        return max(10.0, 20 * self.elect_timeout / 1000)


@dataclass
class Figure:
    """One measured quantity: its samples and how many rounds failed."""

    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    failures: int = 0
    #: Rounds not counted because the machine did not meet the round's conditions
    #: (e.g. a node too slow to start), as opposed to the system failing.
    skipped: int = 0
    target: str = ""
    note: str = ""

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "unit": self.unit,
            "target": self.target,
            "failures": self.failures,
            "skipped": self.skipped,
            "note": self.note,
        }
        data.update(summarize(self.samples))
        data["samples"] = [round(s, 6) for s in self.samples]
        return data


def summarize(samples: Iterable[float]) -> dict[str, Any]:
    """``n``, ``median``, ``p90`` and ``p99`` (nearest rank), ``max``, ``min``, ``mean``."""
    values = sorted(samples)
    if not values:
        return {
            "n": 0,
            "median": None,
            "p90": None,
            "p99": None,
            "max": None,
            "min": None,
            "mean": None,
        }
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p90": values[max(0, math.ceil(0.9 * len(values)) - 1)],
        "p99": values[max(0, math.ceil(0.99 * len(values)) - 1)],
        "max": values[-1],
        "min": values[0],
        "mean": statistics.fmean(values),
    }


def _say(config: BenchConfig, text: str) -> None:
    if config.verbose:
        print(text, file=sys.stderr, flush=True)


def _goelect_cluster(config: BenchConfig) -> LocalCluster:
    return LocalCluster(
        config.nodes,
        host=config.host,
        elect_timeout=config.elect_timeout,
        heartbeat_interval=config.heartbeat_interval,
        job_interval=config.job_interval,
        log_level="WARNING",
    )


def _pysyncobj_cluster(config: BenchConfig) -> LocalCluster:
    from bench.pysyncobj_cluster import PySyncObjCluster

    return PySyncObjCluster(
        config.nodes,
        host=config.host,
        elect_timeout=config.elect_timeout,
        heartbeat_interval=config.heartbeat_interval,
    )


@dataclass(frozen=True)
class System:
    """A leader election the workload runs on."""

    name: str
    #: The event a node prints when it starts acting as the leader.
    leads: str
    #: Makes the (not yet started) cluster of ``config``.
    cluster: Callable[[BenchConfig], LocalCluster]
    #: Whether a SIGTERM makes the leader hand over (the hand-over figure).
    hands_over: bool


#: flask-goelect: example-app nodes; a node leads once it holds a lease.
GOELECT = System("flask-goelect", "lease", _goelect_cluster, hands_over=True)
#: pysyncobj (pure-Python Raft): a node leads once it enters the leader state.
PYSYNCOBJ = System("pysyncobj", "leader", _pysyncobj_cluster, hands_over=False)
SYSTEMS = {"goelect": GOELECT, "pysyncobj": PYSYNCOBJ}


def _settle(cluster: LocalCluster, config: BenchConfig, steady: float = 0.0) -> LeaderView:
    """Wait for an agreed leader, then for a quiet moment; return the leader.

    The quiet moment (two election timeouts, or ``steady`` seconds if longer)
    lets a node that just restarted end its promise not to vote (it keeps it
    for one election timeout after a restart), so every round starts from the
    same steady state.
    """
    leader = cluster.wait_for_leader(timeout=config.bound)
    time.sleep(max(0.3, 2 * config.elect_timeout / 1000, steady))
    return cluster.wait_for_leader(timeout=config.bound, min_term=leader.term)


def _agreed_at(
    events: list[Event], nodes: set[str], leads: str = "lease"
) -> tuple[str, int, float] | None:
    """The first moment (node clock) every node named one leader that leads.

    Replays the nodes' events in time order: ``leader_changed`` says whom a
    node follows, ``leads`` (``lease`` for flask-goelect) that the leader acts as
    one, ``state`` that a node left the leader role.
    """
    knows: dict[str, str | None] = {}
    lease: dict[str, int] = {}
    for event in sorted(events, key=lambda e: e.mono):
        d = event.data
        if event.kind == "leader_changed":
            knows[event.node] = d.get("leader")
        elif event.kind == leads:
            lease[event.node] = int(d.get("term", -1))
        elif event.kind == "state" and d.get("state") != "leader":
            lease.pop(event.node, None)
        elif event.kind in ("exit", "stopping"):
            lease.pop(event.node, None)
        leaders = {knows.get(n) for n in nodes}
        if len(leaders) == 1:
            leader = next(iter(leaders))
            if leader is not None and leader in lease:
                return leader, lease[leader], event.mono
    return None


def bench_cold_start(
    config: BenchConfig, cold: Figure, spawn: Figure, system: System = GOELECT
) -> None:
    """Fresh clusters: electors started together -> one agreed leader that leads."""
    delay = 1.0 + 0.3 * config.nodes  # time for every process to import and listen
    for round_no in range(1, config.rounds + 1):
        with system.cluster(config) as cluster:
            start_at = time.time() + delay
            start_mono = time.monotonic() + (start_at - time.time())
            try:
                cluster.start(start_at=start_at, timeout=config.bound + delay)
                cluster.wait_for_leader(timeout=config.bound)
            except ClusterError as exc:
                cold.failures += 1
                _say(config, f"  cold start round {round_no}: FAILED: {exc}")
                continue
            ready = [e for e in cluster.events if e.kind == "ready"]
            spawned = {n.id: n.started_mono for n in cluster.nodes.values()}
            for e in ready:
                t = spawned.get(e.node)
                if t is not None:
                    spawn.samples.append((e.mono - t) * 1000)
            late = [
                e.node for e in cluster.events if e.kind == "started" and e.mono > start_mono + 0.05
            ]
            agreed = _agreed_at(list(cluster.events), set(cluster.nodes), system.leads)
            if late:
                cold.skipped += 1
                cold.note = f"{cold.skipped} round(s) not counted: a node started its elector late"
                _say(config, f"  cold start round {round_no}: not counted: {late} started late")
                continue
            if agreed is None:
                cold.failures += 1
                _say(config, f"  cold start round {round_no}: FAILED: no agreement in the events")
                continue
            cold.samples.append((agreed[2] - start_mono) * 1000)
            _say(
                config,
                f"  cold start round {round_no}: {agreed[0]} leads term {agreed[1]}"
                f" after {(agreed[2] - start_mono) * 1000:.1f} ms",
            )


def _change_of_leader(
    config: BenchConfig,
    cluster: LocalCluster,
    figure: Figure,
    round_no: int,
    act: Callable[[str], float],
    what: str,
    leads: str = "lease",
    phases: tuple[Figure, ...] | None = None,
    steady: float = 0.0,
) -> None:
    """One round: ``act(leader)`` returns when it signalled; wait for another lease.

    ``phases``: figures for the time from the signal to the first candidacy of
    another node (its election timer; pre-candidacies included), from that
    candidacy to the new leader leading and, if given, from that candidacy to
    the new leader's win (its election) and from the win to its lease (the
    leader task starting, on flask-goelect). ``steady``: seconds the leader
    leads before the signal (at least two election timeouts).
    """
    try:
        view = _settle(cluster, config, steady)
    except ClusterError as exc:
        figure.failures += 1
        _say(config, f"  {what} round {round_no}: FAILED before the round: {exc}")
        return
    leader, term = view.id, view.term
    mark = cluster.mark()
    sent = act(leader)
    event = cluster.wait_for_event(
        lambda e: (
            e.kind == leads
            and e.node != leader
            and e.mono > sent
            and int(e.data.get("term", 0)) > term
        ),
        config.bound,
        since=mark,
    )
    status = cluster.wait_exit(leader, config.bound)
    if event is None:
        figure.failures += 1
        _say(config, f"  {what} round {round_no}: FAILED: no new leader within {config.bound}s")
    else:
        figure.samples.append((event.mono - sent) * 1000)
        first = next(
            (
                e
                for e in cluster.events[mark : event.index]
                if e.kind == "state"
                and e.data.get("state") == "candidate"
                and e.node != leader
                and e.mono > sent
            ),
            None,
        )
        if phases is not None and first is not None:
            phases[0].samples.append((first.mono - sent) * 1000)
            phases[1].samples.append((event.mono - first.mono) * 1000)
            won = next(
                (
                    e
                    for e in cluster.events[mark : event.index + 1]
                    if e.kind == "leader" and e.node == event.node and e.mono >= first.mono
                ),
                None,
            )
            if len(phases) == 4 and won is not None:
                phases[2].samples.append((won.mono - first.mono) * 1000)
                phases[3].samples.append((event.mono - won.mono) * 1000)
        _say(
            config,
            f"  {what} round {round_no}: {leader} -> {event.node} (term"
            f" {event.data.get('term')}) in {(event.mono - sent) * 1000:.1f} ms,"
            f" exit status {status}",
        )
    cluster.start_node(leader, timeout=config.bound)


def bench_changes(
    config: BenchConfig,
    failover: Figure,
    handover: Figure | None,
    system: System = GOELECT,
    phases: tuple[Figure, ...] | None = None,
    steady: tuple[Figure, ...] = (),
    handover_phases: tuple[Figure, ...] | None = None,
) -> None:
    """SIGKILL rounds, then SIGKILL rounds after ``config.steady`` seconds of steady
    leadership (if ``steady`` has figures: the failover, then its phases), then
    SIGTERM rounds (unless ``handover`` is None), on one cluster (each victim
    restarted). ``phases`` and ``handover_phases``: see :func:`_change_of_leader`."""
    with system.cluster(config) as cluster:
        cluster.start(timeout=config.bound)
        for round_no in range(1, config.rounds + 1):
            _change_of_leader(
                config, cluster, failover, round_no, cluster.kill, "failover", system.leads, phases
            )
        if steady and config.steady > 0:
            for round_no in range(1, config.rounds + 1):
                _change_of_leader(
                    config,
                    cluster,
                    steady[0],
                    round_no,
                    cluster.kill,
                    f"failover after {config.steady:g} s",
                    system.leads,
                    steady[1:] or None,
                    config.steady,
                )
        if handover is None:
            return
        for round_no in range(1, config.rounds + 1):
            _change_of_leader(
                config,
                cluster,
                handover,
                round_no,
                cluster.terminate,
                "hand-over",
                system.leads,
                handover_phases,
            )
        statuses = [
            e.data.get("returncode")
            for e in cluster.events
            if e.kind == "exit" and e.data.get("returncode") not in (0, -9)
        ]
        if statuses:
            handover.note = f"unexpected exit statuses: {statuses}"


def bench_idle_cpu(
    config: BenchConfig, leader_cpu: Figure, follower_cpu: Figure, system: System = GOELECT
) -> None:
    """CPU of each node over ``idle_seconds`` with a steady leader and no requests."""
    with system.cluster(config) as cluster:
        cluster.start(timeout=config.bound)
        leader = _settle(cluster, config).id
        time.sleep(1.0)
        pids = {n.id: n.pid for n in cluster.nodes.values() if n.pid is not None}
        mark = cluster.mark()
        t0 = time.monotonic()
        before = {n: process_cpu_seconds(pid) for n, pid in pids.items()}
        time.sleep(config.idle_seconds)
        after = {n: process_cpu_seconds(pid) for n, pid in pids.items()}
        elapsed = time.monotonic() - t0
        changes = [e for e in cluster.events[mark:] if e.kind in ("state", system.leads)]
        if changes:
            note = f"{len(changes)} state changes during the idle period"
            leader_cpu.note = follower_cpu.note = note
        for node_id in pids:
            percent = 100 * (after[node_id] - before[node_id]) / elapsed
            (leader_cpu if node_id == leader else follower_cpu).samples.append(percent)
            _say(
                config,
                f"  idle CPU {node_id} ({'leader' if node_id == leader else 'follower'}):"
                f" {percent:.2f} % of a core over {elapsed:.1f} s",
            )


def bench_leader_only_overhead(config: BenchConfig, overhead: Figure) -> None:
    """``@elect.leader_only`` on a real leader (one-node cluster) vs the plain function."""
    from flask import Flask

    from flask_goelect import LeaderElect

    app = Flask("bench_leader_only")
    app.config.update(
        GOELECT_NODE_ID="n1",
        GOELECT_NODE_ADDRESS="http://127.0.0.1:9",
        GOELECT_STATE_FILE=":memory:",
        GOELECT_ELECT_TIMEOUT=config.elect_timeout,
        GOELECT_HEARTBEAT_INTERVAL=config.heartbeat_interval,
    )
    elect = LeaderElect(app)
    try:
        if elect.wait_for_leader(config.bound) is None or not elect.is_leader:
            overhead.failures += 1
            overhead.note = "the one-node elector did not become leader"
            return

        def plain() -> int:
            return 1

        guarded = elect.leader_only(plain)
        assert guarded() == 1, "the guarded job did not run on the leader"
        number = config.overhead_calls
        for _ in range(3):
            # min over repeats: the least disturbed measurement of each.
            t_plain = min(timeit.repeat(plain, number=number, repeat=5)) / number
            t_guarded = min(timeit.repeat(guarded, number=number, repeat=5)) / number
            overhead.samples.append((t_guarded - t_plain) * 1e6)
        assert guarded() == 1 and elect.is_leader, "leadership was lost during the measurement"
        overhead.note = (
            f"plain call {t_plain * 1e9:.0f} ns, guarded {t_guarded * 1e9:.0f} ns"
            f" (last repeat, {number} calls each)"
        )
        _say(config, f"  @leader_only overhead: {overhead.samples} us per call")
    finally:
        elect.stop(transfer=False)


#: The parts of a run, in the order they run.
PARTS = ("cold", "changes", "idle", "overhead")


def make_figures(config: BenchConfig, system: System = GOELECT) -> dict[str, Figure]:
    """The figures a run of ``system`` fills (times in ms), by key; targets are ours."""
    ours = system is GOELECT
    T = config.elect_timeout
    figures = {
        "cold": Figure(
            "cold start: electors started -> agreed leader",
            "ms",
            target=f"median <= {1.5 * T:g} ms" if ours else "",
        ),
        "failover": Figure(
            "failover after SIGKILL of the leader (time without a leader)",
            "ms",
            target=f"median <= {1.5 * T:g} ms" if ours else "",
        ),
        "detect": Figure("  failover part 1: SIGKILL -> first candidacy (election timer)", "ms"),
        "elect": Figure("  failover part 2: first candidacy -> new leader leads", "ms"),
        "steady": Figure(
            f"failover after SIGKILL of the leader after {config.steady:g} s of steady leadership",
            "ms",
            target=f"median <= {T + 5:g} ms, p99 <= {1.3 * T:g} ms" if ours else "",
        ),
        "steady_detect": Figure("  after steady: SIGKILL -> first candidacy", "ms"),
        "steady_elect": Figure("  after steady: first candidacy -> new leader leads", "ms"),
        "steady_won": Figure(
            "    first candidacy -> election won ('leader' signal: pre-vote and vote rounds)", "ms"
        ),
        "steady_lease": Figure("    election won -> leader acts ('lease': leader task runs)", "ms"),
        "handover": Figure(
            "hand-over after SIGTERM of the leader", "ms", target="median <= 8 ms, p90 <= 15 ms"
        ),
        "handover_ask": Figure(
            "  hand-over part 1: SIGTERM -> the target's candidacy (drain, TimeoutNow, its write)",
            "ms",
        ),
        "handover_elect": Figure("  hand-over part 2: candidacy -> new leader leads", "ms"),
        "handover_won": Figure("    candidacy -> election won (the vote round)", "ms"),
        "handover_lease": Figure("    election won -> leader acts (leader task runs)", "ms"),
        "leader_cpu": Figure("idle CPU, leader", "% of a core", target="<= 1 %" if ours else ""),
        "follower_cpu": Figure(
            "idle CPU, follower", "% of a core", target="<= 1 %" if ours else ""
        ),
        "overhead": Figure("@elect.leader_only overhead per call", "us", target="<= 2 us"),
        "spawn": Figure("node process: spawn -> serving (not in cold start)", "ms"),
    }
    if not system.hands_over:
        for key in [k for k in figures if k.startswith("handover")]:
            del figures[key]
    if not ours:
        # pysyncobj leads the moment it wins: no lease to wait for.
        for key in ("overhead", "steady_won", "steady_lease"):
            del figures[key]
    if config.steady <= 0:
        for key in [k for k in figures if k.startswith("steady")]:
            del figures[key]
    return figures


def measure(
    config: BenchConfig, figures: dict[str, Figure], part: str, system: System = GOELECT
) -> None:
    """Run one part of :data:`PARTS` on ``system``, adding to ``figures``."""
    label = f"{system.name}, {config.nodes} nodes:"
    if part == "cold":
        _say(config, f"{label} cold start, {config.rounds} rounds")
        bench_cold_start(config, figures["cold"], figures["spawn"], system)
    elif part == "changes":
        what = "failover and hand-over" if "handover" in figures else "failover"
        _say(config, f"{label} {what}, {config.rounds} rounds each")
        phases = (figures["detect"], figures["elect"])
        steady = tuple(
            figures[k]
            for k in ("steady", "steady_detect", "steady_elect", "steady_won", "steady_lease")
            if k in figures
        )
        handover_phases = tuple(
            figures[k]
            for k in ("handover_ask", "handover_elect", "handover_won", "handover_lease")
            if k in figures
        )
        bench_changes(
            config,
            figures["failover"],
            figures.get("handover"),
            system,
            phases,
            steady,
            handover_phases or None,
        )
    elif part == "idle":
        _say(config, f"{label} idle CPU over {config.idle_seconds:g} s")
        bench_idle_cpu(config, figures["leader_cpu"], figures["follower_cpu"], system)
    elif part == "overhead":
        if "overhead" in figures:
            _say(config, "@leader_only overhead")
            bench_leader_only_overhead(config, figures["overhead"])
    else:
        raise ValueError(f"unknown part {part!r}: one of {', '.join(PARTS)}")


def results(
    config: BenchConfig, figures: dict[str, Figure], duration: float, system: System = GOELECT
) -> dict[str, Any]:
    """The results of a run as a JSON-ready dict."""
    return {
        "benchmark": "bench.election",
        "system": system.name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(duration, 1),
        "config": {
            "nodes": config.nodes,
            "rounds": config.rounds,
            "elect_timeout_ms": config.elect_timeout,
            "heartbeat_interval_ms": config.heartbeat_interval,
            "job_interval_ms": config.job_interval,
            "idle_seconds": config.idle_seconds,
            "steady_seconds": config.steady,
            "overhead_calls": config.overhead_calls,
            "host": config.host,
        },
        "machine": _machine(),
        "figures": [dict(f.summary(), key=key) for key, f in figures.items()],
        "failures": sum(f.failures for f in figures.values()),
    }


def run(
    config: BenchConfig, system: System = GOELECT, parts: Iterable[str] = PARTS
) -> dict[str, Any]:
    """Run ``parts`` of the benchmark on ``system``; returns the results as a JSON-ready dict."""
    t_total = time.monotonic()
    figures = make_figures(config, system)
    for part in parts:
        measure(config, figures, part, system)
    return results(config, figures, time.monotonic() - t_total, system)


def _machine() -> dict[str, Any]:
    import gevent

    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "gevent": gevent.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def format_table(results: dict[str, Any], title: str | None = None) -> str:
    """The results as a plain-text table, under ``title`` (default: what ran, where)."""
    c = results["config"]
    head = title or (
        f"{results.get('system', GOELECT.name)} election: {c['nodes']} nodes on {c['host']},"
        " election timeout"
        f" {c['elect_timeout_ms']} ms, heartbeat {c['heartbeat_interval_ms']} ms,"
        f" {c['rounds']} rounds ({results['machine']['cpus']} CPUs,"
        f" Python {results['machine']['python']})"
    )
    rows = [("figure", "unit", "n", "median", "p90", "p99", "max", "target", "failed")]
    for f in results["figures"]:
        rows.append(
            (
                f["name"],
                f["unit"],
                str(f["n"]),
                _fmt(f["median"]),
                _fmt(f["p90"]),
                _fmt(f.get("p99")),
                _fmt(f["max"]),
                f["target"],
                str(f["failures"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head, ""]
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(widths[i]) if i in (0, 1, 7) else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {f['name']}: {f['note']}" for f in results["figures"] if f["note"]]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def write_results(results: dict[str, Any], path: str | os.PathLike[str] | None) -> list[Path]:
    """Write the JSON to ``path`` (if given) and to ``bench/results/``; returns the paths."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    c = results["config"]
    system = "" if results.get("system", GOELECT.name) == GOELECT.name else "-pysyncobj"
    paths = [RESULTS_DIR / f"election{system}-{c['nodes']}n-{c['rounds']}r-{stamp}.json"]
    if path is not None:
        paths.append(Path(path))
    text = json.dumps(results, indent=2) + "\n"
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.election",
        description="Measure elections of real example-app processes on loopback.",
    )
    parser.add_argument(
        "--system",
        choices=sorted(SYSTEMS),
        default="goelect",
        help="what runs on the nodes: the example app (default) or pysyncobj",
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20, help="rounds of each change")
    parser.add_argument("--elect-timeout", type=int, default=200, metavar="MS")
    parser.add_argument("--heartbeat-interval", type=int, default=50, metavar="MS")
    parser.add_argument(
        "--job-interval",
        type=int,
        default=0,
        metavar="MS",
        help="the example app's leader-only job (default 0: off, so idle CPU is the election's)",
    )
    parser.add_argument("--idle-seconds", type=float, default=20.0, metavar="S")
    parser.add_argument(
        "--steady",
        type=float,
        default=10.0,
        metavar="S",
        help="also fail over after S seconds of steady leadership (default 10; 0: not)",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2 (a failover needs another node)")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        nodes=args.nodes,
        rounds=args.rounds,
        elect_timeout=args.elect_timeout,
        heartbeat_interval=args.heartbeat_interval,
        job_interval=args.job_interval,
        idle_seconds=args.idle_seconds,
        steady=args.steady,
        verbose=not args.quiet,
    )


def report(results: dict[str, Any], json_path: str | None) -> int:
    """Print the table and the JSON, write the files; exit status 1 if a round failed."""
    print(format_table(results))
    print()
    shown = dict(results)
    shown["figures"] = [{k: v for k, v in f.items() if k != "samples"} for f in results["figures"]]
    print(json.dumps(shown, indent=2))
    for path in write_results(results, json_path):
        print(f"results written to {path}")
    return 1 if results["failures"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    system = SYSTEMS[args.system]
    if system is PYSYNCOBJ:
        from bench.pysyncobj_cluster import available

        if not available():
            print("pysyncobj is not installed: pip install -e '.[bench]'", file=sys.stderr)
            return 2
    return report(run(config_from_args(args), system), args.json)


if __name__ == "__main__":
    sys.exit(main())
