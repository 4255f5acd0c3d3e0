"""A local cluster of example-app nodes, each a separate process on loopback.

The demo (``python -m example_app.cluster``), the benchmarks and the system
tests all start their nodes with it::

    with LocalCluster(3, elect_timeout=200, heartbeat_interval=50) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader(timeout=10)
        killed_at = cluster.kill(leader.id)
        lease = cluster.wait_for_event(
            lambda e: e.kind == "lease" and e.node != leader.id and e.mono > killed_at, 10
        )

Nodes report their changes as JSON lines on stdout (see :mod:`example_app.node`);
the cluster keeps them in :attr:`LocalCluster.events`. Their ``mono`` field is
``time.monotonic()`` of the node, the same clock as the launcher's on Linux, so
``event.mono - killed_at`` is a time without a leader measured without polling.
Every child is signalled by its own PID, never by name.

A node is ``python -m example_app`` (one process on ``gevent.pywsgi``) by
default. With ``server=`` it is the example app under another WSGI server, with
as many worker processes as that server is told to run (``server_args``):
``gunicorn``, ``uwsgi`` (the ``pyuwsgi`` wheel), ``waitress`` or ``flask`` (``flask
run``), all loading ``example_app.wsgi:app`` with the same options. Such a node
counts as started when its ``/_goelect/health`` answers 200; its leadership
events come from its elector process. Signals that stop or pause a node go to
its whole process group (the server's master and workers), except SIGTERM and
SIGHUP, which go to the server's master, as an operator would send them.

Another program that prints the same event lines and takes the same basic
options (the benchmark's pysyncobj node) runs in a subclass that sets
:attr:`LocalCluster.node_module` and overrides :meth:`LocalCluster.peers_option`
and :meth:`LocalCluster.node_options`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from example_app.ledger import LedgerEntry, check_ledger, read_ledger

__all__ = [
    "REPO_ROOT",
    "SERVERS",
    "ClusterError",
    "Event",
    "LeaderView",
    "LocalCluster",
    "Node",
    "free_ports",
    "process_cpu_seconds",
]

#: The repository root: the nodes' working directory and first ``PYTHONPATH``
#: entry, so that ``python -m example_app`` (or the benchmark's node module)
#: imports the code of this checkout, installed or not.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: The servers a node can run under (see :meth:`LocalCluster.server_command`).
SERVERS = ("pywsgi", "gunicorn", "uwsgi", "waitress", "flask")

#: Where :func:`free_ports` looks for consecutive free ports when no base port is
#: given: below the usual ephemeral range (32768-60999), so that a port of a
#: stopped node is not taken by an outgoing connection before the node restarts.
_PORT_RANGE = (20000, 32000)


class ClusterError(RuntimeError):
    """A node failed to start, or the cluster did not reach the state waited for."""


@dataclass(frozen=True)
class Event:
    """One line a node printed: ``kind`` is its ``event`` field.

    ``mono`` is the node's ``time.monotonic()`` when it printed the line (or the
    launcher's when the line had none); ``index`` its position in
    :attr:`LocalCluster.events`. The launcher adds ``exit`` events (``data``
    has ``returncode``) when a node's output ends.
    """

    index: int
    node: str
    kind: str
    mono: float
    data: dict[str, Any]


@dataclass(frozen=True)
class LeaderView:
    """A leader every running node agrees on, seen at launcher time ``mono``."""

    id: str
    term: int
    mono: float


@dataclass
class Node:
    """One node of the cluster and its current process (None when not running)."""

    id: str
    host: str
    port: int
    state_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    started_mono: float | None = None
    _reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _exited(node_id: str, event: Event) -> bool:
    return event.node == node_id and event.kind == "exit"


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the nodes' server does: a port in TIME_WAIT is free, a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = "127.0.0.1", base_port: int | None = None) -> list[int]:
    """``count`` consecutive free ports: from ``base_port`` if they are all free,
    else from a random free block (between 20000 and 32000)."""
    if base_port is not None and all(_bindable(host, base_port + i) for i in range(count)):
        return [base_port + i for i in range(count)]
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(_PORT_RANGE[0], _PORT_RANGE[1] - count)
        if all(_bindable(host, base + i) for i in range(count)):
            return [base + i for i in range(count)]
    raise ClusterError(f"found no {count} consecutive free ports on {host}")


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    # The command name (field 2) may contain spaces: count fields after its ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class LocalCluster:
    """Start, watch, signal and stop ``nodes`` example-app processes on ``host``.

    :param nodes: how many voting nodes (ids ``n1``...), or their ids.
    :param observers: how many observers (no-vote nodes: they follow the leader but
        never vote, campaign or count in a quorum; ids ``o1``...), or their ids. Every
        node's peer list marks them ``novote``.
    :param base_port: the first port to try; busy or None: free ports are picked.
    :param elect_timeout: election timeout in milliseconds.
    :param heartbeat_interval: heartbeat interval in milliseconds.
    :param job_interval: milliseconds between the leader-only job's ledger lines
        (0: no job).
    :param state_dir: where the nodes' state, logs and the ledger go; default a
        new temporary folder, removed by :meth:`close` unless ``keep``.
    :param ledger: the ledger file all nodes append to (default
        ``<state_dir>/ledger.jsonl``).
    :param on_event: called with every :class:`Event` as it arrives (from a
        reader thread; keep it short).
    :param node_args: more command-line options for every node.
    :param log_level: the nodes' log level; their logs go to ``<state_dir>/<id>.log``.
    :param server: what serves each node (one of :data:`SERVERS`; ``pywsgi`` is
        ``python -m example_app``).
    :param server_args: more options for the server (``["-k", "gevent", "-w", "3"]``
        for gunicorn, ``["--master", "--processes", "3"]`` for uWSGI...).
    """

    def __init__(
        self,
        nodes: int | Sequence[str] = 3,
        *,
        observers: int | Sequence[str] = 0,
        host: str = "127.0.0.1",
        base_port: int | None = None,
        elect_timeout: int = 200,
        heartbeat_interval: int = 50,
        job_interval: int = 100,
        state_dir: str | os.PathLike[str] | None = None,
        ledger: str | os.PathLike[str] | None = None,
        keep: bool = False,
        on_event: Callable[[Event], None] | None = None,
        node_args: Sequence[str] = (),
        log_level: str = "INFO",
        python: str = sys.executable,
        server: str = "pywsgi",
        server_args: Sequence[str] = (),
    ) -> None:
        if server not in SERVERS:
            raise ValueError(f"server must be one of {', '.join(SERVERS)}, not {server!r}")
        self.server = server
        self.server_args = list(server_args)
        ids = [f"n{i}" for i in range(1, nodes + 1)] if isinstance(nodes, int) else list(nodes)
        if not ids:
            raise ValueError(f"nodes must be a positive count or ids, not {nodes!r}")
        if isinstance(observers, int):
            observer_ids = [f"o{i}" for i in range(1, observers + 1)]
        else:
            observer_ids = list(observers)
        #: The ids of the observers (no-vote nodes).
        self.observers = frozenset(observer_ids)
        ids += observer_ids
        if len(set(ids)) != len(ids):
            raise ValueError(f"node and observer ids must be distinct, not {ids!r}")
        self.host = host
        self.elect_timeout = elect_timeout
        self.heartbeat_interval = heartbeat_interval
        self.job_interval = job_interval
        self.on_event = on_event
        self.node_args = list(node_args)
        self.log_level = log_level
        self.python = python
        self._own_dir = state_dir is None
        self.keep = keep
        self.state_dir = Path(
            tempfile.mkdtemp(prefix="goelect-cluster-") if state_dir is None else state_dir
        ).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Path(ledger) if ledger is not None else self.state_dir / "ledger.jsonl"
        ports = free_ports(len(ids), host, base_port)
        self.nodes: dict[str, Node] = {
            node_id: Node(
                node_id,
                host,
                port,
                self.state_dir / node_id,
                self.state_dir / f"{node_id}.log",
            )
            for node_id, port in zip(ids, ports, strict=True)
        }
        #: Every event of every node, in arrival order.
        self.events: list[Event] = []
        self._cond = threading.Condition()
        #: The launcher's ``time.monotonic()`` when :meth:`start` was first called.
        self.t0: float | None = None
        self._closed = False

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        running = [n.id for n in self.nodes.values() if n.running]
        return f"<LocalCluster {list(self.nodes)} running={running} dir={str(self.state_dir)!r}>"

    # -- configuration of a node --------------------------------------------------------------

    def peer_address(self, node_id: str, peer_id: str) -> str:
        """The address ``node_id`` uses to reach ``peer_id`` (override to put a proxy between)."""
        return self.nodes[peer_id].address

    #: The module every node runs: ``python -m <node_module> --node-id ... --listen ...``.
    node_module = "example_app"

    def command(self, node_id: str, start_at: float | None = None) -> list[str]:
        """The command line that runs ``node_id``: the options every node program
        takes, then :meth:`node_options`, then ``node_args`` (under another server
        than ``pywsgi``, :meth:`server_command`, with these options in the
        environment)."""
        if self.server != "pywsgi":
            return self.server_command(node_id)
        return self.node_command(node_id, start_at)

    def node_command(self, node_id: str, start_at: float | None = None) -> list[str]:
        """``python -m <node_module>`` with the node's options."""
        node = self.nodes[node_id]
        cmd = [
            self.python,
            "-m",
            self.node_module,
            "--node-id",
            node_id,
            "--listen",
            f"{node.host}:{node.port}",
            "--peers",
            self.peers_option(node_id),
            "--elect-timeout",
            str(self.elect_timeout),
            "--heartbeat-interval",
            str(self.heartbeat_interval),
            "--state-dir",
            str(node.state_dir),
            *self.node_options(node_id),
            "--exit-with-parent",
        ]
        if start_at is not None:
            cmd += ["--start-at", repr(start_at)]
        return cmd + self.node_args

    def server_command(self, node_id: str) -> list[str]:
        """The command line of ``node_id`` under :attr:`server`, serving
        ``example_app.wsgi:app`` (its options are in ``EXAMPLE_ARGS``)."""
        node = self.nodes[node_id]
        listen = f"{node.host}:{node.port}"
        bin_dir = Path(self.python).parent
        extra = self.server_args
        if self.server == "gunicorn":
            return [
                self.python,
                "-m",
                "gunicorn",
                "--bind",
                listen,
                "--graceful-timeout",
                "5",
                *extra,
                "example_app.wsgi:app",
            ]
        if self.server == "uwsgi":
            return [
                str(bin_dir / "uwsgi"),
                "--http-socket",
                listen,
                "--die-on-term",
                "--need-app",
                "--enable-threads",
                "--disable-logging",
                "--module",
                "example_app.wsgi:app",
                *extra,
            ]
        if self.server == "waitress":
            return [
                self.python,
                "-m",
                "waitress",
                f"--listen={listen}",
                *extra,
                "example_app.wsgi:app",
            ]
        # flask run: the development server, without its reloader.
        return [
            self.python,
            "-m",
            "flask",
            "--app",
            "example_app.wsgi:app",
            "run",
            "--host",
            node.host,
            "--port",
            str(node.port),
            "--no-reload",
            "--no-debugger",
            *extra,
        ]

    def server_environment(self, node_id: str) -> dict[str, str]:
        """What a node under another server than ``pywsgi`` reads its options from."""
        options = self.node_command(node_id)[3:]  # after python -m <module>
        options.remove("--exit-with-parent")
        return {"EXAMPLE_ARGS": shlex.join(options), "EXAMPLE_EVENTS": "1"}

    def peers_option(self, node_id: str) -> str:
        """The ``--peers`` value of ``node_id``: ``id=url`` for every node, as
        :meth:`peer_address` says ``node_id`` reaches it, observers marked ``novote``."""
        node = self.nodes[node_id]
        addresses = {
            peer_id: node.address if peer_id == node_id else self.peer_address(node_id, peer_id)
            for peer_id in self.nodes
        }
        return ",".join(
            f"{peer_id}={url}" + (" novote" if peer_id in self.observers else "")
            for peer_id, url in addresses.items()
        )

    def node_options(self, node_id: str) -> list[str]:
        """The options of the example app's nodes that another node program may not
        take: the shared ledger, the leader-only job's interval, the log level."""
        return [
            "--ledger",
            str(self.ledger),
            "--job-interval",
            str(self.job_interval),
            "--log-level",
            self.log_level,
        ]

    def _environment(self) -> dict[str, str]:
        # Settings come from the command line only: a GOELECT_STATE_FILE left in
        # the caller's environment would give every node the same state file.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("GOELECT_") and not k.startswith("EXAMPLE_")
        }
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # -- starting ----------------------------------------------------------------------------

    def start(
        self,
        node_ids: Iterable[str] | None = None,
        *,
        start_at: float | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Start the given nodes (default all not running) and wait until each
        one's elector runs.

        ``start_at`` (a Unix time): the nodes serve at once but start their
        electors at that moment, so that process start-up does not skew a
        measurement of the election itself.

        :raises ClusterError: a node exited or did not start within ``timeout``.
        """
        if self._closed:
            raise ClusterError("this cluster was closed; make a new one")
        ids = [n for n in (node_ids or self.nodes) if not self.nodes[n].running]
        if self.t0 is None:
            self.t0 = time.monotonic()
        mark = self.mark()
        for node_id in ids:
            self._spawn(self.nodes[node_id], start_at)
        self.wait_started(ids, since=mark, timeout=timeout)

    def start_node(self, node_id: str, *, timeout: float = 30.0) -> None:
        """(Re)start one node with its state folder, and wait until its elector runs."""
        node = self.nodes[node_id]
        if node.running:
            raise ClusterError(f"node {node_id} is already running (pid {node.pid})")
        self._reap(node)
        self.start([node_id], timeout=timeout)

    def _spawn(self, node: Node, start_at: float | None) -> None:
        """Start the node's process and its event reader, without waiting (see
        :meth:`start`); subclasses extend it to note something about every process."""
        node.state_dir.mkdir(parents=True, exist_ok=True)
        with open(node.log_path, "ab") as log:
            process = subprocess.Popen(
                self.command(node.id, start_at),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO_ROOT,
                env=self._environment()
                | (self.server_environment(node.id) if self.server != "pywsgi" else {}),
                # Ctrl-C in a terminal goes to the launcher only, which then
                # stops each node gracefully.
                start_new_session=True,
            )
        node.process = process
        node.starts += 1
        node.started_mono = time.monotonic()
        assert process.stdout is not None
        reader = threading.Thread(
            target=self._read_events,
            args=(node.id, process, process.stdout),
            name=f"cluster-{node.id}-events",
            daemon=True,
        )
        node._reader = reader
        reader.start()

    def _read_events(
        self, node_id: str, process: subprocess.Popen[bytes], stream: IO[bytes]
    ) -> None:
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                try:
                    data = json.loads(line)
                except ValueError:
                    data = None
                if not isinstance(data, dict) or "event" not in data:
                    data = {"event": "output", "line": line}
                self._add_event(node_id, data)
        try:
            returncode = process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:  # output closed, process still alive
            returncode = None
        self._add_event(node_id, {"event": "exit", "returncode": returncode, "pid": process.pid})

    def _add_event(self, node_id: str, data: dict[str, Any]) -> None:
        mono = data.get("mono")
        with self._cond:
            event = Event(
                index=len(self.events),
                node=node_id,
                kind=str(data["event"]),
                mono=float(mono) if isinstance(mono, (int, float)) else time.monotonic(),
                data=data,
            )
            self.events.append(event)
            self._cond.notify_all()
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception as exc:  # a broken printer must not stop the reader
                print(f"cluster: on_event failed: {exc!r}", file=sys.stderr)

    # -- events ----------------------------------------------------------------------------------

    def mark(self) -> int:
        """The index the next event will have: pass it as ``since`` to wait for newer ones."""
        with self._cond:
            return len(self.events)

    def wait_for_event(
        self, predicate: Callable[[Event], bool], timeout: float, *, since: int = 0
    ) -> Event | None:
        """The first event from index ``since`` on that satisfies ``predicate``,
        waiting up to ``timeout`` seconds; None if there is none by then."""
        deadline = time.monotonic() + timeout
        index = since
        with self._cond:
            while True:
                while index < len(self.events):
                    event = self.events[index]
                    index += 1
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def wait_started(self, node_ids: Iterable[str], *, since: int, timeout: float) -> None:
        """Wait until each of ``node_ids`` printed ``started`` (from event ``since`` on);
        under another server, until its ``/_goelect/health`` answers 200 (a
        ``started`` event is then added for it)."""
        if self.server != "pywsgi":
            self._wait_healthy(set(node_ids), since=since, timeout=timeout)
            return
        waiting = set(node_ids)
        deadline = time.monotonic() + timeout
        while waiting:
            event = self.wait_for_event(
                lambda e: e.node in waiting and e.kind in ("started", "exit"),
                max(0.0, deadline - time.monotonic()),
                since=since,
            )
            if event is None:
                raise ClusterError(
                    f"nodes {sorted(waiting)} did not start within {timeout:g}s"
                    + "".join(self._log_tail(n) for n in sorted(waiting))
                )
            if event.kind == "exit":
                raise ClusterError(
                    f"node {event.node} exited with status {event.data.get('returncode')}"
                    f" while starting{self._log_tail(event.node)}"
                )
            waiting.discard(event.node)
            since = event.index + 1

    def _wait_healthy(self, waiting: set[str], *, since: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while waiting:
            for node_id in sorted(waiting):
                exited = self.wait_for_event(functools.partial(_exited, node_id), 0, since=since)
                if exited is not None:
                    raise ClusterError(
                        f"node {node_id} exited with status {exited.data.get('returncode')}"
                        f" while starting{self._log_tail(node_id)}"
                    )
                answer = self.get(node_id, "/_goelect/health", timeout=0.5)
                if answer is not None and answer[0] == 200:
                    waiting.discard(node_id)
                    body = answer[1] if isinstance(answer[1], dict) else {}
                    self._add_event(
                        node_id, {"event": "started", "pid": self.nodes[node_id].pid, **body}
                    )
            if waiting and time.monotonic() >= deadline:
                raise ClusterError(
                    f"nodes {sorted(waiting)} did not start within {timeout:g}s"
                    + "".join(self._log_tail(n) for n in sorted(waiting))
                )
            if waiting:
                time.sleep(0.05)

    def _log_tail(self, node_id: str, lines: int = 15) -> str:
        try:
            text = self.nodes[node_id].log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n    ".join(text.splitlines()[-lines:])
        return f"\n  last lines of {node_id}'s log:\n    {tail}"

    # -- asking the nodes ------------------------------------------------------------------------

    def get(self, node_id: str, path: str, timeout: float = 1.0) -> tuple[int, Any] | None:
        """``GET path`` on a node: ``(status code, JSON body)``, or None if unreachable."""
        url = self.nodes[node_id].address + path
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read()
            try:
                return exc.code, json.loads(body)
            except ValueError:
                return exc.code, None
        except (OSError, ValueError):
            return None

    def status(self, node_id: str, timeout: float = 1.0) -> dict[str, Any] | None:
        """The node's ``GET /_goelect/status``, or None if it does not answer."""
        answer = self.get(node_id, "/_goelect/status", timeout)
        if answer is None or answer[0] != 200 or not isinstance(answer[1], dict):
            return None
        return answer[1]

    def running_nodes(self) -> list[str]:
        return [n.id for n in self.nodes.values() if n.running]

    def wait_for_leader(
        self,
        timeout: float = 10.0,
        *,
        min_term: int = 0,
        exclude: Iterable[str] = (),
        poll: float = 0.01,
    ) -> LeaderView:
        """Wait until every running node (but ``exclude``) names the same leader in
        the same term (at least ``min_term``) and that leader holds a valid lease,
        asking ``GET /_goelect/status`` on each.

        :raises ClusterError: no such agreement within ``timeout`` seconds.
        """
        excluded = set(exclude)
        deadline = time.monotonic() + timeout
        seen: dict[str, Any] = {}
        while True:
            ids = [n for n in self.running_nodes() if n not in excluded]
            seen = {n: self.status(n, timeout=max(0.2, 2 * poll)) for n in ids}
            views = {(s["leader_id"], s["term"]) if s is not None else None for s in seen.values()}
            if ids and len(views) == 1:
                view = next(iter(views))
                if view is not None and view[0] is not None and view[1] >= min_term:
                    leader_status = seen.get(view[0])
                    if leader_status is not None and leader_status.get("is_leader"):
                        return LeaderView(view[0], int(view[1]), time.monotonic())
            if time.monotonic() >= deadline:
                shown = {
                    n: (s["state"], s["term"], s["leader_id"]) if s is not None else "unreachable"
                    for n, s in seen.items()
                }
                raise ClusterError(
                    f"no agreed leader (term >= {min_term}) within {timeout:g}s: {shown}"
                )
            time.sleep(poll)

    # -- signals ---------------------------------------------------------------------------------

    def signal(self, node_id: str, sig: int) -> float:
        """Send ``sig`` to the node (by its PID; SIGKILL, SIGSTOP and SIGCONT to
        its whole process group: a server's master and its workers); returns the
        launcher's ``time.monotonic()`` just before sending it."""
        node = self.nodes[node_id]
        if node.process is None or node.process.poll() is not None:
            raise ClusterError(f"node {node_id} is not running")
        sent = time.monotonic()
        if sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT):
            # The node is a session (and group) leader: start_new_session in _spawn.
            os.killpg(node.process.pid, sig)
        else:
            node.process.send_signal(sig)
        return sent

    def worker_pids(self, node_id: str) -> list[int]:
        """The pids of the node's processes other than the one started (a server's
        workers), from ``/proc``."""
        node = self.nodes[node_id]
        if node.process is None:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == node.process.pid:
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == node.process.pid:  # its process group
                found.append(int(entry))
        return sorted(found)

    def kill(self, node_id: str, *, wait: float = 10.0) -> float:
        """SIGKILL the node and reap it; returns when the signal was sent."""
        sent = self.signal(node_id, signal.SIGKILL)
        self.wait_exit(node_id, wait)
        return sent

    def terminate(self, node_id: str) -> float:
        """SIGTERM the node (a graceful stop: the leader hands over); returns when
        the signal was sent. Use :meth:`wait_exit` for its exit status."""
        return self.signal(node_id, signal.SIGTERM)

    def pause(self, node_id: str) -> float:
        """SIGSTOP the node (as a long GC pause would)."""
        return self.signal(node_id, signal.SIGSTOP)

    def resume(self, node_id: str) -> float:
        """SIGCONT a paused node."""
        return self.signal(node_id, signal.SIGCONT)

    def wait_exit(self, node_id: str, timeout: float) -> int | None:
        """Wait up to ``timeout`` for the node's process to end; its exit status or None."""
        process = self.nodes[node_id].process
        if process is None:
            return None
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _reap(self, node: Node) -> None:
        reader = node._reader
        if reader is not None:
            reader.join(timeout=15.0)
            node._reader = None

    # -- the ledger ----------------------------------------------------------------------------

    def ledger_entries(self) -> list[LedgerEntry]:
        """Every complete line of the ledger, in file order."""
        return read_ledger(self.ledger)

    def ledger_violations(self) -> list[str]:
        """What breaks the never-twice rules in the ledger (see :func:`check_ledger`)."""
        return check_ledger(self.ledger_entries())

    # -- stopping --------------------------------------------------------------------------------

    def stop(self, node_ids: Iterable[str] | None = None, timeout: float = 5.0) -> None:
        """SIGTERM the nodes (default all), wait up to ``timeout``, SIGKILL what is left."""
        nodes = [self.nodes[n] for n in (node_ids or self.nodes)]
        for node in nodes:
            if node.running:
                with contextlib.suppress(ClusterError, ProcessLookupError):
                    self.terminate(node.id)
        deadline = time.monotonic() + timeout
        for node in nodes:
            process = node.process
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10.0)
            # Workers left behind by a server's master (none when it stopped cleanly).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            self._reap(node)

    def close(self) -> None:
        """Stop every node and remove the state folder if this cluster made it
        (unless ``keep``). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        if self._own_dir and not self.keep:
            shutil.rmtree(self.state_dir, ignore_errors=True)
