"""The ``GOELECT_*`` configuration: one table of keys, and the checking of one app's values.

:data:`TABLE` is the one place a key is written down: its default, the function
that checks a value, its unit and its documentation. ``DEFAULTS``, the docs of
``LeaderElect.init_app`` and the configuration tables of ``README.md`` and
``docs/configuration.md`` are generated from it (``python -m
flask_goelect._settings --write`` rewrites the Markdown; a test fails when it
is stale).

Every error names the configuration key and says how to fix it: a node that
starts with a wrong peer list or timing does not fail loudly later, it elects
badly. The rules between election fields are :class:`~flask_goelect.core.Config`'s;
its errors carry the field, which :data:`CONFIG_FIELD_KEYS` turns into keys.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import functools
import inspect
import logging
import math
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import auth, core
from .messages import (
    MAX_ADDRESS_LENGTH,
    MAX_ID_LENGTH,
    MAX_TAGS,
    NODE_ID_PATTERN,
    MessageError,
    validate_node_id,
    validate_tags,
)

__all__ = [
    "CONFIG_FIELD_KEYS",
    "DEFAULTS",
    "KEYS",
    "MEMORY",
    "TABLE",
    "ConfigKey",
    "Settings",
    "document_keys",
    "durability_warnings",
    "load_settings",
    "security_warnings",
]

PREFIX = "GOELECT_"

#: ``GOELECT_STATE_FILE`` value that keeps the term and vote in memory (tests only).
MEMORY = ":memory:"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

#: The units a number given for a duration may be in: name and how many make a second.
_UNITS = {"ms": ("milliseconds", 1000), "s": ("seconds", 1)}

logger = logging.getLogger("flask_goelect")


def key(name: str) -> str:
    return PREFIX + name


@dataclass(frozen=True)
class ConfigKey:
    """One ``GOELECT_*`` key: what the code needs and what the docs say about it.

    ``doc`` is one line (the README and the start of every other text); ``more``
    completes it in ``docs/configuration.md`` and ``init_app``; ``why`` says why
    the default is what it is. They are Markdown with `code` only, so that they
    convert to reST for the docstring.
    """

    name: str
    default: Any
    #: Checks one value given for this key and returns what the elector uses;
    #: raises :class:`~flask_goelect.core.ConfigError` naming the key.
    parse: Callable[[ConfigKey, object], Any]
    doc: str
    #: ``"ms"`` or ``"s"``: the unit of a number given for a duration.
    unit: str | None = None
    required: bool = False
    #: How the default reads when ``init_app`` computes it (Markdown).
    shown_default: str | None = None
    more: str = ""
    why: str = ""

    @property
    def key(self) -> str:
        return key(self.name)


def _error(message: str) -> core.ConfigError:
    return core.ConfigError(message)


# -- the checking functions -------------------------------------------------------------


def _duration(k: ConfigKey, value: object) -> float:
    """Seconds, from a ``timedelta`` or a number (or a string of one) in the key's unit."""
    assert k.unit is not None
    unit, per_second = _UNITS[k.unit]
    if isinstance(value, datetime.timedelta):
        if value <= datetime.timedelta(0):
            raise _error(
                f"{k.key} must be a positive duration, not a timedelta of"
                f" {value.total_seconds():g} seconds"
            )
        return value.total_seconds()
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _error(f"{k.key} must be a number of {unit}, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _error(
            f"{k.key} must be a number of {unit} or a datetime.timedelta,"
            f" not {type(value).__name__}"
        )
    if not math.isfinite(value) or value <= 0:
        raise _error(f"{k.key} must be a positive number of {unit}, not {value!r}")
    return float(value) / per_second


def _pause(k: ConfigKey, value: object) -> float:
    """A duration that may be zero (:func:`_duration` otherwise)."""
    if value in (0, 0.0, "0", "") or value == datetime.timedelta(0):
        return 0.0
    return _duration(k, value)


def _fraction(k: ConfigKey, value: object) -> float:
    """A number; :class:`~flask_goelect.core.Config` checks its range."""
    number = value
    if isinstance(number, str):
        try:
            number = float(number)
        except ValueError:
            pass
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise _error(f"{k.key} must be a fraction in [0, 0.5), like 0.01, not {value!r}")
    return float(number)


