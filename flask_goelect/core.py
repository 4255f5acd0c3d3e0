"""The election core: Raft's leader election as a pure, deterministic state machine.

Nothing here does I/O, starts threads, reads a clock or uses global randomness.
The caller (the runner in production, the simulator in tests) passes in the time
(``now``, seconds on the node's monotonic clock) and a seeded ``random.Random``,
feeds the node messages from peers and timer ticks, and carries out what each
call returns in an :class:`Output`:

1. if ``output.persist`` is set, write it to stable storage *first*;
2. then send ``output.messages`` (requests to peers) and ``output.reply`` (the
   answer to the request that was stepped);
3. ``output.transitions`` say how the role or the known leader changed.

The rules, and where they come from (Raft paper §5, Ongaro's thesis §§3, 6, 9):

* Terms only grow; a message with a higher term makes the receiver a follower
  of that term (§5.1). The comparison happens once, at the top of :meth:`Node.step`.
* One vote per term, recorded in ``voted_for`` and persisted before the reply
  leaves (§5.2). A candidate asks only in the term it started itself.
* The election timeout (§5.2) is ``T`` (the promise below), then a spread that
  separates candidates by an election round, not a random ``[T, 2T)``: each of
  the first voters in an order (its place after the silent leader's, or after
  the term's, among the sorted voter ids) waits its rank times a gap (half a
  heartbeat interval after a known leader, four without one), plus a jitter
  below an eighth of a heartbeat interval, drawn anew each time it is reset;
  the voters after the slots draw in one more gap. The spread stays below ``T``.
* Pre-vote (thesis §9.6): a node whose timer fires asks "would you vote for me
  in term+1?" without anyone changing term, and campaigns only with a majority.
* Leader stickiness (thesis §4.2.3, §6.4): a node that heard from a live leader,
  or granted its vote, less than ``T`` ago refuses votes and pre-votes (but the
  vote it gave, asked for again) and does not let them raise its term. Every
  start keeps that promise, whatever the term on disk: a node grants nothing at
  all, not even a transfer's vote, until ``T`` after it starts, since it cannot
  tell a fresh disk from a lost one.
* Check quorum (thesis §6.2): a leader steps down when no heartbeat round it
  sent within the last ``T × (1 − drift)`` has been acknowledged by a majority
  (itself included): the bound and the clock of the lease, so that a leader that
  can no longer hold a lease does not stay leader.
* Leader lease (thesis §6.4.1): the leader holds a lease until the *send* time of
  the newest round acknowledged by a majority plus ``T × (1 − drift)``. A round
  is a heartbeat round, or the vote round that elected it (round 0): each voter
  that acknowledged a heartbeat, or granted its vote, promised (by stickiness)
  not to vote for anyone else until ``T`` after it *received* that round, so no
  two nodes hold valid leases at the same instant while clock rates differ by at
  most ``drift``. A new leader thus holds a lease as soon as it has won.
* Leadership transfer (thesis §3.10): the leader drops its lease, steps down and
  tells one voter ``TimeoutNow``; that voter campaigns at once, skipping the
  pre-vote, and voters grant it despite stickiness.
* No-vote nodes (observers) follow the leader, never vote, never campaign and
  never count in a quorum. The quorum is ``voters // 2 + 1`` over the configured
  voters, this node included when it is a voter.
* Every request carries the fingerprint of its sender's voter set; a node
  refuses (raises :class:`VoterSetMismatch`, changing nothing) a request whose
  fingerprint differs from its own: nodes that count different majorities must
  not count each other (``docs/membership.md``).
* A node may resume where a previous process of the same node left off
  (:class:`Resume`): as the leader it was, only in the term it campaigned in and
  with the lease it held; as a follower, knowing its leader.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from .messages import (
    Heartbeat,
    HeartbeatReply,
    MessageError,
    Reply,
    Request,
    TimeoutNow,
    TimeoutNowReply,
    VoteReply,
    VoteRequest,
    validate_node_id,
    validate_tags,
    voter_set_fingerprint,
)

__all__ = [
    "Config",
    "ConfigError",
    "HardState",
    "LeaderInfo",
    "Node",
    "NotLeaderError",
    "Output",
    "Peer",
    "Resume",
    "Role",
    "Transition",
    "TransferError",
    "VoterSetMismatch",
]


_REQUESTS = (VoteRequest, Heartbeat, TimeoutNow)

#: The spread of the election timer, in heartbeat intervals (the setting that
#: says how quickly the nodes answer each other: a heartbeat round must fit in
#: it, and so must an election round, a pre-vote round trip, the candidate's
#: durable write and its vote requests' way out). The first voters in the order
#: (``RANK_SLOTS`` of them) each have a slot: their rank times a gap, plus a
#: jitter below ``JITTER`` drawn anew each time; the others draw at random in
#: one more gap after the last slot. With a known leader (the one that fell
#: silent) the followers' timers started within a round of each other, at its
#: last heartbeat: ``RANK_GAP`` keeps two ranks a few rounds apart. With none (a
#: start, a lost campaign, a vote in a new term) they started at unrelated
#: instants: ``RANK_GAP_NO_LEADER`` is wider, and fewer voters have a slot. Either
#: gap is cut to ``T / (slots + 1)`` if longer, so the whole spread stays below
#: ``T`` (below ``2.5 H`` after a known leader) whatever the number of voters:
#: the timer fires in ``[T, 2T)`` after its reset, as Raft's.
RANK_GAP = 0.5
RANK_GAP_NO_LEADER = 4.0
RANK_SLOTS = 4
RANK_SLOTS_NO_LEADER = 2
JITTER = 0.125


class ConfigError(ValueError):
    """The election configuration is invalid; the text says what to change.

    ``field`` names the :class:`Config` field at fault (None when no one field
    is), so that code that builds a ``Config`` from its own settings can name
    the setting to change without reading the text.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotLeaderError(RuntimeError):
    """An operation that needs the leader was asked of a node that is not the leader."""


