"""The record an elector process publishes for the other processes of its node (``shared``)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from live_nodes import make_app
from node_procs import child_env

from flask_goelect import LeaderElect, shared
from flask_goelect.node import MemberView
from flask_goelect.shared import NodeRecord, SharedRecord, record_path
from flask_goelect.state import Snapshot, State


def snapshot(term: int = 3, node_id: str = "n1", **changes: Any) -> Snapshot:
    fields: dict[str, Any] = {
        "node_id": node_id,
        "state": State.LEADER,
        "term": term,
        "leader_id": node_id,
        "leader_address": "http://127.0.0.1:1",
        "leader_tags": {"zone": "a"},
        "lease_until": time.monotonic() + 60,
        "voters": ("n1", "n2", "n3"),
        "observers": (),
        **changes,
    }
    return Snapshot(**fields)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return record_path(tmp_path / "n1.json")


def test_record_path() -> None:
    assert record_path("/var/lib/app/n1.json") == Path("/var/lib/app/n1.json.node")


def test_round_trip(path: Path) -> None:
    writer, reader = SharedRecord(path), SharedRecord(path)
    try:
        assert reader.read() is None  # nothing written yet
        record = NodeRecord(snapshot(), 1234, address="\0x", stepping_down=True)
        writer.write(record)
        assert reader.read() == record
        later = NodeRecord(snapshot(4, state=State.FOLLOWER), 1234, running=False, handoff=True)
        writer.write(later)
        assert reader.read() == later
        assert SharedRecord(path).read() == later  # a process that maps it later
        assert os.stat(path).st_size >= shared.RECORD_SIZE  # and the members' slots after it
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        writer.close()
        reader.close()


def test_a_reader_decodes_each_record_once(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer, reader = SharedRecord(path), SharedRecord(path)
    writer.write(NodeRecord(snapshot(), 1))
    decoded: list[bytes] = []
    real = json.loads

    def counting(data: Any, *args: Any, **kwargs: Any) -> Any:
        decoded.append(data)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(shared.json, "loads", counting)
    first = reader.read()
    assert reader.read() is first and reader.read() is first
    assert len(decoded) == 1
    writer.write(NodeRecord(snapshot(5), 1))
    assert reader.read() is not first and len(decoded) == 2
    assert reader.read() is reader.read() and len(decoded) == 2


def _header(path: Path) -> tuple[bytes, int, int, int]:
    with open(path, "rb") as f:
        magic, seq, length, crc = struct.unpack("<8sQII", f.read(24))
    return magic, seq, length, crc


def _poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_a_record_being_written_is_never_returned(path: Path) -> None:
    # The writer stopped (SIGSTOP) or died (SIGKILL) in the middle of a write: the
    # number stays odd and the payload is half new. A reader never returns it,
    # and does not hang: it falls back to the last complete record it read.
    writer, reader, fresh = SharedRecord(path), SharedRecord(path), SharedRecord(path)
    good = NodeRecord(snapshot(3), 1)
    writer.write(good)
    assert reader.read() == good
    _, seq, _, _ = _header(path)
    _poke(path, 8, struct.pack("<Q", seq + 1))  # odd: being written
    _poke(path, 24, b'{"node_id":"n1","state":"follower","term":9')  # half a payload
    for who, expected in ((reader, good), (fresh, None)):
        started = time.monotonic()
        assert who.read() == expected
        assert time.monotonic() - started < 1.0
        # Given up on once: the next read does not wait again.
        started = time.monotonic()
        assert who.read() == expected
        assert time.monotonic() - started < 0.005
    # The next writer (the process that takes the elector over) completes it.
    taken_over = NodeRecord(snapshot(4, state=State.FOLLOWER), 2)
    SharedRecord(path).write(taken_over)
    assert reader.read() == taken_over and fresh.read() == taken_over
    assert _header(path)[1] % 2 == 0


def test_a_record_with_a_bad_checksum_is_retried_then_never_returned(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, reader = SharedRecord(path), SharedRecord(path)
    good = NodeRecord(snapshot(3), 1)
    writer.write(good)
    assert reader.read() == good
    newer = NodeRecord(snapshot(4), 1)
    payload = json.dumps(newer.to_json(), separators=(",", ":")).encode()
    _, seq, _, _ = _header(path)
    # An even number, but the checksum of another payload: what a reader on a
    # weakly ordered machine may see while the writer's stores land.
    _poke(path, 0, struct.pack("<8sQII", b"goelect\x01", seq + 2, len(payload), 0))
    _poke(path, 24, payload)
    retries = []

    def writer_lands() -> None:
        retries.append(1)
        if len(retries) == 3:
            _poke(path, 20, struct.pack("<I", zlib.crc32(payload)))

    monkeypatch.setattr(shared.os, "sched_yield", writer_lands)
    assert reader.read() == newer
    assert len(retries) == 3
    # A checksum that never matches: the last good record, never the bad one.
    retries.clear()
    monkeypatch.setattr(shared.os, "sched_yield", lambda: retries.append(1))
    _poke(path, 0, struct.pack("<8sQII", b"goelect\x01", seq + 4, len(payload), 0))
    assert reader.read() == newer and retries


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"node_id": "n1"}',
        b'{"node_id":"n1","state":"emperor","term":1,"leader_id":null,"leader_address":"",'
        b'"leader_tags":{},"lease_until":0,"voters":[],"observers":[],"pid":1,"running":true,'
        b'"handoff":false}',
        b'{"node_id":"n1","state":"leader","term":1,"leader_id":null,"leader_address":"",'
        b'"leader_tags":[],"lease_until":0,"voters":[],"observers":[],"pid":1,"running":true,'
        b'"handoff":false}',
    ],
)
def test_a_complete_record_that_cannot_be_decoded_reads_as_none(
    path: Path, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # Another version's record, or a damaged file: the process sees the node
    # stopped (never leading), and keeps serving.
    SharedRecord(path).write(NodeRecord(snapshot(), 1))
    _, seq, _, _ = _header(path)
    _poke(
        path, 0, struct.pack("<8sQII", b"goelect\x01", seq + 2, len(payload), zlib.crc32(payload))
    )
    _poke(path, 24, payload)
    reader = SharedRecord(path)
    assert reader.read() is None
    assert reader.read() is None
    assert sum("cannot be read" in r.getMessage() for r in caplog.records) == 1


def test_a_cached_number_is_never_paired_with_an_older_record(path: Path) -> None:
    # Another thread reads while this one stores what it read: it must get the
    # newest record or read the file itself, never the number of the new record
    # with the record before it.
    writer = SharedRecord(path)
    writer.write(NodeRecord(snapshot(1), 1))
    seen: list[int] = []

    class Interleaved(SharedRecord):
        armed = False

        def __setattr__(self, name: str, value: Any) -> None:
            super().__setattr__(name, value)
            if Interleaved.armed and name.startswith("_"):
                # "Another thread" reads right after the reader's first store.
                Interleaved.armed = False
                record = self.read()
                if record is not None:
                    seen.append(record.snapshot.term)

    reader = Interleaved(path)
    assert reader.read() is not None
    writer.write(NodeRecord(snapshot(2), 1))
    Interleaved.armed = True
    try:
        record = reader.read()
    finally:
        Interleaved.armed = False
    assert record is not None and record.snapshot.term == 2
    assert seen and all(term == 2 for term in seen), seen


def test_member_view_ignores_a_record_of_another_node(path: Path) -> None:
    app = make_app("n1", GOELECT_STATE_FILE=str(path.with_suffix("")))
    LeaderElect(app)
    runner = app.extensions["goelect"].node
    record = SharedRecord(path)
    view = MemberView(runner, record)
    assert view.snapshot.state is State.STOPPED and not view.running and not view.is_leader()
    record.write(NodeRecord(snapshot(7, node_id="n2"), os.getpid()))
    assert view.snapshot.state is State.STOPPED and not view.running and not view.is_leader()
    record.write(NodeRecord(snapshot(7), os.getpid()))
    assert view.snapshot.term == 7 and view.running and view.is_leader()
    # A record left by a process that is gone is not a running elector; its lease
    # still bounds what it says.
    record.write(NodeRecord(snapshot(7), 2**22 + 12345))
    assert not view.running and view.is_leader()
    record.write(NodeRecord(snapshot(7, lease_until=time.monotonic() - 1), os.getpid()))
    assert view.snapshot.state is State.LEADER and not view.is_leader()
    assert not runner.stepping_down
    view_status = view.status()  # no elector process to ask: the record, marked
    assert view_status["running"] is False and "error" in view_status


WRITER = """
import sys, time
from flask_goelect.shared import NodeRecord, SharedRecord
from flask_goelect.state import Snapshot, State

