"""Fork and exit: every process hook of the package, run in one explicit order.

Modules register what they must do after a fork or at exit under a *stage*;
the stages run in the order of :data:`FORK_STAGES`, whatever order the modules
were imported in. In a forked child, right after the fork:

1. ``"connections"``: every HTTP transport drops the sockets it shares with
   the parent (:mod:`flask_goelect.transport`);
2. ``"electors"``: every elector forgets the parent's run: its threads and hub
   did not survive the fork, and a lock may have been held (the runner);
3. ``"owners"``: the owners of electors (the Flask glue's per-app state) act
   on the clean state the first two stages left.

Before a fork, the ``"owners"`` run their ``before`` hooks; at exit, their
exit hooks (a leader hands over, so that a rolling restart costs a round
trip instead of an election timeout).

A fork done from C (uWSGI forks its workers without running Python's at-fork
hooks) is not seen here: code that owns a resource also notices a new process
by its pid.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable

__all__ = ["FORK_STAGES", "at_exit", "before_fork", "in_child"]

#: The order in which the after-fork hooks run in the child.
FORK_STAGES = ("connections", "electors", "owners")

Hook = Callable[[], None]

_log = logging.getLogger("flask_goelect")
_lock = threading.Lock()
_installed = False
_in_child: dict[str, list[Hook]] = {stage: [] for stage in FORK_STAGES}
_before: list[Hook] = []
_exit: list[Hook] = []


def _add(hooks: list[Hook], hook: Hook) -> None:
    global _installed
    with _lock:
        if hook not in hooks:
            hooks.append(hook)
        if _installed:
            return
        _installed = True
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_run_before, after_in_child=_run_in_child)
    atexit.register(_run_at_exit)


def in_child(stage: str, hook: Hook) -> None:
    """Run ``hook`` in every forked child, at ``stage`` (one of :data:`FORK_STAGES`)."""
    if stage not in _in_child:
        raise ValueError(f"stage must be one of {', '.join(FORK_STAGES)}, not {stage!r}")
    _add(_in_child[stage], hook)


def before_fork(hook: Hook) -> None:
    """Run ``hook`` in this process before every fork."""
    _add(_before, hook)


def at_exit(hook: Hook) -> None:
    """Run ``hook`` when the interpreter exits."""
    _add(_exit, hook)


def _run(hooks: list[Hook], what: str) -> None:
    for hook in list(hooks):
        try:
            hook()
        except Exception:  # pragma: no cover - one hook must not keep the others from running
            _log.exception("flask-goelect: %s hook %r failed", what, hook)


def _run_before() -> None:
    _run(_before, "before-fork")


def _run_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # it may have been held by a thread that did not survive
    for stage in FORK_STAGES:
        _run(_in_child[stage], f"after-fork ({stage})")


def _run_at_exit() -> None:
    _run(_exit, "exit")
