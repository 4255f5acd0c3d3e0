"""The election's state machine as a table, and its drawing (SVG), made from the table.

:data:`EDGES` lists every change of role (or of the known leader) that
:class:`flask_goelect.core.Node` can report as a :class:`~flask_goelect.core.Transition`:
the role before, the role after, and why, as the pattern of the core's
``reason``. The core keeps no such table itself (its transitions are calls of
``_become_*``), so ``tests/test_fsm.py`` runs the core through randomized
fault schedules on ``tests/core_net.py``'s network, records every transition it
reports, and checks that each one matches an edge here and that each edge here
is seen: the drawing cannot drift from the code.

::

    python -m flask_goelect.fsm > fsm.svg          # the drawing
    python -m flask_goelect.fsm --write docs/_static/fsm.svg
    python -m flask_goelect.fsm --table            # the table, as Markdown
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

from .core import Role, Transition

__all__ = ["EDGES", "Edge", "edge_of", "markdown_table", "svg"]


@dataclass(frozen=True)
class Edge:
    """One kind of transition: ``source`` -> ``target`` because of ``label``."""

    source: Role
    target: Role
    #: A short name of the cause, drawn on the arrow.
    label: str
    #: Matches the core's ``Transition.reason`` for this cause.
    reason: re.Pattern[str]
    #: The rule behind it, for the table.
    why: str


def _edge(source: Role, target: Role, label: str, reason: str, why: str) -> Edge:
    return Edge(source, target, label, re.compile(reason), why)


F, P, C, L, OB = Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER, Role.OBSERVER

_TIMEOUT = r"election timeout: asking for pre-votes"
_CAMPAIGN = r"campaigning"
_TRANSFER = r"leadership transfer: campaigning at once"
_HIGHER = r"saw term \d+ from .+"
_HEARD = r"heard from leader .+"
_LOST = r"lost the election"
_LOST_PRE_VOTE = r"lost the pre-vote"

#: Every transition the core reports (see the module docs).
EDGES: tuple[Edge, ...] = (
    _edge(F, P, "election timeout", _TIMEOUT, "no heartbeat for the election timeout: pre-vote"),
    _edge(C, P, "election timeout", _TIMEOUT, "a split vote: the candidate's timer fired again"),
    _edge(P, C, "pre-vote won", _CAMPAIGN, "a majority would vote: term + 1, real vote"),
    _edge(F, C, "timeout (no pre-vote)", _CAMPAIGN, "only with Config(pre_vote=False)"),
    _edge(F, C, "timeout-now", _TRANSFER, "the leader hands over: campaign at once"),
    _edge(C, L, "won the vote", r"won the election for term \d+", "votes of a majority"),
    _edge(L, F, "lost quorum", r"lost contact with a majority", "check quorum (§6.2)"),
    _edge(L, F, "higher term", _HIGHER, "a message of a later term (§5.1)"),
    _edge(L, F, "hands over", r"transferring leadership to .+", "transfer_leadership()/stop()"),
    _edge(C, F, "heartbeat", _HEARD, "a leader of this term exists"),
    _edge(C, F, "lost the vote", _LOST, "refused by a majority"),
    _edge(C, F, "higher term", _HIGHER, "a message of a later term (§5.1)"),
    _edge(P, F, "lost the pre-vote", _LOST_PRE_VOTE, "refused by a majority"),
    _edge(P, F, "heartbeat", _HEARD, "the leader is alive after all"),
    _edge(P, F, "higher term", _HIGHER, "a message of a later term (§5.1)"),
    _edge(F, F, "new leader", _HEARD, "a heartbeat from another leader"),
    _edge(F, F, "higher term", _HIGHER, "a later term: the leader is forgotten"),
    _edge(OB, OB, "new leader", _HEARD, "observers only follow"),
    _edge(OB, OB, "higher term", _HIGHER, "observers only follow"),
)


def edge_of(transition: Transition) -> Edge:
    """The edge of :data:`EDGES` that ``transition`` is an instance of.

    :raises ValueError: none is (the table is missing a transition of the core).
    """
    for edge in EDGES:
        if (
            edge.source is transition.previous_role
            and edge.target is transition.role
            and edge.reason.fullmatch(transition.reason)
        ):
            return edge
    raise ValueError(
        f"no edge of flask_goelect.fsm.EDGES for {transition.previous_role} ->"
        f" {transition.role} ({transition.reason!r}): add it to the table"
    )


def markdown_table(edges: Sequence[Edge] = EDGES) -> str:
    """The table as Markdown (the docs show it beside the drawing)."""
    lines = ["| from | to | on | why |", "| --- | --- | --- | --- |"]
    for e in edges:
        lines.append(f"| {e.source} | {e.target} | {e.label} | {e.why} |")
    return "\n".join(lines) + "\n"


# -- the drawing -----------------------------------------------------------------------------

#: Where each role is drawn (centre), and its colour.
_PLACE: dict[Role, tuple[float, float]] = {
    F: (170.0, 250.0),
    P: (470.0, 80.0),
    C: (770.0, 250.0),
    L: (470.0, 430.0),
    OB: (170.0, 470.0),
}
_FILL = {F: "#dbeafe", P: "#fef9c3", C: "#ffedd5", L: "#dcfce7", OB: "#e5e7eb"}
_STROKE = {F: "#1d4ed8", P: "#a16207", C: "#c2410c", L: "#15803d", OB: "#4b5563"}
_RX, _RY = 72.0, 26.0
_WIDTH, _HEIGHT = 940, 540


def _on_ellipse(cx: float, cy: float, tx: float, ty: float) -> tuple[float, float]:
    """The point of the node's ellipse in the direction of (tx, ty)."""
    dx, dy = tx - cx, ty - cy
    scale = 1.0 / math.sqrt((dx / _RX) ** 2 + (dy / _RY) ** 2)
    return cx + dx * scale, cy + dy * scale


