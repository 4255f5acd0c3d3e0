"""Recipe: Flask-APScheduler, with jobs that run once in the cluster.

Every worker of every node may run the scheduler (gunicorn ``-w 3`` starts one
per worker): the job is ``@elect.leader_only``, so it runs only in the leader
node's elector process, and every other scheduler's call returns at once. The
job sees the fencing token with :func:`~flask_goelect.decorators.current_term`.

::

    gunicorn -w 3 -b 0.0.0.0:5000 'example_app.recipes.scheduler:serve()'

Settings: ``EXAMPLE_LEDGER`` (where each run appends a JSON line: time, node,
pid, term) and ``EXAMPLE_JOB_INTERVAL`` (milliseconds between runs).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_apscheduler import APScheduler

from flask_goelect import LeaderElect
from flask_goelect.decorators import current_term

__all__ = ["cleanup", "create_app", "elect", "scheduler", "serve"]

elect = LeaderElect()
scheduler = APScheduler()

#: Where :func:`cleanup` records its runs (set by :func:`create_app`).
_runs_path: str | None = None


@elect.leader_only
def cleanup() -> None:
    """The job: here it records that it ran; yours cleans, sends, rebuilds..."""
    if _runs_path is None:
        return
    line = {"t": time.time(), "node": elect.node.id, "pid": os.getpid(), "term": current_term()}
    with open(_runs_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    global _runs_path
    app = Flask(__name__)
    app.config.update(config or {})
    app.config.setdefault("EXAMPLE_JOB_INTERVAL", 1000)
    _runs_path = app.config.get("EXAMPLE_LEDGER")
    elect.init_app(app)
    scheduler.init_app(app)
    scheduler.add_job(
        id="cleanup",
        func=cleanup,
        trigger="interval",
        seconds=float(app.config["EXAMPLE_JOB_INTERVAL"]) / 1000,
        # A run that starts late (a busy worker) is skipped, not run twice.
        coalesce=True,
        max_instances=1,
    )
    scheduler.start()
    return app


def serve() -> Flask:
    """The app of the node's options in ``EXAMPLE_ARGS`` (for a WSGI server)."""
    from ._serve import app_from_env

    return app_from_env(create_app)
