"""@leader_only for views, @elect.leader_only for jobs: lease, fencing token, follower answers."""

from __future__ import annotations

import asyncio
import time
import timeit
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from flask import Flask, jsonify
from flask_testing_compat import TestCase
from live_nodes import make_app

from flask_goelect import LeaderElect, NotLeader, leader_only
from flask_goelect.core import LeaderInfo, NotLeaderError
from flask_goelect.decorators import current_term
from flask_goelect.testing import force_state, make_follower, make_leader


class AsyncioFlask(Flask):
    """Runs async views with asyncio.run (Flask's default needs asgiref)."""

    def async_to_sync(self, func: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
        return lambda *args, **kwargs: asyncio.run(func(*args, **kwargs))


def build_app(**config: Any) -> tuple[Flask, LeaderElect, list[str]]:
    app = make_app(app_class=AsyncioFlask, **config)
    elect = LeaderElect(app)
    calls: list[str] = []

    @app.post("/reports/<name>")
    @leader_only
    def rebuild(name: str) -> Any:
        calls.append(name)
        return jsonify(name=name, term=current_term())

    @app.get("/async")
    @leader_only
    async def async_view() -> Any:
        await asyncio.sleep(0)
        calls.append("async")
        return jsonify(term=current_term())

    return app, elect, calls


class LeaderOnlyViewTest(TestCase):
    def create_app(self) -> Flask:
        app, self.elect, self.calls = build_app()
        return app

    def test_runs_on_the_leader_with_the_term_at_hand(self) -> None:
        with make_leader(self.app, term=7):
            response = self.client.post("/reports/daily")
        self.assert200(response)
        self.assertEqual(response.json, {"name": "daily", "term": 7})
        self.assertEqual(self.calls, ["daily"])

    def test_follower_answers_503_and_tells_anonymous_clients_nothing(self) -> None:
        with make_follower(self.app, leader_id="n2", term=3):
            response = self.client.post("/reports/daily?x=1")
        self.assertStatus(response, 503)
        self.assertEqual(response.headers["Retry-After"], "1")
        body = response.json
        self.assertEqual(body["error"], "not_leader")
        # No ids, terms or addresses: the topology is hidden by default.
        self.assertEqual(set(body), {"error", "message"})
        for secret in ("n1", "n2", "127.0.0.2", "3"):
            self.assertNotIn(secret, body["message"])
        self.assertIn("leader is known", body["message"])
        self.assertEqual(self.calls, [])

    def test_no_leader_known_asks_to_retry_after_an_election(self) -> None:
        with make_follower(self.app, leader_id=None):
            response = self.client.post("/reports/daily")
        self.assertStatus(response, 503)
        self.assertIn("no leader is known", response.json["message"])
        self.assertEqual(response.headers["Retry-After"], "4")  # 2 x the 2 s election timeout
        with force_state(self.app, "candidate", term=2):
            self.assertStatus(self.client.post("/reports/daily"), 503)
        self.assertStatus(self.client.post("/reports/daily"), 503)  # stopped
        self.assertEqual(self.calls, [])

    def test_a_leader_whose_lease_ran_out_does_not_run(self) -> None:
        with make_leader(self.app, term=4, lease=0.05):
            self.assert200(self.client.post("/reports/a"))
            time.sleep(0.06)  # "paused" past the lease
            response = self.client.post("/reports/b")
        self.assertStatus(response, 503)
        self.assertEqual(self.calls, ["a"])

    def test_async_view(self) -> None:
        with make_leader(self.app, term=9):
            response = self.client.get("/async")
        self.assert200(response)
        self.assertEqual(response.json, {"term": 9})
        with make_follower(self.app, leader_id="n3"):
            self.assertStatus(self.client.get("/async"), 503)
        self.assertEqual(self.calls, ["async"])


class RevealsTest(TestCase):
    """What ``GOELECT_FOLLOWER_REVEALS`` and ``GOELECT_PUBLIC_URLS`` let a follower say."""

    def create_app(self) -> Flask:
        app, self.elect, self.calls = build_app()
        return app

    def answer(self, **config: Any) -> Any:
        app, _, calls = build_app(**config)
        with make_follower(app, leader_id="n2", term=3):
            response = app.test_client().post("/reports/daily")
        assert response.status_code == 503 and calls == []
        return response.get_json()

    def test_id_names_the_leader_and_the_term_but_no_address(self) -> None:
        body = self.answer(GOELECT_FOLLOWER_REVEALS="id")
        self.assertEqual(body["leader"], {"id": "n2"})
        self.assertEqual((body["node_id"], body["term"], body["state"]), ("n1", 3, "follower"))
        self.assertIn("'n2'", body["message"])
        self.assertNotIn("127.0.0.2", str(body))

    def test_address_also_gives_the_leaders_peer_address(self) -> None:
        body = self.answer(GOELECT_FOLLOWER_REVEALS="address")
        self.assertEqual(body["leader"], {"id": "n2", "address": "http://127.0.0.2:1"})
        self.assertIn("http://127.0.0.2:1", body["message"])

    def test_a_public_url_is_given_whatever_else_is_hidden(self) -> None:
        body = self.answer(GOELECT_PUBLIC_URLS="n2=https://b.example.com, n1=https://a.example.com")
        self.assertEqual(set(body), {"error", "message", "leader_url"})
        self.assertEqual(body["leader_url"], "https://b.example.com")
        self.assertIn("https://b.example.com", body["message"])
        self.assertNotIn("n2", body["message"])

    def test_no_leader_known_reveals_nothing_either_way(self) -> None:
        app, _, _ = build_app(GOELECT_FOLLOWER_REVEALS="id")
        with make_follower(app, leader_id=None):
            body = app.test_client().post("/reports/daily").get_json()
        self.assertIsNone(body["leader"])
        self.assertNotIn("leader_url", body)

    def test_bad_settings_fail_at_init_app_naming_the_key(self) -> None:
        cases = [
            ({"GOELECT_FOLLOWER_REVEALS": "all"}, "GOELECT_FOLLOWER_REVEALS"),
            ({"GOELECT_PUBLIC_URLS": {"n9": "https://x.example.com"}}, "'n9'"),
            ({"GOELECT_PUBLIC_URLS": {"n2": "ftp://x"}}, "GOELECT_PUBLIC_URLS['n2']"),
            ({"GOELECT_PUBLIC_URLS": "n2"}, "'id=url'"),
            ({"GOELECT_PUBLIC_URLS": ["n2"]}, "dict of node id"),
            # A redirect needs somewhere clients can go.
            ({"GOELECT_FOLLOWER_RESPONSE": "redirect"}, "GOELECT_PUBLIC_URLS has no URL"),
            (
                {
                    "GOELECT_FOLLOWER_RESPONSE": "redirect",
                    "GOELECT_PUBLIC_URLS": {"n1": "https://a.example.com"},
                },
                "'n2', 'n3'",
            ),
        ]
        for config, needle in cases:
            with self.subTest(config=config), pytest.raises(Exception) as info:
                build_app(**config)
            self.assertIn(needle, str(info.value))


class RedirectTest(TestCase):
    def create_app(self) -> Flask:
        app, self.elect, self.calls = build_app(
            GOELECT_FOLLOWER_RESPONSE="redirect", GOELECT_FOLLOWER_REVEALS="address"
        )
        return app

    def test_public_urls_are_where_a_follower_redirects(self) -> None:
        urls = {f"n{i}": f"https://n{i}.example.com/app" for i in (1, 2, 3)}
        app, _, calls = build_app(GOELECT_FOLLOWER_RESPONSE="redirect", GOELECT_PUBLIC_URLS=urls)
        with make_follower(app, leader_id="n3", leader_address="http://10.0.0.3:5000"):
            response = app.test_client().post("/reports/daily?full=1")
        assert response.status_code == 307 and calls == []
        self.assertEqual(
            response.headers["Location"], "https://n3.example.com/app/reports/daily?full=1"
        )
        self.assertNotIn("10.0.0.3", response.get_data(as_text=True))

    def test_follower_redirects_to_the_same_path_on_the_leader(self) -> None:
        with make_follower(self.app, leader_id="n3", leader_address="http://10.0.0.3:5000"):
            response = self.client.post("/reports/daily?full=1&x=%20y")
        self.assertStatus(response, 307)
        self.assertRedirects(response, "http://10.0.0.3:5000/reports/daily?full=1&x=%20y")
        self.assertEqual(response.json["error"], "not_leader")
        self.assertEqual(self.calls, [])

    def test_no_leader_or_a_lapsed_self_answers_503(self) -> None:
        with make_follower(self.app, leader_id=None):
            self.assertStatus(self.client.post("/reports/daily"), 503)
        # This node led but its lease ran out: never redirect to itself.
        with make_leader(self.app, lease=0.0):
            self.assertStatus(self.client.post("/reports/daily"), 503)
        self.assertEqual(self.calls, [])

    def test_compat_assert_redirects_accepts_relative_locations(self) -> None:
        @self.app.get("/old")
        def old() -> Any:
            from flask import redirect

            return redirect("/new", 308)

        response = self.client.get("/old")
        self.assertRedirects(response, "/new")
        self.assertRedirects(response, "http://localhost/new")


def test_leader_only_without_the_extension_says_what_to_do() -> None:
    app = Flask(__name__)

    @app.get("/")
    @leader_only
    def index() -> str:
        return "x"

    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError, match="LeaderElect"):
        app.test_client().get("/")


