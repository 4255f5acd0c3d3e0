"""HAProxy in front of real example-app nodes: what a client sees on failover and restarts.

Three nodes (election timeout 200 ms, heartbeat 50 ms, ``--drain-ms 100``) behind
HAProxy running the shipped ``example_app/deploy/haproxy/haproxy.cfg`` (the
leader alone UP, checked on ``GET /_goelect/leader`` every 50 ms; a waitroom that
holds requests while no node leads). A client sends ``POST /jobs/run-now`` (a
``@leader_only`` view) through it back to back, one request at a time, while:

* **the leader is SIGKILLed**: the failover the client sees is the time from the
  kill to the first answer served after it; it must stay within the election
  (kill to the new leader's lease) plus one check interval, with slack for a
  loaded machine. Only requests caught by the crash (sent before HAProxy could
  see it) may fail: the configuration does not re-send a request the dead leader
  may have run;
* **every node is restarted in turn** (SIGTERM, wait for its exit, start it, wait
  until HAProxy sees one leader again): no request may fail.

``GOELECT_HAPROXY_ROUNDS`` rounds of each (default 3); the figures (medians over
the rounds) are printed at the end. Skipped, with the reason, where haproxy is
not installed. ``python -m tests.test_haproxy_system --rounds 10`` is the run
``docs/deployment.md`` quotes; ``--drain-ms 0`` and ``--config FILE`` measure
other choices.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from goelect_harness import haproxy
from goelect_harness.cluster import LeaderView, LocalCluster
from goelect_harness.haproxy import HAProxy, LoadClient, local_config
from goelect_harness.helpers import wait_until

ROUNDS = int(os.environ.get("GOELECT_HAPROXY_ROUNDS", "3"))
DRAIN_MS = int(os.environ.get("GOELECT_HAPROXY_DRAIN_MS", "100"))
CONFIG = Path(os.environ.get("GOELECT_HAPROXY_CONFIG") or haproxy.CONFIG)
ELECT_TIMEOUT_MS = 200
#: Seconds to wait for anything the cluster should do in well under one second.
BOUND = 15.0
#: What a loaded machine may add to "election plus one check interval".
SLACK_MS = 150.0


def check_interval_ms(config: str) -> float:
    """The ``inter`` of the backend's checks, in milliseconds."""
    match = re.search(r"\binter\s+(\d+)ms\b", config)
    assert match, "the HAProxy configuration sets no check interval (inter N ms)"
    return float(match.group(1))


@dataclass
class Figures:
    """Per-round figures of the module, printed as a table at the end."""

    failover_ms: list[float] = field(default_factory=list)
    election_ms: list[float] = field(default_factory=list)
    kill_failed: list[int] = field(default_factory=list)
    kill_slowest_ms: list[float] = field(default_factory=list)
    roll_failed: list[int] = field(default_factory=list)
    roll_pause_ms: list[float] = field(default_factory=list)
    roll_slowest_ms: list[float] = field(default_factory=list)
    requests: int = 0

    def lines(self) -> list[str]:
        def median(values: list[float] | list[int]) -> str:
            return f"{statistics.median(values):.0f}" if values else "-"

        def span(values: list[float] | list[int]) -> str:
            return f"{min(values):.0f}..{max(values):.0f}" if values else "-"

        rows = [
            ("SIGKILL: failover seen by the client (ms)", self.failover_ms),
            ("SIGKILL: election, kill to new lease (ms)", self.election_ms),
            ("SIGKILL: failed requests", self.kill_failed),
            ("SIGKILL: slowest request (ms)", self.kill_slowest_ms),
            ("rolling restart: failed requests", self.roll_failed),
            ("rolling restart: longest pause between answers (ms)", self.roll_pause_ms),
            ("rolling restart: slowest request (ms)", self.roll_slowest_ms),
        ]
        out = [
            f"HAProxy in front of 3 nodes ({CONFIG.name}, --drain-ms {DRAIN_MS}, T"
            f" {ELECT_TIMEOUT_MS} ms): median and range per round, {self.requests} requests",
        ]
        out += [f"  {name:<52} {median(v):>6}  ({span(v)}, n={len(v)})" for name, v in rows]
        return out


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> Figures:
    table = Figures()

    def show() -> None:
        plugins = request.config.pluginmanager
        reporter = plugins.get_plugin("terminalreporter")
        capture = plugins.get_plugin("capturemanager")
        if reporter is None or not (table.kill_failed or table.roll_failed):
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line("")
            for line in table.lines():
                reporter.write_line(line)

    request.addfinalizer(show)
    return table


