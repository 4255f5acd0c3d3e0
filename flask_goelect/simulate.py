"""A simulated cluster with a virtual clock that checks the election's safety rules.

Run ``python -m flask_goelect.simulate --help``. Each *schedule* builds a fresh
cluster of :class:`flask_goelect.core.Node` objects on a simulated network,
draws faults at random from its seed, and watches every step for:

1. ``two-leaders``: two leaders elected in one term;
2. ``lease-overlap``: two nodes holding a valid lease at the same virtual
   instant, with each node's clock running at its own rate within the drift
   bound (the guarantee ``@leader_only`` relies on);
3. ``lease-margin``: a lease that the promises do not cover. The design rests
   on one inequality, checked whenever a lease or a promise changes, not only
   when an overlap happens to occur: for every lease a node holds, a majority
   of voters (the leader itself included) acknowledged a round the lease can
   count from (a heartbeat round, or the vote round that elected it: a vote
   promises what an ack does) and each of them holds a promise that outlasts
   the lease in real time, under the worst clock rates the drift bound allows and with no delay
   between the round's send and its receipt. A lease a few percent too long
   opens a window of milliseconds that random schedules rarely hit; this check
   sees it at the first lease;
4. ``promise-broken``: a node granting a vote or a pre-vote (other than a
   transfer's), or campaigning (its vote for itself; a transfer's campaign
   excepted), before the end of the promise it states (``Node.promise_until``):
   an election timer shorter than the promise is caught here;
5. ``double-vote``: a node granting votes to two candidates in one term, also
   across crash and restart from its persisted state;
6. ``term-regression``: a node's term going backwards;
7. ``no-leader``: no leader within 10 × T after the faults heal;
8. ``disruption``: a healed, previously isolated node deposing a healthy leader.

A schedule has four phases: *chaos* (random faults), *heal* (all faults removed:
a leader must appear within 10 × T), *failover* (the leader is crashed on a
clean network; the time until another node holds a lease is measured) and
*rejoin* (a follower is cut off for several election timeouts and then healed:
the leader must keep its term). Idle virtual time is skipped, not ticked through.

A share of the schedules (``SimConfig.boundary``) is played at the edge of
what the design allows: no network delay, clock rates at the two ends of the
drift bound, election timers that often fire at the first instant they may (the
instant a promise ends), and leaders cut off right after a lease was renewed.

The ``handoff`` fault stops a node's process and starts another one for the
same node after a short gap, resuming (:class:`~flask_goelect.core.Resume`)
from the last snapshot the old process published, as the multi-process runner
does: a step is persisted, then published, then its messages are sent, and the
process may die between any two of these. A reply goes back only to the
process that sent the request (over HTTP it rides that request's connection).

``SimConfig.stale_nodes`` plays a change of the voter set not made everywhere:
those nodes list only the first ``stale_voters`` voters.

The simulator is pure Python with no I/O but printing, so schedules are exactly
reproducible from their seed (``--replay SEED``).
"""

from __future__ import annotations

import argparse
import collections
import heapq
import math
import multiprocessing
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .core import (
    Config,
    HardState,
    LeaderInfo,
    Node,
    NotLeaderError,
    Output,
    Peer,
    Resume,
    Role,
    TransferError,
    VoterSetMismatch,
)
from .messages import Heartbeat, HeartbeatReply, Reply, Request, VoteReply, VoteRequest

__all__ = [
    "FAULTS",
    "VIOLATION_KINDS",
    "ScheduleResult",
    "SimConfig",
    "Simulation",
    "Summary",
    "main",
    "run_schedules",
]

FAULTS = (
    "drop",
    "delay",
    "duplicate",
    "reorder",
    "partition",
    "one-way",
    "crash",
    "restart",
    "pause",
    "drift",
    "transfer",
    "handoff",
)
VIOLATION_KINDS = (
    "two-leaders",
    "lease-overlap",
    "lease-margin",
    "promise-broken",
    "double-vote",
    "term-regression",
    "no-leader",
    "disruption",
)

NodeFactory = Callable[..., Node]

# Event kinds in the queue.
_DELIVER, _TIMER, _CONTROL = 0, 1, 2

#: Slack for floating-point rounding when comparing local times (seconds).
_EPS = 1e-9
_NEVER = -math.inf


@dataclass(frozen=True)
class SimConfig:
    """What to simulate: cluster shape, timing (seconds), faults and length."""

    nodes: int = 5
    observers: int = 1
    elect_timeout: float = 0.2
    heartbeat_interval: float = 0.05
    duration: float = 30.0
    faults: frozenset[str] = frozenset(FAULTS)
    max_drift: float = 0.01
    #: The sender gives up on a reply after this long (the HTTP read timeout).
    rpc_timeout: float | None = None
    #: One-way network latency range on a healthy link.
    latency: tuple[float, float] = (0.0002, 0.001)
    #: The share of schedules played at the edge of what the design allows.
    boundary: float = 0.25
    #: The first ``stale_nodes`` voters list only the first ``stale_voters``
    #: voters (and the observers): a change of the voter set not made on every
    #: node. 0: every node lists every node.
    stale_nodes: int = 0
    stale_voters: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        if self.nodes < 1 or self.observers < 0:
            raise ValueError("need at least one voter and no negative observer count")
        if not 0.0 <= self.boundary <= 1.0:
            raise ValueError(f"boundary is a share of schedules in [0, 1], not {self.boundary}")
        if self.stale_nodes and not 0 < self.stale_nodes <= self.stale_voters < self.nodes:
            raise ValueError(
                f"stale_nodes ({self.stale_nodes}) must be at most stale_voters"
                f" ({self.stale_voters}), which must be below nodes ({self.nodes}): the stale"
                " nodes are among the voters of the old list, which is shorter"
            )

    @property
    def reply_timeout(self) -> float:
        """How long a sender waits for a reply."""
        return self.rpc_timeout if self.rpc_timeout is not None else self.elect_timeout


