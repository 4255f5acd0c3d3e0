"""The live status page (``GOELECT_STATUS_PAGE``): the page, its files and its JSON.

``GET <prefix>/ui`` is plain HTML with a stylesheet and a script shipped in the
package (``flask_goelect/static/``: no build step, nothing from a CDN). The
script fetches ``GET <prefix>/ui/cluster.json`` (this node's view of every
node, :meth:`~flask_goelect.app_state.ExtensionState.cluster_state`) every
second and redraws. The state machine beside it is :func:`flask_goelect.fsm.svg`.
:mod:`flask_goelect.views` routes to these functions and applies the access
rule of ``GET <prefix>/status``.
"""

from __future__ import annotations

import json
import time
from functools import cache
from html import escape
from importlib import resources
from typing import Any

from . import fsm
from ._settings import TABLE, Settings
from .app_state import ExtensionState

__all__ = ["ASSETS", "asset", "cluster_view", "enabled", "page"]

#: The files of the page: name -> content type.
ASSETS = {
    "status_page.css": "text/css; charset=utf-8",
    "status_page.js": "text/javascript; charset=utf-8",
    "fsm.svg": "image/svg+xml",
}

_KEY = next(k for k in TABLE if k.name == "STATUS_PAGE")


def enabled(settings: Settings) -> bool:
    """Whether ``GOELECT_STATUS_PAGE`` is on (checked with the rest at ``init_app``)."""
    return bool(_KEY.parse(_KEY, settings.raw.get(_KEY.name, _KEY.default)))


@cache
def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def page(url_prefix: str, node_id: str) -> str:
    """The page's HTML, its links under ``url_prefix``."""
    return (
        _static("status_page.html")
        .replace("__PREFIX__", escape(url_prefix))
        .replace("__NODE__", escape(node_id))
        .replace("__FSM__", fsm.svg())
    )


def asset(name: str) -> tuple[str, str] | None:
    """``(content, content type)`` of one of :data:`ASSETS`, or None."""
    content_type = ASSETS.get(name)
    if content_type is None:
        return None
    return (fsm.svg() if name == "fsm.svg" else _static(name)), content_type


def cluster_view(state: ExtensionState) -> dict[str, Any]:
    """What the page draws: every node's own status as this node gets it, and the
    leader (the node that reports a valid lease: at most one can)."""
    settings = state.settings
    # Short: the page asks again in a second, and a down node must not hold it up.
    nodes = state.cluster_state(timeout=min(1.0, max(0.3, settings.elect_timeout)))
    leader = next((i for i, e in nodes.items() if e.get("reachable") and e.get("is_leader")), None)
    terms = [e["term"] for e in nodes.values() if e.get("reachable") and "term" in e]
    view = {
        "node_id": settings.node_id,
        "time": time.time(),
        "elect_timeout": settings.elect_timeout,
        "leader": leader,
        "term": max(terms) if terms else None,
        "nodes": nodes,
    }
    # Round-trips through JSON here, so that the route cannot fail on an odd value.
    result: dict[str, Any] = json.loads(json.dumps(view, default=str))
    return result
