"""``flask goelect ...``: look at the election and hand leadership over.

The commands run in a ``flask`` process of their own, which does not run an
elector (see ``GOELECT_AUTOSTART``): they ask the running node over HTTP, first
on this host's loopback at the node's port, then at ``GOELECT_NODE_ADDRESS``.
They prove they run on the node's host by sending the token the running
elector keeps next to its state file: ``/status`` then answers without a
secret whatever address the node listens on, and ``transfer`` and
``step-down`` are allowed.

::

    flask goelect status [--json]              # this node's view
    flask goelect cluster [--json]             # every node's view, side by side
    flask goelect transfer [--to n2] [--json]  # the leader hands over (on the leader's host)
    flask goelect step-down [--json]           # this node stops leading, if it leads
    flask goelect simulate [--schedules N]     # the simulator with this app's timings

Exit codes: :data:`EXIT_OK` (0) done; :data:`EXIT_FAILED` (1) the node could
not be asked or refused (not running, unreachable, not the leader for
``transfer``, a bad target); 2 a usage error (click's); :data:`EXIT_UNSAFE` (3)
``simulate`` found a safety violation.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
from flask import current_app
from flask.cli import AppGroup

from .app_state import ExtensionState
from .auth import is_loopback
from .views import TOKEN_HEADER

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_UNSAFE", "goelect_cli"]

#: The command did what it was asked.
EXIT_OK = 0
#: The node could not be asked, or refused (click's ``ClickException`` code).
EXIT_FAILED = 1
#: ``simulate`` found a safety violation with these timings.
EXIT_UNSAFE = 3

goelect_cli = AppGroup(
    "goelect",
    help="Leader election: status, cluster view, hand-over, the simulator."
    " Exit codes: 0 done, 1 failed or refused, 2 usage, 3 simulate found a violation.",
)


def _state() -> ExtensionState:
    state = current_app.extensions.get("goelect")
    if not isinstance(state, ExtensionState):
        raise click.ClickException("flask-goelect is not set up on this app (LeaderElect(app))")
    return state


def _timeout(state: ExtensionState) -> tuple[float, float]:
    return (state.settings.connect_timeout, max(2.0, state.settings.elect_timeout))


def _loopback(address: str) -> str | None:
    """``address`` with this host's loopback for its host (plain HTTP only: a
    certificate names the real host), or None when it is loopback already."""
    parts = urlsplit(address)
    if parts.scheme != "http" or is_loopback(parts.hostname):
        return None
    port = parts.port or 80
    return urlunsplit(("http", f"127.0.0.1:{port}", parts.path, "", ""))


def _addresses(state: ExtensionState, url: str | None) -> list[str]:
    """Where to ask the running node: ``url``, else loopback, then its address."""
    if url:
        return [url.rstrip("/")]
    address = state.settings.node_address.rstrip("/")
    local = _loopback(address)
    return [local, address] if local else [address]


def _local_token(state: ExtensionState) -> str | None:
    """The token of the node's elector running on this host, or None."""
    from ._lock import read_token

    state_file = state.settings.state_file
    return read_token(state_file) if state_file else None


def _ask_node(
    state: ExtensionState, method: str, route: str, url: str | None, token: str, **kw: Any
) -> tuple[Any, str] | None:
    """Send ``route`` to the node with its local token: (the response, its URL), or
    None when it could not be reached at any of its addresses on this host.

    The token goes only to this host: loopback, or the node's own address (a
    ``--url`` elsewhere gets no token).
    """
    import requests

    settings = state.settings
    own = {settings.node_address.rstrip("/"), _loopback(settings.node_address.rstrip("/"))}
    verify: Any = settings.tls_ca or True
    cert: Any = None
    if settings.tls_cert:
        cert = (settings.tls_cert, settings.tls_key) if settings.tls_key else settings.tls_cert
    for address in _addresses(state, url):
        if address not in own and not is_loopback(urlsplit(address).hostname):
            continue
        target = f"{address}{state.url_prefix}{route}"
        try:
            with requests.Session() as session:
                session.trust_env = False
                response = session.request(
                    method,
                    target,
                    headers={TOKEN_HEADER: token},
                    timeout=_timeout(state),
                    allow_redirects=False,
                    verify=verify,
                    cert=cert,
                    **kw,
                )
        except requests.RequestException:
            continue
        return response, target
    return None


