"""Signals: sent in order, inside an app context, off the election loop; failures recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from flask import Flask, current_app
from flask_testing_compat import TestCase
from live_nodes import make_app

from flask_goelect import LeaderElect, signals
from flask_goelect.signals import ReceiverErrors
from flask_goelect.testing import send_signals
from goelect_harness.helpers import wait_until

ALL = [
    "enter_leader",
    "leave_leader",
    "enter_follower",
    "leave_follower",
    "enter_candidate",
    "leave_candidate",
    "leader_changed",
]


@contextmanager
def recording(app: Flask) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Record every goelect signal sent by ``app``; disconnected on exit."""
    events: list[tuple[str, dict[str, Any]]] = []

    def make(name: str) -> Any:
        def receiver(sender: Any, **kwargs: Any) -> None:
            assert sender is app  # the real object, not a proxy
            kwargs["_in_context"] = current_app._get_current_object() is app  # type: ignore[attr-defined]
            kwargs["_thread"] = threading.current_thread().name
            events.append((name, kwargs))

        return receiver

    with ExitStack() as stack:
        for name in ALL:
            stack.enter_context(getattr(signals, name).connected_to(make(name), sender=app))
        yield events


def names(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in events]


class SingleNodeSignalsTest(TestCase):
    """A one-node cluster elects itself: the whole follower-candidate-leader path."""

    def create_app(self) -> Flask:
        app = make_app(
            GOELECT_PEERS=[],
            GOELECT_NODE_ADDRESS="http://127.0.0.1:1",
            GOELECT_ELECT_TIMEOUT=100,
            GOELECT_HEARTBEAT_INTERVAL=10,
            GOELECT_CALLBACK_TIMEOUT=0.5,
        )
        self.elect = LeaderElect(app)
        return app

    def tearDown(self) -> None:
        self.elect.stop(transfer=False, timeout=2)

    def test_signals_in_order_with_app_context(self) -> None:
        with recording(self.app) as events:
            self.elect.start()
            self.assertTrue(wait_until(lambda: "leader_changed" in names(events), 10))
            self.assertTrue(self.elect.is_leader)
            self.elect.stop()
            stopped = names(events)
        self.assertEqual(
            stopped,
            [
                "leave_follower",
                "enter_candidate",
                "leave_candidate",
                "enter_leader",
                "leader_changed",
                "leave_leader",
                "leader_changed",
            ],
        )
        first = events[0][1]
        self.assertEqual(
            {k: first[k] for k in ("state", "previous_state", "leader_id", "node_id", "term")},
            {
                "state": "candidate",
                "previous_state": "follower",
                "leader_id": None,
                "node_id": "n1",
                "term": 0,
            },
        )
        won = events[4][1]
        self.assertEqual(
            (won["state"], won["previous_state"], won["leader_id"], won["previous_leader_id"]),
            ("leader", "candidate", "n1", None),
        )
        self.assertEqual(won["term"], 1)
        self.assertTrue(won["reason"])
        left = events[5][1]
        self.assertEqual((left["state"], left["previous_state"]), ("stopped", "leader"))
        self.assertTrue(all(kw["_in_context"] for _, kw in events))
        # Off the caller's thread (the callback worker), for the election's changes.
        self.assertNotEqual(events[0][1]["_thread"], threading.current_thread().name)
        self.assertEqual(list(self.elect.errors), [])

    def test_a_raising_receiver_is_recorded_and_the_others_still_run(self) -> None:
        def broken(sender: Any, **kwargs: Any) -> None:
            raise ValueError("receiver bug")

        with recording(self.app) as events, signals.enter_leader.connected_to(broken, self.app):
            self.elect.start()
            self.assertTrue(wait_until(lambda: "leader_changed" in names(events), 10))
            self.assertTrue(wait_until(lambda: list(self.elect.errors), 5))
            self.assertTrue(self.elect.is_leader)
        self.assertIn("enter_leader", names(events))  # the recorder ran too
        record = self.elect.errors[0]
        self.assertEqual(record.kind, "callback")
        self.assertIn("receiver bug", record.repr)

    def test_a_slow_receiver_never_stalls_the_election(self) -> None:
        release = threading.Event()

        def slow(sender: Any, **kwargs: Any) -> None:
            release.wait(3)

        try:
            with signals.enter_candidate.connected_to(slow, self.app):
                t0 = time.monotonic()
                self.elect.start()
                self.assertTrue(wait_until(lambda: self.elect.is_leader, 10))
                elected = time.monotonic() - t0
                self.assertTrue(
                    wait_until(
                        lambda: any(r.kind == "callback-timeout" for r in self.elect.errors), 5
                    )
                )
        finally:
            release.set()
        # Elected within the election timer, not after the receiver's 3 s.
        self.assertLess(elected, 2.5)


def test_signals_of_one_app_only_reach_its_receivers() -> None:
    a, b = make_app("n1"), make_app("n2")
    elect = LeaderElect()
    elect.init_app(a)
    elect.init_app(b)
    with recording(a) as ea, recording(b) as eb:
        send_signals(b, previous_state="follower", state="leader", term=4, leader_id="n2")
    assert ea == []
    assert names(eb) == ["leave_follower", "enter_leader", "leader_changed"]
    assert eb[1][1]["node_id"] == "n2" and eb[1][1]["term"] == 4


def test_observer_gets_leader_changed_only() -> None:
    app = make_app("o1", GOELECT_NOVOTE=True, GOELECT_NODE_ADDRESS="http://127.0.0.9:1")
    LeaderElect(app)
    with recording(app) as events:
        send_signals(app, previous_state="observer", state="observer", leader_id="n2")
    assert names(events) == ["leader_changed"]


def test_every_receiver_runs_and_failures_are_reported() -> None:
    app = make_app()
    LeaderElect(app)
    ran: list[str] = []

    def bad1(sender: Any, **kwargs: Any) -> None:
        raise KeyError("one")

    def bad2(sender: Any, **kwargs: Any) -> None:
        raise KeyError("two")

    def good(sender: Any, **kwargs: Any) -> None:
        ran.append(kwargs["state"])

    with (
        signals.enter_leader.connected_to(bad1, app),
        signals.enter_leader.connected_to(bad2, app),
        signals.leader_changed.connected_to(good, app),
    ):
        with pytest.raises(ReceiverErrors) as info:
            send_signals(app, previous_state="candidate", state="leader", leader_id="n1")
        assert [str(e) for e in info.value.errors] == ["'one'", "'two'"]
        assert ran == ["leader"]  # leader_changed ran after the failures
        signals.enter_leader.disconnect(bad2, app)
        with pytest.raises(KeyError, match="one"):  # one failure: raised as it is
            send_signals(app, previous_state="follower", state="leader", leader_id="n1")


def test_signals_are_documented() -> None:
    for name in ALL:
        signal = getattr(signals, name)
        assert signal.name.startswith("goelect-")
    doc = signals.__doc__ or ""
    for kwarg in ("term", "state", "previous_state", "leader_id", "previous_leader_id", "node_id"):
        assert f"``{kwarg}``" in doc
