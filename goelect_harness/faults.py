"""Example-app clusters under injected faults, and the checks of what they did.

* :class:`FaultCluster`: a :class:`~goelect_harness.cluster.LocalCluster` whose
  nodes reach each other only through a :class:`~goelect_harness.faultproxy.FaultProxy`
  (node ``i`` reaches node ``j`` at the proxy's port for ``i -> j``; a node's own
  address is its real one), with a :class:`Monitor` and a record of every
  (re)start. :class:`WatchedCluster` is what it shares with
  :class:`~goelect_harness.netns.NetnsCluster` (nodes in network namespaces).
* :class:`Monitor`: polls every running node's ``GET /_goelect/status`` and keeps
  every event line, per process; :meth:`Monitor.term_violations` says where a
  node's term went backwards.
* Checks that read only what the product left behind: :func:`ledger_violations`
  (the never-twice ledger), :func:`vote_violations` (one vote per term, from the
  replies the proxy saw), :class:`WireLog` (what a node said on the wire versus
  its state file when it restarted).
* Rounds: :func:`play_round` plays a scenario with fresh random choices, heals
  and checks; :func:`run_round` adds it to a :class:`Report` (rounds, violations
  and time without a leader per scenario, printed as a table at the end of a
  test module) and asserts it found nothing. The partition scenarios, shared by
  the proxy and the network-namespace tests, are here too.

Nothing here retries an assertion: waiting is bounded polling, and every
process is signalled by its own PID.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from example_app.ledger import LedgerEntry, check_ledger, tail_ledger
from flask_goelect.core import HardState
from flask_goelect.storage import FileStorage

from .cluster import ClusterError, Event, LeaderView, LocalCluster, Node
from .faultproxy import Exchange, FaultProxy
from .helpers import wait_until

__all__ = [
    "BOUND",
    "FaultCluster",
    "Incarnation",
    "Monitor",
    "Network",
    "Report",
    "RoundResult",
    "Sample",
    "Scenario",
    "WatchedCluster",
    "WireLog",
    "check_no_inflation",
    "granted_votes",
    "ledger_violations",
    "new_lease",
    "partition_leader_minority",
    "partition_then_heal",
    "play_round",
    "read_state_file",
    "report_writer",
    "rounds_from_env",
    "run_round",
    "vote_violations",
    "wait_for_write",
]

#: Event kinds sent in order by the node's signal dispatcher (one channel).
_SIGNAL_EVENTS = frozenset({"started", "state", "leader", "leader_changed", "stopped"})


def read_state_file(path: Path) -> HardState:
    """The term and vote a node persisted (``HardState()`` if it has no state file)."""
    storage = FileStorage(path, fsync=False)
    try:
        return storage.load()
    finally:
        storage.close()


# -- who said what: the monitor ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One answer of ``GET /_goelect/status``: ``mono`` is when it was asked."""

    node: str
    pid: int
    mono: float
    term: int
    state: str
    leader_id: str | None
    is_leader: bool


@dataclass(frozen=True)
class Incarnation:
    """One process of a node: what its state file held just before it started."""

    node: str
    pid: int
    spawned: float  # the launcher's time.monotonic() just before the spawn
    state: HardState