@dataclass
class ScheduleResult:
    """What one schedule did and found."""

    seed: int
    violations: list[tuple[str, float, str]] = field(default_factory=list)
    elections: int = 0
    failover: float | None = None
    events: int = 0
    trace: list[str] = field(default_factory=list)
    #: Played at the edge of the design (no delay, extreme drift, earliest timers).
    boundary: bool = False
    handoffs: int = 0
    #: Requests refused because their sender counts another voter set.
    refused: int = 0
    #: Pre-vote rounds started (a timer that fired and asked "would you vote for me?").
    pre_votes: int = 0
    #: For each term someone campaigned in, the candidates (each voted for itself).
    candidates: dict[int, set[int]] = field(default_factory=dict)
    #: Leaders that stepped down because they saw a later term (a campaign deposed them),
    #: and those that stepped down because a majority stopped answering (check quorum).
    deposed: int = 0
    lost_quorum: int = 0
    #: Of the deposed, those that held a valid lease then: healthy leaders disrupted.
    deposed_healthy: int = 0
    #: The failover phase alone (clean network): pre-vote rounds and terms campaigned
    #: in between the crash of the leader and the next lease.
    failover_pre_votes: int = 0
    failover_campaigns: int = 0

    @property
    def campaigns(self) -> int:
        """Terms in which at least one node became a candidate."""
        return len(self.candidates)

    @property
    def split_votes(self) -> int:
        """Terms in which two or more nodes became candidates (each voted for itself)."""
        return sum(1 for c in self.candidates.values() if len(c) > 1)


