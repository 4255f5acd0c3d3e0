"""Which process of a machine runs a node's elector: the record locks of ``flask_goelect._lock``.

The other processes are real ones: a small script (:data:`HOLDER`) that takes a
member byte and, if asked, the elector lock, then waits for its stdin to close.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from node_procs import child_env

from flask_goelect import _lock
from flask_goelect._lock import MAX_MEMBERS, LockError, LockFile, lock_file, read_token

HOLDER = """
import ctypes, os, sys, time
from flask_goelect._lock import lock_file

locks = lock_file(sys.argv[1])
owner = object()
byte = locks.join(owner, "n1")
took = locks.take_elector(owner, "n1") if sys.argv[2] == "elector" else False
child = 0
if sys.argv[3] in ("fork", "cfork"):
    # A child that outlives this process, holding the inherited descriptor of the
    # lock file open: "cfork" forks from C, where no Python hook runs.
    fork = ctypes.PyDLL(None).fork if sys.argv[3] == "cfork" else os.fork
    child = fork()
    if child == 0:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        time.sleep(30)
        os._exit(0)
print(byte, took, locks.token or "-", child, flush=True)
sys.stdin.read()
"""


class Holder:
    """A process of the node that holds a member byte, and the elector lock if asked."""

    def __init__(self, state_file: Path, elector: bool = True, fork: str = "none") -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                HOLDER,
                str(state_file),
                "elector" if elector else "member",
                fork,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert self.proc.stdout is not None
        byte, took, token, child = self.proc.stdout.readline().split()
        self.byte, self.took, self.token = int(byte), took == "True", token
        self.child = int(child)

    def exit(self) -> None:
        """Exit normally, without giving any lock up: the kernel drops them."""
        self.proc.communicate(timeout=10)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=10)

    def close(self) -> None:
        if self.proc.returncode is None:
            self.kill()
        if self.child:
            try:
                os.kill(self.child, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "n1.json"


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.close()


def in_child(func: Callable[[], object], fork: Callable[[], int] = os.fork) -> str:
    """``repr(func())`` run in a forked child (or what it raised)."""
    read, write = os.pipe()
    pid = fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            result = repr(func())
        except BaseException as exc:
            result = repr(exc)
        os.write(write, result.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen = pipe.read()
    os.waitpid(pid, 0)
    return seen


def other_process_takes(state_file: Path) -> bool:
    """Whether a new process of the machine gets the elector lock now."""
    holder = Holder(state_file)
    try:
        return holder.took
    finally:
        holder.kill()


def test_one_process_takes_the_elector_lock(state_file: Path, holders: list[Holder]) -> None:
    holders.append(first := Holder(state_file))
    holders.append(second := Holder(state_file))
    assert first.took and not second.took
    assert (first.byte, second.byte) == (1, 2)
    locks, owner = lock_file(state_file), object()
    try:
        assert not locks.take_elector(owner, "n1")
        assert locks.holder() == f"process {first.proc.pid}"
    finally:
        locks.disown(owner)


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_the_waiter_takes_the_lock_the_moment_the_holder_goes(
    state_file: Path, holders: list[Holder], how: str
) -> None:
    holders.append(holder := Holder(state_file))
    locks, owner = lock_file(state_file), object()
    took_at: list[float] = []
    acquired = threading.Event()

    def on_acquired() -> bool:
        took_at.append(time.monotonic())
        acquired.set()
        return True

    locks.join(owner, "n1")
    assert not locks.take_elector(owner, "n1")
    locks.wait_for_elector(owner, "n1", on_acquired, lambda name, f: _thread(f))
    try:
        assert not acquired.wait(0.2), "the waiter took a lock another process holds"
        started = time.monotonic()
        holder.kill() if how == "sigkill" else holder.exit()
        assert acquired.wait(5)
        assert took_at[0] - started < 0.25, f"taken over after {took_at[0] - started:.3f}s"
        assert locks.elector_owner is owner and locks.token
        assert not other_process_takes(state_file)
    finally:
        locks.release_elector(owner)
        locks.leave()
        locks.disown(owner)
    assert other_process_takes(state_file)


def _thread(func: object) -> None:
    threading.Thread(target=func, daemon=True).start()  # type: ignore[arg-type]


def test_member_bytes_and_other_members(state_file: Path, holders: list[Holder]) -> None:
    holders.append(elector := Holder(state_file))
    holders.append(member := Holder(state_file, elector=False))
    locks, owner = lock_file(state_file), object()
    try:
        assert locks.join(owner, "n1") == 3
        assert locks.join(owner, "n1") == 3  # idempotent
        assert sorted(locks.other_members()) == [elector.byte, member.byte] == [1, 2]
        member.kill()
        assert locks.other_members() == [1]
        locks.leave()
        assert locks.member_byte is None
        # The byte given up is free for the next process; the others' stay taken.
        holders.append(late := Holder(state_file, elector=False))
        assert late.byte == 2
    finally:
        locks.leave()
        locks.disown(owner)


BYTES_HOLDER = """
import fcntl, os, sys
from flask_goelect._lock import lock_path