class Monitor:
    """Polls the running nodes' status and keeps their events, per process.

    :param cluster: the cluster to watch (its :attr:`paused` nodes are skipped:
        a stopped process would hold the poll for its whole timeout).
    :param interval: seconds between two polls of the same node.
    :param lifetime: the polling thread ends by itself after this many seconds.
    """

    def __init__(self, cluster: LocalCluster, *, interval: float = 0.05, lifetime: float) -> None:
        self.cluster = cluster
        self.interval = interval
        self._lock = threading.Lock()
        self.samples: dict[str, list[Sample]] = defaultdict(list)
        #: Events per node, each tagged with the pid of the process that printed it.
        self.events: dict[str, list[tuple[int, Event]]] = defaultdict(list)
        self._pid_of: dict[str, int] = {}
        self._max_term_of_pid: dict[int, int] = {}
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._conns: dict[str, http.client.HTTPConnection] = {}
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="cluster-monitor", daemon=True)

    def start(self) -> None:
        """Start polling (once; later calls do nothing)."""
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10.0)
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    # -- events (called from the cluster's reader threads) --------------------------------

    def on_event(self, event: Event) -> None:
        with self._lock:
            if event.kind == "ready" and isinstance(event.data.get("pid"), int):
                self._pid_of[event.node] = event.data["pid"]
            pid = self._pid_of.get(event.node, 0)
            self.events[event.node].append((pid, event))

    def ready_mono(self, node: str, pid: int) -> float | None:
        """When process ``pid`` of ``node`` printed ``ready`` (None: not seen)."""
        with self._lock:
            for event_pid, event in self.events[node]:
                if event_pid == pid and event.kind == "ready":
                    return event.mono
        return None

    # -- polling ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                started = time.monotonic()
                paused: set[str] = getattr(self.cluster, "paused", set())
                for node_id, node in self.cluster.nodes.items():
                    pid = node.pid
                    if pid is None or not node.running or node_id in paused:
                        continue
                    self._poll(node_id, node.host, node.port, pid)
                self._stop.wait(max(0.005, self.interval - (time.monotonic() - started)))
        except Exception as exc:  # recorded, never silent
            self.errors.append(repr(exc))

    def _poll(self, node_id: str, host: str, port: int, pid: int) -> None:
        conn = self._conns.get(node_id)
        if conn is None or (conn.host, conn.port) != (host, port):
            if conn is not None:
                conn.close()
            conn = self._conns[node_id] = http.client.HTTPConnection(host, port, timeout=0.5)
        asked = time.monotonic()
        try:
            conn.request("GET", "/_goelect/status")
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            return
        node = self.cluster.nodes[node_id]
        if response.status != 200 or node.pid != pid:
            return  # restarted meanwhile: the answer may be the new process's
        try:
            status = json.loads(body)
            sample = Sample(
                node_id,
                pid,
                asked,
                int(status["term"]),
                str(status["state"]),
                status["leader_id"],
                bool(status["is_leader"]),
            )
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self.samples[node_id].append(sample)
            self._max_term_of_pid[pid] = max(self._max_term_of_pid.get(pid, 0), sample.term)

    # -- queries ------------------------------------------------------------------------------

    def max_term(self, nodes: Iterable[str], since: float, until: float) -> int | None:
        """The highest term ``nodes`` showed (status or events) between two times."""
        chosen = set(nodes)
        best: int | None = None
        with self._lock:
            for node in chosen:
                for s in self.samples[node]:
                    if since <= s.mono <= until:
                        best = s.term if best is None else max(best, s.term)
                for _, e in self.events[node]:
                    term = e.data.get("term")
                    if since <= e.mono <= until and isinstance(term, int):
                        best = term if best is None else max(best, term)
        return best

    def term_violations(self, incarnations: Sequence[Incarnation]) -> list[str]:
        """Where a node's term went backwards.

        Per process: status answers in order; event lines of the signal channel
        in order (``started``, ``state``, ``leader``, ``leader_changed``,
        ``stopped``); ``lease`` lines (printed by a leader task, not ordered with
        the others) among themselves. Across restarts: a process never shows a
        term below the one its state file held when it started.
        """
        floor = {i.pid: i for i in incarnations}
        out: list[str] = []
        with self._lock:
            samples = {n: list(v) for n, v in self.samples.items()}
            events = {n: list(v) for n, v in self.events.items()}
        for node, node_samples in samples.items():
            last: dict[int, Sample] = {}
            for s in node_samples:
                prev = last.get(s.pid)
                if prev is not None and s.term < prev.term:
                    out.append(
                        f"{node} (pid {s.pid}): status showed term {s.term} after {prev.term}"
                    )
                last[s.pid] = s
                inc = floor.get(s.pid)
                if inc is not None and s.term < inc.state.term:
                    out.append(
                        f"{node} (pid {s.pid}): status showed term {s.term} below the term"
                        f" {inc.state.term} of its state file at start"
                    )
        for node, node_events in events.items():
            last_term: dict[tuple[int, str], tuple[int, str]] = {}
            for pid, e in node_events:
                term = e.data.get("term")
                if not isinstance(term, int):
                    continue
                channel = "lease" if e.kind == "lease" else "signal"
                if e.kind not in _SIGNAL_EVENTS and channel != "lease":
                    continue
                prev_term = last_term.get((pid, channel))
                if prev_term is not None and term < prev_term[0]:
                    out.append(
                        f"{node} (pid {pid}): event {e.kind} with term {term} after"
                        f" {prev_term[1]} with term {prev_term[0]}"
                    )
                last_term[(pid, channel)] = (term, e.kind)
                inc = floor.get(pid)
                if inc is not None and term < inc.state.term:
                    out.append(
                        f"{node} (pid {pid}): event {e.kind} with term {term} below the term"
                        f" {inc.state.term} of its state file at start"
                    )
        return out

    def terms_ahead_of_disk(self, incarnations: Sequence[Incarnation]) -> int:
        """How many processes showed (in their status) a term that their state file
        did not hold when the node next started.

        A node publishes a new term before it writes it, and sends nothing that
        shows it before the write is done (that is checked on the wire), so a
        crash in between is allowed to forget it; this counts how often the
        status route showed such a term.
        """
        count = 0
        by_node: dict[str, list[Incarnation]] = defaultdict(list)
        for inc in sorted(incarnations, key=lambda i: i.spawned):
            by_node[inc.node].append(inc)
        with self._lock:
            for incs in by_node.values():
                for before, after in zip(incs, incs[1:], strict=False):
                    if self._max_term_of_pid.get(before.pid, 0) > after.state.term:
                        count += 1
        return count


