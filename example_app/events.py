"""Event lines on stdout: how a node tells a launcher what happens, without polling.

One JSON object per line (flushed), with ``event``, ``node``, ``t`` (Unix time),
``mono`` (``time.monotonic()``: one clock for every process of a Linux machine,
so a launcher can subtract its own readings) and ``pid``. :class:`EventPrinter`
prints the leadership changes of one app; in a server with several worker
processes they come from the node's elector process, the one process where
signals and leader tasks run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from flask import Flask

from flask_goelect import signals

__all__ = ["EventPrinter", "emit"]

_emit_lock = threading.Lock()


def emit(event: str, node: str, **fields: Any) -> None:
    """Print one event line on stdout and flush it (one write: lines of several
    processes sharing the stream do not interleave)."""
    record = {
        "event": event,
        "node": node,
        "t": time.time(),
        "mono": time.monotonic(),
        "pid": os.getpid(),
    }
    record.update(fields)
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    with _emit_lock:
        os.write(sys.stdout.fileno(), line)


class EventPrinter:
    """Signal receivers and a leader task that print ``app``'s leadership changes.

    ::

        state           this node's state changed (``state``, ``previous_state``,
                        ``term``, ``leader``, ``reason``)
        leader          this node won an election (``term``)
        lease           this node holds a valid lease in a new term: it acts as
                        the leader (``term``)
        leader_changed  the leader this node knows changed (``leader``, ``term``)

    Install it with :meth:`install` (after ``elect.init_app(app)``).
    """

    def __init__(self, app: Flask, node_id: str) -> None:
        self.node_id = node_id
        # Receivers are held strongly here (blinker keeps weak references).
        self._receivers = [
            (signals.enter_leader, self.on_enter_leader),
            (signals.enter_follower, self.on_state),
            (signals.enter_candidate, self.on_state),
            (signals.leader_changed, self.on_leader_changed),
        ]
        for sig, receiver in self._receivers:
            sig.connect(receiver, sender=app)

    @classmethod
    def install(cls, app: Flask) -> EventPrinter:
        """Print ``app``'s events; the printer lives as long as the app."""
        from example_app.factory import elect

        printer = cls(app, str(app.config["GOELECT_NODE_ID"]))
        with app.app_context():
            elect.leader_task(printer.on_lease)
        app.extensions["example_app_events"] = printer
        return printer

    def on_state(self, sender: Flask, **kw: Any) -> None:
        emit(
            "state",
            self.node_id,
            state=kw.get("state"),
            previous_state=kw.get("previous_state"),
            term=kw.get("term"),
            leader=kw.get("leader_id"),
            reason=kw.get("reason", ""),
        )

    def on_enter_leader(self, sender: Flask, **kw: Any) -> None:
        self.on_state(sender, **kw)
        emit("leader", self.node_id, term=kw.get("term"))

    def on_lease(self, ctx: Any) -> None:
        """A leader task: it starts as soon as this node holds a lease in a new term.

        The lease comes with the first heartbeat round a majority acknowledges, a
        round trip after the election; this is when the node starts acting as the
        leader, and what "time without a leader" is measured to.
        """
        emit("lease", self.node_id, term=ctx.term)

    def on_leader_changed(self, sender: Flask, **kw: Any) -> None:
        emit("leader_changed", self.node_id, leader=kw.get("leader_id"), term=kw.get("term"))
