"""``flask goelect status`` out of the box on the node's host, ``step-down``,
``transfer --json``, ``simulate`` with the app's timings, and the exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_cli
from flask import Flask
from live_nodes import Cluster, make_app
from test_cli import cli_app, invoke

from flask_goelect import LeaderElect, cli

#: The running 2-node cluster of test_cli (a fixture).
cluster = test_cli.cluster


def test_loopback_first_for_plain_http_addresses() -> None:
    assert cli._loopback("http://10.0.0.1:5000") == "http://127.0.0.1:5000"
    assert cli._loopback("http://node-1.internal/app") == "http://127.0.0.1:80/app"
    assert cli._loopback("http://127.0.0.1:5000") is None
    assert cli._loopback("https://10.0.0.1:5000") is None  # the certificate names the host


def test_status_reads_the_node_on_loopback_without_a_secret(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The node's address names a host this test cannot reach; the command asks
    this host's loopback at the node's port first, where /status is readable."""
    leader = cluster.wait_for_one_leader()
    port = cluster.servers[leader].port
    peers = [p for p in cluster.peers if not p.startswith(f"{leader}=")]
    app = make_app(
        leader,
        GOELECT_PEERS=[*peers, f"{leader}=http://{leader}.example.invalid:{port}"],
        GOELECT_STATE_FILE=f"{tmp_path}/{leader}.json",
    )
    LeaderElect(app)
    result = invoke(app, "status", "--json")
    assert result.exit_code == cli.EXIT_OK, result.output
    assert json.loads(result.output)["node_id"] == leader


def test_step_down_hands_over_and_is_done_on_a_follower(cluster: Cluster, tmp_path: Path) -> None:
    leader = cluster.wait_for_one_leader()
    other = next(i for i in cluster.ids if i != leader)
    app = cli_app(cluster, leader, tmp_path)
    result = invoke(app, "step-down", "--json")
    assert result.exit_code == cli.EXIT_OK, result.output
    assert json.loads(result.output) == {
        "node_id": leader,
        "stepped_down": True,
        "transferred_to": other,
    }
    assert cluster.wait_for_one_leader(exclude=leader) == other
    result = invoke(app, "step-down")
    assert result.exit_code == cli.EXIT_OK, result.output
    assert "is not the leader" in result.output and "nothing to do" in result.output


def test_transfer_json_and_its_failure_code(cluster: Cluster, tmp_path: Path) -> None:
    leader = cluster.wait_for_one_leader()
    other = next(i for i in cluster.ids if i != leader)
    result = invoke(cli_app(cluster, leader, tmp_path), "transfer", "--to", other, "--json")
    assert result.exit_code == cli.EXIT_OK, result.output
    data = json.loads(result.output)
    assert data["transferred_to"] == other and data["node_id"] == leader
    cluster.wait_for_one_leader(exclude=leader)
    result = invoke(cli_app(cluster, leader, tmp_path), "transfer")
    assert result.exit_code == cli.EXIT_FAILED and "not the leader" in result.output


def simulate_app() -> Flask:
    app = make_app(
        "n1",
        GOELECT_PEERS=[
            "n1=http://127.0.0.1:1",
            "n2=http://127.0.0.2:1",
            "n3=http://127.0.0.3:1",
            "o1=http://127.0.0.4:1 novote",
        ],
        GOELECT_ELECT_TIMEOUT=400,
        GOELECT_HEARTBEAT_INTERVAL=40,
        GOELECT_MAX_DRIFT=0.02,
    )
    LeaderElect(app)
    return app


def test_simulate_runs_the_app_timings() -> None:
    app = simulate_app()
    result = invoke(app, "simulate", "--schedules", "2", "--duration", "3")
    assert result.exit_code == cli.EXIT_OK, result.output
    first = result.output.splitlines()[0]
    assert "--nodes 3 --observers 1 --elect-timeout 400 --heartbeat-interval 40" in first
    assert "--max-drift 0.02" in first and "--duration 3" in first
    assert "violations:" in result.output

    result = invoke(app, "simulate", "--schedules", "2", "--duration", "3", "--json")
    figures = json.loads(result.output)
    assert (figures["voters"], figures["observers"], figures["schedules"]) == (3, 1, 2)

    result = invoke(app, "simulate", "--schedules", "1", "--elect-timeout", "1000", "--json")
    assert result.exit_code == cli.EXIT_OK, result.output


def test_simulate_exit_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    from flask_goelect import simulate

    app = simulate_app()
    monkeypatch.setattr(simulate, "main", lambda argv: 1)
    assert invoke(app, "simulate").exit_code == cli.EXIT_UNSAFE
    monkeypatch.undo()
    assert invoke(app, "simulate", "--no-such-option").exit_code == 2


def test_status_on_the_nodes_host_needs_no_secret_where_the_node_is_not_on_loopback(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that listens on its host's network address only sees the command's
    request come from that address, not from loopback: the local token the
    running elector keeps next to its state file proves the command runs on
    the node's host."""
    import requests

    from flask_goelect import views

    monkeypatch.setattr(views, "is_local_request", lambda *args: False)
    leader = cluster.wait_for_one_leader()
    url = f"{cluster.servers[leader].url}/_goelect/status"
    refused = requests.get(url, timeout=5)
    assert refused.status_code == 401 and refused.json()["error"] == "status_not_public"
    forged = requests.get(url, headers={views.TOKEN_HEADER: "0" * 32}, timeout=5)
    assert forged.status_code == 401
    result = invoke(cli_app(cluster, leader, tmp_path), "status", "--json")
    assert result.exit_code == cli.EXIT_OK, result.output
    assert json.loads(result.output)["node_id"] == leader
    # /leader and /health show their details to the token too.
    token = cli._local_token(cli_app(cluster, leader, tmp_path).extensions["goelect"])
    assert token
    details = requests.get(
        f"{cluster.servers[leader].url}/_goelect/leader",
        headers={views.TOKEN_HEADER: token},
        timeout=5,
    )
    assert details.json()["node_id"] == leader
