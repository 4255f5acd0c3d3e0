"""The one clock that election timing is read from.

Leases, promises and election timers are durations measured on one machine, so
they are read from a clock that only moves forward, never from the wall clock
(which NTP and people step). Everything that compares a time with a lease (the
runner, the snapshot readers, the decorators, the status) calls :func:`now`, so
that the lease is always checked on the clock it was granted on.

That clock is ``CLOCK_BOOTTIME`` where the platform has it (Linux), else the
monotonic clock. ``CLOCK_MONOTONIC`` stops while the machine is suspended: a
leader that resumes from a suspend would still see the lease it held before,
although the others, whose clocks ran meanwhile, may have elected another
leader long ago. ``CLOCK_BOOTTIME`` counts the time suspended, so the lease has
run out when the leader wakes. (A virtual machine paused by its host is another
matter: that is no suspend of the guest, and many hypervisors restore the
guest's clocks where they stopped, so neither clock sees the pause; see
docs/design.md.)

The value is shared by every process of the machine (both clocks are
system-wide, from an arbitrary origin at boot), which is what lets other worker
processes of a node check the lease the elector process publishes. It is not
shared across a reboot: a lease or a deadline kept from before a reboot means
nothing after it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

__all__ = ["SOURCE", "now"]


def _boottime() -> Callable[[], float] | None:
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    if clock_id is None:
        return None
    try:
        time.clock_gettime(clock_id)
    except OSError:  # defined, but not supported by this kernel
        return None
    # A C-level partial: no Python frame on a path taken by every lease check.
    return functools.partial(time.clock_gettime, clock_id)


_BOOTTIME = _boottime()

#: The clock :func:`now` reads: ``"CLOCK_BOOTTIME"`` or ``"monotonic"``.
SOURCE = "CLOCK_BOOTTIME" if _BOOTTIME is not None else "monotonic"

#: Seconds since an arbitrary origin, on a clock that counts time suspended
#: where the platform can (``CLOCK_BOOTTIME``), else ``time.monotonic``.
now: Callable[[], float] = _BOOTTIME if _BOOTTIME is not None else time.monotonic