# -- jobs ------------------------------------------------------------------------------


@pytest.fixture
def job_app() -> tuple[Flask, LeaderElect]:
    app = make_app()
    return app, LeaderElect(app)


def test_job_runs_only_on_the_leader(job_app: tuple[Flask, LeaderElect]) -> None:
    app, elect = job_app
    seen: list[int] = []

    @elect.leader_only
    def cleanup(x: int) -> int:
        seen.append(current_term())
        return x * 2

    assert cleanup.__name__ == "cleanup"
    assert cleanup(1) is None  # stopped: skipped
    with make_follower(app, leader_id="n2"):
        assert cleanup(2) is None
    with make_leader(app, term=11):
        assert cleanup(3) == 6
    assert seen == [11]


def test_job_with_parentheses_and_raise_on_follower(job_app: tuple[Flask, LeaderElect]) -> None:
    app, elect = job_app

    @elect.leader_only()
    def plain() -> str:
        return "ran"

    @elect.leader_only(raise_on_follower=True)
    def strict() -> str:
        return "ran"

    with make_follower(app, leader_id="n2", term=5):
        assert plain() is None
        with pytest.raises(NotLeader) as info:
            strict()
    err = info.value
    assert isinstance(err, NotLeaderError)
    assert (err.node_id, err.term) == ("n1", 5)
    assert err.leader == LeaderInfo("n2", "http://127.0.0.2:1", {})
    assert "n2" in str(err)
    with make_leader(app):
        assert plain() == strict() == "ran"


