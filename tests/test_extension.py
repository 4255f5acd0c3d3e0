"""LeaderElect: configuration, registration, app resolution, lifecycle and the state file lock."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Blueprint, Flask
from flask_testing_compat import make_app, no_leaked_context  # noqa: F401

from flask_goelect import LeaderElect
from flask_goelect.core import ConfigError, LeaderInfo, Peer
from flask_goelect.extension import ExtensionState, _serving_process
from flask_goelect.testing import make_follower, make_leader

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