def _node_status(state: ExtensionState, url: str | None = None) -> dict[str, Any]:
    if state.running and url is None:
        return state.status()
    from .core import Peer
    from .transport import TransportError

    token = _local_token(state)
    if token:
        # On the node's host: its token opens /status whatever address the node
        # listens on (a request from its own non-loopback address is not local).
        asked = _ask_node(state, "GET", "/status", url, token)
        if asked is not None and asked[0].status_code == 200:
            try:
                data = asked[0].json()
            except ValueError:
                data = None
            if isinstance(data, dict):
                return data
    transport = state.make_transport()
    errors = []
    try:
        for address in _addresses(state, url):
            peer = Peer(state.settings.node_id, address)
            try:
                return transport.get_status(peer, _timeout(state))
            except TransportError as exc:
                errors.append(str(exc))
    finally:
        transport.close()
    raise click.ClickException(
        f"cannot read the status of node {state.settings.node_id!r}: {'; '.join(errors)}."
        " Is the app running there? (From another host /status needs GOELECT_SECRET in this"
        " command's configuration, or GOELECT_STATUS_PUBLIC on the node.)"
    )


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


_URL = click.option(
    "--url",
    default=None,
    metavar="URL",
    help="The node's base URL (default: this host's loopback at the node's port, then"
    " GOELECT_NODE_ADDRESS).",
)


def _fmt_seconds(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.2f}s"
    return "-"


@goelect_cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_URL
def status_command(as_json: bool, url: str | None) -> None:
    """Show this node's view of the election."""
    state = _state()
    status = _node_status(state, url)
    if as_json:
        _echo_json(status)
        return
    leader = status.get("leader_id") or "-"
    if status.get("leader_address"):
        leader += f" ({status['leader_address']})"
    rows = [
        ("node", status.get("node_id")),
        ("state", status.get("state")),
        ("term", status.get("term")),
        ("leader", leader),
        ("lease remaining", _fmt_seconds(status.get("lease_remaining"))),
        ("voters", ", ".join(status.get("voters") or []) or "-"),
        ("observers", ", ".join(status.get("observers") or []) or "-"),
    ]
    for peer, seconds in sorted((status.get("last_contact") or {}).items()):
        ago = f"{_fmt_seconds(seconds)} ago" if seconds is not None else "never"
        rows.append((f"last contact {peer}", ago))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name.ljust(width)}  {value}")


