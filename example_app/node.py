"""One node of the example app on ``gevent.pywsgi``: ``python -m example_app``.

::

    python -m example_app --node-id n1 --listen 127.0.0.1:5001 \\
        --peers n1=http://127.0.0.1:5001,n2=http://127.0.0.1:5002,n3=http://127.0.0.1:5003

With ``--secret`` (or the ``GOELECT_SECRET`` environment variable, better:
a command line is visible to every user of the host) and ``--cluster`` (or
``GOELECT_CLUSTER``) every RPC is signed and other clusters are refused.

The process is monkey-patched by ``example_app/__main__.py`` before anything
else is imported (the library itself never patches). The server binds first,
then the elector starts, so that peers never find the node electing but not
listening. SIGTERM or SIGINT stops it gracefully: the leader hands leadership
over (``elect.stop(transfer=True)``), then the server stops, exit status 0.

Behind a load balancer that sends leader-only requests to the node whose
``GET /_goelect/leader`` answers 200, ``--drain-ms`` makes a stopping leader
step out of the balancer before it hands over: for that long its ``/leader``
answers 503 while it still holds its lease and serves every request (the
balancer moves away and holds new requests, having no leader to send them
to), then it hands over, finishes the requests it accepted, and exits. See
``docs/deployment.md``.

**Events on stdout**, one JSON object per line (flushed), for launchers that
follow the node without polling. Each has ``event``, ``node``, ``t`` (Unix
time) and ``mono`` (``time.monotonic()``: one clock for every process of a
Linux machine, so a launcher can subtract its own readings)::

    ready     the server listens (``address``, ``pid``)
    started   the elector runs (``term``, ``pid``)
    state     this node's state changed (``state``, ``previous_state``, ``term``,
              ``leader``, ``reason``)
    leader    this node won an election (``term``)
    lease     this node holds a valid lease in a new term: it acts as the leader
              (``term``)
    leader_changed  the leader this node knows changed (``leader``, ``term``)
    stopping  a stop signal arrived (``signal``)
    draining  the stopping leader answers 503 on /leader for ``ms`` before it hands over
    stopped   the elector and the server are stopped (``term``, ``state``)

Logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.monkey
from gevent.pywsgi import WSGIServer

from flask_goelect.core import ConfigError
from flask_goelect.serving import NoDelayWSGIHandler

from .events import EventPrinter, emit

__all__ = ["build_config", "main", "parse_args", "served_config"]

log = logging.getLogger("example_app.node")


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--listen must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _positive_ms(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive number of milliseconds, not {text!r}"
        )
    return value


def _non_negative_ms(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected milliseconds >= 0, not {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m example_app",
        description="Run one node of the flask-goelect example app on gevent.pywsgi.",
    )
    parser.add_argument("--node-id", required=True, help="this node's id, e.g. n1")
    parser.add_argument(
        "--listen",
        required=True,
        type=_listen_address,
        metavar="HOST:PORT",
        help="where to serve, e.g. 127.0.0.1:5001",
    )
    parser.add_argument(
        "--peers",
        default="",
        help="every node as comma-separated id=url (this node included), e.g."
        " n1=http://127.0.0.1:5001,n2=http://127.0.0.1:5002,n3=http://127.0.0.1:5003",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="the base URL peers reach this node at (default: its entry in --peers,"
        " else http://HOST:PORT of --listen)",
    )
    parser.add_argument(
        "--secret",
        default=None,
        metavar="SECRET",
        help="the secret shared by the nodes (GOELECT_SECRET, at least 16 characters):"
        " every RPC is signed with it; 'new,old' rotates keys. Prefer the GOELECT_SECRET"
        " environment variable: a command line is visible to every user of the host",
    )
    parser.add_argument(
        "--cluster",
        default=None,
        metavar="NAME",
        help="the cluster's name (GOELECT_CLUSTER), the same on every node; requests of"
        " another cluster are refused (default: the GOELECT_CLUSTER environment variable,"
        " else none)",
    )
    parser.add_argument(
        "--elect-timeout", type=_positive_ms, default=None, metavar="MS", help="default 2000"
    )
    parser.add_argument(
        "--heartbeat-interval", type=_positive_ms, default=None, metavar="MS", help="default 200"
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="folder of the state file goelect-<node id>.json (default: the app's instance folder)",
    )
    parser.add_argument(
        "--ledger",
        default=None,
        metavar="PATH",
        help="the ledger file of the leader-only job (default: ledger.jsonl in the"
        " instance folder)",
    )
    parser.add_argument(
        "--job-interval",
        type=_non_negative_ms,
        default=None,
        metavar="MS",
        help="milliseconds between two runs of the leader-only job; 0 disables it (default 1000)",
    )
    parser.add_argument(
        "--start-at",
        type=float,
        default=None,
        metavar="UNIX_TIME",
        help="serve at once but start the elector at this Unix time (launchers use it to"
        " start several nodes' electors together)",
    )
    parser.add_argument(
        "--drain-ms",
        type=_non_negative_ms,
        default=0,
        metavar="MS",
        help="when the leader gets SIGTERM or SIGINT: for MS milliseconds its"
        " GET /_goelect/leader answers 503 while it still leads and serves, so that a load"
        " balancer checking that route moves away before the hand-over; at least the"
        " balancer's check interval times its fall count plus one check (default 0: hand"
        " over at once)",
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop gracefully when the process that started this one exits",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="level of the log on stderr (default INFO)"
    )
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``create_app`` config for the command-line options."""
    host, port = args.listen
    config: dict[str, Any] = {
        "GOELECT_NODE_ID": args.node_id,
        "GOELECT_PEERS": args.peers,
        # The elector starts once the server listens (see main()).
        "GOELECT_AUTOSTART": False,
    }
    listed = any(
        entry.strip().partition("=")[0].strip() == args.node_id for entry in args.peers.split(",")
    )
    if args.address:
        config["GOELECT_NODE_ADDRESS"] = args.address
    elif not listed:
        shown = f"[{host}]" if ":" in host else host
        config["GOELECT_NODE_ADDRESS"] = f"http://{shown}:{port}"
    # Not given: create_app reads GOELECT_SECRET and GOELECT_CLUSTER from the environment.
    if args.secret:
        config["GOELECT_SECRET"] = args.secret
    if args.cluster is not None:
        config["GOELECT_CLUSTER"] = args.cluster
    if args.elect_timeout is not None:
        config["GOELECT_ELECT_TIMEOUT"] = args.elect_timeout
    if args.heartbeat_interval is not None:
        config["GOELECT_HEARTBEAT_INTERVAL"] = args.heartbeat_interval
    if args.state_dir is not None:
        config["GOELECT_STATE_FILE"] = str(Path(args.state_dir) / f"goelect-{args.node_id}.json")
    if args.ledger is not None:
        config["EXAMPLE_LEDGER"] = args.ledger
    if args.job_interval is not None:
        config["EXAMPLE_JOB_INTERVAL"] = args.job_interval
    if getattr(args, "drain_ms", 0):
        config["GOELECT_HANDOVER_DRAIN"] = args.drain_ms
    return config