record = SharedRecord(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
term = 0
while time.monotonic() < deadline:
    term += 1
    # Every field says the term, and the payload's length changes with it.
    tags = {"term": str(term), "pad": "x" * (term % 977)}
    snap = Snapshot("n1", State.LEADER, term, "n1", f"http://{term}", tags, float(term),
                    ("n1",) * (1 + term % 5), ())
    record.write(NodeRecord(snap, term))
print(term, flush=True)
"""


def test_concurrent_writer_and_reader_processes_never_see_a_torn_record(path: Path) -> None:
    SharedRecord(path).close()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "1.5"],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    reader = SharedRecord(path)
    terms: list[int] = []
    try:
        deadline = time.monotonic() + 10
        while writer.poll() is None and time.monotonic() < deadline:
            record = reader.read()
            if record is None:
                continue
            s = record.snapshot
            term = s.term
            assert s.leader_tags == {"term": str(term), "pad": "x" * (term % 977)}
            assert (s.leader_address, s.lease_until, record.pid) == (f"http://{term}", term, term)
            assert s.voters == ("n1",) * (1 + term % 5)
            assert not terms or term >= terms[-1]  # never an older record
            if not terms or term != terms[-1]:
                terms.append(term)
        written = int(writer.communicate(timeout=10)[0])
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    assert written > 1000 and len(terms) > 20, (written, len(terms))


def test_a_fresh_read_does_not_fall_back_on_what_this_reader_saw_last(tmp_path: Path) -> None:
    """A writer died inside a write: a plain read gives the last record this reader
    saw, which may be far older than the node's last step; a fresh read (a process
    about to resume the node from it) gives None."""
    path = record_path(tmp_path / "n1.json")
    writer, reader = SharedRecord(path), SharedRecord(path)
    snap = Snapshot("n1", State.FOLLOWER, 5, "n2", "http://n2", {}, 0.0, ("n1", "n2"), ())
    writer.write(NodeRecord(snap, 111, handoff=True, promise_until=1.0))
    seen = reader.read()
    assert seen is not None and seen.handoff
    writer.write(NodeRecord(snap, 222))
    seq = struct.unpack_from("<Q", path.read_bytes(), 8)[0]
    with open(path, "r+b") as f:  # odd: being written, for ever (the writer died)
        f.seek(8)
        f.write(struct.pack("<Q", seq + 1))
    assert reader.read(fresh=True) is None
    assert reader.read() == seen
    assert reader.read(fresh=True) is None


def test_a_resume_from_a_torn_record_carries_no_promise(tmp_path: Path) -> None:
    """The process taking over after the elector died inside a record write has only
    the last record it saw: here a hand-off record of long ago, whose promise is not
    the node's last (the dead process acked heartbeats since without a new record).
    It resumes the term and leader from it, never the promise or the start guard."""
    import types

    from flask_goelect import clock
    from flask_goelect.node import NodeRunner

    path = record_path(tmp_path / "n1.json")
    old, member, new = SharedRecord(path), SharedRecord(path), SharedRecord(path)
    snap = Snapshot("n1", State.FOLLOWER, 5, "n2", "http://n2", {}, 0.0, ("n1", "n2", "n3"), ())
    now = clock.now()
    old.write(NodeRecord(snap, 111, handoff=True, promise_until=now - 10, started_until=now))
    assert member.read().handoff  # type: ignore[union-attr]
    new.write(NodeRecord(snap, 222, address="sock"))
    seq = struct.unpack_from("<Q", path.read_bytes(), 8)[0]
    with open(path, "r+b") as f:  # the new elector dies inside its next write
        f.seek(8)
        f.write(struct.pack("<Q", seq + 1))
    runner = types.SimpleNamespace(settings=types.SimpleNamespace(node_id="n1"))
    resume = NodeRunner._resume(runner, member)  # type: ignore[arg-type]
    assert resume is not None and resume.term == 5 and resume.leader is not None
    assert resume.promise_until is None and resume.started_until is None
    whole = NodeRunner._resume(runner, SharedRecord(path))  # never saw one: nothing
    assert whole is None
