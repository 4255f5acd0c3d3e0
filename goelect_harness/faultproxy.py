"""A fault-injecting TCP proxy for system tests: one listening port per directed link.

Every directed link ``src -> dst`` between two nodes gets its own port on
loopback. Node ``src`` is configured to reach ``dst`` at ``address(src, dst)``;
the proxy accepts that connection and opens one to ``dst``'s real address. What
``src`` sends on it (its requests) and what ``dst`` answers (the replies) then go
through the proxy, which, per link and at any moment, can:

``pass``
    forward both ways, optionally holding every chunk ``delay_ms`` first (each
    way, so a round trip takes ``2 × delay_ms`` more);
``drop``
    reset the link's connections, and reset every new one as soon as it is
    accepted (the caller sees its connection refused or reset at once);
``blackhole``
    accept connections and never answer: nothing is forwarded either way;
``lose-replies``
    deliver the requests and swallow the replies (the one-way failure seen from
    the requesting side: ``dst`` hears ``src`` but ``src`` never hears back).

A network that loses the packets of ``a`` towards ``b`` only is
:meth:`FaultProxy.cut_one_way` (``a -> b`` black-holed, ``b -> a`` loses its
replies). A connection that lost data is reset when its link passes again: its
HTTP exchange is out of step. Mode changes are synchronous: when a setter
returns, the proxy's loop has applied it.

The proxy also reads the HTTP/1.1 requests and replies it forwards (it never
changes them) and keeps an :class:`Exchange` per request: which node asked whom,
what, and what the other answered, so that tests can check every vote a node
granted. Observation is best effort (a stream it cannot frame is forwarded
unobserved); forwarding never depends on it.

Everything runs in one thread (``selectors``), so that the test process is
never monkey-patched. The proxy stops by itself at the end of its ``lifetime``
and closes every socket it opened, also when :meth:`FaultProxy.close` is
called. Loopback only.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import heapq
import itertools
import json
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

__all__ = ["Exchange", "Fault", "FaultProxy", "LinkState", "ProxyError"]

Link = tuple[str, str]

#: Bytes read from a socket at a time.
_CHUNK = 65536
#: A connection that buffers more than this towards a side that does not read is reset.
_MAX_BUFFERED = 4 * 1024 * 1024
#: An HTTP message larger than this is forwarded but not observed.
_MAX_OBSERVED = 256 * 1024
#: How long a setter waits for the loop to apply a change.
_COMMAND_TIMEOUT = 10.0


class ProxyError(RuntimeError):
    """The proxy is not running (closed, past its lifetime, or its loop failed)."""


class Fault(str, enum.Enum):
    """What a link does with its connections (see the module docs)."""

    PASS = "pass"
    DROP = "drop"
    BLACKHOLE = "blackhole"
    LOSE_REPLIES = "lose-replies"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class LinkState:
    """The current behaviour of one directed link."""

    fault: Fault = Fault.PASS
    delay: float = 0.0  # seconds every chunk is held, each way


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP request that went through a link, and the reply to it if any.

    ``asked_at`` is the proxy's ``time.monotonic()`` when the whole request had
    arrived from ``src``; ``answered_at`` when the whole reply had arrived from
    ``dst`` (None: no reply, e.g. the connection was reset or black-holed).
    ``request`` and ``reply`` are the decoded JSON bodies (None if not JSON).
    ``delivered`` says whether the request reached ``dst``; ``reply_delivered``
    whether the reply reached ``src``. A reply is recorded even when it was
    swallowed: it is what ``dst`` decided.
    """

    src: str
    dst: str
    method: str
    path: str
    request: Any
    asked_at: float
    delivered: bool
    status: int | None
    reply: Any
    answered_at: float | None
    reply_delivered: bool


# -- HTTP framing (observation only) ------------------------------------------------------


