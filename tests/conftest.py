"""Fixtures every test module gets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import globals as flask_globals


@pytest.fixture(autouse=True)
def no_leaked_context() -> Iterator[None]:
    """Fail a test that leaves an app or request context pushed."""
    before = flask_globals._cv_app.get(None)
    yield
    after = flask_globals._cv_app.get(None)
    assert after is before, "the test leaked a pushed app/request context"