@pytest.fixture(scope="module")
def balanced() -> Iterator[tuple[LocalCluster, HAProxy]]:
    if haproxy.find_haproxy() is None:
        pytest.skip(haproxy.MISSING)
    with LocalCluster(
        3,
        elect_timeout=ELECT_TIMEOUT_MS,
        heartbeat_interval=50,
        job_interval=0,
        node_args=["--drain-ms", str(DRAIN_MS)],
    ) as cluster:
        with HAProxy(cluster, template=CONFIG) as proxy:
            cluster.start(timeout=60.0)
            yield cluster, proxy


def steady_leader(cluster: LocalCluster, proxy: HAProxy) -> LeaderView:
    """Every node running and past its restart promise, one agreed leader, and
    HAProxy sending to it alone."""
    stopped = [node_id for node_id, node in cluster.nodes.items() if not node.running]
    if stopped:
        cluster.start(stopped, timeout=60.0)
    first = cluster.wait_for_leader(timeout=BOUND)
    time.sleep(2 * ELECT_TIMEOUT_MS / 1000)
    leader = cluster.wait_for_leader(timeout=BOUND, min_term=first.term)
    proxy.wait_for_leader_up(BOUND, leader.id)
    return leader


def slowest_ms(client: LoadClient) -> float:
    return max((a.done - a.sent) * 1000 for a in client.answers)


def longest_pause_ms(client: LoadClient) -> float:
    """The longest time between two successful answers (or the first and the start)."""
    done = sorted(a.done for a in client.answers if a.ok)
    return max((b - a) * 1000 for a, b in zip(done, done[1:], strict=False)) if done else 0.0


def test_local_config_points_every_server_at_the_cluster(tmp_path: Path) -> None:
    servers = {"n1": ("127.0.0.1", 7001), "n2": ("127.0.0.1", 7002), "n3": ("127.0.0.1", 7003)}
    text = local_config(
        haproxy.CONFIG.read_text(), servers, ("127.0.0.1", 7000), tmp_path / "admin.sock"
    )
    assert "bind 127.0.0.1:7000" in text and "10.0.0." not in text
    for name, (_, port) in servers.items():
        # Once in the checked backend, once tracked in the waitroom.
        assert text.count(f"server {name} 127.0.0.1:{port}") == 2
    assert f"stats socket {tmp_path / 'admin.sock'}" in text
    assert f"lua-load {haproxy.CONFIG.parent / 'goelect.lua'}" in text
    assert "abns@goelect-waitroom-7000" in text and "abns@goelect-waitroom " not in text


def test_local_config_refuses_a_template_without_the_nodes(tmp_path: Path) -> None:
    with pytest.raises(haproxy.HAProxyError, match="missing: \\['n4'\\]"):
        local_config(
            haproxy.CONFIG.read_text(),
            {"n4": ("127.0.0.1", 1)},
            ("127.0.0.1", 2),
            tmp_path / "admin.sock",
        )


