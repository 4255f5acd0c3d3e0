"""Smoke tests of the benchmark code: statistics, tables, targets, the histogram, the
pysyncobj adapter, observers in a local cluster, a tiny scale run, and the parts of the
heartbeat bench.

The benchmarks themselves (``python -m bench``) are not run here; these tests
only check that every code path they use works, in a few seconds.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import pytest

from bench.election import (
    GOELECT,
    PYSYNCOBJ,
    BenchConfig,
    _agreed_at,
    format_table,
    make_figures,
    results,
    summarize,
)
from bench.pysyncobj_cluster import PySyncObjCluster, leader_views
from bench.scale import ScaleConfig, run_scale
from bench.suite import compare, format_report, targets, write_suite
from example_app.node import build_config, parse_args
from flask_goelect._settings import _peers
from goelect_harness.cluster import Event, LocalCluster

needs_pysyncobj = pytest.mark.skipif(
    importlib.util.find_spec("pysyncobj") is None, reason="pysyncobj is not installed"
)
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed"
)


def test_summarize() -> None:
    assert summarize([])["n"] == 0 and summarize([])["median"] is None
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert (s["n"], s["median"], s["p90"], s["max"], s["min"]) == (10, 5.5, 9.0, 10.0, 1.0)


def _run(
    system: Any,
    nodes: int,
    failover: list[float],
    cpu: float,
    steady: list[float] | None = None,
    handover: list[float] | None = None,
) -> dict[str, Any]:
    config = BenchConfig(nodes=nodes, rounds=len(failover))
    figures = make_figures(config, system)
    figures["failover"].samples = failover
    figures["steady"].samples = steady or []
    if handover is not None:
        figures["handover"].samples = handover
    figures["cold"].samples = [250.0, 260.0]
    figures["leader_cpu"].samples = [cpu]
    figures["follower_cpu"].samples = [cpu / 2, cpu / 2]
    return results(config, figures, 1.0, system)


def _report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    report: dict[str, Any] = {
        "quick": True,
        "runs": runs,
        "comparison": compare(runs),
        "scale": None,
        "notes": [],
        "duration_s": 1.0,
    }
    report["targets"] = targets(report, 200)
    return report


def test_figures_of_each_system() -> None:
    ours = make_figures(BenchConfig(), GOELECT)
    theirs = make_figures(BenchConfig(), PYSYNCOBJ)
    assert {"handover", "overhead"} <= set(ours)
    assert not {"handover", "overhead"} & set(theirs)
    assert ours["failover"].target == "median <= 300 ms" and not theirs["failover"].target
    assert ours["steady"].target == "median <= 205 ms, p99 <= 260 ms"
    assert {"steady_won", "steady_lease"} <= set(ours) and "steady_won" not in theirs
    assert not any(k.startswith("steady") for k in make_figures(BenchConfig(steady=0), GOELECT))


def test_comparison_ratios_and_targets() -> None:
    runs = [
        _run(GOELECT, 3, [100.0, 120.0, 140.0], 4.0, [180.0, 190.0, 200.0, 250.0], [5.0, 6.0, 7.0]),
        _run(PYSYNCOBJ, 3, [250.0, 260.0, 270.0], 1.0, [600.0, 650.0, 700.0]),
        _run(GOELECT, 5, [310.0, 320.0], 5.0, [210.0]),
    ]
    report = _report(runs)
    row = next(c for c in report["comparison"] if c["nodes"] == 3 and c["key"] == "failover")
    assert row["ratio_median"] == pytest.approx(120 / 260)
    cpu = next(c for c in report["comparison"] if c["nodes"] == 3 and c["key"] == "leader_cpu")
    assert cpu["ratio_median"] == pytest.approx(4.0)
    five = next(c for c in report["comparison"] if c["nodes"] == 5 and c["key"] == "failover")
    assert five["pysyncobj_median"] is None and five["ratio_median"] is None
    assert [t["met"] for t in report["targets"]] == [True] * 7
    steady = next(c for c in report["comparison"] if c["nodes"] == 3 and c["key"] == "steady")
    assert steady["ratio_median"] == pytest.approx(195 / 650)

    slow = _report(
        [
            _run(GOELECT, 3, [400.0], 4.0, [300.0], [20.0]),
            _run(PYSYNCOBJ, 3, [500.0], 1.0, [600.0]),
        ]
    )
    assert [t["met"] for t in slow["targets"]] == [False] * 6

    text = format_report(report)
    assert "flask-goelect vs pysyncobj" in text and "0.46" in text
    assert "pysyncobj election: 3 nodes" in format_table(runs[1])


def test_agreement_replays_events() -> None:
    def event(i: int, node: str, kind: str, mono: float, **data: Any) -> Event:
        return Event(i, node, kind, mono, {"event": kind, **data})

    events = [
        event(0, "n1", "leader_changed", 1.0, leader="n1", term=1),
        event(1, "n1", "leader", 1.0, term=1),
        event(2, "n2", "leader_changed", 1.1, leader="n1", term=1),
        event(3, "n3", "leader_changed", 1.2, leader="n1", term=1),
    ]
    assert _agreed_at(events, {"n1", "n2", "n3"}, "lease") is None
    assert _agreed_at(events, {"n1", "n2", "n3"}, "leader") == ("n1", 1, 1.2)
    views = leader_views([*events, event(4, "n1", "state", 1.3, state="follower", term=1)])
    assert views["n2"] == ("n1", False, 1) and views["n1"] == ("n1", False, 1)


@needs_matplotlib
def test_suite_files_and_histogram(tmp_path: Path) -> None:
    runs = [
        _run(GOELECT, 3, [230.0, 250.0, 270.0, 300.0], 4.0),
        _run(PYSYNCOBJ, 3, [150.0, 260.0, 510.0], 1.0),
        _run(GOELECT, 5, [220.0], 5.0),
    ]
    report = _report(runs)
    paths = write_suite(report, tmp_path)
    assert [p.suffix for p in paths] == [".json", ".png"]
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].stat().st_size > 10_000
    assert report["histogram"] == paths[1].name


def test_observers_are_listed_novote() -> None:
    cluster = LocalCluster(2, observers=["o1"])
    try:
        command = cluster.command("o1")
        args = parse_args(command[command.index("example_app") + 1 :])
        peers = {p.id: p.novote for p in _peers(build_config(args)["GOELECT_PEERS"])}
        assert peers == {"n1": False, "n2": False, "o1": True}
        assert cluster.observers == {"o1"}
    finally:
        cluster.close()
    with pytest.raises(ValueError, match="distinct"):
        LocalCluster(["n1", "x"], observers=["x"])


@pytest.mark.system
@needs_pysyncobj
def test_pysyncobj_adapter_elects_and_fails_over() -> None:
    with PySyncObjCluster(3, elect_timeout=200, heartbeat_interval=50) as cluster:
        cluster.start(timeout=15)
        leader = cluster.wait_for_leader(timeout=10)
        mark = cluster.mark()
        killed_at = cluster.kill(leader.id)
        event = cluster.wait_for_event(
            lambda e: e.kind == "leader" and e.node != leader.id and e.mono > killed_at,
            10,
            since=mark,
        )
        assert event is not None, cluster.events
        assert event.data["term"] > leader.term
        assert 0.15 < event.mono - killed_at < 5
        new = cluster.wait_for_leader(timeout=10, exclude=[leader.id], min_term=leader.term + 1)
        assert new.id == event.node
        cluster.start_node(leader.id, timeout=15)
        assert cluster.wait_for_leader(timeout=10, min_term=new.term).id == new.id


@pytest.mark.system
def test_tiny_scale_run() -> None:
    t0 = time.monotonic()
    report = run_scale(
        ScaleConfig(
            voters=2,
            observers=1,
            # A smoke run of the code path, not a measurement: timings a busy
            # machine cannot disturb into a second election during the watch.
            elect_timeout=1000,
            heartbeat_interval=100,
            watch_seconds=1.0,
            verbose=False,
        )
    )
    figures = {f["name"]: f for f in report["figures"]}
    failed = {name: (f["note"], f["samples"]) for name, f in figures.items() if f["failures"]}
    assert report["failures"] == 0, failed or figures
    assert figures["time to a leader known by all 3 nodes"]["n"] == 1
    assert figures["CPU, observer"]["n"] == 1 and figures["CPU, voting follower"]["n"] == 1
    assert figures["memory per node (RSS)"]["median"] > 10
    assert time.monotonic() - t0 < 25


def test_heartbeat_bench_has_every_part() -> None:
    from bench.heartbeat import PARTS, format_table, run

    t0 = time.monotonic()
    result = run(rounds=20, batches=2, e2e_heartbeats=300, idle_seconds=0, verbose=False)
    summaries = result["summaries"]
    idle = {p.key for p in PARTS if p.key.startswith("idle_")}
    for part in PARTS:
        if part.key in idle:
            assert part.key not in summaries
            continue
        assert summaries[part.key]["n"] == 2, part.key
        if part.key != "e2e_gap":  # a difference: may be negative on a tiny run
            assert summaries[part.key]["median"] > 0, (part.key, summaries[part.key])
    table = format_table(result)
    assert all(p.name in table for p in PARTS if p.key not in idle)
    assert time.monotonic() - t0 < 10
