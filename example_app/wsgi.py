"""The example app for any WSGI server: ``example_app.wsgi:app``.

::

    EXAMPLE_ARGS="--node-id n1 --listen 127.0.0.1:5001 --peers n1=...,n2=...,n3=..." \\
        gunicorn -k gevent -w 3 -b 127.0.0.1:5001 example_app.wsgi:app

``EXAMPLE_ARGS`` holds the options of ``python -m example_app`` (the same
parser reads them; ``--listen`` gives the node's own address when ``--peers``
does not); without it the app reads every ``GOELECT_*`` and ``EXAMPLE_*``
variable of the environment, as ``example_app:create_app()`` does. With
``EXAMPLE_EVENTS=1`` the node prints its events on stdout (see
:mod:`example_app.events`). The elector starts when the app is loaded: in
each worker of a preforking server, never in its master.
"""

from __future__ import annotations

import os

from flask import Flask

from flask_goelect.serving import exit_on_sigterm

from .events import EventPrinter
from .factory import create_app
from .node import served_config

__all__ = ["app", "make_app"]


def make_app() -> Flask:
    """The app of the options in ``EXAMPLE_ARGS`` (or of the environment alone)."""
    text = os.environ.get("EXAMPLE_ARGS", "").strip()
    if not text:
        return create_app()
    made = create_app(served_config(text))
    if os.environ.get("EXAMPLE_EVENTS"):
        EventPrinter.install(made)
    return made


exit_on_sigterm()
app = make_app()