def _boolean(what: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _error(f"{what} must be true or false, not {value!r}")


def _flag(k: ConfigKey, value: object) -> bool:
    return _boolean(k.key, value)


def _pairs(what: str, text: str, form: str, example: str) -> dict[str, str]:
    """``'k=v,k2=v2'`` (how a dict is written in an environment variable) as a dict."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise _error(
                f"{what} entry {item!r} is not '{form}': write it like {example!r} or as a dict"
            )
        pairs[k.strip()] = v.strip()
    return pairs


def _tags(what: str, value: object) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        value = _pairs(what, value, "key=value", "zone=a,rack=3")
    try:
        return validate_tags(value, what)
    except MessageError as exc:
        raise _error(str(exc)) from None


def _tag_map(k: ConfigKey, value: object) -> dict[str, str]:
    return _tags(k.key, value)


def _address(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise _error(f"{what} must be a base URL string, not {type(value).__name__}")
    text = value.strip().rstrip("/")
    parts = urlsplit(text)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or len(text) > MAX_ADDRESS_LENGTH
    ):
        raise _error(
            f"{what} {value!r} is not a base URL: use the URL peers reach the app at, like"
            " 'http://10.0.0.1:5000' (with the path the app is mounted at, if any)"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _error(f"{what} {value!r} has an invalid port") from None
    return text


def _node_address(k: ConfigKey, value: object) -> str | None:
    """None when not set: ``load_settings`` takes the node's entry in the peers."""
    return None if value in (None, "") else _address(k.key, value)


def _node_id(what: str, value: object) -> str:
    try:
        return validate_node_id(value, what)
    except MessageError as exc:
        raise _error(str(exc)) from None


def _required_node_id(k: ConfigKey, value: object) -> str:
    if value in (None, ""):
        raise _error(
            f"{k.key} is not set: give this node an id unique in the cluster,"
            f" like 'n1', and list every node in {key('PEERS')}"
        )
    return _node_id(k.key, value)


def _peer_entry(index: int, entry: object) -> core.Peer:
    where = f"{key('PEERS')} entry {index + 1} ({entry!r})"
    if isinstance(entry, core.Peer):
        return core.Peer(
            _node_id(f"{where}: id", entry.id),
            _address(f"{where}: address", entry.address),
            entry.novote,
            _tags(key("PEERS"), entry.tags),
        )
    if isinstance(entry, str):
        # 'id=url', or 'id=url novote' for an observer: the only way to list one in
        # an environment variable or on a command line, where dicts cannot be written.
        node_id, sep, rest = entry.strip().partition("=")
        address, *flags = rest.split() or [""]
        if not sep or not node_id.strip() or not address:
            raise _error(f"{where} is not 'id=url': write each peer like 'n2=http://10.0.0.2:5000'")
        unknown = [flag for flag in flags if flag.lower() != "novote"]
        if unknown:
            raise _error(
                f"{where} has {unknown[0]!r} after the address: the only word allowed there"
                " is 'novote', for an observer ('o1=http://10.0.0.9:5000 novote')"
            )
        return core.Peer(
            _node_id(f"{where}: id", node_id.strip()),
            _address(f"{where}: address", address),
            bool(flags),
        )
    if isinstance(entry, Mapping):
        unknown = sorted(str(k) for k in entry if k not in ("id", "address", "novote", "tags"))
        if unknown:
            raise _error(
                f"{where} has unknown field(s) {', '.join(unknown)}: a peer dict has"
                " 'id', 'address' and optionally 'novote' and 'tags'"
            )
        if "id" not in entry or "address" not in entry:
            raise _error(f"{where} needs both 'id' and 'address'")
        try:
            tags = validate_tags(entry.get("tags") or {}, f"{where}: tags")
        except MessageError as exc:
            raise _error(str(exc)) from None
        return core.Peer(
            _node_id(f"{where}: id", entry["id"]),
            _address(f"{where}: address", entry["address"]),
            _boolean(key("PEERS"), entry.get("novote", False)),
            tags,
        )
    raise _error(
        f"{where} must be an 'id=url' string or a dict with 'id' and 'address',"
        f" not {type(entry).__name__}"
    )


def _peers(value: object) -> list[core.Peer]:
    """The entries of ``GOELECT_PEERS``; a node listed twice is left to ``core.Config``."""
    if value is None:
        return []
    entries: Iterable[object]
    if isinstance(value, str):
        entries = [item for item in (s.strip() for s in value.split(",")) if item]
    elif isinstance(value, Mapping):
        # {"n1": "http://...", "n2": {"address": ..., "novote": True}}
        entries = [
            {"id": k, **v} if isinstance(v, Mapping) else f"{k}={v}" for k, v in value.items()
        ]
    elif isinstance(value, (list, tuple)):
        entries = value
    else:
        raise _error(
            f"{key('PEERS')} must be a list of 'id=url' strings or dicts, or one"
            f" comma-separated string, not {type(value).__name__}"
        )
    peers = [_peer_entry(i, e) for i, e in enumerate(entries)]
    seen_addresses: dict[str, str] = {}
    for peer in peers:
        other = seen_addresses.setdefault(peer.address.lower(), peer.id)
        if other != peer.id:
            raise _error(
                f"{key('PEERS')} gives the address {peer.address!r} to both {other!r} and"
                f" {peer.id!r}: each node has its own address"
            )
    return peers


def _peer_list(k: ConfigKey, value: object) -> list[core.Peer]:
    return _peers(value)


def _url_prefix(k: ConfigKey, value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise _error(f"{k.key} must be a path starting with '/', like '/_goelect', not {value!r}")
    return value.rstrip("/")


def _follower_response(k: ConfigKey, value: object) -> str:
    text = str(value).strip().lower()
    if text in ("503", "redirect"):
        return text
    raise _error(f"{k.key} must be '503' or 'redirect', not {value!r}")


#: What a follower's ``@leader_only`` answer may tell a client about the leader.
REVEALS = ("nothing", "id", "address")


def _follower_reveals(k: ConfigKey, value: object) -> str:
    text = str(value).strip().lower()
    if text in REVEALS:
        return text
    raise _error(
        f"{k.key} must be 'nothing' (no ids, terms or addresses), 'id' (the leader's id and"
        f" the term) or 'address' (also the leader's address as peers reach it), not {value!r}"
    )


def _public_urls(k: ConfigKey, value: object) -> dict[str, str]:
    """Node id -> the base URL clients reach that node at; ids are checked against the peers."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = _pairs(k.key, value, "id=url", "n1=https://a.example.com,n2=https://b.example.com")
    if not isinstance(value, Mapping):
        raise _error(
            f"{k.key} must be a dict of node id to public base URL (or 'id=url,id=url'),"
            f" not {type(value).__name__}"
        )
    return {
        _node_id(f"{k.key}: id", node_id): _address(f"{k.key}[{node_id!r}]", url)
        for node_id, url in value.items()
    }


def _state_file(k: ConfigKey, value: object) -> str | None:
    """None when not set: ``load_settings`` puts the file in the instance folder."""
    if value in (None, ""):
        return None
    if isinstance(value, (str, os.PathLike)):
        return str(os.fspath(value))
    raise _error(
        f"{k.key} must be a file path (or {MEMORY!r} for tests), not {type(value).__name__}"
    )


_SECRET_HINT = (
    "use at least {n} random characters, the same on every node, e.g. the output of"
    " python -c 'import secrets; print(secrets.token_urlsafe(32))'"
)


def _secrets(k: ConfigKey, value: object) -> tuple[bytes, ...]:
    """``GOELECT_SECRET``: one secret, or several (the first signs, all verify).

    A string may hold several separated by commas (for environment variables);
    surrounding whitespace is dropped. The values are never shown in a message.
    """
    name = k.key
    if value is None:
        return ()
    entries: list[object]
    if isinstance(value, str):
        entries = [part.strip() for part in value.split(",")]
        entries = [e for e in entries if e]
    elif isinstance(value, (bytes, bytearray)):
        entries = [bytes(value)] if value else []
    elif isinstance(value, (list, tuple)):
        entries = list(value)
        if not entries:
            raise _error(
                f"{name} is an empty list: give at least one secret, or None for no signatures"
            )
    else:
        raise _error(
            f"{name} must be a string or a list of strings (the first signs, every one"
            f" verifies), not {type(value).__name__}"
        )
    if len(entries) > auth.MAX_SECRETS:
        raise _error(
            f"{name} lists {len(entries)} secrets; at most {auth.MAX_SECRETS}: keep the"
            " current one and those being rotated out"
        )
    keys: list[bytes] = []
    for index, entry in enumerate(entries):
        where = name if len(entries) == 1 else f"{name} entry {index + 1}"
        if isinstance(entry, str):
            data = entry.encode("utf-8")
        elif isinstance(entry, (bytes, bytearray)):
            data = bytes(entry)
        else:
            raise _error(f"{where} must be a string, not {type(entry).__name__}")
        if len(data) < auth.MIN_SECRET_LENGTH:
            raise _error(
                f"{where} is too short ({len(data)} bytes): "
                + _SECRET_HINT.format(n=auth.MIN_SECRET_LENGTH)
            )
        if data not in keys:
            keys.append(data)
    return tuple(keys)


def _cluster(k: ConfigKey, value: object) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not NODE_ID_PATTERN.fullmatch(value.strip()):
        shown = repr(value)[:80] if isinstance(value, str) else type(value).__name__
        raise _error(
            f"{k.key} must be a name of 1-{MAX_ID_LENGTH} characters from A-Z a-z 0-9 . _ : -"
            f" starting with a letter or digit, the same on every node (like"
            f" 'billing-prod'), not {shown}"
        )
    return value.strip()


def _tls_file(k: ConfigKey, value: object, *, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise _error(f"{k.key} must be the path of {what}, not {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise _error(f"{k.key} must be a text path, not bytes")
    if k.name == "TLS_CA" and os.path.isdir(path):
        return path  # requests takes a folder of hashed CA certificates too
    if not os.path.isfile(path):
        raise _error(f"{k.key} is {path!r}, which is not a file: give the path of {what}")
    if not os.access(path, os.R_OK):
        raise _error(
            f"{k.key} is {path!r}, which this process cannot read: fix its permissions"
            " (the key should be readable by the app's user only)"
        )
    return path


# -- the table --------------------------------------------------------------------------

_ID_CHARACTERS = f"1–{MAX_ID_LENGTH} characters from `A-Z a-z 0-9 . _ : -`"

#: Every ``GOELECT_*`` key, in the order the docs list them.
TABLE: tuple[ConfigKey, ...] = (
    ConfigKey(
        "NODE_ID",
        None,
        _required_node_id,
        required=True,
        doc="This node's id, unique in the cluster.",
        more=f"{_ID_CHARACTERS}, starting with a letter or digit.",
    ),
    ConfigKey(
        "NODE_ADDRESS",
        None,
        _node_address,
        shown_default="this node's entry in `GOELECT_PEERS`",
        doc="The base URL peers reach this app at, like `http://10.0.0.1:5000`.",
        more="With the path the app is mounted under, if any. Required when this node is"
        " not listed in `GOELECT_PEERS`.",
    ),
    ConfigKey(
        "PEERS",
        [],
        _peer_list,
        doc='Every node of the cluster: `"id=url"` strings (`"id=url novote"` for an'
        " observer) or dicts with `id`, `address` and optionally `novote` and `tags`.",
        more="Or one comma-separated string of `id=url` (for environment variables). This"
        " node is added as a voter when not listed.",
    ),
    ConfigKey(
        "NOVOTE",
        False,
        _flag,
        shown_default="`False` (or the node's `novote` in the peers)",
        doc="This node is an observer: it follows the leader but never votes, campaigns or"
        " counts in a quorum.",
    ),
    ConfigKey(
        "TAGS",
        {},
        _tag_map,
        shown_default="`{}` (or the node's `tags` in the peers)",
        doc='This node\'s tags (a dict, or `"k=v,k2=v2"`), sent to followers in every'
        " heartbeat (`elect.leader.tags`).",
        more=f"Up to {MAX_TAGS} string pairs.",
    ),
    ConfigKey(
        "ELECT_TIMEOUT",
        2000,
        _duration,
        unit="ms",
        doc="The election timeout T: a follower that hears nothing for T campaigns, the"
        " voters in turn a fraction of a heartbeat interval apart (always within [T, 2T));"
        " the leader's lease lasts T × (1 − max drift).",
        more="A number of milliseconds or a `datetime.timedelta`. A leader without replies"
        " from a majority for T steps down; the lease counts from the send time of the last"
        " heartbeat round a majority acknowledged.",
        why="tolerates pauses of well over a second. Failover after a crash then takes"
        " about T plus a round trip (1.8–2.1 s in the simulator, with the default heartbeat)."
        " On a quiet LAN with a lightly loaded app,"
        " 200–500 ms works (the example app and the benchmarks use 200 ms).",
    ),
    ConfigKey(
        "HEARTBEAT_INTERVAL",
        200,
        _duration,
        unit="ms",
        doc="Time between two heartbeats of the leader: at most half the election timeout;"
        " a tenth is the rule of thumb.",
        more="A number of milliseconds or a `datetime.timedelta`.",
        why="a tenth of the timeout, so that the lease is renewed about ten times per lease"
        " period: a few lost or late heartbeats neither end the lease nor start an election,"
        " and an idle cluster costs five small requests per second per follower.",
    ),
    ConfigKey(
        "CONNECT_TIMEOUT",
        0.5,
        _duration,
        unit="s",
        doc="Connect timeout of every call to a peer; the read timeout is one election"
        " timeout (a later reply is useless).",
        more="A number of seconds or a `datetime.timedelta`.",
        why="connecting on a LAN takes well under a millisecond; half a second leaves room"
        " for a loaded peer and still gives up well inside one election timeout. Every call"
        " has its own sender per peer, so a peer that does not answer never delays the"
        " others.",
    ),
    ConfigKey(
        "CALLBACK_TIMEOUT",
        5.0,
        _duration,
        unit="s",
        doc="How long the signal receivers of one change may run before the elector stops"
        " waiting for them.",
        more="A number of seconds or a `datetime.timedelta`. Receivers run off the election"
        " loop and never delay it; an overrun is recorded in `elect.errors`.",
        why="receivers run off the election loop, so a long bound costs nothing to the"
        " election; it only bounds how long a stuck receiver delays the next change's"
        " receivers.",
    ),
    ConfigKey(
        "URL_PREFIX",
        "/_goelect",
        _url_prefix,
        doc="Where the routes are mounted; the same on every node.",
        more="With `LeaderElect(app, blueprint=bp)` the default is the prefix the blueprint"
        " is registered at.",
    ),
    ConfigKey(
        "STATE_FILE",
        None,
        _state_file,
        shown_default="`<instance folder>/goelect-<node id>.json`",
        doc="Where the term and vote are kept across restarts; a lock on `<file>.lock`"
        " keeps a second elector of the node from running.",
        more=f'`"{MEMORY}"` keeps them in memory: for tests only (a restarted node could'
        " vote twice in a term).",
    ),
    ConfigKey(
        "AUTOSTART",
        True,
        _flag,
        doc="Start the elector in `init_app`; with `False`, call `elect.start()`.",
        more="It never starts in the watcher process of `flask run --reload` nor in `flask`"
        " commands other than `run`; after a fork (gunicorn `--preload`) the elector moves"
        ' to the child (see "Which process runs the elector" in `docs/configuration.md`).',
    ),
    ConfigKey(
        "FOLLOWER_RESPONSE",
        "503",
        _follower_response,
        doc='What a `@leader_only` view answers on a node that is not the leader: `"503"`'
        ' or `"redirect"`.',
        more='`"503"` is JSON with `Retry-After`; `"redirect"` is a 307 to the same path and'
        " query on the leader (503 when no leader is known). A redirect needs a URL clients"
        f" can reach: `{PREFIX}PUBLIC_URLS` for every voter, or"
        f' `{PREFIX}FOLLOWER_REVEALS = "address"`.',
    ),
    ConfigKey(
        "FOLLOWER_REVEALS",
        "nothing",
        _follower_reveals,
        doc='What a follower\'s `@leader_only` answer tells any client: `"nothing"`, `"id"`'
        " (the leader's id, this node's id and state, the term) or `\"address\"` (also the"
        " leader's address as peers reach it).",
        more=f"The leader's entry in `{PREFIX}PUBLIC_URLS`, made to be shown, is always"
        " given. See docs/security.md.",
        why="the answers of `@leader_only` views go to anyone who can reach the app; node"
        " ids and internal addresses are the cluster's topology, hidden like"
        f" `{PREFIX}STATUS_PUBLIC` hides it.",
    ),
    ConfigKey(
        "PUBLIC_URLS",
        {},
        _public_urls,
        doc="The base URL clients reach each node at (a dict of node id to URL, or"
        ' `"n1=https://a.example.com,n2=..."`): where a follower redirects, and the'
        " `leader_url` of its 503 answer.",
        more="The same on every node; ids must be in the peers. Use it when the addresses"
        " in the peers are internal (a pod IP, a private network) and clients reach the"
        " nodes by other names.",
    ),
    ConfigKey(
        "HANDOVER_DRAIN",
        0,
        _pause,
        unit="ms",
        doc="How long a stopping leader keeps leading, with `GET <prefix>/leader` answering"
        " 503, before it hands leadership over.",
        more="A number of milliseconds or a `datetime.timedelta`; 0 hands over at once. A"
        " load balancer that routes to the node whose `/leader` answers 200 then moves its"
        " traffic away while this node still holds its lease and serves every request, so"
        " that no request reaches it after it stopped leading: set it to the balancer's"
        " check interval times its fall count, plus one interval. Only a stop that hands"
        " leadership to another node waits (not a hand-off between the processes of a node).",
        why="without a balancer that checks `/leader` there is nothing to wait for.",
    ),
    ConfigKey(
        "MAX_DRIFT",
        0.01,
        _fraction,
        doc="Bound on how much faster one node's clock may run than another's"
        " (0.01 = 1 %); the lease is shortened by this fraction.",
        more="Must be in [0, 0.5).",
        why="monotonic clocks of healthy hosts drift by parts per million; 1 % is a wide"
        " margin that costs 1 % of the lease.",
    ),
    ConfigKey(
        "SECRET",
        None,
        _secrets,
        doc=f"The secret shared by the nodes (at least {auth.MIN_SECRET_LENGTH} characters):"
        " every RPC and every reply is signed with HMAC-SHA256.",
        more="Unsigned, forged, stale and replayed requests get 401 and change nothing. A"
        " list (or one string with commas between secrets) rotates keys: the first signs,"
        f" every one verifies (at most {auth.MAX_SECRETS}). Make one with `python -c 'import"
        " secrets; print(secrets.token_urlsafe(32))'`. Without it nothing is signed, and the"
        " elector logs a warning at start if a peer is not on this host. See"
        " `docs/security.md`.",
    ),
    ConfigKey(
        "CLUSTER",
        "",
        _cluster,
        doc="The cluster's name, the same on every node: a request that names another"
        " cluster (or none, when this node has one) gets 409 and is logged.",
        more=f"{_ID_CHARACTERS}.",
    ),
    ConfigKey(
        "TLS_CA",
        None,
        functools.partial(
            _tls_file, what="the CA bundle (PEM) that signed the peers' certificates"
        ),
        shown_default="`None` (the system's CAs)",
        doc="The CA bundle (PEM file, or folder) that verifies the certificates of"
        " `https://` peers.",
    ),
    ConfigKey(
        "TLS_CERT",
        None,
        functools.partial(_tls_file, what="this node's client certificate (PEM)"),
        doc="This node's client certificate (PEM) for peers that require one (mutual TLS);"
        " it may hold the key too.",
    ),
    ConfigKey(
        "TLS_KEY",
        None,
        functools.partial(_tls_file, what="the private key of GOELECT_TLS_CERT (PEM)"),
        doc="The private key of `GOELECT_TLS_CERT` (PEM), when it is a separate file; needs"
        " `GOELECT_TLS_CERT`.",
    ),
    ConfigKey(
        "STATUS_PUBLIC",
        False,
        _flag,
        doc="Whether anyone may read `GET <prefix>/status` (node ids, peer addresses, errors).",
        more="When false, only signed requests of the peers and requests from this host"
        " (loopback, not through a proxy) may; others get 401, and `/leader` and `/health`"
        " answer them with their status code and no ids or addresses.",
    ),
    ConfigKey(
        "STATUS_PAGE",
        False,
        _flag,
        doc="Serve the live status page at `GET <prefix>/ui`: every node's role, term,"
        " leader, lease and last contact, and the election's state machine.",
        more="It refreshes itself from `GET <prefix>/ui/cluster.json` (plain HTML, CSS and"
        " JavaScript shipped with the package: no build step, nothing from a CDN). Both"
        " follow the rule of `GET <prefix>/status` (see `GOELECT_STATUS_PUBLIC`).",
        why="Off: a page that shows the topology is something to turn on knowingly.",
    ),
)

#: The defaults that ``init_app`` puts into ``app.config`` with ``setdefault``.
DEFAULTS: dict[str, Any] = {k.name: k.default for k in TABLE}
KEYS = frozenset(DEFAULTS)

#: The keys a :class:`~flask_goelect.core.Config` field comes from, by the field a
#: ``ConfigError`` names (None: no one field), to name them in its message.
CONFIG_FIELD_KEYS: dict[str | None, tuple[str, ...]] = {
    "node_id": ("NODE_ID",),
    "address": ("NODE_ADDRESS", "PEERS"),
    "peers": ("PEERS",),
    # Whether a node votes comes from GOELECT_NOVOTE for this one, from its
    # entry in GOELECT_PEERS for every node.
    "novote": ("PEERS", "NOVOTE"),
    "tags": ("TAGS", "PEERS"),
    "elect_timeout": ("ELECT_TIMEOUT",),
    "heartbeat_interval": ("HEARTBEAT_INTERVAL",),
    "max_drift": ("MAX_DRIFT",),
    None: ("PEERS", "NODE_ID"),
}


@dataclass(frozen=True)
class Settings:
    """The checked configuration of one app's elector (times in seconds)."""

    node_id: str
    node_address: str
    election: core.Config
    connect_timeout: float
    callback_timeout: float
    url_prefix: str
    url_prefix_explicit: bool
    state_file: str | None
    autostart: bool
    follower_response: str
    #: ``"nothing"``, ``"id"`` or ``"address"``: see ``GOELECT_FOLLOWER_REVEALS``.
    follower_reveals: str = "nothing"
    #: Node id -> the base URL clients reach it at (``GOELECT_PUBLIC_URLS``).
    public_urls: Mapping[str, str] = field(default_factory=dict)
    #: Seconds a stopping leader keeps leading with ``/leader`` answering 503.
    handover_drain: float = 0.0
    #: The shared secrets (``GOELECT_SECRET``): the first signs, all verify.
    secrets: tuple[bytes, ...] = field(default=(), repr=False)
    cluster: str = ""
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    status_public: bool = False
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def keyring(self) -> auth.Keyring | None:
        """The secrets as a :class:`~flask_goelect.auth.Keyring`, or None without one."""
        return auth.Keyring(self.secrets) if self.secrets else None

    @property
    def auth_max_age(self) -> float:
        """How old a signed request may be: its useful life (T) plus the clock skew."""
        return self.elect_timeout + auth.MAX_CLOCK_SKEW

    @property
    def elect_timeout(self) -> float:
        return float(self.election.elect_timeout)

    @property
    def heartbeat_interval(self) -> float:
        return float(self.election.heartbeat_interval)

    @property
    def node(self) -> core.Peer:
        peer = self.election.peer(self.node_id)
        assert peer is not None
        return peer


def security_warnings(settings: Settings) -> list[str]:
    """What is weak in a valid configuration, to log when the elector starts."""
    warnings: list[str] = []
    others = [p for p in settings.election.peers if p.id != settings.node_id]
    remote = [p for p in others if not auth.is_loopback(urlsplit(p.address).hostname)]
    if remote and not settings.secrets:
        names = ", ".join(p.id for p in remote[:5]) + (", ..." if len(remote) > 5 else "")
        warnings.append(
            f"{key('SECRET')} is not set but peers are on other hosts ({names}): anyone who"
            " can reach this node's port can vote in its elections or depose its leader."
            " Set the same secret on every node (see docs/security.md)"
        )
    plain = [p for p in remote if urlsplit(p.address).scheme == "http"]
    if settings.tls_cert and plain:
        warnings.append(
            f"{key('TLS_CERT')} is set but peer(s) {', '.join(p.id for p in plain[:5])} are"
            " reached over plain http://: give them https:// addresses"
        )
    if (settings.tls_ca or settings.tls_cert) and not any(
        urlsplit(p.address).scheme == "https" for p in others
    ):
        warnings.append(
            f"{key('TLS_CA')}/{key('TLS_CERT')} are set but no peer has an https:// address:"
            " they are not used"
        )
    return warnings


#: File systems whose files do not survive a reboot (or a container's restart).
_VOLATILE_FS = frozenset({"tmpfs", "ramfs"})
#: Folders that hold temporary files on Linux: emptied at boot, or by cleaners.
_VOLATILE_DIRS = ("/tmp", "/dev/shm", "/run", "/var/run")


def _mount_of(path: str, mounts: str) -> tuple[str, str] | None:
    """The mount point holding ``path`` and its file system type, from ``/proc/mounts``."""
    best: tuple[str, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # Spaces, tabs and backslashes in mount points are octal escapes there.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fields[2])
    return best


def durability_warnings(
    settings: Settings, *, mounts: str | None = None, linux: bool | None = None
) -> list[str]:
    """Where this node's term and vote may not survive a restart, to log when it starts.

    A voter that loses its state file starts again at term 0. It keeps the
    promise of every start (no vote for T), but after that it may grant a
    second vote in a term it already voted in, and two leaders could win that
    term. This says so when a voter of a cluster of several voters keeps its
    state in memory (``GOELECT_STATE_FILE = ":memory:"``) or on a file system
    that a reboot empties: tmpfs or ramfs (from ``/proc/mounts``), or under
    ``/tmp``, ``/dev/shm`` or ``/run`` on Linux. ``mounts`` (the text of
    ``/proc/mounts``) and ``linux`` default to this machine's.
    """
    election = settings.election
    if settings.node_id not in election.voters or len(election.voters) < 2:
        return []  # an observer votes in nothing; a single voter asks no one
    fix = (
        f"set {key('STATE_FILE')} to a file on a persistent volume (in a container: a"
        " mounted volume, not the container's own file system)"
    )
    risk = (
        "a restart forgets its term and its vote: after the first election timeout it"
        " may vote a second time in a term it already voted in, and two leaders could win"
        " that term (docs/design.md)"
    )
    if settings.state_file is None:
        return [f"{key('STATE_FILE')} is {MEMORY!r}: {risk}; {fix}"]
    if linux is None:
        linux = sys.platform.startswith("linux")
    path = os.path.realpath(os.path.abspath(settings.state_file))
    if mounts is None:
        try:
            with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
                mounts = f.read()
        except OSError:
            mounts = ""
    mount = _mount_of(path, mounts)
    if mount is not None and mount[1] in _VOLATILE_FS:
        where = f"on a {mount[1]} file system (mounted at {mount[0]}), which a reboot empties"
    elif linux and any(path == d or path.startswith(d + "/") for d in _VOLATILE_DIRS):
        where = "in a folder for temporary files, which a reboot or a cleaner empties"
    else:
        return []
    return [f"{key('STATE_FILE')} {settings.state_file!r} is {where}: {risk}; {fix}"]


def _warn_unknown(config: Mapping[str, Any]) -> None:
    for name in config:
        if isinstance(name, str) and name.startswith(PREFIX) and name[len(PREFIX) :] not in KEYS:
            close = difflib.get_close_matches(name[len(PREFIX) :], sorted(KEYS), n=1)
            hint = f"; did you mean {key(close[0])}?" if close else ""
            logger.warning("flask-goelect does not know the config key %s%s", name, hint)


def explicit_keys(config: Mapping[str, Any], options: Mapping[str, Any]) -> frozenset[str]:
    """The keys (without prefix) the user set, in ``config`` or as options."""
    return frozenset(n for n in DEFAULTS if key(n) in config or n.lower() in options)


def load_settings(
    config: Mapping[str, Any],
    options: Mapping[str, Any],
    instance_path: str,
    explicit: frozenset[str] | None = None,
) -> Settings:
    """Check the ``GOELECT_*`` keys of ``config``, overridden by ``options``.

    ``options`` are the lower-case keyword options given to ``LeaderElect``;
    ``explicit`` the keys the user set (default: those in ``config`` or
    ``options``). Raises :class:`~flask_goelect.core.ConfigError` naming the key
    and the fix.
    """
    _warn_unknown(config)
    if explicit is None:
        explicit = explicit_keys(config, options)
    raw: dict[str, Any] = {}
    for name, default in DEFAULTS.items():
        raw[name] = config.get(key(name), default)
    for name, value in options.items():
        raw[name.upper()] = value
    value = {k.name: k.parse(k, raw[k.name]) for k in TABLE}

    # Rules between keys whose messages need the keys' names (and units).
    node_id: str = value["NODE_ID"]
    peers: list[core.Peer] = value["PEERS"]
    listed = next((p for p in peers if p.id == node_id), None)
    address: str | None = value["NODE_ADDRESS"]
    if address is None:
        if listed is None:
            raise _error(
                f"{key('NODE_ADDRESS')} is not set: set it to the base URL peers reach this"
                f" node at, like 'http://10.0.0.1:5000', or list this node in"
                f" {key('PEERS')} as '{node_id}=http://10.0.0.1:5000'"
            )
        address = listed.address
    if listed is not None and listed.address != address:
        raise _error(
            f"node {node_id!r} is listed with two addresses: {key('NODE_ADDRESS')} is"
            f" {address!r} but {key('PEERS')} says {listed.address!r}; use one address"
        )
    for peer in peers:
        if peer.id != node_id and peer.address.lower() == address.lower():
            raise _error(
                f"{key('NODE_ADDRESS')} {address!r} is also the address of peer {peer.id!r}"
                f" in {key('PEERS')}: each node has its own address (is {key('NODE_ID')}"
                " right?)"
            )

    novote: bool = value["NOVOTE"]
    if listed is not None and listed.novote != novote:
        if "NOVOTE" in explicit:
            raise _error(
                f"{key('NOVOTE')} is {novote} but {key('PEERS')} lists node {node_id!r} with"
                f" novote={listed.novote}; make them agree"
            )
        novote = listed.novote
    tags: dict[str, str] = value["TAGS"]
    if not tags and listed is not None:
        tags = dict(listed.tags)

    heartbeat: float = value["HEARTBEAT_INTERVAL"]
    elect_timeout: float = value["ELECT_TIMEOUT"]
    if heartbeat * 2 > elect_timeout:
        raise _error(
            f"{key('HEARTBEAT_INTERVAL')} ({heartbeat * 1000:g} ms) must be well below"
            f" {key('ELECT_TIMEOUT')} ({elect_timeout * 1000:g} ms): at most half of it, or a"
            " single lost heartbeat starts an election; a tenth is a good choice"
            f" (e.g. {elect_timeout * 100:g} ms)"
        )
    if value["TLS_KEY"] and not value["TLS_CERT"]:
        raise _error(
            f"{key('TLS_KEY')} is set but {key('TLS_CERT')} is not: set {key('TLS_CERT')} to"
            " the client certificate this key belongs to"
        )

    # The election's own rules (a node listed twice, no voters, the drift bound).
    try:
        election = core.Config(
            node_id=node_id,
            peers=tuple(peers),
            address=address,
            novote=novote,
            tags=tags,
            elect_timeout=elect_timeout,
            heartbeat_interval=heartbeat,
            max_drift=value["MAX_DRIFT"],
        )
    except core.ConfigError as exc:
        names = CONFIG_FIELD_KEYS.get(exc.field, CONFIG_FIELD_KEYS[None])
        raise _error(f"{' / '.join(map(key, names))}: {exc}") from None

    public_urls: dict[str, str] = value["PUBLIC_URLS"]
    ids = {p.id for p in election.peers}
    strangers = sorted(set(public_urls) - ids)
    if strangers:
        raise _error(
            f"{key('PUBLIC_URLS')} names {', '.join(map(repr, strangers))}, not in"
            f" {key('PEERS')}: give a URL for nodes of the peer list only (a typo in an id?)"
        )
    if value["FOLLOWER_RESPONSE"] == "redirect" and value["FOLLOWER_REVEALS"] != "address":
        missing = [p.id for p in election.peers if not p.novote and p.id not in public_urls]
        if missing:
            raise _error(
                f"{key('FOLLOWER_RESPONSE')} is 'redirect' but {key('PUBLIC_URLS')} has no URL"
                f" for {', '.join(map(repr, missing))}: give every voter the URL clients reach"
                f" it at, or set {key('FOLLOWER_REVEALS')} = 'address' to redirect clients to"
                " the addresses of the peer list"
            )

    state_file: str = value["STATE_FILE"] or os.path.join(instance_path, f"goelect-{node_id}.json")
    return Settings(
        node_id=node_id,
        node_address=address,
        election=election,
        connect_timeout=value["CONNECT_TIMEOUT"],
        callback_timeout=value["CALLBACK_TIMEOUT"],
        url_prefix=value["URL_PREFIX"],
        url_prefix_explicit="URL_PREFIX" in explicit,
        state_file=None if state_file == MEMORY else state_file,
        autostart=value["AUTOSTART"],
        follower_response=value["FOLLOWER_RESPONSE"],
        follower_reveals=value["FOLLOWER_REVEALS"],
        public_urls=public_urls,
        handover_drain=value["HANDOVER_DRAIN"],
        secrets=value["SECRET"],
        cluster=value["CLUSTER"],
        tls_ca=value["TLS_CA"],
        tls_cert=value["TLS_CERT"],
        tls_key=value["TLS_KEY"],
        status_public=value["STATUS_PUBLIC"],
        raw=raw,
    )


# -- the docs generated from the table ----------------------------------------------------


def _literal(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def default_text(k: ConfigKey) -> str:
    """The default of ``k`` as the docs show it (Markdown)."""
    if k.required:
        return "required"
    if k.shown_default is not None:
        return k.shown_default
    return f"`{_literal(k.default)}`" + (f" {k.unit}" if k.unit else "")


def markdown_table(short: bool = False) -> str:
    """The table of keys: ``short`` for the README (one line each), else the docs'."""
    rows = ["| Key | Default | Meaning |", "| --- | --- | --- |"]
    for k in TABLE:
        meaning = k.doc if short or not k.more else f"{k.doc} {k.more}"
        cells = (f"`{k.key}`", default_text(k), meaning)
        assert not any("|" in cell for cell in cells), k.name  # it would split the row
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def markdown_why() -> str:
    """Why each default is what it is, one bullet per key that says."""
    return "\n".join(
        f"* **`{k.key} = {_literal(k.default)}`**"
        + (f" ({k.unit})" if k.unit else "")
        + f": {k.why}"
        for k in TABLE
        if k.why
    )


def _rst(text: str) -> str:
    """Markdown `code` as reST ``code``, its spaces kept from line breaks (NUL, undone later)."""
    return re.sub(r"`([^`]*)`", lambda m: "``" + m[1].replace(" ", "\0") + "``", text)


def rst_keys() -> str:
    """Every key with its meaning and default, as a reST definition list."""
    lines = [
        "Configuration keys (all read here; defaults set with ``setdefault``; values may be",
        "strings, as from environment variables):",
        "",
    ]
    for k in TABLE:
        default = "Required." if k.required else f"Default: {default_text(k)}."
        body = " ".join(part for part in (k.doc, k.more, default) if part)
        lines.append(f"``{k.key}``")
        lines.append(
            textwrap.fill(
                _rst(body),
                width=76,
                initial_indent="    ",
                subsequent_indent="    ",
                break_long_words=False,
                break_on_hyphens=False,
            ).replace("\0", " ")
        )
    return "\n".join(lines)


def document_keys(doc: str | None) -> str:
    """``doc`` (a docstring) with :func:`rst_keys` before its fields (``:raises ...:``)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith(":")), len(lines))
    head, fields = "\n".join(lines[:at]).rstrip(), "\n".join(lines[at:])
    return "\n\n".join(part for part in (head, rst_keys(), fields) if part) + "\n"


#: What each generated part of a Markdown file is made of.
_PARTS: dict[str, Callable[[], str]] = {
    "table": markdown_table,
    "short-table": functools.partial(markdown_table, short=True),
    "why": markdown_why,
}
#: The Markdown files with generated parts, relative to the repository.
DOC_FILES = ("README.md", "docs/configuration.md")
_GENERATED = re.compile(
    r"(?P<begin><!-- generated: settings (?P<part>[a-z-]+)\b[^>]*-->\n)"
    r".*?"
    r"(?P<end><!-- end generated: settings (?P=part) -->)",
    re.DOTALL,
)


def update_markdown(text: str) -> str:
    """``text`` with each part between ``<!-- generated: settings PART ... -->`` and
    ``<!-- end generated: settings PART -->`` rendered again from the table."""
    return _GENERATED.sub(lambda m: m["begin"] + _PARTS[m["part"]]() + "\n" + m["end"], text)


def generated_parts(text: str) -> list[str]:
    """The names of the generated parts in ``text``."""
    return [m["part"] for m in _GENERATED.finditer(text)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flask_goelect._settings",
        description="Print the GOELECT_* settings table, or write it into the docs.",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--markdown",
        nargs="?",
        const="table",
        choices=sorted(_PARTS),
        help="print a Markdown part: the docs' table (default), the README's, or the why list",
    )
    group.add_argument("--rst", action="store_true", help="print the keys as init_app shows them")
    group.add_argument(
        "--write",
        nargs="?",
        const=str(Path(__file__).resolve().parents[1]),
        metavar="ROOT",
        help="rewrite the generated parts of README.md and docs/configuration.md under ROOT"
        " (default: this checkout)",
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(_PARTS[args.markdown]())
    elif args.rst:
        print(rst_keys())
    else:
        for name in DOC_FILES:
            path = Path(args.write) / name
            if not path.is_file():
                parser.error(f"{path} does not exist: give the root of a flask-goelect checkout")
            text = path.read_text(encoding="utf-8")
            new = update_markdown(text)
            if new != text:
                path.write_text(new, encoding="utf-8")
            print(f"{path}: {'updated' if new != text else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
