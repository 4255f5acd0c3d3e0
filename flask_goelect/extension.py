"""The Flask extension: :class:`LeaderElect`.

One :class:`LeaderElect` object can serve several apps (app factories, tests,
several nodes in one process). The per-app state,
:class:`~flask_goelect.app_state.ExtensionState`, lives in
``app.extensions["goelect"]``; the extension never keeps ``self.app``.
"""

from __future__ import annotations

import collections
import functools
import os
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, overload

from flask import Blueprint, Flask, current_app, has_app_context
from flask.blueprints import BlueprintSetupState

from . import core, views
from ._lock import LockError
from ._settings import DEFAULTS, MEMORY, document_keys, explicit_keys, key, load_settings
from .app_state import ExtensionState
from .cli import goelect_cli
from .decorators import NotLeader, job_wrapper
from .state import ErrorRecord

__all__ = ["MEMORY", "ExtensionState", "LeaderElect", "LockError", "NotLeader"]

F = TypeVar("F", bound=Callable[..., Any])

#: Keyword options of :class:`LeaderElect`: the config keys in lower case.
OPTIONS = frozenset(name.lower() for name in DEFAULTS)


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
        #: Leader tasks given before any ``init_app``: registered on every app bound later.
        self._deferred_tasks: list[Callable[[Any], Any]] = []
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

        if "goelect" not in app.cli.commands:
            app.cli.add_command(goelect_cli)

        for task in self._deferred_tasks:
            state.leader_task(task)

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
        return self._state().snapshot.is_leader()

    @property
    def state(self) -> str:
        """``"leader"``, ``"follower"``, ``"candidate"``, ``"observer"`` or ``"stopped"``."""
        return str(self._state().snapshot.state)

    @property
    def term(self) -> int:
        """The current term: the fencing token of the current leadership."""
        return self._state().snapshot.term

    @property
    def leader(self) -> core.LeaderInfo | None:
        """The leader this node knows (``id``, ``address``, ``tags``), or None."""
        return self._state().snapshot.leader

    @property
    def node(self) -> core.Peer:
        """This node: ``id``, ``address``, ``novote``, ``tags``."""
        return self._state().settings.node

    @property
    def running(self) -> bool:
        """True while the elector runs."""
        return self._state().running

    @property
    def errors(self) -> collections.deque[ErrorRecord]:
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
        """Hand leadership to ``to`` (or the voter heard from most recently); returns its id.

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

        Before any ``init_app`` (a module-level ``elect = LeaderElect()`` with
        ``@elect.leader_task`` under it), the task is kept and registered on
        every app this object is bound to later, as ``@bp.cli.command`` is on
        the apps a blueprint is registered on.
        """
        if not self._states:
            self._deferred_tasks.append(func)
            return func
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
        return job_wrapper(self._state, func, raise_on_follower)


# init_app's docs list every key it reads, generated from the one table of keys.
LeaderElect.init_app.__doc__ = document_keys(LeaderElect.init_app.__doc__)


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