class _Framer:
    """Splits one direction of an HTTP/1.x connection into (start line, headers, body).

    Handles ``Content-Length`` and ``chunked`` bodies; anything else (a body
    until the connection closes, an upgrade) turns observation off for the
    connection by setting ``broken``.
    """

    __slots__ = ("_buf", "_need", "_head", "_chunks", "_chunked", "broken")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = -1  # body bytes still wanted; -1 while reading a head
        self._head: tuple[str, dict[str, str]] | None = None
        self._chunks = bytearray()
        self._chunked = False
        self.broken = False

    def feed(self, data: bytes, is_reply: bool) -> list[tuple[str, dict[str, str], bytes]]:
        if self.broken:
            return []
        self._buf += data
        if len(self._buf) > _MAX_OBSERVED:
            self.broken = True
            self._buf.clear()
            return []
        out: list[tuple[str, dict[str, str], bytes]] = []
        while True:
            if self._head is None:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    return out
                lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
                del self._buf[: end + 4]
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                self._head = (lines[0], headers)
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    self._chunked, self._need = True, -2
                elif "content-length" in headers:
                    self._chunked, self._need = False, int(headers["content-length"])
                elif is_reply and lines[0].split(" ")[1:2] in (["204"], ["304"]):
                    self._chunked, self._need = False, 0
                elif not is_reply:
                    self._chunked, self._need = False, 0  # a request without a body
                else:
                    self.broken = True  # a body that ends with the connection
                    return out
            if self._chunked:
                body = self._read_chunks()
                if body is None:
                    return out
            else:
                if len(self._buf) < self._need:
                    return out
                body = bytes(self._buf[: self._need])
                del self._buf[: self._need]
            start, headers = self._head
            out.append((start, headers, body))
            self._head = None
            self._need = -1

    def _read_chunks(self) -> bytes | None:
        while True:
            end = self._buf.find(b"\r\n")
            if end < 0:
                return None
            size = int(bytes(self._buf[:end]).split(b";")[0], 16)
            if size == 0:
                trailer_end = self._buf.find(b"\r\n\r\n", end)
                if trailer_end < 0 and not self._buf.startswith(b"\r\n", end + 2):
                    return None
                cut = end + 4 if self._buf.startswith(b"\r\n", end + 2) else trailer_end + 4
                del self._buf[:cut]
                body = bytes(self._chunks)
                self._chunks.clear()
                return body
            if len(self._buf) < end + 2 + size + 2:
                return None
            self._chunks += self._buf[end + 2 : end + 2 + size]
            del self._buf[: end + 2 + size + 2]


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


# -- connections -----------------------------------------------------------------------------


@dataclass
class _Pipe:
    """One direction of a proxied connection: chunks waiting for their time, then bytes."""

    queue: collections.deque[tuple[float, bytes]] = field(default_factory=collections.deque)
    out: bytearray = field(default_factory=bytearray)
    eof: bool = False  # the reading side sent FIN
    shut: bool = False  # FIN passed on to the writing side

    def pending(self) -> int:
        return len(self.out) + sum(len(chunk) for _, chunk in self.queue)


@dataclass
class _Pending:
    method: str
    path: str
    request: Any
    asked_at: float
    delivered: bool


class _Conn:
    __slots__ = (
        "link",
        "client",
        "server",
        "connecting",
        "up",
        "down",
        "tainted",
        "closed",
        "req_framer",
        "rep_framer",
        "pending",
    )

    def __init__(self, link: Link, client: socket.socket) -> None:
        self.link = link
        self.client = client
        self.server: socket.socket | None = None
        self.connecting = False
        self.up = _Pipe()  # client -> server: the requests
        self.down = _Pipe()  # server -> client: the replies
        self.tainted = False  # data was swallowed: the HTTP exchange is out of step
        self.closed = False
        self.req_framer = _Framer()
        self.rep_framer = _Framer()
        self.pending: collections.deque[_Pending] = collections.deque()


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST (no FIN, no TIME_WAIT)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass
class _Command:
    fn: Callable[[], None]
    done: threading.Event = field(default_factory=threading.Event)
    ran: bool = False
    error: BaseException | None = None


@dataclass
class _Schedule:
    links: tuple[Link, ...]
    steps: list[tuple[LinkState, float]]
    done: threading.Event
    cancelled: bool = False