# -- checks ------------------------------------------------------------------------------------


def ledger_violations(entries: Sequence[LedgerEntry]) -> list[str]:
    """What in the ledger breaks the never-twice rules.

    * In file order the term never decreases, and one node writes each term
      (:func:`example_app.ledger.check_ledger`).
    * The writes of different terms never interleave in time: every entry of a
      term is older (its ``time`` field) than every entry of a later term.

    Why the second holds: an entry's ``time`` is read after the lease check that
    starts the job and the write follows a second check, so each entry lies
    inside a lease of its writer. A lease ends ``T × (1 − drift)`` after a round
    sent at ``s`` that a majority acknowledged, and each of them promised not to
    vote before ``T`` after it received that round (``≥ s + T``); any later
    leader needs one of those votes, and a hand-over drops the lease before it
    starts. So a later term's first lease begins after an earlier term's last
    lease ended: a gap between writers shorter than ``T`` is legal (a hand-over
    is a round trip), overlapping writes are not.
    """
    out = check_ledger(entries)
    spans: dict[int, tuple[float, float, str]] = {}
    for entry in entries:
        first, last, node = spans.get(entry.term, (entry.time, entry.time, entry.node))
        spans[entry.term] = (min(first, entry.time), max(last, entry.time), node)
    terms = sorted(spans)
    latest_end: tuple[float, int] | None = None
    for term in terms:
        first, last, node = spans[term]
        if latest_end is not None and first <= latest_end[0]:
            out.append(
                f"term {term} ({node}) wrote at {first:.6f}, before the last write"
                f" {latest_end[0]:.6f} of term {latest_end[1]}: two writers' leases overlap"
            )
        if latest_end is None or last > latest_end[0]:
            latest_end = (last, term)
    return out


def _announced(exchange: Exchange) -> list[tuple[str, int, float]]:
    """The terms each side of ``exchange`` stated on the wire: (node, term, when)."""
    out: list[tuple[str, int, float]] = []
    request, reply = exchange.request, exchange.reply
    kind = exchange.path.rsplit("/", 1)[-1]
    if kind not in ("vote", "heartbeat", "timeout-now") or not isinstance(request, dict):
        return out
    term = request.get("term")
    if isinstance(term, int):
        # A pre-vote asks about term + 1 without the sender being in it.
        out.append((exchange.src, term - 1 if request.get("pre_vote") else term, exchange.asked_at))
    if exchange.status == 200 and isinstance(reply, dict) and exchange.answered_at is not None:
        rterm = reply.get("term")
        # A granted pre-vote echoes the asked term, not the voter's.
        if isinstance(rterm, int) and not (reply.get("pre_vote") and reply.get("granted")):
            out.append((exchange.dst, rterm, exchange.answered_at))
    return out


def granted_votes(exchanges: Iterable[Exchange]) -> list[tuple[str, int, str, float]]:
    """Every real (not pre-) vote granted: (voter, term, candidate, when)."""
    out = []
    for e in exchanges:
        if not e.path.endswith("/rpc/vote") or e.status != 200 or e.answered_at is None:
            continue
        if not isinstance(e.request, dict) or not isinstance(e.reply, dict):
            continue
        if e.request.get("pre_vote") or not e.reply.get("granted"):
            continue
        out.append((e.dst, int(e.reply["term"]), str(e.request["sender"]), e.answered_at))
    return out


