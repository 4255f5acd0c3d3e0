"""``@elect.leader_task`` before ``init_app``: kept for every app bound later."""

from __future__ import annotations

import threading
from typing import Any

from live_nodes import make_app

from flask_goelect import LeaderElect


def single_node_app(name: str) -> Any:
    return make_app(
        name,
        GOELECT_PEERS=[],
        GOELECT_NODE_ADDRESS=f"http://127.0.0.1:1/{name}",
        GOELECT_ELECT_TIMEOUT=100,
        GOELECT_HEARTBEAT_INTERVAL=10,
    )


def test_a_task_given_before_init_app_runs_on_every_app_bound_later() -> None:
    elect = LeaderElect()
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()
    both = threading.Event()

    @elect.leader_task
    def task(ctx: Any) -> None:
        from flask import current_app

        with lock:
            seen.append((current_app.name, ctx.term))
            if len(seen) == 2:
                both.set()
        ctx.wait(10)

    assert callable(task)  # the decorator gives the function back
    first, second = single_node_app("a1"), single_node_app("a2")
    elect.init_app(first)
    elect.init_app(second)
    for app in (first, second):
        app.extensions["goelect"].start()
    try:
        assert both.wait(10), seen
        assert sorted(seen) == [("goelect_test_a1", 1), ("goelect_test_a2", 1)]
    finally:
        for app in (first, second):
            app.extensions["goelect"].stop()


def test_a_task_given_after_init_app_goes_to_that_app_only() -> None:
    app = single_node_app("b1")
    elect = LeaderElect(app)
    ran = threading.Event()

    @elect.leader_task
    def task(ctx: Any) -> None:
        ran.set()

    assert elect._deferred_tasks == []
    elect.start()
    try:
        assert ran.wait(10)
    finally:
        elect.stop()
