"""LeaderElect: configuration, registration, app resolution, lifecycle and the state file lock."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Blueprint, Flask
from live_nodes import Cluster, make_app

from flask_goelect import LeaderElect, leader_only
from flask_goelect.core import ConfigError, LeaderInfo, Peer
from flask_goelect.decorators import current_term
from flask_goelect.extension import ExtensionState, LockError, _serving_process
from flask_goelect.testing import make_follower, make_leader
from goelect_harness.helpers import wait_until

# -- configuration ---------------------------------------------------------------------


def settings_of(app: Flask) -> Any:
    return app.extensions["goelect"].settings


def test_defaults_are_set_and_documented() -> None:
    app = make_app()
    LeaderElect(app)
    for key, value in {
        "GOELECT_HEARTBEAT_INTERVAL": 200,
        "GOELECT_ELECT_TIMEOUT": 2000,
        "GOELECT_CONNECT_TIMEOUT": 0.5,
        "GOELECT_CALLBACK_TIMEOUT": 5.0,
        "GOELECT_URL_PREFIX": "/_goelect",
        "GOELECT_FOLLOWER_RESPONSE": "503",
        "GOELECT_MAX_DRIFT": 0.01,
        "GOELECT_NOVOTE": False,
    }.items():
        assert app.config[key] == value, key
    doc = LeaderElect.init_app.__doc__ or ""
    for key in app.config:
        if key.startswith("GOELECT_"):
            assert f"``{key}``" in doc, f"{key} is not documented in init_app"
    s = settings_of(app)
    assert s.elect_timeout == 2.0 and s.heartbeat_interval == 0.2


def test_peers_forms_are_equivalent() -> None:
    forms: list[Any] = [
        ["n1=http://10.0.0.1:5000", "n2=http://10.0.0.2:5000/", "n3=http://10.0.0.3:5000"],
        " n1=http://10.0.0.1:5000, n2=http://10.0.0.2:5000 ,n3=http://10.0.0.3:5000,",
        [
            {"id": "n1", "address": "http://10.0.0.1:5000"},
            {"id": "n2", "address": "http://10.0.0.2:5000"},
            {"id": "n3", "address": "http://10.0.0.3:5000", "novote": False, "tags": {}},
        ],
        {"n1": "http://10.0.0.1:5000", "n2": "http://10.0.0.2:5000", "n3": "http://10.0.0.3:5000"},
    ]
    configs = []
    for peers in forms:
        app = make_app(GOELECT_PEERS=peers)
        LeaderElect(app)
        configs.append(settings_of(app).election)
    assert all(c == configs[0] for c in configs)
    assert configs[0].voters == {"n1", "n2", "n3"}
    assert settings_of(app).node_address == "http://10.0.0.1:5000"


def test_node_is_added_to_voters_when_not_listed() -> None:
    app = make_app(
        GOELECT_NODE_ID="n4",
        GOELECT_NODE_ADDRESS="http://10.0.0.4:5000",
        GOELECT_TAGS="zone=b, rack=3",
    )
    elect = LeaderElect(app)
    assert settings_of(app).election.voters == {"n1", "n2", "n3", "n4"}
    assert elect.node == Peer("n4", "http://10.0.0.4:5000", False, {"zone": "b", "rack": "3"})


def test_novote_and_tags_from_a_peer_dict() -> None:
    app = make_app(
        GOELECT_NODE_ID="o1",
        GOELECT_PEERS=[
            "n1=http://10.0.0.1:5000",
            {"id": "o1", "address": "http://10.0.0.9:5000", "novote": True, "tags": {"r": "x"}},
        ],
    )
    elect = LeaderElect(app)
    assert elect.node.novote and elect.node.tags == {"r": "x"}
    assert settings_of(app).election.observers == {"o1"}


def test_env_var_style_values() -> None:
    app = make_app(
        GOELECT_PEERS="n1=http://127.0.0.1:5001,n2=http://127.0.0.1:5002",
        GOELECT_ELECT_TIMEOUT="300",
        GOELECT_HEARTBEAT_INTERVAL="50",
        GOELECT_AUTOSTART="false",
        GOELECT_NOVOTE="0",
    )
    LeaderElect(app)
    s = settings_of(app)
    assert (s.elect_timeout, s.heartbeat_interval, s.autostart) == (0.3, 0.05, False)


def test_options_override_config() -> None:
    app = make_app(GOELECT_ELECT_TIMEOUT=5000)
    LeaderElect(app, elect_timeout=400, heartbeat_interval=40, url_prefix="/election/")
    s = settings_of(app)
    assert (s.elect_timeout, s.heartbeat_interval, s.url_prefix) == (0.4, 0.04, "/election")
    assert "goelect.status" in app.view_functions
    assert any(r.rule == "/election/status" for r in app.url_map.iter_rules())


def test_unknown_option_is_refused() -> None:
    with pytest.raises(TypeError, match="elect_timeout"):
        LeaderElect(election_timeout=100)


def test_unknown_config_key_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(GOELECT_ELECTION_TIMEOUT=100)
    with caplog.at_level(logging.WARNING, "flask_goelect"):
        LeaderElect(app)
    assert "GOELECT_ELECTION_TIMEOUT" in caplog.text and "GOELECT_ELECT_TIMEOUT" in caplog.text


def test_default_state_file_is_in_the_instance_folder() -> None:
    app = make_app(GOELECT_STATE_FILE=None)
    LeaderElect(app)
    assert settings_of(app).state_file == f"{app.instance_path}/goelect-n1.json"


BAD_CONFIGS = [
    # (config changes, key named in the message, words of the fix)
    ({"GOELECT_NODE_ID": None}, "GOELECT_NODE_ID", "unique"),
    ({"GOELECT_NODE_ID": "bad id!"}, "GOELECT_NODE_ID", "characters"),
    (
        {"GOELECT_NODE_ID": "n9", "GOELECT_NODE_ADDRESS": None},
        "GOELECT_NODE_ADDRESS",
        "base URL",
    ),
    ({"GOELECT_NODE_ADDRESS": "10.0.0.1:5000"}, "GOELECT_NODE_ADDRESS", "http://"),
    (
        {"GOELECT_PEERS": ["n1=http://a:1", "n2=http://b:1", "n2=http://c:1"]},
        "GOELECT_PEERS",
        "list each node once",
    ),
    ({"GOELECT_PEERS": ["n1=http://a:1", "n2 http://b:1"]}, "GOELECT_PEERS", "'id=url'"),
    ({"GOELECT_PEERS": ["n1=http://a:1", "n2="]}, "GOELECT_PEERS", "'id=url'"),
    ({"GOELECT_PEERS": ["n1=http://a:1", 42]}, "GOELECT_PEERS", "'id=url'"),
    ({"GOELECT_PEERS": [{"id": "n2"}]}, "GOELECT_PEERS", "'address'"),
    ({"GOELECT_PEERS": [{"id": "n2", "adress": "http://b:1"}]}, "GOELECT_PEERS", "adress"),
    ({"GOELECT_PEERS": ["n1=ftp://a:1"]}, "GOELECT_PEERS", "base URL"),
    ({"GOELECT_PEERS": 5}, "GOELECT_PEERS", "comma-separated"),
    (
        {"GOELECT_PEERS": ["n1=http://a:1", "n2=http://a:1"]},
        "GOELECT_PEERS",
        "its own address",
    ),
    (
        {"GOELECT_NODE_ADDRESS": "http://other:1", "GOELECT_PEERS": ["n1=http://a:1"]},
        "GOELECT_NODE_ADDRESS",
        "two addresses",
    ),
    (
        {"GOELECT_NODE_ADDRESS": "http://b:1", "GOELECT_PEERS": ["n2=http://b:1"]},
        "GOELECT_NODE_ADDRESS",
        "own address",
    ),
    (
        {"GOELECT_HEARTBEAT_INTERVAL": 600, "GOELECT_ELECT_TIMEOUT": 1000},
        "GOELECT_HEARTBEAT_INTERVAL",
        "GOELECT_ELECT_TIMEOUT",
    ),
    ({"GOELECT_ELECT_TIMEOUT": 0}, "GOELECT_ELECT_TIMEOUT", "positive"),
    ({"GOELECT_HEARTBEAT_INTERVAL": -5}, "GOELECT_HEARTBEAT_INTERVAL", "positive"),
    ({"GOELECT_CONNECT_TIMEOUT": 0}, "GOELECT_CONNECT_TIMEOUT", "positive"),
    ({"GOELECT_CALLBACK_TIMEOUT": "soon"}, "GOELECT_CALLBACK_TIMEOUT", "number"),
    ({"GOELECT_ELECT_TIMEOUT": True}, "GOELECT_ELECT_TIMEOUT", "number"),
    ({"GOELECT_ELECT_TIMEOUT": float("nan")}, "GOELECT_ELECT_TIMEOUT", "positive"),
    ({"GOELECT_MAX_DRIFT": 0.7}, "GOELECT_MAX_DRIFT", "[0, 0.5)"),
    ({"GOELECT_FOLLOWER_RESPONSE": "302"}, "GOELECT_FOLLOWER_RESPONSE", "redirect"),
    ({"GOELECT_FOLLOWER_REVEALS": "everything"}, "GOELECT_FOLLOWER_REVEALS", "'address'"),
    ({"GOELECT_PUBLIC_URLS": {"n7": "https://x.example"}}, "GOELECT_PUBLIC_URLS", "peer list"),
    ({"GOELECT_URL_PREFIX": "goelect"}, "GOELECT_URL_PREFIX", "starting with '/'"),
    ({"GOELECT_AUTOSTART": "maybe"}, "GOELECT_AUTOSTART", "true or false"),
    ({"GOELECT_TAGS": "zone"}, "GOELECT_TAGS", "key=value"),
    ({"GOELECT_TAGS": {"k": 1}}, "GOELECT_TAGS", "string"),
    ({"GOELECT_STATE_FILE": 3}, "GOELECT_STATE_FILE", "path"),
    (
        {"GOELECT_NOVOTE": True, "GOELECT_PEERS": ["n1=http://a:1"]},
        "GOELECT_NOVOTE",
        "agree",
    ),
    (
        {"GOELECT_PEERS": [{"id": "n1", "address": "http://a:1", "novote": True}]},
        "GOELECT_PEERS",
        "voters",
    ),
]


@pytest.mark.parametrize(("changes", "key", "fix"), BAD_CONFIGS)
def test_bad_config_names_the_key_and_the_fix(changes: dict[str, Any], key: str, fix: str) -> None:
    app = make_app(**changes)
    with pytest.raises(ConfigError) as info:
        LeaderElect(app)
    assert key in str(info.value)
    assert fix in str(info.value)
    assert "goelect" not in app.extensions, "a refused config must not register anything"


# -- registration and which app --------------------------------------------------------


def test_double_registration_is_refused() -> None:
    app = make_app()
    elect = LeaderElect(app)
    with pytest.raises(RuntimeError, match="already been registered"):
        elect.init_app(app)
    with pytest.raises(RuntimeError, match="already been registered"):
        LeaderElect(app)


def test_state_lives_in_app_extensions_not_on_the_extension() -> None:
    app = make_app()
    elect = LeaderElect(app)
    state = app.extensions["goelect"]
    assert isinstance(state, ExtensionState) and state.extension is elect
    assert not hasattr(elect, "app")
    assert "goelect" in app.cli.commands


def test_app_factory() -> None:
    elect = LeaderElect()

    def create_app(node_id: str) -> Flask:
        app = make_app(node_id)
        elect.init_app(app)
        return app

    app = create_app("n2")
    assert elect.node.id == "n2"
    assert elect.state == "stopped" and elect.term == 0 and elect.leader is None
    assert not elect.is_leader and not elect.running
    assert app.extensions["goelect"].settings.node_id == "n2"


def test_two_apps_in_one_process_answer_for_current_app() -> None:
    elect = LeaderElect()
    app1, app2 = make_app("n1"), make_app("n2")
    elect.init_app(app1)
    elect.init_app(app2)
    with pytest.raises(RuntimeError, match="serves 2 apps.*app context"):
        _ = elect.is_leader
    with app1.app_context():
        assert elect.node.id == "n1"
    with app2.app_context():
        assert elect.node.id == "n2"
    with make_leader(app1, term=4), make_follower(app2, leader_id="n1", term=4):
        with app1.app_context():
            assert elect.is_leader and elect.state == "leader" and elect.term == 4
        with app2.app_context():
            assert not elect.is_leader and elect.state == "follower"
            assert elect.leader == LeaderInfo("n1", "http://127.0.0.1:1", {})
    # An app that this object does not serve is not used by mistake.
    other = make_app("n3")
    LeaderElect(other)
    with other.app_context(), pytest.raises(RuntimeError, match="serves 2 apps"):
        _ = elect.state


def test_single_app_is_used_without_a_context() -> None:
    app = make_app()
    elect = LeaderElect(app)
    with make_leader(app, term=2):
        assert elect.is_leader and elect.term == 2


def test_unregistered_extension_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="init_app"):
        _ = LeaderElect().state


def test_routes_on_a_host_blueprint() -> None:
    app = make_app()
    api = Blueprint("api", __name__, url_prefix="/api/v1")
    LeaderElect(app, blueprint=api)
    state = app.extensions["goelect"]
    assert not state.routes_ready
    app.register_blueprint(api)
    assert state.routes_ready and state.url_prefix == "/api/v1"
    rules = {r.rule for r in app.url_map.iter_rules()}
    assert {"/api/v1/rpc/vote", "/api/v1/status", "/api/v1/leader"} <= rules
    assert not any(r.startswith("/_goelect") for r in rules)
    with app.test_client() as client:
        assert client.get("/api/v1/health").status_code == 503
        # The host's own 404s under its prefix are left alone.
        assert client.get("/api/v1/nothing").mimetype == "text/html"


def test_host_blueprint_registered_at_another_prefix() -> None:
    app = make_app()
    api = Blueprint("api", __name__)
    LeaderElect(app, blueprint=api)
    app.register_blueprint(api, url_prefix="/internal")
    assert app.extensions["goelect"].url_prefix == "/internal"


def test_host_blueprint_already_registered_is_refused() -> None:
    app = make_app()
    api = Blueprint("api", __name__, url_prefix="/api")
    app.register_blueprint(api)
    with pytest.raises(RuntimeError, match="before app.register_blueprint"):
        LeaderElect(app, blueprint=api)


def test_start_refuses_until_the_host_blueprint_is_registered() -> None:
    app = make_app()
    elect = LeaderElect(app, blueprint=Blueprint("api", __name__))
    with pytest.raises(RuntimeError, match="register the blueprint"):
        elect.start()


# -- which process starts --------------------------------------------------------------


class FakeClickContext:
    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.command = type("Command", (), {"name": name})()
        self.params = params


@pytest.mark.parametrize(
    ("env", "command", "params", "serving"),
    [
        ({}, None, {}, True),  # gunicorn, waitress, python -m app
        ({"FLASK_RUN_FROM_CLI": "true"}, "run", {"reload": False}, True),
        ({"FLASK_RUN_FROM_CLI": "true"}, "run", {"reload": True}, False),  # watcher parent
        (
            {"FLASK_RUN_FROM_CLI": "true", "WERKZEUG_RUN_MAIN": "true"},
            "run",
            {"reload": True},
            True,
        ),  # reloader child
        ({"FLASK_RUN_FROM_CLI": "true", "FLASK_DEBUG": "1"}, "run", {"reload": None}, False),
        ({"FLASK_RUN_FROM_CLI": "true", "FLASK_DEBUG": "0"}, "run", {"reload": None}, True),
        ({"FLASK_RUN_FROM_CLI": "true"}, "shell", {}, False),
        ({"FLASK_RUN_FROM_CLI": "true"}, None, {}, False),  # e.g. flask goelect status
    ],
)
def test_autostart_only_in_the_serving_process(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    command: str | None,
    params: dict[str, Any],
    serving: bool,
) -> None:
    import click

    for name in ("FLASK_RUN_FROM_CLI", "WERKZEUG_RUN_MAIN", "FLASK_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ctx = FakeClickContext(command, params) if command else None
    monkeypatch.setattr(click, "get_current_context", lambda silent=False: ctx)
    assert _serving_process() is serving


# -- several nodes over real HTTP --------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(3, tmp_path)
    try:
        yield c
    finally:
        c.close()


def test_end_to_end_election_over_the_routes(cluster: Cluster) -> None:
    leader = cluster.wait_for_one_leader()
    follower = next(i for i in cluster.ids if i != leader)
    leader_app, follower_app = cluster.apps[leader], cluster.apps[follower]
    elect = cluster.elect

    with leader_app.app_context():
        assert elect.is_leader and elect.state == "leader" and elect.term >= 1
        assert elect.leader is not None and elect.leader.id == leader
        term = elect.term
        assert elect.wait_for_leader(1) == elect.leader
        cluster_state = elect.cluster_state(timeout=5)
    assert list(cluster_state) == cluster.ids
    for node_id, entry in cluster_state.items():
        assert entry["reachable"] is True, entry
        assert entry["leader_id"] == leader and entry["term"] == term
        assert entry["state"] == ("leader" if node_id == leader else "follower")

    with follower_app.app_context():
        assert not elect.is_leader and elect.state == "follower"
        assert (
            elect.leader is not None
            and elect.leader.address
            == cluster.apps[leader]
            .config["GOELECT_PEERS"][cluster.ids.index(leader)]
            .split("=", 1)[1]
        )

    # The status routes over the network tell the same story.
    with requests.Session() as session:
        leader_url = cluster.servers[leader].url
        follower_url = cluster.servers[follower].url
        assert session.get(f"{leader_url}/_goelect/leader", timeout=5).status_code == 200
        assert session.get(f"{follower_url}/_goelect/leader", timeout=5).status_code == 503
        assert session.get(f"{follower_url}/_goelect/health", timeout=5).status_code == 200
        status = session.get(f"{follower_url}/_goelect/status", timeout=5).json()
        assert status["leader_id"] == leader and status["last_contact"][leader] < 1

    # A hand-over: the target leads in the next term, within a round trip or so.
    with leader_app.app_context():
        target = elect.transfer_leadership(follower)
    assert target == follower
    assert cluster.wait_for_one_leader(exclude=leader) == follower
    assert cluster.snapshot(follower).term == term + 1

    # A graceful stop of the leader hands over to another voter.
    with cluster.apps[follower].app_context():
        elect.stop()
        assert elect.state == "stopped"
    new_leader = cluster.wait_for_one_leader(exclude=follower)

    # A stopped elector still answers status; a node that is down is reported
    # as unreachable, and the call still succeeds.
    with cluster.apps[new_leader].app_context():
        view = elect.cluster_state(timeout=2)
    assert view[follower]["reachable"] and view[follower]["state"] == "stopped"
    cluster.servers[follower].stop()
    with cluster.apps[new_leader].app_context():
        started = time.monotonic()
        view = elect.cluster_state(timeout=2)
    assert time.monotonic() - started < 4
    assert view[follower]["reachable"] is False and view[follower]["error"]
    assert view[new_leader]["reachable"] and view[new_leader]["state"] == "leader"


def test_follower_views_name_the_leader_end_to_end(tmp_path: Path) -> None:
    c = Cluster(2, tmp_path, start=False)
    for app in c.apps.values():

        @app.post("/work")
        @leader_only
        def work() -> Any:
            return {"term": current_term()}

    try:
        for node_id in c.ids:
            c.state(node_id).start()
        leader = c.wait_for_one_leader()
        follower = next(i for i in c.ids if i != leader)
        with requests.Session() as session:
            ok = session.post(f"{c.servers[leader].url}/work", timeout=5)
            assert ok.status_code == 200 and ok.json()["term"] == c.snapshot(leader).term
            refused = session.post(f"{c.servers[follower].url}/work", timeout=5)
            assert refused.status_code == 503
            assert set(refused.json()) == {"error", "message"}  # the topology stays hidden
    finally:
        c.close()


# -- the state file lock -----------------------------------------------------------------


def test_second_elector_for_one_node_refuses_to_start(tmp_path: Path) -> None:
    state_file = tmp_path / "n1.json"
    config = {
        "GOELECT_PEERS": [],
        "GOELECT_NODE_ADDRESS": "http://127.0.0.1:1",
        "GOELECT_STATE_FILE": str(state_file),
        "GOELECT_ELECT_TIMEOUT": 100,
        "GOELECT_HEARTBEAT_INTERVAL": 10,
    }
    first, second = make_app(**config), make_app(**config)
    e1, e2 = LeaderElect(first), LeaderElect(second)
    e1.start()
    try:
        with pytest.raises(LockError) as info:
            e2.start()
        message = str(info.value)
        assert str(state_file) in message and f"process {os.getpid()}" in message
        assert "one elector per node" in message and "GOELECT_STATE_FILE" in message
        assert not e2.running and e1.running
        e1.start()  # idempotent for the holder
    finally:
        e1.stop(transfer=False)
    e2.start()  # released on stop
    try:
        assert e2.wait_for_leader(5) is not None
    finally:
        e2.stop(transfer=False)
    assert e2.state == "stopped"


def test_autostart_starts_and_stop_releases(tmp_path: Path) -> None:
    app = make_app(
        GOELECT_PEERS=[],
        GOELECT_NODE_ADDRESS="http://127.0.0.1:1",
        GOELECT_STATE_FILE=str(tmp_path / "n1.json"),
        GOELECT_AUTOSTART=True,
    )
    elect = LeaderElect(app)
    try:
        assert elect.running
    finally:
        elect.stop()
    assert not elect.running
    assert (tmp_path / "n1.json.lock").read_text() == ""  # the token is wiped


def test_leader_task_runs_in_an_app_context_while_leading(tmp_path: Path) -> None:
    app = make_app(
        GOELECT_PEERS=[],
        GOELECT_NODE_ADDRESS="http://127.0.0.1:1",
        GOELECT_ELECT_TIMEOUT=100,
        GOELECT_HEARTBEAT_INTERVAL=10,
    )
    elect = LeaderElect(app)
    seen: list[tuple[int, bool]] = []
    done = threading.Event()

    @elect.leader_task
    def task(ctx: Any) -> None:
        from flask import current_app

        seen.append((ctx.term, current_app.name == app.name))
        done.set()
        ctx.wait(10)

    elect.start()
    try:
        assert done.wait(10)
        assert seen == [(1, True)]
    finally:
        elect.stop()


PROCESS_SCRIPT = """
import os, sys, time
from flask import Flask
from flask_goelect import LeaderElect

