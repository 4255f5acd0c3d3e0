"""The example app: settings, the leader-only job and its ledger, views, page, signals.

No elector runs here (``GOELECT_AUTOSTART`` is false): the node's role is forced
with :mod:`flask_goelect.testing`. Real processes are in ``test_cluster_system.py``.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from example_app import create_app, elect
from example_app.factory import append_ledger_entry, ledger_job
from example_app.ledger import (
    Ledger,
    LedgerEntry,
    check_ledger,
    read_ledger,
    tail_ledger,
)
from example_app.node import build_config, parse_args
from flask_goelect.testing import make_follower, make_leader, send_signals


def closed_port() -> int:
    """A loopback port nothing listens on (peers there are unreachable at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def peers() -> list[str]:
    return [f"n{i}=http://127.0.0.1:{closed_port()}" for i in (1, 2, 3)]


@pytest.fixture
def config(tmp_path: Path, peers: list[str]) -> dict[str, Any]:
    return {
        "TESTING": True,
        "GOELECT_NODE_ID": "n1",
        "GOELECT_PEERS": peers,
        "GOELECT_AUTOSTART": False,
        "GOELECT_STATE_FILE": str(tmp_path / "state.json"),
        "GOELECT_ELECT_TIMEOUT": 300,
        "GOELECT_HEARTBEAT_INTERVAL": 30,
        "EXAMPLE_LEDGER": str(tmp_path / "ledger.jsonl"),
        "EXAMPLE_JOB_INTERVAL": 250,
    }


@pytest.fixture
def app(config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    for name in ("GOELECT_NODE_ID", "GOELECT_PEERS", "EXAMPLE_LEDGER", "EXAMPLE_JOB_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    app = create_app(config)
    yield app
    with app.app_context():
        elect.stop(transfer=False)


def ledger_path(app: Flask) -> Path:
    return Path(app.config["EXAMPLE_LEDGER"])


# -- settings ---------------------------------------------------------------------------------


def test_create_app_from_config(app: Flask, config: dict[str, Any]) -> None:
    settings = app.extensions["goelect"].settings
    assert settings.node_id == "n1"
    assert sorted(settings.election.voters) == ["n1", "n2", "n3"]
    assert settings.elect_timeout == pytest.approx(0.3)
    assert settings.heartbeat_interval == pytest.approx(0.03)
    assert settings.state_file == config["GOELECT_STATE_FILE"]
    example = app.extensions["example_app"]
    assert example.ledger.path == Path(config["EXAMPLE_LEDGER"])
    assert example.job_interval == pytest.approx(0.25)
    with app.app_context():
        assert elect.state == "stopped"
        assert not elect.is_leader


def test_create_app_from_environment(
    tmp_path: Path, peers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "GOELECT_NODE_ID": "n2",
        "GOELECT_PEERS": ",".join(peers),
        "GOELECT_ELECT_TIMEOUT": "400",
        "GOELECT_HEARTBEAT_INTERVAL": "40",
        "GOELECT_STATE_FILE": str(tmp_path / "n2.json"),
        "GOELECT_AUTOSTART": "false",
        "EXAMPLE_LEDGER": str(tmp_path / "env-ledger.jsonl"),
        "EXAMPLE_JOB_INTERVAL": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = create_app()
    settings = app.extensions["goelect"].settings
    assert settings.node_id == "n2"
    assert settings.node_address == peers[1].partition("=")[2]
    assert sorted(settings.election.voters) == ["n1", "n2", "n3"]
    assert settings.elect_timeout == pytest.approx(0.4)
    assert settings.heartbeat_interval == pytest.approx(0.04)
    assert settings.state_file == env["GOELECT_STATE_FILE"]
    assert not settings.autostart
    example = app.extensions["example_app"]
    assert example.ledger.path == tmp_path / "env-ledger.jsonl"
    assert example.job_interval == 0


def test_config_overrides_environment(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOELECT_NODE_ID", "n3")
    monkeypatch.setenv("EXAMPLE_JOB_INTERVAL", "5000")
    app = create_app(config)
    assert app.extensions["goelect"].settings.node_id == "n1"
    assert app.extensions["example_app"].job_interval == pytest.approx(0.25)


def test_defaults_put_the_ledger_in_the_instance_folder(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXAMPLE_LEDGER", raising=False)
    monkeypatch.delenv("EXAMPLE_JOB_INTERVAL", raising=False)
    del config["EXAMPLE_LEDGER"], config["EXAMPLE_JOB_INTERVAL"]
    app = create_app(config)
    example = app.extensions["example_app"]
    assert example.ledger.path == Path(app.instance_path) / "ledger.jsonl"
    assert example.job_interval == pytest.approx(1.0)


@pytest.mark.parametrize("value", ["-1", "soon", True, float("nan")])
def test_a_bad_job_interval_names_the_key(config: dict[str, Any], value: object) -> None:
    config["EXAMPLE_JOB_INTERVAL"] = value
    with pytest.raises(ValueError, match="EXAMPLE_JOB_INTERVAL"):
        create_app(config)


def test_node_command_line_becomes_app_config(tmp_path: Path) -> None:
    peers = "n1=http://127.0.0.1:5001,n2=http://127.0.0.1:5002,n3=http://127.0.0.1:5003"
    args = parse_args(
        [
            "--node-id",
            "n2",
            "--listen",
            "127.0.0.1:5002",
            "--peers",
            peers,
            "--elect-timeout",
            "200",
            "--heartbeat-interval",
            "50",
            "--state-dir",
            str(tmp_path),
            "--ledger",
            str(tmp_path / "l.jsonl"),
            "--job-interval",
            "100",
        ]
    )
    assert build_config(args) == {
        "GOELECT_NODE_ID": "n2",
        "GOELECT_PEERS": peers,
        "GOELECT_AUTOSTART": False,
        "GOELECT_ELECT_TIMEOUT": 200,
        "GOELECT_HEARTBEAT_INTERVAL": 50,
        "GOELECT_STATE_FILE": str(tmp_path / "goelect-n2.json"),
        "EXAMPLE_LEDGER": str(tmp_path / "l.jsonl"),
        "EXAMPLE_JOB_INTERVAL": 100,
    }
    alone = build_config(parse_args(["--node-id", "solo", "--listen", "127.0.0.1:5009"]))
    assert alone["GOELECT_NODE_ADDRESS"] == "http://127.0.0.1:5009"


def test_node_command_line_secures_the_node(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "example-secret-0123456789"
    base = ["--node-id", "n1", "--listen", "127.0.0.1:5001"]
    options = build_config(parse_args([*base, "--secret", secret, "--cluster", "demo"]))
    assert options["GOELECT_SECRET"] == secret and options["GOELECT_CLUSTER"] == "demo"
    plain = build_config(parse_args(base))
    assert "GOELECT_SECRET" not in plain and "GOELECT_CLUSTER" not in plain
    # Without the options, the environment variables apply (create_app reads them).
    monkeypatch.setenv("GOELECT_SECRET", secret)
    monkeypatch.setenv("GOELECT_CLUSTER", "from-env")
    settings = create_app(config).extensions["goelect"].settings
    assert settings.secrets == (secret.encode(),) and settings.cluster == "from-env"
    settings = create_app({**config, "GOELECT_CLUSTER": "demo"}).extensions["goelect"].settings
    assert settings.cluster == "demo"


def test_node_with_a_bad_secret_says_which_option_is_wrong(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "example_app", "--node-id", "n1", "--listen", "127.0.0.1:1"]
        + ["--secret", "short", "--state-dir", str(tmp_path)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "GOELECT_SECRET" in result.stderr and "at least 16" in result.stderr
    assert "short" not in result.stderr.replace("too short", "")


def test_node_command_line_rejects_a_bad_listen_address(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--node-id", "n1", "--listen", "5001"])
    assert "--listen must be HOST:PORT" in capsys.readouterr().err


# -- the leader-only job and the ledger -----------------------------------------------------------


def test_run_now_appends_one_ledger_line_in_the_documented_format(app: Flask) -> None:
    client = app.test_client()
    before = time.time()
    with make_leader(app, term=7):
        first = client.post("/jobs/run-now")
        second = client.post("/jobs/run-now")
    assert first.status_code == 200 and second.status_code == 200
    lines = ledger_path(app).read_text().splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    for record in records:
        assert set(record) == {"node", "term", "seq", "time", "pid"}
        assert record["node"] == "n1" and record["term"] == 7
        assert isinstance(record["seq"], int) and isinstance(record["time"], float)
        assert before <= record["time"] <= time.time()
    assert [r["seq"] for r in records] == [1, 2]
    assert first.get_json() == records[0]


def test_leader_only_view_answers_503_on_a_follower(app: Flask) -> None:
    client = app.test_client()
    with make_follower(app, leader_id="n2", term=4):
        response = client.post("/jobs/run-now")
    assert response.status_code == 503
    body = response.get_json()
    assert body["error"] == "not_leader"
    assert "leader is known" in body["message"] and "n2" not in str(body)
    assert "Retry-After" in response.headers
    assert not ledger_path(app).exists()


def test_leader_only_view_answers_503_with_no_elector_running(app: Flask) -> None:
    response = app.test_client().post("/jobs/run-now")
    assert response.status_code == 503
    assert "no leader is known" in response.get_json()["message"]


def test_the_job_is_skipped_on_a_follower(app: Flask) -> None:
    with make_follower(app, leader_id="n3"), app.app_context():
        assert append_ledger_entry() is None
    assert read_ledger(ledger_path(app)) == []


def test_the_job_checks_the_lease_at_the_moment_of_writing(app: Flask) -> None:
    # A leader whose lease ran out (a GC pause, SIGSTOP) must not write when it
    # wakes, even though nothing told it that it lost leadership.
    with make_leader(app, term=3, lease=0.05), app.app_context():
        time.sleep(0.1)
        assert append_ledger_entry() is None
    assert read_ledger(ledger_path(app)) == []


def test_ledger_rechecks_right_before_the_write(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.jsonl")
    checks: list[bool] = []

    def lost() -> bool:
        checks.append(False)
        return False

    assert ledger.append("n1", 2, lost) is None
    assert checks == [False]
    assert not (tmp_path / "l.jsonl").exists() or read_ledger(tmp_path / "l.jsonl") == []
    assert ledger.seq == 0
    entry = ledger.append("n1", 2, lambda: True)
    assert entry is not None and entry.seq == 1


class _Context:
    """Stands in for the leader task's context: cancelled after ``runs`` waits."""

    def __init__(self, runs: int) -> None:
        self.runs = runs
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return len(self.waits) >= self.runs


def test_the_leader_task_writes_once_per_job_interval(app: Flask) -> None:
    ctx = _Context(runs=3)
    with make_leader(app, term=5), app.app_context():
        ledger_job(ctx)
    entries = read_ledger(ledger_path(app))
    assert [(e.node, e.term, e.seq) for e in entries] == [("n1", 5, 1), ("n1", 5, 2), ("n1", 5, 3)]
    assert ctx.waits == [pytest.approx(0.25)] * 3


def test_jobs_endpoint_shows_the_end_of_the_ledger(app: Flask) -> None:
    client = app.test_client()
    with make_leader(app, term=2):
        client.post("/jobs/run-now")
        body = client.get("/jobs").get_json()
    assert body["is_leader"] is True and body["term"] == 2
    assert body["job_interval_ms"] == pytest.approx(250)
    assert body["last_entries"][-1]["term"] == 2
    assert body["written_by_this_process"] == 1


# -- the page ------------------------------------------------------------------------------------


def test_page_shows_this_nodes_view_of_the_cluster(app: Flask) -> None:
    client = app.test_client()
    with make_leader(app, term=9):
        client.post("/jobs/run-now")
        response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "<h1>Node n1</h1>" in page
    assert "leader" in page and ">9<" in page
    for peer in app.config["GOELECT_PEERS"]:
        node_id, _, address = peer.partition("=")
        assert f"<td>{node_id}" in page and address in page
    assert "no: " in page  # n2 and n3 are unreachable


def test_page_is_for_this_host_unless_the_status_is_public(config: dict[str, Any]) -> None:
    remote = {"REMOTE_ADDR": "203.0.113.7"}
    app = create_app(config)
    response = app.test_client().get("/", environ_base=remote)
    assert response.status_code == 401 and "GOELECT_STATUS_PUBLIC" in response.get_data(True)
    proxied = app.test_client().get("/", headers={"X-Forwarded-For": "203.0.113.7"})
    assert proxied.status_code == 401
    public = create_app({**config, "GOELECT_STATUS_PUBLIC": True})
    assert public.test_client().get("/", environ_base=remote).status_code == 200


def test_page_renders_on_a_stopped_node(app: Flask) -> None:
    response = app.test_client().get("/")
    assert response.status_code == 200
    assert "stopped" in response.get_data(as_text=True)


def test_page_escapes_what_it_shows(
    config: dict[str, Any], peers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = "<script>alert(1)</script>"
    config["GOELECT_PEERS"] = [
        {"id": "n1", "address": peers[0].partition("=")[2]},
        {"id": "n2", "address": peers[1].partition("=")[2], "tags": {"zone": evil}},
        {"id": "n3", "address": peers[2].partition("=")[2]},
    ]
    app = create_app(config)
    page = app.test_client().get("/").get_data(as_text=True)
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# -- signals -------------------------------------------------------------------------------------


def test_signal_receivers_log_leadership_changes(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=app.logger.name):
        send_signals(app, previous_state="candidate", state="leader", term=3, leader_id="n1")
        send_signals(
            app,
            previous_state="leader",
            state="follower",
            term=4,
            leader_id="n2",
            previous_leader_id="n1",
            reason="saw a higher term",
        )
    text = caplog.text
    assert "node n1 became the leader of term 3" in text
    assert "node n1 stopped leading (now follower, term 4): saw a higher term" in text
    assert "node n1: the leader is n2 (term 4)" in text


# -- ledger checks -------------------------------------------------------------------------------


def entry(node: str, term: int, seq: int = 1) -> LedgerEntry:
    return LedgerEntry(node, term, seq, 0.0)


def test_check_ledger_accepts_a_correct_history() -> None:
    assert check_ledger([entry("n1", 1), entry("n1", 1, 2), entry("n2", 3), entry("n3", 4)]) == []


def test_check_ledger_reports_a_term_going_back() -> None:
    violations = check_ledger([entry("n1", 1), entry("n2", 2), entry("n1", 1, 2)])
    assert len(violations) == 1 and "line 3" in violations[0]


def test_check_ledger_reports_two_writers_in_one_term() -> None:
    violations = check_ledger([entry("n1", 2), entry("n2", 2)])
    assert len(violations) == 1 and "two leaders in one term" in violations[0]


def test_read_ledger_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(
        '{"node":"n1","term":1,"seq":1,"time":1.5}\n{"node":"n1","term":1,"se', encoding="utf-8"
    )
    assert read_ledger(path) == [LedgerEntry("n1", 1, 1, 1.5)]
    assert tail_ledger(path, 5) == [LedgerEntry("n1", 1, 1, 1.5)]
    assert read_ledger(tmp_path / "missing.jsonl") == []
