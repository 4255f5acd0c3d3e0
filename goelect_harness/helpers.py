"""Two small helpers every test and harness here shares: a free port, bounded polling."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

__all__ = ["free_port", "wait_until"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on now (the kernel's pick)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    """Poll ``predicate`` every ``interval`` seconds until it returns something true,
    and return that; None once ``timeout`` seconds have passed without.

    It never fails by itself: the caller says what a timeout means (``assert
    wait_until(...), details`` in a test, a violation or an error in a harness).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)