app = Flask("forked")
app.config.update(
    GOELECT_NODE_ID="n1",
    GOELECT_NODE_ADDRESS="http://127.0.0.1:1",
    GOELECT_STATE_FILE=sys.argv[1],
    GOELECT_ELECT_TIMEOUT=100,
    GOELECT_HEARTBEAT_INTERVAL=10,
)
elect = LeaderElect(app)
assert elect.running
assert elect.wait_for_leader(5) is not None


@elect.leader_only
def job():
    return "ran"


if sys.argv[2] == "fork":
    term = elect.term
    pid = os.fork()
    if pid == 0:
        # A child forked by the application reads the node's state from the
        # parent's elector; it runs no elector and no jobs of its own.
        ok = elect.running and elect.wait_for_leader(5) is not None
        print("child", ok, elect.is_leader, elect.term == term, job(), flush=True)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    print("parent", elect.state, os.waitstatus_to_exitcode(status), elect.term == term, job(),
          flush=True)
elif sys.argv[2] == "multiprocessing":
    import multiprocessing

    term = elect.term

    def child(queue):
        queue.put((elect.running, elect.is_leader, elect.term == term, job()))

    queue = multiprocessing.get_context("fork").Queue()
    worker = multiprocessing.get_context("fork").Process(target=child, args=(queue,))
    worker.start()
    seen = queue.get(timeout=10)
    worker.join(10)
    time.sleep(0.3)  # several heartbeats: the parent's elector goes on
    print("child", *seen, "parent", elect.state, elect.term == term, job(), flush=True)
