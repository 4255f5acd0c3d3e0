"""The recipes under a WSGI server: a node's options from ``EXAMPLE_ARGS``.

The options are those of ``python -m example_app`` (``--node-id``, ``--peers``,
``--state-dir``, ``--elect-timeout``..., and ``--ledger`` and ``--job-interval``,
which the recipes read as ``EXAMPLE_LEDGER`` and ``EXAMPLE_JOB_INTERVAL``), so
that :mod:`goelect_harness` can run a cluster of any recipe.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask

from ..node import served_config

__all__ = ["app_from_env"]


def app_from_env(factory: Callable[[Mapping[str, Any]], Flask]) -> Flask:
    """``factory(config)`` with the config of the options in ``EXAMPLE_ARGS``."""
    return factory(served_config(os.environ.get("EXAMPLE_ARGS", "")))
