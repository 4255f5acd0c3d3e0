"""Tests for the persistent term and vote (DESIGN.md layer 3, ``storage.py``)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from flask_goelect.core import HardState
from flask_goelect.storage import (
    BLOCK_SIZE,
    FileStorage,
    MemoryStorage,
    Storage,
    StorageError,
    check_transition,
)


def canonical_checksum(fields: dict[str, Any]) -> str:
    """The documented checksum, computed independently of the module under test."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def write_state(path: Path, **fields: Any) -> None:
    """Write a state file of the older format (one object, version 1) with a
    *valid* checksum over arbitrary field values: the loader still reads it."""
    fields.setdefault("version", 1)
    fields.setdefault("term", 1)
    fields.setdefault("voted_for", None)
    fields["checksum"] = canonical_checksum(fields)
    path.write_text(json.dumps(fields))


def block(**fields: Any) -> bytes:
    """One copy of the state, as the current format writes it (valid checksum)."""
    fields.setdefault("version", 2)
    fields.setdefault("seq", 1)
    fields.setdefault("term", 1)
    fields.setdefault("voted_for", None)
    fields["checksum"] = canonical_checksum(fields)
    line = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return line.ljust(BLOCK_SIZE - 1) + b"\n"


BLANK = b" " * (BLOCK_SIZE - 1) + b"\n"


def copies(path: Path) -> list[dict[str, Any] | None]:
    """The two copies in a state file of the current format (None: blank)."""
    raw = path.read_bytes()
    assert len(raw) == 2 * BLOCK_SIZE
    out: list[dict[str, Any] | None] = []
    for start in (0, BLOCK_SIZE):
        text = raw[start : start + BLOCK_SIZE].decode().strip()
        out.append(json.loads(text) if text else None)
    return out


def raises_naming(path: Path) -> Any:
    return pytest.raises(StorageError, match=re.escape(str(path)))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.json"


# -- round trip and missing file ------------------------------------------------


def test_missing_file_is_the_initial_state(path: Path) -> None:
    assert FileStorage(path).load() == HardState()
    assert not path.exists(), "load must not create the file"


@pytest.mark.parametrize(
    "state",
    [HardState(0, None), HardState(1, "n1"), HardState(7, None), HardState(2**53 - 1, "a" * 64)],
)
def test_round_trip(path: Path, state: HardState) -> None:
    FileStorage(path).save(state)
    assert FileStorage(path).load() == state


def test_successive_saves_survive_a_new_instance(path: Path) -> None:
    storage = FileStorage(path)
    for state in [HardState(1), HardState(1, "n2"), HardState(2, "n1"), HardState(5)]:
        storage.save(state)
        assert storage.load() == state
        assert FileStorage(path).load() == state


def test_file_format(path: Path) -> None:
    storage = FileStorage(path)
    storage.save(HardState(3, "n2"))
    first, second = copies(path)
    assert second is None, "the second block stays blank until the second save"
    assert first is not None
    assert first == {
        "version": 2,
        "seq": 1,
        "term": 3,
        "voted_for": "n2",
        "checksum": first["checksum"],
    }
    fields = {k: v for k, v in first.items() if k != "checksum"}
    assert first["checksum"] == canonical_checksum(fields)
    # Each save writes the block of the older copy; the newer one is not touched.
    storage.save(HardState(4))
    assert copies(path) == [first, copies(path)[1]]
    assert copies(path)[1] is not None and copies(path)[1]["seq"] == 2  # type: ignore[index]
    storage.save(HardState(4, "n1"))
    newest, older = copies(path)
    assert newest is not None and older is not None
    assert (newest["seq"], newest["term"], newest["voted_for"]) == (3, 4, "n1")
    assert (older["seq"], older["term"], older["voted_for"]) == (2, 4, None)
    # The file is the blocks as written: a copy is readable alone.
    assert path.read_bytes()[BLOCK_SIZE:] == block(seq=2, term=4)


def test_creates_the_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.json"
    FileStorage(path).save(HardState(1, "n1"))
    assert FileStorage(path).load() == HardState(1, "n1")


