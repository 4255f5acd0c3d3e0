"""The path from a candidacy to a lease, part by part: ``python -m bench.path``.

After the leader's crash, the first node whose election timer fires (its
promise over) runs this path before it leads:

1. **core**: the timer fires; the pre-vote requests are made (no write: a
   pre-vote changes no term and no vote);
2. **pre-vote round**: one RPC to each voter, in parallel; the candidate goes on
   with the fastest ``quorum - 1`` answers;
3. **core**: term + 1, a vote for itself, the vote requests;
4. **the candidate's write**: term and vote, durably, before a request leaves;
5. **vote round**: one RPC to each voter, each of which writes its vote
   durably before it answers; the fastest ``quorum - 1`` count;
6. **core**: the votes counted; the new leader holds a lease at once (from its
   vote round), then the runner publishes it and starts its leader tasks.

This measures each part on this machine, on real example-app processes where an
RPC is concerned: a pre-vote request to a follower of a live 3-node cluster (it
refuses: a leader is known; nothing is written), a vote to a node of a 3-node
cluster that runs alone (it grants, writing its vote, once per election timeout
since each grant promises T), the state file's durable write in the cluster's
state folder, and the core's steps in this process. The end-to-end figures, and
the runner's share (from the win to the ``lease`` event of the leader task), are
:mod:`bench.election`'s. ::

    python -m bench.path --rounds 200
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.election import Figure, _fmt
from flask_goelect import core
from flask_goelect.messages import Heartbeat, VoteReply, VoteRequest
from flask_goelect.storage import FileStorage
from flask_goelect.transport import HttpTransport
from goelect_harness.cluster import LocalCluster

__all__ = ["measure_path", "main"]


def _timed(figure: Figure, call: Callable[..., Any], *args: Any) -> Any:
    started = time.perf_counter()
    result = call(*args)
    figure.samples.append((time.perf_counter() - started) * 1000)
    return result


def _core_steps(rounds: int, figures: dict[str, Figure]) -> None:
    """The core's own work on the path, in this process (3 voters)."""
    ids = ("n1", "n2", "n3")
    T = 0.2
    for k in range(rounds):
        configs = {
            i: core.Config(i, tuple(core.Peer(p) for p in ids), elect_timeout=T) for i in ids
        }
        term = k + 1
        cand = core.Node(configs["n2"], core.HardState(term), now=0.0, rng=random.Random(k))
        voter = core.Node(configs["n3"], core.HardState(term), now=0.0, rng=random.Random(k))
        now = max(cand.next_deadline(), 2 * T)
        voter.step(Heartbeat("n1", term, 1, voter_set=configs["n3"].voter_set_fingerprint), 0.0)
        out = _timed(figures["core_timer"], cand.tick, now)
        pre = out.messages[0][1]
        reply = _timed(figures["core_grant"], voter.step, pre, now).reply
        out = _timed(figures["core_count"], cand.step, reply, now)
        req = out.messages[0][1]
        reply = _timed(figures["core_grant"], voter.step, req, now).reply
        assert isinstance(reply, VoteReply) and reply.granted
        _timed(figures["core_count"], cand.step, reply, now)
        assert cand.is_leader(now), "the candidate did not lead at once"


def _saves(rounds: int, folder: Path, figure: Figure) -> None:
    storage = FileStorage(folder / "bench-path-state.json")
    storage.load()
    for term in range(1, rounds + 1):
        _timed(figure, storage.save, core.HardState(term, "n1"))
    storage.close()


def _cluster(nodes: int, **options: Any) -> LocalCluster:
    return LocalCluster(
        nodes, elect_timeout=200, heartbeat_interval=50, log_level="WARNING", **options
    )


def _pre_votes(rounds: int, figure: Figure) -> None:
    """Pre-vote requests to a follower of a live cluster: refused, nothing written."""
    with _cluster(3) as cluster:
        cluster.start(timeout=20)
        view = cluster.wait_for_leader(timeout=20)
        followers = [n for n in cluster.nodes if n != view.id]
        target, sender = followers
        config = core.Config(target, tuple(core.Peer(n) for n in cluster.nodes))
        peer = core.Peer(target, cluster.nodes[target].address)
        transport = HttpTransport()
        try:
            request = VoteRequest(
                sender, view.term + 1, pre_vote=True, voter_set=config.voter_set_fingerprint
            )
            transport.send(peer, request, (1.0, 1.0))  # the connection, once
            for _ in range(rounds):
                reply = _timed(figure, transport.send, peer, request, (1.0, 1.0))
                assert isinstance(reply, VoteReply) and not reply.granted
                time.sleep(0.005)
        finally:
            transport.close()


