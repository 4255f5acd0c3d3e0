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
    """Write a state file with a *valid* checksum over arbitrary field values."""
    fields.setdefault("version", 1)
    fields.setdefault("term", 1)
    fields.setdefault("voted_for", None)
    fields["checksum"] = canonical_checksum(fields)
    path.write_text(json.dumps(fields))


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
    FileStorage(path).save(HardState(3, "n2"))
    data = json.loads(path.read_text())
    assert set(data) == {"version", "term", "voted_for", "checksum"}
    assert data["version"] == 1
    assert (data["term"], data["voted_for"]) == (3, "n2")
    fields = {k: v for k, v in data.items() if k != "checksum"}
    assert data["checksum"] == canonical_checksum(fields)


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
    storage.save(HardState(4, "n1"))
    assert calls == []


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
    FileStorage(path).save(HardState(12, "node-1"))
    good = path.read_bytes()
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= mask
        path.write_bytes(bytes(bad))
        with raises_naming(path):
            FileStorage(path).load()


def test_bad_checksum(path: Path) -> None:
    FileStorage(path).save(HardState(3, "n1"))
    data = json.loads(path.read_text())
    data["term"] = 2  # a valid-looking value, but not what was checksummed
    path.write_text(json.dumps(data))
    with raises_naming(path) as exc:
        FileStorage(path).load()
    assert "checksum" in str(exc.value)


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
    FileStorage(path).save(HardState(3))
    text = path.read_text().rstrip().removesuffix("}") + ',"term":9}'
    path.write_text(text)
    with raises_naming(path):
        FileStorage(path).load()


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
def test_failed_save_keeps_the_old_file(
    path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    storage = FileStorage(path)
    storage.save(HardState(4, "n1"))
    old = path.read_bytes()

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


def test_file_and_directory_are_fsynced_around_the_rename(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(path)
    storage.save(HardState(1))  # the parent exists now: only this file's folder is synced
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
    storage = FileStorage(path, fsync=False)
    storage.save(HardState(1, "n1"))
    assert calls == []
    assert storage.load() == HardState(1, "n1")


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