class TransferError(RuntimeError):
    """A leadership transfer cannot be started (no eligible target)."""


class VoterSetMismatch(Exception):
    """A request came from a node configured with another voter set; nothing changed.

    Two nodes that disagree on who votes count different majorities, and two
    majorities that do not overlap can elect two leaders in one term. The node
    refuses the request before reading anything else in it; the caller answers
    with an error (over HTTP: 409 ``voter_set_mismatch``). ``theirs`` and
    ``ours`` are the two fingerprints.
    """

    def __init__(self, node_id: str, sender: str, theirs: str, ours: str) -> None:
        self.node_id = node_id
        self.sender = sender
        self.theirs = theirs
        self.ours = ours
        super().__init__(
            f"node {sender!r} counts another voter set ({_count(theirs)}, fingerprint"
            f" {theirs}) than node {node_id!r} ({_count(ours)}, fingerprint {ours}):"
            " the nodes would count different majorities, so they refuse each other."
            " Give both nodes the same peer list and the same novote flags; to change"
            " who votes, see docs/membership.md"
        )


def _count(fingerprint: str) -> str:
    voters = fingerprint.partition(":")[0]
    return f"{voters} voter{'' if voters == '1' else 's'}"


class Role(str, enum.Enum):
    """What a node currently is in the election."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    OBSERVER = "observer"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class HardState:
    """The state that must survive a restart: the current term and the vote in it."""

    term: int = 0
    voted_for: str | None = None


@dataclass(frozen=True)
class Peer:
    """A member of the cluster: its id, base URL, whether it votes, and its tags."""

    id: str
    address: str = ""
    novote: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LeaderInfo:
    """Who leads, as this node knows it."""

    id: str
    address: str
    tags: Mapping[str, str]


@dataclass(frozen=True)
class Config:
    """The election settings of one node.

    ``elect_timeout`` (T) and ``heartbeat_interval`` are in seconds. ``max_drift``
    bounds how much faster one node's clock may run than another's (0.01 = 1 %);
    the lease is shortened by that fraction. ``peers`` lists the cluster; this
    node is added (as described by ``address``, ``novote`` and ``tags``) when it
    is not listed.
    """

    node_id: str
    peers: tuple[Peer, ...] = ()
    address: str = ""
    novote: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    elect_timeout: float = 1.0
    heartbeat_interval: float = 0.1
    max_drift: float = 0.01
    pre_vote: bool = True

    def __post_init__(self) -> None:
        try:
            validate_node_id(self.node_id, "node id")
        except MessageError as exc:
            raise ConfigError(str(exc), field="node_id") from None
        try:
            validate_tags(self.tags)
        except MessageError as exc:
            raise ConfigError(str(exc), field="tags") from None
        if not (isinstance(self.elect_timeout, (int, float)) and self.elect_timeout > 0):
            raise ConfigError(
                f"elect_timeout must be a positive number, not {self.elect_timeout!r}",
                field="elect_timeout",
            )
        if not (isinstance(self.heartbeat_interval, (int, float)) and self.heartbeat_interval > 0):
            raise ConfigError(
                f"heartbeat_interval must be a positive number, not {self.heartbeat_interval!r}",
                field="heartbeat_interval",
            )
        if self.heartbeat_interval * 2 > self.elect_timeout:
            raise ConfigError(
                f"heartbeat_interval ({self.heartbeat_interval:g}s) must be at most half of"
                f" elect_timeout ({self.elect_timeout:g}s), or a single lost heartbeat starts"
                " an election; a tenth is a good choice",
                field="heartbeat_interval",
            )
        if not (isinstance(self.max_drift, (int, float)) and 0 <= self.max_drift < 0.5):
            raise ConfigError(
                f"max_drift must be a fraction in [0, 0.5), like 0.01 for clocks whose rates"
                f" differ by at most 1 %, not {self.max_drift!r}",
                field="max_drift",
            )
        peers: dict[str, Peer] = {}
        for peer in self.peers:
            try:
                validate_node_id(peer.id, "peer id")
                validate_tags(peer.tags, f"tags of peer {peer.id!r}")
            except MessageError as exc:
                raise ConfigError(str(exc), field="peers") from None
            if peer.id in peers:
                raise ConfigError(
                    f"node {peer.id!r} is listed twice ({peers[peer.id].address!r} and"
                    f" {peer.address!r}): list each node once, with its one address",
                    field="peers",
                )
            peers[peer.id] = peer
        me = peers.get(self.node_id)
        if me is None:
            peers[self.node_id] = Peer(self.node_id, self.address, self.novote, dict(self.tags))
        else:
            if self.address and me.address and self.address != me.address:
                raise ConfigError(
                    f"node {self.node_id!r} is given two addresses, {self.address!r} and"
                    f" {me.address!r}; use the same address in both places",
                    field="address",
                )
            if me.novote != self.novote:
                raise ConfigError(
                    f"node {self.node_id!r} is novote={self.novote} but listed in the peers"
                    f" with novote={me.novote}; make them agree",
                    field="novote",
                )
            peers[self.node_id] = Peer(
                self.node_id, self.address or me.address, self.novote, dict(self.tags or me.tags)
            )
        object.__setattr__(self, "peers", tuple(peers.values()))
        voters = frozenset(p.id for p in self.peers if not p.novote)
        if not voters:
            # Whether a node votes is its ``novote`` flag, here or in its peer entry.
            raise ConfigError(
                "the cluster has no voters; at least one node must vote", field="novote"
            )
        object.__setattr__(self, "_voters", voters)
        object.__setattr__(self, "_fingerprint", voter_set_fingerprint(voters))

    @property
    def voter_set_fingerprint(self) -> str:
        """The fingerprint of :attr:`voters` that every request carries.

        ``"3:1afd220a5d7f9ee2"`` for n1, n2 and n3. Nodes with different
        fingerprints refuse each other's requests. Observers are not part of it.
        """
        fingerprint: str = getattr(self, "_fingerprint")  # noqa: B009 - set in __post_init__
        return fingerprint

    @property
    def voters(self) -> frozenset[str]:
        """The ids of the nodes that vote, this one included if it votes."""
        voters: frozenset[str] = getattr(self, "_voters")  # noqa: B009 - set in __post_init__
        return voters

    @property
    def observers(self) -> frozenset[str]:
        """The ids of the no-vote nodes."""
        return frozenset(p.id for p in self.peers if p.novote)

    @property
    def quorum(self) -> int:
        """The number of voters that make a majority: ``voters // 2 + 1``."""
        return len(self.voters) // 2 + 1

    def peer(self, node_id: str) -> Peer | None:
        """The member with this id, or None."""
        for p in self.peers:
            if p.id == node_id:
                return p
        return None


