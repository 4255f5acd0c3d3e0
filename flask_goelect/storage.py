"""Stable storage for the election's persistent state: the term and the vote in it.

Raft's one-vote-per-term rule only holds across restarts if ``term`` and
``voted_for`` reach the disk before a vote or a candidacy is announced (Raft
paper §5.2, Figure 2 "persistent state"). A node that forgot its vote could
vote again in the same term and let two leaders win it.

:class:`FileStorage` keeps two checksummed copies of the state in one file, each
in a block of its own, and overwrites the older copy in place at each save (one
write, one ``fdatasync``): a save cut short leaves the other copy intact. It
refuses to load a file in which no copy is valid rather than start again from
term 0.
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
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from .core import HardState
from .messages import MessageError, validate_node_id

__all__ = [
    "BLOCK_SIZE",
    "FORMAT_VERSION",
    "LEGACY_VERSION",
    "FileStorage",
    "MemoryStorage",
    "Storage",
    "StorageError",
    "check_transition",
]

#: The version of the state file format written by :class:`FileStorage`: two
#: copies of the state, each in a block of its own, overwritten in turn.
FORMAT_VERSION = 2

#: The version of the older format, one JSON object replaced by a rename: still
#: read, and replaced by the current format at the first save.
LEGACY_VERSION = 1

#: The size of each copy's block in a version 2 file (one page: a save rewrites
#: one block and never touches the other).
BLOCK_SIZE = 4096

_FIELDS = frozenset({"version", "term", "voted_for", "checksum"})
_FIELDS_V2 = frozenset({"version", "seq", "term", "voted_for", "checksum"})
_BLANK = b" " * (BLOCK_SIZE - 1) + b"\n"

log = logging.getLogger(__name__)


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


def _fsync_opened(path: Path, flags: int) -> None:
    """Open ``path`` read-only with ``flags`` and fsync it; a file system that cannot
    sync what is opened so (a folder, a file opened for reading, a read-only mount)
    is tolerated, an I/O error is raised."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | flags)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    # The rename is only durable once the directory entry is (POSIX). Platforms
    # that cannot open a directory (Windows) have no O_DIRECTORY: skip there.
    o_directory = getattr(os, "O_DIRECTORY", None)
    if o_directory is not None:
        _fsync_opened(path, o_directory)


