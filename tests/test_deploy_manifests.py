"""The deployment files of ``example_app/deploy/`` say what the product understands.

* Kubernetes (``kubernetes/*.yaml``): every ``GOELECT_*`` variable is a setting and
  every ``EXAMPLE_*`` one the example app's; every probe is a route the app serves;
  the StatefulSet's pods are the peers its headless Service names; and the settings
  of one pod (its environment with ``$(VAR)`` expanded, its command line through
  ``example_app.node``) load with :func:`flask_goelect._settings.load_settings`,
  with the state file on the pod's own volume. The grace period covers the stop.
* systemd (``systemd/*.service`` with its environment file): the same for a host.
* The load balancers: HAProxy's checks ask routes the app serves, the Kubernetes
  HAProxy configuration differs from the tested one (``haproxy/haproxy.cfg``, see
  ``tests/test_haproxy_system.py``) only in its addresses, and ``haproxy -c`` and
  ``nginx -t`` accept the files where those programs are installed.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from example_app import node
from example_app.factory import ENV_KEYS, create_app, settings_from_env
from flask_goelect._settings import KEYS, Settings, load_settings
from goelect_harness.cluster import REPO_ROOT
from goelect_harness.haproxy import find_haproxy

DEPLOY = REPO_ROOT / "example_app" / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "goelect-example.service"
ENV_FILE = DEPLOY / "systemd" / "goelect-example.env"
HAPROXY_CONFIGS = [DEPLOY / "haproxy" / "haproxy.cfg", KUBERNETES / "haproxy.cfg"]
LUA = DEPLOY / "haproxy" / "goelect.lua"
SECRET = "a-test-secret-of-more-than-16-characters"


def manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        with path.open(encoding="utf-8") as f:
            documents += [d for d in yaml.safe_load_all(f) if d]
    return documents


def manifest(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in manifests()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {KUBERNETES}, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def routes() -> set[str]:
    """Every path the example app serves (the extension's under /_goelect)."""
    app = create_app(
        {
            "GOELECT_NODE_ID": "n1",
            "GOELECT_NODE_ADDRESS": "http://127.0.0.1:5000",
            "GOELECT_AUTOSTART": False,
            "GOELECT_STATE_FILE": ":memory:",
        }
    )
    return {rule.rule for rule in app.url_map.iter_rules()}


def check_variables(names: list[str], where: str) -> None:
    for name in names:
        if name.startswith("GOELECT_"):
            assert name.removeprefix("GOELECT_") in KEYS, f"{where}: {name} is not a setting"
        else:
            assert name in ENV_KEYS, f"{where}: {name} is not read by the example app"


def node_settings(environ: dict[str, str], argv: list[str], instance: Path) -> Settings:
    """The settings ``python -m example_app ARGV`` starts with in ``environ``: as
    ``create_app`` does, the environment's keys overridden by the command line's."""
    assert argv[:3] in (["python", "-m", "example_app"], [argv[0], "-m", "example_app"]), argv
    config: dict[str, Any] = settings_from_env(environ)
    config.update(node.build_config(node.parse_args(argv[3:])))
    return load_settings(config, {}, str(instance))


# -- Kubernetes ----------------------------------------------------------------------------------


def app_container() -> dict[str, Any]:
    pod = manifest("StatefulSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


def pod_environment(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The container's environment in pod ``pod_name``, as the kubelet makes it."""
    environ: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            environ[item["name"]] = expand(item["value"], environ)
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
            environ[item["name"]] = pod_name
        elif "secretKeyRef" in item["valueFrom"]:
            environ[item["name"]] = SECRET
        else:
            raise AssertionError(f"unexpected source of {item['name']}: {item['valueFrom']}")
    return environ


def expand(text: str, environ: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)``: the value of a variable defined before."""
    return re.sub(r"\$\((\w+)\)", lambda m: environ[m.group(1)], text)


def test_kubernetes_variables_are_settings() -> None:
    names = [item["name"] for item in app_container()["env"]]
    check_variables(names, "statefulset.yaml")
    assert {"GOELECT_NODE_ID", "GOELECT_PEERS", "GOELECT_SECRET"} <= set(names)


def test_kubernetes_probes_ask_routes_of_the_app(routes: set[str]) -> None:
    container = app_container()
    probes = [container["readinessProbe"], container["livenessProbe"]]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in probes:
        assert probe["httpGet"]["path"] in routes
        assert probe["httpGet"]["port"] in ports
    assert {p["httpGet"]["path"] for p in probes} == {"/_goelect/health"}


def test_kubernetes_pods_are_the_peers_and_their_settings_load(tmp_path: Path) -> None:
    statefulset = manifest("StatefulSet")
    headless = manifest("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    # Peers must find each other before any of them is ready.
    assert headless["spec"]["publishNotReadyAddresses"] is True
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= labels.items()

    container = app_container()
    (port,) = (p["containerPort"] for p in container["ports"])
    name, service = statefulset["metadata"]["name"], headless["metadata"]["name"]
    replicas = statefulset["spec"]["replicas"]
    expected = {f"{name}-{i}": f"http://{name}-{i}.{service}:{port}" for i in range(replicas)}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]

    for pod_name in expected:
        environ = pod_environment(container, pod_name)
        argv = [*container["command"], *(expand(a, environ) for a in container["args"])]
        settings = node_settings(environ, argv, tmp_path)
        assert settings.node_id == pod_name
        assert {p.id: p.address for p in settings.election.peers} == expected
        assert settings.node_address == expected[pod_name]
        assert settings.state_file == f"{mounts[claim['metadata']['name']]}/goelect-{pod_name}.json"
        assert settings.secrets and settings.cluster
        assert node.parse_args(argv[3:]).listen[1] == port


def test_kubernetes_grace_period_covers_the_stop() -> None:
    statefulset = manifest("StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    container = app_container()
    environ = pod_environment(container, f"{statefulset['metadata']['name']}-0")
    args = node.parse_args([expand(a, environ) for a in container["args"]])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # The preStop sleep, the drain, the hand-over (at most one election timeout) and
    # finishing the accepted requests (at most 1 s) before the kubelet's SIGKILL.
    needed = float(pre_stop[1]) + args.drain_ms / 1000 + 2.0 + 1.0
    assert pod["terminationGracePeriodSeconds"] > needed


# -- systemd -------------------------------------------------------------------------------------


def env_file(path: Path) -> dict[str, str]:
    environ = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            environ[key.strip()] = value.strip()
    return environ


def test_systemd_unit_runs_one_node_with_its_state_kept(tmp_path: Path) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys keep their case
    unit.read(UNIT, encoding="utf-8")
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    environ = env_file(ENV_FILE)
    check_variables(list(environ), ENV_FILE.name)
    argv = [
        re.sub(r"\$\{(\w+)\}", lambda m: environ[m.group(1)], word)
        for word in shlex.split(service["ExecStart"])
    ]
    settings = node_settings(environ, argv, tmp_path)
    assert settings.node_id == environ["GOELECT_NODE_ID"]
    assert len(settings.election.peers) == 3
    state_dir = f"/var/lib/{service['StateDirectory']}"
    assert settings.state_file == f"{state_dir}/goelect-{settings.node_id}.json"
    assert environ["EXAMPLE_LEDGER"].startswith(state_dir + "/")
    # The stop (drain, hand-over, finishing requests) fits before systemd's SIGKILL.
    args = node.parse_args(argv[3:])
    assert float(service["TimeoutStopSec"]) > args.drain_ms / 1000 + 2.0 + 1.0


# -- the load balancers --------------------------------------------------------------------------


@pytest.mark.parametrize("path", HAPROXY_CONFIGS, ids=lambda p: p.parent.name)
def test_haproxy_checks_ask_the_leader_route(path: Path, routes: set[str]) -> None:
    checks = re.findall(r"option httpchk GET (\S+)", path.read_text(encoding="utf-8"))
    assert checks == ["/_goelect/leader"]
    assert checks[0] in routes


def skeleton(text: str) -> list[str]:
    """An HAProxy configuration without comments, resolvers, log targets, node names
    and addresses: what must be the same on Kubernetes as in the tested file."""
    out = []
    in_resolvers = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        if line.startswith("resolvers "):
            in_resolvers = True
            continue
        if in_resolvers and line.startswith(" "):
            continue
        in_resolvers = False
        line = line.replace(" resolvers cluster init-addr none", "").strip()
        line = re.sub(r"^log (?!global).*", "log TARGET", line)
        line = re.sub(r"^server (n\d|goelect-example-\d) \S+", "server NODE ADDRESS", line)
        line = re.sub(r"track leader/\S+", "track leader/NODE", line)
        if line != "default-server":
            out.append(line)
    return out


def test_kubernetes_haproxy_is_the_tested_configuration() -> None:
    tested, kubernetes = (skeleton(p.read_text(encoding="utf-8")) for p in HAPROXY_CONFIGS)
    assert kubernetes == tested


@pytest.mark.parametrize("path", HAPROXY_CONFIGS, ids=lambda p: p.parent.name)
def test_haproxy_accepts_the_configuration(path: Path, tmp_path: Path) -> None:
    program = find_haproxy()
    if program is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    text = path.read_text(encoding="utf-8").replace("/etc/haproxy/goelect.lua", str(LUA))
    config = tmp_path / "haproxy.cfg"
    config.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [program, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    program = shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin")
    if program is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx)")
    temp = {name: tmp_path / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n"
        f"  access_log off;\n  client_body_temp_path {temp['body']};\n"
        f"  proxy_temp_path {temp['proxy']};\n  fastcgi_temp_path {temp['fastcgi']};\n"
        f"  uwsgi_temp_path {temp['uwsgi']};\n  scgi_temp_path {temp['scgi']};\n"
        f"  include {DEPLOY / 'nginx' / 'goelect.conf'};\n}}\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [program, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