def vote_violations(votes: Iterable[tuple[str, int, str, float]]) -> list[str]:
    """Every (voter, term) that granted votes to two candidates."""
    given: dict[tuple[str, int], set[str]] = defaultdict(set)
    for voter, term, candidate, _ in votes:
        given[(voter, term)].add(candidate)
    return [
        f"{voter} granted votes in term {term} to {sorted(candidates)}: two votes in a term"
        for (voter, term), candidates in sorted(given.items())
        if len(candidates) > 1
    ]


class WireLog:
    """What each node said on the wire (from the proxy), checked against its state files.

    Raft §5.2: the term and vote reach the disk before any message that shows
    them leaves. So, for each restart of a node with state file ``S``:

    * every term the node stated before the restart is at most ``S.term``;
    * every vote it granted before the restart in term ``S.term`` went to
      ``S.voted_for``, and it granted none in a later term;
    * once the new process is ready, it never states a term below ``S.term``.

    Fed incrementally (:meth:`update`), so that a long run stays cheap.
    """

    def __init__(self) -> None:
        self.said: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.votes: list[tuple[str, int, str, float]] = []
        self.violations: list[str] = []
        self._seen_exchanges = 0
        self._incarnations: dict[str, list[Incarnation]] = defaultdict(list)
        self._deferred: list[tuple[str, int, float]] = []

    def update(
        self,
        exchanges: Sequence[Exchange],
        incarnations: Sequence[Incarnation],
        ready_mono: Callable[[str, int], float | None],
    ) -> None:
        """Take the exchanges and incarnations not seen yet; check what they add."""
        for inc in incarnations:
            known = self._incarnations[inc.node]
            if inc in known:
                continue
            known.append(inc)
            known.sort(key=lambda i: i.spawned)
            for term, when in self.said[inc.node]:
                self._check_before(inc, term, when)
            for vote in self.votes:
                self._check_vote(inc, vote)
        new = exchanges[self._seen_exchanges :]
        self._seen_exchanges = len(exchanges)
        for e in new:
            for node, term, when in _announced(e):
                self.said[node].append((term, when))
                for inc in self._incarnations[node]:
                    self._check_before(inc, term, when)
                self._deferred.append((node, term, when))
        for vote in granted_votes(new):
            self.votes.append(vote)
            for inc in self._incarnations[vote[0]]:
                self._check_vote(inc, vote)
        waiting = []
        for node, term, when in self._deferred:
            if not self._check_after(node, term, when, ready_mono):
                waiting.append((node, term, when))
        self._deferred = waiting

    def _add(self, text: str) -> None:
        if text not in self.violations:
            self.violations.append(text)

    def _check_before(self, inc: Incarnation, term: int, when: float) -> None:
        if when < inc.spawned and term > inc.state.term:
            self._add(
                f"{inc.node} stated term {term} but its state file held term"
                f" {inc.state.term} when it restarted (pid {inc.pid})"
            )

    def _check_vote(self, inc: Incarnation, vote: tuple[str, int, str, float]) -> None:
        voter, term, candidate, when = vote
        if voter != inc.node or when >= inc.spawned:
            return
        if term > inc.state.term or (term == inc.state.term and inc.state.voted_for != candidate):
            self._add(
                f"{voter} granted its vote in term {term} to {candidate}, but its state"
                f" file held term {inc.state.term} voted_for {inc.state.voted_for}"
                f" when it restarted (pid {inc.pid})"
            )

    def _check_after(
        self, node: str, term: int, when: float, ready_mono: Callable[[str, int], float | None]
    ) -> bool:
        """Check a statement against the process that made it; False: not known yet."""
        incs = [i for i in self._incarnations[node] if i.spawned < when]
        if not incs:
            return True  # before the first start: nothing to compare with
        inc = incs[-1]
        ready = ready_mono(inc.node, inc.pid)
        if ready is None:
            # Not ready yet: the statement is a late byte of the previous process,
            # or the ready line is still being read. Decide later (bounded: a node
            # prints ready within seconds, or the round fails on start-up).
            return time.monotonic() - inc.spawned > 60.0
        if when > ready and term < inc.state.term:
            self._add(
                f"{node} (pid {inc.pid}) stated term {term}, below the term"
                f" {inc.state.term} of its state file at start"
            )
        return True


# -- clusters ----------------------------------------------------------------------------------


class Network(Protocol):
    """What partition scenarios need from the network between the nodes.

    ``rng`` may choose how links are cut where there is a choice (the proxy
    resets connections or black-holes them).
    """

    def partition(self, *groups: Iterable[str], rng: random.Random | None = None) -> None: ...

    def heal(self) -> None: ...


