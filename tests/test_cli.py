"""``flask goelect status | cluster | transfer``, from a process that runs no elector."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from live_nodes import Cluster, make_app

from flask_goelect import LeaderElect
from goelect_harness.helpers import free_port


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(2, tmp_path)
    try:
        c.wait_for_one_leader()
        yield c
    finally:
        c.close()


def cli_app(cluster: Cluster, node_id: str, tmp_path: Path) -> Flask:
    """The app as ``flask`` loads it on the node's host: same config, no elector."""
    app = make_app(
        node_id,
        GOELECT_PEERS=cluster.peers,
        GOELECT_STATE_FILE=f"{tmp_path}/{node_id}.json",
        GOELECT_ELECT_TIMEOUT=300,
        GOELECT_HEARTBEAT_INTERVAL=30,
    )
    LeaderElect(app)
    assert not app.extensions["goelect"].running
    return app


def invoke(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["goelect", *args])


def test_status_asks_the_running_node(cluster: Cluster, tmp_path: Path) -> None:
    leader = cluster.wait_for_one_leader()
    result = invoke(cli_app(cluster, leader, tmp_path), "status")
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.output.splitlines() if " " in line)
    assert lines["node"].strip() == leader
    assert lines["state"].strip() == "leader"
    assert leader in lines["leader"]
    assert "last contact" in result.output

    result = invoke(cli_app(cluster, leader, tmp_path / "other"), "status", "--json")
    status = json.loads(result.output)
    assert status["node_id"] == leader and status["is_leader"] is True


def test_status_of_a_node_that_is_not_running(tmp_path: Path) -> None:
    app = make_app(
        GOELECT_PEERS=[f"n1=http://127.0.0.1:{free_port()}"],
        GOELECT_CONNECT_TIMEOUT=0.5,
    )
    LeaderElect(app)
    result = invoke(app, "status")
    assert result.exit_code == 1
    assert "Is the app running" in result.output


def test_status_of_a_local_elector(tmp_path: Path) -> None:
    app = make_app(
        GOELECT_PEERS=[],
        GOELECT_NODE_ADDRESS="http://127.0.0.1:1",
        GOELECT_ELECT_TIMEOUT=100,
        GOELECT_HEARTBEAT_INTERVAL=10,
    )
    elect = LeaderElect(app)
    elect.start()
    try:
        assert elect.wait_for_leader(5) is not None
        result = invoke(app, "status")
    finally:
        elect.stop()
    assert result.exit_code == 0
    assert "leader" in result.output


def test_cluster_table_with_a_node_down(cluster: Cluster, tmp_path: Path) -> None:
    leader = cluster.wait_for_one_leader()
    down_port = free_port()
    app = make_app(
        leader,
        GOELECT_PEERS=[*cluster.peers, f"n9=http://127.0.0.1:{down_port}"],
        GOELECT_STATE_FILE=f"{tmp_path}/cli-{leader}.json",
    )
    LeaderElect(app)
    result = invoke(app, "cluster", "--timeout", "3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NODE", "ADDRESS", "VOTES", "STATE", "TERM", "LEADER", "LEASE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[leader][3] == "leader" and rows[leader][5] == leader
    assert rows["n9"][3] == "unreachable"
    result = invoke(app, "cluster", "--json", "--timeout", "3")
    data = json.loads(result.output)
    assert data["n9"]["reachable"] is False and data["n9"]["error"]
    assert data[leader]["reachable"] is True


def test_transfer_from_the_leaders_host(cluster: Cluster, tmp_path: Path) -> None:
    leader = cluster.wait_for_one_leader()
    other = next(i for i in cluster.ids if i != leader)
    app = cli_app(cluster, leader, tmp_path)
    result = invoke(app, "transfer", "--to", "nobody")
    assert result.exit_code == 1 and "nobody" in result.output
    assert cluster.wait_for_one_leader() == leader
    result = invoke(app, "transfer")
    assert result.exit_code == 0, result.output
    assert f"handed leadership to '{other}'" in result.output
    assert cluster.wait_for_one_leader(exclude=leader) == other
    # On a follower's host: refused, with the reason.
    result = invoke(app, "transfer")
    assert result.exit_code == 1 and "not the leader" in result.output


def test_transfer_needs_the_nodes_token(cluster: Cluster, tmp_path: Path) -> None:
    leader = cluster.wait_for_one_leader()
    # Another host (another state folder): no token to read.
    app = cli_app(cluster, leader, tmp_path / "elsewhere")
    result = invoke(app, "transfer")
    assert result.exit_code == 1 and "not running here" in result.output
    assert cluster.wait_for_one_leader() == leader
