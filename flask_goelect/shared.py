"""The record a node's elector process publishes for the node's other processes.

The process that runs a node's elector writes every new snapshot to a small
memory-mapped file next to the state file (``<state file>.node``); every other
process of the node (the other workers of the server) reads it from there, so
that ``elect.is_leader``, ``@leader_only`` views and the routes agree in every
worker. The lease's expiry in it is a time on :func:`flask_goelect.clock.now`,
which every process of the machine shares: a reader checks the lease on its
own, and a record left behind by a dead elector stops being a lease by itself.

The file is a seqlock: the writer makes the sequence number odd, writes the
payload and its CRC-32, then makes the number even again; a reader retries
while the number is odd, changes under it, or the CRC does not match (which
also covers hardware that reorders the writer's stores). A reader that finds
the same even number as last time reuses the record it decoded then: one
8-byte read per check. A record that stays incomplete (its writer was stopped
or killed in the middle of a write) is never returned: after a few
milliseconds of retries the reader falls back to the last complete record it
read, which its lease still bounds. A complete record that cannot be decoded
(another version's, or a damaged file) reads as no record: the node then looks
stopped in that process, never leading.

Only one process writes (the holder of the elector lock, see
:mod:`flask_goelect._lock`). The record also says which process wrote it, so
that readers can tell a live elector from a record left by a dead one.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import clock
from .state import Snapshot, State

__all__ = ["BOOT_ID", "RECORD_SIZE", "NodeRecord", "SharedRecord", "record_path"]

#: The size of the record file: room for a snapshot with many tags and peers.
RECORD_SIZE = 64 * 1024
#: After the record: one 8-byte count per member process of the node (indexed by
#: its member byte, see :mod:`flask_goelect._lock`), of its leader-only calls running.
_SLOTS = 257
_SLOT = struct.Struct("<Q")
#: Then, per member byte, the pid of the process that holds it (written at its join).
_PIDS = RECORD_SIZE + _SLOTS * _SLOT.size
_FILE_SIZE = _PIDS + _SLOTS * _SLOT.size

_MAGIC = b"goelect\x01"
_HEADER = struct.Struct("<8sQII")  # magic, sequence, payload length, CRC-32
_SEQ = struct.Struct("<Q")
_SEQ_OFFSET = 8
_MAX_PAYLOAD = RECORD_SIZE - _HEADER.size
#: Compact JSON, made once (``json.dumps`` with options builds an encoder per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"))
#: How long a reader retries a record being written before it falls back to
#: the last complete one (a write takes microseconds).
_RETRY_FOR = 0.01

_log = logging.getLogger("flask_goelect")


def _boot_id() -> str:
    """This boot of the machine.

    On Linux, the kernel's random boot id. Elsewhere, the wall-clock time at
    which the monotonic clock started, to the second (``origin:<seconds>``):
    it moves only as much as the wall clock is stepped, and a reboot moves it
    by the whole time the machine was down and booting.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return f"origin:{time.time() - clock.now():.0f}"


#: How far two ``origin:`` boot ids may be apart and still be the same boot.
_ORIGIN_TOLERANCE = 30.0


def same_boot(a: str, b: str) -> bool:
    """Whether two boot ids name the same boot of the machine."""
    if a.startswith("origin:") and b.startswith("origin:"):
        return abs(float(a[7:]) - float(b[7:])) < _ORIGIN_TOLERANCE
    return bool(a) and a == b


#: This boot of the machine: a record's times are only read on the boot that wrote them.
BOOT_ID = _boot_id()


def record_path(state_file: str | os.PathLike[str]) -> Path:
    """The record file of the node whose state is in ``state_file``."""
    path = Path(state_file)
    return path.with_name(path.name + ".node")


