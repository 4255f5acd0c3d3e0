"""A tiny deterministic network of core nodes for unit tests (etcd's ``network``).

Time is manual: ``net.advance(dt)`` moves every node's clock and fires due
timers; ``net.deliver()`` runs messages to quiescence. Links can be cut in one
or both directions and nodes isolated or crashed and restarted from their
persisted state.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from unittest import mock

from flask_goelect.core import (
    Config,
    HardState,
    Node,
    Output,
    Peer,
    Role,
    Transition,
    VoterSetMismatch,
)
from flask_goelect.messages import Reply, Request

T = 1.0
HB = 0.1


@contextlib.contextmanager
def started_long_ago() -> Iterator[None]:
    """Core nodes made meanwhile act as if they had started over T ago.

    Every start keeps a promise: no vote for T (the core's tests check it). Tests
    of other layers that start a node and at once ask it for a vote (the routes,
    the runner) start it inside this, so that the vote is answered on its merits.
    """
    init = Node.__init__

    def started(self: Node, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._promise_until = self._started_until = kwargs["now"]

    with mock.patch.object(Node, "__init__", started):
        yield


def make_config(
    node_id: str, ids: Iterable[str], observers: Iterable[str] = (), **kw: Any
) -> Config:
    obs = set(observers)
    peers = tuple(Peer(i, f"http://{i}", novote=i in obs) for i in ids)
    kw.setdefault("elect_timeout", T)
    kw.setdefault("heartbeat_interval", HB)
    return Config(node_id, peers, novote=node_id in obs, **kw)


class Net:
    """Nodes, a message queue, cut links and a manual clock."""

    def __init__(
        self,
        ids: Iterable[str] = ("a", "b", "c"),
        observers: Iterable[str] = (),
        *,
        seed: int = 1,
        factory: Callable[..., Node] = Node,
        **config: Any,
    ) -> None:
        self.ids = list(ids)
        self.observers = list(observers)
        self.now = 0.0
        self.seed = seed
        self.factory = factory
        self.config_kw = config
        self.stored: dict[str, HardState] = {i: HardState() for i in self.ids}
        self.nodes: dict[str, Node] = {}
        self.queue: deque[tuple[str, str, Request | Reply]] = deque()
        self.cut: set[tuple[str, str]] = set()
        self.transitions: list[tuple[str, Transition]] = []
        self.sent: list[tuple[str, str, Request | Reply]] = []
        self.crashed: set[str] = set()
        self.refused: list[tuple[str, str, Request | Reply]] = []
        for i in self.ids:
            self.start(i)

    def config(self, i: str) -> Config:
        return make_config(i, self.ids, self.observers, **self.config_kw)

    def start(self, i: str) -> Node:
        rng = random.Random(f"{self.seed}-{i}-{self.now}")
        self.nodes[i] = self.factory(self.config(i), self.stored[i], now=self.now, rng=rng)
        self.crashed.discard(i)
        return self.nodes[i]

    def crash(self, i: str) -> None:
        self.crashed.add(i)

    def restart(self, i: str) -> Node:
        return self.start(i)

    def isolate(self, i: str) -> None:
        for j in self.ids:
            if j != i:
                self.cut |= {(i, j), (j, i)}

    def heal(self) -> None:
        self.cut.clear()

    def handle(self, i: str, out: Output, requester: str | None = None) -> Output:
        if out.persist is not None:
            self.stored[i] = out.persist
        self.transitions += [(i, t) for t in out.transitions]
        for to, msg in out.messages:
            self.post(i, to, msg)
        if out.reply is not None and requester is not None:
            self.post(i, requester, out.reply)
        return out

    def post(self, src: str, dst: str, msg: Request | Reply) -> None:
        self.sent.append((src, dst, msg))
        if (src, dst) not in self.cut:
            self.queue.append((src, dst, msg))

    def step(self, dst: str, msg: Request | Reply) -> Output:
        """Deliver one message directly (replies to requests are queued).

        A request of another voter set is refused without a reply (over HTTP: a
        409), and noted in ``refused``.
        """
        try:
            out = self.nodes[dst].step(msg, self.now)
        except VoterSetMismatch:
            self.refused.append((msg.sender, dst, msg))
            return Output()
        return self.handle(dst, out, msg.sender)

    def deliver(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if not self.queue:
                return
            src, dst, msg = self.queue.popleft()
            if dst in self.crashed or (src, dst) in self.cut:
                continue
            self.step(dst, msg)
        raise AssertionError("messages did not settle")

    def tick(self, i: str) -> Output:
        return self.handle(i, self.nodes[i].tick(self.now))

    def advance(self, dt: float, *, step: float = 0.01) -> None:
        """Move time forward by ``dt`` in small steps, firing timers and delivering."""
        end = self.now + dt
        while self.now < end - 1e-12:
            self.now = min(end, self.now + step)
            for i in self.ids:
                if i not in self.crashed and self.nodes[i].next_deadline() <= self.now:
                    self.tick(i)
            self.deliver()

    def leaders(self) -> list[str]:
        return [i for i in self.ids if i not in self.crashed and self.nodes[i].role is Role.LEADER]

    def elect(self, i: str) -> None:
        """Make ``i`` leader: fire its timer and let the election complete."""
        node = self.nodes[i]
        self.now = max(self.now, node.next_deadline())
        self.tick(i)
        self.deliver()
        assert node.role is Role.LEADER, f"{i} did not win: {node.role}"
        assert node.is_leader(self.now), "a new leader holds the lease of its vote round"
        self.deliver()
