"""flask-testing 0.8.1 on Flask 3.1, and shared helpers for the Flask glue tests.

Two parts of flask-testing 0.8.1 break on current Flask and Werkzeug:

* ``assertRedirects`` compares ``response.location`` with an absolute URL, but
  Werkzeug (2.1+) no longer makes ``Location`` absolute, and it does not know
  308. The shim resolves both sides against the request's URL.
* ``render_templates = False`` replaces ``flask.templating._render`` with a
  function whose arguments are in the old order ``(template, context, app)``;
  Flask 3 calls ``_render(app, template, context)``. The shim installs one with
  the new order.

Use :class:`TestCase` from here instead of ``flask_testing.TestCase``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urljoin

import flask_testing
import pytest
from flask import Flask, templating
from flask.signals import template_rendered

__all__ = ["LiveServer", "TestCase", "free_port", "make_app", "no_leaked_context", "wait_until"]

REDIRECT_CODES = (301, 302, 303, 305, 307, 308)


def _empty_render(app: Flask, template: Any, context: dict[str, Any]) -> str:
    template_rendered.send(app, template=template, context=context)
    return ""


class TestCase(flask_testing.TestCase):  # type: ignore[misc]
    """``flask_testing.TestCase`` with ``assertRedirects`` and ``render_templates`` fixed."""

    def _pre_setup(self) -> None:
        super()._pre_setup()
        if not self.render_templates:
            # flask-testing saved the real one and installed its broken stub.
            templating._render = _empty_render  # type: ignore[assignment]

    def assertRedirects(self, response: Any, location: str, message: str | None = None) -> None:  # noqa: N802
        base = f"http://{self.app.config.get('SERVER_NAME') or 'localhost'}/"
        self.assertIn(
            response.status_code,
            REDIRECT_CODES,
            message or f"HTTP redirect expected, got {response.status_code}",
        )
        self.assertEqual(urljoin(base, response.location), urljoin(base, location), message)

    assert_redirects = assertRedirects


@pytest.fixture(autouse=True)
def no_leaked_context() -> Iterator[None]:
    """Fail a test that leaves an app or request context pushed."""
    from flask import globals as flask_globals

    before = flask_globals._cv_app.get(None)
    yield
    after = flask_globals._cv_app.get(None)
    assert after is before, "the test leaked a pushed app/request context"


def make_app(node_id: str = "n1", app_class: type[Flask] = Flask, **config: Any) -> Flask:
    """A Flask app configured for one node of a three-node cluster, not started."""
    app = app_class(f"goelect_test_{node_id}")
    app.config.update(
        TESTING=True,
        GOELECT_NODE_ID=node_id,
        GOELECT_PEERS=[
            "n1=http://127.0.0.1:1/",
            "n2=http://127.0.0.2:1/",
            "n3=http://127.0.0.3:1/",
        ],
        GOELECT_AUTOSTART=False,
        GOELECT_STATE_FILE=":memory:",
    )
    app.config.update(config)
    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class LiveServer:
    """A ``gevent.pywsgi`` server for one app, in a native thread with its own hub.

    The test process is not monkey-patched: each server thread gets its own
    gevent hub, and is stopped from the test's thread through an async watcher
    (the one thread-safe way to wake another thread's hub).
    """

    def __init__(self, app: Flask, port: int) -> None:
        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._ready = threading.Event()
        self._stop_watcher: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"live-{port}", daemon=True)

    def start(self) -> LiveServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the live server did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        import gevent
        from gevent.pywsgi import WSGIServer

        from flask_goelect.serving import NoDelayWSGIHandler

        hub = gevent.get_hub()
        try:
            watcher = hub.loop.async_()
            server = WSGIServer(
                ("127.0.0.1", self.port),
                self.app,
                handler_class=NoDelayWSGIHandler,
                log=None,
                **self.server_options(),
            )
            server.start()
        except BaseException as exc:  # pragma: no cover - reported by start()
            self._error = exc
            self._ready.set()
            return
        self._stop_watcher = watcher
        self._ready.set()
        try:
            hub.wait(watcher)
        finally:
            server.stop(timeout=1)
            watcher.close()
            hub.destroy(destroy_loop=True)

    def server_options(self) -> dict[str, Any]:
        """Extra keyword arguments for the ``WSGIServer`` (subclasses add TLS here)."""
        return {}

    def stop(self) -> None:
        if self._stop_watcher is not None and self._thread.is_alive():
            self._stop_watcher.send()
        self._thread.join(10)


class Cluster:
    """``n`` nodes of one app in this process, each on a loopback ``gevent.pywsgi``
    server, with fast election timing and state files under ``folder``."""

    def __init__(self, n: int, folder: Any, *, start: bool = True, **config: Any) -> None:
        from flask_goelect import LeaderElect

        self.ports = [free_port() for _ in range(n)]
        self.ids = [f"n{i + 1}" for i in range(n)]
        self.peers = [
            f"{i}=http://127.0.0.1:{p}" for i, p in zip(self.ids, self.ports, strict=True)
        ]
        self.elect = LeaderElect()
        self.apps: dict[str, Flask] = {}
        self.servers: dict[str, LiveServer] = {}
        settings = {
            "GOELECT_PEERS": self.peers,
            "GOELECT_ELECT_TIMEOUT": 300,
            "GOELECT_HEARTBEAT_INTERVAL": 30,
            "GOELECT_CONNECT_TIMEOUT": 0.3,
            **config,
        }
        for node_id, port in zip(self.ids, self.ports, strict=True):
            app = make_app(node_id, GOELECT_STATE_FILE=f"{folder}/{node_id}.json", **settings)
            self.elect.init_app(app)
            self.apps[node_id] = app
            self.servers[node_id] = LiveServer(app, port).start()
        if start:
            for node_id in self.ids:
                self.state(node_id).start()

    def state(self, node_id: str) -> Any:
        return self.apps[node_id].extensions["goelect"]

    def snapshot(self, node_id: str) -> Any:
        return self.state(node_id).elector.snapshot

    def leaders(self) -> list[str]:
        return [i for i in self.ids if self.snapshot(i).is_leader()]

    def wait_for_one_leader(self, timeout: float = 10.0, exclude: str | None = None) -> str:
        def agreed() -> str | None:
            leaders = self.leaders()
            if len(leaders) != 1 or leaders[0] == exclude:
                return None
            leader = leaders[0]
            running = [i for i in self.ids if self.state(i).running]
            if all(self.snapshot(i).leader_id == leader for i in running):
                return leader
            return None

        leader: str = wait_until(agreed, timeout)
        return leader

    def close(self) -> None:
        for node_id in self.ids:
            self.state(node_id).stop(transfer=False, timeout=2)
        for server in self.servers.values():
            server.stop()
