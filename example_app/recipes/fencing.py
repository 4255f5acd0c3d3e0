"""Recipe: the fencing token carried into a database write.

A lease says that no other node led *when the check passed*. Between the check
and the write a leader can stall (GC, a slow disk, SIGSTOP) while another node
is elected and writes. The store then has to refuse the late write: it keeps
the highest term it has seen, and a write carrying an older term changes
nothing. In SQL, one conditional ``UPDATE`` in the write's transaction::

    UPDATE fence SET term = :term WHERE name = 'reports' AND term <= :term

0 rows updated: a newer leader has written; roll back. The term comes from
:func:`~flask_goelect.decorators.current_term` inside a ``@leader_only`` view
or job.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app
from flask.typing import ResponseReturnValue

from flask_goelect import LeaderElect, leader_only
from flask_goelect.decorators import current_term

__all__ = ["StaleLeader", "create_app", "elect", "fenced_write", "open_db", "serve"]

elect = LeaderElect()


class StaleLeader(Exception):
    """A newer term has written: this leader's write is refused."""


def open_db(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS fence (name TEXT PRIMARY KEY, term INTEGER NOT NULL)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS reports (id INTEGER PRIMARY KEY, body TEXT NOT NULL,"
        " node TEXT NOT NULL, term INTEGER NOT NULL)"
    )
    return conn


def fenced_write(path: str, term: int, node: str, body: str) -> int:
    """Insert a report written in ``term``; returns its id.

    :raises StaleLeader: a write of a later term was made first.
    """
    conn = open_db(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR IGNORE INTO fence (name, term) VALUES ('reports', 0)")
        fenced = conn.execute(
            "UPDATE fence SET term = ? WHERE name = 'reports' AND term <= ?", (term, term)
        )
        if fenced.rowcount != 1:
            conn.execute("ROLLBACK")
            (newest,) = conn.execute("SELECT term FROM fence WHERE name = 'reports'").fetchone()
            raise StaleLeader(f"term {term} is stale: term {newest} has written")
        cur = conn.execute(
            "INSERT INTO reports (body, node, term) VALUES (?, ?, ?)", (body, node, term)
        )
        conn.execute("COMMIT")
        return int(cur.lastrowid or 0)
    finally:
        conn.close()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(config or {})
    elect.init_app(app)

    @app.post("/reports")
    @leader_only
    def write_report() -> ResponseReturnValue:
        term = current_term()  # the term the lease check passed in
        before_write = current_app.config.get("RECIPE_BEFORE_WRITE")
        if before_write is not None:
            before_write()  # tests stall here, as a GC pause would
        try:
            report = fenced_write(current_app.config["EXAMPLE_LEDGER"], term, elect.node.id, "r")
        except StaleLeader as exc:
            return {"error": "stale_leader", "message": str(exc), "term": term}, 409
        return {"id": report, "term": term}

    return app


def serve() -> Flask:
    """The app of the node's options in ``EXAMPLE_ARGS`` (for a WSGI server)."""
    from ._serve import app_from_env

    return app_from_env(create_app)
