"""Which process of a machine runs a node's elector: locks on ``<state file>.lock``.

A node may be served by several processes of one machine (gunicorn or uWSGI
workers, recycled and replaced over time). Exactly one of them may run the
node's elector: two electors of one node could both vote in one term. They
agree through POSIX record locks (``fcntl``) on bytes of the lock file:

* byte 0, exclusive: the **elector lock**. The process that holds it runs the
  elector, writes the state file and the record the other processes read.
* bytes ``1 .. MAX_MEMBERS``: one per **member** process (each takes the first
  free byte) that could take the elector over when the holder goes away.

Record locks, rather than ``flock``, because they belong to the *process*: a
forked child never inherits them, however it was forked (uWSGI forks its
workers from C, where no Python hook runs), and the kernel drops them when the
process dies, however it dies. Their one trap is that closing *any* descriptor
of the file drops every lock the process holds on it; so each process opens the
lock file once (:func:`lock_file` keeps one :class:`LockFile` per path) and
never closes it while it holds a lock.

The lock file also carries the elector's pid, node id and a random token for
the node's administrative route (``POST <prefix>/transfer``): only a user who
can read the node's state folder can read it, the same user who could stop or
restart the node.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import _hooks

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no record locks; one process per node
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MAX_MEMBERS",
    "LockError",
    "LockFile",
    "lock_file",
    "lock_path",
    "read_token",
]

#: How many processes of one node can wait to take its elector over.
MAX_MEMBERS = 256

#: How long :meth:`LockFile.join` tries again when every member byte is refused.
JOIN_PATIENCE = 0.25

_ELECTOR_BYTE = 0

_log = logging.getLogger("flask_goelect")


class LockError(RuntimeError):
    """Another elector of this node runs in this process, or the lock cannot be used."""


def lock_path(state_file: str | os.PathLike[str]) -> Path:
    """The lock file that guards ``state_file``."""
    path = Path(state_file)
    return path.with_name(path.name + ".lock")


def _try_lock(fd: int, byte: int, exclusive: bool = True, length: int = 1) -> bool:
    """Take a record lock on ``length`` bytes from ``byte`` without waiting; False if
    another process holds a lock there that conflicts."""
    if fcntl is None:  # pragma: no cover
        return True
    kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB, length, byte)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def _unlock(fd: int, byte: int, length: int = 1) -> None:
    if fcntl is not None:
        fcntl.lockf(fd, fcntl.LOCK_UN, length, byte)


def _held_by_others(fd: int, first: int, last: int) -> list[int]:
    """The bytes in ``[first, last]`` on which another process holds an exclusive lock.

    A shared lock on the whole range is tried first: taken (then dropped), no byte
    of it is held, at the cost of two calls; refused, each half is looked at in
    turn. A node's few members cost a few dozen calls, not two per byte of the
    range. The caller's own locks must lie outside the range: a process's own
    record locks never conflict with its new ones, they are replaced by them.
    """
    if first > last:
        return []
    length = last - first + 1
    if _try_lock(fd, first, exclusive=False, length=length):
        _unlock(fd, first, length)
        return []
    if first == last:
        return [first]
    middle = (first + last) // 2
    return _held_by_others(fd, first, middle) + _held_by_others(fd, middle + 1, last)


def read_token(state_file: str | os.PathLike[str]) -> str | None:
    """The administrative token of the node's running elector, or None if none runs.

    For another process than the elector's (the ``flask goelect`` commands): it
    opens and closes the lock file, which would drop the locks of a process
    that holds one.
    """
    held = _FILES.get(_key(lock_path(state_file)))
    if held is not None and held.pid == os.getpid():
        # Opening and closing the file here would drop this process's locks.
        return held.token or held.current_token() or None
    try:
        fd = os.open(lock_path(state_file), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if _try_lock(fd, _ELECTOR_BYTE, exclusive=False):
            return None  # nobody holds the elector lock: a killed node's token is stale
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    finally:
        os.close(fd)
    return _field(text, "token") or None


def _field(text: str, name: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == name:
            return value.strip()
    return ""


def _key(path: Path) -> str:
    return os.path.realpath(path)


class LockFile:
    """One process's handle on a node's lock file: the elector lock and a member byte.

    Get it with :func:`lock_file`; it is shared by everything in this process
    that runs the same node.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(
            path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600
        )
        stat = os.fstat(self._fd)
        #: Which file the descriptor is (a child may have closed it and reused its number).
        self._identity = (stat.st_dev, stat.st_ino)
        self._lock = threading.Lock()
        #: Who in this process holds the elector lock (an object of the caller's), or None.
        self.elector_owner: object | None = None
        #: Who in this process uses the lock file (holds the member byte, waits for
        #: or holds the elector lock): one owner per process and node.
        self.owner: object | None = None
        #: The token of ``POST <prefix>/transfer`` while this process holds the elector lock.
        self.token = ""
        self.member_byte: int | None = None
        self._waiting = False
        #: (owner, node id, callback) of the wait for the elector lock, or None.
        self._waiter: tuple[object, str, Callable[[], bool]] | None = None

    def __repr__(self) -> str:
        return f"<LockFile {str(self.path)!r} pid={self.pid} elector={self.elector_owner!r}>"

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise LockError(f"the lock file {str(self.path)!r} is closed")
        return self._fd

    # -- the elector lock ------------------------------------------------------------

    def take_elector(self, owner: object, node_id: str) -> bool:
        """Take the elector lock for ``owner`` without waiting; False if another
        process holds it.

        :raises LockError: another owner in this process holds it (two electors
            of one node in one process: a configuration error).
        """
        with self._lock:
            self._check_owner(owner, node_id)
            if self.elector_owner is not None:
                if self.elector_owner is owner:
                    return True
                raise self._second_owner(node_id)
            if not _try_lock(self.fd, _ELECTOR_BYTE):
                return False
            self._took(owner, node_id)
            return True

    def _second_owner(self, node_id: str) -> LockError:
        return LockError(
            f"another elector already runs node {node_id!r} in this process"
            f" (process {os.getpid()}) with the state file"
            f" {str(self.path.with_suffix(''))!r}. Run one elector per node: give"
            " each node its own GOELECT_NODE_ID and GOELECT_STATE_FILE"
        )

    def _check_owner(self, owner: object, node_id: str) -> None:
        # Called with self._lock held. Locks of one process never conflict, so two
        # owners of one process would share the member byte and the elector lock.
        if self.owner is None:
            self.owner = owner
        elif self.owner is not owner:
            raise self._second_owner(node_id)

    def _took(self, owner: object, node_id: str) -> None:
        self.elector_owner = owner
        self.token = secrets.token_urlsafe(24)
        content = f"pid={os.getpid()}\nnode={node_id}\ntoken={self.token}\n".encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, content, 0)

    def release_elector(self, owner: object) -> None:
        """Give the elector lock up (harmless when ``owner`` does not hold it)."""
        with self._lock:
            if self.elector_owner is not owner or self._fd is None:
                return
            self.elector_owner = None
            self.token = ""
            # Wipe the token so that a stopped node's token cannot be replayed.
            try:
                os.ftruncate(self._fd, 0)
            except OSError:  # pragma: no cover - best effort
                pass
            _unlock(self._fd, _ELECTOR_BYTE)

    def current_token(self) -> str:
        """The token the elector process of the node wrote in the lock file (``""``
        if none runs, or it was killed and no process took over yet: then no
        process answers the token anyway). Read through this process's own
        descriptor: it closes nothing."""
        try:
            text = os.pread(self.fd, 4096, 0).decode("utf-8", "replace")
        except (OSError, LockError):
            return ""
        return _field(text, "token")

    def holder(self) -> str:
        """What the lock file says of the elector's process (``"process 123"``), or ``""``."""
        try:
            text = os.pread(self.fd, 4096, 0).decode("utf-8", "replace")
        except OSError:  # pragma: no cover
            return ""
        pid = _field(text, "pid")
        return f"process {pid}" if pid else ""

    def wait_for_elector(
        self,
        owner: object,
        node_id: str,
        on_acquired: Callable[[], bool],
        start_thread: Callable[[str, Callable[[], None]], None],
    ) -> None:
        """Take the elector lock for ``owner`` as soon as the holder lets it go.

        A native thread waits in the kernel (no polling): the lock passes the
        moment the holding process releases it or dies. Then ``on_acquired()``
        runs in that thread; if it returns False (``owner`` no longer wants
        it), the lock is given up again. One waiter per process and lock file;
        a later call replaces the callback.

        :raises LockError: another owner of this process uses the lock file.
        """
        with self._lock:
            self._check_owner(owner, node_id)
            self._waiter = (owner, node_id, on_acquired)
            if self._waiting:
                return
            self._waiting = True
        fd = self.fd

        def wait() -> None:
            try:
                if fcntl is not None:
                    fcntl.lockf(fd, fcntl.LOCK_EX, 1, _ELECTOR_BYTE)
            except OSError as exc:
                with self._lock:
                    self._waiting = False
                _log.error(
                    "flask-goelect: node %r: process %d stops waiting to take the elector over: %s",
                    node_id,
                    os.getpid(),
                    exc,
                )
                return
            with self._lock:
                self._waiting = False
                waiter, self._waiter = self._waiter, None
                if self.elector_owner is not None:
                    # An owner of this process took it meanwhile: record locks of one
                    # process never conflict, so the wait ended on its lock, which
                    # must stay.
                    return
                if waiter is None or self._fd is None:
                    if self._fd is not None:
                        _unlock(self._fd, _ELECTOR_BYTE)
                    return
                # The owner that waits now, which may not be the one that started
                # this thread (that one may have left, and another joined since).
                waiting_owner, waiting_node, callback = waiter
                self._took(waiting_owner, waiting_node)
            if not callback():
                self.release_elector(waiting_owner)

        start_thread(f"goelect-{node_id}-takeover", wait)

    def stop_waiting(self) -> None:
        """Whatever the waiter takes from now on, it gives up at once."""
        with self._lock:
            self._waiter = None

    # -- members -------------------------------------------------------------------------

    def join(self, owner: object, node_id: str) -> int:
        """Take a member byte for ``owner`` (idempotent); returns its number
        (1 .. MAX_MEMBERS).

        :raises LockError: every member byte is taken, or another owner of this
            process uses the lock file.
        """
        with self._lock:
            self._check_owner(owner, node_id)
            if self.member_byte is not None:
                return self.member_byte
            # Another process looking for members holds a shared lock over a range
            # of bytes for a moment (other_members): every byte refused may be that,
            # not 256 members. Try again for a while before giving up.
            deadline = time.monotonic() + JOIN_PATIENCE
            while True:
                for byte in range(1, MAX_MEMBERS + 1):
                    if _try_lock(self.fd, byte):
                        self.member_byte = byte
                        return byte
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.002)
        raise LockError(
            f"{MAX_MEMBERS} processes already serve the node of {str(self.path)!r}; that is"
            " the limit"
        )

    def leave(self) -> None:
        """Give the member byte up: this process will not take the elector over."""
        with self._lock:
            byte, self.member_byte = self.member_byte, None
            if byte is not None and self._fd is not None:
                _unlock(self._fd, byte)

    def disown(self, owner: object) -> None:
        """``owner`` is done with the lock file (after :meth:`leave` and
        :meth:`release_elector`): another owner of this process may use it."""
        with self._lock:
            if self.owner is owner and self.elector_owner is None:
                self.owner = None
                self._waiter = None

    def other_members(self) -> list[int]:
        """The member bytes other live processes hold (who could take over)."""
        with self._lock:
            own = self.member_byte
            if own is None:
                return _held_by_others(self.fd, 1, MAX_MEMBERS)
            return _held_by_others(self.fd, 1, own - 1) + _held_by_others(
                self.fd, own + 1, MAX_MEMBERS
            )

    # -- fork --------------------------------------------------------------------------------

    def forget_after_fork(self) -> None:
        """In a forked child: this process holds none of the parent's locks.

        The inherited descriptor is closed (which drops no lock of the parent's:
        record locks belong to the process that took them).
        """
        fd, self._fd = self._fd, None
        self._lock = threading.Lock()
        self.elector_owner = None
        self.owner = None
        self.token = ""
        self.member_byte = None
        self._waiting = False
        self._waiter = None
        if fd is not None:
            try:
                stat = os.fstat(fd)
                # Only if it still is the lock file: a child (a daemon, say) may have
                # closed the descriptors it inherited and opened files of its own.
                if (stat.st_dev, stat.st_ino) == self._identity:
                    os.close(fd)
            except OSError:
                pass


_FILES: dict[str, LockFile] = {}
_FILES_LOCK = threading.Lock()


def lock_file(state_file: str | os.PathLike[str]) -> LockFile:
    """This process's :class:`LockFile` of the node whose state is in ``state_file``.

    One per process and path: a forked child gets a new one.
    """
    path = lock_path(state_file)
    key = _key(path)
    with _FILES_LOCK:
        found = _FILES.get(key)
        if found is not None and found.pid == os.getpid():
            return found
        if found is not None:
            found.forget_after_fork()
        created = _FILES[key] = LockFile(path)
        return created


def forget_lock_files_after_fork() -> None:
    """In a forked child: drop the parent's lock files (see :meth:`LockFile.forget_after_fork`)."""
    global _FILES_LOCK
    _FILES_LOCK = threading.Lock()
    for found in list(_FILES.values()):
        if found.pid != os.getpid():
            found.forget_after_fork()
    _FILES.clear()


_hooks.in_child("connections", forget_lock_files_after_fork)
