"""The live status page in headless Chromium, against a real 3-node cluster.

The page, opened on a follower, shows the leader; the leader is SIGKILLed and
the page shows the new leader without being reloaded (a marker set in the
page's window survives). A screenshot of the page after the failover is saved;
``GOELECT_UPDATE_SCREENSHOT=1`` saves it as ``docs/_static/status-page.png``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, why_no_browser

from goelect_harness.cluster import LocalCluster

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "_static" / "status-page.png"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.skipif(why_no_browser() is not None, reason=str(why_no_browser()))
def test_the_page_follows_a_failover_without_a_reload(tmp_path: Path) -> None:
    with LocalCluster(3, elect_timeout=300, heartbeat_interval=50, job_interval=0) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader(20)
        viewer = next(n for n in cluster.nodes if n != leader.id)
        with chromium() as driver:
            driver.get(cluster.nodes[viewer].address + "/_goelect/ui?interval=250")
            driver.execute_script("window.goelectMarker = 'not reloaded'")

            def shown_leader() -> str:
                return str(driver.execute_script("return document.body.dataset.leader || ''"))

            wait_for(f"the page to show {leader.id}", lambda: shown_leader() == leader.id)
            assert driver.find_element("id", "leader").text == leader.id
            cards = driver.find_elements("css selector", ".node-card")
            assert sorted(c.get_attribute("data-node") for c in cards) == sorted(cluster.nodes)

            cluster.kill(leader.id)
            new = cluster.wait_for_leader(20, exclude=[leader.id], min_term=leader.term + 1)
            wait_for(f"the page to show {new.id}", lambda: shown_leader() == new.id)
            assert driver.find_element("id", "leader").text == new.id
            assert driver.execute_script("return window.goelectMarker") == "not reloaded"
            dead = f'.node-card[data-node="{leader.id}"]'
            wait_for(
                "the killed node to show unreachable",
                lambda: (
                    driver.execute_script(f"return document.querySelector('{dead}').dataset.state")
                    == "unreachable"
                ),
            )
            # The viewer's role is outlined in the state machine.
            role = "leader" if viewer == new.id else "follower"
            outlined = driver.execute_script(
                "return [...document.querySelectorAll('#fsm g.state.current')]"
                ".map(g => g.getAttribute('data-role'))"
            )
            assert outlined == [role]
            path = SCREENSHOT if os.environ.get("GOELECT_UPDATE_SCREENSHOT") else tmp_path / "p.png"
            driver.save_screenshot(str(path))
            assert path.stat().st_size > 10_000
