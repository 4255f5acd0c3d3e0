"""Issue 10, the edges of the node that the core relies on: its disk and its clock.

* The clock leases are read from counts the time a machine is suspended
  (``CLOCK_BOOTTIME`` where there is one), and every process of the machine
  reads the same one.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from flask_goelect import clock

# -- the clock -----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="no CLOCK_BOOTTIME here")
def test_leases_are_read_on_a_clock_that_counts_time_suspended() -> None:
    """CLOCK_MONOTONIC stops during a suspend: a leader waking from one would still
    see its lease. CLOCK_BOOTTIME counts the suspend."""
    assert clock.SOURCE == "CLOCK_BOOTTIME"
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    now = clock.now()
    after = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert before <= now <= after


def test_every_process_of_the_machine_reads_the_same_clock() -> None:
    """Worker processes check the lease the elector process publishes."""
    code = "from flask_goelect import clock; print(repr(clock.now()))"
    before = clock.now()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    after = clock.now()
    assert before <= float(out) <= after


def test_the_runner_and_the_readers_use_this_clock() -> None:
    import inspect

    from flask_goelect.runner import Elector

    default = inspect.signature(Elector).parameters["clock"].default
    assert default is clock.now
