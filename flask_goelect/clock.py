"""The one clock that election timing is read from.

Leases, promises and election timers are durations measured on one machine, so
they are read from a monotonic clock, never from the wall clock (which NTP and
people step). Everything that compares a time with a lease (the runner, the
snapshot readers, the decorators, the status) calls :func:`now`, so that the
lease is always checked on the clock it was granted on.

The value is shared by every process of the machine (``CLOCK_MONOTONIC`` is
system-wide), which is what lets other worker processes of a node check the
lease the elector process publishes.
"""

from __future__ import annotations

import time

__all__ = ["now"]

#: Seconds on the machine's monotonic clock (an arbitrary origin).
now = time.monotonic
