"""The table of ``GOELECT_*`` keys: what is generated from it, durations, and Config's fields."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from live_nodes import make_app

from flask_goelect import LeaderElect, _settings
from flask_goelect._settings import (
    CONFIG_FIELD_KEYS,
    DEFAULTS,
    DOC_FILES,
    KEYS,
    TABLE,
    default_text,
    generated_parts,
    markdown_table,
    rst_keys,
    update_markdown,
)
from flask_goelect.core import Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]

# -- the table and what is generated from it ------------------------------------------------


def test_each_key_is_in_the_table_once() -> None:
    names = [k.name for k in TABLE]
    assert len(names) == len(set(names))
    assert list(DEFAULTS) == names and KEYS == set(names)
    for k in TABLE:
        assert k.doc and "\n" not in k.doc + k.more + k.why, k.name
        assert k.unit in (None, "ms", "s"), k.name
    durations = {k.name: k.unit for k in TABLE if k.unit}
    assert durations == {
        "ELECT_TIMEOUT": "ms",
        "HEARTBEAT_INTERVAL": "ms",
        "HANDOVER_DRAIN": "ms",
        "CONNECT_TIMEOUT": "s",
        "CALLBACK_TIMEOUT": "s",
    }


@pytest.mark.parametrize(
    ("name", "parts"),
    [("README.md", ["short-table"]), ("docs/configuration.md", ["table", "why"])],
)
def test_docs_agree_with_the_table(name: str, parts: list[str]) -> None:
    assert name in DOC_FILES
    text = (ROOT / name).read_text(encoding="utf-8")
    assert generated_parts(text) == parts, f"{name} lost a generated part's markers"
    for k in TABLE:
        row = f"| `{k.key}` | {default_text(k)} |"
        assert row in text, f"{name} has no row {row!r}"
    assert update_markdown(text) == text, (
        f"{name} disagrees with the table in flask_goelect/_settings.py:"
        " run python -m flask_goelect._settings --write"
    )


def test_init_app_docs_are_generated_from_the_table() -> None:
    doc = LeaderElect.init_app.__doc__ or ""
    assert rst_keys() in doc
    assert doc.startswith("Register the extension") and ":raises RuntimeError:" in doc
    # Definition list entries: the key, then its text indented, ending with the default.
    for k in TABLE:
        entry = doc.split(f"``{k.key}``\n", 1)[1].split("\n``", 1)[0].split("\n\n", 1)[0]
        default = default_text(k).replace("`", "``")
        ending = "Required." if k.required else f"Default: {default}."
        assert " ".join(entry.split()).endswith(ending), k.name


def test_write_updates_a_stale_copy_of_the_docs(tmp_path: Path) -> None:
    for name in DOC_FILES:
        text = (ROOT / name).read_text(encoding="utf-8")
        stale = text.replace(f"| `{TABLE[0].key}` |", "| `GOELECT_NODE_IDENT` |")
        assert stale != text
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(stale, encoding="utf-8")
    assert _settings.main(["--write", str(tmp_path)]) == 0
    for name in DOC_FILES:
        assert (tmp_path / name).read_text(encoding="utf-8") == (ROOT / name).read_text(
            encoding="utf-8"
        )


def test_write_refuses_a_folder_without_the_docs(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _settings.main(["--write", str(tmp_path)])


def test_markdown_command_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flask_goelect._settings", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert out == markdown_table() + "\n"
    assert all(f"`{k.key}`" in out for k in TABLE)


# -- durations ----------------------------------------------------------------------------

DURATIONS = [
    # (key, Settings attribute, a timedelta, the same in the key's unit, in seconds)
    ("GOELECT_ELECT_TIMEOUT", "elect_timeout", timedelta(seconds=3), 3000, 3.0),
    ("GOELECT_HEARTBEAT_INTERVAL", "heartbeat_interval", timedelta(milliseconds=150), 150, 0.15),
    ("GOELECT_CONNECT_TIMEOUT", "connect_timeout", timedelta(milliseconds=250), 0.25, 0.25),
    ("GOELECT_CALLBACK_TIMEOUT", "callback_timeout", timedelta(minutes=1), 60, 60.0),
]


@pytest.mark.parametrize(("name", "attribute", "delta", "number", "seconds"), DURATIONS)
def test_durations_take_a_timedelta_a_number_or_a_string(
    name: str, attribute: str, delta: timedelta, number: float, seconds: float
) -> None:
    for value in (delta, number, str(number), f" {number} "):
        app = make_app(**{name: value})
        LeaderElect(app)
        got = getattr(app.extensions["goelect"].settings, attribute)
        assert got == pytest.approx(seconds), (name, value)
    option = name.removeprefix("GOELECT_").lower()
    app = make_app()
    LeaderElect(app, **{option: delta})
    assert getattr(app.extensions["goelect"].settings, attribute) == pytest.approx(seconds)


@pytest.mark.parametrize("name", [d[0] for d in DURATIONS])
@pytest.mark.parametrize("delta", [timedelta(0), timedelta(milliseconds=-1)])
def test_a_timedelta_that_is_not_positive_names_the_key(name: str, delta: timedelta) -> None:
    app = make_app(**{name: delta})
    with pytest.raises(ConfigError) as info:
        LeaderElect(app)
    assert str(info.value).startswith(f"{name} must be a positive duration")
    assert "goelect" not in app.extensions


def test_the_heartbeat_rule_holds_for_timedeltas_in_milliseconds() -> None:
    app = make_app(
        GOELECT_ELECT_TIMEOUT=timedelta(seconds=1),
        GOELECT_HEARTBEAT_INTERVAL=timedelta(milliseconds=600),
    )
    with pytest.raises(ConfigError, match=r"HEARTBEAT_INTERVAL \(600 ms\) .* \(1000 ms\)"):
        LeaderElect(app)


# -- Config's errors name their field; load_settings names the keys -------------------


def test_field_keys_name_config_fields_and_table_keys() -> None:
    fields = {f.name for f in dataclasses.fields(Config)}
    assert set(CONFIG_FIELD_KEYS) - {None} <= fields
    assert all(set(names) <= KEYS for names in CONFIG_FIELD_KEYS.values())


@pytest.mark.parametrize("field", list(CONFIG_FIELD_KEYS))
def test_a_config_error_is_given_the_keys_of_its_field(
    field: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(**kwargs: Any) -> Config:
        # A text that names other settings: only the field may decide the keys.
        raise ConfigError("the cluster has no voters; tags; max_drift", field=field)

    monkeypatch.setattr(_settings.core, "Config", refuse)
    with pytest.raises(ConfigError) as info:
        LeaderElect(make_app())
    prefix = " / ".join("GOELECT_" + n for n in CONFIG_FIELD_KEYS[field])
    assert str(info.value) == f"{prefix}: the cluster has no voters; tags; max_drift"


def test_config_produces_the_messages_it_words_best() -> None:
    """The drift bound, a node listed twice and a cluster without voters: Config's words."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"GOELECT_MAX_DRIFT": "0.5"}, "GOELECT_MAX_DRIFT: max_drift must be a fraction"),
        (
            {"GOELECT_PEERS": ["n1=http://a:1", "n1=http://a:1"]},
            "GOELECT_PEERS: node 'n1' is listed twice",
        ),
        (
            {"GOELECT_PEERS": [], "GOELECT_NODE_ADDRESS": "http://a:1", "GOELECT_NOVOTE": True},
            "GOELECT_PEERS / GOELECT_NOVOTE: the cluster has no voters",
        ),
    ]
    for changes, start in cases:
        with pytest.raises(ConfigError) as info:
            LeaderElect(make_app(**changes))
        assert str(info.value).startswith(start), str(info.value)
