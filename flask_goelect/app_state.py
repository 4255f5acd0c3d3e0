"""One app's election state: :class:`ExtensionState`, kept in ``app.extensions["goelect"]``.

It is the bottom of the Flask glue: the routes (:mod:`flask_goelect.views`),
the decorators and the CLI read the node through it, and
:class:`~flask_goelect.LeaderElect` creates it in ``init_app``. It holds the
app's settings, the signer and the RPC server, the node's runner
(:class:`~flask_goelect.node.NodeRunner`), and it turns the elector's changes
into signals.

``elector`` answers every query: the running elector, the stopped one after a
stop, a stopped stand-in before the first start, or a state forced by
:mod:`flask_goelect.testing` (:meth:`ExtensionState.force`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask

from . import _hooks, auth, core, signals
from ._answers import Answer
from ._settings import Settings, durability_warnings, security_warnings
from .messages import Reply, Request
from .node import NodeRunner, make_transport
from .rpc import Body, Headers, StatusRead
from .state import STATE_OF_ROLE, ElectorLike, ErrorRecord, InFlight, Snapshot, State
from .transport import HttpTransport, ask_statuses

__all__ = ["ExtensionState"]

logger = logging.getLogger("flask_goelect")


class ExtensionState:
    """One app's elector, settings and routes: ``app.extensions["goelect"]``.

    :param extension: the :class:`~flask_goelect.LeaderElect` that made it.
    """

    def __init__(self, extension: object, app: Flask, settings: Settings) -> None:
        self.extension = extension
        self.settings = settings
        #: False until the routes are mounted (a host blueprint not yet registered).
        self.routes_ready = False
        self.autostart_pending = False
        self._app = weakref.ref(app)
        self._lock = threading.RLock()
        self._forced: ElectorLike | None = None
        config = settings.election
        #: (state, leader id, term) of the last change signalled, for the stop signals.
        self._last_signalled: tuple[str, str | None, int] | None = None
        keyring = settings.keyring
        #: Signs this node's requests and checks its peers' replies.
        self.signer = auth.RequestSigner(keyring, settings.cluster, settings.node_id)
        #: Checks the requests of peers and signs the replies to them.
        self.verifier = auth.RequestVerifier(
            keyring,
            settings.cluster,
            settings.node_id,
            (p.id for p in config.peers),
            max_age=settings.auth_max_age,
        )
        #: This process's part in running the node (see :mod:`flask_goelect.node`).
        self.node = NodeRunner(settings, self.verifier, self.make_transport, self._on_transition)
        #: The leader-only calls running in this process (the decorators pass it).
        self.inflight: InFlight = self.node.inflight
        self._warned = False

    def __repr__(self) -> str:
        return f"<ExtensionState node={self.settings.node_id!r} state={self.snapshot.state!r}>"

    @property
    def app(self) -> Flask:
        app = self._app()
        if app is None:  # pragma: no cover - only after the app was garbage collected
            raise RuntimeError("the Flask app of this elector no longer exists")
        return app

    @property
    def url_prefix(self) -> str:
        """The path prefix peers use to reach the routes (the blueprint's, once known)."""
        return self.node.rpc.url_prefix

    @url_prefix.setter
    def url_prefix(self, value: str) -> None:
        self.node.rpc.url_prefix = value

    @property
    def elector(self) -> ElectorLike:
        """What answers queries (see the module docs)."""
        forced = self._forced
        if forced is not None:
            return forced
        view: ElectorLike = self.node.view
        return view

    @property
    def stepping_down(self) -> bool:
        """Whether this node's leader is stopping and drains its load balancer."""
        return self._forced is None and self.node.stepping_down

    @property
    def snapshot(self) -> Snapshot:
        """The current snapshot of this node (read it once per use)."""
        return self.elector.snapshot

    @property
    def running(self) -> bool:
        return self.elector.running

    @property
    def admin_token(self) -> str:
        return self.node.admin_token

    def force(self, elector: ElectorLike | None) -> ElectorLike | None:
        """Answer every query from ``elector`` (None: from the real one again).

        Returns what was forced before, so that calls nest. The real elector,
        if one runs, keeps running underneath. :mod:`flask_goelect.testing`
        builds on this.
        """
        previous, self._forced = self._forced, elector
        return previous

    def make_transport(self) -> HttpTransport:
        """An HTTP transport with this node's TLS settings and signer."""
        return make_transport(self.settings, self.signer, self.url_prefix)

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if not self.routes_ready:
                raise RuntimeError(
                    "the election routes are not mounted yet: register the blueprint given"
                    " to LeaderElect(blueprint=...) on the app before starting the elector"
                )
            _watch_process()
            self.node.start(defer_in_master=True)
            _live.add(self)
            if not self._warned:
                self._warned = True
                for warning in (
                    *security_warnings(self.settings),
                    *durability_warnings(self.settings),
                ):
                    logger.warning("flask-goelect: node %r: %s", self.settings.node_id, warning)

    def stop(self, transfer: bool = True, timeout: float | None = None) -> None:
        """This process leaves the node (see :meth:`flask_goelect.node.NodeRunner.stop`)."""
        with self._lock:
            if timeout is None:
                timeout = max(1.0, 2 * self.settings.elect_timeout)
            stopped = self.node.stop(transfer, timeout)
            _live.discard(self)
            if stopped is not None:
                self._signal_stopped(stopped)

    def _signal_stopped(self, elector: ElectorLike) -> None:
        """Send ``leave_<state>`` (and ``leader_changed``) for a stop.

        The runner reports changes of the election only; without this, a node
        stopped while leading would never get ``leave_leader``. Bounded by the
        callback timeout like every other dispatch.
        """
        last, self._last_signalled = self._last_signalled, None
        if last is None:
            return
        state, leader_id, term = last
        if state not in signals.LEAVE and leader_id is None:
            return

        def run() -> None:
            try:
                self.send_signals(
                    previous_state=state,
                    state=State.STOPPED,
                    term=term,
                    leader_id=None,
                    previous_leader_id=leader_id,
                    reason="the elector stopped",
                )
            except Exception as exc:
                elector.errors.append(ErrorRecord(time.time(), "callback", repr(exc)))

        worker = threading.Thread(target=run, name="goelect-stop-signals", daemon=True)
        try:
            worker.start()
        except RuntimeError:  # no new threads this late in interpreter shutdown
            run()
            return
        timeout = self.settings.callback_timeout
        worker.join(timeout)
        if worker.is_alive():
            elector.errors.append(
                ErrorRecord(
                    time.time(), "callback-timeout", f"signals of the stop overran {timeout:g}s"
                )
            )

    def stop_at_exit(self) -> None:
        # The process exits: the elector goes to another process of the node, or a
        # leader hands leadership over to another node (a rolling restart then costs
        # a round trip, not an election timeout); bounded so that exit never hangs.
        with self._lock:
            stopped = self.node.stop_at_exit()
            _live.discard(self)
            if stopped is not None:
                self._signal_stopped(stopped)

    # -- queries and control --------------------------------------------------------

    def handle(self, msg: Request) -> Reply:
        """Step an RPC from a peer.

        :raises flask_goelect.state.NotRunning: the elector is not running.
        """
        return self.elector.handle(msg)

    def status(self) -> dict[str, Any]:
        """This node's view: what its elector reports, and this node's address."""
        status: dict[str, Any] = {"node_id": self.settings.node_id}
        status["address"] = self.settings.node_address
        if self._forced is not None:
            status.update(self._forced.status())
        else:
            status.update(self.node.status())
        status.setdefault("last_contact", {})
        return status

    def process(self) -> dict[str, Any]:
        """This process's part in the node: ``pid``, ``role`` and the elector's pid."""
        return self.node.process()

    def serve_rpc(self, kind: str, headers: Headers, body: Body, remote_addr: str) -> Answer:
        """Answer a peer's RPC (in the node's elector process, wherever it lands)."""
        return self.node.serve_rpc(kind, headers, body, remote_addr)

    def status_answer(self, read: StatusRead, *, full: bool) -> Answer:
        """The answer of a status route (see ``NodeRunner.status_answer``)."""
        return self.node.status_answer(read, full)

    def transfer_leadership(self, to: str | None = None) -> str:
        return self.elector.transfer_leadership(to)

    def leader_task(self, func: Callable[[Any], Any]) -> None:
        app_ref = self._app

        @functools.wraps(func)
        def task(ctx: Any) -> Any:
            app = app_ref()
            if app is None:  # pragma: no cover
                return None
            with app.app_context():
                return func(ctx)

        with self._lock:
            self.node.add_task(task)

    def cluster_state(self, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Every node's own view (see ``LeaderElect.cluster_state``)."""
        settings = self.settings
        if timeout is None:
            timeout = settings.connect_timeout + max(1.0, settings.elect_timeout)
        result: dict[str, dict[str, Any]] = {}
        ask = []
        for peer in settings.election.peers:
            entry: dict[str, Any] = {
                "address": peer.address,
                "novote": peer.novote,
                "tags": dict(peer.tags),
            }
            if peer.id == settings.node_id and self.running:
                entry.update(self.status(), reachable=True)
            else:
                entry.update(reachable=False, error="timed out")
                ask.append(peer)
            result[peer.id] = entry
        if not ask:
            return result
        transport = self.make_transport()
        try:
            answers = ask_statuses(transport, ask, (settings.connect_timeout, timeout), timeout)
        finally:
            transport.close()
        for peer_id, answer in answers.items():
            entry = result[peer_id]
            if isinstance(answer, Mapping):
                entry.update(answer, reachable=True)
                entry.pop("error", None)
            else:
                entry["error"] = answer
        return result

    # -- signals ----------------------------------------------------------------------

    def _on_transition(self, transition: core.Transition, snapshot: Snapshot) -> None:
        """Send the signals of one change (the runner calls this off the election loop)."""
        self.send_signals(
            previous_state=STATE_OF_ROLE[transition.previous_role],
            state=STATE_OF_ROLE[transition.role],
            term=transition.term,
            leader_id=transition.leader_id,
            previous_leader_id=transition.previous_leader_id,
            reason=transition.reason,
        )

    def send_signals(
        self,
        *,
        previous_state: str,
        state: str,
        term: int,
        leader_id: str | None,
        previous_leader_id: str | None,
        reason: str = "",
    ) -> None:
        """Send the signals of one change (:func:`flask_goelect.signals.send_change`)."""
        app = self._app()
        if app is None:  # pragma: no cover
            return
        if state != State.STOPPED:
            self._last_signalled = (str(state), leader_id, term)
        signals.send_change(
            app,
            previous_state=previous_state,
            state=state,
            term=term,
            leader_id=leader_id,
            previous_leader_id=previous_leader_id,
            node_id=self.settings.node_id,
            reason=reason,
        )


# -- process hooks: every started ExtensionState of this process ------------------------

_live: weakref.WeakSet[ExtensionState] = weakref.WeakSet()


def _watch_process() -> None:
    _hooks.in_child("owners", _after_fork_in_child)
    _hooks.at_exit(_stop_all_at_exit)


def _after_fork_in_child() -> None:
    # Each node acts for the child at once (a worker of a preforking server joins
    # its node); the same happens at the first use where no hook runs (uWSGI).
    for state in list(_live):
        # A thread of the parent may have held the lock at the fork (a stop in
        # progress): that thread does not exist here.
        state._lock = threading.RLock()
        state.node.view  # noqa: B018 - reading it makes the runner act for this process


def _stop_all_at_exit() -> None:
    for state in list(_live):
        try:
            state.stop_at_exit()
        except Exception:  # pragma: no cover
            logger.exception("flask-goelect: stopping the elector at exit failed")
