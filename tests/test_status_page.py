"""The status page's routes: off by default, the status rule, its files and JSON."""

from __future__ import annotations

from typing import Any

import pytest
from live_nodes import make_app

from flask_goelect import LeaderElect
from flask_goelect.core import ConfigError
from flask_goelect.testing import make_leader

OUTSIDE = {"REMOTE_ADDR": "198.51.100.7"}


def page_app(**config: Any) -> Any:
    app = make_app(**config)
    LeaderElect(app)
    return app


def test_off_by_default() -> None:
    client = page_app().test_client()
    response = client.get("/_goelect/ui")
    assert response.status_code == 404
    assert "GOELECT_STATUS_PAGE" in response.json["message"]
    assert client.get("/_goelect/ui/cluster.json").status_code == 404


def test_a_bad_value_fails_at_init_app() -> None:
    with pytest.raises(ConfigError, match="GOELECT_STATUS_PAGE"):
        page_app(GOELECT_STATUS_PAGE="maybe")


def test_the_page_and_its_files() -> None:
    client = page_app(GOELECT_STATUS_PAGE=True).test_client()
    response = client.get("/_goelect/ui")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'data-cluster-url="/_goelect/ui/cluster.json"' in html
    assert '<script src="/_goelect/ui/status_page.js">' in html
    assert 'data-role="pre-candidate"' in html  # the state machine, inline
    assert "http" not in html.replace("http://www.w3.org/2000/svg", "")  # no CDN
    for name, kind in (
        ("status_page.js", "text/javascript"),
        ("status_page.css", "text/css"),
        ("fsm.svg", "image/svg+xml"),
    ):
        asset = client.get(f"/_goelect/ui/{name}")
        assert asset.status_code == 200 and asset.content_type.startswith(kind)
    assert client.get("/_goelect/ui/secrets.txt").status_code == 404
    assert client.post("/_goelect/ui").status_code == 405


def test_the_cluster_view_names_the_leader() -> None:
    app = page_app(GOELECT_STATUS_PAGE=True, GOELECT_CONNECT_TIMEOUT=0.05)
    with make_leader(app, term=4):
        view = app.test_client().get("/_goelect/ui/cluster.json").json
    assert view["node_id"] == "n1"
    assert view["leader"] == "n1"
    assert view["term"] == 4
    assert view["nodes"]["n1"]["reachable"] is True
    assert view["nodes"]["n2"]["reachable"] is False


def test_the_status_rule_guards_it() -> None:
    client = page_app(GOELECT_STATUS_PAGE=True).test_client()
    for path in ("/_goelect/ui", "/_goelect/ui/cluster.json", "/_goelect/ui/status_page.js"):
        assert client.get(path, environ_base=OUTSIDE).status_code == 401
    public = page_app(GOELECT_STATUS_PAGE=True, GOELECT_STATUS_PUBLIC=True).test_client()
    assert public.get("/_goelect/ui", environ_base=OUTSIDE).status_code == 200
