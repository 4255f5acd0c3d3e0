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


def lock_is_free(state_file: Path) -> bool:
    """Whether a new process of the machine could take the node's elector lock now."""
    script = (
        "import sys; from flask_goelect._lock import lock_file\n"
        "print(lock_file(sys.argv[1]).take_elector(object(), 'n1'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(state_file)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=30,
    )
    return done.stdout.strip() == "True"


def _new_app(state_file: str, elect_timeout: int) -> Any:  # pragma: no cover - children
    from flask import Flask

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
    return app


def _main() -> None:  # pragma: no cover - runs in the child processes
    import ctypes
    import types

    lines: Any = sys.stdin
    if os.environ.get("GEVENT"):
        # A gevent worker: everything cooperates, the commands are read cooperatively.
        from gevent import monkey

        monkey.patch_all()
        import gevent.fileobject

        lines = gevent.fileobject.FileObject(sys.stdin.fileno(), "r", close=False)

    from flask_goelect import LeaderElect

    worker = [0]
    if os.environ.get("FAKE_UWSGI"):
        # A uWSGI master as the runner sees it: worker id 0 here, then the id of
        # each worker it forks (from C, where no Python hook runs).
        sys.modules["uwsgi"] = types.SimpleNamespace(worker_id=lambda: worker[0])  # type: ignore[assignment]
    state_file, elect_timeout = sys.argv[1], int(sys.argv[2])
    app = _new_app(state_file, elect_timeout)
    elect = LeaderElect(app)
    state = app.extensions["goelect"]
    race: dict[str, threading.Event] = {}
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
    for line in lines:
        words = line.split()
        if not words:
            continue
        command, args = words[0], words[1:]
        if command == "role":
            elector = state.node.elector
            mode = elector.mode if elector is not None else None
            answer(role=str(state.node.role), process=state.process(), mode=mode)
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
        elif command == "hold_call":
            # A leader-only call (a view, say) that runs for args[0] seconds in this
            # process, through the process's gate as the decorators pass it.
            gate = state.inflight
            admitted = gate.enter()
            if admitted:

                def hold(seconds: float, gate: Any = gate) -> None:
                    time.sleep(seconds)
                    gate.leave()

                threading.Thread(target=hold, args=(float(args[0]),), daemon=True).start()
            answer(admitted=admitted, at=time.monotonic())
        elif command == "try_call":
            gate = state.inflight
            admitted = gate.enter()
            if admitted:
                gate.leave()
            answer(admitted=admitted)
        elif command == "drain_node":
            # What the elector does before a hand-over to another node.
            from flask_goelect.node import NodeGate

            node_gate = NodeGate(state.node)
            started = time.monotonic()
            drained = node_gate.drain(float(args[0]))
            answer(drained=drained, seconds=time.monotonic() - started, count=node_gate.count)
        elif command == "reopen_node":
            from flask_goelect.node import NodeGate

            NodeGate(state.node).reopen()
            answer(reopened=True)
        elif command == "runs":
            answer(runs=runs)
        elif command == "promise":
            from flask_goelect import clock

            elector = state.node.elector
            promise = elector.promise_until if elector is not None else None
            answer(promise=promise, now=clock.now())
        elif command == "health":
            reply = app.test_client().get("/_goelect/health")
            answer(status=reply.status_code, running=elect.running)
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
        elif command == "fork":
            # A child forked by the application: "fork" (Python's, hooks run) or
            # "cfork" (from C: no hook runs; only the pid tells).
            fork = ctypes.PyDLL(None).fork if args[0] == "cfork" else os.fork
            pid = fork()
            if pid == 0:
                result = job()  # an entry point first: it notices the fork
                answer(
                    child=os.getpid(),
                    job=result,
                    role=str(state.node.role),
                    running=elect.running,
                    is_leader=elect.is_leader,
                    process=state.process(),
                )
                os._exit(0)
            os.waitpid(pid, 0)
            answer(parent=os.getpid(), job=job(), role=str(state.node.role))
        elif command == "fork_worker":
            # The master forks worker ``args[0]`` ("0": another child, a
            # multiprocessing worker of the app, say); it stays until killed.
            fork = ctypes.PyDLL(None).fork if args[1] == "cfork" else os.fork
            pid = fork()
            if pid == 0:
                worker[0] = int(args[0])
                state.node.view  # noqa: B018 - what uWSGI's postfork hook does
                answer(child=os.getpid(), role=str(state.node.role))
                while True:
                    time.sleep(1)
            answer(forked=pid)
        elif command == "fork_locked":
            # Another thread holds the runner's lock (a stop in progress) at the fork.
            held, release = threading.Event(), threading.Event()

            def hold(held: threading.Event, release: threading.Event) -> None:
                with state.node._lock:
                    held.set()
                    release.wait(10)

            threading.Thread(target=hold, args=(held, release), daemon=True).start()
            held.wait(5)
            pid = os.fork()
            if pid == 0:
                answer(child=os.getpid(), job=job(), role=str(state.node.role))
                os._exit(0)
            release.set()
            deadline = time.monotonic() + 5
            hung = True
            while time.monotonic() < deadline:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    hung = False
                    break
                time.sleep(0.01)
            if hung:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            answer(parent=os.getpid(), child_hung=hung)
        elif command == "arm_race":
            # The waiter takes the elector lock, and its callback is held up.
            node = state.node
            original = node._took_over
            race.update(entered=threading.Event(), go=threading.Event())

            def held_up(run_here: Any, original: Any = original) -> bool:
                race["entered"].set()
                race["go"].wait(10)
                return bool(original(run_here))

            node._took_over = held_up  # type: ignore[method-assign]
            answer(armed=True)
        elif command == "race":
            # Meanwhile the app stops and starts the extension again.
            entered = race["entered"].wait(10)
            elect.stop()
            elect.start()
            race["go"].set()
            time.sleep(0.3)
            locks = state.node._locks
            answer(
                entered=entered,
                role=str(state.node.role),
                owns_lock=locks is not None and locks.elector_owner is state.node,
            )
        elif command == "second_app":
            # Another app of the same node in this process (an app factory called twice).
            other = LeaderElect(_new_app(state_file, elect_timeout))
            try:
                other.start()
            except Exception as exc:
                answer(refused=type(exc).__name__)
            else:
                answer(refused=None, role=str(other._state().node.role))
        elif command == "exit":
            answer(exiting=time.monotonic())
            sys.exit(0)
        else:
            answer(error=f"unknown command {command!r}")


if __name__ == "__main__":
    _main()
