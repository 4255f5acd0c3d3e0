"""What serving an app with flask-goelect needs from the server.

* :class:`NoDelayWSGIHandler`: the ``gevent.pywsgi`` handler election traffic
  needs::

    from gevent.pywsgi import WSGIServer
    from flask_goelect.serving import NoDelayWSGIHandler

    WSGIServer(("0.0.0.0", 5000), app, handler_class=NoDelayWSGIHandler, log=None).serve_forever()

* :func:`exit_on_sigterm`: for servers that do not handle SIGTERM themselves
  (waitress, ``flask run``): without it the process dies on SIGTERM without
  running its exit hooks, and a leader does not hand leadership over.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any

from gevent import pywsgi  # type: ignore[import-untyped]

__all__ = ["NoDelayWSGIHandler", "exit_on_sigterm"]

#: The access log of a ``gevent.pywsgi`` server started with ``log=None``.
_NOOP_ACCESS_LOG: Any = getattr(pywsgi, "_NoopLog", ())


class NoDelayWSGIHandler(pywsgi.WSGIHandler):  # type: ignore[misc]
    """A ``gevent.pywsgi`` handler that sets ``TCP_NODELAY`` on each connection.

    Without it a reply on a reused keep-alive connection waits for the client's
    delayed ACK: about 40 ms per heartbeat instead of well under a millisecond.
    Use it as ``WSGIServer(addr, app, handler_class=NoDelayWSGIHandler)``; with
    ``log=None`` it also skips formatting the access-log line that pywsgi would
    otherwise build for every request and throw away (a few percent of an idle
    node's CPU at 20 heartbeats a second).
    """

    def handle(self) -> None:
        # Not a TCP socket (a Unix socket): nothing to do.
        with contextlib.suppress(OSError, AttributeError):
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()

    def log_request(self) -> None:
        if not isinstance(self.server.log, _NOOP_ACCESS_LOG):
            super().log_request()


def exit_on_sigterm() -> bool:
    """Make SIGTERM end this process like Ctrl-C does: through its exit hooks.

    Python's default for SIGTERM is to die at once, so a node's elector never
    hears of it: a leader does not hand leadership over (the cluster then waits
    an election timeout) and a worker's elector does not pass to the other
    processes of the node. Servers that handle SIGTERM themselves (gunicorn,
    uWSGI with ``--die-on-term``, the example app) need nothing; call this
    where the server does not (waitress, ``flask run``), in the main thread.

    Returns whether a handler was installed: it never replaces one that is
    already there (only Python's default).
    """
    if threading.current_thread() is not threading.main_thread() or "uwsgi" in sys.modules:
        return False  # uWSGI handles its signals in C: a Python handler would replace them
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    return True