class FaultProxy:
    """Loopback proxy with a listening port per directed link between ``upstreams``.

    :param upstreams: each node's real ``(host, port)``.
    :param lifetime: seconds after :meth:`start` at which the proxy stops by itself.
    :param host: where the link ports listen (loopback).
    :param observe: which request paths to keep an :class:`Exchange` for
        (default: every path). Heartbeats are numerous; keeping them costs memory
        but lets a test see every term a node announced.
    """

    def __init__(
        self,
        upstreams: Mapping[str, tuple[str, int]],
        *,
        lifetime: float = 600.0,
        host: str = "127.0.0.1",
        observe: Callable[[str], bool] | None = None,
    ) -> None:
        if len(upstreams) < 2:
            raise ValueError("a proxy needs at least two nodes")
        if not lifetime > 0:
            raise ValueError(f"lifetime must be positive seconds, not {lifetime!r}")
        self.upstreams = dict(upstreams)
        self.lifetime = float(lifetime)
        self.host = host
        self._observe = observe
        self._lock = threading.Lock()
        self._states: dict[Link, LinkState] = {}
        self._listeners: dict[Link, socket.socket] = {}
        self._by_listener: dict[socket.socket, Link] = {}
        self._conns: set[_Conn] = set()
        self._conn_of: dict[socket.socket, _Conn] = {}
        self._commands: collections.deque[_Command] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._schedules: list[_Schedule] = []
        self._exchanges: list[Exchange] = []
        self._counts: collections.Counter[str] = collections.Counter()
        #: Exceptions of the loop thread (a test should find this empty).
        self.errors: list[str] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._deadline = float("inf")
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
            for src in self.upstreams:
                for dst in self.upstreams:
                    if src == dst:
                        continue
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    try:
                        sock.bind((host, 0))
                        sock.listen(128)
                        sock.setblocking(False)
                    except BaseException:
                        sock.close()
                        raise
                    self._listeners[(src, dst)] = sock
                    self._by_listener[sock] = (src, dst)
                    self._states[(src, dst)] = LinkState()
                    self._sel.register(sock, selectors.EVENT_READ, self._on_accept)
        except BaseException:
            self._close_sockets()
            raise

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        faulty = {
            f"{s}->{d}": f"{st.fault}" + (f"+{st.delay * 1000:g}ms" if st.delay else "")
            for (s, d), st in self.links().items()
            if st.fault is not Fault.PASS or st.delay
        }
        return f"<FaultProxy nodes={list(self.upstreams)} faults={faulty}>"

    def start(self) -> None:
        """Start forwarding (in a thread); the proxy stops by itself after ``lifetime``."""
        if self._thread is not None:
            raise ProxyError("the proxy was already started")
        if self._stopping:
            raise ProxyError("the proxy was closed")
        self._deadline = time.monotonic() + self.lifetime
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop and close every socket. Safe to call twice."""
        self._stopping = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._wake()
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self._close_sockets()
        for schedule in self._schedules:
            schedule.done.set()

    # -- addresses ------------------------------------------------------------------------

    def port(self, src: str, dst: str) -> int:
        """The port ``src`` connects to in order to reach ``dst``."""
        port: int = self._listeners[(src, dst)].getsockname()[1]
        return port

    def address(self, src: str, dst: str) -> str:
        """The base URL ``src`` must use for ``dst``."""
        return f"http://{self.host}:{self.port(src, dst)}"

    # -- faults ---------------------------------------------------------------------------

    def links(self) -> dict[Link, LinkState]:
        """Every directed link and what it does now."""
        with self._lock:
            return dict(self._states)

    def set_links(
        self, links: Iterable[Link], fault: Fault | str = Fault.PASS, *, delay_ms: float = 0.0
    ) -> None:
        """Give every link in ``links`` the behaviour ``fault`` (and ``delay_ms``)."""
        state = LinkState(Fault(fault), max(0.0, delay_ms) / 1000)
        chosen = [self._check_link(link) for link in links]
        self._command(lambda: self._apply({link: state for link in chosen}, cancel=True))

    def set_link(
        self, src: str, dst: str, fault: Fault | str = Fault.PASS, *, delay_ms: float = 0.0
    ) -> None:
        """Give the link ``src -> dst`` the behaviour ``fault`` (and ``delay_ms``)."""
        self.set_links([(src, dst)], fault, delay_ms=delay_ms)

    def heal(self) -> None:
        """Every link passes again without delay; schedules are cancelled."""
        self.set_links(list(self._states), Fault.PASS)

    def links_between(self, a: Iterable[str], b: Iterable[str]) -> list[Link]:
        """Every directed link from a node of ``a`` to a node of ``b`` and back."""
        side_a, side_b = set(a), set(b)
        return [(s, d) for (s, d) in self._states if (s in side_a and d in side_b)] + [
            (s, d) for (s, d) in self._states if (s in side_b and d in side_a)
        ]

    def partition(self, *groups: Iterable[str], fault: Fault | str = Fault.DROP) -> None:
        """Cut every link between different ``groups`` (each node in exactly one group)."""
        sets = [set(g) for g in groups]
        listed = [n for g in sets for n in g]
        if sorted(listed) != sorted(self.upstreams):
            raise ValueError(f"groups {sets} must hold every node {list(self.upstreams)} once")
        where = {n: i for i, g in enumerate(sets) for n in g}
        self.set_links([(s, d) for (s, d) in self._states if where[s] != where[d]], fault)

    def isolate(self, node: str, fault: Fault | str = Fault.DROP) -> None:
        """Cut every link to and from ``node``."""
        others = [n for n in self.upstreams if n != node]
        self.set_links(self.links_between([node], others), fault)

    def blackhole_node(self, node: str) -> None:
        """``node`` accepts every connection and never answers (its links in black-holed)."""
        self.set_links([(s, d) for (s, d) in self._states if d == node], Fault.BLACKHOLE)

    def cut_one_way(self, src: str, dst: str) -> None:
        """What ``src`` sends never reaches ``dst``; what ``dst`` sends reaches ``src``.

        ``src``'s requests to ``dst`` vanish (black hole), and ``dst``'s requests
        to ``src`` arrive but ``src``'s replies vanish.
        """
        self._check_link((src, dst))
        self._command(
            lambda: self._apply(
                {
                    (src, dst): LinkState(Fault.BLACKHOLE),
                    (dst, src): LinkState(Fault.LOSE_REPLIES),
                },
                cancel=True,
            )
        )

    def schedule(
        self, links: Iterable[Link], steps: Sequence[tuple[Fault | str, float]]
    ) -> threading.Event:
        """Run ``steps`` on ``links``: each ``(fault, seconds)`` in turn, then pass.

        A flapping link is ``[("drop", 0.2), ("pass", 0.3), ("drop", 0.1), ...]``.
        Returns an event set when the schedule is over (or cancelled by a later
        change of the same links, or by :meth:`heal`).
        """
        chosen = tuple(self._check_link(link) for link in links)
        plan = [(LinkState(Fault(f)), float(s)) for f, s in steps]
        schedule = _Schedule(chosen, plan, threading.Event())
        self._command(lambda: self._start_schedule(schedule))
        return schedule.done

    # -- observation ----------------------------------------------------------------------

    def exchanges(self, since: int = 0) -> list[Exchange]:
        """The exchanges recorded so far, from index ``since`` on, in completion order."""
        with self._lock:
            return self._exchanges[since:]

    def counts(self) -> dict[str, int]:
        """Counters: connections accepted, reset, black-holed, bytes swallowed, ..."""
        with self._lock:
            return dict(self._counts)

    # -- the control channel ----------------------------------------------------------------

    def _check_link(self, link: Link) -> Link:
        if link not in self._states:
            raise ValueError(f"no link {link[0]} -> {link[1]} (nodes: {list(self.upstreams)})")
        return link

    def _command(self, fn: Callable[[], None]) -> None:
        if not self.running or self._stopping:
            raise ProxyError(f"the proxy is not running{self._error_text()}")
        command = _Command(fn)
        with self._lock:
            self._commands.append(command)
        self._wake()
        if not command.done.wait(_COMMAND_TIMEOUT):
            raise ProxyError(f"the proxy did not apply a change in time{self._error_text()}")
        if command.error is not None:
            raise ProxyError(f"the proxy failed to apply a change: {command.error!r}")
        if not command.ran:
            raise ProxyError(f"the proxy stopped before applying a change{self._error_text()}")

    def _error_text(self) -> str:
        return f" (loop errors: {self.errors})" if self.errors else ""

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _on_wake(self, key: selectors.SelectorKey, mask: int) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                now = time.monotonic()
                if now >= self._deadline:
                    break
                self._run_commands()
                self._run_timers(now)
                next_due = self._release_due(now)
                timeout = min(self._deadline, next_due, self._next_timer()) - now
                for key, mask in self._sel.select(max(0.0, min(timeout, 0.5))):
                    key.data(key, mask)
        except BaseException as exc:  # recorded: a thread must not die silently
            self.errors.append(repr(exc))
        finally:
            self._stopping = True
            with self._lock:
                commands = list(self._commands)
                self._commands.clear()
            for command in commands:
                command.done.set()
            self._close_sockets()
            for schedule in self._schedules:
                schedule.done.set()

    def _run_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                command = self._commands.popleft()
            try:
                command.fn()
            except Exception as exc:  # handed to the caller of the change
                command.error = exc
            finally:
                command.ran = True
                command.done.set()

    def _next_timer(self) -> float:
        return self._timers[0][0] if self._timers else float("inf")

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            fn()

    def _at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_seq), fn))

    def _start_schedule(self, schedule: _Schedule) -> None:
        self._cancel_schedules(schedule.links)
        self._schedules.append(schedule)
        self._next_step(schedule)

    def _next_step(self, schedule: _Schedule) -> None:
        if schedule.cancelled:
            return
        if not schedule.steps:
            self._apply({link: LinkState() for link in schedule.links}, cancel=False)
            schedule.done.set()
            self._schedules.remove(schedule)
            return
        state, seconds = schedule.steps.pop(0)
        self._apply({link: state for link in schedule.links}, cancel=False)
        self._at(time.monotonic() + seconds, lambda: self._next_step(schedule))

    def _cancel_schedules(self, links: Iterable[Link]) -> None:
        touched = set(links)
        for schedule in list(self._schedules):
            if touched & set(schedule.links):
                schedule.cancelled = True
                schedule.done.set()
                self._schedules.remove(schedule)

    def _apply(self, states: Mapping[Link, LinkState], *, cancel: bool) -> None:
        """Change links (in the loop): existing connections follow at once."""
        if cancel:
            self._cancel_schedules(states)
        with self._lock:
            self._states.update(states)
        for conn in list(self._conns):
            state = states.get(conn.link)
            if state is None:
                continue
            if state.fault is Fault.DROP:
                self._count("reset by drop")
                self._close(conn, reset=True)
            elif state.fault is Fault.BLACKHOLE:
                self._swallow(conn.up, conn)
                self._swallow(conn.down, conn)
            elif state.fault is Fault.LOSE_REPLIES:
                self._swallow(conn.down, conn)
            elif conn.tainted or conn.server is None:
                # Data was swallowed: the HTTP exchange on it is out of step.
                self._count("reset on heal")
                self._close(conn, reset=True)
        for conn in list(self._conns):
            if not conn.closed:
                self._update(conn)

    def _swallow(self, pipe: _Pipe, conn: _Conn) -> None:
        if pipe.queue or pipe.out:
            self._count("bytes swallowed", pipe.pending())
            pipe.queue.clear()
            pipe.out.clear()
            conn.tainted = True

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._counts[what] += n

    def _state(self, link: Link) -> LinkState:
        with self._lock:
            return self._states[link]

    def _on_accept(self, key: selectors.SelectorKey, mask: int) -> None:
        listener = cast(socket.socket, key.fileobj)
        link = self._by_listener[listener]
        for _ in range(64):
            try:
                client, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._count(f"accept failed: {exc.__class__.__name__}")
                return
            state = self._state(link)
            self._count("accepted")
            if state.fault is Fault.DROP:
                self._count("reset by drop")
                _reset(client)
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(link, client)
            self._conns.add(conn)
            if state.fault is Fault.BLACKHOLE:
                conn.tainted = True  # never connected: reset when the link heals
                self._count("black-holed connections")
            else:
                self._connect(conn)
            if conn.closed:
                continue
            # The selector's data is the callback; the connection is found by socket.
            self._conn_of[client] = conn
            if conn.server is not None:
                self._conn_of[conn.server] = conn
            self._update(conn)

    def _connect(self, conn: _Conn) -> None:
        host, port = self.upstreams[conn.link[1]]
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setblocking(False)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.server = server
        err = server.connect_ex((host, port))
        conn.connecting = err != 0
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
            self._count("upstream refused")
            self._close(conn, reset=True)

    def _interest(self, conn: _Conn) -> tuple[int, int]:
        client = selectors.EVENT_READ if not conn.up.eof else 0
        if conn.down.out:
            client |= selectors.EVENT_WRITE
        server = 0
        if conn.server is not None:
            if conn.connecting:
                server = selectors.EVENT_WRITE
            else:
                if not conn.down.eof:
                    server |= selectors.EVENT_READ
                if conn.up.out:
                    server |= selectors.EVENT_WRITE
        return client, server

    def _update(self, conn: _Conn) -> None:
        if conn.closed:
            return
        client, server = self._interest(conn)
        self._modify(conn.client, client, self._on_client)
        if conn.server is not None:
            self._modify(conn.server, server, self._on_server)
        if (conn.up.eof and conn.up.shut or conn.server is None and conn.up.eof) and (
            conn.down.eof and conn.down.shut or conn.server is None
        ):
            self._close(conn, reset=False)

    def _modify(self, sock: socket.socket, events: int, callback: Any) -> None:
        try:
            key = self._sel.get_key(sock)
        except KeyError:
            if events:
                self._sel.register(sock, events, callback)
            return
        if not events:
            self._sel.unregister(sock)
        elif key.events != events:
            self._sel.modify(sock, events, callback)

    def _on_client(self, key: selectors.SelectorKey, mask: int) -> None:
        conn = self._conn_of.get(cast(socket.socket, key.fileobj))
        if conn is None or conn.closed:
            return
        if mask & selectors.EVENT_READ:
            try:
                data = conn.client.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._close(conn, reset=True)
                return
            if data == b"":
                conn.up.eof = True
            elif data:
                self._from_client(conn, data)
        if not conn.closed and mask & selectors.EVENT_WRITE:
            self._write(conn, conn.client, conn.down)
        if not conn.closed:
            self._pass_fin(conn)
            self._update(conn)

    def _on_server(self, key: selectors.SelectorKey, mask: int) -> None:
        conn = self._conn_of.get(cast(socket.socket, key.fileobj))
        if conn is None or conn.closed or conn.server is None:
            return
        if conn.connecting:
            err = conn.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._count("upstream refused")
                self._close(conn, reset=True)
                return
            conn.connecting = False
        if mask & selectors.EVENT_READ:
            try:
                data = conn.server.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._close(conn, reset=True)
                return
            if data == b"":
                conn.down.eof = True
            elif data:
                self._from_server(conn, data)
        if not conn.closed and mask & selectors.EVENT_WRITE and not conn.connecting:
            self._write(conn, conn.server, conn.up)
        if not conn.closed:
            self._pass_fin(conn)
            self._update(conn)

    def _from_client(self, conn: _Conn, data: bytes) -> None:
        state = self._state(conn.link)
        if state.fault is Fault.BLACKHOLE or conn.server is None:
            conn.tainted = True
            self._count("bytes swallowed", len(data))
            return
        self._observe_requests(conn, data)
        self._enqueue(conn, conn.up, data, state.delay)

    def _from_server(self, conn: _Conn, data: bytes) -> None:
        state = self._state(conn.link)
        delivered = state.fault not in (Fault.BLACKHOLE, Fault.LOSE_REPLIES)
        self._observe_replies(conn, data, delivered)
        if not delivered:
            conn.tainted = True
            self._count("bytes swallowed", len(data))
            return
        self._enqueue(conn, conn.down, data, state.delay)

    def _enqueue(self, conn: _Conn, pipe: _Pipe, data: bytes, delay: float) -> None:
        if pipe.pending() + len(data) > _MAX_BUFFERED:
            self._count("reset: too much buffered")
            self._close(conn, reset=True)
            return
        if delay <= 0 and not pipe.queue:
            pipe.out += data
            return
        due = time.monotonic() + delay
        if pipe.queue:
            due = max(due, pipe.queue[-1][0])  # keep the bytes in order
        pipe.queue.append((due, data))

    def _release_due(self, now: float) -> float:
        """Move due delayed chunks to the out buffers; the next due time (or inf)."""
        next_due = float("inf")
        for conn in list(self._conns):
            moved = False
            for pipe in (conn.up, conn.down):
                while pipe.queue and pipe.queue[0][0] <= now:
                    pipe.out += pipe.queue.popleft()[1]
                    moved = True
                if pipe.queue:
                    next_due = min(next_due, pipe.queue[0][0])
            if moved:
                self._pass_fin(conn)
                self._update(conn)
        return next_due

    def _write(self, conn: _Conn, sock: socket.socket, pipe: _Pipe) -> None:
        if not pipe.out:
            return
        try:
            sent = sock.send(pipe.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn, reset=True)
            return
        del pipe.out[:sent]

    def _pass_fin(self, conn: _Conn) -> None:
        # A side that finished sending: pass its FIN on once its bytes are written.
        if conn.closed:
            return
        for pipe, sock in ((conn.up, conn.server), (conn.down, conn.client)):
            if pipe.eof and not pipe.shut and not pipe.out and not pipe.queue:
                if sock is not None and not (sock is conn.server and conn.connecting):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                    pipe.shut = True
                elif sock is None:
                    pipe.shut = True

    def _close(self, conn: _Conn, *, reset: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        for sock in (conn.client, conn.server):
            if sock is None:
                continue
            self._conn_of.pop(sock, None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            if reset:
                _reset(sock)
            else:
                sock.close()
        self._flush_pending(conn)

    # -- observation ------------------------------------------------------------------------

    def _observing(self, path: str) -> bool:
        return self._observe is None or self._observe(path)

    def _observe_requests(self, conn: _Conn, data: bytes) -> None:
        try:
            messages = conn.req_framer.feed(data, is_reply=False)
        except ValueError:
            conn.req_framer.broken = True
            return
        now = time.monotonic()
        for start, _headers, body in messages:
            parts = start.split(" ")
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else (start, "")
            request = _json_or_none(body) if body else None
            conn.pending.append(_Pending(method, path, request, now, True))

    def _observe_replies(self, conn: _Conn, data: bytes, delivered: bool) -> None:
        if conn.req_framer.broken:
            return
        try:
            messages = conn.rep_framer.feed(data, is_reply=True)
        except ValueError:
            conn.rep_framer.broken = True
            return
        now = time.monotonic()
        for start, _headers, body in messages:
            if not conn.pending:
                conn.rep_framer.broken = True
                return
            asked = conn.pending.popleft()
            parts = start.split(" ")
            status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
            self._record(conn, asked, status, _json_or_none(body), now, delivered)

    def _flush_pending(self, conn: _Conn) -> None:
        while conn.pending:
            self._record(conn, conn.pending.popleft(), None, None, None, False)

    def _record(
        self,
        conn: _Conn,
        asked: _Pending,
        status: int | None,
        reply: Any,
        answered_at: float | None,
        reply_delivered: bool,
    ) -> None:
        if not self._observing(asked.path):
            return
        exchange = Exchange(
            conn.link[0],
            conn.link[1],
            asked.method,
            asked.path,
            asked.request,
            asked.asked_at,
            asked.delivered,
            status,
            reply,
            answered_at,
            reply_delivered,
        )
        with self._lock:
            self._exchanges.append(exchange)

    # -- closing ------------------------------------------------------------------------------

    def _close_sockets(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in list(self._conns):
            self._close(conn, reset=True)
        for sock in list(self._listeners.values()):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            sock.close()
        for sock in (self._wake_r, self._wake_w):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            sock.close()
        self._sel.close()
