"""The drawn state machine (flask_goelect.fsm) against the core's real transitions.

The core has no transition table of its own; this test runs it through
randomized fault schedules on
``core_net``'s network, records every ``Transition`` it reports, and checks
that each matches an edge of ``fsm.EDGES`` and that every edge was seen.
"""

from __future__ import annotations

import random
from pathlib import Path

from core_net import Net

from flask_goelect import fsm
from flask_goelect.core import NotLeaderError, Role, TransferError, Transition

ROOT = Path(__file__).resolve().parents[1]


def random_schedule(seed: int) -> list[Transition]:
    """5 voters and an observer under isolations, one-way cuts, crashes, restarts
    and transfers; every 5th schedule without pre-vote."""
    rnd = random.Random(seed)
    net = Net(("a", "b", "c", "d", "e", "o"), observers=("o",), seed=seed, pre_vote=seed % 5 != 4)
    for _ in range(120):
        r = rnd.random()
        if r < 0.5:
            net.advance(rnd.uniform(0.05, 2.5))
        elif r < 0.6:
            net.isolate(rnd.choice(net.ids))
        elif r < 0.7:
            net.heal()
        elif r < 0.75:
            src, dst = rnd.sample(net.ids, 2)
            net.cut.add((src, dst))
        elif r < 0.82:
            i = rnd.choice(net.ids)
            if i in net.crashed:
                net.restart(i)
            else:
                net.crash(i)
        elif r < 0.87:
            # Two election timers at one instant (a stall of the process, a clock
            # that jumped): ranked timers keep candidates apart, so a split vote
            # and its edges need this.
            up = [i for i in net.ids if i not in net.crashed and i not in net.observers]
            if len(up) >= 2:
                pair = rnd.sample(up, 2)
                net.now = max(net.now, *(net.nodes[i].next_deadline() for i in pair))
                for i in pair:
                    net.tick(i)
                net.deliver()
        else:
            for leader in net.leaders():
                to = rnd.choice([None, *net.ids])
                try:
                    net.handle(leader, net.nodes[leader].transfer_leadership(net.now, to))
                except (NotLeaderError, TransferError):
                    pass
    return [t for _, t in net.transitions]


def all_transitions() -> list[Transition]:
    seen: list[Transition] = []
    for seed in range(60):
        seen += random_schedule(seed)
    return seen


def test_every_transition_of_the_core_is_an_edge_and_every_edge_happens() -> None:
    transitions = all_transitions()
    counts: dict[fsm.Edge, int] = dict.fromkeys(fsm.EDGES, 0)
    for transition in transitions:
        counts[fsm.edge_of(transition)] += 1  # ValueError: not in the table
    unseen = [f"{e.source} -> {e.target} ({e.label})" for e, n in counts.items() if n == 0]
    assert not unseen, f"edges of fsm.EDGES the core never took: {unseen}"


def test_a_transition_outside_the_table_is_named() -> None:
    bogus = Transition(Role.LEADER, Role.CANDIDATE, "a", None, 3, 0.0, "made up")
    try:
        fsm.edge_of(bogus)
    except ValueError as exc:
        assert "leader -> candidate" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("edge_of accepted a transition the core never makes")


def test_the_drawing_shows_every_role_and_every_cause() -> None:
    drawing = fsm.svg()
    assert drawing.startswith("<svg")
    for role in Role:
        assert f'data-role="{role}"' in drawing
    for edge in fsm.EDGES:
        assert f">{edge.label}</text>" in drawing


def test_the_committed_drawing_is_current() -> None:
    committed = (ROOT / "docs" / "_static" / "fsm.svg").read_text(encoding="utf-8")
    assert committed == fsm.svg(), "run: python -m flask_goelect.fsm --write docs/_static/fsm.svg"


def test_the_table_in_the_docs_is_current() -> None:
    text = (ROOT / "docs" / "state-machine.md").read_text(encoding="utf-8")
    start = "<!-- generated: fsm table (python -m flask_goelect.fsm --table) -->\n"
    block = text[text.index(start) + len(start) : text.index("<!-- end generated: fsm table")]
    assert block == fsm.markdown_table(), "paste python -m flask_goelect.fsm --table there"
