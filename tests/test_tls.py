"""Elections over https with mutual TLS, on loopback, with certificates made by the test.

Each node serves on ``gevent.pywsgi`` with its own certificate and requires a client
certificate signed by the cluster's CA (``cert_reqs=CERT_REQUIRED``); each node calls its
peers with ``GOELECT_TLS_CA`` (to verify them) and ``GOELECT_TLS_CERT``/``GOELECT_TLS_KEY``
(to be verified). The certificates come from ``trustme`` (built on ``cryptography``).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
from flask import Flask
from live_nodes import Cluster, LiveServer, make_app

from flask_goelect import LeaderElect
from flask_goelect.core import ConfigError
from flask_goelect.node import tls_session
from flask_goelect.transport import TransportError

SECRET = "tls-secret-0123456789abcdef"


class TlsLiveServer(LiveServer):
    """:class:`LiveServer` on https: ``gevent.pywsgi`` with an ``ssl_context`` (see
    :func:`server_context`). The handshakes these tests make fail on purpose (no client
    certificate, a stranger's) are not printed."""

    expected_errors = (ssl.SSLError,)

    def __init__(self, app: Flask, port: int, **ssl_args: Any) -> None:
        super().__init__(app, port)
        self.url = f"https://127.0.0.1:{port}"
        self.ssl_args = ssl_args

    def server_options(self) -> dict[str, Any]:
        return {"error_log": None, **self.ssl_args}


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """What ``gunicorn --certfile --keyfile --ca-certs --cert-reqs 2`` sets up: this node's
    certificate, and a client certificate signed by the cluster's CA required."""
    # gevent's SSLContext: its sockets cooperate with the server's hub. (The
    # standard library's, which ssl.create_default_context returns in a process
    # that is not monkey-patched, would block the hub during each handshake.)
    import gevent.ssl

    context: ssl.SSLContext = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class Pki:
    """A CA, a certificate for each node (server and client use), and a stranger's CA."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = trustme.CA(organization_name="goelect test CA")
        self.ca_file = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.other_ca = trustme.CA(organization_name="someone else")
        self.other_ca_file = folder / "other-ca.pem"
        self.other_ca.cert_pem.write_to_path(str(self.other_ca_file))

    def issue(self, name: str, ca: trustme.CA | None = None) -> tuple[str, str]:
        """(certificate chain file, key file) for ``name``, valid for 127.0.0.1."""
        leaf = (ca or self.ca).issue_cert("127.0.0.1", "localhost", common_name=name)
        cert = self.folder / f"{name}.pem"
        key = self.folder / f"{name}-key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        return str(cert), str(key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


class TlsCluster(Cluster):
    """Three nodes of one app on https with mTLS, in this process."""

    scheme = "https"

    def __init__(self, pki: Pki, folder: Path, **config: Any) -> None:
        self.pki = pki
        self.certs: dict[str, tuple[str, str]] = {}
        super().__init__(
            3,
            folder,
            start=False,
            GOELECT_ELECT_TIMEOUT=400,
            GOELECT_HEARTBEAT_INTERVAL=40,
            GOELECT_CONNECT_TIMEOUT=0.5,
            GOELECT_TLS_CA=str(pki.ca_file),
            **config,
        )

    def node_config(self, node_id: str) -> dict[str, Any]:
        cert, key = self.certs[node_id] = self.pki.issue(node_id)
        return {"GOELECT_TLS_CERT": cert, "GOELECT_TLS_KEY": key}

    def serve(self, node_id: str, app: Flask, port: int) -> LiveServer:
        cert, key = self.certs[node_id]
        return TlsLiveServer(
            app, port, ssl_context=server_context(cert, key, str(self.pki.ca_file))
        )

    def wait_for_one_leader(self, timeout: float = 15.0, exclude: str | None = None) -> str:
        return super().wait_for_one_leader(timeout, exclude)


@pytest.fixture
def tls_cluster(pki: Pki, tmp_path: Path) -> Iterator[TlsCluster]:
    cluster = TlsCluster(pki, tmp_path, GOELECT_SECRET=SECRET, GOELECT_CLUSTER="tls")
    try:
        for node_id in cluster.ids:
            cluster.state(node_id).start()
        yield cluster
    finally:
        cluster.close()


def test_three_nodes_elect_and_fail_over_over_mutual_tls(tls_cluster: TlsCluster) -> None:
    first = tls_cluster.wait_for_one_leader()
    state = tls_cluster.state(first)
    status = state.status()
    # Every node's view over https (signed status queries, verified replies).
    view = state.cluster_state(timeout=3)
    assert all(entry["reachable"] for entry in view.values()), {
        k: v.get("error") for k, v in view.items()
    }
    assert {entry["leader_id"] for entry in view.values()} == {first}

    # The leader stops without a hand-over: the other two elect over https.
    state.stop(transfer=False, timeout=2)
    second = tls_cluster.wait_for_one_leader(exclude=first)
    assert second != first
    assert tls_cluster.state(second).elector.snapshot.term > status["term"]


def test_a_client_without_a_certificate_is_refused(tls_cluster: TlsCluster, pki: Pki) -> None:
    url = tls_cluster.servers["n1"].url + "/_goelect/health"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, verify=str(pki.ca_file), timeout=5)
    # A certificate of another CA is refused too.
    cert, key = pki.issue("mallory", pki.other_ca)
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(url, verify=str(pki.ca_file), cert=(cert, key), timeout=5)
    # With a certificate of the cluster's CA the TLS layer lets it through.
    cert, key = pki.issue("operator")
    response = requests.get(url, verify=str(pki.ca_file), cert=(cert, key), timeout=5)
    assert response.status_code == 200


def test_a_peer_whose_certificate_is_not_trusted_is_unreachable(
    tls_cluster: TlsCluster, pki: Pki
) -> None:
    """A node that trusts another CA cannot be fooled into talking to the cluster's nodes
    (or to an impostor with a certificate of another CA)."""
    cert, key = pki.issue("n9", pki.other_ca)
    peers = [f"n{i + 1}=https://127.0.0.1:{p}" for i, p in enumerate(tls_cluster.ports)]
    app = make_app(
        "n1",
        GOELECT_PEERS=peers,
        GOELECT_TLS_CA=str(pki.other_ca_file),
        GOELECT_TLS_CERT=cert,
        GOELECT_TLS_KEY=key,
        GOELECT_SECRET=SECRET,
        GOELECT_CLUSTER="tls",
    )
    LeaderElect(app)
    state = app.extensions["goelect"]
    transport = state.make_transport()
    try:
        peer = state.settings.election.peer("n2")
        with pytest.raises(TransportError, match="(?i)certificate"):
            transport.get_status(peer, (1.0, 2.0))
    finally:
        transport.close()


def test_the_transport_uses_the_tls_settings(pki: Pki) -> None:
    cert, key = pki.issue("n1")
    app = make_app(GOELECT_TLS_CA=str(pki.ca_file), GOELECT_TLS_CERT=cert, GOELECT_TLS_KEY=key)
    LeaderElect(app)
    session = tls_session(app.extensions["goelect"].settings)
    assert session.verify == str(pki.ca_file) and session.cert == (cert, key)
    # A certificate file that holds the key too.
    combined = Path(pki.folder) / "combined.pem"
    combined.write_bytes(Path(key).read_bytes() + Path(cert).read_bytes())
    app = make_app(GOELECT_TLS_CERT=str(combined))
    LeaderElect(app)
    session = tls_session(app.extensions["goelect"].settings)
    assert session.cert == str(combined) and session.verify is True


def test_tls_settings_are_checked(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GOELECT_TLS_CA .* not a file"):
        LeaderElect(make_app(GOELECT_TLS_CA=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigError, match="GOELECT_TLS_KEY .* not a file"):
        LeaderElect(make_app(GOELECT_TLS_CERT=str(pki.ca_file), GOELECT_TLS_KEY="/nope.pem"))
    # A folder of CA certificates is accepted for the CA (requests takes one).
    LeaderElect(make_app(GOELECT_TLS_CA=str(pki.folder)))
