"""Issue 10, the edges of the node that the core relies on: its disk and its clock.

* A state file in memory or on a file system a reboot empties: the node warns
  (:func:`flask_goelect._settings.durability_warnings`), since a node that lost
  its state may vote twice in a term once the promise of its start is over.
* The clock leases are read from counts the time a machine is suspended
  (``CLOCK_BOOTTIME`` where there is one), and every process of the machine
  reads the same one.
* What the state file holds when saving it fails after the rename.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flask_goelect import clock, storage
from flask_goelect._settings import MEMORY, Settings, durability_warnings, load_settings
from flask_goelect.core import HardState
from flask_goelect.storage import FileStorage

PEERS = ["n1=http://10.0.0.1:5000", "n2=http://10.0.0.2:5000", "n3=http://10.0.0.3:5000"]
MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw,relatime 0 0
tmpfs /srv/ram\\040disk tmpfs rw 0 0
/dev/vdb /srv/data xfs rw 0 0
tmpfs /srv/data/cache tmpfs rw 0 0
"""


def settings(state_file: str, peers: list[str] = PEERS, **config: Any) -> Settings:
    return load_settings(
        {
            "GOELECT_NODE_ID": "n1",
            "GOELECT_PEERS": peers,
            "GOELECT_STATE_FILE": state_file,
            **config,
        },
        {},
        "/srv/data/instance",
    )


# -- the state file ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state_file", "words"),
    [
        (MEMORY, "':memory:'"),
        ("/dev/shm/goelect-n1.json", "tmpfs file system (mounted at /dev/shm)"),
        ("/srv/ram disk/n1.json", "tmpfs file system (mounted at /srv/ram disk)"),
        ("/srv/data/cache/n1.json", "tmpfs file system (mounted at /srv/data/cache)"),
        ("/tmp/goelect/n1.json", "folder for temporary files"),
        ("/run/goelect/n1.json", "folder for temporary files"),
    ],
)
def test_a_state_file_that_does_not_survive_a_reboot_is_warned_about(
    state_file: str, words: str
) -> None:
    (warning,) = durability_warnings(settings(state_file), mounts=MOUNTS, linux=True)
    assert words in warning
    assert "GOELECT_STATE_FILE" in warning and "vote a second time" in warning
    assert "volume" in warning


@pytest.mark.parametrize(
    "state_file", ["/srv/data/n1.json", "/srv/database/n1.json", "/var/lib/app/n1.json"]
)
def test_a_state_file_on_a_disk_is_not_warned_about(state_file: str) -> None:
    assert durability_warnings(settings(state_file), mounts=MOUNTS, linux=True) == []


def test_temporary_folders_are_a_linux_convention() -> None:
    assert durability_warnings(settings("/tmp/n1.json"), mounts="", linux=False) == []
    assert durability_warnings(settings(MEMORY), mounts="", linux=False)


def test_no_warning_where_losing_the_state_cannot_cost_a_second_vote() -> None:
    alone = ["n1=http://10.0.0.1:5000"]
    assert durability_warnings(settings(MEMORY, alone), mounts=MOUNTS) == []
    observer = settings(MEMORY, [p + (" novote" if p.startswith("n1") else "") for p in PEERS])
    assert "n1" not in observer.election.voters
    assert durability_warnings(observer, mounts=MOUNTS) == []


def test_the_default_state_file_is_judged_where_it_is(tmp_path: Path) -> None:
    """Reading this machine's own mounts: a file under the test's temporary folder."""
    here = settings(str(tmp_path / "n1.json"))
    warnings = durability_warnings(here)
    if sys.platform.startswith("linux") and str(tmp_path).startswith("/tmp/"):
        assert warnings and "GOELECT_STATE_FILE" in warnings[0]


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


# -- the state file when saving fails after the rename -------------------------------------


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_save_that_fails_after_the_rename_leaves_the_new_state_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder's fsync fails after the rename: the file already names the new
    state (later loads read it), but it may not survive a crash of the machine. The
    docstring of save() says so; it used to say the previous state was kept."""
    path = tmp_path / "n1.json"
    # A file of the older format: the next save creates the file anew, by a rename
    # (as the first save of a node does).
    fields = {"version": 1, "term": 3, "voted_for": "n2"}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    fields["checksum"] = hashlib.sha256(text.encode()).hexdigest()
    path.write_text(json.dumps(fields))
    store = FileStorage(path)
    assert store.load() == HardState(3, "n2")

    fsync = os.fsync

    def fail(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):  # the folder's, after the rename
            raise OSError(errno.EIO, "Input/output error")
        fsync(fd)

    monkeypatch.setattr(storage.os, "fsync", fail)
    with pytest.raises(OSError, match="Input/output"):
        store.save(HardState(4, None))
    monkeypatch.undo()
    again = FileStorage(path)
    assert again.load() == HardState(4, None)
    doc = " ".join((FileStorage.save.__doc__ or "").split())
    assert "may not be durable" in doc and "holds the new state" in doc
