"""A small real app that uses all of flask-goelect (see ``docs/example_app.md``).

``create_app(config=None)`` makes the app (settings from the environment,
every ``GOELECT_*`` variable included, such as ``GOELECT_SECRET`` and
``GOELECT_CLUSTER``, overridden by ``config``); ``elect`` is its
:class:`flask_goelect.LeaderElect`.
Run one node with ``python -m example_app``, a local cluster with
``python -m example_app.cluster``; under another WSGI server use
``example_app:create_app()``.

The names are loaded on first use, so that ``python -m example_app`` can
monkey-patch with gevent before Flask, requests or ssl are imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .factory import create_app, elect

__all__ = ["create_app", "elect"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("example_app.factory"), name)
    raise AttributeError(f"module 'example_app' has no attribute {name!r}")
