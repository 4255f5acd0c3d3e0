"""One pysyncobj node for the comparison benchmark: ``python -m bench.pysyncobj_node``.

::

    python -m bench.pysyncobj_node --node-id n1 --listen 127.0.0.1:7001 \\
        --peers n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003 \\
        --elect-timeout 200 --heartbeat-interval 50 --state-dir /tmp/x

A ``SyncObj`` with no replicated data: only its Raft election runs, as in a
flask-goelect node. Its timings are set to match flask-goelect's (see
:func:`sync_obj_conf`). It reports its changes as JSON lines on stdout, in the
format of the example app's nodes (``event``, ``node``, ``t``, ``mono`` =
``time.monotonic()``), so that :class:`goelect_harness.cluster.LocalCluster` can
follow it::

    ready           the process runs (``pid``)
    started         the SyncObj exists: its election timer runs (``term``, ``pid``)
    state           its Raft state changed (``state``, ``previous_state``, ``term``)
    leader          this node became the leader (``term``)
    leader_changed  the leader this node knows changed (``leader``, ``term``)
    stopping        a stop signal arrived (``signal``)
    stopped         the SyncObj is destroyed

``state`` and ``leader`` are printed by pysyncobj's ``onStateChanged`` callback,
in its tick thread, the moment the state changes; ``leader_changed`` by a tick
callback (pysyncobj runs one tick per received message, and at least one per
``autoTickPeriod``), so no extra polling thread adds CPU to the idle figure.
SIGTERM or SIGINT destroys the SyncObj and exits with status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["STATES", "emit", "main", "parse_args", "sync_obj_conf"]

#: pysyncobj's ``_RAFT_STATE`` values, named as flask-goelect names its states.
STATES = {0: "follower", 1: "candidate", 2: "leader"}

_emit_lock = threading.Lock()


def emit(event: str, node: str, **fields: Any) -> None:
    """Print one event line on stdout and flush it."""
    record = {"event": event, "node": node, "t": time.time(), "mono": time.monotonic()}
    record.update(fields)
    line = json.dumps(record, separators=(",", ":"))
    with _emit_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return text


def _peers(text: str) -> dict[str, str]:
    peers: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        node_id, sep, address = entry.partition("=")
        if not sep or not node_id:
            raise argparse.ArgumentTypeError(f"expected id=HOST:PORT, not {entry!r}")
        peers[node_id] = _address(address)
    return peers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pysyncobj_node",
        description="Run one pysyncobj node (election only) that prints its changes as JSON.",
    )
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--listen", required=True, type=_address, metavar="HOST:PORT")
    parser.add_argument(
        "--peers",
        required=True,
        type=_peers,
        help="every node as comma-separated id=HOST:PORT (this node included)",
    )
    parser.add_argument("--elect-timeout", type=int, default=200, metavar="MS")
    parser.add_argument("--heartbeat-interval", type=int, default=50, metavar="MS")
    parser.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="keep the journal (term, vote, log) here; default: in memory",
    )
    parser.add_argument("--start-at", type=float, default=None, metavar="UNIX_TIME")
    parser.add_argument("--exit-with-parent", action="store_true")
    return parser.parse_args(argv)


def sync_obj_conf(
    elect_timeout_ms: int, heartbeat_ms: int, journal: str | None = None, **callbacks: Any
) -> Any:
    """pysyncobj's ``SyncObjConf`` with flask-goelect's timings.

    flask-goelect draws its election timeout in [T, 2T) and sends a heartbeat
    every heartbeat interval; a leader without replies from a majority for T
    steps down. The same here: ``raftMinTimeout`` = T, ``raftMaxTimeout`` = 2T,
    ``appendEntriesPeriod`` = the heartbeat interval, ``leaderFallbackTimeout``
    = T. ``connectionRetryTime`` (default 5 s) is lowered to the heartbeat
    interval so that a restarted node is reconnected at once: that favours
    pysyncobj, never us. Everything else is pysyncobj's default (its tick
    thread wakes at least every ``autoTickPeriod`` = 50 ms).
    """
    from pysyncobj import SyncObjConf

    T = elect_timeout_ms / 1000
    heartbeat = heartbeat_ms / 1000
    return SyncObjConf(
        raftMinTimeout=T,
        raftMaxTimeout=2 * T,
        appendEntriesPeriod=heartbeat,
        leaderFallbackTimeout=T,
        connectionTimeout=max(3.5, 2 * T),
        connectionRetryTime=heartbeat,
        journalFile=journal,
        **callbacks,
    )


class _Reporter:
    """Turns pysyncobj's callbacks into event lines."""

    def __init__(self, node_id: str, names: dict[str, str]) -> None:
        self.node_id = node_id
        self.names = names  # "host:port" -> node id
        self.obj: Any = None
        self._leader: object = None

    def on_state_changed(self, old: int, new: int) -> None:
        term = self.obj._getTerm() if self.obj is not None else None
        emit(
            "state",
            self.node_id,
            state=STATES.get(new, str(new)),
            previous_state=STATES.get(old, str(old)),
            term=term,
        )
        if new == 2:
            emit("leader", self.node_id, term=term)

    def on_tick(self) -> None:
        obj = self.obj
        if obj is None:
            return
        leader = obj._getLeader()
        if leader != self._leader:
            self._leader = leader
            address = getattr(leader, "address", None)
            name = self.names.get(address, address) if isinstance(address, str) else None
            emit("leader_changed", self.node_id, leader=name, term=obj._getTerm())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    node_id: str = args.node_id
    peers: dict[str, str] = dict(args.peers)
    peers.setdefault(node_id, args.listen)
    if peers[node_id] != args.listen:
        print(f"--peers gives {node_id} another address than --listen", file=sys.stderr)
        return 2

    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    from pysyncobj import SyncObj

    emit("ready", node_id, address=args.listen, pid=os.getpid())
    parent = os.getppid()
    if args.start_at is not None:
        stop.wait(max(0.0, args.start_at - time.time()))
    if stop.is_set():
        return 0

    journal = None
    if args.state_dir is not None:
        Path(args.state_dir).mkdir(parents=True, exist_ok=True)
        journal = str(Path(args.state_dir) / f"pysyncobj-{node_id}.journal")
    reporter = _Reporter(node_id, {address: peer for peer, address in peers.items()})
    conf = sync_obj_conf(
        args.elect_timeout,
        args.heartbeat_interval,
        journal,
        onStateChanged=reporter.on_state_changed,
    )
    others = [address for peer, address in peers.items() if peer != node_id]
    obj = SyncObj(args.listen, others, conf)
    reporter.obj = obj
    obj.addOnTickCallback(reporter.on_tick)
    emit("started", node_id, term=obj._getTerm(), pid=os.getpid())

    # The main thread must stay alive: pysyncobj's tick thread stops when it ends.
    while not stop.wait(1.0):
        if args.exit_with_parent and os.getppid() != parent:
            received.append("parent exited")
            break
    emit("stopping", node_id, signal=received[0] if received else None)
    obj.destroy_synchronous()
    emit("stopped", node_id, term=obj._getTerm())
    return 0


if __name__ == "__main__":
    sys.exit(main())