else:
    print("exiting", elect.state, flush=True)
# Falls off the end: atexit stops the elector (a lone leader cannot hand over).
"""


def run_script(tmp_path: Path, mode: str) -> list[str]:
    script = tmp_path / "node.py"
    script.write_text(PROCESS_SCRIPT)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script), str(tmp_path / "n1.json"), mode],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15, "the process did not exit promptly"
    return result.stdout.split()


def test_a_fork_never_moves_the_elector(tmp_path: Path) -> None:
    out = run_script(tmp_path, "fork")
    # The child sees the node lead (its views would pass) but runs no job.
    assert out[:5] == ["child", "True", "True", "True", "None"], out
    # The parent keeps its elector, its leadership and its term, and runs the job.
    assert out[5:] == ["parent", "leader", "0", "True", "ran"], out


def test_a_multiprocessing_child_leaves_the_elector_and_its_leadership(tmp_path: Path) -> None:
    out = run_script(tmp_path, "multiprocessing")
    assert out == ["child", "True", "True", "True", "None", "parent", "leader", "True", "ran"]


def test_exit_stops_the_elector(tmp_path: Path) -> None:
    assert run_script(tmp_path, "exit") == ["exiting", "leader"]
    assert (tmp_path / "n1.json.lock").read_text() == ""  # stopped by atexit


def test_a_stopping_leader_steps_out_of_its_balancer_first() -> None:
    # GOELECT_HANDOVER_DRAIN: /leader answers 503 while the node still leads and
    # serves, so that a balancer routing by it moves before the hand-over.
    app = make_app(
        GOELECT_PEERS=[],
        GOELECT_NODE_ADDRESS="http://127.0.0.1:1",
        GOELECT_ELECT_TIMEOUT=100,
        GOELECT_HEARTBEAT_INTERVAL=10,
        GOELECT_HANDOVER_DRAIN=400,
    )
    elect = LeaderElect(app)
    elect.start()
    client = app.test_client()
    assert elect.wait_for_leader(5) is not None
    assert client.get("/_goelect/leader").status_code == 200
    stopper = threading.Thread(target=elect.stop)
    stopper.start()
    try:
        seen = wait_until(lambda: client.get("/_goelect/leader").status_code == 503, 2)
        assert seen
        answer = client.get("/_goelect/leader")
        assert answer.json["stepping_down"] is True and answer.json["is_leader"] is False
        assert elect.is_leader  # it still leads meanwhile
    finally:
        stopper.join(10)
    assert not elect.running and client.get("/_goelect/leader").json["stepping_down"] is False
