"""The Flask extension: :class:`LeaderElect`.

One :class:`LeaderElect` object can serve several apps (app factories, tests,
several nodes in one process). The per-app state, :class:`ExtensionState`,
lives in ``app.extensions["goelect"]``; the extension never keeps ``self.app``.
"""

from __future__ import annotations

import atexit
import collections
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from flask import Blueprint, Flask, current_app, has_app_context
from flask.blueprints import BlueprintSetupState

from . import auth, core, signals, views
from ._lock import LockError, StateFileLock
from ._settings import (
    DEFAULTS,
    MEMORY,
    Settings,
    explicit_keys,
    key,
    load_settings,
    security_warnings,
)
from .decorators import NotLeader, _job_wrapper
from .messages import Reply, Request

if TYPE_CHECKING:
    import requests

    from .transport import HttpTransport

__all__ = ["ExtensionState", "LeaderElect", "LockError"]

logger = logging.getLogger("flask_goelect")

F = TypeVar("F", bound=Callable[..., Any])

#: Keyword options of :class:`LeaderElect`: the config keys in lower case.
OPTIONS = frozenset(name.lower() for name in DEFAULTS)


class NotRunning(RuntimeError):
    """The elector is not running (raised by the stand-ins; the runner has its own)."""


class ElectorLike(Protocol):
    """What the extension needs of an elector (the runner's, or a test double)."""

    @property
    def snapshot(self) -> Any: ...

    @property
    def running(self) -> bool: ...

    @property
    def errors(self) -> collections.deque[Any]: ...

    def is_leader(self) -> bool: ...

    def handle(self, msg: Request) -> Reply: ...

    def status(self) -> dict[str, Any]: ...

    def wait_for_leader(self, timeout: float) -> core.LeaderInfo | None: ...

    def transfer_leadership(self, to: str | None = None) -> str: ...


def _runner() -> Any:
    # The runner imports gevent; import it only when an elector is made.
    from . import runner

    return runner


@dataclass(frozen=True)
class StaticSnapshot:
    """A fixed view of a node (before the first start, or forced by tests).

    It has the fields and the ``is_leader(now=None)`` method of the runner's
    ``Snapshot``, which is what every reader of the election uses.
    """

    node_id: str
    state: str
    term: int = 0
    leader_id: str | None = None
    leader_address: str = ""
    leader_tags: Mapping[str, str] = field(default_factory=dict)
    lease_until: float = 0.0
    voters: tuple[str, ...] = ()
    observers: tuple[str, ...] = ()

    def is_leader(self, now: float | None = None) -> bool:
        if self.state != "leader":
            return False
        return (time.monotonic() if now is None else now) < self.lease_until

    @property
    def leader(self) -> core.LeaderInfo | None:
        if self.leader_id is None:
            return None
        return core.LeaderInfo(self.leader_id, self.leader_address, self.leader_tags)


class _Idle:
    """Stands in for the elector before the first start: a stopped node."""

    running = False

    def __init__(self, settings: Settings) -> None:
        config = settings.election
        self.snapshot: Any = StaticSnapshot(
            node_id=settings.node_id,
            state="stopped",
            voters=tuple(sorted(config.voters)),
            observers=tuple(sorted(config.observers)),
        )
        self.errors: collections.deque[Any] = collections.deque(maxlen=100)

    def is_leader(self) -> bool:
        return False

    def handle(self, msg: Request) -> Reply:
        raise NotRunning("the elector of this node is not running")

    def status(self) -> dict[str, Any]:
        return {}

    def wait_for_leader(self, timeout: float) -> core.LeaderInfo | None:
        return None

    def transfer_leadership(self, to: str | None = None) -> str:
        raise NotRunning("the elector of this node is not running; start it first")


# Roles of the core, as the states users see (a pre-candidate asks for
# pre-votes: it campaigns, without changing term).
_STATE_OF_ROLE = {
    core.Role.LEADER: "leader",
    core.Role.FOLLOWER: "follower",
    core.Role.PRE_CANDIDATE: "candidate",
    core.Role.CANDIDATE: "candidate",
    core.Role.OBSERVER: "observer",
}