@goelect_cli.command("cluster")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the nodes' answers.")
def cluster_command(as_json: bool, timeout: float | None) -> None:
    """Show every node's view of the election (unreachable nodes included)."""
    state = _state()
    cluster = state.cluster_state(timeout)
    if as_json:
        _echo_json(cluster)
        return
    header = ("NODE", "ADDRESS", "VOTES", "STATE", "TERM", "LEADER", "LEASE")
    rows = [header]
    for node_id, entry in cluster.items():
        if entry.get("reachable"):
            rows.append(
                (
                    node_id,
                    str(entry.get("address", "")),
                    "no" if entry.get("novote") else "yes",
                    str(entry.get("state", "?")),
                    str(entry.get("term", "?")),
                    str(entry.get("leader_id") or "-"),
                    _fmt_seconds(entry.get("lease_remaining")) if entry.get("is_leader") else "-",
                )
            )
        else:
            rows.append(
                (
                    node_id,
                    str(entry.get("address", "")),
                    "no" if entry.get("novote") else "yes",
                    "unreachable",
                    "-",
                    "-",
                    str(entry.get("error", ""))[:60],
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@goelect_cli.command("transfer")
@click.option(
    "--to",
    "to",
    default=None,
    help="The node id to hand over to (default: the voter heard from last).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_URL
def transfer_command(to: str | None, as_json: bool, url: str | None) -> None:
    """Make the leader hand leadership over (run it on the leader's host).

    Fails (exit 1) on a node that is not the leader.
    """
    state = _state()
    target, term = _transfer(state, to, url)
    if as_json:
        _echo_json({"node_id": state.settings.node_id, "transferred_to": target, "term": term})
    else:
        click.echo(f"node {state.settings.node_id!r} handed leadership to {target!r}")


@goelect_cli.command("step-down")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_URL
def step_down_command(as_json: bool, url: str | None) -> None:
    """Make sure this node does not lead: a leader hands over to the voter heard from last.

    Done (exit 0) when the node handed over or was not leading: run it on a
    host before its maintenance.
    """
    state = _state()
    node_id = state.settings.node_id
    status = _node_status(state, url)
    if status.get("state") != "leader":
        result = {"node_id": node_id, "stepped_down": False, "state": status.get("state")}
        result["leader_id"] = status.get("leader_id")
        if as_json:
            _echo_json(result)
        else:
            click.echo(
                f"node {node_id!r} is not the leader ({status.get('state')}; leader:"
                f" {status.get('leader_id') or 'none'}): nothing to do"
            )
        return
    target, term = _transfer(state, None, url)
    if as_json:
        _echo_json({"node_id": node_id, "stepped_down": True, "transferred_to": target})
    else:
        click.echo(f"node {node_id!r} stepped down: leadership handed to {target!r}")


def _transfer(state: ExtensionState, to: str | None, url: str | None) -> tuple[str, int | None]:
    """Ask the node to hand over; returns the target and the term."""
    if state.running and url is None:
        try:
            target = state.transfer_leadership(to)
        except Exception as exc:
            raise click.ClickException(str(exc)) from None
        return target, state.snapshot.term
    settings = state.settings
    token = _local_token(state)
    if not token:
        raise click.ClickException(
            f"node {settings.node_id!r} is not running here (no token next to"
            f" {settings.state_file!r}); run the command on the host of the leader, with the"
            " same configuration as the running app"
        )
    asked = _ask_node(state, "POST", "/transfer", url, token, json={"to": to})
    if asked is None:
        raise click.ClickException(
            f"cannot reach node {settings.node_id!r} on this host at"
            f" {', '.join(_addresses(state, url))}"
        )
    resp, target_url = asked
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code != 200:
        message = body.get("message") if isinstance(body, dict) else None
        raise click.ClickException(message or f"HTTP {resp.status_code} from {target_url}")
    return str(body.get("transferred_to")), body.get("term")


@goelect_cli.command(
    "simulate", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
@click.option("--schedules", type=int, default=200, show_default=True, help="Schedules to run.")
@click.option(
    "--elect-timeout",
    type=float,
    default=None,
    metavar="MS",
    help="Try another election timeout (default: this app's GOELECT_ELECT_TIMEOUT).",
)
@click.option(
    "--heartbeat-interval",
    type=float,
    default=None,
    metavar="MS",
    help="Try another heartbeat interval (default: this app's GOELECT_HEARTBEAT_INTERVAL).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def simulate_command(
    ctx: click.Context,
    schedules: int,
    elect_timeout: float | None,
    heartbeat_interval: float | None,
    as_json: bool,
) -> None:
    """Run the election simulator with this app's timings and cluster shape.

    Runs ``python -m flask_goelect.simulate`` with this app's election timeout,
    heartbeat interval, drift bound and numbers of voters and observers; other
    options (``--jobs``, ``--duration``, ``--faults``, ``--seed``) are passed
    on. It prints the failover times a crash of the leader gives with these
    timings, and exits 3 if any schedule broke a safety rule.
    """
    from . import simulate

    config = _state().settings.election
    observers = sum(1 for p in config.peers if p.novote)
    t_ms = elect_timeout if elect_timeout is not None else config.elect_timeout * 1000
    hb_ms = (
        heartbeat_interval if heartbeat_interval is not None else config.heartbeat_interval * 1000
    )
    argv = [
        "--nodes",
        str(len(config.voters)),
        "--observers",
        str(observers),
        "--elect-timeout",
        f"{t_ms:g}",
        "--heartbeat-interval",
        f"{hb_ms:g}",
        "--max-drift",
        f"{config.max_drift:g}",
        "--schedules",
        str(schedules),
        *(["--json"] if as_json else []),
        *ctx.args,
    ]
    if not as_json:
        click.echo("python -m flask_goelect.simulate " + " ".join(argv))
    try:
        status = simulate.main(argv)
    except SystemExit as exc:  # argparse: a bad option
        raise click.UsageError(f"simulate: bad options {ctx.args}") from exc
    if status:
        ctx.exit(EXIT_UNSAFE)
