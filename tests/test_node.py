"""One node served by several processes (``flask_goelect.node``), end to end.

Each process is a :class:`node_procs.NodeProc` of a one-node cluster: no peers,
so no HTTP is needed, and the elector leads once its election timeout has
passed. The processes of the node talk through the lock file, the record and
the local socket only.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_procs import NodeProc, lock_is_free, read_record, wait_record
from test_local import stop

from flask_goelect.node import prefork_worker
from flask_goelect.shared import NodeRecord
from flask_goelect.state import State


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "n1.json"


@pytest.fixture
def procs() -> Iterator[list[NodeProc]]:
    started: list[NodeProc] = []
    yield started
    for proc in started:
        proc.close()


def start(procs: list[NodeProc], state_file: Path, **env: str) -> NodeProc:
    proc = NodeProc(state_file, **env)
    procs.append(proc)
    return proc


def elector_and_member(procs: list[NodeProc], state_file: Path) -> tuple[NodeProc, NodeProc]:
    a = start(procs, state_file)
    b = start(procs, state_file)
    assert a.ask("role")["role"] == "elector"
    assert b.ask("role")["role"] == "member"
    assert a.ask("wait_leader 10")["is_leader"] is True
    # The member reads the node's state from the record: it leads there too.
    assert b.ask("wait_leader 10")["is_leader"] is True
    return a, b


def test_a_member_takes_the_elector_over_at_once_when_its_process_is_killed(
    procs: list[NodeProc], state_file: Path
) -> None:
    a, b = elector_and_member(procs, state_file)
    term = read_record(state_file).snapshot.term  # type: ignore[union-attr]
    killed = time.monotonic()
    a.kill()
    record = wait_record(state_file, lambda r: r.pid == b.pid and r.running, 5)
    took_over = time.monotonic() - killed
    assert record is not None, "no member took the elector over"
    assert took_over < 0.25, f"taken over after {took_over * 1000:.0f} ms"
    assert b.ask("wait_role elector 5")["role"] == "elector"
    # It resumes from the state file: the term never goes back.
    assert record.snapshot.term >= term
    assert b.ask("wait_leader 10")["is_leader"] is True
    # It resumed the leadership the killed process left in the record (the same
    # term, voted for itself in the state file): no election, no term lost.
    assert read_record(state_file).snapshot.term == term  # type: ignore[union-attr]
    assert b.ask("job")["result"] == "ran"


def test_a_gevent_member_takes_over_in_its_hub(procs: list[NodeProc], state_file: Path) -> None:
    # Patched processes: the member waits in a real OS thread (a blocked fcntl in
    # a greenlet would stop the hub); the elector it takes over is started from
    # the process's hub and runs like the one it replaces: its loop in a thread of
    # its own, its signals and jobs in the hub.
    a = start(procs, state_file, GEVENT="1")
    b = start(procs, state_file, GEVENT="1")
    assert a.ask("role")["mode"] == "thread+hub" and b.ask("role")["role"] == "member"
    assert a.ask("wait_leader 10")["is_leader"] is True
    assert b.ask("job")["result"] is None  # the hub keeps serving while the waiter waits
    killed = time.monotonic()
    a.kill()
    record = wait_record(state_file, lambda r: r.pid == b.pid and r.running, 5)
    assert record is not None and time.monotonic() - killed < 0.25
    answer = b.ask("wait_role elector 5")
    assert answer["role"] == "elector" and b.ask("role")["mode"] == "thread+hub"
    assert b.ask("wait_leader 10")["is_leader"] is True and b.ask("job")["result"] == "ran"


class RecordLog:
    """Every record the node publishes, with the time it was seen (polled)."""

    def __init__(self, state_file: Path) -> None:
        self.seen: list[tuple[float, NodeRecord]] = []
        self._stop = threading.Event()
        self._state_file = state_file
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        from flask_goelect.shared import SharedRecord, record_path

        shared = SharedRecord(record_path(self._state_file))
        try:
            while not self._stop.is_set():
                record = shared.read()
                if record is not None and (not self.seen or self.seen[-1][1] != record):
                    self.seen.append((time.monotonic(), record))
                time.sleep(0.0002)
        finally:
            shared.close()

    def stop(self) -> list[tuple[float, NodeRecord]]:
        self._stop.set()
        self._thread.join(5)
        return self.seen


@pytest.mark.parametrize("how", ["stop", "exit"])
def test_an_elector_process_that_leaves_hands_the_elector_to_a_member(
    procs: list[NodeProc], state_file: Path, how: str
) -> None:
    a, b = elector_and_member(procs, state_file)
    before = read_record(state_file)
    assert before is not None and before.snapshot.state is State.LEADER
    # A leader-only job runs in the elector process when it starts to leave (the
    # hand-over waits for it up to an election timeout, 100 ms here).
    assert a.ask("slow_job 0.06")["entered"] is True
    log = RecordLog(state_file)
    try:
        answer = a.ask(how)
        if how == "stop":
            assert answer["role"] == "idle"
            runs = a.ask("runs")["runs"]
        record = wait_record(state_file, lambda r: r.pid == b.pid, 5)
        assert record is not None
        time.sleep(0.05)
    finally:
        seen = log.stop()
    # The hand-off record lives for the moment between the old process's stop and
    # the new one's start: the poll may or may not see it.
    for _, handed in (t_r for t_r in seen if t_r[1].handoff):
        # The record keeps the node's state meanwhile: the leader, its term, its lease.
        assert handed.pid == a.pid and handed.running
        assert handed.snapshot.state is State.LEADER
        assert handed.snapshot.term == before.snapshot.term
        assert handed.snapshot.lease_until >= before.snapshot.lease_until
        assert not handed.address  # nothing to forward to while it hands over
    # Then the member takes over and resumes the leadership: same term, no election.
    taken = [(t, r) for t, r in seen if r.pid == b.pid]
    assert taken, [r for _, r in seen]
    handed_at, resumed = taken[0]
    assert resumed.snapshot.state is State.LEADER
    assert resumed.snapshot.term == before.snapshot.term
    if how == "stop":
        # The job that was running ended before the hand-over went on.
        (began, ended), *_ = runs
        assert ended <= handed_at, (ended, handed_at)
        assert a.ask("job")["result"] is None  # no longer the elector: no jobs here
    assert b.ask("wait_role elector 5")["role"] == "elector"
    assert b.ask("wait_leader 10")["is_leader"] is True


def test_the_next_elector_process_keeps_the_promise_the_last_one_made(
    procs: list[NodeProc], state_file: Path
) -> None:
    """A graceful hand-off leaves the end of the node's promise in the record: the
    next process keeps that promise, not a fresh one of T from its start (a node
    whose elector moves more often than every T would otherwise never vote)."""
    a, b = elector_and_member(procs, state_file)
    time.sleep(0.25)  # past the promise of the node's own vote (T = 100 ms)
    made = a.ask("promise")
    assert made["promise"] is not None and made["promise"] < made["now"]
    a.ask("stop")
    assert b.ask("wait_role elector 5")["role"] == "elector"
    kept = b.ask("promise")
    # The promise the node made, which is over: not the T a start would keep.
    assert kept["promise"] is not None and kept["promise"] < made["now"]
    assert b.ask("wait_leader 10")["is_leader"] is True


# Only Python's fork here: a fork from C of a process with running threads (the
# elector's) leaves the child's interpreter believing those threads exist, and
# CPython may then hang at the child's first release of the GIL. No server forks
# an elector process from C: the uWSGI master (worker id 0) defers the node to its
# workers and runs no thread (see test_a_deferred_runner_s_workers_join...).
@pytest.mark.parametrize("fork", ["fork"])
def test_a_fork_of_the_elector_process_is_a_reader_whose_jobs_are_refused(
    procs: list[NodeProc], state_file: Path, fork: str
) -> None:
    a = start(procs, state_file)
    assert a.ask("wait_leader 10")["is_leader"] is True
    # The child answers first, then the parent.
    child, parent = a.ask(f"fork {fork}"), a.read()
    assert child["role"] == "reader" and child["job"] is None
    assert child["running"] is True and child["is_leader"] is True  # it reads the node's state
    assert child["process"] == {"pid": child["child"], "role": "reader", "elector_pid": a.pid}
    assert parent["role"] == "elector" and parent["job"] == "ran"
    record = read_record(state_file)
    assert record is not None and record.pid == a.pid and record.running


def test_a_fork_while_another_thread_holds_the_runner_lock(
    procs: list[NodeProc], state_file: Path
) -> None:
    # A multiprocessing worker forked while the extension is being stopped in
    # another thread: the child must not wait for a lock nobody will release.
    a = start(procs, state_file)
    assert a.ask("wait_leader 10")["is_leader"] is True
    first = a.ask("fork_locked", timeout=20)
    answers = [first] if "parent" in first else [first, a.read(20)]
    parent = next(d for d in answers if "parent" in d)
    assert parent["child_hung"] is False, answers
    child = next(d for d in answers if "child" in d)
    assert child["role"] == "reader" and child["job"] is None


def test_a_deferred_runner_s_workers_join_and_its_other_children_do_not(
    procs: list[NodeProc], state_file: Path
) -> None:
    # A uWSGI master (worker id 0) defers the node to the workers it forks from
    # C; a child it forks otherwise (the app's multiprocessing worker, with
    # Python's fork) only reads the node's state.
    master = start(procs, state_file, FAKE_UWSGI="1")
    assert master.ask("role")["role"] == "deferred"
    pids: dict[str, int] = {}

    def fork_worker(worker_id: int, how: str) -> dict[str, Any]:
        answers = [master.ask(f"fork_worker {worker_id} {how}"), master.read()]
        child = next(d for d in answers if "child" in d)
        pids[f"{worker_id}"] = child["child"]
        procs_pids.append(child["child"])
        return child

    procs_pids: list[int] = []
    try:
        assert fork_worker(1, "cfork")["role"] == "elector"
        assert fork_worker(2, "cfork")["role"] == "member"
        assert fork_worker(0, "fork")["role"] == "reader"
        assert master.ask("role")["role"] == "deferred"
        record = wait_record(state_file, lambda r: r.running, 5)
        assert record is not None and record.pid == pids["1"]
        import os
        import signal

        os.kill(pids["1"], signal.SIGKILL)
        record = wait_record(state_file, lambda r: r.pid == pids["2"] and r.running, 5)
        assert record is not None, "worker 2 did not take the elector over"
        os.kill(pids["2"], signal.SIGKILL)
        # The master's other child never takes the elector.
        assert wait_record(state_file, lambda r: r.pid == pids["0"], 1.0) is None
        assert lock_is_free(state_file)
    finally:
        import contextlib
        import os
        import signal

        for pid in procs_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_member_stopped_and_started_while_its_waiter_takes_the_lock_keeps_it(
    procs: list[NodeProc], state_file: Path
) -> None:
    a, b = elector_and_member(procs, state_file)
    assert b.ask("arm_race")["armed"]
    a.kill()
    # The member's waiter has the lock; before its callback runs, the app stops
    # and starts the extension: the start takes the lock as its own.
    answer = b.ask("race", timeout=20)
    assert answer["entered"] and answer["role"] == "elector"
    assert answer["owns_lock"], "the elector runs without its lock"
    assert not lock_is_free(state_file), "another process could run a second elector"


def test_a_second_app_of_the_node_in_a_member_process_is_refused(
    procs: list[NodeProc], state_file: Path
) -> None:
    a, b = elector_and_member(procs, state_file)
    assert a.ask("second_app")["refused"] == "LockError"
    assert b.ask("second_app")["refused"] == "LockError"
    assert b.ask("role")["role"] == "member"


def test_the_transfer_route_answers_in_a_member_process(
    procs: list[NodeProc], state_file: Path
) -> None:
    # ``flask goelect transfer`` posts to the node's address: any worker may get it.
    a, b = elector_and_member(procs, state_file)
    token = a.ask("token")["token"]
    assert token and b.ask("token")["token"] == token
    # A lone node has nobody to hand over to: 409 from the elector process,
    # whichever process the route ran in; a wrong token is refused in both.
    assert a.ask(f"transfer_route {token}")["status"] == 409
    assert b.ask(f"transfer_route {token}")["status"] == 409
    assert b.ask("transfer_route wrong")["status"] == 403


def test_prefork_worker_knows_a_gunicorn_worker_by_its_spawn(tmp_path: Path) -> None:
    import importlib.util

    arbiter = tmp_path / "gunicorn" / "arbiter.py"
    arbiter.parent.mkdir()
    arbiter.write_text("def spawn_worker(f):\n    return f()\n\ndef setup(f):\n    return f()\n")
    spec = importlib.util.spec_from_file_location("fake_gunicorn_arbiter", arbiter)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.spawn_worker(prefork_worker) is True
    assert module.setup(prefork_worker) is False
    assert prefork_worker() is False


def test_a_hand_over_waits_for_the_calls_of_every_process_of_the_node(
    procs: list[NodeProc], state_file: Path
) -> None:
    # Before a leader hands leadership to another node it closes the node's gate
    # and waits for the leader-only calls running in *any* of its processes: a view
    # running in a member must not overlap the next leader.
    a, b = elector_and_member(procs, state_file)
    held = b.ask("hold_call 0.4")
    assert held["admitted"] is True
    drained = a.ask("drain_node 2")
    assert drained["drained"] is True and drained["count"] == 0
    assert drained["seconds"] >= 0.25, drained  # it waited for the member's call
    # While the gate is closed, no process of the node starts a call.
    assert b.ask("try_call")["admitted"] is False
    assert a.ask("try_call")["admitted"] is False
    a.ask("reopen_node")
    assert b.ask("try_call")["admitted"] is True


def test_a_drain_is_bounded_by_its_timeout(procs: list[NodeProc], state_file: Path) -> None:
    a, b = elector_and_member(procs, state_file)
    assert b.ask("hold_call 3")["admitted"] is True
    drained = a.ask("drain_node 0.3")
    assert drained["drained"] is False and 0.25 <= drained["seconds"] < 2, drained
    a.ask("reopen_node")


def test_a_member_s_health_fails_while_the_elector_process_is_stopped(
    procs: list[NodeProc], state_file: Path
) -> None:
    # SIGSTOP (a debugger, a frozen container): the elector process is alive but
    # runs nothing; its lock stays held, so no member takes over. The node is out
    # of the election: every process of it says so, not only the frozen one.
    a, b = elector_and_member(procs, state_file)
    assert b.ask("health") == {"status": 200, "running": True}
    stop(a.pid)
    try:
        assert b.ask("health") == {"status": 503, "running": False}
        time.sleep(0.3)  # the election timeout is 100 ms: the lease has lapsed
        assert b.ask("job")["result"] is None
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert b.ask("health") == {"status": 200, "running": True}
