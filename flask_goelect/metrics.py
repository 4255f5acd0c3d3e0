"""Prometheus metrics of the election: ``pip install flask-goelect[metrics]``.

::

    from flask_goelect.metrics import GoelectMetrics

    elect = LeaderElect(app)
    GoelectMetrics(app)                       # GET /metrics, on prometheus_client.REGISTRY
    GoelectMetrics(app, registry=my_registry, path=None)   # no route: expose it yourself

:class:`GoelectCollector` is a custom collector: at every scrape it reads the
node's status, which any worker of the node asks of the node's elector process
(:meth:`flask_goelect.LeaderElect.status`), so every worker of a node answers a
scrape with the same values, whichever worker the scrape lands on. Nothing is
counted per worker, so prometheus_client's multiprocess mode (a file per
worker, merged at scrape time, with a server hook to mark dead workers) is not
needed. ``goelect_is_leader`` is the node's lease, read at the scrape: at most
one node of a cluster reports 1 at any instant.

Three counters are not in the elector's status: elections started and won,
and leader changes. They are counted by signal receivers, which run in the
node's elector process only, and kept in ``<GOELECT_STATE_FILE>.metrics.json``
(replaced atomically at each change) so that every worker reads the same
values and a process of the node that takes the elector over goes on counting.

The route follows the rule of ``GET <prefix>/status`` (the metrics name the
peers): readable from this host, by the peers' signed requests, or by anyone
with ``GOELECT_STATUS_PUBLIC``; ``public=True`` opens it, for a port that only
the monitoring network reaches.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flask import Flask, Response, request

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric,
        SummaryMetricFamily,
    )
    from prometheus_client.exposition import choose_encoder
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        "flask_goelect.metrics needs prometheus_client: pip install 'flask-goelect[metrics]'"
    ) from exc

from . import signals
from .app_state import ExtensionState
from .state import State
from .views import may_read_status

__all__ = ["COUNTERS", "GoelectCollector", "GoelectMetrics", "SignalCounters"]

#: The counters kept by signal receivers: name -> help.
COUNTERS: dict[str, str] = {
    "elections_started": "Times this node started campaigning (pre-vote rounds included).",
    "elections_won": "Elections this node won.",
    "leader_changes": "Times this node learnt of a new leader (itself included).",
}


class SignalCounters:
    """:data:`COUNTERS`, counted by signal receivers in the elector process.

    ``path`` (None: in memory) is where the counts are kept for the node's
    other processes; it is replaced whole (write, fsync, rename), so a reader
    never sees half of it.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._memory: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()

    def read(self) -> dict[str, int]:
        if self.path is None:
            with self._lock:
                return dict(self._memory)
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = {}
        counts = dict.fromkeys(COUNTERS, 0)
        if isinstance(data, dict):
            for name in COUNTERS:
                value = data.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    counts[name] = value
        return counts

    def add(self, name: str) -> None:
        with self._lock:
            if self.path is None:
                self._memory[name] += 1
                return
            counts = self.read()
            counts[name] += 1
            folder = os.path.dirname(self.path) or "."
            fd, tmp = tempfile.mkstemp(prefix=".metrics-", dir=folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(counts, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise

    def connect(self, app: Flask) -> None:
        """Count the signals ``app`` sends (they are sent in the elector process only)."""

        def started(sender: Flask, **kwargs: Any) -> None:
            self.add("elections_started")

        def won(sender: Flask, **kwargs: Any) -> None:
            self.add("elections_won")

        def changed(sender: Flask, leader_id: str | None = None, **kwargs: Any) -> None:
            if leader_id is not None:
                self.add("leader_changes")

        # Strong references: the receivers live as long as the app's counters.
        self._receivers = (started, won, changed)
        signals.enter_candidate.connect(started, sender=app, weak=False)
        signals.enter_leader.connect(won, sender=app, weak=False)
        signals.leader_changed.connect(changed, sender=app, weak=False)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


class GoelectCollector:
    """Collects the election's metrics of one app's node at each scrape.

    :param state: the app's ``app.extensions["goelect"]``.
    :param counters: the signal counters (default: none, reported as 0).
    """

    def __init__(self, state: ExtensionState, counters: SignalCounters | None = None) -> None:
        self.state = state
        self.counters = counters

    def describe(self) -> Iterable[Metric]:
        # Registration asks for the names only; a scrape asks the elector.
        return list(self._families({}, {}))

    def collect(self) -> Iterable[Metric]:
        status = self.state.status()
        counts = self.counters.read() if self.counters is not None else {}
        return list(self._families(status, counts))

    def _families(self, status: Mapping[str, Any], counts: Mapping[str, int]) -> Iterator[Metric]:
        node = str(status.get("node_id") or self.state.settings.node_id)
        n = ["node"]

        def gauge(name: str, doc: str, value: float | None, unit: str = "") -> Metric:
            family = GaugeMetricFamily(name, doc, labels=n, unit=unit)
            if value is not None and status:
                family.add_metric([node], value)
            return family

        yield gauge(
            "goelect_is_leader",
            "1 while this node leads and holds a valid lease, else 0.",
            1.0 if status.get("is_leader") else 0.0,
        )
        yield gauge(
            "goelect_term", "The current term (the fencing token).", _number(status.get("term"))
        )
        yield gauge(
            "goelect_running",
            "1 while the node's elector runs.",
            1.0 if status.get("running") else 0.0,
        )
        yield gauge(
            "goelect_lease_remaining",
            "Seconds left of this node's leader lease (0 on other nodes).",
            _number(status.get("lease_remaining")) or 0.0,
            unit="seconds",
        )
        yield gauge(
            "goelect_errors_kept",
            "Failures kept in elect.errors (signal receivers, leader tasks, storage), at most 100.",
            _number(status.get("errors")),
        )

        errors_total = CounterMetricFamily(
            "goelect_errors",
            "Failures recorded by the elector process since it started (signal receivers,"
            " leader tasks, storage, background work).",
            labels=n,
        )
        if _number(status.get("errors_total")) is not None:
            errors_total.add_metric([node], float(status["errors_total"]))
        yield errors_total
        refused = CounterMetricFamily(
            "goelect_refused",
            "Requests of peers (and others) this node refused, by the error's code: unauthorized,"
            " bad_signature, replayed_request, wrong_cluster, voter_set_mismatch...",
            labels=["node", "reason"],
        )
        for reason, count in sorted((status.get("refused") or {}).items()):
            if _number(count) is not None:
                refused.add_metric([node, str(reason)], float(count))
        yield refused

        role = GaugeMetricFamily(
            "goelect_state", "1 for the node's state, 0 for the others.", labels=["node", "state"]
        )
        leader = GaugeMetricFamily(
            "goelect_leader",
            "1 for the leader this node knows (no sample while it knows none).",
            labels=["node", "leader"],
        )
        if status:
            current = str(status.get("state", ""))
            for s in State:
                role.add_metric([node, s.value], 1.0 if current == s.value else 0.0)
            if status.get("leader_id"):
                leader.add_metric([node, str(status["leader_id"])], 1.0)
        yield role
        yield leader

        for name, doc in COUNTERS.items():
            family = CounterMetricFamily(f"goelect_{name}", doc, labels=n)
            if status:
                family.add_metric([node], float(counts.get(name, 0)))
            yield family

        contact = GaugeMetricFamily(
            "goelect_peer_last_contact",
            "Seconds since this node last heard from the peer (no sample: never).",
            labels=["node", "peer"],
            unit="seconds",
        )
        for peer, seconds in sorted((status.get("last_contact") or {}).items()):
            if _number(seconds) is not None:
                contact.add_metric([node, str(peer)], float(seconds))
        yield contact

        pk = ["node", "peer", "kind"]
        calls = CounterMetricFamily(
            "goelect_rpc_calls", "RPCs this node's elector sent, per peer and kind.", labels=pk
        )
        failures = CounterMetricFamily(
            "goelect_rpc_failures",
            "RPCs sent that got no valid answer (refused, timed out, unreachable).",
            labels=pk,
        )
        latency = SummaryMetricFamily(
            "goelect_rpc_latency",
            "Reply time of the answered RPCs, per peer and kind.",
            labels=pk,
            unit="seconds",
        )
        slowest = GaugeMetricFamily(
            "goelect_rpc_latency_max",
            "The longest reply time of an RPC, per peer and kind.",
            labels=pk,
            unit="seconds",
        )
        last = GaugeMetricFamily(
            "goelect_rpc_latency_last",
            "The reply time of the last answered RPC, per peer and kind.",
            labels=pk,
            unit="seconds",
        )
        for peer, kinds in sorted((status.get("calls") or {}).items()):
            for kind, c in sorted(kinds.items()):
                labels = [node, str(peer), str(kind)]
                total = int(c.get("calls") or 0)
                failed = int(c.get("failures") or 0)
                calls.add_metric(labels, float(total))
                failures.add_metric(labels, float(failed))
                answered = total - failed
                mean_ms = _number(c.get("mean_ms")) or 0.0
                latency.add_metric(labels, answered, mean_ms * answered / 1000)
                slowest.add_metric(labels, (_number(c.get("max_ms")) or 0.0) / 1000)
                last.add_metric(labels, (_number(c.get("last_ms")) or 0.0) / 1000)
        yield from (calls, failures, latency, slowest, last)


class GoelectMetrics:
    """The election's metrics of an app, on a Prometheus registry, with a route.

    ``GoelectMetrics(app)`` or ``GoelectMetrics()`` and ``init_app(app)``, after
    ``LeaderElect`` is bound to the app.

    :param registry: where the collector is registered (default
        ``prometheus_client.REGISTRY``, with the process's and your own metrics).
    :param path: the route that serves the registry (None: no route; serve it
        with ``prometheus_client.make_wsgi_app(registry)`` or your exporter).
    :param public: serve the route to anyone, not only under the rule of
        ``GET <prefix>/status``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        registry: CollectorRegistry | None = None,
        path: str | None = "/metrics",
        public: bool = False,
    ) -> None:
        self.registry = registry
        self.path = path
        self.public = public
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the app's collector and its counters, and add the route.

        :raises RuntimeError: ``LeaderElect`` is not bound to the app yet, or
            the metrics already are.
        """
        state = app.extensions.get("goelect")
        if not isinstance(state, ExtensionState):
            raise RuntimeError(
                "GoelectMetrics needs flask-goelect on the app: create LeaderElect(app)"
                " (or call elect.init_app(app)) before GoelectMetrics(app)"
            )
        if "goelect_metrics" in app.extensions:
            raise RuntimeError(
                "GoelectMetrics is already set up on this app: use"
                ' app.extensions["goelect_metrics"]'
            )
        registry = self.registry if self.registry is not None else REGISTRY
        path = state.settings.state_file
        counters = SignalCounters(f"{path}.metrics.json" if path else None)
        counters.connect(app)
        collector = GoelectCollector(state, counters)
        try:
            registry.register(collector)
        except ValueError as exc:
            raise RuntimeError(
                f"cannot register the election's metrics: {exc}. Another app of this process"
                " registered them on the same registry: give each app its own,"
                " GoelectMetrics(app, registry=CollectorRegistry())"
            ) from None
        app.extensions["goelect_metrics"] = collector
        if self.path:
            app.add_url_rule(
                self.path,
                "goelect_metrics",
                _metrics_view(registry, self.public),
                methods=["GET"],
            )


def _metrics_view(registry: CollectorRegistry, public: bool) -> Any:
    def metrics() -> Response:
        if not public and not may_read_status():
            return Response(
                "the metrics name the cluster's nodes: served to this host and the peers"
                " (set GOELECT_STATUS_PUBLIC, or GoelectMetrics(app, public=True))\n",
                status=401,
                mimetype="text/plain",
            )
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encoder(registry), headers={"Content-Type": content_type})

    return metrics
