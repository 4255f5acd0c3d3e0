"""The ledger: one JSON line per run of the leader-only job, the never-twice evidence.

Every node of a local cluster appends to the same file. Each line is
``{"node": id, "term": term, "seq": n, "time": unix_time, "pid": pid}``, written with one
``write`` on a file opened with ``O_APPEND`` (so lines of different processes
never interleave) and made durable with ``fsync`` before the job returns.

Read in file order, a correct cluster leaves a ledger where

* the term never decreases: a deposed leader never writes after its successor;
* each term is written by one node only: never two leaders in one term;
* within a node and term, a process that handed the elector to another
  process of the node never writes again: never two processes acting at once.

:func:`check_ledger` reports every line that breaks either rule; the system
tests and the demo use it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Ledger",
    "LedgerEntry",
    "check_ledger",
    "read_ledger",
    "shortest_gap",
    "tail_ledger",
]

#: How much of the end of the file :func:`tail_ledger` reads.
_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class LedgerEntry:
    """One line of the ledger."""

    node: str
    term: int
    seq: int
    time: float
    #: The process that wrote it (0 in lines that do not say).
    pid: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "term": self.term,
            "seq": self.seq,
            "time": self.time,
            "pid": self.pid,
        }


class Ledger:
    """Appends this node's entries to the ledger file at ``path``.

    ``seq`` counts this process's entries (1, 2, ...); a restarted node starts
    again at 1, which the ``node``/``time`` fields make unambiguous.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.seq = 0
        self._lock = threading.Lock()

    def append(self, node: str, term: int, still_leading: Callable[[], bool]) -> LedgerEntry | None:
        """Write one entry for ``node`` in ``term`` if ``still_leading()`` right before.

        Everything that can take time (opening the file, encoding the line) is
        done first; the check is the last thing before the single ``write``, so
        that a node whose lease ran out meanwhile (a GC pause, SIGSTOP) writes
        nothing. Returns the entry written, or None when the check failed.
        """
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(self.path, flags, 0o644)
            try:
                entry = LedgerEntry(node, term, self.seq + 1, round(time.time(), 6), os.getpid())
                line = (json.dumps(entry.to_json(), separators=(",", ":")) + "\n").encode()
                if not still_leading():
                    return None
                # One write of a few dozen bytes to an O_APPEND file: atomic with
                # respect to the other nodes' appends.
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.seq = entry.seq
            return entry


def _parse_lines(lines: Iterable[bytes]) -> list[LedgerEntry]:
    entries = []
    for raw in lines:
        if not raw.endswith(b"\n"):
            continue  # a line being written right now (or torn by a crash)
        try:
            data = json.loads(raw)
            entries.append(
                LedgerEntry(
                    str(data["node"]),
                    int(data["term"]),
                    int(data["seq"]),
                    data["time"],
                    int(data.get("pid", 0)),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def read_ledger(path: str | os.PathLike[str]) -> list[LedgerEntry]:
    """Every complete entry of the ledger, in file order ([] if there is no file)."""
    try:
        with open(path, "rb") as f:
            return _parse_lines(f.readlines())
    except FileNotFoundError:
        return []


def tail_ledger(path: str | os.PathLike[str], count: int = 10) -> list[LedgerEntry]:
    """The last ``count`` complete entries, reading only the end of the file."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - _TAIL_BYTES)
            f.seek(start)
            lines = f.read().splitlines(keepends=True)
    except FileNotFoundError:
        return []
    if start > 0 and lines:
        lines = lines[1:]  # probably a partial line
    return _parse_lines(lines)[-count:] if count > 0 else []


def check_ledger(entries: Iterable[LedgerEntry]) -> list[str]:
    """The violations of the never-twice rules, one message each ([] if none).

    In file order the term must never decrease, and each term must be written
    by one node only.
    """
    violations: list[str] = []
    writer_of_term: dict[int, str] = {}
    # Per (node, term): the process writing now, and those that wrote before it.
    process: dict[tuple[str, int], int] = {}
    done: dict[tuple[str, int], set[int]] = {}
    highest: LedgerEntry | None = None
    for index, entry in enumerate(entries, start=1):
        key = (entry.node, entry.term)
        current = process.get(key)
        if entry.pid and current is not None and entry.pid != current:
            if entry.pid in done.setdefault(key, set()):
                violations.append(
                    f"line {index}: process {entry.pid} of {entry.node} wrote in term"
                    f" {entry.term} again after process {current} had taken over"
                    " (two processes acting at once)"
                )
            done[key].add(current)
        if entry.pid:
            process[key] = entry.pid
        if highest is not None and entry.term < highest.term:
            violations.append(
                f"line {index}: {entry.node} wrote in term {entry.term} after"
                f" {highest.node} had written in term {highest.term}"
            )
        if highest is None or entry.term > highest.term:
            highest = entry
        writer = writer_of_term.setdefault(entry.term, entry.node)
        if writer != entry.node:
            violations.append(
                f"line {index}: {entry.node} wrote in term {entry.term}, which {writer}"
                " also wrote in (two leaders in one term)"
            )
    return violations


def shortest_gap(entries: Iterable[LedgerEntry]) -> float | None:
    """The shortest time between two consecutive entries (None with fewer than two):
    a job meant to run once per interval in the cluster never runs closer."""
    times = [e.time for e in entries]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return min(gaps) if gaps else None
