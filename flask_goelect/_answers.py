"""Answers to HTTP requests as plain values: a status, headers and a JSON body.

Both the RPC server (:mod:`flask_goelect.rpc`, which knows no Flask) and the
Flask routes and decorators build their answers here, so that every error under
the prefix has one shape: ``{"error": "<code>", "message": "<what to do>"}``.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

__all__ = ["Answer", "error_answer", "json_answer"]


class Answer(NamedTuple):
    """An HTTP answer: ``status``, ``headers`` (without Content-Type) and ``body``."""

    status: int
    headers: dict[str, str]
    body: bytes


#: Compact JSON, made once (``json.dumps`` with options builds an encoder per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def json_answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    """``body`` as compact JSON (independent of any app's JSON settings)."""
    return Answer(status, headers or {}, _ENCODER.encode(body).encode())


def error_answer(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> Answer:
    """A JSON error: ``error`` is a stable code, ``message`` says what to do."""
    return json_answer({"error": error, "message": message}, status, headers)
