"""The example app: every part of flask-goelect in a small real application.

* ``elect = LeaderElect()`` at module level, bound to each app in
  :func:`create_app` (the Pallets factory pattern).
* A leader-only periodic job: an ``elect.leader_task`` that calls
  :func:`append_ledger_entry` (an ``@elect.leader_only`` function) once per job
  interval while this node leads. Each call appends one JSON line to the ledger;
  the lease is checked when the call starts and again right before the write.
* A leader-only view, ``POST /jobs/run-now`` (``@flask_goelect.leader_only``):
  followers answer 503 naming the leader.
* ``GET /``: this node's view of the cluster (HTML); ``GET /jobs``: the job's
  settings and the end of the ledger (JSON).
* Signal receivers that log every leadership change.
* The live status page at ``GET /_goelect/ui`` and, with ``flask-goelect[metrics]``,
  Prometheus metrics at ``GET /metrics``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, current_app, render_template, request
from flask.typing import ResponseReturnValue

from flask_goelect import LeaderElect, leader_only, signals
from flask_goelect.decorators import current_term
from flask_goelect.views import may_read_status

from .ledger import Ledger, tail_ledger

__all__ = ["ENV_KEYS", "ExampleSettings", "append_ledger_entry", "create_app", "elect"]

log = logging.getLogger("example_app")

#: The extension, bound to every app made by :func:`create_app`.
elect = LeaderElect()

#: Environment variables :func:`create_app` reads besides every ``GOELECT_*`` one.
ENV_KEYS = ("EXAMPLE_LEDGER", "EXAMPLE_JOB_INTERVAL")

#: Milliseconds between two runs of the leader-only job, unless configured.
DEFAULT_JOB_INTERVAL_MS = 1000

bp = Blueprint("example", __name__)


@dataclass(frozen=True)
class ExampleSettings:
    """The example's own settings of one app: ``app.extensions["example_app"]``."""

    ledger: Ledger
    #: Seconds between two runs of the job; 0 disables the job.
    job_interval: float


def settings_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings found in ``environ``: every ``GOELECT_*`` key and :data:`ENV_KEYS`.

    Values stay strings: the extension parses its own keys (``GOELECT_PEERS`` as
    comma-separated ``id=url``, timings in milliseconds, booleans).
    """
    return {k: v for k, v in environ.items() if k.startswith("GOELECT_") or k in ENV_KEYS}


def _job_interval(value: object) -> float:
    """``EXAMPLE_JOB_INTERVAL`` (milliseconds) in seconds; 0 disables the job."""
    try:
        ms = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ms = math.nan
    if isinstance(value, bool) or not math.isfinite(ms) or ms < 0:
        raise ValueError(
            f"EXAMPLE_JOB_INTERVAL must be a number of milliseconds >= 0 (0 disables the"
            f" job), not {value!r}"
        )
    return ms / 1000


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Make the example app.

    Settings come from the environment (every ``GOELECT_*`` variable,
    ``EXAMPLE_LEDGER``, ``EXAMPLE_JOB_INTERVAL``), overridden by ``config``.

    ``EXAMPLE_LEDGER``
        The ledger file the leader-only job appends to. Default
        ``ledger.jsonl`` in the instance folder.
    ``EXAMPLE_JOB_INTERVAL``
        Milliseconds between two runs of the job while this node leads; 0
        disables it. Default 1000.

    See :meth:`flask_goelect.LeaderElect.init_app` for the ``GOELECT_*`` keys.
    The elector starts here unless ``GOELECT_AUTOSTART`` is false.
    """
    app = Flask("example_app")
    app.config.update(settings_from_env(os.environ))
    if config is not None:
        app.config.update(config)
    app.config.setdefault("EXAMPLE_LEDGER", os.path.join(app.instance_path, "ledger.jsonl"))
    app.config.setdefault("EXAMPLE_JOB_INTERVAL", DEFAULT_JOB_INTERVAL_MS)
    settings = ExampleSettings(
        ledger=Ledger(app.config["EXAMPLE_LEDGER"]),
        job_interval=_job_interval(app.config["EXAMPLE_JOB_INTERVAL"]),
    )
    app.extensions["example_app"] = settings
    app.register_blueprint(bp)

    for signal, receiver in (
        (signals.enter_leader, _log_enter_leader),
        (signals.leave_leader, _log_leave_leader),
        (signals.leader_changed, _log_leader_changed),
    ):
        signal.connect(receiver, sender=app)

    # The live status page at /_goelect/ui (the library's default is off).
    app.config.setdefault("GOELECT_STATUS_PAGE", True)
    elect.init_app(app)
    _add_metrics(app)
    if settings.job_interval > 0:
        with app.app_context():
            elect.leader_task(ledger_job)
    return app


def _add_metrics(app: Flask) -> None:
    """``GET /metrics`` (Prometheus), when ``flask-goelect[metrics]`` is installed.

    A registry per app: tests and launchers make several apps in one process, and
    each app's collector names the same series.
    """
    try:
        from prometheus_client import CollectorRegistry

        from flask_goelect.metrics import GoelectMetrics
    except ImportError:
        return
    GoelectMetrics(app, registry=CollectorRegistry())


