"""A local cluster of pysyncobj nodes (:mod:`bench.pysyncobj_node`), for the comparison.

:class:`PySyncObjCluster` is a :class:`goelect_harness.cluster.LocalCluster` whose
nodes run pysyncobj instead of the example app: the same ports, state folder,
command line (but the module, the peer list's format and the example app's own
options, through LocalCluster's hooks), event reader, signals by PID and
stopping. Only the way to see an agreed leader differs: pysyncobj has no status
route, so :meth:`PySyncObjCluster.wait_for_leader` replays the nodes' event lines.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterable
from typing import Any

from goelect_harness.cluster import ClusterError, Event, LeaderView, LocalCluster

__all__ = ["PySyncObjCluster", "available", "leader_views"]


def available() -> bool:
    """Whether pysyncobj is installed (``pip install -e '.[bench]'``)."""
    return importlib.util.find_spec("pysyncobj") is not None


def leader_views(events: Iterable[Event]) -> dict[str, tuple[str | None, bool, int]]:
    """Each node's latest view from its event lines: ``(leader it names, whether it
    is the leader, its term)``. A node's view starts afresh when it (re)starts."""
    views: dict[str, tuple[str | None, bool, int]] = {}
    for event in events:
        leader, leading, term = views.get(event.node, (None, False, 0))
        d = event.data
        if event.kind in ("ready", "exit"):
            leader, leading = None, False
        elif event.kind == "leader_changed":
            leader = d.get("leader")
        elif event.kind == "state":
            leading = d.get("state") == "leader"
        if isinstance(d.get("term"), int) and event.kind != "state":
            term = d["term"]
        views[event.node] = (leader, leading, term)
    return views


class PySyncObjCluster(LocalCluster):
    """``nodes`` pysyncobj processes on ``host`` with flask-goelect's timings.

    Takes the options of :class:`LocalCluster` that apply (``host``,
    ``base_port``, ``elect_timeout``, ``heartbeat_interval``, ``state_dir``,
    ``keep``, ``on_event``); the journal of each node is kept in its state folder.
    """

    node_module = "bench.pysyncobj_node"

    def __init__(self, nodes: int = 3, **options: Any) -> None:
        options.setdefault("job_interval", 0)
        super().__init__(nodes, **options)

    def peers_option(self, node_id: str) -> str:
        # pysyncobj's addresses are HOST:PORT, and it has no observers.
        return ",".join(f"{n.id}={n.host}:{n.port}" for n in self.nodes.values())

    def node_options(self, node_id: str) -> list[str]:
        return []  # no ledger, no job, pysyncobj's own logging

    def wait_for_leader(
        self,
        timeout: float = 10.0,
        *,
        min_term: int = 0,
        exclude: Iterable[str] = (),
        poll: float = 0.01,
    ) -> LeaderView:
        """Wait until every running node (but ``exclude``) names the same leader,
        that node is in the leader state, in a term of at least ``min_term``.

        :raises ClusterError: no such agreement within ``timeout`` seconds.
        """
        excluded = set(exclude)
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                views = leader_views(self.events)
            ids = [n for n in self.running_nodes() if n not in excluded]
            named = {views.get(n, (None, False, 0))[0] for n in ids}
            if ids and len(named) == 1:
                leader = next(iter(named))
                if leader is not None and leader in views:
                    _, leading, term = views[leader]
                    if leading and term >= min_term:
                        return LeaderView(leader, term, time.monotonic())
            if time.monotonic() >= deadline:
                shown = {n: views.get(n) for n in ids}
                raise ClusterError(
                    f"no agreed pysyncobj leader (term >= {min_term}) within {timeout:g}s: {shown}"
                )
            time.sleep(poll)
