"""An exclusive, non-blocking lock on a node's state file.

Two electors that share one state file would each believe they are the node:
they could both vote in one term (one vote per term is only safe with one
writer) and both answer for it. The elector therefore holds ``flock`` on
``<state file>.lock`` while it runs. The kernel releases the lock when the
process dies, however it dies, so a crashed node never leaves a stale lock.

The lock file also carries a random token for the node's administrative route
(``POST <prefix>/transfer``): only a user who can read the node's state folder
can read it, the same user who could stop or restart the node.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; run one elector per node by hand
    fcntl = None  # type: ignore[assignment]

__all__ = ["LockError", "StateFileLock", "read_token"]


class LockError(RuntimeError):
    """Another elector holds the state file of this node."""


def lock_path(state_file: str | os.PathLike[str]) -> Path:
    """The lock file that guards ``state_file``."""
    path = Path(state_file)
    return path.with_name(path.name + ".lock")


def read_token(state_file: str | os.PathLike[str]) -> str | None:
    """The administrative token of the running elector, or None if none runs."""
    try:
        fd = os.open(lock_path(state_file), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                pass  # held: an elector runs, its token is current
            else:
                return None  # nobody holds the lock: a killed node's token is stale
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    finally:
        os.close(fd)
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "token" and value:
            return value
    return None


class StateFileLock:
    """Holds ``flock(LOCK_EX | LOCK_NB)`` on ``<state_file>.lock`` until released."""

    def __init__(self, state_file: str | os.PathLike[str], node_id: str) -> None:
        self.state_file = Path(state_file)
        self.path = lock_path(state_file)
        self.node_id = node_id
        self.token = ""
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`LockError` saying who holds it and what to do."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"process {holder}" if holder else "another process"
                raise LockError(
                    f"another elector ({who}) already runs node {self.node_id!r} with the"
                    f" state file {str(self.state_file)!r} (locked through {str(self.path)!r})."
                    " Run exactly one elector per node: serve the app with a single worker"
                    " process (e.g. gunicorn -w 1 with threads or gevent), give each node its"
                    " own GOELECT_NODE_ID and GOELECT_STATE_FILE, or set GOELECT_AUTOSTART"
                    " = False where no elector should run (CLI scripts, shells)"
                ) from None
        self.token = secrets.token_urlsafe(24)
        content = f"pid={os.getpid()}\nnode={self.node_id}\ntoken={self.token}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, content, 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (harmless when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # Wipe the token so that a stopped node's token cannot be replayed.
            os.ftruncate(fd, 0)
        except OSError:  # pragma: no cover - best effort
            pass
        os.close(fd)  # closing the descriptor releases the flock

    def forget_after_fork(self) -> None:
        """In a forked child: drop the inherited descriptor without touching the lock.

        The child shares the parent's open file description; closing it here
        does not release the parent's lock, but the child must not wipe the token.
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", "replace")
    except OSError:  # pragma: no cover
        return ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "pid":
            return value.strip()
    return ""