def test_accepts_str_and_pathlike(path: Path) -> None:
    FileStorage(str(path)).save(HardState(2))
    assert FileStorage(path).load() == HardState(2)


def test_save_leaves_no_temporary_files(path: Path) -> None:
    storage = FileStorage(path)
    for term in range(1, 6):
        storage.save(HardState(term))
    assert os.listdir(path.parent) == [path.name]


def test_saving_the_same_state_again_skips_the_write(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(path)
    storage.save(HardState(4, "n1"))
    calls: list[object] = []
    monkeypatch.setattr(os, "replace", lambda *a: calls.append(a))
    monkeypatch.setattr(os, "pwrite", lambda *a: calls.append(a))
    storage.save(HardState(4, "n1"))
    FileStorage(path).save(HardState(4, "n1"))
    assert calls == []


def test_a_file_of_the_older_format_is_read_then_replaced(path: Path) -> None:
    write_state(path, term=7, voted_for="n1")
    storage = FileStorage(path)
    assert storage.load() == HardState(7, "n1")
    with pytest.raises(ValueError, match="votes at most once"):
        storage.save(HardState(7, "n2"))
    storage.save(HardState(8))
    assert [c["seq"] if c else None for c in copies(path)] == [1, None]
    assert FileStorage(path).load() == HardState(8)


def test_protocol_is_satisfied(path: Path) -> None:
    stores: list[Storage] = [MemoryStorage(), FileStorage(path)]
    for store in stores:
        store.save(HardState(1, "n1"))
        assert store.load() == HardState(1, "n1")
        store.close()


# -- corruption is detected, never read as term 0 -------------------------------


def test_empty_file(path: Path) -> None:
    path.write_bytes(b"")
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "empty" in str(exc.value)
    assert "backup" in str(exc.value)


def test_whitespace_only_file(path: Path) -> None:
    path.write_bytes(b"  \n")
    with raises_naming(path):
        FileStorage(path).load()


def test_truncated_file_at_every_offset(path: Path) -> None:
    FileStorage(path).save(HardState(12, "node-1"))
    good = path.read_bytes()
    body = good.rstrip(b"\n")
    for cut in range(len(body)):
        path.write_bytes(body[:cut])
        with raises_naming(path):
            FileStorage(path).load()
    path.write_bytes(good)
    assert FileStorage(path).load() == HardState(12, "node-1")


@pytest.mark.parametrize("mask", [0x01, 0x04, 0x20, 0x80])
def test_flipped_bits_at_every_offset(path: Path, mask: int) -> None:
    """A flipped bit in a copy makes that copy invalid, never another state: the
    load reads the other copy (the previous state, if the newest was damaged: a
    save cut short looks the same) or refuses the file."""
    storage = FileStorage(path)
    storage.save(HardState(11, "node-1"))
    storage.save(HardState(12, "node-1"))  # the newest copy, in the second block
    good = path.read_bytes()
    line = good.index(b"}") + 1  # the first copy's JSON ends here
    seen = set()
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= mask
        path.write_bytes(bytes(bad))
        try:
            state = FileStorage(path).load()
        except StorageError:
            seen.add("refused")
            continue
        if i < BLOCK_SIZE:
            assert state == HardState(12, "node-1"), i
        else:
            assert state == HardState(11, "node-1"), i
            seen.add("previous")
    assert "previous" in seen
    assert line < BLOCK_SIZE


@pytest.mark.parametrize("mask", [0x01, 0x04, 0x20, 0x80])
def test_flipped_bits_in_a_file_of_the_older_format(path: Path, mask: int) -> None:
    write_state(path, term=12, voted_for="node-1")
    good = path.read_bytes()
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= mask
        path.write_bytes(bytes(bad))
        with raises_naming(path):
            FileStorage(path).load()


def test_bad_checksum(path: Path) -> None:
    first = block(seq=1, term=3, voted_for="n1")
    tampered = first.replace(b'"term":3', b'"term":2')  # valid-looking, not checksummed
    path.write_bytes(tampered + BLANK)
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "checksum" in str(exc.value)
    assert "copy 2 is blank" in str(exc.value)
    # One copy damaged, the other valid: the valid one is read.
    path.write_bytes(tampered + block(seq=2, term=2))
    assert FileStorage(path).load() == HardState(2)
    # Both damaged: refused, naming both.
    path.write_bytes(tampered + block(seq=2, term=2).replace(b'"term":2', b'"term":5'))
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "copy 1" in str(exc.value) and "copy 2" in str(exc.value)


def test_a_legacy_bad_checksum(path: Path) -> None:
    write_state(path, term=3, voted_for="n1")
    data = json.loads(path.read_text())
    data["term"] = 2
    path.write_text(json.dumps(data))
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "checksum" in str(exc.value)


def test_the_copy_with_the_higher_number_is_the_state(path: Path) -> None:
    path.write_bytes(block(seq=7, term=4) + block(seq=6, term=3, voted_for="n2"))
    assert FileStorage(path).load() == HardState(4)
    path.write_bytes(block(seq=7, term=4) + block(seq=8, term=4, voted_for="n2"))
    storage = FileStorage(path)
    assert storage.load() == HardState(4, "n2")
    storage.save(HardState(5))  # seq 9, over the older copy: the first block
    assert [c["seq"] for c in copies(path) if c is not None] == [9, 8]
    assert FileStorage(path).load() == HardState(5)


@pytest.mark.parametrize("seq", [0, -1, True, 1.5, "2", None])
def test_an_invalid_copy_number_makes_the_copy_invalid(path: Path, seq: object) -> None:
    path.write_bytes(block(seq=seq, term=4) + BLANK)
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "seq" in str(exc.value)


def test_two_copies_with_the_same_number_are_refused(path: Path) -> None:
    path.write_bytes(block(seq=3, term=4) + block(seq=3, term=5))
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "two copies numbered 3" in str(exc.value)


def test_blank_copies_are_refused(path: Path) -> None:
    path.write_bytes(BLANK + b"\0" * BLOCK_SIZE)
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "no valid copy" in str(exc.value)


def test_a_save_cut_short_at_any_byte_leaves_the_previous_state(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash or a power loss while a block is written: the block holds a
    prefix of the new copy over the rest of the old one. The load reads the
    other copy, the state before that save, and says one copy is damaged."""
    storage = FileStorage(path)
    storage.save(HardState(5, "n1"))
    storage.save(HardState(6))  # the state; the first block holds the older copy
    good = path.read_bytes()
    new = block(seq=3, term=6, voted_for="n3")  # what the next save writes there
    end = new.index(b"}") + 1
    for cut in range(end + 1):
        torn = new[:cut] + good[cut:BLOCK_SIZE]
        path.write_bytes(torn + good[BLOCK_SIZE:])
        caplog.clear()
        state = FileStorage(path).load()
        if torn[:end] != new[:end]:  # (the old copy's last bytes may complete it)
            assert state == HardState(6), cut
            if torn != good[:BLOCK_SIZE]:
                assert "one copy is damaged" in caplog.text, cut
        else:
            assert state == HardState(6, "n3")


@pytest.mark.parametrize("checksum", [None, 0, "", "00" * 32, ["x"]])
def test_invalid_checksum_values(path: Path, checksum: object) -> None:
    path.write_text(json.dumps({"version": 1, "term": 1, "voted_for": None, "checksum": checksum}))
    with raises_naming(path):
        FileStorage(path).load()


@pytest.mark.parametrize("version", [0, 2, "1", 1.0, True, None])
def test_wrong_version(path: Path, version: object) -> None:
    write_state(path, version=version)
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "version" in str(exc.value)


@pytest.mark.parametrize("term", [True, False, "3", -1, 1.0, 2.5, None, [1], {"t": 1}])
def test_invalid_term(path: Path, term: object) -> None:
    write_state(path, term=term)
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "term" in str(exc.value)


@pytest.mark.parametrize("voted_for", ["", "a" * 65, "bad id", "-n1", "n1\n", 1, True, ["n1"]])
def test_invalid_voted_for(path: Path, voted_for: object) -> None:
    write_state(path, voted_for=voted_for)
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "voted_for" in str(exc.value)


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        "null",
        "3",
        '"state"',
        "{}",
        '{"term": 1, "voted_for": null}',
        "not json at all",
        "\ufeff{}",
        '{"a": ' * 100_000,
    ],
)
def test_not_a_state_object(path: Path, content: str) -> None:
    path.write_text(content, encoding="utf-8")
    with raises_naming(path):
        FileStorage(path).load()


def test_missing_and_unknown_fields(path: Path) -> None:
    fields: dict[str, Any] = {"version": 1, "term": 1}
    fields["checksum"] = canonical_checksum(fields)
    path.write_text(json.dumps(fields))
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "voted_for" in str(exc.value)
    write_state(path, extra=1)
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "extra" in str(exc.value)


def test_duplicate_keys_are_refused(path: Path) -> None:
    write_state(path, term=3)
    text = path.read_text().rstrip().removesuffix("}") + ',"term":9}'
    path.write_text(text)
    with raises_naming(path):
        FileStorage(path).load()
    line = block(term=3).rstrip().removesuffix(b"}") + b',"term":9}'
    path.write_bytes(line.ljust(BLOCK_SIZE - 1) + b"\n" + BLANK)
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "duplicate key" in str(exc.value)


def test_invalid_utf8(path: Path) -> None:
    path.write_bytes(b'{"term": "\xff"}')
    with raises_naming(path):
        FileStorage(path).load()


def test_unreadable_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FileStorage(path).save(HardState(1))

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    # chmod 0 would not stop root, so refuse the read directly.
    monkeypatch.setattr(Path, "read_bytes", denied)
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "Permission denied" in str(exc.value)


def test_save_does_not_overwrite_a_corrupt_file(path: Path) -> None:
    path.write_bytes(b'{"term": 9')
    with raises_naming(path):
        FileStorage(path).save(HardState(1))
    assert path.read_bytes() == b'{"term": 9'


def test_a_directory_in_place_of_the_file(path: Path) -> None:
    path.mkdir()
    with raises_naming(path):
        FileStorage(path).load()


# -- atomicity and durability ---------------------------------------------------


@pytest.mark.parametrize("fail_at", ["replace", "fsync", "write"])
def test_a_failed_first_save_keeps_the_old_file(
    path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    """The first save creates the file by a rename (here over a file of the older
    format): a failure before the rename leaves the old file."""
    write_state(path, term=4, voted_for="n1")
    old = path.read_bytes()
    storage = FileStorage(path)
    storage.load()

    def boom(*args: object) -> Any:
        raise OSError(5, f"simulated {fail_at} failure")

    with monkeypatch.context() as m:
        m.setattr(os, fail_at, boom)
        with pytest.raises(OSError, match="simulated"):
            storage.save(HardState(5, "n2"))

    assert path.read_bytes() == old
    assert FileStorage(path).load() == HardState(4, "n1")
    assert os.listdir(path.parent) == [path.name], "the temporary file must be removed"
    # The failed state was not remembered as written: saving it again writes it.
    storage.save(HardState(5, "n2"))
    assert FileStorage(path).load() == HardState(5, "n2")
    assert len(path.read_bytes()) == 2 * BLOCK_SIZE, "now in the current format"


@pytest.mark.parametrize("fail_at", ["pwrite", "fdatasync", "half-write"])
def test_a_failed_save_in_place_keeps_the_newest_copy(
    path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    storage = FileStorage(path)
    storage.save(HardState(4))
    storage.save(HardState(4, "n1"))  # the newest copy, in the second block
    newest = path.read_bytes()[BLOCK_SIZE:]
    real_pwrite = os.pwrite

    def boom(*args: Any) -> int:
        if fail_at == "half-write":
            fd, data, offset = args
            real_pwrite(fd, data[:100], offset)  # some bytes reached the file
        raise OSError(5, f"simulated {fail_at} failure")

    with monkeypatch.context() as m:
        if fail_at == "fdatasync":
            m.setattr(os, "fdatasync", boom)
        else:
            m.setattr(os, "pwrite", boom)
        with pytest.raises(OSError, match="simulated"):
            storage.save(HardState(5, "n2"))

    assert path.read_bytes()[BLOCK_SIZE:] == newest, "the newest copy is never touched"
    # Even where the new copy reached the page cache (the flush failed), it was
    # blanked: no reader takes a state the save did not make durable.
    assert FileStorage(path).load() == HardState(4, "n1")
    # Saving again writes the same block (the newest copy stays until it returns).
    storage.save(HardState(5, "n2"))
    assert path.read_bytes()[BLOCK_SIZE:] == newest
    assert FileStorage(path).load() == HardState(5, "n2")


def test_file_and_directory_are_fsynced_around_the_rename(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_state(path, term=1)  # the folder exists: only this file's folder is synced
    storage = FileStorage(path)
    storage.load()
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        events.append((f"fsync-{kind}", st.st_ino))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    storage.save(HardState(2, "n1"))

    assert [e[0] for e in events] == ["fsync-file", "replace", "fsync-dir"]
    # The file synced is the one renamed onto the target, and the folder is the target's.
    assert events[0][1] == events[1][1] == path.stat().st_ino
    assert events[2][1] == path.parent.stat().st_ino


def test_a_save_in_place_writes_one_block_and_flushes_its_data(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(path)
    storage.save(HardState(1))
    inode = path.stat().st_ino
    calls: list[tuple[str, Any]] = []
    real_pwrite, real_fdatasync = os.pwrite, os.fdatasync

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        calls.append(("pwrite", (os.fstat(fd).st_ino, len(data), offset)))
        return real_pwrite(fd, data, offset)

    def fdatasync(fd: int) -> None:
        calls.append(("fdatasync", os.fstat(fd).st_ino))
        real_fdatasync(fd)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    for name in ("fsync", "replace", "rename", "write"):
        monkeypatch.setattr(os, name, lambda *a, name=name: calls.append((name, a)))
    storage.save(HardState(2, "n1"))
    storage.save(HardState(3))
    assert calls == [
        ("pwrite", (inode, BLOCK_SIZE, BLOCK_SIZE)),
        ("fdatasync", inode),
        ("pwrite", (inode, BLOCK_SIZE, 0)),
        ("fdatasync", inode),
    ]
    assert path.stat().st_ino == inode and path.stat().st_size == 2 * BLOCK_SIZE
    assert FileStorage(path).load() == HardState(3)


def test_new_parent_directory_is_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "new" / "state.json"
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    FileStorage(path).save(HardState(1))
    assert tmp_path.stat().st_ino in synced
    assert path.parent.stat().st_ino in synced


def test_fsync_can_be_turned_off(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    monkeypatch.setattr(os, "fdatasync", calls.append)
    storage = FileStorage(path, fsync=False)
    storage.save(HardState(1, "n1"))
    storage.save(HardState(2))
    assert calls == []
    assert storage.load() == HardState(2)


def test_directory_fsync_unsupported_is_tolerated(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    FileStorage(path).save(HardState(1))
    assert FileStorage(path).load() == HardState(1)


def test_platform_without_o_directory(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "O_DIRECTORY", raising=False)
    FileStorage(path).save(HardState(1))
    assert FileStorage(path).load() == HardState(1)


# -- the rules save enforces ----------------------------------------------------


def test_file_storage_never_lowers_the_term(path: Path) -> None:
    storage = FileStorage(path)
    storage.save(HardState(5, "n1"))
    with pytest.raises(ValueError, match="lower the term"):
        storage.save(HardState(4))
    assert FileStorage(path).load() == HardState(5, "n1")


def test_a_fresh_instance_knows_the_term_on_disk(path: Path) -> None:
    FileStorage(path).save(HardState(5, "n1"))
    with pytest.raises(ValueError, match="lower the term"):
        FileStorage(path).save(HardState(4))
    assert FileStorage(path).load() == HardState(5, "n1")


def test_the_vote_of_a_term_is_never_changed(path: Path) -> None:
    storage = FileStorage(path)
    storage.save(HardState(5))
    storage.save(HardState(5, "n1"))  # None -> a vote: allowed
    for bad in [HardState(5, "n2"), HardState(5)]:
        with pytest.raises(ValueError, match="votes at most once"):
            storage.save(bad)
    storage.save(HardState(6))  # a new term forgets the vote
    assert FileStorage(path).load() == HardState(6)


@pytest.mark.parametrize(
    ("state", "error"),
    [
        (HardState(-1), ValueError),
        (HardState(True), TypeError),
        (HardState("2"), TypeError),  # type: ignore[arg-type]
        (HardState(1.0), TypeError),  # type: ignore[arg-type]
        (HardState(1, "bad id"), ValueError),
        (HardState(1, ""), ValueError),
        (HardState(1, 7), ValueError),  # type: ignore[arg-type]
    ],
)
def test_save_refuses_states_that_load_would_refuse(
    path: Path, state: HardState, error: type[Exception]
) -> None:
    for storage in (FileStorage(path), MemoryStorage()):
        with pytest.raises(error):
            storage.save(state)
    assert not path.exists()


def test_check_transition_allows_growth() -> None:
    check_transition(HardState(1, "a"), HardState(2))
    check_transition(HardState(1), HardState(1, "a"))
    check_transition(HardState(0), HardState(9, "b"))


def test_closed_file_storage_refuses_use(path: Path) -> None:
    storage = FileStorage(path)
    storage.close()
    storage.close()
    with pytest.raises(ValueError, match="closed"):
        storage.save(HardState(1))
    with pytest.raises(ValueError, match="closed"):
        storage.load()


# -- MemoryStorage --------------------------------------------------------------


def test_memory_storage() -> None:
    storage = MemoryStorage()
    assert storage.load() == HardState()
    assert storage.saves == 0
    storage.save(HardState(1, "n1"))
    storage.save(HardState(1, "n1"))
    storage.save(HardState(2))
    assert storage.load() == HardState(2)
    assert storage.saves == 3
    storage.close()
    assert storage.load() == HardState(2), "the state survives a simulated restart"


def test_memory_storage_initial_state() -> None:
    assert MemoryStorage(HardState(3, "n2")).load() == HardState(3, "n2")


def test_memory_storage_enforces_the_same_rules() -> None:
    storage = MemoryStorage(HardState(5, "n1"))
    with pytest.raises(ValueError, match="lower the term"):
        storage.save(HardState(4))
    with pytest.raises(ValueError, match="votes at most once"):
        storage.save(HardState(5, "n2"))
    assert storage.load() == HardState(5, "n1")
    assert storage.saves == 0


# -- crashes --------------------------------------------------------------------

# Saves increasing terms, confirming each on stdout once save() has returned.
CHILD = textwrap.dedent(
    """
    import sys, time
    from flask_goelect.core import HardState
    from flask_goelect.storage import FileStorage

    storage = FileStorage(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + 3.0
    for term in range(1, 401):
        if time.monotonic() > deadline:
            break
        storage.save(HardState(term, f"n{term % 3}" if term % 2 else None))
        print(term, flush=True)
    """
)


def expected_state(term: int) -> HardState:
    return HardState(term, f"n{term % 3}" if term % 2 else None) if term else HardState()


@pytest.mark.system
def test_sigkill_during_saves_never_leaves_an_unreadable_file(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    runs = 10
    paths = [tmp_path / f"run{i}" / "state.json" for i in range(runs)]
    # All children run at once (interpreter start-up dominates) and each is
    # killed from outside at its own random moment, wherever it is in a save.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(p)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in paths
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        start = time.monotonic()
        for when, proc in sorted(
            ((rng.uniform(0.0, 0.3), proc) for proc in procs), key=lambda pair: pair[0]
        ):
            time.sleep(max(0.0, start + when - time.monotonic()))
            proc.send_signal(signal.SIGKILL)
    finally:
        for proc in procs:
            proc.kill()
    killed_mid_loop = 0
    for i, (proc, path) in enumerate(zip(procs, paths, strict=True)):
        out, err = proc.communicate(timeout=10)
        assert proc.returncode in (0, -signal.SIGKILL), err
        killed_mid_loop += proc.returncode == -signal.SIGKILL
        confirmed = [int(line) for line in out.split()]
        assert confirmed == list(range(1, len(confirmed) + 1))
        last = len(confirmed)
        state = FileStorage(path).load()  # must not raise
        # Either the last save that returned, or the one in flight when it was killed.
        assert state in (expected_state(last), expected_state(last + 1)), (
            f"run {i} (seed {seed}): loaded {state}, last confirmed term {last}"
        )
    assert killed_mid_loop > 0, "no child was killed while saving: the test proved nothing"


# -- the file under a running storage -------------------------------------------


def test_a_file_deleted_while_in_use_is_written_anew(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tmp cleaner or an operator deletes the file: the next save must not go to
    the deleted inode (a restart would then find no file: term 0, no vote)."""
    storage = FileStorage(path)
    storage.save(HardState(1))
    storage.save(HardState(2))  # in place: the file is open now
    path.unlink()
    storage.save(HardState(6, "a"))
    assert "deleted while in use" in caplog.text
    assert FileStorage(path).load() == HardState(6, "a")
    storage.save(HardState(7))  # and in place again from there
    assert FileStorage(path).load() == HardState(7)


def test_a_file_replaced_while_in_use_is_written_anew(path: Path) -> None:
    storage = FileStorage(path)
    storage.save(HardState(1))
    storage.save(HardState(2))
    other = FileStorage(path.with_name("copy.json"))
    other.save(HardState(1))
    other.save(HardState(2))  # the same size, another inode
    os.replace(path.with_name("copy.json"), path)
    storage.save(HardState(6, "a"))
    assert FileStorage(path).load() == HardState(6, "a")


def test_a_failed_flush_leaves_no_state_that_was_not_made_durable(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write reached the page cache, the flush failed: no reader (another
    process taking over, this one again) may take that state, and a save of it
    must write and flush it, not find it there already."""
    storage = FileStorage(path)
    storage.save(HardState(4))
    storage.save(HardState(5))

    def eio(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(os, "fdatasync", eio)
        with pytest.raises(OSError, match="Input/output"):
            storage.save(HardState(6, "a"))
    assert FileStorage(path).load() == HardState(5)
    flushed: list[int] = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (flushed.append(fd), real_fdatasync(fd)))
    storage.save(HardState(6, "a"))
    assert flushed, "the state was saved again without a flush"
    assert FileStorage(path).load() == HardState(6, "a")


def test_a_load_flushes_what_it_read(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save of another process wrote its copy and was killed before the flush:
    the copy is in the page cache. The load makes it durable before the node goes
    on from it (a save of the same state writes nothing)."""
    FileStorage(path).save(HardState(3, "n1"))
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd))
    )
    assert FileStorage(path).load() == HardState(3, "n1")
    assert synced == [path.stat().st_ino]
    synced.clear()
    assert FileStorage(path, fsync=False).load() == HardState(3, "n1")
    assert synced == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_write_through_an_inherited_descriptor(path: Path) -> None:
    """The child closed what it inherited and opened another file under the same
    number: its save must go to the state file."""
    storage = FileStorage(path)
    storage.save(HardState(1))
    storage.save(HardState(2))
    fd = storage._fd
    assert fd is not None
    other = path.with_name("other.txt")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(fd)
            reused = os.open(other, os.O_RDWR | os.O_CREAT, 0o600)
            if reused != fd:  # (a lower number was free): give it that number
                os.dup2(reused, fd)
                os.close(reused)
            storage.save(HardState(3, "n1"))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert other.read_bytes() == b""
    assert FileStorage(path).load() == HardState(3, "n1")


def test_a_state_that_does_not_fit_a_block_is_refused(path: Path) -> None:
    storage = FileStorage(path)
    storage.save(HardState(1))
    with pytest.raises(ValueError, match="does not fit"):
        storage.save(HardState(10**4200))
    assert FileStorage(path).load() == HardState(1)