def _votes(rounds: int, figure: Figure) -> None:
    """Votes granted by a node whose cluster has no leader: each one written durably
    before the reply; one per election timeout (each grant promises no other vote
    for T)."""
    cluster = _cluster(3)
    with cluster:
        voter = "n1"
        cluster.start([voter], timeout=20)
        config = core.Config(voter, tuple(core.Peer(n) for n in cluster.nodes))
        peer = core.Peer(voter, cluster.nodes[voter].address)
        transport = HttpTransport()
        try:
            time.sleep(0.5)  # past the promise of its start
            status = cluster.status(voter) or {}
            term = int(status.get("term", 0)) + 10
            for k in range(rounds):
                request = VoteRequest("n2", term + k, voter_set=config.voter_set_fingerprint)
                reply = _timed(figure, transport.send, peer, request, (1.0, 1.0))
                if not (isinstance(reply, VoteReply) and reply.granted):
                    figure.samples.pop()
                    figure.failures += 1
                time.sleep(0.21)
        finally:
            transport.close()


def make_figures() -> dict[str, Figure]:
    return {
        "core_timer": Figure("core: timer fires, pre-vote requests made", "ms"),
        "pre_vote": Figure("pre-vote RPC to one voter (HTTP on loopback, nothing written)", "ms"),
        "core_count": Figure("core: a vote counted (candidacy, or the win and the lease)", "ms"),
        "save": Figure("durable write of term and vote (FileStorage.save, fsync)", "ms"),
        "vote": Figure("vote RPC to one voter (HTTP, the voter's durable write inside)", "ms"),
        "core_grant": Figure("core: a voter answers a (pre-)vote", "ms"),
    }


def measure_path(rounds: int = 200, vote_rounds: int = 40, verbose: bool = True) -> dict[str, Any]:
    """Measure every part; returns a JSON-ready dict with a ``figures`` list."""
    figures = make_figures()
    t0 = time.monotonic()

    def say(text: str) -> None:
        if verbose:
            print(text, file=sys.stderr, flush=True)

    say(f"path: core steps x {rounds}")
    _core_steps(rounds, figures)
    with tempfile.TemporaryDirectory(prefix="goelect-path-") as folder:
        say(f"path: durable writes x {rounds} in {folder}")
        _saves(rounds, Path(folder), figures["save"])
    say(f"path: pre-vote RPCs x {rounds}")
    _pre_votes(rounds, figures["pre_vote"])
    say(f"path: granted votes x {vote_rounds} (one per 0.21 s)")
    _votes(vote_rounds, figures["vote"])
    return {
        "benchmark": "bench.path",
        "duration_s": round(time.monotonic() - t0, 1),
        "figures": [dict(f.summary(), key=k) for k, f in figures.items()],
    }


def estimate(results: dict[str, Any]) -> float:
    """The sum of the medians along the path, one voter's RPC per round (3 nodes)."""
    med = {f["key"]: f["median"] or 0.0 for f in results["figures"]}
    return (
        med["core_timer"]
        + med["pre_vote"]
        + med["core_count"]
        + med["save"]
        + med["vote"]
        + med["core_count"]
    )


def format_path(results: dict[str, Any]) -> str:
    rows = [("part of the path (3 nodes)", "n", "median", "p90", "p99", "max")]
    for f in results["figures"]:
        rows.append(
            (
                f["name"],
                str(f["n"]),
                _fmt(f["median"]),
                _fmt(f["p90"]),
                _fmt(f["p99"]),
                _fmt(f["max"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["The path from a candidacy to a lease, part by part (ms)", ""]
    for index, row in enumerate(rows):
        cells = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [
        "",
        "sum of the medians along the path (timer, pre-vote RPC, count, write, vote RPC,"
        f" count): {estimate(results):.2f} ms",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.path",
        description="Measure each part of the path from a candidacy to a lease.",
    )
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--vote-rounds", type=int, default=40)
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    results = measure_path(args.rounds, args.vote_rounds, verbose=not args.quiet)
    print(format_path(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
