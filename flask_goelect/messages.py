"""The election's wire messages: frozen dataclasses with strict JSON parsing.

Every RPC and reply is a frozen dataclass. :func:`to_wire` turns one into a
JSON-ready ``dict``; :func:`from_wire` parses a decoded JSON object back into the
named class and refuses anything that is not exactly right (wrong types, missing
or unknown fields, negative or absurd numbers, oversized strings) with one
exception type, :class:`MessageError`, whose text says what was wrong.

This module is pure (standard library only, no I/O) so that the core can use
the message types directly, the way etcd's ``raft`` uses ``raftpb``.

**The voter set on the wire.** Every request (:class:`VoteRequest`,
:class:`Heartbeat`, :class:`TimeoutNow`) carries ``voter_set``, the fingerprint
of the voter set its sender is configured with (:func:`voter_set_fingerprint`):
``"<number of voters>:<16 hex digits>"``, the digits the start of the SHA-256 of
the sorted voter ids, one per line. Observers, addresses and tags are not in it:
adding an observer or moving a node changes no majority. A node refuses a
request whose fingerprint differs from its own (the core raises
:class:`~flask_goelect.core.VoterSetMismatch`; over HTTP the answer is 409
``voter_set_mismatch``) and changes nothing, because two nodes that count
different majorities can elect two leaders in one term (see
``docs/membership.md``). A request without the field (``""``: a sender of an
earlier version, or a tool) states no voter set and is not checked; every node of
this version states it. Replies do not carry it: a node answers only requests
whose fingerprint matched its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_REASON_LENGTH",
    "MAX_SEQ",
    "MAX_TAGS",
    "MAX_TAG_KEY_LENGTH",
    "MAX_TAG_VALUE_LENGTH",
    "MAX_TERM",
    "NODE_ID_PATTERN",
    "VOTER_SET_PATTERN",
    "REPLY_FOR",
    "REQUEST_TYPES",
    "Heartbeat",
    "HeartbeatReply",
    "Message",
    "MessageError",
    "Reply",
    "Request",
    "TimeoutNow",
    "TimeoutNowReply",
    "VoteReply",
    "VoteRequest",
    "encode",
    "from_wire",
    "to_wire",
    "validate_node_id",
    "validate_tags",
    "voter_set_fingerprint",
]

#: Largest term accepted: the largest integer a JSON double holds exactly.
MAX_TERM = 2**53 - 1
#: Largest heartbeat round number accepted.
MAX_SEQ = 2**53 - 1
#: Node ids: short, printable, safe in URLs, logs and file names.
MAX_ID_LENGTH = 64
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
MAX_ADDRESS_LENGTH = 2048
MAX_TAGS = 32
MAX_TAG_KEY_LENGTH = 64
MAX_TAG_VALUE_LENGTH = 256
MAX_REASON_LENGTH = 256
#: A voter-set fingerprint: the number of voters, a colon, 16 lower-case hex digits.
VOTER_SET_PATTERN = re.compile(r"[1-9][0-9]{0,5}:[0-9a-f]{16}")


class MessageError(ValueError):
    """A message failed validation; the text says which field and why."""


def validate_node_id(value: object, what: str = "node id") -> str:
    """Return ``value`` if it is a valid node id, else raise :class:`MessageError`."""
    if not isinstance(value, str):
        raise MessageError(f"{what} must be a string, not {type(value).__name__}")
    if not NODE_ID_PATTERN.fullmatch(value):
        raise MessageError(
            f"{what} {value[:80]!r} is invalid: use 1-{MAX_ID_LENGTH} characters from"
            " A-Z a-z 0-9 . _ : - starting with a letter or digit"
        )
    return value


def validate_tags(value: object, what: str = "tags") -> dict[str, str]:
    """Return a copy of ``value`` if it is a valid tag mapping, else raise."""
    if not isinstance(value, Mapping):
        raise MessageError(f"{what} must be an object of strings, not {type(value).__name__}")
    if len(value) > MAX_TAGS:
        raise MessageError(f"{what} has {len(value)} entries; at most {MAX_TAGS} are allowed")
    tags: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_TAG_KEY_LENGTH:
            raise MessageError(f"{what} keys must be strings of 1-{MAX_TAG_KEY_LENGTH} characters")
        if not isinstance(val, str) or len(val) > MAX_TAG_VALUE_LENGTH:
            raise MessageError(
                f"{what}[{key!r}] must be a string of at most {MAX_TAG_VALUE_LENGTH} characters"
            )
        tags[key] = val
    return tags


def voter_set_fingerprint(voters: Iterable[str]) -> str:
    """The fingerprint of a voter set, as requests carry it in ``voter_set``.

    ``"<count>:<hex>"``: the number of voters and the first 16 hex digits of the
    SHA-256 of the sorted ids, one per line (ids cannot hold a newline). The
    order in which peers are listed does not matter; which nodes vote does.
    """
    ids = sorted(set(voters))
    if not ids:
        raise ValueError("a voter set has at least one voter")
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return f"{len(ids)}:{digest}"


@dataclass(frozen=True, slots=True)
class VoteRequest:
    """Ask for a vote (or, with ``pre_vote``, whether a vote would be given).

    A pre-vote asks about ``term`` without anyone changing their term (Raft
    thesis §9.6). ``transfer`` marks a campaign started by a leadership transfer:
    voters grant it despite leader stickiness (thesis §3.10). ``voter_set`` is
    the fingerprint of the sender's voter set (see the module's docs).
    """

    sender: str
    term: int
    pre_vote: bool = False
    transfer: bool = False
    voter_set: str = ""


@dataclass(frozen=True, slots=True)
class VoteReply:
    """The answer to a :class:`VoteRequest`; ``reason`` says why a vote was refused."""

    sender: str
    term: int
    granted: bool
    pre_vote: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The leader's periodic message (AppendEntries without entries).

    ``seq`` numbers the heartbeat round so that a reply can be matched to the
    send time of its round (the leader lease is computed from send times).
    ``address`` and ``tags`` tell followers where and what the leader is;
    ``voter_set`` is the fingerprint of the leader's voter set.
    """

    sender: str
    term: int
    seq: int
    address: str = ""
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)
    voter_set: str = ""


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """The answer to a :class:`Heartbeat`; ``success`` is False for a stale leader."""

    sender: str
    term: int
    seq: int
    success: bool


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """A leader hands over: the receiver should campaign at once (thesis §3.10).

    ``voter_set`` is the fingerprint of the leader's voter set.
    """

    sender: str
    term: int
    voter_set: str = ""


