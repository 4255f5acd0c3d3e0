"""HAProxy in front of a :class:`~goelect_harness.cluster.LocalCluster`, and a client through it.

The balancer runs the configuration shipped for users,
``example_app/deploy/haproxy/haproxy.cfg``, with only what is local to a test
changed: the address it listens on, the nodes' addresses, and an admin socket
the harness reads the servers' states from. So what the system test measures
is what ``docs/deployment.md`` tells users to run::

    with LocalCluster(3) as cluster, HAProxy(cluster) as proxy:
        cluster.start()
        proxy.wait_for_leader_up(timeout=10)          # a server whose /leader says 200
        with LoadClient(proxy.url("/jobs/run-now")) as client:
            ...                                       # SIGKILL or SIGTERM nodes
        client.failures()                             # every answer that was not 200

HAProxy is Debian's ``haproxy`` package (``apt-get install haproxy``); where it is
not installed, :func:`find_haproxy` returns None and :data:`MISSING` says why,
for ``pytest.skip``. The process runs in the foreground (``-db``), is stopped by
its PID (SIGUSR1, a soft stop, then SIGKILL after a bound) and its log goes to
a file in its folder.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from goelect_harness.cluster import REPO_ROOT, LocalCluster
from goelect_harness.helpers import free_port, wait_until

_GLOBAL = re.compile(r"^global\s*$")

__all__ = [
    "CONFIG",
    "MISSING",
    "Answer",
    "HAProxy",
    "HAProxyError",
    "LoadClient",
    "find_haproxy",
    "local_config",
]

#: The configuration users are given (``docs/deployment.md`` shows it).
CONFIG = REPO_ROOT / "example_app" / "deploy" / "haproxy" / "haproxy.cfg"

#: Why the HAProxy tests cannot run here, for ``pytest.skip``.
MISSING = (
    "haproxy is not installed (Debian: apt-get install haproxy; .ci/run installs it when it can)"
)

#: Folders searched besides ``PATH``: Debian installs haproxy in /usr/sbin, which
#: is not on the PATH of every user.
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class HAProxyError(RuntimeError):
    """HAProxy failed to start, or did not reach the state waited for."""


def find_haproxy() -> str | None:
    """The path of the ``haproxy`` program, or None when it is not installed."""
    path = os.environ.get("PATH", "")
    return shutil.which("haproxy", path=os.pathsep.join([path, *_SBIN]))


_BIND = re.compile(r"^(\s*)bind\s+(\S*:\d+)(.*)$")
_SERVER = re.compile(r"^(\s*)server\s+(\S+)\s+(\S+)(.*)$")
_LUA = re.compile(r"^(\s*)lua-load\s+(\S+)(.*)$")
_LOG = re.compile(r"^(\s*)log\s+(?!global\b)\S+.*$")
_ABNS = re.compile(r"abns@([\w.-]+)")


def local_config(
    template: str,
    servers: Mapping[str, tuple[str, int]],
    bind: tuple[str, int],
    admin: Path,
    folder: Path = CONFIG.parent,
) -> str:
    """``template`` made to run here, in front of ``servers``.

    * the one ``bind`` on a TCP address listens on ``bind`` instead;
    * ``server NAME ADDRESS ...``: when NAME is a node of ``servers``, its address
      is the node's (every other word stays: checks, ``track``, ``backup``);
    * abstract sockets (``abns@NAME``) get a name of this instance's own, so two
      balancers on one machine do not share one;
    * ``lua-load`` loads the file of that name from ``folder``;
    * ``log`` targets go to standard output, an admin socket at ``admin`` is added.

    :raises HAProxyError: a node of ``servers`` is not in the template.
    """
    out: list[str] = []
    named: set[str] = set()
    binds = 0
    for line in template.splitlines():
        line = _ABNS.sub(lambda m: f"abns@{m.group(1)}-{bind[1]}", line)
        if (match := _BIND.match(line)) is not None:
            binds += 1
            out.append(f"{match.group(1)}bind {bind[0]}:{bind[1]}{match.group(3)}")
        elif (match := _SERVER.match(line)) is not None and match.group(2) in servers:
            host, port = servers[match.group(2)]
            named.add(match.group(2))
            out.append(f"{match.group(1)}server {match.group(2)} {host}:{port}{match.group(4)}")
        elif (match := _LUA.match(line)) is not None:
            path = folder / Path(match.group(2)).name
            out.append(f"{match.group(1)}lua-load {path}{match.group(3)}")
        elif (match := _LOG.match(line)) is not None:
            out.append(f"{match.group(1)}log stdout format raw local0")
        else:
            out.append(line)
        if _GLOBAL.match(line):
            out.append(f"    stats socket {admin} mode 600 level admin")
    missing = sorted(set(servers) - named)
    if missing or binds != 1:
        raise HAProxyError(
            f"the HAProxy template must have one bind on a TCP address (it has {binds}) and a"
            f" server line for every node (missing: {missing})"
        )
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class ServerState:
    """One server of the backend as HAProxy sees it (a row of ``show stat``)."""

    name: str
    status: str  # "UP", "DOWN", "UP 1/2"...
    retries: int
    redispatches: int

    @property
    def up(self) -> bool:
        return self.status.startswith("UP")


class HAProxy:
    """HAProxy on a free loopback port in front of ``cluster``'s nodes.

    :param cluster: the nodes (their ids become the server names).
    :param template: the configuration to run (default the shipped one, :data:`CONFIG`).
    :param backend: the backend whose servers are the nodes.
    """

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        template: str | os.PathLike[str] = CONFIG,
        backend: str = "leader",
        host: str = "127.0.0.1",
    ) -> None:
        program = find_haproxy()
        if program is None:
            raise HAProxyError(MISSING)
        self.program = program
        self.backend = backend
        self.host = host
        self.port = free_port(host)
        self.dir = Path(tempfile.mkdtemp(prefix="goelect-haproxy-"))
        self.admin = self.dir / "admin.sock"
        self.config_path = self.dir / "haproxy.cfg"
        self.log_path = self.dir / "haproxy.log"
        servers = {n.id: (n.host, n.port) for n in cluster.nodes.values()}
        text = Path(template).read_text(encoding="utf-8")
        self.config_path.write_text(
            local_config(text, servers, (host, self.port), self.admin), encoding="utf-8"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> HAProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def check(self) -> None:
        """``haproxy -c``: the configuration is valid (raises with HAProxy's message)."""
        done = subprocess.run(
            [self.program, "-c", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise HAProxyError(f"haproxy -c failed:\n{done.stdout}{done.stderr}")

    def start(self, timeout: float = 10.0) -> None:
        """Start HAProxy in the foreground and wait until it listens and answers
        on its admin socket."""
        self.check()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.program, "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait_until(self._ready, timeout, 0.02):
            self.close()
            raise HAProxyError(
                f"haproxy did not listen on {self.host}:{self.port} within {timeout:g}s:"
                f"\n{self.log_tail()}"
            )

    def _ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise HAProxyError(f"haproxy exited while starting:\n{self.log_tail()}")
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                pass
            self.servers()
        except OSError:
            return False
        return True

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def admin_command(self, command: str) -> str:
        """Send one command to the admin socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(self.admin))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def servers(self) -> dict[str, ServerState]:
        """The backend's servers as HAProxy sees them now."""
        text = self.admin_command("show stat").lstrip("# ")
        states: dict[str, ServerState] = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("pxname") != self.backend or row.get("svname") in ("FRONTEND", "BACKEND"):
                continue
            states[row["svname"]] = ServerState(
                row["svname"],
                row.get("status", ""),
                int(row.get("wretr") or 0),
                int(row.get("wredis") or 0),
            )
        return states

    def up(self) -> list[str]:
        """The servers HAProxy would send a request to now."""
        return [name for name, state in self.servers().items() if state.up]

    def wait_for_leader_up(self, timeout: float, leader: str | None = None) -> str:
        """Wait until exactly one server is UP (``leader``, if given); its name."""

        def one_up() -> str | None:
            up = self.up()
            if len(up) == 1 and (leader is None or up[0] == leader):
                return up[0]
            return None

        name: str | None = wait_until(one_up, timeout, 0.01)
        if name is None:
            raise HAProxyError(
                f"HAProxy did not see {leader or 'one leader'} alone UP within {timeout:g}s:"
                f" {self.servers()}"
            )
        return name

    def close(self, timeout: float = 5.0) -> None:
        """Stop HAProxy by its PID (a soft stop, then SIGKILL) and remove its folder."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGUSR1)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10.0)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class Answer:
    """One request of the client: when it was sent and answered, and how."""

    sent: float
    done: float
    #: The HTTP status, or None when there was no HTTP answer.
    status: int | None
    #: The error when there was no HTTP answer, or the body of a failed one.
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class LoadClient:
    """A client that sends ``POST`` to ``url`` back to back from a thread, on one
    kept-alive connection (a new one after an error), until stopped or until
    ``max_requests`` or ``max_seconds``.

    Every request gets a ``(connect, read)`` timeout of ``timeout`` seconds.
    """

    url: str
    max_requests: int = 100_000
    max_seconds: float = 60.0
    timeout: float = 5.0
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> LoadClient:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="haproxy-client", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5.0)
            self._thread = None

    def _run(self) -> None:
        match = re.match(r"^http://([^/:]+):(\d+)(/.*)$", self.url)
        if match is None:
            raise ValueError(f"url must be http://HOST:PORT/PATH, not {self.url!r}")
        host, port, path = match.group(1), int(match.group(2)), match.group(3)
        conn: http.client.HTTPConnection | None = None
        end = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and len(self.answers) < self.max_requests:
            sent = time.monotonic()
            if sent >= end:
                break
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
                conn.request("POST", path, body=b"", headers={"Content-Length": "0"})
                response = conn.getresponse()
                body = response.read()
                status = response.status
                error = "" if status == 200 else body[:200].decode(errors="replace")
                if response.will_close:
                    conn.close()
                    conn = None
                self.answers.append(Answer(sent, time.monotonic(), status, error))
            except (OSError, http.client.HTTPException) as exc:
                self.answers.append(Answer(sent, time.monotonic(), None, repr(exc)))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def failures(self, since: float = 0.0) -> list[Answer]:
        """The answers (sent at ``since`` or later) that were not 200."""
        return [a for a in list(self.answers) if a.sent >= since and not a.ok]

    def wait_for_answers(self, count: int, timeout: float, since: float = 0.0) -> bool:
        """Wait until ``count`` answers sent at ``since`` or later came back."""
        return bool(
            wait_until(lambda: sum(1 for a in self.answers if a.sent >= since) >= count, timeout)
        )