class ExtensionState:
    """One app's elector, settings and routes: ``app.extensions["goelect"]``.

    ``elector`` is what answers queries: the running elector, the stopped one
    after :meth:`stop`, a stand-in before the first start, or a test double
    installed by :mod:`flask_goelect.testing`.
    """

    def __init__(self, extension: LeaderElect, app: Flask, settings: Settings) -> None:
        self.extension = extension
        self.settings = settings
        #: The path prefix peers use to reach the routes (the blueprint's, once known).
        self.url_prefix = settings.url_prefix
        #: False until the routes are mounted (a host blueprint not yet registered).
        self.routes_ready = False
        self.autostart_pending = False
        self._app = weakref.ref(app)
        self._lock = threading.RLock()
        self._real: Any = None  # the runner's Elector, once started
        self._forced: ElectorLike | None = None
        self._idle = _Idle(settings)
        self.elector: ElectorLike = self._idle
        self._file_lock: StateFileLock | None = None
        self._tasks: list[Callable[[Any], Any]] = []
        self._restart_after_fork = False
        #: (state, leader id, term) of the last change signalled, for the stop signals.
        self._last_signalled: tuple[str, str | None, int] | None = None
        config = settings.election
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
        self._warned = False

    def __repr__(self) -> str:
        return (
            f"<ExtensionState node={self.settings.node_id!r} state={self.elector.snapshot.state!r}>"
        )

    @property
    def app(self) -> Flask:
        app = self._app()
        if app is None:  # pragma: no cover - only after the app was garbage collected
            raise RuntimeError("the Flask app of this elector no longer exists")
        return app

    @property
    def running(self) -> bool:
        return self.elector.running

    @property
    def admin_token(self) -> str:
        lock = self._file_lock
        return lock.token if lock is not None and self._real is not None else ""

    def _refresh(self) -> None:
        self.elector = self._forced or self._real or self._idle

    def make_transport(self) -> HttpTransport:
        """An :class:`~flask_goelect.transport.HttpTransport` with this node's TLS
        settings and signer, for the elector and for status queries."""
        from .transport import HttpTransport

        return HttpTransport(
            url_prefix=self.url_prefix, session_factory=self._new_session, signer=self.signer
        )

    def _new_session(self) -> requests.Session:
        import requests

        session = requests.Session()
        s = self.settings
        if s.tls_ca:
            session.verify = s.tls_ca
        if s.tls_cert:
            session.cert = (s.tls_cert, s.tls_key) if s.tls_key else s.tls_cert
        return session

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._real is not None and self._real.running:
                return
            # An elector that stopped by itself (its storage failed) left its lock.
            self._release()
            if not self.routes_ready:
                raise RuntimeError(
                    "the election routes are not mounted yet: register the blueprint given"
                    " to LeaderElect(blueprint=...) on the app before starting the elector"
                )
            runner = _runner()
            from .storage import FileStorage, MemoryStorage, Storage

            # After the runner's and transport's own fork hooks (registered when
            # they were imported), so that in a child they reset first.
            _install_process_hooks()

            s = self.settings
            file_lock = None
            storage: Storage
            if s.state_file is None:
                storage = MemoryStorage()
            else:
                file_lock = StateFileLock(s.state_file, s.node_id)
                file_lock.acquire()
                try:
                    storage = FileStorage(s.state_file)
                except BaseException:
                    file_lock.release()
                    raise
            transport = None
            try:
                transport = self.make_transport()
                elector = runner.Elector(
                    s.election,
                    storage,
                    transport,
                    on_transition=self._on_transition,
                    callback_timeout=s.callback_timeout,
                    rpc_timeout=(s.connect_timeout, _read_timeout(s)),
                )
                for task in self._tasks:
                    elector.leader_task(task)
                elector.start()
            except BaseException:
                if transport is not None:
                    transport.close()
                storage.close()
                if file_lock is not None:
                    file_lock.release()
                raise
            self._real = elector
            self._file_lock = file_lock
            self._refresh()
            _live.add(self)
            if not self._warned:
                self._warned = True
                for warning in security_warnings(s):
                    logger.warning("flask-goelect: node %r: %s", s.node_id, warning)

    def stop(self, transfer: bool = True, timeout: float | None = None) -> None:
        with self._lock:
            elector = self._real
            if elector is None or not elector.running:
                self._release()
                return
            if timeout is None:
                timeout = max(1.0, 2 * self.settings.elect_timeout)
            try:
                elector.stop(transfer=transfer, timeout=timeout)
            finally:
                self._release()
            self._signal_stopped(elector)

    def _signal_stopped(self, elector: Any) -> None:
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
        record = _runner().ErrorRecord

        def run() -> None:
            try:
                self.send_signals(
                    previous_state=state,
                    state="stopped",
                    term=term,
                    leader_id=None,
                    previous_leader_id=leader_id,
                    reason="the elector stopped",
                )
            except Exception as exc:
                elector.errors.append(record(time.time(), "callback", repr(exc)))

        worker = threading.Thread(target=run, name="goelect-stop-signals", daemon=True)
        try:
            worker.start()
        except RuntimeError:  # no new threads this late in interpreter shutdown
            run()
            return
        worker.join(self.settings.callback_timeout)
        if worker.is_alive():
            elector.errors.append(
                record(
                    time.time(),
                    "callback-timeout",
                    f"signals of the stop overran {self.settings.callback_timeout:g}s",
                )
            )

    def _release(self) -> None:
        # The runner closes the storage and transport of a stopped elector.
        if self._file_lock is not None:
            self._file_lock.release()
            self._file_lock = None
        _live.discard(self)

    def _before_fork(self) -> None:
        # The forking process (a gunicorn --preload master) gives its elector to
        # the child: stop here without a hand-over, start again in the child.
        with self._lock:
            if self._real is not None and self._real.running:
                self._restart_after_fork = True
                self.stop(transfer=False, timeout=1.0)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.RLock()
        if self._file_lock is not None:  # pragma: no cover - the parent released it
            self._file_lock.forget_after_fork()
            self._file_lock = None
        # The parent stopped its elector (closing its storage and transport) so
        # that it no longer holds the lock the child inherits: the child starts a
        # new elector (the runner has already reset the stopped one's state).
        if self._restart_after_fork:
            self._restart_after_fork = False
            try:
                self.start()
            except Exception:
                logger.exception(
                    "flask-goelect: node %r could not start its elector after fork",
                    self.settings.node_id,
                )

    # -- queries and control --------------------------------------------------------

    def handle(self, msg: Request) -> Reply | None:
        """Step an RPC from a peer; None when the elector is not running."""
        try:
            return self.elector.handle(msg)
        except NotRunning:
            return None
        except Exception as exc:
            if self._real is not None and isinstance(exc, _runner().ElectorNotRunning):
                return None
            raise

    def status(self) -> dict[str, Any]:
        snap = self.elector.snapshot
        now = time.monotonic()
        config = self.settings.election
        base: dict[str, Any] = {
            "node_id": snap.node_id,
            "address": self.settings.node_address,
            "state": snap.state,
            "term": snap.term,
            "leader_id": snap.leader_id,
            "leader_address": snap.leader_address or None,
            "is_leader": snap.is_leader(),
            "lease_remaining": max(0.0, snap.lease_until - now) if snap.is_leader() else 0.0,
            "voters": sorted(config.voters),
            "observers": sorted(config.observers),
            "running": self.elector.running,
            "last_contact": {},
        }
        base.update(self.elector.status())
        return base

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
            self._tasks.append(task)
            if self._real is not None and self._real.running:
                self._real.leader_task(task)

    def cluster_state(self, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        config = self.settings.election
        if timeout is None:
            timeout = self.settings.connect_timeout + max(1.0, self.settings.elect_timeout)
        result: dict[str, dict[str, Any]] = {}
        ask = []
        for peer in config.peers:
            result[peer.id] = {
                "address": peer.address,
                "novote": peer.novote,
                "tags": dict(peer.tags),
                "reachable": False,
                "error": "timed out",
            }
            if peer.id == self.settings.node_id and self.running:
                result[peer.id].update(self.status(), reachable=True)
                del result[peer.id]["error"]
            else:
                ask.append(peer)
        if not ask:
            return result
        transport = self.make_transport()
        pool = ThreadPoolExecutor(max_workers=len(ask), thread_name_prefix="goelect-cluster")
        try:
            futures = {
                pool.submit(
                    transport.get_status, peer, (self.settings.connect_timeout, timeout)
                ): peer
                for peer in ask
            }
            done, _ = wait_futures(futures, timeout=timeout)
            for future in done:
                entry = result[futures[future].id]
                exc = future.exception()
                if exc is not None:
                    entry["error"] = str(exc) or type(exc).__name__
                    continue
                status = future.result()
                if not isinstance(status, Mapping):
                    entry["error"] = "the status is not a JSON object"
                    continue
                entry.update(status, reachable=True)
                entry.pop("error", None)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            transport.close()
        return result

    # -- signals ----------------------------------------------------------------------

    def _on_transition(self, transition: core.Transition, snapshot: Any) -> None:
        """Send the signals of one change (the runner calls this off the election loop)."""
        self.send_signals(
            previous_state=_STATE_OF_ROLE[transition.previous_role],
            state=_STATE_OF_ROLE[transition.role],
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
        """Send the signals of one change, in order, inside an app context.

        Every receiver runs even if an earlier one raises; the first failure is
        raised at the end (the runner records it in ``errors``).
        """
        app = self._app()
        if app is None:  # pragma: no cover
            return
        if state != "stopped":
            self._last_signalled = (state, leader_id, term)
        kwargs = {
            "term": term,
            "state": state,
            "previous_state": previous_state,
            "leader_id": leader_id,
            "previous_leader_id": previous_leader_id,
            "node_id": self.settings.node_id,
            "reason": reason,
        }
        to_send = []
        if state != previous_state:
            if previous_state in signals.LEAVE:
                to_send.append(signals.LEAVE[previous_state])
            if state in signals.ENTER:
                to_send.append(signals.ENTER[state])
        if leader_id != previous_leader_id:
            to_send.append(signals.leader_changed)
        if not to_send:
            return
        failures: list[Exception] = []
        with app.app_context():
            for signal in to_send:
                # Each receiver on its own: one that raises must not keep the
                # others (and the signals after it) from running.
                for receiver in list(signal.receivers_for(app)):
                    try:
                        receiver(app, **kwargs)
                    except Exception as exc:
                        logger.exception(
                            "flask-goelect: receiver %r of %s failed", receiver, signal.name
                        )
                        failures.append(exc)
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise ReceiverErrors(failures)


class ReceiverErrors(Exception):
    """Several signal receivers failed on one change; ``errors`` has each exception."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        super().__init__(f"{len(errors)} signal receivers failed: " + "; ".join(map(repr, errors)))


def _read_timeout(settings: Settings) -> float:
    # A reply that comes later than one election timeout is useless: the
    # heartbeat round it answers can no longer extend the lease.
    return settings.elect_timeout


class LeaderElect:
    """Leader election among the replicas of a Flask app.

    ::

        elect = LeaderElect(app)           # or LeaderElect() and elect.init_app(app)

    ``blueprint``: mount the routes on this blueprint of the host (to share its
    prefix, middleware or auth) instead of the extension's own blueprint at
    ``GOELECT_URL_PREFIX``. Create the ``LeaderElect`` before the blueprint is
    registered; peers then use the prefix it is registered at (or
    ``GOELECT_URL_PREFIX`` when set explicitly). The elector autostarts when
    the blueprint is registered.

    ``options``: any config key in lower case without the prefix (``node_id=``,
    ``peers=``, ``elect_timeout=``...). They override ``app.config`` for every
    app this object serves.

    **Which app.** Serving one app, every property and method answers for it,
    with or without an app context. Serving several, they answer for
    ``current_app``, which must be one of them.
    """

    def __init__(
        self, app: Flask | None = None, *, blueprint: Blueprint | None = None, **options: Any
    ) -> None:
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise TypeError(
                f"LeaderElect() got unknown option(s) {', '.join(unknown)}; the options are"
                f" the config keys in lower case: {', '.join(sorted(OPTIONS))}"
            )
        self.blueprint = blueprint
        self.options = dict(options)
        self._states: weakref.WeakKeyDictionary[Flask, ExtensionState] = weakref.WeakKeyDictionary()
        #: The state of the only app served (a fast path for ``leader_only``).
        self._single: ExtensionState | None = None
        self._blueprint_ready = False
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the extension on ``app``, check its config, mount the routes and
        (unless ``GOELECT_AUTOSTART`` is false) start the elector.

        :raises flask_goelect.core.ConfigError: a key is wrong; the message names
            it and the fix.
        :raises RuntimeError: the app already has a ``LeaderElect``.
        """
        if "goelect" in app.extensions:
            raise RuntimeError(
                "A 'LeaderElect' instance has already been registered on this Flask app."
                " Import and use that instance instead."
            )
        explicit = explicit_keys(app.config, self.options)
        for name, default in DEFAULTS.items():
            app.config.setdefault(key(name), default)
        settings = load_settings(app.config, self.options, app.instance_path, explicit)
        state = ExtensionState(self, app, settings)

        if self.blueprint is None:
            app.register_blueprint(views.create_blueprint(settings.url_prefix))
            state.routes_ready = True
        else:
            self._prepare_blueprint(self.blueprint)

        app.extensions["goelect"] = state
        self._states[app] = state
        self._single = state if len(self._states) == 1 else None

        from .cli import goelect_cli

        if "goelect" not in app.cli.commands:
            app.cli.add_command(goelect_cli)

        if settings.autostart and _serving_process():
            if state.routes_ready:
                state.start()
            else:
                state.autostart_pending = True

    def _prepare_blueprint(self, bp: Blueprint) -> None:
        if self._blueprint_ready:
            return
        try:
            views.add_routes(bp)
            bp.record(self._blueprint_registered)
        except AssertionError as exc:
            raise RuntimeError(
                f"cannot add the election routes to blueprint {bp.name!r}: it is already"
                " registered on an app. Create LeaderElect(app, blueprint=bp) before"
                " app.register_blueprint(bp)"
            ) from exc
        self._blueprint_ready = True

    def _blueprint_registered(self, setup: BlueprintSetupState) -> None:
        state = setup.app.extensions.get("goelect")
        if not isinstance(state, ExtensionState) or state.extension is not self:
            return
        if not state.settings.url_prefix_explicit:
            state.url_prefix = (setup.url_prefix or "").rstrip("/")
        state.routes_ready = True
        if state.autostart_pending:
            state.autostart_pending = False
            state.start()

    # -- which app ----------------------------------------------------------------------

    def _state(self) -> ExtensionState:
        state = self._single
        if state is not None:
            return state
        return self._state_of_current_app()

    def _state_of_current_app(self) -> ExtensionState:
        if not self._states:
            raise RuntimeError(
                "this LeaderElect is not registered on an app: call elect.init_app(app) first"
            )
        if has_app_context():
            state = current_app.extensions.get("goelect")
            if isinstance(state, ExtensionState) and state.extension is self:
                return state
        raise RuntimeError(
            f"this LeaderElect serves {len(self._states)} apps: use it inside an app context"
            " of one of them (with app.app_context(): ...)"
        )

    # -- properties ---------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True only while this node leads and holds a valid lease."""
        return bool(self._state().elector.snapshot.is_leader())

    @property
    def state(self) -> str:
        """``"leader"``, ``"follower"``, ``"candidate"``, ``"observer"`` or ``"stopped"``."""
        return str(self._state().elector.snapshot.state)

    @property
    def term(self) -> int:
        """The current term: the fencing token of the current leadership."""
        return int(self._state().elector.snapshot.term)

    @property
    def leader(self) -> core.LeaderInfo | None:
        """The leader this node knows (``id``, ``address``, ``tags``), or None."""
        snap = self._state().elector.snapshot
        if snap.leader_id is None:
            return None
        return core.LeaderInfo(snap.leader_id, snap.leader_address or "", snap.leader_tags or {})

    @property
    def node(self) -> core.Peer:
        """This node: ``id``, ``address``, ``novote``, ``tags``."""
        return self._state().settings.node

    @property
    def running(self) -> bool:
        """True while the elector runs."""
        return self._state().running

    @property
    def errors(self) -> collections.deque[Any]:
        """Failures of signal receivers and leader tasks (newest last)."""
        return self._state().elector.errors

    def status(self) -> dict[str, Any]:
        """This node's view: node id, state, term, leader, lease remaining, voters,
        observers, last contact per peer (what ``GET <prefix>/status`` returns)."""
        return self._state().status()

    def cluster_state(self, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Every node's own view, asked concurrently within ``timeout`` seconds.

        Returns ``{node_id: {...}}`` in the order of the peers: a reachable node's
        entry has ``"reachable": True`` and its status; an unreachable one
        ``"reachable": False`` and ``"error"``. It never raises because of a peer.
        """
        return self._state().cluster_state(timeout)

    # -- control ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the elector (idempotent).

        :raises LockError: another elector runs this node (same state file).
        """
        self._state().start()

    def stop(self, transfer: bool = True, timeout: float | None = None) -> None:
        """Stop the elector; the leader first hands over to another voter
        (unless ``transfer`` is false). Returns within about ``timeout``."""
        self._state().stop(transfer=transfer, timeout=timeout)

    def transfer_leadership(self, to: str | None = None) -> str:
        """Hand leadership to ``to`` (or the most up-to-date voter); returns its id.

        :raises flask_goelect.core.NotLeaderError: this node is not the leader.
        :raises flask_goelect.core.TransferError: ``to`` cannot lead.
        """
        return self._state().transfer_leadership(to)

    def wait_for_leader(self, timeout: float) -> core.LeaderInfo | None:
        """Block until a leader is known (returns it) or ``timeout`` seconds pass (None)."""
        return self._state().elector.wait_for_leader(timeout)

    def leader_task(self, func: F) -> F:
        """Run ``func(ctx)`` in the background while this node leads.

        It starts on every election won and is cancelled when leadership is
        lost (check ``ctx.cancelled`` / ``ctx.is_leader()`` in loops; the
        fencing token is ``ctx.term``). It runs inside an app context. Usable
        as a decorator; registered tasks survive stop/start.
        """
        self._state().leader_task(func)
        return func

    @overload
    def leader_only(self, func: F, /) -> F: ...

    @overload
    def leader_only(self, /, *, raise_on_follower: bool = False) -> Callable[[F], F]: ...

    def leader_only(
        self, func: Callable[..., Any] | None = None, /, *, raise_on_follower: bool = False
    ) -> Any:
        """Run the decorated function only on the leader holding a valid lease.

        For jobs (schedulers, threads, CLI): on a non-leader the call is skipped
        and returns None, or raises :class:`~flask_goelect.NotLeader` with
        ``@elect.leader_only(raise_on_follower=True)``. Inside the function,
        :func:`flask_goelect.decorators.current_term` gives the term (fencing
        token) the check passed in. Works on ``async def`` functions too.
        """
        if func is None:
            return functools.partial(self.leader_only, raise_on_follower=raise_on_follower)
        return _job_wrapper(self, func, raise_on_follower)


# init_app's docs list every key it reads, generated from the one table of keys.
from ._settings import document_keys  # noqa: E402 - kept next to its one use

LeaderElect.init_app.__doc__ = document_keys(LeaderElect.init_app.__doc__)


# -- process-wide hooks: reloader, fork, exit -------------------------------------------

_live: weakref.WeakSet[ExtensionState] = weakref.WeakSet()
_hooks_installed = False
_hooks_lock = threading.Lock()


def _serving_process() -> bool:
    """False where this process loads the app but does not serve it.

    Under the ``flask`` command only ``flask run`` serves, and with the
    reloader only the child (``WERKZEUG_RUN_MAIN=true``) does; the watcher
    parent, ``flask shell``, ``flask routes`` and ``flask goelect ...`` do not.
    """
    if os.environ.get("FLASK_RUN_FROM_CLI") != "true":
        return True
    from werkzeug.serving import is_running_from_reloader

    if is_running_from_reloader():
        return True
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.command.name != "run":
        return False
    reload = ctx.params.get("reload")
    if reload is None:
        from flask.helpers import get_debug_flag

        reload = get_debug_flag()
    return not reload


def _install_process_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    atexit.register(_stop_all_at_exit)


#: States whose elector a fork moved from this process to its children.
_moved: weakref.WeakSet[ExtensionState] = weakref.WeakSet()


def _before_fork() -> None:
    for state in list(_live):
        try:
            state._before_fork()
        except Exception:  # pragma: no cover
            logger.exception("flask-goelect: stopping the elector before fork failed")
        if state._restart_after_fork:
            _moved.add(state)


def _after_fork_in_child() -> None:
    # Every child of this process (gunicorn respawns workers from the master)
    # starts the electors the first fork took away; the parent keeps none.
    for state in list(_moved):
        _moved.discard(state)
        state._after_fork_in_child()


def _stop_all_at_exit() -> None:
    # Hand over at exit so that a rolling restart costs a round trip, not an
    # election timeout; bounded so that exit never hangs on a dead peer.
    for state in list(_live):
        try:
            state.stop(transfer=True, timeout=min(2.0, 2 * state.settings.elect_timeout))
        except Exception:  # pragma: no cover
            logger.exception("flask-goelect: stopping the elector at exit failed")


__all__ += ["MEMORY", "NotLeader"]
