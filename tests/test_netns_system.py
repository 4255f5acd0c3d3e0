"""The partition scenarios again, with each node in its own network namespace.

Where the machine allows it (Linux, root, ``ip netns``), every node of a 3- and a
5-node cluster runs in a network namespace of its own, joined to every other
node by a veth pair; a partition puts the pairs that cross it down with
``ip link set dev ... down`` (both ends), so that packets are lost by the
kernel rather than by a proxy: new connections fail with "network unreachable"
and established ones hang until their deadline. The test process reaches each
node over a management veth that is never cut. Elsewhere the tests are skipped
with the reason.

The rounds check what :mod:`test_faults_system` checks (liveness after healing,
terms never going backwards, the never-twice ledger) and that the minority's
terms never grow while it is cut off (pre-vote). The namespaces and veths are
deleted at the end, also when a test fails; namespaces left by a test process
that was killed are deleted at the next run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from goelect_harness.faults import (
    Report,
    Scenario,
    partition_leader_minority,
    partition_then_heal,
    report_writer,
    rounds_from_env,
    run_round,
)
from goelect_harness.netns import Netns, NetnsCluster, netns_unavailable

pytestmark = pytest.mark.system

ROUNDS = rounds_from_env()
#: Election timeout, heartbeat interval and job interval (ms) per cluster size.
TIMING = {3: (200, 50, 50), 5: (250, 50, 50)}

SCENARIOS: dict[str, Scenario] = {
    "partition-leader-minority": partition_leader_minority,
    "partition-then-heal": partition_then_heal,
}


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest) -> Report:
    table = Report(f"partition rounds in network namespaces ({ROUNDS} per scenario and size)")
    request.addfinalizer(report_writer(request.config, table))
    return table


@pytest.fixture(scope="module")
def netns_ready() -> None:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"network namespaces are not available: {reason}")
    Netns.sweep_stale()


@pytest.fixture(scope="module", params=sorted(TIMING), ids=lambda n: f"{n}nodes")
def cluster(request: pytest.FixtureRequest, netns_ready: None) -> Iterator[NetnsCluster]:
    size: int = request.param
    elect, heartbeat, job = TIMING[size]
    with NetnsCluster(
        size,
        elect_timeout=elect,
        heartbeat_interval=heartbeat,
        job_interval=job,
        lifetime=600.0 + ROUNDS * len(SCENARIOS) * 60.0,
    ) as nodes:
        nodes.start(timeout=60.0)
        yield nodes


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_partition_rounds(cluster: NetnsCluster, report: Report, scenario: str) -> None:
    name = f"netns {scenario} ({len(cluster.nodes)} nodes)"
    for _ in range(ROUNDS):
        run_round(cluster, report, name, SCENARIOS[scenario])
