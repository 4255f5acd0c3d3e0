"""The fencing recipe in one process: a stale leader's write is refused by SQLite."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from example_app.recipes import fencing
from flask_goelect.testing import make_leader


def node_app(node_id: str, db: Path, **config: Any) -> Any:
    return fencing.create_app(
        {
            "TESTING": True,
            "GOELECT_NODE_ID": node_id,
            "GOELECT_PEERS": ["n1=http://127.0.0.1:1", "n2=http://127.0.0.2:1"],
            "GOELECT_AUTOSTART": False,
            "GOELECT_STATE_FILE": ":memory:",
            "EXAMPLE_LEDGER": str(db),
            **config,
        }
    )


def reports(db: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT node, term FROM reports ORDER BY id"))


def test_the_newest_term_writes_and_an_older_one_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "reports.db"
    fencing.fenced_write(str(db), 3, "n1", "a")
    fencing.fenced_write(str(db), 3, "n1", "b")  # the same term again: fine
    fencing.fenced_write(str(db), 5, "n2", "c")
    try:
        fencing.fenced_write(str(db), 4, "n1", "d")
    except fencing.StaleLeader as exc:
        assert "term 4 is stale: term 5 has written" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a write of term 4 after term 5 was accepted")
    assert reports(db) == [("n1", 3), ("n1", 3), ("n2", 5)]


def test_a_leader_that_stalls_after_its_lease_check_cannot_write_late(tmp_path: Path) -> None:
    """n1 leads in term 3 and passes the lease check, then stalls (a GC pause); n2 is
    elected in term 4 and writes; n1 wakes and writes: the database refuses it."""
    db = tmp_path / "reports.db"
    checked, resume = threading.Event(), threading.Event()

    def stall() -> None:
        checked.set()
        assert resume.wait(10)

    old = node_app("n1", db, RECIPE_BEFORE_WRITE=stall)
    new = node_app("n2", db)
    answers: dict[str, Any] = {}

    def old_leader_request() -> None:
        with make_leader(old, term=3):
            response = old.test_client().post("/reports")
            answers["old"] = (response.status_code, response.json)

    thread = threading.Thread(target=old_leader_request)
    thread.start()
    assert checked.wait(10)
    with make_leader(new, term=4):
        response = new.test_client().post("/reports")
    assert response.status_code == 200 and response.json["term"] == 4
    resume.set()
    thread.join(10)
    status, body = answers["old"]
    assert status == 409 and body["error"] == "stale_leader" and body["term"] == 3
    assert reports(db) == [("n2", 4)]


def test_a_follower_does_not_write_at_all(tmp_path: Path) -> None:
    db = tmp_path / "reports.db"
    app = node_app("n1", db)
    assert app.test_client().post("/reports").status_code == 503
    assert not db.exists() or reports(db) == []