def _example() -> ExampleSettings:
    settings: ExampleSettings = current_app.extensions["example_app"]
    return settings


# -- the leader-only job ---------------------------------------------------------------


@elect.leader_only
def append_ledger_entry() -> dict[str, Any] | None:
    """Append one entry to the ledger; runs only on the leader holding a valid lease.

    Returns the entry written, or None when this node is not the leader (the
    decorator skips the call) or lost its lease before the write.
    """
    term = current_term()  # the fencing token the lease check passed in
    node_id = elect.node.id

    def still_leading() -> bool:
        # Read the term first: if the lease is then valid, it is this term's.
        return elect.term == term and elect.is_leader

    entry = _example().ledger.append(node_id, term, still_leading)
    return entry.to_json() if entry is not None else None


def ledger_job(ctx: Any) -> None:
    """The leader task: one ledger entry per job interval while this node leads.

    ``ctx`` is the leader task's context: ``ctx.wait(seconds)`` returns True as
    soon as leadership is lost (or the elector stops).
    """
    example = _example()
    interval = example.job_interval
    # One run per interval in the cluster: a new leader (or a process of this
    # node that took its elector over) resumes the schedule where the ledger
    # left it, instead of running at once.
    last = tail_ledger(example.ledger.path, 1)
    if last and ctx.wait(max(0.0, min(interval, last[0].time + interval - time.time()))):
        return
    while True:
        try:
            append_ledger_entry()
        except OSError:
            log.exception("the ledger job could not write to the ledger")
        if ctx.wait(interval):
            return


# -- views ---------------------------------------------------------------------------------


@bp.get("/")
def index() -> ResponseReturnValue:
    """This node's view of the cluster: its own status and every node's.

    It shows the topology, so it follows ``GOELECT_STATUS_PUBLIC`` like
    ``GET /_goelect/status``: unless that is true, only this host (or a peer's
    signed request) may see it.
    """
    if not may_read_status():
        return (
            "<!doctype html><title>Not public</title><p>This page shows the cluster's"
            " topology: it is served to this node's host only (GOELECT_STATUS_PUBLIC is"
            " false).</p>",
            401,
        )
    settings = current_app.extensions["goelect"].settings
    status = elect.status()
    cluster = elect.cluster_state(timeout=min(1.0, settings.elect_timeout))
    example = _example()
    return render_template(
        "index.html",
        status=status,
        cluster=cluster,
        entries=tail_ledger(example.ledger.path, 10),
        ledger_path=str(example.ledger.path),
        job_interval=example.job_interval,
    )


@bp.get("/jobs")
def jobs() -> ResponseReturnValue:
    """The job's settings, whether this node runs it now, and the end of the ledger."""
    example = _example()
    return {
        "node_id": elect.node.id,
        "is_leader": elect.is_leader,
        "term": elect.term,
        "job_interval_ms": example.job_interval * 1000,
        "ledger": str(example.ledger.path),
        "written_by_this_process": example.ledger.seq,
        "last_entries": [e.to_json() for e in tail_ledger(example.ledger.path, 20)],
    }


#: The longest a ``GET /slow`` request may take, in milliseconds.
MAX_SLOW_MS = 30_000


@bp.get("/slow")
def slow() -> ResponseReturnValue:
    """A slow request, for load tests: ``?ms=N`` waits N milliseconds (at most 30 s);
    with ``&cpu=1`` it computes for that long instead, without yielding (as a
    CPU-bound view does, holding the GIL and, under gevent, the hub)."""
    try:
        ms = float(request.args.get("ms", "100"))
    except ValueError:
        ms = math.nan
    if not 0 <= ms <= MAX_SLOW_MS:
        return {"error": "bad_request", "message": f"ms must be 0..{MAX_SLOW_MS}"}, 400
    cpu = request.args.get("cpu") == "1"
    started = time.perf_counter()
    if cpu:
        deadline = started + ms / 1000
        spins = 0
        while time.perf_counter() < deadline:
            spins += 1
    else:
        time.sleep(ms / 1000)
    return {"ms": round((time.perf_counter() - started) * 1000, 3), "cpu": cpu}


@bp.post("/jobs/run-now")
@leader_only
def run_now() -> ResponseReturnValue:
    """Run the job once, now; only on the leader (followers answer 503)."""
    entry = append_ledger_entry()
    if entry is None:
        return {
            "error": "lease_lost",
            "message": "this node lost its lease before writing; retry on the leader",
        }, 503
    return entry


# -- signal receivers -------------------------------------------------------------------------


def _log_enter_leader(sender: Flask, *, term: int, node_id: str, **kwargs: Any) -> None:
    sender.logger.info("node %s became the leader of term %d", node_id, term)


def _log_leave_leader(
    sender: Flask, *, term: int, node_id: str, state: str, reason: str = "", **kwargs: Any
) -> None:
    sender.logger.info(
        "node %s stopped leading (now %s, term %d): %s", node_id, state, term, reason
    )


def _log_leader_changed(
    sender: Flask, *, term: int, node_id: str, leader_id: str | None, **kwargs: Any
) -> None:
    if leader_id is None:
        sender.logger.info("node %s knows no leader (term %d)", node_id, term)
    else:
        sender.logger.info("node %s: the leader is %s (term %d)", node_id, leader_id, term)
