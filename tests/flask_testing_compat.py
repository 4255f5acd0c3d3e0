"""flask-testing 0.8.1 on Flask 3.1: the base of the view tests.

Two parts of flask-testing 0.8.1 break on current Flask and Werkzeug:

* ``assertRedirects`` compares ``response.location`` with an absolute URL, but
  Werkzeug (2.1+) no longer makes ``Location`` absolute, and it does not know
  308. The shim resolves both sides against the request's URL.
* ``render_templates = False`` replaces ``flask.templating._render`` with a
  function whose arguments are in the old order ``(template, context, app)``;
  Flask 3 calls ``_render(app, template, context)``. The shim installs one with
  the new order.

Use :class:`TestCase` from here instead of ``flask_testing.TestCase``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

import flask_testing
from flask import Flask, templating
from flask.signals import template_rendered

__all__ = ["TestCase"]

REDIRECT_CODES = (301, 302, 303, 305, 307, 308)


def _empty_render(app: Flask, template: Any, context: dict[str, Any]) -> str:
    template_rendered.send(app, template=template, context=context)
    return ""


class TestCase(flask_testing.TestCase):  # type: ignore[misc]
    """``flask_testing.TestCase`` with ``assertRedirects`` and ``render_templates`` fixed."""

    def _pre_setup(self) -> None:
        super()._pre_setup()
        if not self.render_templates:
            # flask-testing saved the real one and installed its broken stub.
            templating._render = _empty_render  # type: ignore[assignment]

    def assertRedirects(self, response: Any, location: str, message: str | None = None) -> None:  # noqa: N802
        base = f"http://{self.app.config.get('SERVER_NAME') or 'localhost'}/"
        self.assertIn(
            response.status_code,
            REDIRECT_CODES,
            message or f"HTTP redirect expected, got {response.status_code}",
        )
        self.assertEqual(urljoin(base, response.location), urljoin(base, location), message)

    assert_redirects = assertRedirects