class FileStorage:
    """Keeps the state in a file of two copies, each overwritten in turn.

    The file is ``2 * BLOCK_SIZE`` bytes: two blocks of :data:`BLOCK_SIZE`, each
    holding one line of JSON padded with spaces: ``version`` (2), ``seq`` (the
    number of the save; the copy with the higher one is the state), ``term``,
    ``voted_for`` and ``checksum`` (hex SHA-256 of the canonical JSON of the other
    four). A block may also be blank (the second one, until the second save).

    The first save creates the file atomically and durably (temporary file,
    fsync, rename, fsync of the folder). Every later save overwrites the block of
    the older copy in place and flushes it with ``fdatasync``: the file's size and
    name do not change, so no metadata is written, and this is several times
    cheaper than a rename (``python -m bench.path``). A save cut short (a crash
    or a power loss during the write) can only damage the block it was writing:
    the load then finds that copy invalid and reads the other one, the state
    before that save, which never returned, so nothing depended on it. A file in
    which no copy is valid is refused.

    A save that fails blanks the block it was writing (the page cache may hold
    the new copy without the disk having it), and a load flushes what it read
    before the node goes on from it. A file deleted or replaced while in use is
    noticed at the next save, which writes it anew (with a warning in the log)
    rather than into the old inode.

    A file of the older format (one JSON object: ``version`` 1, ``term``,
    ``voted_for``, ``checksum``) is read as well, and replaced by this format at
    the first save.

    :param path: the state file; its folder is created on the first save.
    :param fsync: flush the file (and its folder, when it is created) to the disk
        on every save. Turn it off only where losing the state is acceptable
        (tests, throwaway nodes).

    Only one elector may use a state file at a time.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        """Use the state file at ``path``; nothing is read or written yet."""
        self.path = Path(os.fspath(path))
        self.fsync = fsync
        # The last state known to be on disk; None until loaded or saved.
        self._current: HardState | None = None
        # The save number of that state's copy; 0: the file is missing or of the
        # older format, and the next save creates it afresh.
        self._seq = 0
        # The file, open for writing its blocks in place (after the first save),
        # with the process that opened it and the file's identity (device, inode).
        self._fd: int | None = None
        self._fd_pid = 0
        self._fd_identity: tuple[int, int] = (0, 0)
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

        :raises StorageError: if the file cannot be read, or holds no valid copy
            of the state (empty, corrupt, of another format version, invalid
            values).
        """
        with self._lock:
            self._check_open()
            self._current, self._seq = self._read()
            return self._current

    def _read(self) -> tuple[HardState, int]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return HardState(), 0
        except OSError as exc:
            raise self._error(f"cannot be read ({exc.strerror or exc})") from exc
        if self.fsync:
            # What was read may not be on the disk yet: a save of another process
            # (or of this one) whose write reached the page cache but whose flush
            # failed, or never ran (SIGKILL). The state read is the one this node
            # goes on from; a save of the same state would write nothing.
            self._flush_file()
        if not raw.strip():
            raise self._error("is empty (a write was cut short?)")
        if len(raw) != 2 * BLOCK_SIZE:
            return self._parse(raw, LEGACY_VERSION, _FIELDS)[0], 0
        copies: list[tuple[HardState, int]] = []
        problems: list[str] = []
        damaged = False  # a copy that is neither valid nor blank
        for number, start in enumerate((0, BLOCK_SIZE), 1):
            block = raw[start : start + BLOCK_SIZE]
            if not block.strip():
                problems.append(f"copy {number} is blank")
                continue
            try:
                copies.append(self._parse(block, FORMAT_VERSION, _FIELDS_V2))
            except StorageError as exc:
                problems.append(f"copy {number}: {exc.args[0]}")
                damaged = True
        if not copies:
            raise self._error(f"holds no valid copy of the state ({'; '.join(problems)})")
        if len(copies) == 2 and copies[0][1] == copies[1][1]:
            raise self._error(f"holds two copies numbered {copies[0][1]}: it is corrupt")
        state, seq = max(copies, key=lambda copy: copy[1])
        if damaged:
            # The block a save was writing when it was cut short (it never
            # returned): the other copy is the state before it.
            log.warning(
                "state file '%s': one copy is damaged, the other is read (a save cut short?): %s",
                self.path,
                problems[0],
            )
        return state, seq

    def _flush_file(self) -> None:
        try:
            _fsync_opened(self.path, 0)
        except OSError as exc:
            raise self._error(f"cannot be flushed to the disk ({exc.strerror or exc})") from exc

    def _parse(self, raw: bytes, version: int, names: frozenset[str]) -> tuple[HardState, int]:
        """One copy of the state (the whole file in the older format)."""
        try:
            data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError
            raise self._error(f"is not valid JSON, it may be torn or corrupt ({exc})") from exc
        if not isinstance(data, dict):
            raise self._error(f"holds a JSON {type(data).__name__}, not an object")
        if set(data) != names:
            missing = sorted(names - set(data))
            unknown = sorted(set(data) - names)
            raise self._error(f"has missing fields {missing} or unknown fields {unknown[:5]}")
        found = data["version"]
        if found != version or not isinstance(found, int) or isinstance(found, bool):
            raise self._error(
                f"has format version {found!r}; this version of flask-goelect reads"
                f" version {FORMAT_VERSION} (two copies) and {LEGACY_VERSION} (one object)"
            )
        fields = {k: v for k, v in data.items() if k != "checksum"}
        checksum = data["checksum"]
        if not isinstance(checksum, str) or not hmac.compare_digest(checksum, _checksum(fields)):
            raise self._error("fails its checksum: it is corrupt")
        seq = data.get("seq", 0)
        if names is _FIELDS_V2 and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 1):
            raise self._error(f"has an invalid seq {seq!r}: it must be a positive integer")
        term, voted_for = data["term"], data["voted_for"]
        if not isinstance(term, int) or isinstance(term, bool) or term < 0:
            raise self._error(f"has an invalid term {term!r}: it must be a non-negative integer")
        if voted_for is not None:
            try:
                validate_node_id(voted_for, "voted_for")
            except MessageError as exc:
                raise self._error(f"has an invalid voted_for: {exc}") from exc
        return HardState(term=term, voted_for=voted_for), seq

    def save(self, state: HardState) -> None:
        """Write ``state`` and, unless ``fsync=False``, make it durable.

        Writing the state that is already on disk does nothing. If this raises,
        the caller must not send anything that depends on the new state (the
        elector stops). A save in place that raises leaves the other copy, the
        previous state, intact; the next save writes the same block again. When
        the file is created, if only the fsync of the folder fails, after the
        rename, the file already holds the new state (a later :meth:`load` reads
        it), but the rename may not be durable: after a crash of the machine the
        file may hold either state.

        :raises ValueError: if ``state`` would lower the term or change the vote
            of the current term (see :func:`check_transition`).
        :raises StorageError: if the existing file is corrupt (it is not
            overwritten: the node's past votes would be lost).
        :raises OSError: if the file cannot be written.
        """
        with self._lock:
            self._check_open()
            if self._current is None:
                self._current, self._seq = self._read()
            if state == self._current:
                return
            check_transition(self._current, state)
            seq = self._seq + 1
            try:
                if self._seq == 0 or not self._same_file():
                    seq = 1
                    self._create(state)
                else:
                    self._write_block(state, seq)
            except BaseException:
                # What is on disk is not known any more: the next save reads it
                # again (and flushes what it reads) before it writes.
                self._current = None
                raise
            self._current, self._seq = state, seq

    def _block(self, state: HardState, seq: int) -> bytes:
        fields: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "seq": seq,
            "term": state.term,
            "voted_for": state.voted_for,
        }
        fields["checksum"] = _checksum(fields)
        line = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        if len(line) >= BLOCK_SIZE:
            raise ValueError(
                f"a state of {len(line)} bytes does not fit in a block of {BLOCK_SIZE}"
            )
        return line.ljust(BLOCK_SIZE - 1) + b"\n"

    def _same_file(self) -> bool:
        """Whether the file at the path is the one the last save wrote (False: it
        was deleted, or replaced, since; the next save creates it afresh)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._gone("deleted")
        identity = (st.st_dev, st.st_ino)
        if st.st_size != 2 * BLOCK_SIZE:
            return self._gone("replaced")
        if self._fd is not None and self._fd_pid == os.getpid():
            return identity == self._fd_identity or self._gone("replaced")
        # Opened here: after the file's creation, or in a forked child (whose
        # inherited descriptor may since name another file: it is left alone).
        self._fd = None
        fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != identity:  # replaced meanwhile
            os.close(fd)
            return self._gone("replaced")
        self._fd, self._fd_pid, self._fd_identity = fd, os.getpid(), identity
        return True

    def _gone(self, how: str) -> bool:
        """The file the last save wrote was ``how`` (deleted, replaced): False."""
        self._close_fd()
        log.warning("state file '%s' was %s while in use: it is written anew", self.path, how)
        return False

    def _write_block(self, state: HardState, seq: int) -> None:
        # The older copy's block (seq alternates between the two): the newer one,
        # the state on disk, is not touched.
        block = self._block(state, seq)
        fd = self._fd
        assert fd is not None
        offset = (seq - 1) % 2 * BLOCK_SIZE
        try:
            written = 0
            while written < len(block):
                written += os.pwrite(fd, block[written:], offset + written)
            if self.fsync:
                # The data alone: the size and the name stay (macOS has fsync only).
                getattr(os, "fdatasync", os.fsync)(fd)
        except BaseException:
            # The block may hold the new copy in the page cache without it being on
            # the disk (a failed flush): blank it, so that no reader takes a state
            # this save did not make durable. The other copy is the state.
            with contextlib.suppress(OSError):
                os.pwrite(fd, _BLANK, offset)
            raise

    def _create(self, state: HardState) -> None:
        payload = self._block(state, 1) + _BLANK
        folder = self.path.parent
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                _fsync_directory(folder.parent)
        self._close_fd()
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

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and self._fd_pid == os.getpid():
            # (In a forked child the number may name another file by now.)
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Stop using the file; later calls to :meth:`load` or :meth:`save` raise."""
        with self._lock:
            self._closed = True
            self._close_fd()