class _Violation(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class _EdgeRandom(random.Random):
    """An election timer at its earliest instant (T: the promise just ended) a third
    of the time; uniform otherwise."""

    def random(self) -> float:
        r = super().random()
        return 0.0 if r < 1 / 3 else (r - 1 / 3) * 1.5


#: A round as the checker saw it leave: a heartbeat round, or a candidate's vote
#: round (a granted vote promises what an ack does). The message (kept alive, so
#: that its id() names this round only), its send time on the sender's clock
#: times the worst rate ratio, and the acks of the sender's term (see
#: ``Simulation.acked``).
_Round = tuple[Heartbeat | VoteRequest, float, dict[int, float]]


class Simulation:
    """One schedule: a cluster, a network, a virtual clock and the checker."""

    def __init__(
        self,
        cfg: SimConfig,
        seed: int,
        *,
        node_factory: NodeFactory = Node,
        trace: int = 400,
        verbose: bool = False,
    ) -> None:
        self.cfg = cfg
        self.seed = seed
        self.rng = random.Random(seed)
        self.node_factory = node_factory
        self.verbose = verbose
        T = cfg.elect_timeout
        self.T = T
        n = cfg.nodes + cfg.observers
        self.ids = [f"n{i + 1}" for i in range(n)]
        self.index = {nid: i for i, nid in enumerate(self.ids)}
        self.voters = list(range(cfg.nodes))
        self.is_voter = [i < cfg.nodes for i in range(n)]
        peers = tuple(
            Peer(nid, f"sim://{nid}", novote=i >= cfg.nodes) for i, nid in enumerate(self.ids)
        )
        stale = tuple(p for i, p in enumerate(peers) if i < cfg.stale_voters or i >= cfg.nodes)
        self.configs = [
            Config(
                nid,
                stale if i < cfg.stale_nodes else peers,
                novote=i >= cfg.nodes,
                elect_timeout=T,
                heartbeat_interval=cfg.heartbeat_interval,
                max_drift=cfg.max_drift,
            )
            for i, nid in enumerate(self.ids)
        ]
        # A lease is checked against the voters of its leader's list (as the
        # simulator wrote it: a broken core cannot change it). With a list not
        # changed everywhere, two lists' majorities may not overlap: that shows
        # as two leases at once, or two leaders in a term.
        self.voters_of = [frozenset(self.index[v] for v in c.voters) for c in self.configs]
        self.quorum_of = [c.quorum for c in self.configs]
        self.boundary = self.rng.random() < cfg.boundary
        self.result = ScheduleResult(seed, boundary=self.boundary)
        # Each node's clock: local = offset + rate * real. Rates lie in
        # [1, 1 + drift], so any two differ by a factor of at most 1 + drift; at
        # the boundary every rate is one of the two ends.
        drift = cfg.max_drift if "drift" in cfg.faults else 0.0
        if self.boundary:
            self.rate = [1.0 + drift * self.rng.randrange(2) for _ in range(n)]
            self.latency = (0.0, 0.0)
        else:
            self.rate = [1.0 + self.rng.random() * drift for _ in range(n)]
            self.latency = cfg.latency
        self.offset = [self.rng.uniform(0.0, 1000.0) for _ in range(n)]
        #: The worst ratio of two nodes' clock rates the design allows.
        self.worst_rate = 1.0 + cfg.max_drift
        self.now = 0.0
        self.queue: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self.stored = [HardState() for _ in range(n)]
        self.nodes: list[Node | None] = [None] * n
        #: Each node's process, counted: a reply reaches only the one that asked.
        self.incarnation = [0] * n
        #: The last snapshot each node published (term, leader id, lease), as the
        #: next process of the node resumes from it.
        self.published: list[tuple[int, str | None, float] | None] = [None] * n
        self.publishing = "handoff" in cfg.faults
        #: The promise a process handed over between two steps left in its last
        #: record (a process that died inside a step left none).
        self.handoff_promise: list[tuple[float, float] | None] = [None] * n
        #: A handoff armed to happen in a node's next step: "step" (any) or
        #: "persist" (one that persists), and the gap before the next process.
        self.dies_in_step: list[tuple[str, float] | None] = [None] * n
        self.paused = [False] * n
        self.backlog: list[list[tuple[Any, ...]]] = [[] for _ in range(n)]
        self.timer_version = [0] * n
        self.timer_at = [math.inf] * n
        # Network state.
        self.cut: set[tuple[int, int]] = set()
        self.p_drop = 0.0
        self.p_dup = 0.0
        self.p_delay = 0.0
        self.max_delay = 0.0
        self.jitter = 0.0
        # Checker state.
        self.leader_of_term: dict[int, str] = {}
        self.votes: dict[tuple[int, int], str] = {}
        self.last_term = [0] * n
        self.lease_local = [0.0] * n
        self.lease_real = [0.0] * n
        self.rounds: dict[int, _Round] = {}  # by id() of the Heartbeat
        self._round_ids: collections.deque[tuple[float, int]] = collections.deque()
        #: For each (leader, term), each voter that acknowledged one of its rounds
        #: (or granted it its vote in the term: the vote round),
        #: with the best of ``sent × (1 + drift) − received`` over those rounds (see
        #: _check_margin).
        self.acked: dict[tuple[int, int], dict[int, float]] = {}
        self.promise_seen = [-math.inf] * n
        #: (leader, for how long, until when): cut it off at its next lease renewal.
        self.cut_off_at_renewal: tuple[int, float, float] | None = None
        self.first_lease_after: float | None = None
        self.watch_from: float | None = None
        self.failover_from: float | None = None
        self.failover_crashed: int | None = None
        self._trace: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=trace)
        for i in range(n):
            self._start_node(i)

    # -- clocks and queue ------------------------------------------------------

    def local(self, i: int) -> float:
        """Node ``i``'s clock reading at the current virtual instant."""
        return self.offset[i] + self.rate[i] * self.now

    def _push(self, at: float, kind: int, data: Any) -> None:
        self._seq += 1
        heapq.heappush(self.queue, (at, self._seq, kind, data))

    def _control(self, at: float, action: Callable[[], None]) -> None:
        self._push(at, _CONTROL, action)

    def _note(self, *what: Any) -> None:
        self._trace.append((self.now, *what))
        if self.verbose:
            print(_format_trace((self.now, *what)))

    # -- nodes -----------------------------------------------------------------

    def _start_node(self, i: int, resume: Resume | None = None) -> None:
        state = self.stored[i]
        if state.term < self.last_term[i]:
            raise _Violation(
                "term-regression",
                f"{self.ids[i]} restarted in term {state.term} after term {self.last_term[i]}",
            )
        seed = self.rng.getrandbits(64)
        rng = _EdgeRandom(seed) if self.boundary else random.Random(seed)
        now = self.local(i)
        if resume is None:
            node = self.node_factory(self.configs[i], state, now=now, rng=rng)
        else:
            node = self.node_factory(self.configs[i], state, now=now, rng=rng, resume=resume)
        self.nodes[i] = node
        self.incarnation[i] += 1
        self.paused[i] = False
        self.backlog[i] = []
        self._note(self.ids[i], "start" if resume is None else "resume", state, node.start_reason)
        if node.role is Role.LEADER:
            self._leads(i, node.term)
        self._observe(i, node)
        # Its promise now is what covers the leases it acknowledged while it was up.
        self._check_leases(but=i)
        self._schedule_timer(i)

    def _crash(self, i: int) -> None:
        if self.nodes[i] is None:
            return
        self._note(self.ids[i], "crash")
        self.nodes[i] = None
        self.paused[i] = False
        self.backlog[i] = []
        self.dies_in_step[i] = None
        self.lease_real[i] = 0.0
        self.lease_local[i] = 0.0
        self.timer_version[i] += 1
        self.timer_at[i] = math.inf

    def _restart(self, i: int) -> None:
        if self.nodes[i] is None:
            self._start_node(i)

    def _handoff(self, i: int, gap: float, between_steps: bool = False) -> None:
        """Stop node ``i``'s process; another takes over from its state and its record
        (with the promise it kept, if it stopped between two steps)."""
        node = self.nodes[i]
        if node is None:
            return
        self.handoff_promise[i] = (
            (node.promise_until, node.started_until) if between_steps else None
        )
        self._note(self.ids[i], "handoff", f"next process in {gap:.6f}s")
        self.result.handoffs += 1
        self._crash(i)
        self._control(self.now + gap, lambda: self._take_over(i))

    def _take_over(self, i: int) -> None:
        if self.nodes[i] is not None:
            return  # restarted meanwhile
        record = self.published[i]
        carried, self.handoff_promise[i] = self.handoff_promise[i], None
        promise, started = carried if carried is not None else (None, None)
        resume = None
        if record is not None:
            term, leader, lease = record
            info = None if leader is None else LeaderInfo(leader, f"sim://{leader}", {})
            resume = Resume(term, info, lease, promise_until=promise, started_until=started)
        self._start_node(i, resume)

    def _pause(self, i: int) -> None:
        if self.nodes[i] is not None and not self.paused[i]:
            self._note(self.ids[i], "pause")
            self.paused[i] = True

    def _resume(self, i: int) -> None:
        if self.nodes[i] is None or not self.paused[i]:
            return
        self._note(self.ids[i], "resume")
        self.paused[i] = False
        backlog, self.backlog[i] = self.backlog[i], []
        for item in backlog:
            if self.nodes[i] is None or self.paused[i]:
                break
            self._deliver(*item)
        self._fire_timer(i)

    def _schedule_timer(self, i: int) -> None:
        node = self.nodes[i]
        if node is None:
            return
        deadline = node.next_deadline()
        if deadline == math.inf:
            self.timer_at[i] = math.inf
            return
        at = (deadline - self.offset[i]) / self.rate[i]
        # Rounding must never make the node see a time before its deadline.
        while self.offset[i] + self.rate[i] * at < deadline:
            at = math.nextafter(at, math.inf)
        if at < self.now:
            at = self.now
        if at != self.timer_at[i]:
            self.timer_at[i] = at
            self.timer_version[i] += 1
            self._push(at, _TIMER, (i, self.timer_version[i]))

    def _fire_timer(self, i: int) -> None:
        node = self.nodes[i]
        if node is None or self.paused[i]:
            return
        self.timer_at[i] = math.inf
        out = node.tick(self.local(i))
        self._after(i, out)

    # -- network ---------------------------------------------------------------

    def _send(
        self, src: int, dst: int, msg: Any, request_sent: float | None, incarnation: int
    ) -> None:
        """Put ``msg`` on the link src→dst.

        A request carries its sender's ``incarnation``; a reply (``request_sent``
        set) carries the incarnation of the process it must reach.
        """
        if (src, dst) in self.cut:
            return
        rng = self.rng
        if self.p_drop and rng.random() < self.p_drop:
            return
        copies = 2 if self.p_dup and rng.random() < self.p_dup else 1
        lo, hi = self.latency
        for _ in range(copies):
            delay = lo + (hi - lo) * rng.random()
            if self.jitter:
                delay += self.jitter * rng.random()
            if self.p_delay and rng.random() < self.p_delay:
                delay += self.max_delay * rng.random()
            at = self.now + delay
            if request_sent is not None and at > request_sent + self.cfg.reply_timeout:
                continue  # the sender has given up waiting (HTTP read timeout)
            self._push(at, _DELIVER, (dst, src, msg, request_sent, incarnation))

    def _deliver(
        self, dst: int, src: int, msg: Any, request_sent: float | None, incarnation: int
    ) -> None:
        node = self.nodes[dst]
        if node is None:
            return
        if request_sent is not None and incarnation != self.incarnation[dst]:
            return  # a reply to a process that is gone: its connection closed with it
        if self.paused[dst]:
            self.backlog[dst].append((dst, src, msg, request_sent, incarnation))
            return
        self._trace.append((self.now, self.ids[dst], "recv", msg))  # _note, inlined: hot
        if self.verbose:
            print(_format_trace(self._trace[-1]))
        promise = node.promise_until if msg.__class__ is VoteRequest else _NEVER
        try:
            out = node.step(msg, self.local(dst))
        except VoterSetMismatch:
            self._note(self.ids[dst], "refused", "another voter set")
            self.result.refused += 1
            return
        if request_sent is None:
            self._after(dst, out, msg, src, incarnation, promise)
        else:
            self._after(dst, out)

    # -- the checker -----------------------------------------------------------

    def _after(
        self,
        i: int,
        out: Output,
        request: Request | None = None,
        requester: int | None = None,
        incarnation: int = 0,
        promise: float = _NEVER,
    ) -> None:
        """Check and carry out what node ``i`` did in one step, as the runner does:
        persist, publish, send. ``request`` (from ``requester``'s process
        ``incarnation``) is what was stepped, ``promise`` the node's promise before."""
        node = self.nodes[i]
        assert node is not None
        nid = self.ids[i]
        if out.persist is not None:
            self.stored[i] = out.persist
        if node.term < self.last_term[i]:
            raise _Violation(
                "term-regression", f"{nid} went from term {self.last_term[i]} to {node.term}"
            )
        self.last_term[i] = node.term
        for tr in out.transitions:
            self._note(nid, "become", tr.role.value, tr.term, tr.reason)
            if tr.role is Role.LEADER:
                self.result.elections += 1
                self._leads(i, tr.term)
            elif tr.role is Role.CANDIDATE:
                # Its vote for itself is a vote: none before the end of its promise,
                # but for a transfer's (the leader it promised has given up).
                transfer = tr.reason.startswith("leadership transfer")
                if not transfer and self.local(i) < node.promise_until - _EPS:
                    raise _Violation(
                        "promise-broken",
                        f"{nid} campaigned in term {tr.term}"
                        f" {node.promise_until - self.local(i):.6f}s (its clock) before the"
                        " end of its promise",
                    )
                self._record_vote(i, tr.term, nid)
                self._count_candidacy(i, tr.term)
            elif tr.previous_role is Role.LEADER and tr.reason.startswith("saw term"):
                self.result.deposed += 1
                if self.lease_real[i] > self.now:  # the lease it held before this step
                    self.result.deposed_healthy += 1
            elif tr.previous_role is Role.LEADER and tr.reason.startswith("lost contact"):
                self.result.lost_quorum += 1
        reply = out.reply
        if isinstance(reply, VoteReply) and reply.granted:
            assert requester is not None and isinstance(request, VoteRequest)
            # The vote it already gave in the term, given again, is no other vote.
            again = not reply.pre_vote and self.votes.get((i, reply.term)) == self.ids[requester]
            if not (request.transfer or again) and self.local(i) < promise - _EPS:
                raise _Violation(
                    "promise-broken",
                    f"{nid} granted a {'pre-vote' if reply.pre_vote else 'vote'} to"
                    f" {self.ids[requester]} {promise - self.local(i):.6f}s (its clock)"
                    " before the end of its promise",
                )
            if not reply.pre_vote:
                self._record_vote(i, reply.term, self.ids[requester])
        armed = self.dies_in_step[i]
        if armed is not None and (armed[0] == "step" or out.persist is not None):
            # The process dies after persisting the step, before publishing it:
            # nothing of it is published or sent.
            self._handoff(i, armed[1])
            return
        messages = out.messages
        if messages:
            first = messages[0][1]  # a round: one message, to every peer
            if first.__class__ is Heartbeat:
                self._round_sent(i, first)
            elif isinstance(first, VoteRequest):
                if not first.pre_vote:
                    self._round_sent(i, first)  # a granted vote promises, as an ack does
                else:
                    self.result.pre_votes += 1
                    if self.failover_from is not None:
                        self.result.failover_pre_votes += 1
        self._observe(i, node)
        if messages:
            index, me = self.index, self.incarnation[i]
            for to, msg in messages:
                self._send(i, index[to], msg, None, me)
        if reply is not None and requester is not None:
            if (reply.__class__ is HeartbeatReply and reply.success) or (
                reply.__class__ is VoteReply and reply.granted and not reply.pre_vote
            ):
                rnd = self.rounds.get(id(request))
                if rnd is not None:
                    _, sent, acked = rnd
                    key = sent - self.local(i)
                    if key > acked.get(i, -math.inf):
                        acked[i] = key
            self._send(i, requester, reply, self.now, incarnation)
        self._schedule_timer(i)

    def _observe(self, i: int, node: Node) -> None:
        """After a step or a start: track the lease, check margins, publish."""
        if node.role is Role.LEADER:
            if node.lease_until != self.lease_local[i]:
                self.lease_local[i] = node.lease_until
                expiry = (node.lease_until - self.offset[i]) / self.rate[i]
                if expiry > self.now:
                    self._check_margin(i, node)
                    if self.lease_real[i] <= self.now:
                        self._lease_starts(i)
                    if self.cut_off_at_renewal is not None:
                        self._cut_off_if_due(i)
                self.lease_real[i] = expiry
        elif self.lease_real[i]:
            self.lease_real[i] = 0.0
            self.lease_local[i] = 0.0
        promise = node.promise_until
        if promise != self.promise_seen[i]:
            if promise < self.promise_seen[i] - _EPS:
                # A promise that shrank may no longer cover a lease it was counted in.
                self._check_leases(but=i)
            self.promise_seen[i] = promise
        if self.publishing:
            # What the next process of this node would resume from (the simulated
            # nodes' addresses and tags never change).
            self.published[i] = (node.term, node.leader_id, node.lease_until)

    def _cut_off_if_due(self, i: int) -> None:
        holder, duration, until = self.cut_off_at_renewal or (-1, 0.0, 0.0)
        if self.now > until:
            self.cut_off_at_renewal = None
        elif holder == i:
            self.cut_off_at_renewal = None
            n = len(self.ids)
            links = {(i, y) for y in range(n) if y != i} | {(y, i) for y in range(n) if y != i}
            self.cut |= links
            self._note("net", "cut off", self.ids[i], f"for {duration:.6f}s")
            self._control(self.now + duration, lambda: self.cut.difference_update(links))

    def _leads(self, i: int, term: int) -> None:
        other = self.leader_of_term.setdefault(term, self.ids[i])
        if other != self.ids[i]:
            raise _Violation("two-leaders", f"{other} and {self.ids[i]} both lead term {term}")

    def _round_sent(self, i: int, msg: Heartbeat | VoteRequest) -> None:
        # A round sent over 3 T ago can no longer give a lease that still runs:
        # forget it (the core ignores acks of rounds sent over T ago).
        ids = self._round_ids
        while ids and ids[0][0] < self.now - 3 * self.T:
            del self.rounds[ids.popleft()[1]]
        acked = self.acked.get((i, msg.term))
        if acked is None:
            acked = self.acked[(i, msg.term)] = {}
        self.rounds[id(msg)] = (msg, self.local(i) * self.worst_rate, acked)
        ids.append((self.now, id(msg)))

    def _check_leases(self, but: int) -> None:
        for j, expiry in enumerate(self.lease_real):
            node = self.nodes[j]
            if j != but and expiry > self.now and node is not None:
                self._check_margin(j, node)

    def _check_margin(self, i: int, node: Node) -> None:
        """The lease of ``i`` must be covered by the promises of a majority.

        Voter ``v`` covers a lease that ends at ``U`` (the leader's clock) if it
        acknowledged a round of the leader's term sent at ``S`` (the leader's
        clock), received at ``R`` (its own), and its promise ``P`` (its clock)
        outlasts the lease in real time even if it received the round the
        instant it was sent and the two clocks' rates differ by the most the
        drift bound allows: ``P − R ≥ (U − S) × (1 + drift)``, that is
        ``P + (S × (1 + drift) − R) ≥ U × (1 + drift)``; the best of its rounds
        counts. The leader covers its own lease while it leads.
        """
        needed = node.lease_until * self.worst_rate - _EPS
        acked = self.acked.get((i, node.term), {})
        voters, nodes = self.voters_of[i], self.nodes
        count = 1 if i in voters else 0
        for v, key in acked.items():
            # A voter that is down grants nothing; its promise when it starts
            # again must cover the lease (checked then).
            voter = nodes[v]
            if v in voters and (voter is None or voter.promise_until + key >= needed):
                count += 1
        if count >= self.quorum_of[i]:
            return
        covered = [self.ids[i]] if i in voters else []
        short = []
        for v, key in acked.items():
            voter = nodes[v]
            if v not in voters:
                continue
            if voter is None or voter.promise_until + key >= needed:
                covered.append(self.ids[v])
            else:
                gap = (needed - voter.promise_until - key) / self.worst_rate
                short.append(f"{self.ids[v]} short by {gap * 1000:.3f}ms")
        raise _Violation(
            "lease-margin",
            f"{self.ids[i]}'s lease in term {node.term} is covered by the promises of"
            f" {sorted(covered)} only, not a majority ({self.quorum_of[i]})"
            + (f"; {', '.join(sorted(short))} (in the leader's clock)" if short else ""),
        )

    def _count_candidacy(self, i: int, term: int) -> None:
        candidates = self.result.candidates.setdefault(term, set())
        if not candidates and self.failover_from is not None:
            self.result.failover_campaigns += 1
        candidates.add(i)

    def _record_vote(self, i: int, term: int, candidate: str) -> None:
        other = self.votes.setdefault((i, term), candidate)
        if other != candidate:
            raise _Violation(
                "double-vote",
                f"{self.ids[i]} voted for {other} and {candidate} in term {term}",
            )

    def _lease_starts(self, i: int) -> None:
        for j, expiry in enumerate(self.lease_real):
            if j != i and expiry > self.now and self.nodes[j] is not None:
                raise _Violation(
                    "lease-overlap",
                    f"{self.ids[i]} took a lease while {self.ids[j]}'s ran"
                    f" {expiry - self.now:.6f}s more",
                )
        if self.watch_from is not None and self.first_lease_after is None:
            self.first_lease_after = self.now
        if self.failover_from is not None and i != self.failover_crashed:
            self.result.failover = self.now - self.failover_from
            self.failover_from = None

    # -- the schedule ----------------------------------------------------------

    def run(self) -> ScheduleResult:
        """Run the whole schedule; violations end it early."""
        cfg, T = self.cfg, self.T
        reserve = 36 * T
        chaos_end = max(cfg.duration - reserve, 0.0)
        if cfg.faults and chaos_end > 0:
            self._plan_chaos(chaos_end)
        self._control(chaos_end, self._heal)
        end = max(cfg.duration, chaos_end + reserve)
        try:
            self._loop(end)
        except _Violation as v:
            self.result.violations.append((v.kind, self.now, v.detail))
            self.result.trace = [_format_trace(t) for t in self._trace]
        return self.result

    def _loop(self, end: float) -> None:
        queue = self.queue
        events = 0
        while queue:
            at, _, kind, data = heapq.heappop(queue)
            if at > end:
                break
            self.now = at
            events += 1
            if kind == _DELIVER:
                self._deliver(*data)
            elif kind == _TIMER:
                i, version = data
                if version == self.timer_version[i]:
                    self._fire_timer(i)
            else:
                data()
        self.result.events = events

    def _plan_chaos(self, chaos_end: float) -> None:
        """Draw the chaos phase as epochs, each with its own set of faults."""
        rng, T, faults = self.rng, self.T, self.cfg.faults
        n = len(self.ids)
        t = 0.0
        while t < chaos_end:
            length = min(rng.uniform(T, 12 * T), chaos_end - t)
            settings: dict[str, Any] = {}
            if "drop" in faults and rng.random() < 0.4:
                settings["p_drop"] = rng.choice((0.05, 0.2, 0.5, 0.9))
            if "duplicate" in faults and rng.random() < 0.3:
                settings["p_dup"] = rng.uniform(0.05, 0.3)
            if "delay" in faults and rng.random() < 0.3:
                settings["p_delay"] = rng.uniform(0.05, 0.3)
                settings["max_delay"] = rng.uniform(0.5, 3.0) * T
            if "reorder" in faults and rng.random() < 0.3:
                settings["jitter"] = rng.uniform(0.002, 0.3) * T
            cut: set[tuple[int, int]] = set()
            if "partition" in faults and rng.random() < 0.35:
                members = list(range(n))
                rng.shuffle(members)
                k = rng.randint(1, n - 1)
                a, b = members[:k], members[k:]
                cut |= {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
            if "one-way" in faults and rng.random() < 0.3:
                for _ in range(rng.randint(1, n)):
                    x, y = rng.sample(range(n), 2)
                    cut.add((x, y))
            settings["cut"] = cut
            self._control(t, partial(self._set_network, **settings))
            if "crash" in faults and rng.random() < 0.35:
                at = t + rng.uniform(0, length)
                # With "restart", often come straight back (inside T): the
                # restarted node must still keep the promises it made before.
                back = (
                    rng.uniform(0.01, 1.5) * T
                    if "restart" in faults and rng.random() < 0.5
                    else None
                )
                self._control(at, partial(self._crash_someone, 0.4, back))
            if "restart" in faults and rng.random() < 0.5:
                self._control(t + rng.uniform(0, length), self._restart_someone)
            if "crash" in faults and "restart" in faults and rng.random() < 0.5:
                # Bounce followers: a process that dies and is back at once has
                # lost its memory of the leader but not its promises.
                for _ in range(rng.randint(1, 4)):
                    at = t + rng.uniform(0, length)
                    self._control(at, partial(self._bounce, rng.uniform(0.01, 0.3) * T))
            if "transfer" in faults and rng.random() < 0.3:
                self._control(t + rng.uniform(0, length), self._transfer)
            if "pause" in faults and rng.random() < 0.3:
                at = t + rng.uniform(0, length)
                pause = rng.uniform(0.5, 5.0) * T
                self._control(at, partial(self._pause_someone, pause))
            if "handoff" in faults and rng.random() < 0.4:
                for _ in range(rng.randint(1, 3)):
                    at = t + rng.uniform(0, length)
                    # Mostly a quick take-over, sometimes one that outlasts T.
                    gap = rng.uniform(0.001, 0.1 if rng.random() < 0.7 else 2.0) * T
                    how = rng.choice(("now", "step", "persist"))
                    self._control(at, partial(self._handoff_someone, how, gap))
            if self.boundary and rng.random() < 0.5:
                # Cut the leader off right after a round renewed its lease: with
                # no delays and the earliest timers, the others elect a leader
                # the instant their promises end.
                at = t + rng.uniform(0, length)
                self._control(at, partial(self._cut_off_leader, rng.uniform(1.5, 3.0) * T))
            t += length

    def _set_network(
        self,
        *,
        p_drop: float = 0.0,
        p_dup: float = 0.0,
        p_delay: float = 0.0,
        max_delay: float = 0.0,
        jitter: float = 0.0,
        cut: Iterable[tuple[int, int]] = (),
    ) -> None:
        self.p_drop, self.p_dup, self.p_delay = p_drop, p_dup, p_delay
        self.max_delay, self.jitter = max_delay, jitter
        self.cut = set(cut)
        self._note("net", "set", (p_drop, p_dup, p_delay, max_delay, jitter, sorted(self.cut)))

    def _lease_holder(self) -> int | None:
        for i, expiry in enumerate(self.lease_real):
            if expiry > self.now and self.nodes[i] is not None:
                return i
        return None

    def _crash_someone(self, prefer_leader: float, back_after: float | None) -> None:
        holder = self._lease_holder()
        if holder is not None and self.rng.random() < prefer_leader:
            i = holder
        else:
            i = self.rng.randrange(len(self.ids))
        self._crash(i)
        if back_after is not None:
            self._control(self.now + back_after, lambda: self._restart(i))

    def _bounce(self, back_after: float) -> None:
        holder = self._lease_holder()
        followers = [i for i in self.voters if i != holder and self.nodes[i] is not None]
        if followers:
            i = self.rng.choice(followers)
            self._crash(i)
            self._control(self.now + back_after, lambda: self._restart(i))

    def _transfer(self) -> None:
        """Ask the current leader (if any) to hand over to a random voter."""
        holder = self._lease_holder()
        if holder is None:
            return
        node = self.nodes[holder]
        if node is None or self.paused[holder] or node.role is not Role.LEADER:
            return
        to = self.rng.choice([None] + [self.ids[i] for i in self.voters if i != holder])
        try:
            out = node.transfer_leadership(self.local(holder), to)
        except (NotLeaderError, TransferError):
            return
        self._note(self.ids[holder], "transfer", to)
        self._after(holder, out)

    def _handoff_someone(self, how: str, gap: float) -> None:
        """Hand a node (the leader more often than not) over to its next process:
        at once, or by dying inside its next step (or its next persisting step)
        between persisting and publishing."""
        holder = self._lease_holder()
        if holder is not None and self.rng.random() < 0.6:
            i = holder
        else:
            i = self.rng.randrange(len(self.ids))
        if how == "now":
            self._handoff(i, gap, between_steps=True)
        elif self.nodes[i] is not None:
            self.dies_in_step[i] = (how, gap)

    def _cut_off_leader(self, duration: float) -> None:
        """Cut the lease holder off, both ways, the instant its lease is next renewed."""
        holder = self._lease_holder()
        if holder is not None:
            self.cut_off_at_renewal = (holder, duration, self.now + self.T)

    def _restart_someone(self) -> None:
        down = [i for i, node in enumerate(self.nodes) if node is None]
        if down:
            self._restart(self.rng.choice(down))

    def _pause_someone(self, duration: float) -> None:
        holder = self._lease_holder()
        i = holder if holder is not None and self.rng.random() < 0.5 else None
        if i is None:
            i = self.rng.randrange(len(self.ids))
        self._pause(i)
        self._control(self.now + duration, lambda: self._resume(i))

    # Phase 2: heal, then a leader must appear within 10 T.
    def _heal(self) -> None:
        self._set_network()
        self.dies_in_step = [None] * len(self.ids)
        self.cut_off_at_renewal = None
        for i in range(len(self.ids)):
            self._resume(i)
            self._restart(i)
        self.watch_from = self.now
        self.first_lease_after = None
        if self._lease_holder() is not None:
            self.first_lease_after = self.now
        deadline = self.now + 10 * self.T
        self._control(deadline, lambda: self._check_liveness("after the faults healed"))
        if "crash" in self.cfg.faults:
            self._control(deadline, self._start_failover)
        elif "partition" in self.cfg.faults:
            self._control(deadline, self._start_rejoin)

    def _check_liveness(self, when: str) -> None:
        if self.first_lease_after is None:
            raise _Violation("no-leader", f"no leader within 10 x T {when}")
        self.watch_from = None

    # Phase 3: crash the leader on a clean network and time the failover.
    def _start_failover(self, tries: int = 0) -> None:
        holder = self._lease_holder()
        if holder is None:
            if tries < 20:
                self._control(self.now + self.T / 2, lambda: self._start_failover(tries + 1))
            return
        # Crash just after a heartbeat round was sent, at a random point in it.
        self._crash(holder)
        self.failover_from = self.now
        self.failover_crashed = holder
        self.watch_from = self.now
        self.first_lease_after = None
        self._control(self.now + 4 * self.T, lambda: self._restart(holder))
        deadline = self.now + 10 * self.T
        self._control(deadline, lambda: self._check_liveness("after the leader crashed"))
        if "partition" in self.cfg.faults:
            self._control(deadline, self._start_rejoin)

    # Phase 4: isolate a follower for a while; on its return the leader stays.
    def _start_rejoin(self, tries: int = 0) -> None:
        holder = self._lease_holder()
        if holder is None:
            if tries < 20:
                self._control(self.now + self.T / 2, lambda: self._start_rejoin(tries + 1))
            return
        followers = [i for i in self.voters if i != holder]
        if not followers:
            return
        x = self.rng.choice(followers)
        n = len(self.ids)
        self._set_network(cut={(x, y) for y in range(n) if y != x} | {(y, x) for y in range(n)})
        heal_at = self.now + self.rng.uniform(3.0, 10.0) * self.T
        node = self.nodes[holder]
        assert node is not None
        term = node.term

        def heal() -> None:
            self._set_network()
            self._control(self.now + 5 * self.T, lambda: self._check_rejoin(holder, term, x))

        self._control(heal_at, heal)

    def _check_rejoin(self, holder: int, term: int, x: int) -> None:
        node = self.nodes[holder]
        if node is None or node.role is not Role.LEADER or node.term != term:
            state = "down" if node is None else f"{node.role.value} in term {node.term}"
            raise _Violation(
                "disruption",
                f"{self.ids[x]} rejoined after isolation and leader {self.ids[holder]}"
                f" of term {term} is now {state}",
            )


def _format_trace(item: tuple[Any, ...]) -> str:
    at, *rest = item
    return f"{at:10.6f} " + " ".join(_short(x) for x in rest)


def _short(x: Any) -> str:
    if isinstance(x, (Request | Reply)):
        fields = ",".join(
            f"{k}={v}" for k, v in _msg_fields(x) if k != "tags" and v not in ("", None)
        )
        return f"{type(x).__name__}({fields})"
    return str(x)


def _msg_fields(msg: Any) -> list[tuple[str, Any]]:
    return [(name, getattr(msg, name)) for name in msg.__dataclass_fields__]


@dataclass
class Summary:
    """Totals over many schedules."""

    schedules: int = 0
    elections: int = 0
    events: int = 0
    #: Failover times of the schedules not played at the boundary (those have no
    #: network delay and the earliest timers: their failovers are not typical).
    failovers: list[float] = field(default_factory=list)
    boundary: int = 0
    handoffs: int = 0
    refused: int = 0
    pre_votes: int = 0
    campaigns: int = 0
    split_votes: int = 0
    deposed: int = 0
    lost_quorum: int = 0
    deposed_healthy: int = 0
    #: Over the failover phases of the schedules counted in ``failovers``: pre-vote
    #: rounds and terms campaigned in until the next lease (1 and 1 each at best).
    failover_pre_votes: int = 0
    failover_campaigns: int = 0
    violations: collections.Counter[str] = field(default_factory=collections.Counter)
    failed: list[ScheduleResult] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, r: ScheduleResult) -> None:
        """Count one schedule's result."""
        self.schedules += 1
        self.elections += r.elections
        self.events += r.events
        self.boundary += r.boundary
        self.handoffs += r.handoffs
        self.refused += r.refused
        self.pre_votes += r.pre_votes
        self.campaigns += r.campaigns
        self.split_votes += r.split_votes
        self.deposed += r.deposed
        self.lost_quorum += r.lost_quorum
        self.deposed_healthy += r.deposed_healthy
        if r.failover is not None and not r.boundary:
            self.failovers.append(r.failover)
            self.failover_pre_votes += r.failover_pre_votes
            self.failover_campaigns += r.failover_campaigns
        for kind, _, _ in r.violations:
            self.violations[kind] += 1
        if r.violations:
            self.failed.append(r)


