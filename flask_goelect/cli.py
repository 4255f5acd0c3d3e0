"""``flask goelect ...``: look at the election and hand leadership over.

The commands run in a ``flask`` process of their own, which does not run an
elector (see ``GOELECT_AUTOSTART``): they ask the running node over HTTP, at
``GOELECT_NODE_ADDRESS``. ``transfer`` proves it runs on the node's host by
sending the token the running elector keeps next to its state file.

::

    flask goelect status              # this node's view
    flask goelect cluster             # every node's view, side by side
    flask goelect transfer [--to n2]  # the leader hands over (run on the leader's host)
"""

from __future__ import annotations

import json
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from .app_state import ExtensionState

__all__ = ["goelect_cli"]

goelect_cli = AppGroup("goelect", help="Leader election: status, cluster view, hand-over.")


def _state() -> ExtensionState:
    state = current_app.extensions.get("goelect")
    if not isinstance(state, ExtensionState):
        raise click.ClickException("flask-goelect is not set up on this app (LeaderElect(app))")
    return state


def _timeout(state: ExtensionState) -> tuple[float, float]:
    return (state.settings.connect_timeout, max(2.0, state.settings.elect_timeout))


def _node_status(state: ExtensionState) -> dict[str, Any]:
    if state.running:
        return state.status()
    from .transport import TransportError

    transport = state.make_transport()
    try:
        return transport.get_status(state.settings.node, _timeout(state))
    except TransportError as exc:
        raise click.ClickException(
            f"cannot read the status of node {state.settings.node_id!r}: {exc}."
            " Is the app running there?"
        ) from None
    finally:
        transport.close()


def _fmt_seconds(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.2f}s"
    return "-"


@goelect_cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(as_json: bool) -> None:
    """Show this node's view of the election."""
    state = _state()
    status = _node_status(state)
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
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
        click.echo(json.dumps(cluster, indent=2, sort_keys=True))
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
@click.option("--to", "to", default=None, help="The node id to hand over to (default: the best).")
def transfer_command(to: str | None) -> None:
    """Make the leader hand leadership over (run it on the leader's host)."""
    state = _state()
    if state.running:
        try:
            target = state.transfer_leadership(to)
        except Exception as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"node {state.settings.node_id!r} handed leadership to {target!r}")
        return
    import requests

    from ._lock import read_token
    from .views import TOKEN_HEADER

    settings = state.settings
    token = read_token(settings.state_file) if settings.state_file else None
    if not token:
        raise click.ClickException(
            f"node {settings.node_id!r} is not running here (no token next to"
            f" {settings.state_file!r}); run the command on the host of the leader, with the"
            " same configuration as the running app"
        )
    url = f"{settings.node_address}{state.url_prefix}/transfer"
    try:
        with requests.Session() as session:
            session.trust_env = False
            resp = session.post(
                url,
                json={"to": to},
                headers={TOKEN_HEADER: token},
                timeout=_timeout(state),
                allow_redirects=False,
            )
    except requests.RequestException as exc:
        raise click.ClickException(
            f"cannot reach node {settings.node_id!r} at {url}: {exc}"
        ) from None
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code != 200:
        message = body.get("message") if isinstance(body, dict) else None
        raise click.ClickException(message or f"HTTP {resp.status_code} from {url}")
    click.echo(f"node {settings.node_id!r} handed leadership to {body.get('transferred_to')!r}")