@dataclass(frozen=True)
class NodeRecord:
    """What the elector process of a node last published.

    ``pid`` is the elector's process; ``running`` is false once it stopped;
    ``handoff`` is true while it hands the elector over to another process of
    the node (the node keeps its role and lease meanwhile); ``address`` is
    where it answers the node's other processes (:mod:`flask_goelect.local`);
    ``stepping_down`` is true while a stopping leader drains its load balancer
    (``GOELECT_HANDOVER_DRAIN``); ``boot`` identifies the machine's boot it was
    written in (its lease is a time on that boot's clock: a record left from an
    earlier boot must not be taken for a lease).
    """

    snapshot: Snapshot
    pid: int
    running: bool = True
    handoff: bool = False
    address: str = ""
    stepping_down: bool = False
    boot: str = field(default_factory=lambda: BOOT_ID)
    #: The leader is about to hand leadership to another node: no process of the
    #: node starts a leader-only call (see :class:`flask_goelect.state.InFlight`).
    gate_closed: bool = False
    #: Written with ``handoff``, once the elector stopped stepping: the end of the
    #: promise it kept (:attr:`flask_goelect.core.Node.promise_until`, on this
    #: boot's clock), which the next process keeps instead of a fresh one.
    promise_until: float | None = None
    #: Written with ``promise_until``: until when the stopped elector still kept
    #: the guard of its start (no vote at all, not even a transfer's).
    started_until: float | None = None

    def to_json(self) -> dict[str, Any]:
        s = self.snapshot
        return {
            "node_id": s.node_id,
            "state": s.state.value,
            "term": s.term,
            "leader_id": s.leader_id,
            "leader_address": s.leader_address,
            "leader_tags": dict(s.leader_tags),
            "lease_until": s.lease_until,
            "voters": list(s.voters),
            "observers": list(s.observers),
            "pid": self.pid,
            "running": self.running,
            "handoff": self.handoff,
            "address": self.address,
            "stepping_down": self.stepping_down,
            "boot": self.boot,
            "gate_closed": self.gate_closed,
            "promise_until": self.promise_until,
            "started_until": self.started_until,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeRecord:
        snapshot = Snapshot(
            node_id=str(data["node_id"]),
            state=State(data["state"]),
            term=int(data["term"]),
            leader_id=data["leader_id"],
            leader_address=str(data["leader_address"]),
            leader_tags={str(k): str(v) for k, v in data["leader_tags"].items()},
            lease_until=float(data["lease_until"]),
            voters=tuple(data["voters"]),
            observers=tuple(data["observers"]),
        )
        return cls(
            snapshot,
            int(data["pid"]),
            bool(data["running"]),
            bool(data["handoff"]),
            str(data.get("address", "")),
            bool(data.get("stepping_down", False)),
            str(data.get("boot", "")),
            bool(data.get("gate_closed", False)),
            None if data.get("promise_until") is None else float(data["promise_until"]),
            None if data.get("started_until") is None else float(data["started_until"]),
        )

    @property
    def this_boot(self) -> bool:
        """Whether it was written since the machine last booted (its times mean something)."""
        return same_boot(self.boot, BOOT_ID)


class SharedRecord:
    """The record file of one node, mapped into this process.

    :param path: the file (created, zero-filled, if missing).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.pid = os.getpid()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            if os.fstat(fd).st_size < _FILE_SIZE:
                os.ftruncate(fd, _FILE_SIZE)  # the same size from every process: no race
            self._map = mmap.mmap(fd, _FILE_SIZE)
        finally:
            os.close(fd)
        self._write_lock = threading.Lock()
        # (sequence number, the record read at it): one attribute, replaced whole,
        # so that a reader in another thread never pairs a number with an older record.
        self._cache: tuple[int, NodeRecord | None] = (-1, None)
        # A sequence number this reader gave up on (its writer died mid-write):
        # not waited for again until the number changes.
        self._stuck = -1

    def __repr__(self) -> str:
        return f"<SharedRecord {str(self.path)!r}>"

    def close(self) -> None:
        self._map.close()

    def write(self, record: NodeRecord) -> None:
        """Publish ``record`` (only the holder of the node's elector lock calls this)."""
        payload = _ENCODER.encode(record.to_json()).encode()
        if len(payload) > _MAX_PAYLOAD:
            raise ValueError(f"the node's record is {len(payload)} bytes; at most {_MAX_PAYLOAD}")
        with self._write_lock:
            m = self._map
            magic, seq, _, _ = _HEADER.unpack_from(m, 0)
            if magic != _MAGIC:
                seq = 0
            seq += 1 if seq % 2 == 0 else 2  # odd: being written
            _SEQ.pack_into(m, _SEQ_OFFSET, seq)
            m[_HEADER.size : _HEADER.size + len(payload)] = payload
            _HEADER.pack_into(m, 0, _MAGIC, seq, len(payload), zlib.crc32(payload))
            _SEQ.pack_into(m, _SEQ_OFFSET, seq + 1)  # even: complete

    def set_running_calls(self, slot: int, count: int) -> None:
        """This member process's count of leader-only calls running (it alone writes it)."""
        _SLOT.pack_into(self._map, RECORD_SIZE + slot * _SLOT.size, count)

    def running_calls(self, slots: Iterable[int]) -> int:
        """How many leader-only calls the member processes of ``slots`` have running."""
        m = self._map
        return sum(_SLOT.unpack_from(m, RECORD_SIZE + s * _SLOT.size)[0] for s in slots)

    def set_member_pid(self, slot: int, pid: int) -> None:
        """Say which process holds member byte ``slot`` (the process itself writes it)."""
        _SLOT.pack_into(self._map, _PIDS + slot * _SLOT.size, pid)

    def member_pid(self, slot: int) -> int:
        """The process that last said it holds member byte ``slot`` (0: none said)."""
        pid: int = _SLOT.unpack_from(self._map, _PIDS + slot * _SLOT.size)[0]
        return pid

    def read(self, *, fresh: bool = False) -> NodeRecord | None:
        """The last complete record, or None if none was ever written (or it cannot
        be decoded).

        Never returns a record being written: while the sequence number is odd,
        changes under the reader, or the checksum fails, it retries, for up to
        ``_RETRY_FOR`` seconds; then it returns the last complete record this
        reader saw (None if it saw none), or None if ``fresh`` (a writer that died
        inside a write: what this reader saw last may be far older than what the
        writer wrote since).
        """
        m = self._map
        cache = self._cache
        seq = _SEQ.unpack_from(m, _SEQ_OFFSET)[0]
        if seq == cache[0]:
            return cache[1]
        if seq == self._stuck:
            return None if fresh else cache[1]
        give_up = None
        while True:
            magic, seq, length, crc = _HEADER.unpack_from(m, 0)
            if magic != _MAGIC:
                return None
            if not seq % 2 and length <= _MAX_PAYLOAD:
                payload = bytes(m[_HEADER.size : _HEADER.size + length])
                if _SEQ.unpack_from(m, _SEQ_OFFSET)[0] == seq and zlib.crc32(payload) == crc:
                    record = self._decode(payload)
                    self._cache = (seq, record)
                    return record
            now = time.monotonic()
            if give_up is None:
                give_up = now + _RETRY_FOR
            elif now >= give_up:
                self._stuck = seq
                return None if fresh else cache[1]
            os.sched_yield()

    def _decode(self, payload: bytes) -> NodeRecord | None:
        try:
            return NodeRecord.from_json(json.loads(payload))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            _log.warning(
                "flask-goelect: the node's record %r cannot be read (%s); this process"
                " sees the node stopped until its elector writes it again",
                str(self.path),
                exc,
            )
            return None
