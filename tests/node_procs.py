"""Processes of one node for the multi-process tests, driven line by line.

:class:`NodeProc` starts ``python tests/node_procs.py STATE_FILE`` (this file):
a one-node cluster (no peers, so no HTTP is needed: a lone voter elects
itself) whose :class:`~flask_goelect.LeaderElect` starts at once. Each line
written to its stdin is a command; it answers each with one JSON line. Several
such processes on one state file are the processes of one node: the first
runs the elector, the others are members.

Times are ``time.monotonic()``, one clock for every process of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from flask_goelect.shared import NodeRecord, SharedRecord, record_path

__all__ = ["NodeProc", "read_record", "wait_record"]

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def child_env() -> dict[str, str]:
    """The environment of a child Python: this checkout first on its path."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


class NodeProc:
    """One process of node ``n1`` (see the module docs)."""

    def __init__(self, state_file: Path, *, elect_timeout_ms: int = 100, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-W", "error", str(HERE), str(state_file), str(elect_timeout_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**child_env(), **env},
        )
        self.pid = self.proc.pid
        hello = self.read(timeout=30)
        assert hello.get("ready") == self.pid, hello

    def read(self, timeout: float = 10) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.daemon = True
        reader.start()
        reader.join(timeout)
        if not line or not line[0]:
            self.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"process {self.pid} did not answer: {err[-3000:]}")
        answer: dict[str, Any] = json.loads(line[0])
        return answer

    def ask(self, command: str, timeout: float = 10) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.kill()
        with contextlib.suppress(Exception):
            self.proc.communicate(timeout=10)


def read_record(state_file: Path) -> NodeRecord | None:
    """The node's record as any process of the machine reads it."""
    record = SharedRecord(record_path(state_file))
    try:
        return record.read()
    finally:
        record.close()


def wait_record(state_file: Path, predicate: Any, timeout: float) -> NodeRecord | None:
    """Poll the node's record (every 0.5 ms) until ``predicate(record)``; None on timeout."""
    shared = SharedRecord(record_path(state_file))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = shared.read()
            if record is not None and predicate(record):
                return record
            time.sleep(0.0005)
        return None
    finally:
        shared.close()


# -- the node process ----------------------------------------------------------------------


def _main() -> None:  # pragma: no cover - runs in the child processes
    from flask import Flask

    from flask_goelect import LeaderElect

    state_file, elect_timeout = sys.argv[1], int(sys.argv[2])
    app = Flask("node_proc")
    app.config.update(
        GOELECT_NODE_ID="n1",
        GOELECT_NODE_ADDRESS="http://127.0.0.1:1",
        GOELECT_PEERS=[],
        GOELECT_STATE_FILE=state_file,
        GOELECT_ELECT_TIMEOUT=elect_timeout,
        GOELECT_HEARTBEAT_INTERVAL=max(1, elect_timeout // 10),
        GOELECT_AUTOSTART=False,
    )
    elect = LeaderElect(app)
    state = app.extensions["goelect"]
    runs: list[tuple[float, float]] = []

    @elect.leader_only
    def job(seconds: float = 0.0, entered: threading.Event | None = None) -> str:
        began = time.monotonic()
        if entered is not None:
            entered.set()
        time.sleep(seconds)
        runs.append((began, time.monotonic()))
        return "ran"

    def answer(**data: Any) -> None:
        print(json.dumps(data), flush=True)

    elect.start()
    answer(ready=os.getpid(), role=str(state.node.role))
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        command, args = words[0], words[1:]
        if command == "role":
            answer(role=str(state.node.role), process=state.process())
        elif command == "wait_leader":
            leader = elect.wait_for_leader(float(args[0]))
            answer(leader=leader.id if leader else None, is_leader=elect.is_leader)
        elif command == "wait_role":
            deadline = time.monotonic() + float(args[1])
            while str(state.node.role) != args[0] and time.monotonic() < deadline:
                time.sleep(0.001)
            answer(role=str(state.node.role), at=time.monotonic())
        elif command == "job":
            answer(result=job())
        elif command == "slow_job":
            entered = threading.Event()
            threading.Thread(target=job, args=(float(args[0]), entered), daemon=True).start()
            answer(entered=entered.wait(5))
        elif command == "runs":
            answer(runs=runs)
        elif command == "token":
            answer(token=state.admin_token)
        elif command == "transfer_route":
            client = app.test_client()
            reply = client.post("/_goelect/transfer", headers={"X-Goelect-Token": args[0]})
            answer(status=reply.status_code)
        elif command == "stop":
            elect.stop()
            answer(stopped=time.monotonic(), role=str(state.node.role))
        elif command == "start":
            elect.start()
            answer(role=str(state.node.role))
        elif command == "exit":
            answer(exiting=time.monotonic())
            sys.exit(0)
        else:
            answer(error=f"unknown command {command!r}")


if __name__ == "__main__":
    _main()