@dataclass(frozen=True, slots=True)
class TimeoutNowReply:
    """The answer to a :class:`TimeoutNow`: whether the receiver campaigns."""

    sender: str
    term: int
    accepted: bool


Request = VoteRequest | Heartbeat | TimeoutNow
Reply = VoteReply | HeartbeatReply | TimeoutNowReply
Message = Request | Reply

#: The request types, by the name used in RPC routes.
REQUEST_TYPES: dict[str, type[Request]] = {
    "vote": VoteRequest,
    "heartbeat": Heartbeat,
    "timeout-now": TimeoutNow,
}
#: For each request type, the type of its reply.
REPLY_FOR: dict[type[Request], type[Reply]] = {
    VoteRequest: VoteReply,
    Heartbeat: HeartbeatReply,
    TimeoutNow: TimeoutNowReply,
}

M = TypeVar("M", VoteRequest, VoteReply, Heartbeat, HeartbeatReply, TimeoutNow, TimeoutNowReply)


def to_wire(msg: Message) -> dict[str, Any]:
    """Return ``msg`` as a JSON-ready ``dict`` (the inverse of :func:`from_wire`)."""
    out = {name: getattr(msg, name) for name in _layout(type(msg))[0]}
    if "tags" in out:
        out["tags"] = dict(out["tags"])
    return out


