"""Stable storage for the election's persistent state: the term and the vote in it.

Raft's one-vote-per-term rule only holds across restarts if ``term`` and
``voted_for`` reach the disk before a vote or a candidacy is announced (Raft
paper §5.2, Figure 2 "persistent state"). A node that forgot its vote could
vote again in the same term and let two leaders win it.

:class:`FileStorage` keeps the state in a small JSON file written atomically and
durably (temp file, fsync, rename, fsync of the folder) and refuses to load a
file that is empty, torn or corrupt rather than start again from term 0.
:class:`MemoryStorage` keeps it in memory, for tests and the simulator.

Both refuse a save that would break the rules the core relies on: the term
never goes down, and within one term a recorded vote never changes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from .core import HardState
from .messages import MessageError, validate_node_id

__all__ = [
    "FORMAT_VERSION",
    "FileStorage",
    "MemoryStorage",
    "Storage",
    "StorageError",
    "check_transition",
]

#: The version of the state file format written by :class:`FileStorage`.
FORMAT_VERSION = 1

_FIELDS = frozenset({"version", "term", "voted_for", "checksum"})


class StorageError(Exception):
    """The state file cannot be read or trusted (missing permissions, torn, corrupt).

    The node must not start from term 0 in that case: it might vote a second
    time in a term it already voted in. The text names the file and what to do.
    """


class Storage(Protocol):
    """Where a node keeps its :class:`~flask_goelect.core.HardState`.

    ``save`` must not return before the state is durable: the caller sends a
    vote or announces a candidacy only after it returns.
    """

    def load(self) -> HardState:
        """Return the last saved state, or ``HardState()`` if nothing was ever saved."""
        ...

    def save(self, state: HardState) -> None:
        """Store ``state`` durably; raise ``ValueError`` if it would lower the term."""
        ...

    def close(self) -> None:
        """Release whatever the storage holds; calling it twice is harmless."""
        ...


def check_transition(old: HardState, new: HardState) -> None:
    """Raise if replacing ``old`` with ``new`` would break a rule of the election.

    ``new`` must be well-formed (a non-negative integer term, a valid node id or
    None), the term must not go down, and a vote recorded in a term must not be
    changed or forgotten in that term: either would let a node vote twice.

    :raises TypeError: if a field of ``new`` has the wrong type.
    :raises ValueError: if ``new`` is malformed or the change is not allowed.
    """
    term, voted_for = new.term, new.voted_for
    if not isinstance(term, int) or isinstance(term, bool):
        raise TypeError(f"term must be an int, not {type(term).__name__}")
    if term < 0:
        raise ValueError(f"term must not be negative, got {term}")
    if voted_for is not None:
        validate_node_id(voted_for, "voted_for")
    if term < old.term:
        raise ValueError(f"refusing to lower the term from {old.term} to {term}: terms only grow")
    if term == old.term and old.voted_for is not None and voted_for != old.voted_for:
        raise ValueError(
            f"refusing to change the vote of term {term} from {old.voted_for!r} to"
            f" {voted_for!r}: a node votes at most once per term"
        )


class MemoryStorage:
    """Keeps the state in memory: for tests and the simulator.

    The state survives :meth:`close`, the way a file survives a process, so a
    simulated node can be "restarted" on the same storage. ``saves`` counts the
    calls to :meth:`save` (tests use it to check that state was persisted).
    """

    __slots__ = ("saves", "state")

    def __init__(self, state: HardState | None = None) -> None:
        """Start with ``state`` (default ``HardState()``) as if it had been saved before."""
        #: The last saved state.
        self.state: HardState = HardState() if state is None else state
        #: How many times :meth:`save` was called.
        self.saves: int = 0

    def load(self) -> HardState:
        """Return the last saved state."""
        return self.state

    def save(self, state: HardState) -> None:
        """Keep ``state``, refusing what :class:`FileStorage` refuses (:func:`check_transition`)."""
        if state != self.state:
            check_transition(self.state, state)
            self.state = state
        self.saves += 1

    def close(self) -> None:
        """Do nothing: the state stays available, as a file would."""

    def __repr__(self) -> str:
        return f"MemoryStorage(state={self.state!r}, saves={self.saves})"


def _checksum(fields: dict[str, Any]) -> str:
    # SHA-256 of the canonical JSON of every field but the checksum itself.
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _fsync_directory(path: Path) -> None:
    # The rename is only durable once the directory entry is (POSIX). Platforms
    # that cannot open a directory (Windows) have no O_DIRECTORY: skip there.
    o_directory = getattr(os, "O_DIRECTORY", None)
    if o_directory is None:
        return
    fd = os.open(path, os.O_RDONLY | o_directory)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems do not support fsync on a directory.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


class FileStorage:
    """Keeps the state in a JSON file, written atomically and durably.

    The file holds one JSON object: ``version`` (the format, currently 1),
    ``term``, ``voted_for`` and ``checksum`` (hex SHA-256 of the canonical JSON of
    the other three), so that a torn or corrupted file is detected on load.

    :param path: the state file; its folder is created on the first save.
    :param fsync: flush the file and its folder to the disk on every save. Turn
        it off only where losing the state is acceptable (tests, throwaway nodes).

    Only one elector may use a state file at a time.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        """Use the state file at ``path``; nothing is read or written yet."""
        self.path = Path(os.fspath(path))
        self.fsync = fsync
        # The last state known to be on disk; None until loaded or saved.
        self._current: HardState | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"FileStorage({str(self.path)!r}, fsync={self.fsync})"

    def _error(self, problem: str) -> StorageError:
        return StorageError(
            f"state file '{self.path}' {problem}. It holds this node's term and vote:"
            " restore it from a backup, or delete it only if this node's votes can be"
            " forgotten (no election it voted in is still running)."
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self!r} is closed")

    def load(self) -> HardState:
        """Read the state file; a missing file is ``HardState()``.

        :raises StorageError: if the file cannot be read, or is empty, torn,
            corrupt, of another format version or holds invalid values.
        """
        with self._lock:
            self._check_open()
            self._current = self._read()
            return self._current

    def _read(self) -> HardState:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return HardState()
        except OSError as exc:
            raise self._error(f"cannot be read ({exc.strerror or exc})") from exc
        if not raw.strip():
            raise self._error("is empty (a write was cut short?)")
        try:
            data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError
            raise self._error(f"is not valid JSON, it may be torn or corrupt ({exc})") from exc
        if not isinstance(data, dict):
            raise self._error(f"holds a JSON {type(data).__name__}, not an object")
        if set(data) != _FIELDS:
            missing = sorted(_FIELDS - set(data))
            unknown = sorted(set(data) - _FIELDS)
            raise self._error(f"has missing fields {missing} or unknown fields {unknown[:5]}")
        version = data["version"]
        if version != FORMAT_VERSION or not isinstance(version, int) or isinstance(version, bool):
            raise self._error(
                f"has format version {version!r}; this version of flask-goelect reads"
                f" version {FORMAT_VERSION} only"
            )
        fields = {k: v for k, v in data.items() if k != "checksum"}
        checksum = data["checksum"]
        if not isinstance(checksum, str) or not hmac.compare_digest(checksum, _checksum(fields)):
            raise self._error("fails its checksum: it is corrupt")
        term, voted_for = data["term"], data["voted_for"]
        if not isinstance(term, int) or isinstance(term, bool) or term < 0:
            raise self._error(f"has an invalid term {term!r}: it must be a non-negative integer")
        if voted_for is not None:
            try:
                validate_node_id(voted_for, "voted_for")
            except MessageError as exc:
                raise self._error(f"has an invalid voted_for: {exc}") from exc
        return HardState(term=term, voted_for=voted_for)

    def save(self, state: HardState) -> None:
        """Write ``state`` atomically and, unless ``fsync=False``, durably.

        Writing the state that is already on disk does nothing. If this raises
        before the new file is renamed over the old one, the file still holds
        the previous state. If only the fsync of the folder fails, after the
        rename, the file already holds the new state (a later :meth:`load` reads
        it), but the rename may not be durable: after a crash of the machine the
        file may hold either state. Either way the caller must not send anything
        that depends on the new state (the elector stops).

        :raises ValueError: if ``state`` would lower the term or change the vote
            of the current term (see :func:`check_transition`).
        :raises StorageError: if the existing file is corrupt (it is not
            overwritten: the node's past votes would be lost).
        :raises OSError: if the file cannot be written.
        """
        with self._lock:
            self._check_open()
            if self._current is None:
                self._current = self._read()
            if state == self._current:
                return
            check_transition(self._current, state)
            self._write(state)
            self._current = state

    def _write(self, state: HardState) -> None:
        fields: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "term": state.term,
            "voted_for": state.voted_for,
        }
        fields["checksum"] = _checksum(fields)
        payload = (json.dumps(fields, sort_keys=True, separators=(",", ":")) + "\n").encode()
        folder = self.path.parent
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                _fsync_directory(folder.parent)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp_name, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        if self.fsync:
            _fsync_directory(folder)

    def close(self) -> None:
        """Stop using the file; later calls to :meth:`load` or :meth:`save` raise."""
        with self._lock:
            self._closed = True