fd = os.open(lock_path(sys.argv[1]), os.O_RDWR | os.O_CREAT, 0o600)
for byte in map(int, sys.argv[2].split(",")):
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
print("ready", flush=True)
sys.stdin.read()
"""

BYTE_PROBE = """
import fcntl, os, sys
from flask_goelect._lock import lock_path

fd = os.open(lock_path(sys.argv[1]), os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]))
    print("free")
except OSError:
    print("held")
"""


def _script(code: str, *args: object) -> subprocess.Popen[str]:
    """Run ``code`` in another process (its stdin open: it waits for it to close)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


def test_other_members_finds_every_byte_held_and_keeps_our_own(state_file: Path) -> None:
    """The members are found by halving the range: scattered bytes, both ends of
    it, and bytes on both sides of this process's own, which the look must not
    drop (a shared lock over it would replace it)."""
    held = [1, 2, 3, 5, 127, 128, 200, 255, 256]
    proc = _script(BYTES_HOLDER, state_file, ",".join(map(str, held)))
    locks, owner = lock_file(state_file), object()
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert locks.join(owner, "n1") == 4
        for _ in range(2):
            assert sorted(locks.other_members()) == held
            probe = subprocess.run(
                [sys.executable, "-c", BYTE_PROBE, str(state_file), "4"],
                capture_output=True,
                text=True,
                env=child_env(),
                timeout=30,
            )
            assert probe.stdout.strip() == "held", probe.stderr
        proc.communicate(timeout=10)  # its locks go with it
        assert locks.other_members() == []
    finally:
        proc.kill()
        locks.leave()
        locks.disown(owner)


@pytest.mark.parametrize("fork", ["fork", "cfork"])
def test_a_forked_child_keeps_no_lock_of_its_parent(
    state_file: Path, holders: list[Holder], fork: str
) -> None:
    # The child outlives its parent with the lock file's descriptor open (and,
    # forked from C, without any hook having run): the parent's locks go with it.
    holders.append(parent := Holder(state_file, fork=fork))
    assert parent.took and parent.child > 0
    assert not other_process_takes(state_file)
    parent.kill()
    os.kill(parent.child, 0)  # the child is still there
    assert other_process_takes(state_file)


def test_a_child_forked_here_holds_none_of_our_locks(state_file: Path) -> None:
    locks, owner = lock_file(state_file), object()
    assert locks.join(owner, "n1") == 1 and locks.take_elector(owner, "n1")
    try:

        def child() -> object:
            mine = lock_file(state_file)  # a new one: the parent's was forgotten
            child_owner = object()
            return (
                mine is not locks,
                mine.elector_owner is None and mine.member_byte is None,
                not mine.take_elector(child_owner, "n1"),
                mine.join(child_owner, "n1") == 2,
            )

        assert in_child(child) == "(True, True, True, True)"
        # Closing its copy of the descriptor in the child dropped nothing of ours.
        assert locks.elector_owner is owner and not other_process_takes(state_file)
        assert locks.other_members() == []
    finally:
        locks.release_elector(owner)
        locks.leave()
        locks.disown(owner)


def test_read_token_from_another_process(state_file: Path, holders: list[Holder]) -> None:
    assert read_token(state_file) is None  # no lock file yet
    holders.append(holder := Holder(state_file))
    assert len(holder.token) > 20
    assert read_token(state_file) == holder.token
    holder.kill()
    # A killed elector's token is stale: nobody holds the elector lock.
    assert read_token(state_file) is None
    holders.append(holder := Holder(state_file))
    locks, owner = lock_file(state_file), object()
    try:
        # A member process reads it through its own descriptor (closing one would
        # drop its locks).
        locks.join(owner, "n1")
        assert locks.current_token() == read_token(state_file) == holder.token
        assert locks.member_byte == 2 and locks.other_members() == [1]
    finally:
        locks.leave()
        locks.disown(owner)


