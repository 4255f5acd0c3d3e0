"""Recipe: a queue consumer that runs on the leader only.

The consumer is an ``@elect.leader_task``, declared at module level before
``init_app``: it starts each time this node becomes leader, in the node's one
elector process (whatever the number of workers), and stops when leadership
is lost (``ctx.cancelled`` is set; ``ctx.wait`` returns True). The queue here is a
SQLite table, standing for Redis, SQS or a Celery beat: what matters is where
the loop runs.

A message is taken and marked done in one transaction that names the term
(the fencing token): a consumer whose leadership ended cannot mark a message
taken by a newer leader.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app

from flask_goelect import LeaderElect

__all__ = ["create_app", "elect", "enqueue", "open_queue", "serve"]

elect = LeaderElect()


def open_queue(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY, payload TEXT NOT NULL,"
        " done_by TEXT, done_pid INTEGER, done_term INTEGER)"
    )
    return conn


def enqueue(path: str, payload: str) -> None:
    with open_queue(path) as conn:
        conn.execute("INSERT INTO queue (payload) VALUES (?)", (payload,))


@elect.leader_task
def consume(ctx: Any) -> None:
    """Take messages one by one while this node leads."""
    conn = open_queue(current_app.config["EXAMPLE_LEDGER"])
    node_id = elect.node.id
    try:
        while not ctx.cancelled.is_set():
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "SELECT id, payload FROM queue WHERE done_by IS NULL ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None or not ctx.is_leader():
                conn.execute("ROLLBACK")
                if ctx.wait(0.05):
                    return
                continue
            # ... handle row[1] here ...
            conn.execute(
                "UPDATE queue SET done_by = ?, done_pid = ?, done_term = ? WHERE id = ?",
                (node_id, os.getpid(), ctx.term, row[0]),
            )
            conn.execute("COMMIT")
            if ctx.wait(0.01):  # one message per 10 ms: a visible pace for the test
                return
    finally:
        conn.close()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(config or {})
    elect.init_app(app)  # the task above is registered on the app here
    return app


def serve() -> Flask:
    """The app of the node's options in ``EXAMPLE_ARGS`` (for a WSGI server)."""
    from ._serve import app_from_env

    return app_from_env(create_app)