def served_config(text: str) -> dict[str, Any]:
    """The ``create_app`` config of a node under a WSGI server, from its options
    (``EXAMPLE_ARGS``); the log goes to stderr with the node id and pid."""
    args = parse_args(shlex.split(text))
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {args.node_id} %(process)d %(levelname)s %(name)s: %(message)s",
    )
    config = build_config(args)
    config["GOELECT_AUTOSTART"] = True
    return config


def _watch_parent(parent: int, stop: gevent.event.Event) -> None:
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("the parent process %d exited: stopping", parent)
            stop.set()
            return
        gevent.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    if not gevent.monkey.is_module_patched("socket"):
        print(
            "example_app.node must run in a gevent-patched process: use python -m example_app",
            file=sys.stderr,
        )
        return 2
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {args.node_id} %(levelname)s %(name)s: %(message)s",
    )
    node_id: str = args.node_id

    stop = gevent.event.Event()
    received: list[str] = []

    def on_signal(signum: int) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal, signum)

    from example_app.factory import create_app, elect

    try:
        app = create_app(build_config(args))
    except ConfigError as exc:  # a wrong option or GOELECT_* variable: say which, and how
        print(f"python -m example_app: {exc}", file=sys.stderr)
        return 2
    EventPrinter.install(app)
    host, port = args.listen
    server = WSGIServer(
        (host, port), app, handler_class=NoDelayWSGIHandler, log=None, error_log=log
    )
    try:
        server.start()
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    emit("ready", node_id, address=elect.status()["address"], pid=os.getpid())

    if args.exit_with_parent:
        gevent.spawn(_watch_parent, os.getppid(), stop)
    if args.start_at is not None:
        stop.wait(max(0.0, args.start_at - time.time()))
    if not stop.is_set():
        try:
            elect.start()
        except Exception as exc:  # the state file is locked by another elector, unreadable...
            log.error("the elector of node %s cannot start: %s", node_id, exc)
            server.stop(timeout=1.0)
            return 1
        emit("started", node_id, term=elect.term, pid=os.getpid())

    stop.wait()
    emit("stopping", node_id, signal=received[0] if received else None)
    if args.drain_ms and elect.is_leader:
        emit("draining", node_id, ms=args.drain_ms)
    # Hand leadership over while the server still answers (a leader first steps out
    # of its balancer for --drain-ms: GOELECT_HANDOVER_DRAIN), then stop accepting
    # and finish the requests already accepted.
    elect.stop(transfer=True)
    server.stop(timeout=1.0)
    emit("stopped", node_id, term=elect.term, state=elect.state)
    return 0
