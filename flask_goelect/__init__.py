"""flask-goelect: leader election among the replicas of a Flask application.

The public names (``LeaderElect``, ``leader_only``, ``signals``, ...) are loaded
lazily, so that importing the pure election core (``flask_goelect.core``) or the
simulator does not import Flask, gevent or requests.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type checkers see the real names; at run time they load lazily
    from . import signals as signals
    from .decorators import NotLeader as NotLeader
    from .decorators import leader_only as leader_only
    from .extension import LeaderElect as LeaderElect

__version__ = "0.1.0"

# name -> module that defines it
_LAZY = {
    "LeaderElect": "flask_goelect.extension",
    "NotLeader": "flask_goelect.decorators",
    "leader_only": "flask_goelect.decorators",
    "signals": "flask_goelect.signals",
}

__all__ = ["LeaderElect", "NotLeader", "__version__", "leader_only", "signals"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flask_goelect' has no attribute {name!r}")
    if name == "signals":
        return importlib.import_module(module)
    return getattr(importlib.import_module(module), name)
