"""Reading and checking the ``GOELECT_*`` configuration of one app.

Every error names the configuration key and says how to fix it: a node that
starts with a wrong peer list or timing does not fail loudly later, it elects
badly.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from . import auth, core
from .messages import (
    MAX_ADDRESS_LENGTH,
    NODE_ID_PATTERN,
    MessageError,
    validate_node_id,
    validate_tags,
)

__all__ = ["DEFAULTS", "KEYS", "MEMORY", "Settings", "load_settings", "security_warnings"]

PREFIX = "GOELECT_"

#: ``GOELECT_STATE_FILE`` value that keeps the term and vote in memory (tests only).
MEMORY = ":memory:"

#: The defaults that ``init_app`` puts into ``app.config`` with ``setdefault``.
#: Timing is in milliseconds like goelect's; the timeouts of single calls in seconds.
DEFAULTS: dict[str, Any] = {
    "NODE_ID": None,
    "NODE_ADDRESS": None,
    "PEERS": [],
    "NOVOTE": False,
    "TAGS": {},
    # Python under load (GIL contention with CPU-bound requests, GC pauses, a
    # saturated worker, a busy host) can delay the election greenlet by hundreds
    # of milliseconds. An election timeout of 2 s keeps such pauses from deposing
    # a healthy leader; heartbeats at a tenth of it leave nine chances to renew
    # the lease before followers give up. Failover then takes about 2-4 s.
    "HEARTBEAT_INTERVAL": 200,
    "ELECT_TIMEOUT": 2000,
    # Connecting on a LAN takes under a millisecond; 0.5 s tolerates a SYN
    # retransmit-free slow path and still fails well inside one election timeout.
    "CONNECT_TIMEOUT": 0.5,
    "CALLBACK_TIMEOUT": 5.0,
    "URL_PREFIX": "/_goelect",
    "STATE_FILE": None,
    "AUTOSTART": True,
    "FOLLOWER_RESPONSE": "503",
    "MAX_DRIFT": 0.01,
    # Security (docs/security.md): no secret by default, but a warning at start
    # when a peer is not on this host; the status is for the peers and this host.
    "SECRET": None,
    "CLUSTER": "",
    "TLS_CA": None,
    "TLS_CERT": None,
    "TLS_KEY": None,
    "STATUS_PUBLIC": False,
}
KEYS = frozenset(DEFAULTS)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

logger = logging.getLogger("flask_goelect")


def key(name: str) -> str:
    return PREFIX + name


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


def _error(message: str) -> core.ConfigError:
    return core.ConfigError(message)


def _number(name: str, value: object, unit: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _error(f"{key(name)} must be a number of {unit}, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _error(f"{key(name)} must be a number of {unit}, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise _error(f"{key(name)} must be a positive number of {unit}, not {value!r}")
    return float(value)


def _boolean(name: str, value: object) -> bool:
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
    raise _error(f"{key(name)} must be true or false, not {value!r}")


def _tags(name: str, value: object) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        tags: dict[str, str] = {}
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            k, sep, v = item.partition("=")
            if not sep or not k.strip():
                raise _error(
                    f"{key(name)} entry {item!r} is not 'key=value': write tags like"
                    " 'zone=a,rack=3' or as a dict"
                )
            tags[k.strip()] = v.strip()
        value = tags
    try:
        return validate_tags(value, key(name))
    except MessageError as exc:
        raise _error(str(exc)) from None


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


def _node_id(what: str, value: object) -> str:
    try:
        return validate_node_id(value, what)
    except MessageError as exc:
        raise _error(str(exc)) from None


def _peer_entry(index: int, entry: object) -> core.Peer:
    where = f"{key('PEERS')} entry {index + 1} ({entry!r})"
    if isinstance(entry, core.Peer):
        return core.Peer(
            _node_id(f"{where}: id", entry.id),
            _address(f"{where}: address", entry.address),
            entry.novote,
            _tags("PEERS", entry.tags),
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
            _boolean("PEERS", entry.get("novote", False)),
            tags,
        )
    raise _error(
        f"{where} must be an 'id=url' string or a dict with 'id' and 'address',"
        f" not {type(entry).__name__}"
    )


def _peers(value: object) -> list[core.Peer]:
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
    seen_ids: dict[str, core.Peer] = {}
    seen_addresses: dict[str, str] = {}
    for peer in peers:
        if peer.id in seen_ids:
            raise _error(
                f"{key('PEERS')} lists node {peer.id!r} twice ({seen_ids[peer.id].address!r}"
                f" and {peer.address!r}): list each node once, with its one address"
            )
        seen_ids[peer.id] = peer
        other = seen_addresses.get(peer.address.lower())
        if other is not None:
            raise _error(
                f"{key('PEERS')} gives the address {peer.address!r} to both {other!r} and"
                f" {peer.id!r}: each node has its own address"
            )
        seen_addresses[peer.address.lower()] = peer.id
    return peers


def _url_prefix(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise _error(
            f"{key('URL_PREFIX')} must be a path starting with '/', like '/_goelect', not {value!r}"
        )
    return value.rstrip("/")


def _follower_response(value: object) -> str:
    text = str(value).strip().lower()
    if text in ("503", "redirect"):
        return text
    raise _error(f"{key('FOLLOWER_RESPONSE')} must be '503' or 'redirect', not {value!r}")


_SECRET_HINT = (
    "use at least {n} random characters, the same on every node, e.g. the output of"
    " python -c 'import secrets; print(secrets.token_urlsafe(32))'"
)


def _secrets(value: object) -> tuple[bytes, ...]:
    """``GOELECT_SECRET``: one secret, or several (the first signs, all verify).

    A string may hold several separated by commas (for environment variables);
    surrounding whitespace is dropped. The values are never shown in a message.
    """
    name = key("SECRET")
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


def _cluster(value: object) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not NODE_ID_PATTERN.fullmatch(value.strip()):
        shown = repr(value)[:80] if isinstance(value, str) else type(value).__name__
        raise _error(
            f"{key('CLUSTER')} must be a name of 1-64 characters from A-Z a-z 0-9 . _ : -"
            f" starting with a letter or digit, the same on every node (like"
            f" 'billing-prod'), not {shown}"
        )
    return value.strip()


def _tls_file(name: str, value: object, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise _error(f"{key(name)} must be the path of {what}, not {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise _error(f"{key(name)} must be a text path, not bytes")
    if name == "TLS_CA" and os.path.isdir(path):
        return path  # requests takes a folder of hashed CA certificates too
    if not os.path.isfile(path):
        raise _error(f"{key(name)} is {path!r}, which is not a file: give the path of {what}")
    if not os.access(path, os.R_OK):
        raise _error(
            f"{key(name)} is {path!r}, which this process cannot read: fix its permissions"
            " (the key should be readable by the app's user only)"
        )
    return path


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

    if raw["NODE_ID"] in (None, ""):
        raise _error(
            f"{key('NODE_ID')} is not set: give this node an id unique in the cluster,"
            " like 'n1', and list every node in GOELECT_PEERS"
        )
    node_id = _node_id(key("NODE_ID"), raw["NODE_ID"])
    peers = _peers(raw["PEERS"])
    listed = next((p for p in peers if p.id == node_id), None)

    address_value = raw["NODE_ADDRESS"]
    if address_value in (None, ""):
        if listed is None:
            raise _error(
                f"{key('NODE_ADDRESS')} is not set: set it to the base URL peers reach this"
                f" node at, like 'http://10.0.0.1:5000', or list this node in"
                f" {key('PEERS')} as '{node_id}=http://10.0.0.1:5000'"
            )
        address = listed.address
    else:
        address = _address(key("NODE_ADDRESS"), address_value)
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

    novote = _boolean("NOVOTE", raw["NOVOTE"])
    if listed is not None and listed.novote != novote:
        if "NOVOTE" in explicit:
            raise _error(
                f"{key('NOVOTE')} is {novote} but {key('PEERS')} lists node {node_id!r} with"
                f" novote={listed.novote}; make them agree"
            )
        novote = listed.novote
    tags = _tags("TAGS", raw["TAGS"])
    if not tags and listed is not None:
        tags = dict(listed.tags)

    heartbeat = _number("HEARTBEAT_INTERVAL", raw["HEARTBEAT_INTERVAL"], "milliseconds") / 1000
    elect_timeout = _number("ELECT_TIMEOUT", raw["ELECT_TIMEOUT"], "milliseconds") / 1000
    if heartbeat * 2 > elect_timeout:
        raise _error(
            f"{key('HEARTBEAT_INTERVAL')} ({heartbeat * 1000:g} ms) must be well below"
            f" {key('ELECT_TIMEOUT')} ({elect_timeout * 1000:g} ms): at most half of it, or a"
            " single lost heartbeat starts an election; a tenth is a good choice"
            f" (e.g. {elect_timeout * 100:g} ms)"
        )
    connect_timeout = _number("CONNECT_TIMEOUT", raw["CONNECT_TIMEOUT"], "seconds")
    callback_timeout = _number("CALLBACK_TIMEOUT", raw["CALLBACK_TIMEOUT"], "seconds")

    drift = raw["MAX_DRIFT"]
    if isinstance(drift, str):
        try:
            drift = float(drift)
        except ValueError:
            pass
    if isinstance(drift, bool) or not isinstance(drift, (int, float)) or not (0 <= drift < 0.5):
        raise _error(
            f"{key('MAX_DRIFT')} must be a fraction in [0, 0.5), like 0.01 for clocks whose"
            f" rates differ by at most 1%, not {raw['MAX_DRIFT']!r}"
        )

    state_file = raw["STATE_FILE"]
    if state_file in (None, ""):
        state_file = os.path.join(instance_path, f"goelect-{node_id}.json")
    elif isinstance(state_file, (str, os.PathLike)):
        state_file = os.fspath(state_file)
    else:
        raise _error(
            f"{key('STATE_FILE')} must be a file path (or {MEMORY!r} for tests),"
            f" not {type(state_file).__name__}"
        )

    secrets = _secrets(raw["SECRET"])
    tls_ca = _tls_file(
        "TLS_CA", raw["TLS_CA"], "the CA bundle (PEM) that signed the peers' certificates"
    )
    tls_cert = _tls_file("TLS_CERT", raw["TLS_CERT"], "this node's client certificate (PEM)")
    tls_key = _tls_file("TLS_KEY", raw["TLS_KEY"], "the private key of GOELECT_TLS_CERT (PEM)")
    if tls_key and not tls_cert:
        raise _error(
            f"{key('TLS_KEY')} is set but {key('TLS_CERT')} is not: set {key('TLS_CERT')} to"
            " the client certificate this key belongs to"
        )

    try:
        election = core.Config(
            node_id=node_id,
            peers=tuple(peers),
            address=address,
            novote=novote,
            tags=tags,
            elect_timeout=elect_timeout,
            heartbeat_interval=heartbeat,
            max_drift=float(drift),
        )
    except core.ConfigError as exc:
        text = str(exc)
        if "no voters" in text:
            where = f"{key('PEERS')} / {key('NOVOTE')}"
        elif "tags" in text:
            where = f"{key('TAGS')} / {key('PEERS')}"
        else:
            where = f"{key('PEERS')} / {key('NODE_ID')}"
        raise _error(f"{where}: {text}") from None

    return Settings(
        node_id=node_id,
        node_address=address,
        election=election,
        connect_timeout=connect_timeout,
        callback_timeout=callback_timeout,
        url_prefix=_url_prefix(raw["URL_PREFIX"]),
        url_prefix_explicit="URL_PREFIX" in explicit,
        state_file=None if state_file == MEMORY else str(state_file),
        autostart=_boolean("AUTOSTART", raw["AUTOSTART"]),
        follower_response=_follower_response(raw["FOLLOWER_RESPONSE"]),
        secrets=secrets,
        cluster=_cluster(raw["CLUSTER"]),
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        status_public=_boolean("STATUS_PUBLIC", raw["STATUS_PUBLIC"]),
        raw=raw,
    )
