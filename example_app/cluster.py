"""The example's local cluster from the command line: ``python -m example_app.cluster``.

Run from the repository root::

    python -m example_app.cluster --nodes 3            # run until Ctrl-C
    python -m example_app.cluster --nodes 3 --demo     # failover and hand-over, measured
    python -m example_app.cluster --nodes 3 --observers 2   # and two no-vote nodes
    python -m example_app.cluster --demo --server gunicorn --workers 3   # 3 workers per node

Every leadership change is printed as it happens. With ``--demo`` the launcher
waits for a leader, SIGKILLs it and measures the time without a leader, restarts
the killed node, then SIGTERMs the new leader (a graceful hand-over) and
measures that, stops everything and prints a summary; the exit status is 0 only
if both changes of leader happened within generous bounds and the ledger shows
no violation.

The nodes are started, watched and stopped by
:class:`goelect_harness.cluster.LocalCluster`, the process harness the system
tests and the benchmarks use too (it lives next to this package, at the
repository root, and is not installed with flask-goelect).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from goelect_harness.cluster import SERVERS, ClusterError, Event, LocalCluster

from .ledger import check_ledger

__all__ = ["main"]


class _Printer:
    """Prints each leadership change as it arrives, with the time since start."""

    def __init__(self, cluster_t0: Callable[[], float | None]) -> None:
        self._t0 = cluster_t0
        self._lock = threading.Lock()

    def say(self, text: str, mono: float | None = None) -> None:
        t0 = self._t0()
        when = (mono if mono is not None else time.monotonic()) - (t0 if t0 is not None else 0)
        with self._lock:
            print(f"  +{when:7.3f}s  {text}", flush=True)

    def __call__(self, event: Event) -> None:
        text = self.describe(event)
        if text is not None:
            self.say(text, event.mono)

    @staticmethod
    def describe(event: Event) -> str | None:
        """One line for a change worth showing, None for the others."""
        d, node, kind = event.data, event.node, event.kind
        if kind == "started":
            return f"{node} started (pid {d.get('pid', '?')})"
        if kind == "leader":
            return f"{node} won the election of term {d.get('term')}"
        if kind == "lease":
            return f"{node} LEADS term {d.get('term')} (holds the lease)"
        if kind == "leader_changed":
            if d.get("leader") is None:
                return f"{node} knows no leader (term {d.get('term')})"
            if d.get("leader") != node:
                return f"{node} follows {d.get('leader')} (term {d.get('term')})"
            return None
        if kind == "stopping":
            return f"{node} got {d.get('signal')}: stopping gracefully"
        if kind == "stopped":
            return f"{node} stopped"
        if kind == "exit":
            return f"{node} exited (status {d.get('returncode')})"
        return None


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m example_app.cluster",
        description="Run a local cluster of example-app nodes (separate processes on"
        " loopback) and print every leadership change.",
    )
    parser.add_argument("--nodes", type=int, default=3, help="how many voters (default 3)")
    parser.add_argument(
        "--observers",
        type=int,
        default=0,
        help="how many observers besides (no-vote nodes o1...; default 0)",
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=5001,
        help="first port (default 5001); free ports are picked if these are busy",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--elect-timeout", type=int, default=200, metavar="MS")
    parser.add_argument("--heartbeat-interval", type=int, default=50, metavar="MS")
    parser.add_argument(
        "--job-interval",
        type=int,
        default=500,
        metavar="MS",
        help="milliseconds between the leader-only job's ledger lines (default 500)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="kill the leader, restart it, stop the new leader gracefully, measure, exit",
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="keep state, logs and the ledger here (default: a temporary folder, removed)",
    )
    parser.add_argument(
        "--server",
        choices=SERVERS,
        default="pywsgi",
        help="what serves each node: pywsgi (python -m example_app, one process), gunicorn"
        " (gevent workers), uwsgi (a master and its processes), waitress or flask (flask run)"
        " (default pywsgi)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes per node, for gunicorn and uwsgi (default 3): they share"
        " one elector",
    )
    args = parser.parse_args(argv)
    if args.workers is not None and args.server not in ("gunicorn", "uwsgi"):
        parser.error("--workers goes with --server gunicorn or --server uwsgi")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if args.observers < 0:
        parser.error("--observers must be at least 0")
    if args.demo and args.nodes < 2:
        parser.error("--demo needs at least 2 nodes (3 to survive a failure)")
    return args


def server_args(server: str, workers: int | None) -> list[str]:
    """The options that give each node ``workers`` processes under ``server``."""
    count = str(workers or 3)
    if server == "gunicorn":
        return ["-k", "gevent", "-w", count]
    if server == "uwsgi":
        return ["--master", "--processes", count]
    return []


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _run_demo(cluster: LocalCluster, printer: _Printer) -> int:
    bound = max(10.0, 20 * cluster.elect_timeout / 1000)
    t0 = cluster.t0 or time.monotonic()
    leader = cluster.wait_for_leader(timeout=bound)
    cold = leader.mono - t0
    print(f"\n== every node agrees: {leader.id} leads term {leader.term}", flush=True)
    time.sleep(1.0)

    killed = leader.id
    print(f"\n== SIGKILL the leader {killed} (pid {cluster.nodes[killed].pid})", flush=True)
    mark = cluster.mark()
    killed_at = cluster.kill(killed)
    lease = cluster.wait_for_event(
        lambda e: e.kind == "lease" and e.node != killed and e.mono > killed_at, bound, since=mark
    )
    if lease is None:
        print(f"\nFAILED: no new leader within {bound:g}s of the SIGKILL", flush=True)
        return 1
    failover = lease.mono - killed_at
    new = cluster.wait_for_leader(timeout=bound, exclude=[killed], min_term=leader.term + 1)
    print(
        f"== failover: {lease.node} leads term {lease.data.get('term')} after"
        f" {_ms(failover)} without a leader",
        flush=True,
    )

    print(f"\n== restart {killed} (it keeps its term and vote from its state file)", flush=True)
    cluster.start_node(killed)
    new = cluster.wait_for_leader(timeout=bound, min_term=new.term)
    time.sleep(1.0)

    stopping = new.id
    print(
        f"\n== SIGTERM the leader {stopping} (pid {cluster.nodes[stopping].pid}):"
        " a graceful hand-over",
        flush=True,
    )
    mark = cluster.mark()
    signalled_at = cluster.terminate(stopping)
    lease = cluster.wait_for_event(
        lambda e: e.kind == "lease" and e.node != stopping and e.mono > signalled_at,
        bound,
        since=mark,
    )
    status = cluster.wait_exit(stopping, bound)
    if lease is None:
        print(f"\nFAILED: no new leader within {bound:g}s of the SIGTERM", flush=True)
        return 1
    handover = lease.mono - signalled_at
    print(
        f"== hand-over: {lease.node} leads term {lease.data.get('term')}"
        f" {_ms(handover)} after the SIGTERM; {stopping} exited with status {status}",
        flush=True,
    )
    final = cluster.wait_for_leader(timeout=bound, exclude=[stopping])
    time.sleep(0.5)

    print("\n== stopping every node", flush=True)
    cluster.stop()
    entries = cluster.ledger_entries()
    violations = check_ledger(entries)
    terms = sorted({e.term for e in entries})
    writers = " ".join(f"{t}:{next(e.node for e in entries if e.term == t)}" for t in terms)
    print(
        "\nSummary"
        f"\n  nodes                          {len(cluster.nodes)} on {cluster.host},"
        f" election timeout {cluster.elect_timeout} ms,"
        f" heartbeat {cluster.heartbeat_interval} ms"
        f"\n  start to an agreed leader      {cold:.3f} s (includes starting Python)"
        f"\n  failover after SIGKILL         {_ms(failover)} without a leader"
        f"\n  hand-over after SIGTERM        {_ms(handover)} (exit status {status})"
        f"\n  final leader                   {final.id} (term {final.term})"
        f"\n  ledger                         {len(entries)} lines, term:writer {writers}"
        f"\n  ledger violations              {len(violations)}",
        flush=True,
    )
    for violation in violations:
        print(f"    {violation}", flush=True)
    if violations or status != 0:
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    cluster = LocalCluster(
        args.nodes,
        observers=args.observers,
        host=args.host,
        base_port=args.base_port,
        elect_timeout=args.elect_timeout,
        heartbeat_interval=args.heartbeat_interval,
        job_interval=args.job_interval,
        state_dir=args.state_dir,
        server=args.server,
        server_args=server_args(args.server, args.workers),
    )
    printer = _Printer(lambda: cluster.t0)
    cluster.on_event = printer

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # A shell without job control starts background commands with SIGINT ignored:
    # take it back, so that Ctrl-C (or kill -INT) always stops the nodes cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        print(
            f"starting {len(cluster.nodes)} nodes (state, logs and ledger in {cluster.state_dir}):",
            flush=True,
        )
        for node in cluster.nodes.values():
            role = "  (observer)" if node.id in cluster.observers else ""
            print(f"  {node.id}  {node.address}/{role}", flush=True)
        cluster.start()
        if args.demo:
            return _run_demo(cluster, printer)
        print("Ctrl-C stops every node.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping every node", flush=True)
        return 0
    except ClusterError as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
