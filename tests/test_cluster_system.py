"""Real example-app processes on loopback: election, failover after SIGKILL, hand-over.

Three nodes (election timeout 200 ms, heartbeat 50 ms) run for the whole
module; each test first makes sure every node runs and one leader is agreed.
The leader-only job appends a ledger line every 50 ms: in file order its term
must never decrease, and no term may have two writers.

Bounds are generous (seconds where the expected time is a fraction of one);
only waiting is retried, never an assertion.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from example_app.ledger import LedgerEntry
from goelect_harness.cluster import LeaderView, LocalCluster

pytestmark = pytest.mark.system

ELECT_TIMEOUT_MS = 200
#: Seconds to wait for anything the cluster should do in well under one second.
BOUND = 15.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        3, elect_timeout=ELECT_TIMEOUT_MS, heartbeat_interval=50, job_interval=50
    ) as cluster:
        cluster.start(timeout=60.0)
        yield cluster


def steady_leader(cluster: LocalCluster) -> LeaderView:
    """Every node running, one agreed leader, and no node still in its restart promise."""
    stopped = [node_id for node_id, node in cluster.nodes.items() if not node.running]
    if stopped:
        cluster.start(stopped, timeout=60.0)
    first = cluster.wait_for_leader(timeout=BOUND)
    # A restarted node refuses votes for one election timeout after it starts.
    time.sleep(2 * ELECT_TIMEOUT_MS / 1000)
    return cluster.wait_for_leader(timeout=BOUND, min_term=first.term)


def wait_for_ledger_entry(cluster: LocalCluster, node: str, term: int) -> list[LedgerEntry]:
    deadline = time.monotonic() + BOUND
    while True:
        entries = cluster.ledger_entries()
        if any(e.node == node and e.term == term for e in entries):
            return entries
        assert time.monotonic() < deadline, f"{node} wrote nothing in term {term}"
        time.sleep(0.05)


def assert_ledger_is_clean(entries: list[LedgerEntry]) -> None:
    terms = [e.term for e in entries]
    assert terms == sorted(terms), "a term decreased in the ledger (a stale leader wrote)"
    writers: dict[int, set[str]] = {}
    for e in entries:
        writers.setdefault(e.term, set()).add(e.node)
    assert all(len(nodes) == 1 for nodes in writers.values()), f"two writers in a term: {writers}"


def test_three_nodes_elect_one_leader(cluster: LocalCluster) -> None:
    leader = steady_leader(cluster)
    answers = {node_id: cluster.get(node_id, "/_goelect/leader") for node_id in cluster.nodes}
    leading = [node_id for node_id, answer in answers.items() if answer and answer[0] == 200]
    assert leading == [leader.id], answers
    for node_id in cluster.nodes:
        status = cluster.status(node_id)
        assert status is not None
        assert status["leader_id"] == leader.id and status["term"] == leader.term
    entries = wait_for_ledger_entry(cluster, leader.id, leader.term)
    assert_ledger_is_clean(entries)


def test_sigkill_of_the_leader_elects_another_with_a_higher_term(cluster: LocalCluster) -> None:
    old = steady_leader(cluster)
    wait_for_ledger_entry(cluster, old.id, old.term)
    killed_at = cluster.kill(old.id)
    process = cluster.nodes[old.id].process
    assert process is not None and process.returncode == -signal.SIGKILL

    new = cluster.wait_for_leader(timeout=BOUND, exclude=[old.id], min_term=old.term + 1)
    assert new.id != old.id and new.term > old.term
    lease = cluster.wait_for_event(
        lambda e: e.kind == "lease" and e.node == new.id and e.mono > killed_at, BOUND
    )
    assert lease is not None and lease.data["term"] == new.term

    entries = wait_for_ledger_entry(cluster, new.id, new.term)
    assert_ledger_is_clean(entries)

    # The killed node comes back with its state file and follows the new leader.
    cluster.start_node(old.id)
    again = cluster.wait_for_leader(timeout=BOUND, min_term=new.term)
    assert again.term >= new.term
    assert_ledger_is_clean(cluster.ledger_entries())


def test_sigterm_of_the_leader_hands_over_quickly(cluster: LocalCluster) -> None:
    old = steady_leader(cluster)
    mark = cluster.mark()
    signalled_at = cluster.terminate(old.id)
    lease = cluster.wait_for_event(
        lambda e: e.kind == "lease" and e.node != old.id and e.data["term"] > old.term,
        BOUND,
        since=mark,
    )
    assert lease is not None, "no other node took over after the SIGTERM"
    assert lease.mono - signalled_at < 2.0, "the hand-over took as long as an election"
    assert cluster.wait_exit(old.id, BOUND) == 0

    new = cluster.wait_for_leader(timeout=BOUND, exclude=[old.id], min_term=old.term + 1)
    assert new.id == lease.node
    entries = wait_for_ledger_entry(cluster, new.id, new.term)
    assert_ledger_is_clean(entries)
    stopped = [e for e in cluster.events[mark:] if e.node == old.id and e.kind == "stopped"]
    assert len(stopped) == 1
