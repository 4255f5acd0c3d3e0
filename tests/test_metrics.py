"""flask_goelect.metrics: what a scrape shows, who may scrape, the signal counters."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
from live_nodes import make_app

pytest.importorskip("prometheus_client", reason="the [metrics] extra is not installed")

from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from flask_goelect import LeaderElect  # noqa: E402
from flask_goelect.metrics import GoelectMetrics  # noqa: E402
from flask_goelect.testing import make_follower, make_leader  # noqa: E402


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def scrape(app: Any, **environ: Any) -> tuple[int, str]:
    response = app.test_client().get("/metrics", environ_base=environ)
    return response.status_code, response.get_data(as_text=True)


@pytest.fixture
def app() -> Any:
    app = make_app()
    LeaderElect(app)
    GoelectMetrics(app, registry=CollectorRegistry())
    return app


def test_a_leader_reports_1_and_its_term_and_state(app: Any) -> None:
    with make_leader(app, term=7):
        status, text = scrape(app)
    assert status == 200
    got = samples(text)
    node = (("node", "n1"),)
    assert got[("goelect_is_leader", node)] == 1
    assert got[("goelect_term", node)] == 7
    assert got[("goelect_state", (("node", "n1"), ("state", "leader")))] == 1
    assert got[("goelect_state", (("node", "n1"), ("state", "follower")))] == 0
    assert got[("goelect_leader", (("leader", "n1"), ("node", "n1")))] == 1
    assert math.isinf(got[("goelect_lease_remaining_seconds", node)]) or (
        got[("goelect_lease_remaining_seconds", node)] > 0
    )


def test_a_follower_reports_0_and_its_leader(app: Any) -> None:
    with make_follower(app, leader_id="n2", term=3):
        _, text = scrape(app)
    got = samples(text)
    assert got[("goelect_is_leader", (("node", "n1"),))] == 0
    assert got[("goelect_leader", (("leader", "n2"), ("node", "n1")))] == 1
    assert got[("goelect_state", (("node", "n1"), ("state", "follower")))] == 1


def test_others_than_this_host_and_the_peers_are_refused(app: Any) -> None:
    status, text = scrape(app, REMOTE_ADDR="198.51.100.7")
    assert status == 401
    assert "GOELECT_STATUS_PUBLIC" in text


def test_public_metrics_and_no_route() -> None:
    app = make_app()
    LeaderElect(app)
    GoelectMetrics(app, registry=CollectorRegistry(), public=True)
    assert scrape(app, REMOTE_ADDR="198.51.100.7")[0] == 200
    other = make_app("n2")
    LeaderElect(other)
    registry = CollectorRegistry()
    GoelectMetrics(other, registry=registry, path=None)
    assert other.test_client().get("/metrics").status_code == 404
    from prometheus_client import generate_latest

    assert b"goelect_is_leader" in generate_latest(registry)


def test_setup_errors_say_what_to_do() -> None:
    bare = make_app()
    with pytest.raises(RuntimeError, match="LeaderElect"):
        GoelectMetrics(bare, registry=CollectorRegistry())
    registry = CollectorRegistry()
    first, second = make_app("n1"), make_app("n2")
    for a in (first, second):
        LeaderElect(a)
    GoelectMetrics(first, registry=registry)
    with pytest.raises(RuntimeError, match="its own"):
        GoelectMetrics(second, registry=registry)
    with pytest.raises(RuntimeError, match="already"):
        GoelectMetrics(first, registry=CollectorRegistry())


def test_rpc_calls_and_signal_counters_of_a_running_node(tmp_path: Path) -> None:
    """A real single-voter node: it campaigns and wins once; the counters are kept in
    the file beside the state file, where every process of the node reads them."""
    app = make_app(
        GOELECT_PEERS=[],
        GOELECT_NODE_ADDRESS="http://127.0.0.1:1",
        GOELECT_ELECT_TIMEOUT=100,
        GOELECT_HEARTBEAT_INTERVAL=10,
        GOELECT_STATE_FILE=str(tmp_path / "n1.json"),
    )
    elect = LeaderElect(app)
    GoelectMetrics(app, registry=CollectorRegistry())
    elect.start()
    try:
        assert elect.wait_for_leader(10) is not None
        node = (("node", "n1"),)
        for _ in range(200):  # the receivers run off the election loop
            got = samples(scrape(app)[1])
            counted = ("goelect_elections_won_total", "goelect_leader_changes_total")
            if all(got[(name, node)] == 1 for name in counted):
                break

            time.sleep(0.02)
        assert got[("goelect_is_leader", node)] == 1
        assert got[("goelect_elections_started_total", node)] == 1
        assert got[("goelect_elections_won_total", node)] == 1
        assert got[("goelect_leader_changes_total", node)] == 1
        assert got[("goelect_running", node)] == 1
        assert (tmp_path / "n1.json.metrics.json").exists()
    finally:
        elect.stop()