def test_job_checks_the_lease_at_each_call(job_app: tuple[Flask, LeaderElect]) -> None:
    app, elect = job_app
    job = elect.leader_only(lambda: "ran")
    with make_leader(app, lease=0.05):
        assert job() == "ran"
        time.sleep(0.06)
        assert job() is None


def test_async_job(job_app: tuple[Flask, LeaderElect]) -> None:
    app, elect = job_app

    @elect.leader_only
    async def job() -> int:
        await asyncio.sleep(0)
        return current_term()

    with make_leader(app, term=3):
        assert asyncio.run(job()) == 3
    with make_follower(app):
        assert asyncio.run(job()) is None


def test_nested_terms_and_outside(job_app: tuple[Flask, LeaderElect]) -> None:
    app, elect = job_app
    with pytest.raises(RuntimeError, match="only known inside"):
        current_term()

    @elect.leader_only
    def inner() -> int:
        return current_term()

    @elect.leader_only
    def outer() -> tuple[int, int]:
        return inner(), current_term()

    with make_leader(app, term=2):
        assert outer() == (2, 2)
    with pytest.raises(RuntimeError):
        current_term()


def test_job_of_an_extension_serving_two_apps_uses_current_app() -> None:
    elect = LeaderElect()
    a, b = make_app("n1"), make_app("n2")
    elect.init_app(a)
    elect.init_app(b)
    job = elect.leader_only(lambda: current_term())
    with make_leader(a, term=1), make_follower(b, leader_id="n1"):
        with a.app_context():
            assert job() == 1
        with b.app_context():
            assert job() is None
        with pytest.raises(RuntimeError, match="app context"):
            job()


def test_job_overhead_is_small(job_app: tuple[Flask, LeaderElect]) -> None:
    """The per-call cost of the check on top of the call (the target is 2 µs;
    the bound here is loose so that a loaded CI machine does not fail it)."""
    app, elect = job_app

    def work() -> None:
        return None

    guarded = elect.leader_only(work)
    with make_leader(app):
        number = 20000
        bare = min(timeit.repeat(work, number=number, repeat=5)) / number
        checked = min(timeit.repeat(guarded, number=number, repeat=5)) / number
    assert checked - bare < 10e-6, f"overhead {(checked - bare) * 1e6:.2f} µs per call"