#: How a node runs with ``node_patch``: patched by gevent first, as ``python -m
#: example_app`` is, then the patch, then the node's module as ``__main__``. It
#: imports from the repository root because LocalCluster runs every node there
#: (the root is its working directory and first PYTHONPATH entry).
_PATCHED_MAIN = """\
from gevent import monkey
monkey.patch_all()
import runpy
{patch}
runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
"""


_W = TypeVar("_W", bound="WatchedCluster")


class WatchedCluster(LocalCluster):
    """A LocalCluster that records every (re)start, tracks paused nodes and is monitored.

    ``node_patch``: Python code every node runs before the app starts (tests
    use it to run deliberately broken nodes, to show that the checks catch them).
    """

    net: Network

    def __init__(
        self, *args: Any, lifetime: float, node_patch: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.node_patch = node_patch
        self.lifetime = lifetime
        self.incarnations: list[Incarnation] = []
        self.paused: set[str] = set()
        self.monitor = Monitor(self, lifetime=lifetime)
        self.on_event = self.monitor.on_event
        self.forged_votes: list[tuple[str, int, str, float]] = []

    def __enter__(self: _W) -> _W:
        return self

    @property
    def T(self) -> float:  # noqa: N802 - the election timeout, as the papers name it
        return self.elect_timeout / 1000

    def command(self, node_id: str, start_at: float | None = None) -> list[str]:
        cmd = super().command(node_id, start_at)
        if self.node_patch is not None:
            at = cmd.index("-m")
            script = _PATCHED_MAIN.format(patch=self.node_patch, module=self.node_module)
            cmd[at : at + 2] = ["-c", script]
        return cmd

    def state_file(self, node_id: str) -> Path:
        return self.nodes[node_id].state_dir / f"goelect-{node_id}.json"

    def _spawn(self, node: Node, start_at: float | None) -> None:
        """Spawn the node as LocalCluster does, first noting its state file."""
        state, spawned = read_state_file(self.state_file(node.id)), time.monotonic()
        self.monitor.start()
        super()._spawn(node, start_at)
        assert node.pid is not None
        self.incarnations.append(Incarnation(node.id, node.pid, spawned, state))

    def pause(self, node_id: str) -> float:
        """SIGSTOP the node and wait until the kernel shows it stopped."""
        sent = super().pause(node_id)
        self.paused.add(node_id)
        pid = self.nodes[node_id].pid
        assert pid is not None
        if not wait_until(lambda: _proc_state(pid) in ("T", "t"), 5.0, 0.001):
            raise ClusterError(f"node {node_id} (pid {pid}) did not stop after SIGSTOP")
        return sent

    def resume(self, node_id: str) -> float:
        sent = super().resume(node_id)
        self.paused.discard(node_id)
        return sent

    def leader_view(self, timeout: float = 15.0, **kwargs: Any) -> LeaderView:
        kwargs.setdefault("poll", 0.05)
        return self.wait_for_leader(timeout, **kwargs)

    def close(self) -> None:
        # A stopped process would ignore the SIGTERM of a graceful stop.
        for node_id in list(self.paused):
            with contextlib.suppress(ClusterError, ProcessLookupError):
                self.resume(node_id)
        try:
            super().close()
        finally:
            self.monitor.close()

    def violations(self) -> list[str]:
        """Every violation found so far in what the cluster left behind."""
        out = ledger_violations(self.ledger_entries())
        out += self.monitor.term_violations(self.incarnations)
        out += [f"monitor: {e}" for e in self.monitor.errors]
        return out


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except OSError:
        return "?"
    return stat[stat.rindex(")") + 2 :].split()[0]


class _ProxyNet:
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def partition(self, *groups: Iterable[str], rng: random.Random | None = None) -> None:
        fault = rng.choice(["drop", "blackhole"]) if rng is not None else "drop"
        self.proxy.partition(*groups, fault=fault)

    def heal(self) -> None:
        self.proxy.heal()


class FaultCluster(WatchedCluster):
    """Example-app nodes on loopback that reach each other only through a FaultProxy.

    Takes LocalCluster's arguments plus ``lifetime`` (seconds after which the
    proxy and the monitor stop by themselves). ``proxy`` is started at once: the
    peer addresses of every node are its link ports.
    """

    def __init__(self, *args: Any, lifetime: float, **kwargs: Any) -> None:
        super().__init__(*args, lifetime=lifetime, **kwargs)
        try:
            self.proxy = FaultProxy(
                {n.id: (n.host, n.port) for n in self.nodes.values()}, lifetime=lifetime
            )
            self.proxy.start()
        except BaseException:
            super().close()
            raise
        self.net = _ProxyNet(self.proxy)
        self.wire = WireLog()

    def peer_address(self, node_id: str, peer_id: str) -> str:
        return self.proxy.address(node_id, peer_id)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.proxy.close()

    def violations(self) -> list[str]:
        self.wire.update(self.proxy.exchanges(), self.incarnations, self.monitor.ready_mono)
        out = super().violations()
        out += vote_violations(self.wire.votes + self.forged_votes)
        out += self.wire.violations
        out += [f"proxy: {e}" for e in self.proxy.errors]
        return out

    def forge_vote_request(
        self, node_id: str, sender: str, term: int, *, transfer: bool
    ) -> dict[str, Any]:
        """Send ``node_id`` a VoteRequest as if from ``sender`` (straight to its real
        address) and return the decoded reply; a granted vote is recorded."""
        node = self.nodes[node_id]
        body = json.dumps({"sender": sender, "term": term, "pre_vote": False, "transfer": transfer})
        conn = http.client.HTTPConnection(node.host, node.port, timeout=5.0)
        try:
            # Unsigned (the example app has no GOELECT_SECRET), but naming its sender
            # as nodes do.
            conn.request(
                "POST",
                "/_goelect/rpc/vote",
                body=body,
                headers={"Content-Type": "application/json", "X-Goelect-Sender": sender},
            )
            response = conn.getresponse()
            reply: dict[str, Any] = json.loads(response.read())
        finally:
            conn.close()
        if reply.get("granted"):
            self.forged_votes.append((node_id, int(reply["term"]), sender, time.monotonic()))
        return reply


# -- results -----------------------------------------------------------------------------------


@dataclass
class RoundResult:
    """What one round of a scenario found and measured.

    ``violations``: broken properties (the round fails); ``leaderless``: seconds
    without a leader, one per change of leader; ``extra``: other durations in
    seconds (e.g. the ledger gap of a hand-over); ``counts``: events worth
    reporting that are not violations (e.g. a leader change on heal).
    """

    violations: list[str] = field(default_factory=list)
    leaderless: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    counts: Counter[str] = field(default_factory=Counter)
    notes: str = ""


@dataclass
class _Row:
    rounds: int = 0
    violations: int = 0
    leaderless: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


class Report:
    """Per-scenario figures of a module: rounds, violations, time without a leader."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: dict[str, _Row] = {}

    def add(self, scenario: str, result: RoundResult, violations: int, seconds: float) -> None:
        row = self.rows.setdefault(scenario, _Row())
        row.rounds += 1
        row.violations += violations
        row.leaderless.extend(result.leaderless)
        for key, values in result.extra.items():
            row.extra[key].extend(values)
        row.counts.update(result.counts)
        row.seconds += seconds

    def to_json(self) -> dict[str, Any]:
        return {
            name: {
                "rounds": row.rounds,
                "violations": row.violations,
                "leaderless_ms": [round(x * 1000, 1) for x in row.leaderless],
                "extra_ms": {k: [round(x * 1000, 1) for x in v] for k, v in row.extra.items()},
                "counts": dict(row.counts),
                "seconds": round(row.seconds, 1),
            }
            for name, row in self.rows.items()
        }

    def lines(self) -> list[str]:
        """The table: one row per scenario, times in milliseconds (median / max)."""

        def ms(values: list[float]) -> str:
            if not values:
                return "-"
            return f"{statistics.median(values) * 1000:.0f} / {max(values) * 1000:.0f}"

        width = max([len("scenario"), *(len(name) for name in self.rows)])
        out = [
            self.title,
            f"{'scenario':<{width}}  rounds  violations  leaderless ms (n: median / max)  notes",
        ]
        for name, row in self.rows.items():
            notes = [f"{k} {ms(v)} ms" for k, v in sorted(row.extra.items())]
            notes += [f"{k}: {n}" for k, n in sorted(row.counts.items())]
            leaderless = f"{len(row.leaderless)}: {ms(row.leaderless)}"
            out.append(
                f"{name:<{width}}  {row.rounds:>6}  {row.violations:>10}  {leaderless:<31}"
                f"  {'; '.join(notes)}"
            )
        rounds = sum(row.rounds for row in self.rows.values())
        violations = sum(row.violations for row in self.rows.values())
        seconds = sum(row.seconds for row in self.rows.values())
        out.append(
            f"{'total':<{width}}  {rounds:>6}  {violations:>10}  ({seconds:.0f} s of rounds)"
        )
        return out


def report_writer(config: Any, report: Report) -> Callable[[], None]:
    """A finalizer that prints ``report`` on the terminal (outside capture) and, if
    ``GOELECT_SYSTEM_REPORT`` names a file, writes it there as JSON."""

    def write() -> None:
        if not report.rows:
            return
        path = os.environ.get("GOELECT_SYSTEM_REPORT")
        if path:
            existing: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                existing = json.loads(Path(path).read_text())
            existing.update(report.to_json())
            Path(path).write_text(json.dumps(existing, indent=1) + "\n")
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return
        ctx = (
            capture.global_and_fixture_disabled()
            if capture is not None
            else contextlib.nullcontext()
        )
        with ctx:
            reporter.write_line("")
            for line in report.lines():
                reporter.write_line(line)

    return write


# -- rounds -------------------------------------------------------------------------------------

#: Seconds to wait for anything a healthy cluster does in well under a second.
BOUND = 15.0

Scenario = Callable[[Any, random.Random, LeaderView, RoundResult], None]


def rounds_from_env(default: int = 1) -> int:
    """``GOELECT_SYSTEM_ROUNDS`` (rounds per scenario and cluster size), default 1."""
    text = os.environ.get("GOELECT_SYSTEM_ROUNDS", "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"GOELECT_SYSTEM_ROUNDS must be a positive integer, not {text!r}")
    return int(text)


def restore(cluster: WatchedCluster) -> None:
    """Undo every fault: the network heals, paused nodes resume, stopped nodes start."""
    cluster.net.heal()
    for node_id in list(cluster.paused):
        cluster.resume(node_id)
    stopped = [n for n, node in cluster.nodes.items() if not node.running]
    if stopped:
        cluster.start(stopped, timeout=60.0)


def settle(cluster: WatchedCluster) -> LeaderView:
    """Every node running and one agreed leader, past every restart promise."""
    restore(cluster)
    first = cluster.leader_view(BOUND)
    # A restarted node grants nothing for T after it starts; let that pass.
    time.sleep(2 * cluster.T)
    return cluster.leader_view(BOUND, min_term=first.term)


def new_lease(
    cluster: LocalCluster,
    since: int,
    above_term: int,
    among: Iterable[str] | None = None,
    timeout: float = BOUND,
) -> Event | None:
    """The first ``lease`` event (from index ``since``) of a term above ``above_term``."""
    chosen = set(among) if among is not None else None
    return cluster.wait_for_event(
        lambda e: (
            e.kind == "lease"
            and int(e.data.get("term", 0)) > above_term
            and (chosen is None or e.node in chosen)
        ),
        timeout,
        since=since,
    )


def wait_for_write(
    cluster: LocalCluster, node: str, term: int, timeout: float = BOUND
) -> LedgerEntry | None:
    """The first ledger entry ``node`` wrote in ``term``, waiting up to ``timeout``."""

    def find() -> LedgerEntry | None:
        for entry in tail_ledger(cluster.ledger, 200):
            if entry.node == node and entry.term == term:
                return entry
        return None

    found: LedgerEntry | None = wait_until(find, timeout, 0.02)
    return found


def play_round(cluster: WatchedCluster, scenario: Scenario, seed: int) -> RoundResult:
    """Run one round of ``scenario`` with randomness from ``seed``, heal, and check.

    The round's violations are the scenario's own, liveness after healing (an
    agreed leader that writes to the ledger in its term), and every new
    violation in what the cluster left behind (:meth:`WatchedCluster.violations`).
    """
    rng = random.Random(seed)
    known = set(cluster.violations())
    ahead = cluster.monitor.terms_ahead_of_disk(cluster.incarnations)
    leader = settle(cluster)
    result = RoundResult()
    try:
        scenario(cluster, rng, leader, result)
    finally:
        restore(cluster)
    try:
        final = cluster.leader_view(BOUND)
        if wait_for_write(cluster, final.id, final.term) is None:
            result.violations.append(
                f"liveness: leader {final.id} wrote nothing in term {final.term} within {BOUND}s"
            )
    except ClusterError as exc:
        result.violations.append(f"liveness after healing: {exc}")
    result.violations += [v for v in cluster.violations() if v not in known]
    now_ahead = cluster.monitor.terms_ahead_of_disk(cluster.incarnations)
    if now_ahead > ahead:
        result.counts["status showed a term not yet on disk"] += now_ahead - ahead
    result.notes = f"seed {seed}, leader was {leader.id} in term {leader.term}"
    return result


def run_round(
    cluster: WatchedCluster,
    report: Report,
    name: str,
    scenario: Scenario,
    seed: int | None = None,
) -> RoundResult:
    """Play a round with a fresh seed, add it to ``report``, then assert it found nothing."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    started = time.monotonic()
    result = play_round(cluster, scenario, seed)
    report.add(name, result, len(result.violations), time.monotonic() - started)
    assert not result.violations, f"{name} ({result.notes}):\n  " + "\n  ".join(result.violations)
    return result


# -- partition scenarios (shared by the proxy and the network-namespace tests) --------------------


def check_no_inflation(
    cluster: WatchedCluster,
    result: RoundResult,
    minority: Iterable[str],
    term: int,
    since: float,
    until: float,
) -> None:
    # Pre-vote: a node cut off from a majority never gets the pre-votes it needs,
    # so it never raises its term, and cannot depose the leader when it rejoins.
    seen = cluster.monitor.max_term(minority, since, until)
    if seen is not None and seen > term:
        result.violations.append(
            f"a node of the minority {sorted(minority)} reached term {seen} > {term}"
            " while partitioned (pre-vote must keep its term)"
        )


def _heal_and_compare(cluster: WatchedCluster, result: RoundResult, node: str, term: int) -> None:
    cluster.net.heal()
    try:
        after = cluster.leader_view(BOUND, min_term=term)
    except ClusterError as exc:
        result.violations.append(f"liveness after healing the partition: {exc}")
        return
    if (after.id, after.term) != (node, term):
        result.counts["leader changed on heal"] += 1


def partition_leader_minority(
    cluster: WatchedCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """The leader (with up to ``(n-1)//2 - 1`` followers) is cut off from the rest.

    The majority elects a leader of a higher term; the minority's terms never
    grow; after healing one leader is agreed (the majority's, unless something
    else happened, which is counted).
    """
    ids = list(cluster.nodes)
    followers = [n for n in ids if n != leader.id]
    size = rng.randint(1, (len(ids) - 1) // 2)
    minority = {leader.id, *rng.sample(followers, size - 1)}
    majority = [n for n in ids if n not in minority]
    time.sleep(rng.uniform(0, cluster.T))
    mark = cluster.mark()
    cut = time.monotonic()
    cluster.net.partition(minority, majority, rng=rng)
    lease = new_lease(cluster, mark, leader.term, among=majority)
    if lease is None:
        result.violations.append(f"the majority {majority} elected no leader within {BOUND}s")
        return
    result.leaderless.append(lease.mono - cut)
    time.sleep(rng.uniform(0, 2 * cluster.T))
    check_no_inflation(cluster, result, minority, leader.term, cut, time.monotonic())
    _heal_and_compare(cluster, result, lease.node, int(lease.data["term"]))


def partition_then_heal(
    cluster: WatchedCluster, rng: random.Random, leader: LeaderView, result: RoundResult
) -> None:
    """A random minority (the leader may be in it or not) is cut off, then healed.

    If the leader is in the minority the majority elects another; if not, the
    leader goes on (a change is counted). The minority's terms never grow.
    """
    ids = list(cluster.nodes)
    minority = set(rng.sample(ids, rng.randint(1, (len(ids) - 1) // 2)))
    majority = [n for n in ids if n not in minority]
    time.sleep(rng.uniform(0, cluster.T))
    mark = cluster.mark()
    cut = time.monotonic()
    cluster.net.partition(minority, majority, rng=rng)
    node, term = leader.id, leader.term
    if leader.id in minority:
        lease = new_lease(cluster, mark, leader.term, among=majority)
        if lease is None:
            result.violations.append(f"the majority {majority} elected no leader within {BOUND}s")
            return
        result.leaderless.append(lease.mono - cut)
        node, term = lease.node, int(lease.data["term"])
    else:
        time.sleep(rng.uniform(2 * cluster.T, 4 * cluster.T))
        changed = new_lease(cluster, mark, leader.term, timeout=0)
        if changed is not None:
            result.counts["leader changed in the majority"] += 1
            node, term = changed.node, int(changed.data["term"])
    time.sleep(rng.uniform(0, cluster.T))
    check_no_inflation(cluster, result, minority, leader.term, cut, time.monotonic())
    _heal_and_compare(cluster, result, node, term)