@dataclass(frozen=True)
class Resume:
    """Where a previous process of this node left off: the last snapshot it published.

    When a node's elector moves to another process of the same machine (a
    worker recycled), the new process starts from the same state file and
    this record, so that the node neither drops its leadership nor tells
    readers "no leader" for an election timeout. ``term`` is the term of the
    record, ``leader`` who led in it as the node knew (itself when it led),
    ``lease_until`` the lease it held (on the machine's clock; 0.0 for none).

    The record must have been published *after* the state of its step was
    persisted, and must be from this boot of the machine (a lease read on the
    clock of an earlier boot means nothing: keep the record in memory that a
    reboot clears). :class:`Node` checks the rest and ignores a record it
    cannot trust (see :attr:`Node.start_reason`).

    ``promise_until`` is the end of the promise the previous process kept (its
    :attr:`Node.promise_until`), read once that process had stopped stepping (a
    graceful hand-off); None when it is not known (a crash). Known, it replaces
    the promise of ``T`` that every start keeps: the node goes on promising
    exactly what it promised, and a node whose elector moves between processes
    more often than every ``T`` still votes. ``started_until`` (known with it) is
    the end of the previous process's start guard (:attr:`Node.started_until`):
    the guard goes on to then, not to ``T`` after this start, and not at all if it
    is not known. (Its election timer starts again: a node whose elector moves
    that often votes, but does not campaign itself.)
    """

    term: int
    leader: LeaderInfo | None = None
    lease_until: float = 0.0
    promise_until: float | None = None
    started_until: float | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of role or of the known leader, at time ``at`` (the node's clock)."""

    previous_role: Role
    role: Role
    previous_leader_id: str | None
    leader_id: str | None
    term: int
    at: float
    reason: str


@dataclass(slots=True)
class Output:
    """What the caller must do after a call into the core, in this order.

    ``persist`` (if not None) must reach stable storage before any message or
    the reply is sent; ``messages`` are requests to send, as ``(peer_id, msg)``;
    ``reply`` answers the request that was stepped; ``transitions`` report
    changes of role or leader.
    """

    persist: HardState | None = None
    messages: list[tuple[str, Request]] = field(default_factory=list)
    reply: Reply | None = None
    transitions: list[Transition] = field(default_factory=list)


class Node:
    """One node's view of the election.

    Create it with the configuration, the state loaded from storage, the current
    time and a seeded random generator; then call :meth:`step` for every message
    from a peer and :meth:`tick` whenever the time reaches :meth:`next_deadline`.
    """

    def __init__(
        self,
        config: Config,
        state: HardState,
        *,
        now: float,
        rng: random.Random,
        resume: Resume | None = None,
    ) -> None:
        self.config = config
        self.id = config.node_id
        self._rng = rng
        self._T = float(config.elect_timeout)
        self._voters = config.voters
        self._quorum = config.quorum
        self._voter = self.id in self._voters
        self._members = frozenset(p.id for p in config.peers)
        self._others = tuple(p.id for p in config.peers if p.id != self.id)
        self._other_voters = tuple(v for v in self._others if v in config.voters)
        self._fingerprint = config.voter_set_fingerprint
        # The order in which the voters' election timers fire, and the gap between
        # two ranks (see _reset_election_timer).
        self._order = {v: i for i, v in enumerate(sorted(config.voters))}
        self._H = float(config.heartbeat_interval)
        # The lease is shortened by the drift bound; check quorum uses the same bound.
        self._lease_span = self._T * (1.0 - config.max_drift)
        me = config.peer(self.id)
        assert me is not None
        self._me = me
        self.term = state.term
        self.voted_for = state.voted_for
        self.role = Role.FOLLOWER if self._voter else Role.OBSERVER
        self.leader_id: str | None = None
        self._leader_address = ""
        self._leader_tags: Mapping[str, str] = {}
        # Stickiness, and the follower's half of the leader lease: having accepted
        # a heartbeat at time r, this node grants no vote or pre-vote to anyone
        # before r + T, whatever terms it sees meanwhile (forgetting the promise on
        # a term change would let a majority elect a new leader inside the old
        # leader's lease). A started node cannot know when it last promised, nor
        # whether its disk is new or was lost (a container without a volume starts
        # at term 0 after acking a leader), so every start keeps the promise for T,
        # and refuses even a transfer's vote meanwhile: it cannot know whether the
        # leader it promised is the one handing over.
        self._promise_until = now + self._T
        self._started_until = now + self._T
        self._election_deadline = 0.0
        self._reset_election_timer(now)
        # Campaign state.
        self._votes: dict[str, bool] = {}
        # Leader state.
        self._seq = 0
        self._round_sent: dict[int, float] = {}
        self._acked_seq: dict[str, int] = {}
        self._lease_seq = -1  # the round the current lease counts from (0: the vote round)
        self._campaign_sent = -math.inf  # when this term's vote requests were sent
        self._last_ack: dict[str, float] = {}
        self._heartbeat_due = math.inf
        self._leader_since = 0.0
        self.lease_until = 0.0
        #: Last time this node heard from each peer (leader: replies; others: requests).
        self.last_contact: dict[str, float] = {}
        self._out = Output()
        self._now = now
        #: How this node started, in words for the log: the promise it keeps, and
        #: what became of a :class:`Resume` it was given.
        self.start_reason = (
            f"grants no vote until {self._T:g}s after its start: it cannot know"
            " whether it promised a leader before"
        )
        if resume is not None:
            resumed = self._resume(state, resume)
            if self._started_until > now:
                self.start_reason = f"{resumed}; {self.start_reason}"
            else:
                self.start_reason = resumed

    # -- queries ---------------------------------------------------------------

    def is_leader(self, now: float) -> bool:
        """True only while this node leads and holds a valid lease at ``now``."""
        return self.role is Role.LEADER and now < self.lease_until

    @property
    def promise_until(self) -> float:
        """Before this time this node grants no vote and no pre-vote to anyone else.

        It is ``T`` after the last heartbeat it accepted, the last vote it granted
        or its start, whichever is later; only a leadership transfer's vote may be
        granted before it, and not in the first ``T`` after a start (the vote it
        already gave in its term may be given again: that is no other vote). The
        leader's lease rests on it: every voter that acknowledged the round a
        lease counts from (or granted the vote it counts from) holds a promise
        that outlasts the lease.
        """
        return self._promise_until

    @property
    def started_until(self) -> float:
        """Before this time this node grants no vote at all, not even a transfer's:
        ``T`` after its start (or what a :class:`Resume` carried)."""
        return self._started_until

    @property
    def leader(self) -> LeaderInfo | None:
        """The leader this node knows of (itself when it leads), or None."""
        if self.leader_id is None:
            return None
        return LeaderInfo(self.leader_id, self._leader_address, self._leader_tags)

    @property
    def hard_state(self) -> HardState:
        """The state that must be persisted."""
        return HardState(self.term, self.voted_for)

    def next_deadline(self) -> float:
        """The time at which :meth:`tick` must next be called (``inf``: never)."""
        if self.role is Role.LEADER:
            return self._heartbeat_due
        if self.role is Role.OBSERVER:
            return math.inf
        return self._election_deadline

    # -- inputs ----------------------------------------------------------------

    def tick(self, now: float) -> Output:
        """Advance to ``now``: fire the election timer or send heartbeats as due."""
        self._begin(now)
        if self.role is Role.LEADER:
            if not self._has_quorum_contact(now):
                self._become_follower(self.term, None, "lost contact with a majority")
            elif now >= self._heartbeat_due:
                self._broadcast_heartbeat()
        elif self.role is not Role.OBSERVER and now >= self._election_deadline:
            self._campaign(transfer=False)
        return self._end()

    def step(self, msg: Request | Reply, now: float) -> Output:
        """Handle one message from a peer; a request's answer is in ``output.reply``.

        :raises VoterSetMismatch: the request states another voter set than this
            node's; nothing changed and there is no reply to send.
        """
        if isinstance(msg, _REQUESTS) and msg.voter_set != self._fingerprint:
            self._check_voter_set(msg)
        self._begin(now)
        if msg.sender == self.id or msg.sender not in self._members:
            # Not a member (or ourselves): answer requests without touching any state.
            if isinstance(msg, (VoteRequest, Heartbeat, TimeoutNow)):
                self._reject(msg, "sender is not a member of this cluster")
            return self._end()
        self.last_contact[msg.sender] = now
        if msg.term > self.term:
            refusal = self._sticky_refusal(msg, now) if isinstance(msg, VoteRequest) else None
            if isinstance(msg, VoteRequest) and refusal is not None:
                # Thesis §4.2.3: a node that hears from a live leader ignores a
                # disruptive candidate entirely, without adopting its term.
                self._reject(msg, refusal)
                return self._end()
            if isinstance(msg, VoteRequest) and msg.pre_vote:
                pass  # a pre-vote never changes the receiver's term (thesis §9.6)
            elif isinstance(msg, VoteReply) and msg.pre_vote and msg.granted:
                pass  # a granted pre-vote carries the term we would campaign in
            else:
                leader = msg.sender if isinstance(msg, Heartbeat) else None
                self._become_follower(msg.term, leader, f"saw term {msg.term} from {msg.sender}")
        elif msg.term < self.term:
            if isinstance(msg, (VoteRequest, Heartbeat, TimeoutNow)):
                self._reject(msg, f"stale term {msg.term} < {self.term}")
            # A stale reply answers a question from a term that is over: drop it.
            return self._end()
        if isinstance(msg, VoteRequest):
            self._on_vote_request(msg)
        elif isinstance(msg, Heartbeat):
            self._on_heartbeat(msg)
        elif isinstance(msg, TimeoutNow):
            self._on_timeout_now(msg)
        elif isinstance(msg, VoteReply):
            self._on_vote_reply(msg)
        elif isinstance(msg, HeartbeatReply):
            self._on_heartbeat_reply(msg)
        # TimeoutNowReply: informational only.
        return self._end()

    def transfer_leadership(self, now: float, to: str | None = None) -> Output:
        """Hand leadership over to ``to`` (or the most responsive voter).

        The lease is dropped and this node steps down *before* ``TimeoutNow`` is
        sent, so it never acts as leader again in this term (a delayed or
        duplicated ``TimeoutNow`` cannot then give two nodes a lease).

        :raises NotLeaderError: this node is not the leader.
        :raises TransferError: ``to`` is not another voter, or there is none.
        """
        if self.role is not Role.LEADER:
            raise NotLeaderError(f"node {self.id!r} is not the leader (it is {self.role})")
        if to is not None:
            if to == self.id or to not in self._voters:
                raise TransferError(f"cannot transfer leadership to {to!r}: not another voter")
            target = to
        else:
            if not self._other_voters:
                raise TransferError("no other voter to transfer leadership to")
            target = max(self._other_voters, key=lambda v: self._last_ack.get(v, -math.inf))
        self._begin(now)
        self.lease_until = 0.0
        self._become_follower(self.term, None, f"transferring leadership to {target}")
        self._send(target, TimeoutNow(self.id, self.term, self._fingerprint))
        return self._end()

    # -- handlers --------------------------------------------------------------

    def _check_voter_set(self, msg: Request) -> None:
        """Refuse a request whose sender counts another voter set (it states one)."""
        if msg.voter_set and msg.voter_set != self._fingerprint:
            raise VoterSetMismatch(self.id, msg.sender, msg.voter_set, self._fingerprint)

    def _sticky_refusal(self, msg: VoteRequest, now: float) -> str | None:
        """Why the promise forbids granting this vote or pre-vote at ``now`` (None: it does not)."""
        if now < self._started_until:
            return (
                f"started {now - (self._started_until - self._T):.3f}s ago: grants no vote"
                f" until {self._T:g}s after its start (it may have promised a leader before)"
            )
        if not msg.transfer and self._in_lease(now):
            if self.role is not Role.LEADER and self.leader_id is None and self.voted_for:
                # The promise of the vote it gave in this term, no leader known since.
                return (
                    f"already voted for {self.voted_for} in term {self.term}: no other vote"
                    f" until {self._T:g}s after it"
                )
            return "a live leader is known"
        return None

    def _on_vote_request(self, msg: VoteRequest) -> None:
        now = self._now
        if not self._voter:
            self._reject(msg, "this node does not vote")
            return
        if msg.sender not in self._voters:
            self._reject(msg, "the candidate is not a voter")
            return
        if msg.pre_vote:
            # Would we vote for it in msg.term? Only a later term, and only if no
            # live leader is known (already checked above for msg.term > term).
            if msg.term > self.term:
                self._grant(msg, msg.term)
            else:
                self._reject(msg, f"pre-vote term {msg.term} is not after {self.term}")
            return
        # A real vote: msg.term == self.term here (a higher term made us follow it).
        # The vote it already gave in this term, asked for again (a retry, a
        # duplicate), is no other vote: no promise forbids giving it again.
        again = self.voted_for == msg.sender
        refusal = None if again else self._sticky_refusal(msg, now)
        if refusal is not None:
            self._reject(msg, refusal)
            return
        if self._can_grant(msg.sender):
            self.voted_for = msg.sender
            # A vote promises what a heartbeat's ack does: no other vote for T
            # after it was granted. The candidate's lease counts from it.
            self._promise_until = max(self._promise_until, now + self._T)
            self._reset_election_timer(now)
            self._grant(msg, self.term)
        else:
            self._reject(msg, f"already voted for {self.voted_for} or follows {self.leader_id}")

    def _can_grant(self, candidate: str) -> bool:
        """One vote per term (Raft §5.2): only if we have not voted, or voted for it."""
        if self.voted_for == candidate:
            return True
        return self.voted_for is None and self.leader_id is None

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        now = self._now
        if self.role is Role.LEADER:
            # Two leaders in one term cannot happen; refuse rather than follow.
            self._reply(HeartbeatReply(self.id, self.term, msg.seq, False))
            return
        if self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._become_follower(self.term, msg.sender, f"heard from leader {msg.sender}")
        elif self.leader_id != msg.sender:
            self._set_leader(msg.sender, f"heard from leader {msg.sender}")
        self._leader_address = msg.address
        self._leader_tags = msg.tags
        self._promise_until = max(self._promise_until, now + self._T)
        self._reset_election_timer(now)
        self._reply(HeartbeatReply(self.id, self.term, msg.seq, True))

    def _on_timeout_now(self, msg: TimeoutNow) -> None:
        accept = self._voter and self.role is Role.FOLLOWER and msg.sender == self.leader_id
        self._reply(TimeoutNowReply(self.id, self.term, accept))
        if accept:
            self._campaign(transfer=True)

    def _on_vote_reply(self, msg: VoteReply) -> None:
        if msg.pre_vote:
            # A granted pre-vote carries the term we would campaign in; a refused
            # one the voter's own term, ours (a later one made us follow it at
            # the top of step(), an earlier one was dropped there as stale).
            if self.role is not Role.PRE_CANDIDATE:
                return
            if msg.term != (self.term + 1 if msg.granted else self.term):
                return
        elif self.role is not Role.CANDIDATE or msg.term != self.term:
            return
        if msg.sender not in self._voters:
            return
        self._votes[msg.sender] = msg.granted
        granted = sum(1 for v in self._votes.values() if v)
        refused = len(self._votes) - granted
        if granted >= self._quorum:
            if self.role is Role.PRE_CANDIDATE:
                if self._now < self._promise_until:
                    # It granted a vote since it asked (to a candidate of its own
                    # term): that vote promised no other for T, its own included.
                    # Its timer, reset then, asks again once the promise is over.
                    return
                self._become_candidate(transfer=False)
            else:
                self._become_leader()
        elif refused >= self._quorum:
            lost = "lost the pre-vote" if self.role is Role.PRE_CANDIDATE else "lost the election"
            self._become_follower(self.term, None, lost)

    def _on_heartbeat_reply(self, msg: HeartbeatReply) -> None:
        if self.role is not Role.LEADER or not msg.success:
            return
        sent = self._round_sent.get(msg.seq)
        if sent is None:
            return  # a round sent over T ago (or never): it can extend nothing
        # Check quorum counts an ack by when its round was sent, as the lease
        # does: counted by arrival, replies that keep arriving between T(1-drift)
        # and T after their round would keep a leader that can never hold a lease.
        if sent > self._last_ack.get(msg.sender, -math.inf):
            self._last_ack[msg.sender] = sent
        if msg.sender in self._voters and msg.seq > self._acked_seq.get(msg.sender, -1):
            self._acked_seq[msg.sender] = msg.seq
            if msg.seq > self._lease_seq:
                self._update_lease()

    # -- leader ----------------------------------------------------------------

    def _broadcast_heartbeat(self) -> None:
        now = self._now
        self._seq += 1
        self._round_sent[self._seq] = now
        # Rounds sent more than T ago can no longer extend the lease.
        for seq in [s for s, sent in self._round_sent.items() if sent < now - self._T]:
            del self._round_sent[seq]
        hb = Heartbeat(
            self.id, self.term, self._seq, self._me.address, self._me.tags, self._fingerprint
        )
        for peer in self._others:
            self._send(peer, hb)
        self._heartbeat_due = now + self.config.heartbeat_interval
        self._update_lease()

    def _update_lease(self) -> None:
        # The newest round acknowledged by a majority (this node acks every round;
        # round 0 is the vote round, -1 means none).
        acks = sorted(
            [self._seq] + [self._acked_seq.get(v, -1) for v in self._other_voters], reverse=True
        )
        seq = acks[self._quorum - 1]
        sent = self._campaign_sent if seq == 0 else self._round_sent.get(seq)
        if sent is not None and seq > self._lease_seq:
            self._lease_seq = seq
            until = self._lease_base(seq, sent) + self._lease_span
            if until > self.lease_until:
                self.lease_until = until

    def _lease_base(self, seq: int, sent: float) -> float:
        """The time the lease of round ``seq`` (0: the vote round) counts from: its *send* time."""
        return sent

    def _has_quorum_contact(self, now: float) -> bool:
        """Check quorum (thesis §6.2): a majority acked a round sent within T(1 - drift).

        The grace of T after becoming leader (or resuming) lets the first rounds
        be answered.
        """
        if now - self._leader_since < self._T:
            return True
        since = now - self._lease_span
        recent = 1 + sum(1 for v in self._other_voters if self._last_ack.get(v, -math.inf) >= since)
        return recent >= self._quorum

    # -- campaigns -------------------------------------------------------------

    def _in_lease(self, now: float) -> bool:
        """Leader stickiness: is a live leader known (so votes must be refused)?"""
        return self.role is Role.LEADER or now < self._promise_until

    def _campaign(self, *, transfer: bool) -> None:
        if not self._voter:
            return
        if self.config.pre_vote and not transfer:
            self._become_pre_candidate()
        else:
            self._become_candidate(transfer=transfer)

    def _become_pre_candidate(self) -> None:
        self._change_role(Role.PRE_CANDIDATE, None, "election timeout: asking for pre-votes")
        self._reset_election_timer(self._now)
        self._votes = {self.id: True}
        req = VoteRequest(self.id, self.term + 1, pre_vote=True, voter_set=self._fingerprint)
        for peer in self._other_voters:
            self._send(peer, req)
        if self._quorum == 1:
            self._become_candidate(transfer=False)

    def _become_candidate(self, *, transfer: bool) -> None:
        self.term += 1
        self.voted_for = self.id
        reason = "leadership transfer: campaigning at once" if transfer else "campaigning"
        self._change_role(Role.CANDIDATE, None, reason)
        self._reset_election_timer(self._now)
        self._votes = {self.id: True}
        self._campaign_sent = self._now
        req = VoteRequest(self.id, self.term, transfer=transfer, voter_set=self._fingerprint)
        for peer in self._other_voters:
            self._send(peer, req)
        if self._quorum == 1:
            self._become_leader()

    def _become_leader(self) -> None:
        self._change_role(Role.LEADER, self.id, f"won the election for term {self.term}")
        self._start_leading(self._now, 0.0)
        # The vote round is round 0: each voter that granted its vote promised, when
        # it granted it, no other vote for T, as an ack of a heartbeat round does;
        # the lease counts from when the vote requests were sent.
        for voter in self._other_voters:
            if self._votes.get(voter):
                self._acked_seq[voter] = 0
                self._last_ack[voter] = self._campaign_sent
        self._broadcast_heartbeat()

    def _start_leading(self, now: float, lease_until: float) -> None:
        self._leader_address = self._me.address
        self._leader_tags = self._me.tags
        self._leader_since = now
        self._lease_seq = -1
        self._acked_seq = {}
        self._last_ack = {}
        self._round_sent = {}
        self.lease_until = lease_until

    def _resume(self, state: HardState, resume: Resume) -> str:
        """Take over from the previous process of this node; say what was taken."""
        now, term, leader = self._now, resume.term, resume.leader
        if term != state.term:
            # Newer on disk: the old process moved on (voted, campaigned, saw a
            # newer term) after it published the record; the record is stale.
            return f"not resumed: the state file is in term {state.term}, the record in {term}"
        carried = ""
        if resume.promise_until is not None and self._voter:
            # The previous process's promise, taken once it stopped stepping: the
            # promise this node made, exactly (on the same machine's clock). It
            # can never be longer than a promise made now.
            self._promise_until = min(resume.promise_until, now + self._T)
            if resume.started_until is not None:
                # The guard of the start the previous process made (a node that
                # lost its disk must not grant even a transfer's vote for T).
                self._started_until = min(resume.started_until, now + self._T)
            carried = (
                f"; keeps the previous process's promise"
                f" ({max(self._promise_until - now, 0.0):.3f}s left)"
            )
        if leader is None:
            return f"nothing to resume in term {term}: no leader was known{carried}"
        if leader.id == self.id:
            # Only the node that won the term may lead it, and a winner voted
            # for itself in it: anything else is not this node's leadership.
            if not self._voter or state.voted_for != self.id:
                return (
                    f"not resumed as leader of term {term}: the state file says it voted"
                    f" for {state.voted_for} in it"
                )
            # The carried lease is still covered by the promises of the voters that
            # acked its round; it can never be longer than a round sent now would
            # give, whatever the record says.
            lease = min(resume.lease_until, now + self._lease_span)
            self.role = Role.LEADER
            self.leader_id = self.id
            self._start_leading(now, max(lease, 0.0))
            self._heartbeat_due = now  # heartbeats at once, at the first tick
            return f"resumed as leader of term {term}, lease {max(lease - now, 0.0):.3f}s left"
        if leader.id not in self._members:
            return f"not resumed: the record's leader {leader.id!r} is not a member"
        self.leader_id = leader.id
        self._leader_address = leader.address
        self._leader_tags = leader.tags
        return f"resumed following leader {leader.id} in term {term}{carried}"

    def _become_follower(self, term: int, leader: str | None, reason: str) -> None:
        if term > self.term:
            self.term = term
            self.voted_for = None
        if self.role is Role.LEADER:
            self.lease_until = 0.0
            self._heartbeat_due = math.inf
        role = Role.FOLLOWER if self._voter else Role.OBSERVER
        self._change_role(role, leader, reason)
        self._reset_election_timer(self._now)

    def _set_leader(self, leader: str | None, reason: str) -> None:
        self._change_role(self.role, leader, reason)

    def _change_role(self, role: Role, leader: str | None, reason: str) -> None:
        previous_role, previous_leader = self.role, self.leader_id
        self.role = role
        self.leader_id = leader
        if leader is None:
            self._leader_address = ""
            self._leader_tags = {}
        if previous_role is not role or previous_leader != leader:
            self._out.transitions.append(
                Transition(
                    previous_role, role, previous_leader, leader, self.term, self._now, reason
                )
            )

    def _reset_election_timer(self, now: float) -> None:
        # T first: the promise (no vote before T after the last heartbeat or vote
        # this node accepted; thesis §4.2.3). Then a spread that only has to keep
        # candidates an election round apart (§5.2's purpose), not a [T, 2T) that
        # cost T/2 on average and still let two timers fire within one round.
        self._election_deadline = now + self._T + self._timer_spread()

    def _timer_spread(self) -> float:
        """The part of the election timer after ``T``, drawn anew at each reset.

        A voter with a slot (rank below the slots) waits its rank times the gap,
        plus a jitter below ``JITTER`` heartbeat intervals; one without a slot
        draws at random in the gap after the last slot. Below ``(slots + 1) x gap``,
        at most ``T``: many voters, or several dead ones in a row, cost no more than
        Raft's ``[T, 2T)``.
        """
        rank, known = self._rank()
        slots = RANK_SLOTS if known else RANK_SLOTS_NO_LEADER
        gap = min((RANK_GAP if known else RANK_GAP_NO_LEADER) * self._H, self._T / (slots + 1))
        draw = self._rng.random()
        if rank < slots:
            return gap * rank + JITTER * self._H * draw
        return gap * (slots + draw)

    def _rank(self) -> tuple[int, bool]:
        """This voter's place in the order election timers fire in (0: first), and
        whether it counts from a known leader.

        With a known leader (the one that fell silent), the voters that follow its
        place among the sorted voter ids, in turn. With none (a start, a lost
        campaign, a vote granted in a new term), the voters from the place the
        term gives, so that the order turns with every term campaigned in.
        """
        order = self._order
        me = order.get(self.id)
        leader = order.get(self.leader_id) if self.leader_id is not None else None
        if me is None:
            return 0, leader is not None
        start = self.term if leader is None else leader + 1
        return (me - start) % len(order), leader is not None

    # -- output ----------------------------------------------------------------

    def _begin(self, now: float) -> None:
        self._now = now
        self._out = Output()
        self._saved = (self.term, self.voted_for)

    def _end(self) -> Output:
        out = self._out
        if (self.term, self.voted_for) != self._saved:
            out.persist = self.hard_state
        self._out = Output()
        return out

    def _send(self, to: str, msg: Request) -> None:
        self._out.messages.append((to, msg))

    def _reply(self, reply: Reply) -> None:
        self._out.reply = reply

    def _grant(self, msg: VoteRequest, term: int) -> None:
        self._reply(VoteReply(self.id, term, True, msg.pre_vote))

    def _reject(self, msg: Request, reason: str) -> None:
        if isinstance(msg, VoteRequest):
            self._reply(VoteReply(self.id, self.term, False, msg.pre_vote, reason[:256]))
        elif isinstance(msg, Heartbeat):
            self._reply(HeartbeatReply(self.id, self.term, msg.seq, False))
        else:
            self._reply(TimeoutNowReply(self.id, self.term, False))