def _label(x: float, y: float, lines: Sequence[str]) -> list[str]:
    width = max(len(line) for line in lines) * 6.4 + 10
    height = 15 * len(lines) + 4
    out = [
        f'<rect x="{x - width / 2:.1f}" y="{y - height / 2:.1f}" width="{width:.1f}"'
        f' height="{height}" rx="4" class="label-bg"/>'
    ]
    for i, line in enumerate(lines):
        ty = y - height / 2 + 14 + 15 * i
        out.append(f'<text x="{x:.1f}" y="{ty:.1f}" class="label">{escape(line)}</text>')
    return out


def svg(edges: Sequence[Edge] = EDGES) -> str:
    """The state machine as a standalone SVG document: roles as nodes, one arrow per
    pair of roles labelled with every cause of :data:`EDGES` for that pair."""
    groups: dict[tuple[Role, Role], list[str]] = {}
    for e in edges:
        causes = groups.setdefault((e.source, e.target), [])
        if e.label not in causes:
            causes.append(e.label)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {_HEIGHT}"'
        f' width="{_WIDTH}" height="{_HEIGHT}" role="img"'
        ' aria-label="flask-goelect election state machine">',
        "<title>flask-goelect: the election's state machine (from flask_goelect.fsm.EDGES)</title>",
        "<style>"
        ".label{font:12px sans-serif;fill:#111827;text-anchor:middle}"
        ".label-bg{fill:#ffffff;fill-opacity:.9;stroke:#d1d5db}"
        ".role{font:bold 15px sans-serif;text-anchor:middle;dominant-baseline:middle}"
        ".edge{fill:none;stroke:#374151;stroke-width:1.6}"
        "</style>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8"'
        ' markerHeight="8" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z"'
        ' fill="#374151"/></marker></defs>',
        f'<rect width="{_WIDTH}" height="{_HEIGHT}" fill="#ffffff"/>',
    ]
    labels: list[str] = []
    for (source, target), names in groups.items():
        sx, sy = _PLACE[source]
        if source is target:
            # A loop above the node: the role stays, the known leader changes.
            x0, y0 = sx - 30, sy - _RY + 2
            x1, y1 = sx + 30, sy - _RY + 2
            parts.append(
                f'<path class="edge" marker-end="url(#arrow)" d="M{x0:.1f},{y0:.1f}'
                f' C{sx - 60:.1f},{sy - 95:.1f} {sx + 60:.1f},{sy - 95:.1f} {x1:.1f},{y1:.1f}"/>'
            )
            labels += _label(sx, sy - 95, names)
            continue
        tx, ty = _PLACE[target]
        mx, my = (sx + tx) / 2, (sy + ty) / 2
        length = math.hypot(tx - sx, ty - sy)
        # Bend to the left of the direction of travel: the two directions of a pair
        # of roles get two separate arcs.
        nx, ny = (ty - sy) / length, -(tx - sx) / length
        bend = max(40.0, 0.13 * length)
        cx, cy = mx + nx * bend, my + ny * bend
        x0, y0 = _on_ellipse(sx, sy, cx, cy)
        x1, y1 = _on_ellipse(tx, ty, cx, cy)
        parts.append(
            f'<path class="edge" marker-end="url(#arrow)"'
            f' d="M{x0:.1f},{y0:.1f} Q{cx:.1f},{cy:.1f} {x1:.1f},{y1:.1f}"/>'
        )
        # The label sits on the curve's middle (the quadratic's t = 0.5).
        lx, ly = (x0 + 2 * cx + x1) / 4, (y0 + 2 * cy + y1) / 4
        labels += _label(lx, ly, names)
    for role, (x, y) in _PLACE.items():
        parts.append(
            f'<g class="state" data-role="{role}"><ellipse cx="{x}" cy="{y}" rx="{_RX}"'
            f' ry="{_RY}" fill="{_FILL[role]}" stroke="{_STROKE[role]}" stroke-width="2"/>'
            f'<text x="{x}" y="{y}" class="role" fill="{_STROKE[role]}">{role}</text></g>'
        )
    parts += labels
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flask_goelect.fsm",
        description="Draw the election's state machine (SVG) from flask_goelect.fsm.EDGES.",
    )
    parser.add_argument("--write", metavar="PATH", help="write the SVG there (else stdout)")
    parser.add_argument("--table", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    text = markdown_table() if args.table else svg()
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