#: Compact JSON, made once (``json.dumps`` with options builds an encoder per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(msg: Message) -> bytes:
    """``msg`` as the compact JSON body of an RPC or its reply."""
    return _ENCODER.encode(to_wire(msg)).encode()


#: Per message class: its field names in order, and those without a default.
_LAYOUTS: dict[type, tuple[tuple[str, ...], frozenset[str]]] = {}


def _layout(cls: type) -> tuple[tuple[str, ...], frozenset[str]]:
    """The field names of a message class, in order, and those without a default
    (read once per class, not on every message)."""
    layout = _LAYOUTS.get(cls)
    if layout is None:
        fields = dataclasses.fields(cls)
        required = frozenset(
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        layout = _LAYOUTS[cls] = (tuple(f.name for f in fields), required)
    return layout


def _check_int(name: str, value: object, maximum: int) -> int:
    # bool is an int subclass: True must not pass as term 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MessageError(f"field {name!r} must be an integer, not {type(value).__name__}")
    if not 0 <= value <= maximum:
        # Never format a huge int: str() of one over 4300 digits raises ValueError.
        shown = (
            str(value)
            if -(10**20) < value < 10**20
            else ("a huge negative number" if value < 0 else "a huge number")
        )
        raise MessageError(f"field {name!r} is {shown}; it must be between 0 and {maximum}")
    return value


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise MessageError(f"field {name!r} must be true or false, not {type(value).__name__}")
    return value


def _check_str(name: str, value: object, maximum: int) -> str:
    if not isinstance(value, str):
        raise MessageError(f"field {name!r} must be a string, not {type(value).__name__}")
    if len(value) > maximum:
        raise MessageError(f"field {name!r} is {len(value)} characters; at most {maximum} allowed")
    return value


def _check_voter_set(name: str, value: object) -> str:
    text = _check_str(name, value, 32)
    if text and not VOTER_SET_PATTERN.fullmatch(text):
        raise MessageError(
            f"field {name!r} is {text[:32]!r}; it must be a voter-set fingerprint like"
            " '3:0123456789abcdef', or empty"
        )
    return text


def _check_field(name: str, value: object) -> object:
    if name == "sender":
        return validate_node_id(value, "field 'sender'")
    if name == "term":
        return _check_int(name, value, MAX_TERM)
    if name == "seq":
        return _check_int(name, value, MAX_SEQ)
    if name in ("pre_vote", "transfer", "granted", "success", "accepted"):
        return _check_bool(name, value)
    if name == "address":
        return _check_str(name, value, MAX_ADDRESS_LENGTH)
    if name == "reason":
        return _check_str(name, value, MAX_REASON_LENGTH)
    if name == "tags":
        return validate_tags(value, "field 'tags'")
    if name == "voter_set":
        return _check_voter_set(name, value)
    raise AssertionError(f"no validator for field {name!r}")  # pragma: no cover


def from_wire(cls: type[M], data: object) -> M:
    """Parse a decoded JSON object into ``cls``, strictly.

    Fields that have a default may be left out; every other field is required.
    Unknown fields are refused, so a typo or a message of another version is
    reported rather than half understood.

    :raises MessageError: with a message that names the offending field.
    """
    if not isinstance(data, Mapping):
        raise MessageError(f"{cls.__name__} must be a JSON object, not {type(data).__name__}")
    names, required = _layout(cls)
    unknown = sorted(repr(k)[:40] for k in data if k not in names)
    if unknown:
        raise MessageError(f"{cls.__name__} has unknown field(s): {', '.join(unknown[:5])}")
    kwargs: dict[str, Any] = {}
    for name in names:
        if name in data:
            kwargs[name] = _check_field(name, data[name])
        elif name in required:
            raise MessageError(f"{cls.__name__} is missing required field {name!r}")
    return cls(**kwargs)