def kill_the_leader(cluster: LocalCluster, proxy: HAProxy, figures: Figures) -> list[str]:
    """One round: SIGKILL the leader under load, note what the client saw; what went
    wrong (every round runs, so that a run of another configuration has figures)."""
    check_ms = check_interval_ms(proxy.config_path.read_text())
    leader = steady_leader(cluster, proxy)
    mark = cluster.mark()
    with LoadClient(proxy.url("/jobs/run-now"), max_seconds=4 * BOUND) as client:
        assert client.wait_for_answers(20, BOUND), "the client got no answers through HAProxy"
        killed = cluster.kill(leader.id)
        lease = cluster.wait_for_event(
            lambda e: e.kind == "lease" and e.node != leader.id and e.mono > killed,
            BOUND,
            since=mark,
        )
        assert lease is not None, f"no new leader within {BOUND}s of killing {leader.id}"
        served = wait_until(
            lambda: next((a for a in client.answers if a.ok and a.sent >= killed), None), BOUND
        )
        assert served is not None, "no request sent after the kill was served"
        assert client.wait_for_answers(20, BOUND, since=time.monotonic())
    failover = (served.done - killed) * 1000
    election = (lease.mono - killed) * 1000
    failed = client.failures()
    figures.failover_ms.append(failover)
    figures.election_ms.append(election)
    figures.kill_failed.append(len(failed))
    figures.kill_slowest_ms.append(slowest_ms(client))
    figures.requests += len(client.answers)
    cluster.start_node(leader.id)
    problems = []
    if failover > election + check_ms + SLACK_MS:
        problems.append(
            f"the client waited {failover:.0f} ms for an answer after the kill; the election"
            f" took {election:.0f} ms and HAProxy checks every {check_ms:.0f} ms"
        )
    # Only requests caught by the crash may fail: later ones wait for the new leader.
    late = [a for a in failed if a.sent > killed + check_ms / 1000]
    if late:
        problems.append(f"{len(late)} requests sent after HAProxy could see the crash failed")
    return problems


@pytest.mark.system
def test_failover_after_sigkill(balanced: tuple[LocalCluster, HAProxy], figures: Figures) -> None:
    cluster, proxy = balanced
    problems = [p for _ in range(ROUNDS) for p in kill_the_leader(cluster, proxy, figures)]
    assert not problems, problems


@pytest.mark.system
def test_rolling_restart_fails_no_request(
    balanced: tuple[LocalCluster, HAProxy], figures: Figures
) -> None:
    cluster, proxy = balanced
    rng = random.Random()
    for _ in range(ROUNDS):
        steady_leader(cluster, proxy)
        with LoadClient(proxy.url("/jobs/run-now"), max_seconds=20 * BOUND) as client:
            assert client.wait_for_answers(20, BOUND), "the client got no answers through HAProxy"
            for node in rng.sample(list(cluster.nodes), len(cluster.nodes)):
                cluster.terminate(node)
                assert cluster.wait_exit(node, BOUND) == 0, f"{node} did not exit cleanly"
                cluster.start_node(node)
                steady_leader(cluster, proxy)
            assert client.wait_for_answers(20, BOUND, since=time.monotonic())
        figures.roll_failed.append(len(client.failures()))
        figures.roll_pause_ms.append(longest_pause_ms(client))
        figures.roll_slowest_ms.append(slowest_ms(client))
        figures.requests += len(client.answers)
    assert not any(figures.roll_failed), (
        f"requests failed during the rolling restarts: {figures.roll_failed} (per round)"
    )
    assert cluster.ledger_violations() == []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.test_haproxy_system",
        description="Measure what a client sees through HAProxy when the leader is killed"
        " and when every node is restarted in turn; print the figures.",
    )
    parser.add_argument("--rounds", type=int, default=10, help="rounds of each (default 10)")
    parser.add_argument(
        "--drain-ms", type=int, default=DRAIN_MS, help=f"the nodes' --drain-ms ({DRAIN_MS})"
    )
    parser.add_argument("--config", default=None, help="an HAProxy configuration to run instead")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    os.environ["GOELECT_HAPROXY_ROUNDS"] = str(args.rounds)
    os.environ["GOELECT_HAPROXY_DRAIN_MS"] = str(args.drain_ms)
    if args.config:
        os.environ["GOELECT_HAPROXY_CONFIG"] = str(Path(args.config).resolve())
    here = str(Path(__file__).resolve())
    return int(pytest.main([here, "-q", "-p", "no:cacheprovider", "--durations=0"]))


if __name__ == "__main__":
    sys.exit(main())