def test_two_owners_in_one_process_are_refused(state_file: Path, holders: list[Holder]) -> None:
    locks = lock_file(state_file)
    first, second = object(), object()
    assert locks.join(first, "n1") == 1 and locks.take_elector(first, "n1")
    for use in (
        lambda: locks.join(second, "n1"),
        lambda: locks.take_elector(second, "n1"),
        lambda: locks.wait_for_elector(second, "n1", lambda: True, lambda n, f: None),
    ):
        with pytest.raises(LockError, match="another elector already runs node 'n1'"):
            use()
    locks.release_elector(first)
    locks.leave()
    locks.disown(first)
    assert locks.join(second, "n1") == 1  # free again once the first is done
    locks.leave()
    locks.disown(second)


def test_two_members_in_one_process_are_refused(state_file: Path, holders: list[Holder]) -> None:
    # While another process runs the elector, a second owner of this process would
    # share the first one's member byte and its waiter: the lock the waiter takes
    # would be the first's, and the second could never give it up.
    holders.append(holder := Holder(state_file))
    locks = lock_file(state_file)
    first, second = object(), object()
    locks.join(first, "n1")
    assert not locks.take_elector(first, "n1")
    locks.wait_for_elector(first, "n1", lambda: True, lambda name, f: _thread(f))
    with pytest.raises(LockError):
        locks.join(second, "n1")
    # The first leaves (its waiter still blocked in the kernel); the second joins
    # and waits: the pending wait now takes the lock for the second.
    locks.stop_waiting()
    locks.leave()
    locks.disown(first)
    took = threading.Event()
    locks.join(second, "n1")
    locks.wait_for_elector(second, "n1", lambda: took.set() or True, lambda n, f: _thread(f))
    holder.kill()
    try:
        assert took.wait(5)
        assert locks.elector_owner is second
    finally:
        locks.release_elector(second)
        locks.leave()
        locks.disown(second)
    assert other_process_takes(state_file)


def test_a_waiter_that_nobody_wants_any_more_gives_the_lock_up(
    state_file: Path, holders: list[Holder]
) -> None:
    holders.append(holder := Holder(state_file))
    locks, owner = lock_file(state_file), object()
    locks.join(owner, "n1")
    called = threading.Event()
    locks.wait_for_elector(owner, "n1", lambda: called.set() or True, lambda n, f: _thread(f))
    locks.stop_waiting()
    locks.leave()
    locks.disown(owner)
    holder.kill()
    deadline = time.monotonic() + 5
    while not other_process_takes(state_file):
        assert time.monotonic() < deadline, "the lock was kept by a waiter nobody wants"
    assert not called.is_set() and locks.elector_owner is None


def test_one_lock_file_per_process_and_path(state_file: Path) -> None:
    locks = lock_file(state_file)
    assert lock_file(state_file) is locks
    assert lock_file(Path(os.path.relpath(state_file))) is locks
    assert isinstance(locks, LockFile) and locks.pid == os.getpid()


def test_a_child_that_reused_the_descriptor_number_keeps_its_file(state_file: Path) -> None:
    # A daemonizing child closes what it inherited and opens files of its own,
    # which may get the lock file's old descriptor number.
    # Forked from C (no hook runs), so that the child itself notices the fork.
    locks, owner = lock_file(state_file), object()
    locks.join(owner, "n1")
    number = locks.fd
    try:

        def child() -> object:
            os.close(number)
            fd = os.open(state_file.parent / "child.txt", os.O_RDWR | os.O_CREAT, 0o600)
            if fd != number:  # a lower number was free: put the file at the old one
                os.dup2(fd, number)
                os.close(fd)
            lock_file(state_file)  # notices the fork; must not close the child's file
            return os.write(number, b"still open")

        assert in_child(child, ctypes.PyDLL(None).fork) == str(len(b"still open"))
        assert (state_file.parent / "child.txt").read_bytes() == b"still open"
    finally:
        locks.leave()
        locks.disown(owner)


RANGE_HOLDER = """
import fcntl, os, sys, time
from flask_goelect._lock import lock_path

fd = os.open(lock_path(sys.argv[1]), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 256, 1)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
fcntl.lockf(fd, fcntl.LOCK_UN, 256, 1)
sys.stdin.read()
"""


def test_a_join_waits_out_another_process_s_look_for_members(
    state_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """other_members holds a shared lock over the whole range for a moment: a
    process joining then finds every byte refused, and must try again rather than
    fail as if 256 processes served the node. (Patience raised: a loaded machine
    may run the holder late; the byte taken is whichever was free first.)"""
    monkeypatch.setattr(_lock, "JOIN_PATIENCE", 10.0)
    proc = _script(RANGE_HOLDER, state_file, "0.05")
    locks, owner = lock_file(state_file), object()
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert 1 <= locks.join(owner, "n1") <= MAX_MEMBERS
    finally:
        proc.kill()
        proc.communicate(timeout=10)
        locks.leave()
        locks.disown(owner)