def _run_one(args: tuple[SimConfig, int, NodeFactory]) -> ScheduleResult:
    cfg, seed, factory = args
    return Simulation(cfg, seed, node_factory=factory).run()


def run_schedules(
    cfg: SimConfig,
    schedules: int,
    seed: int = 1,
    *,
    node_factory: NodeFactory = Node,
    jobs: int = 1,
    stop_on_violation: bool = False,
) -> Summary:
    """Run ``schedules`` schedules with seeds ``seed, seed+1, ...``."""
    summary = Summary()
    started = time.perf_counter()
    work = [(cfg, seed + k, node_factory) for k in range(schedules)]
    if jobs > 1:
        ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
        with ctx.Pool(jobs) as pool:
            for r in pool.imap(_run_one, work, chunksize=8):
                summary.add(r)
                if stop_on_violation and r.violations:
                    pool.terminate()
                    break
    else:
        for item in work:
            r = _run_one(item)
            summary.add(r)
            if stop_on_violation and r.violations:
                break
    summary.seconds = time.perf_counter() - started
    return summary


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def _parse_faults(text: str) -> frozenset[str]:
    if text.strip() in ("all", ""):
        return frozenset(FAULTS) if text.strip() == "all" else frozenset()
    if text.strip() == "none":
        return frozenset()
    faults = frozenset(f.strip() for f in text.split(",") if f.strip())
    unknown = faults - set(FAULTS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown fault(s) {', '.join(sorted(unknown))}; choose from {', '.join(FAULTS)}, all"
        )
    return faults


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flask_goelect.simulate",
        description="Check the election core's safety over randomized fault schedules.",
    )
    p.add_argument("--nodes", type=int, default=5, help="voters (default 5)")
    p.add_argument("--observers", type=int, default=1, help="no-vote nodes (default 1)")
    p.add_argument("--schedules", type=int, default=200, help="schedules to run (default 200)")
    p.add_argument("--seed", type=int, default=1, help="seed of the first schedule (default 1)")
    p.add_argument("--elect-timeout", type=float, default=200, help="T in ms (default 200)")
    p.add_argument("--heartbeat-interval", type=float, default=50, help="ms (default 50)")
    p.add_argument("--duration", type=float, default=30, help="virtual seconds per schedule")
    p.add_argument("--max-drift", type=float, default=0.01, help="clock rate bound (0.01=1%%)")
    p.add_argument(
        "--boundary",
        type=float,
        default=0.25,
        help="share of schedules played at the edge: no delay, extreme drift, earliest timers"
        " (default 0.25)",
    )
    p.add_argument(
        "--stale-nodes",
        type=int,
        default=0,
        help="this many voters list only the first --stale-voters voters: a change of the"
        " voter set not made everywhere (default 0)",
    )
    p.add_argument("--stale-voters", type=int, default=0, help="see --stale-nodes")
    p.add_argument(
        "--faults",
        type=_parse_faults,
        default=frozenset(FAULTS),
        help=f"comma-separated from {', '.join(FAULTS)}; or all, none (default all)",
    )
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--replay", type=int, metavar="SEED", help="run one schedule with its trace")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def _sim_config(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        nodes=args.nodes,
        observers=args.observers,
        elect_timeout=args.elect_timeout / 1000.0,
        heartbeat_interval=args.heartbeat_interval / 1000.0,
        duration=args.duration,
        faults=args.faults,
        max_drift=args.max_drift,
        boundary=args.boundary,
        stale_nodes=args.stale_nodes,
        stale_voters=args.stale_voters,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 on any violation)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        cfg = _sim_config(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.replay is not None:
        result = Simulation(cfg, args.replay, verbose=True).run()
        for kind, at, detail in result.violations:
            print(f"VIOLATION {kind} at {at:.6f}s: {detail}")
        print(f"schedule {args.replay}: {result.elections} elections, {result.events} events")
        return 1 if result.violations else 0
    summary = run_schedules(cfg, args.schedules, args.seed, jobs=args.jobs)
    _print_summary(summary, cfg, args)
    return 1 if summary.failed else 0


def _print_summary(summary: Summary, cfg: SimConfig, args: argparse.Namespace) -> None:
    rate = summary.schedules / summary.seconds if summary.seconds else 0.0
    fo = summary.failovers
    figures: dict[str, Any] = {
        "schedules": summary.schedules,
        "voters": cfg.nodes,
        "observers": cfg.observers,
        "faults": sorted(cfg.faults),
        "virtual_seconds_per_schedule": cfg.duration,
        "elections": summary.elections,
        "pre_vote_rounds": summary.pre_votes,
        "campaigns": summary.campaigns,
        "split_votes": summary.split_votes,
        "leaders_deposed": summary.deposed,
        "leaders_deposed_holding_a_lease": summary.deposed_healthy,
        "leaders_lost_quorum": summary.lost_quorum,
        "failover_pre_vote_rounds": summary.failover_pre_votes,
        "failover_campaigns": summary.failover_campaigns,
        "events": summary.events,
        "boundary_schedules": summary.boundary,
        "handoffs": summary.handoffs,
        "refused_voter_set": summary.refused,
        "wall_seconds": round(summary.seconds, 2),
        "schedules_per_second": round(rate, 2),
        "jobs": args.jobs,
        "failover_ms_median": round(statistics.median(fo) * 1000, 1) if fo else None,
        "failover_ms_p99": round(_percentile(fo, 0.99) * 1000, 1) if fo else None,
        "failover_ms_max": round(max(fo) * 1000, 1) if fo else None,
        "violations": {k: summary.violations.get(k, 0) for k in VIOLATION_KINDS},
    }
    if args.json:
        import json

        print(json.dumps(figures, indent=2))
    else:
        print(
            f"schedules: {summary.schedules} ({cfg.nodes} voters + {cfg.observers} observers,"
            f" {cfg.duration:g} virtual s each, faults: {','.join(sorted(cfg.faults)) or 'none'})"
        )
        print(
            f"elections: {summary.elections}   events: {summary.events}   handoffs:"
            f" {summary.handoffs}   at the boundary: {summary.boundary} schedules"
            + (f"   refused (voter set): {summary.refused}" if summary.refused else "")
        )
        print(
            f"campaigns: {summary.campaigns} terms (split votes: {summary.split_votes}),"
            f" pre-vote rounds: {summary.pre_votes}"
        )
        print(
            f"leaders deposed by a later term: {summary.deposed} (holding a lease:"
            f" {summary.deposed_healthy}), stepped down without a majority: {summary.lost_quorum}"
        )
        if fo:
            print(
                f"failover phases: {len(fo)} crashes, {summary.failover_pre_votes} pre-vote"
                f" rounds and {summary.failover_campaigns} terms campaigned in until the next"
                " lease"
            )
        print(
            f"throughput: {rate:.1f} schedules/s on {args.jobs} process(es)"
            f" ({summary.seconds:.1f} s wall)"
        )
        if fo:
            print(
                f"failover after leader crash (virtual): median {figures['failover_ms_median']} ms,"
                f" p99 {figures['failover_ms_p99']} ms, max {figures['failover_ms_max']} ms"
                f" over {len(fo)} crashes (T = {cfg.elect_timeout * 1000:g} ms; schedules at the"
                " boundary left out)"
            )
        print("violations: " + ", ".join(f"{k} {v}" for k, v in figures["violations"].items()))
    for r in summary.failed[:3]:
        kind, at, detail = r.violations[0]
        print(f"\nVIOLATION {kind} in schedule seed {r.seed} at {at:.6f}s: {detail}")
        print(f"replay: python -m flask_goelect.simulate --replay {r.seed} " + _replay_args(args))
        print("last events:")
        for line in r.trace[-25:]:
            print("  " + line)


def _replay_args(args: argparse.Namespace) -> str:
    return (
        f"--nodes {args.nodes} --observers {args.observers}"
        f" --elect-timeout {args.elect_timeout:g} --heartbeat-interval {args.heartbeat_interval:g}"
        f" --duration {args.duration:g} --max-drift {args.max_drift:g}"
        f" --boundary {args.boundary:g} --faults {','.join(sorted(args.faults)) or 'none'}"
        + (
            f" --stale-nodes {args.stale_nodes} --stale-voters {args.stale_voters}"
            if args.stale_nodes
            else ""
        )
    )


if __name__ == "__main__":
    sys.exit(main())
