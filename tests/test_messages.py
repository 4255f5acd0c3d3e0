"""Tests for the wire messages and their strict parsing (DESIGN.md layer 2)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_goelect.messages import (
    MAX_ADDRESS_LENGTH,
    MAX_ID_LENGTH,
    MAX_REASON_LENGTH,
    MAX_SEQ,
    MAX_TAG_KEY_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    MAX_TAGS,
    MAX_TERM,
    NODE_ID_PATTERN,
    REPLY_FOR,
    REQUEST_TYPES,
    Heartbeat,
    HeartbeatReply,
    MessageError,
    TimeoutNow,
    TimeoutNowReply,
    VoteReply,
    VoteRequest,
    from_wire,
    to_wire,
    validate_node_id,
    validate_tags,
    voter_set_fingerprint,
)

# One fully populated example of every message type, with no field at its default.
VOTERS = voter_set_fingerprint(["n1", "n2", "n3"])
FULL: dict[type[Any], dict[str, Any]] = {
    VoteRequest: {
        "sender": "n1",
        "term": 3,
        "pre_vote": True,
        "transfer": True,
        "voter_set": VOTERS,
    },
    VoteReply: {"sender": "n2", "term": 3, "granted": True, "pre_vote": True, "reason": "ok"},
    Heartbeat: {
        "sender": "n1",
        "term": 4,
        "seq": 17,
        "address": "http://10.0.0.1:5000",
        "tags": {"zone": "eu-1", "role": ""},
        "voter_set": VOTERS,
    },
    HeartbeatReply: {"sender": "n3", "term": 4, "seq": 17, "success": True},
    TimeoutNow: {"sender": "n1", "term": 5, "voter_set": VOTERS},
    TimeoutNowReply: {"sender": "n2", "term": 5, "accepted": True},
}
# The fields each type may leave out, and the value they then take.
DEFAULTS: dict[type[Any], dict[str, Any]] = {
    VoteRequest: {"pre_vote": False, "transfer": False, "voter_set": ""},
    VoteReply: {"pre_vote": False, "reason": ""},
    Heartbeat: {"address": "", "tags": {}, "voter_set": ""},
    HeartbeatReply: {},
    TimeoutNow: {"voter_set": ""},
    TimeoutNowReply: {},
}
CLASSES = list(FULL)
INT_FIELDS = {"term": MAX_TERM, "seq": MAX_SEQ}
BOOL_FIELDS = {"pre_vote", "transfer", "granted", "success", "accepted"}
STR_FIELDS = {"address": MAX_ADDRESS_LENGTH, "reason": MAX_REASON_LENGTH}


def cases(kinds: Mapping[str, object] | set[str]) -> list[tuple[type[Any], str]]:
    """Every (message type, field) pair where the field is one of ``kinds``."""
    return [(cls, name) for cls in CLASSES for name in FULL[cls] if name in kinds]


def with_field(cls: type[Any], name: str, value: object) -> dict[str, Any]:
    data = dict(FULL[cls])
    data[name] = value
    return data


def ids(case: object) -> str:
    return case.__name__ if isinstance(case, type) else str(case)


def rejects(cls: type[Any], data: object, *names: str) -> MessageError:
    """Assert that parsing fails with a MessageError whose text names ``names``."""
    with pytest.raises(MessageError) as exc:
        from_wire(cls, data)
    for name in names:
        assert name in str(exc.value), f"{name!r} not named in {str(exc.value)!r}"
    return exc.value


# -- round trips and defaults ---------------------------------------------------


def test_every_message_type_is_covered() -> None:
    types = set(REQUEST_TYPES.values()) | set(REPLY_FOR.values())
    assert types == set(FULL)
    for cls in CLASSES:
        assert set(FULL[cls]) == {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_round_trip(cls: type[Any]) -> None:
    msg = cls(**FULL[cls])
    wire = to_wire(msg)
    assert wire == FULL[cls]
    assert from_wire(cls, wire) == msg
    # Through real JSON text, as on the network.
    assert from_wire(cls, json.loads(json.dumps(wire))) == msg


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_optional_fields_take_their_defaults(cls: type[Any]) -> None:
    required = {k: v for k, v in FULL[cls].items() if k not in DEFAULTS[cls]}
    msg = from_wire(cls, required)
    for name, default in DEFAULTS[cls].items():
        assert getattr(msg, name) == default
    assert to_wire(msg) == {**required, **DEFAULTS[cls]}


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_messages_are_frozen(cls: type[Any]) -> None:
    msg = cls(**FULL[cls])
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.term = 99


def test_tags_are_copied_in_both_directions() -> None:
    tags = {"zone": "eu"}
    msg = from_wire(Heartbeat, {"sender": "n1", "term": 1, "seq": 0, "tags": tags})
    tags["zone"] = "us"
    assert msg.tags == {"zone": "eu"}
    wire = to_wire(msg)
    wire["tags"]["zone"] = "ap"
    assert msg.tags == {"zone": "eu"}


def test_request_and_reply_tables() -> None:
    assert REQUEST_TYPES == {"vote": VoteRequest, "heartbeat": Heartbeat, "timeout-now": TimeoutNow}
    assert REPLY_FOR[VoteRequest] is VoteReply
    assert REPLY_FOR[Heartbeat] is HeartbeatReply
    assert REPLY_FOR[TimeoutNow] is TimeoutNowReply


def test_message_error_is_a_value_error() -> None:
    assert issubclass(MessageError, ValueError)


# -- structure ------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
@pytest.mark.parametrize("data", [None, [], "x", 1, 1.5, True, [["sender", "n1"]], b"{}"], ids=repr)
def test_not_an_object(cls: type[Any], data: object) -> None:
    rejects(cls, data, cls.__name__, "object")


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_unknown_field(cls: type[Any]) -> None:
    rejects(cls, with_field(cls, "surprise", 1), "surprise", "unknown")


def test_unknown_field_from_another_message_type() -> None:
    data = {**FULL[TimeoutNow], "seq": 1}
    rejects(TimeoutNow, data, "seq")


@pytest.mark.parametrize(
    ("cls", "name"),
    [(c, n) for c in CLASSES for n in FULL[c] if n not in DEFAULTS[c]],
    ids=ids,
)
def test_missing_required_field(cls: type[Any], name: str) -> None:
    data = dict(FULL[cls])
    del data[name]
    rejects(cls, data, repr(name), "missing")


# -- types ----------------------------------------------------------------------

NOT_INTS = [True, False, "1", 1.0, 2.5, None, [1], {"v": 1}, float("nan")]
NOT_BOOLS = [0, 1, "true", "false", None, 1.0, [True]]
NOT_STRS = [1, None, True, ["x"], {"x": "y"}, b"x"]


@pytest.mark.parametrize(("cls", "name"), cases(INT_FIELDS), ids=ids)
@pytest.mark.parametrize("value", NOT_INTS, ids=repr)
def test_int_fields_refuse_other_types(cls: type[Any], name: str, value: object) -> None:
    rejects(cls, with_field(cls, name, value), repr(name), "integer")


@pytest.mark.parametrize(("cls", "name"), cases(BOOL_FIELDS), ids=ids)
@pytest.mark.parametrize("value", NOT_BOOLS, ids=repr)
def test_bool_fields_refuse_other_types(cls: type[Any], name: str, value: object) -> None:
    rejects(cls, with_field(cls, name, value), repr(name))


@pytest.mark.parametrize(("cls", "name"), cases(STR_FIELDS), ids=ids)
@pytest.mark.parametrize("value", NOT_STRS, ids=repr)
def test_str_fields_refuse_other_types(cls: type[Any], name: str, value: object) -> None:
    rejects(cls, with_field(cls, name, value), repr(name), "string")


@pytest.mark.parametrize(("cls", "name"), cases(BOOL_FIELDS), ids=ids)
@pytest.mark.parametrize("value", [True, False])
def test_bool_fields_accept_both_values(cls: type[Any], name: str, value: bool) -> None:
    assert getattr(from_wire(cls, with_field(cls, name, value)), name) is value


# -- ranges and sizes -----------------------------------------------------------


@pytest.mark.parametrize(("cls", "name"), cases(INT_FIELDS), ids=ids)
def test_int_field_range(cls: type[Any], name: str) -> None:
    maximum = INT_FIELDS[name]
    for ok in (0, 1, maximum):
        assert getattr(from_wire(cls, with_field(cls, name, ok)), name) == ok
    for bad in (-1, -(2**63), maximum + 1, 2**64, 10**100):
        rejects(cls, with_field(cls, name, bad), repr(name), str(maximum))


def test_huge_int_is_a_message_error() -> None:
    rejects(VoteRequest, with_field(VoteRequest, "term", 10**5000), "'term'")


@pytest.mark.parametrize(("cls", "name"), cases(STR_FIELDS), ids=ids)
def test_str_field_size(cls: type[Any], name: str) -> None:
    maximum = STR_FIELDS[name]
    for ok in ("", "x", "é" * maximum):
        assert getattr(from_wire(cls, with_field(cls, name, ok)), name) == ok
    rejects(cls, with_field(cls, name, "x" * (maximum + 1)), repr(name), str(maximum))
    rejects(cls, with_field(cls, name, "x" * 1_000_000), repr(name))


# -- the voter set ----------------------------------------------------------------


def test_voter_set_fingerprint_is_count_and_digest_of_the_sorted_ids() -> None:
    assert VOTERS == voter_set_fingerprint(["n3", "n1", "n2", "n1"])
    count, _, digest = VOTERS.partition(":")
    assert count == "3" and len(digest) == 16 and int(digest, 16) >= 0
    assert voter_set_fingerprint(["n1", "n2"]) != VOTERS
    assert voter_set_fingerprint(["n1", "n2", "n4"]).startswith("3:")
    assert voter_set_fingerprint(["n1", "n2", "n4"]) != VOTERS
    with pytest.raises(ValueError):
        voter_set_fingerprint([])


@pytest.mark.parametrize("cls", [VoteRequest, Heartbeat, TimeoutNow], ids=ids)
@pytest.mark.parametrize(
    "bad", ["3", "3:", "0:0123456789abcdef", "3:0123456789ABCDEF", "3:0123", "x" * 40, " 3:0"]
)
def test_voter_set_must_be_a_fingerprint_or_empty(cls: type[Any], bad: str) -> None:
    rejects(cls, with_field(cls, "voter_set", bad), "'voter_set'")
    assert from_wire(cls, with_field(cls, "voter_set", "")).voter_set == ""
    assert from_wire(cls, with_field(cls, "voter_set", "12:0123456789abcdef")).voter_set


@pytest.mark.parametrize("cls", [VoteReply, HeartbeatReply, TimeoutNowReply], ids=ids)
def test_replies_carry_no_voter_set(cls: type[Any]) -> None:
    rejects(cls, with_field(cls, "voter_set", VOTERS), "unknown", "'voter_set'")


# -- sender ids -----------------------------------------------------------------

VALID_IDS = ["n1", "1", "a" * MAX_ID_LENGTH, "node-1.eu_west:5000", "N.-_:"]
INVALID_IDS = [
    "",
    "a" * (MAX_ID_LENGTH + 1),
    "-n1",
    ".n1",
    "_n1",
    ":n1",
    "n 1",
    "n1 ",
    "n1\n",
    "n/1",
    "n\x001",
    "nœud",
    "١٢",  # Arabic-Indic digits: str.isdigit, but not ASCII
    "n1?x",
]
NON_STR_IDS: list[object] = [None, 1, True, 1.5, ["n1"], {"id": "n1"}]


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_valid_sender_ids(cls: type[Any]) -> None:
    for sender in VALID_IDS:
        assert from_wire(cls, with_field(cls, "sender", sender)).sender == sender


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
@pytest.mark.parametrize("sender", INVALID_IDS + NON_STR_IDS, ids=repr)
def test_invalid_sender_ids(cls: type[Any], sender: object) -> None:
    rejects(cls, with_field(cls, "sender", sender), "'sender'")


def test_validate_node_id_names_what_it_checks() -> None:
    assert validate_node_id("n1") == "n1"
    with pytest.raises(MessageError, match="GOELECT_NODE_ID"):
        validate_node_id("bad id", "GOELECT_NODE_ID")
    with pytest.raises(MessageError, match="node id must be a string, not int"):
        validate_node_id(5)


def test_invalid_id_message_is_bounded() -> None:
    with pytest.raises(MessageError) as exc:
        validate_node_id("x" * 100_000 + " ")
    assert len(str(exc.value)) < 300


# -- tags -----------------------------------------------------------------------


def heartbeat_with_tags(tags: object) -> dict[str, Any]:
    return with_field(Heartbeat, "tags", tags)


@pytest.mark.parametrize("tags", [[], ["a", "b"], "zone=eu", None, 1, True, [["a", "b"]]], ids=repr)
def test_tags_must_be_an_object(tags: object) -> None:
    rejects(Heartbeat, heartbeat_with_tags(tags), "'tags'")


def test_tags_count() -> None:
    most = {f"k{i}": "v" for i in range(MAX_TAGS)}
    assert from_wire(Heartbeat, heartbeat_with_tags(most)).tags == most
    too_many = {f"k{i}": "v" for i in range(MAX_TAGS + 1)}
    rejects(Heartbeat, heartbeat_with_tags(too_many), "'tags'", str(MAX_TAGS))


def test_tag_key_size() -> None:
    longest = {"k" * MAX_TAG_KEY_LENGTH: "v"}
    assert from_wire(Heartbeat, heartbeat_with_tags(longest)).tags == longest
    for bad in ("", "k" * (MAX_TAG_KEY_LENGTH + 1)):
        rejects(Heartbeat, heartbeat_with_tags({bad: "v"}), "'tags'", "keys")


def test_tag_value_size() -> None:
    longest = {"k": "v" * MAX_TAG_VALUE_LENGTH, "empty": ""}
    assert from_wire(Heartbeat, heartbeat_with_tags(longest)).tags == longest
    too_long = {"k": "v" * (MAX_TAG_VALUE_LENGTH + 1)}
    rejects(Heartbeat, heartbeat_with_tags(too_long), "'tags'", "'k'")


@pytest.mark.parametrize("value", [1, 1.5, None, True, ["v"], {"v": "w"}], ids=repr)
def test_tag_values_must_be_strings(value: object) -> None:
    rejects(Heartbeat, heartbeat_with_tags({"zone": value}), "'tags'", "'zone'")


def test_tag_keys_must_be_strings() -> None:
    # JSON keys are always strings, but from_wire also takes Python mappings.
    rejects(Heartbeat, heartbeat_with_tags({1: "v"}), "'tags'")


def test_validate_tags_directly() -> None:
    assert validate_tags({"a": "b"}) == {"a": "b"}
    with pytest.raises(MessageError, match="GOELECT_TAGS"):
        validate_tags([], "GOELECT_TAGS")


# -- property: nothing but MessageError ever escapes ----------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=10,
)


VALID_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "sender": st.from_regex(NODE_ID_PATTERN, fullmatch=True),
    "term": st.integers(0, MAX_TERM),
    "seq": st.integers(0, MAX_SEQ),
    **{name: st.booleans() for name in BOOL_FIELDS},
    "address": st.text(max_size=40),
    "reason": st.text(max_size=40),
    "tags": st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=4),
    "voter_set": st.just("") | st.lists(st.text(max_size=4), min_size=1).map(voter_set_fingerprint),
}


def field_shaped(cls: type[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects shaped like ``cls``: valid, valid but for one field, or noisy."""
    names = sorted(FULL[cls])
    valid = st.fixed_dictionaries(
        {n: VALID_VALUES[n] for n in names if n not in DEFAULTS[cls]},
        optional={n: VALID_VALUES[n] for n in DEFAULTS[cls]},
    )
    one_bad = st.builds(
        lambda base, name, value: {**base, name: value},
        valid,
        st.sampled_from(names),
        json_values,
    )
    noisy = st.dictionaries(st.sampled_from(names) | st.text(max_size=8), json_values, max_size=6)
    return valid | one_bad | noisy


# Each drawn value is parsed as every message type, so every type sees every example.
wire_values = json_values | st.sampled_from(CLASSES).flatmap(field_shaped)


@settings(max_examples=300, deadline=None, database=None)
@given(value=wire_values)
def test_from_wire_raises_only_message_error(value: object) -> None:
    for cls in CLASSES:
        try:
            msg = from_wire(cls, value)
        except MessageError:
            continue
        assert isinstance(msg, cls)
        assert from_wire(cls, to_wire(msg)) == msg
        # What was accepted is what was sent, once the defaults are filled in.
        assert isinstance(value, dict)
        assert to_wire(msg) == {**DEFAULTS[cls], **value}
