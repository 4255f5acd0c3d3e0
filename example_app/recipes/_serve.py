"""The recipes under a WSGI server: a node's options from ``EXAMPLE_ARGS``.

The options are those of ``python -m example_app`` (``--node-id``, ``--peers``,
``--state-dir``, ``--elect-timeout``..., and ``--ledger`` and ``--job-interval``,
which the recipes read as ``EXAMPLE_LEDGER`` and ``EXAMPLE_JOB_INTERVAL``), so
that :mod:`goelect_harness` can run a cluster of any recipe.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask

from ..node import build_config, parse_args

__all__ = ["app_from_env"]


def app_from_env(factory: Callable[[Mapping[str, Any]], Flask]) -> Flask:
    """``factory(config)`` with the config of the options in ``EXAMPLE_ARGS``."""
    args = parse_args(shlex.split(os.environ.get("EXAMPLE_ARGS", "")))
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {args.node_id} %(process)d %(levelname)s %(name)s: %(message)s",
    )
    config = build_config(args)
    config["GOELECT_AUTOSTART"] = True
    return factory(config)
