"""Nodes of one app in the test process, on real sockets, for the Flask glue tests.

* :func:`make_app`: a Flask app configured as one node of a three-node cluster,
  not started (peers on unreachable addresses; override any setting).
* :class:`LiveServer`: one app on a ``gevent.pywsgi`` server in a native thread
  with its own hub.
* :class:`Cluster`: ``n`` such nodes of one :class:`~flask_goelect.LeaderElect`,
  with fast election timing.

Real processes are :mod:`goelect_harness`'s.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask

from goelect_harness.helpers import free_port, wait_until

__all__ = ["Cluster", "LiveServer", "make_app"]


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


class LiveServer:
    """A ``gevent.pywsgi`` server for one app, in a native thread with its own hub.

    The test process is not monkey-patched: each server thread gets its own
    gevent hub, and is stopped from the test's thread through an async watcher
    (the one thread-safe way to wake another thread's hub).
    """

    #: Errors of a connection that the test provokes on purpose: the hub does not
    #: print them (a refused TLS handshake, say).
    expected_errors: tuple[type[BaseException], ...] = ()

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
        hub.NOT_ERROR = (*hub.NOT_ERROR, *self.expected_errors)
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
    server, with fast election timing and state files under ``folder``.

    A subclass serves another way (TLS) through :attr:`scheme`,
    :meth:`node_config` and :meth:`serve`.
    """

    #: The scheme of the nodes' addresses.
    scheme = "http"

    def __init__(self, n: int, folder: Any, *, start: bool = True, **config: Any) -> None:
        from flask_goelect import LeaderElect

        self.ports = [free_port() for _ in range(n)]
        self.ids = [f"n{i + 1}" for i in range(n)]
        self.peers = [
            f"{i}={self.scheme}://127.0.0.1:{p}" for i, p in zip(self.ids, self.ports, strict=True)
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
            app = make_app(
                node_id,
                GOELECT_STATE_FILE=f"{folder}/{node_id}.json",
                **{**settings, **self.node_config(node_id)},
            )
            self.elect.init_app(app)
            self.apps[node_id] = app
            self.servers[node_id] = self.serve(node_id, app, port).start()
        if start:
            for node_id in self.ids:
                self.state(node_id).start()

    def node_config(self, node_id: str) -> dict[str, Any]:
        """Settings of one node on top of the cluster's (none here)."""
        return {}

    def serve(self, node_id: str, app: Flask, port: int) -> LiveServer:
        """The (not yet started) server of one node."""
        return LiveServer(app, port)

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

        leader: str | None = wait_until(agreed, timeout)
        assert leader is not None, f"no one agreed leader within {timeout}s"
        return leader

    def close(self) -> None:
        for node_id in self.ids:
            self.state(node_id).stop(transfer=False, timeout=2)
        for server in self.servers.values():
            server.stop()
