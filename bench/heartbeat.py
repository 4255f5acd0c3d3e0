"""The CPU cost of one heartbeat, part by part, at both ends.

::

    python -m bench.heartbeat                      # every part, about a minute on 2 CPUs
    python -m bench.heartbeat --rounds 500 --json hb.json
    python -m bench.heartbeat --compare main       # and the same for another commit, side by side

Every figure is CPU time (``time.thread_time`` in a loop of ``--rounds`` calls,
repeated ``--batches`` times; the table shows the median and the p10-p90
spread of the batches) of the product's own code, with a secret set (every
request and reply is signed):

* **leader, per round**: the core's ``tick`` that builds the round's
  ``Heartbeat``; the JSON encoding of it (the transport encodes a round once
  for all peers).
* **leader, per peer**: signing (``auth.RequestSigner``); the HTTP call alone
  through the lean client (``_httpclient.RpcClient``, kept-alive loopback
  socket, a canned reply); checking the reply's signature and parsing it; the
  core's step of the reply; and the whole ``HttpTransport.send`` (all of the
  above but the round's parts), through the lean client and through
  ``requests`` (the way before it). The server runs in another thread, whose
  CPU is not counted.
* **follower**: the WSGI callable of the Flask app called with a prepared
  environ, on a route that does nothing and on the real RPC route; the parts
  of the real route (checking the signature and the nonce, parsing, the
  core's ``Node.step``, the elector's ``handle`` around it, encoding and
  signing the reply) and ``rpc.RpcServer.serve`` (the route without Flask).
* **end to end, two processes**: a gevent-patched client process calling
  ``HttpTransport.send`` in a loop on a node of the example app served by
  ``gevent.pywsgi`` (the product's set-up), user + system CPU of each process
  from ``/proc/<pid>/stat`` per heartbeat. What the sum has over the parts
  (lean ``send`` + the route) is the wake-ups, the system calls and the
  server's loop.
* **idle**: a 3-node cluster at T = 200 ms, H = 50 ms, with a steady leader
  (``bench.election``'s idle CPU measurement), in % of a core, and what that is
  per heartbeat the leader sends.

``--compare REF`` extracts ``REF`` (a commit, branch or tag) to a temporary
folder and runs the same measurements there first (in a subprocess, with that
code on ``PYTHONPATH``), then here, and prints both with their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __name__ == "__main__" and "--e2e-client" in sys.argv and "--patched" in sys.argv:
    # The leader's process is patched in the product (gevent.pywsgi, gunicorn -k gevent).
    from gevent import monkey

    monkey.patch_all()

import random

from flask_goelect import core, messages
from flask_goelect._answers import json_answer
from flask_goelect._httpclient import RpcClient
from flask_goelect.auth import Keyring, ReplayCache, RequestSigner, RequestVerifier
from flask_goelect.messages import Heartbeat, HeartbeatReply, from_wire, to_wire
from flask_goelect.rpc import RpcServer
from flask_goelect.transport import HttpTransport

__all__ = ["PARTS", "Part", "format_table", "main", "run"]

SECRET = "bench-heartbeat-secret-0123456789"
CLUSTER = "bench"
PREFIX = "/_goelect"
PATH = f"{PREFIX}/rpc/heartbeat"
T = 0.2
H = 0.05


class Part:
    """One measured part: what it is, where it runs, how often per heartbeat."""

    def __init__(self, key: str, side: str, name: str) -> None:
        self.key = key
        self.side = side
        self.name = name


#: Every part of the table, in order.
PARTS = [
    Part("tick", "leader", "core: tick builds the round's Heartbeat (once per round)"),
    Part("encode", "leader", "encode the round to JSON (once per round)"),
    Part("sign", "leader", "sign the request (auth.RequestSigner)"),
    Part("call", "leader", "HTTP call alone, lean client (RpcClient), server excluded"),
    Part("check_reply", "leader", "check the reply's signature, parse it"),
    Part("reply_step", "leader", "core: step(HeartbeatReply)"),
    Part("send_lean", "leader", "HttpTransport.send, lean client: all per-peer parts"),
    Part("send_requests", "leader", "HttpTransport.send through requests (before)"),
    Part("flask_noop", "follower", "WSGI + Flask dispatch to a route that does nothing"),
    Part("verify", "follower", "check the request: headers, signature, nonce"),
    Part("parse", "follower", "parse the Heartbeat (json + messages.from_wire)"),
    Part("step", "follower", "core: Node.step(Heartbeat)"),
    Part("handle", "follower", "Elector.handle (lock, step, publish; core step included)"),
    Part("reply", "follower", "encode and sign the reply"),
    Part("rpc_serve", "follower", "rpc.RpcServer.serve: the route without Flask"),
    Part("route", "follower", "the RPC route end to end (WSGI callable)"),
    Part("e2e_client", "2 processes", "client process (gevent-patched, lean send)"),
    Part("e2e_server", "2 processes", "server process (example app on gevent.pywsgi)"),
    Part("e2e_sum", "2 processes", "both processes"),
    Part("e2e_gap", "2 processes", "gap: sum - (send_lean + route): wake-ups, syscalls, loop"),
    Part("idle_leader", "3 nodes idle", "leader, % of a core (T 200 ms, H 50 ms)"),
    Part("idle_follower", "3 nodes idle", "follower, % of a core"),
    Part("idle_per_hb", "3 nodes idle", "leader CPU per heartbeat sent (us)"),
]


# -- measuring ---------------------------------------------------------------------------


def _batches(
    op: Callable[[], object],
    rounds: int,
    batches: int,
    prepare: Callable[[int], list[Any]] | None = None,
) -> list[float]:
    """CPU µs per call of ``op`` (or ``op(item)`` for each prepared item), per batch."""
    samples = []
    for _ in range(batches):
        if prepare is not None:
            items = prepare(rounds)
            call: Any = op
            t0 = time.thread_time()
            for item in items:
                call(item)
            dt = time.thread_time() - t0
        else:
            loop = range(rounds)
            t0 = time.thread_time()
            for _ in loop:
                op()
            dt = time.thread_time() - t0
        samples.append(dt / rounds * 1e6)
    return samples


def _timer_cost() -> float:
    """CPU µs of one empty ``thread_time`` pair (subtracted from per-call timings)."""
    clock = time.thread_time
    n = 20000
    t0 = clock()
    for _ in range(n):
        a = clock()
        b = clock()
        del a, b
    return (clock() - t0) / n * 1e6


# -- the cluster of cores, and messages ---------------------------------------------------


def _config(node_id: str, addresses: dict[str, str], **kw: Any) -> core.Config:
    peers = tuple(core.Peer(i, a) for i, a in addresses.items())
    me = addresses[node_id]
    return core.Config(node_id, peers, address=me, elect_timeout=T, heartbeat_interval=H, **kw)


def _elected(addresses: dict[str, str]) -> tuple[dict[str, core.Node], float]:
    """Core nodes of ``addresses``, the first one the leader with a lease; and the time."""
    ids = list(addresses)
    nodes = {
        i: core.Node(_config(i, addresses), core.HardState(), now=0.0, rng=random.Random(i))
        for i in ids
    }
    leader = nodes[ids[0]]
    now = 3 * T
    queue = list(leader.tick(now).messages)
    for _ in range(100):
        if not queue:
            break
        peer, msg = queue.pop(0)
        reply = nodes[peer].step(msg, now).reply
        if reply is not None:
            queue += leader.step(reply, now).messages
    if not leader.is_leader(now):
        raise RuntimeError("the bench's core cluster elected no leader")
    return nodes, now


# -- a loopback server in a thread --------------------------------------------------------


class _Server:
    """A small HTTP/1.1 server on 127.0.0.1 in a thread: ``answer(path, headers, body)``
    gives ``(status, headers, body)``. Its CPU is its thread's, not the caller's."""

    def __init__(self, answer: Callable[[str, dict[str, str], bytes], Any]) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="bench-server")
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                status, reply_headers, reply = self.answer(lines[0].split(" ")[1], headers, body)
                out = [f"HTTP/1.1 {status} OK", f"Content-Length: {len(reply)}"]
                out += [f"{k}: {v}" for k, v in reply_headers.items()]
                out.append("Content-Type: application/json")
                conn.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + reply)
        except OSError:
            return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()


# -- the parts ----------------------------------------------------------------------------


def _verifier(node_id: str, peers: list[str]) -> RequestVerifier:
    return RequestVerifier(
        Keyring([SECRET]), CLUSTER, node_id, peers, max_age=3600.0, cache=ReplayCache()
    )


def leader_parts(rounds: int, batches: int) -> dict[str, list[float]]:
    """The leader's parts, in this process."""
    out: dict[str, list[float]] = {}
    signer = RequestSigner(Keyring([SECRET]), CLUSTER, "n1")

    # The core: a 3-node leader ticks each round and steps the replies (two peers).
    addresses = {i: f"http://127.0.0.1:{9000 + n}" for n, i in enumerate(("n1", "n2", "n3"))}
    cost = _timer_cost()
    tick_samples, step_samples = [], []
    nodes, now = _elected(addresses)
    leader = nodes["n1"]
    clock = time.thread_time
    for _ in range(batches):
        tick_cpu = step_cpu = 0.0
        steps = 0
        for _ in range(rounds):
            now += H
            t0 = clock()
            result = leader.tick(now)
            tick_cpu += clock() - t0
            hb: Any = result.messages[0][1]
            for peer in ("n2", "n3"):
                reply = HeartbeatReply(peer, hb.term, hb.seq, True)
                t0 = clock()
                leader.step(reply, now)
                step_cpu += clock() - t0
                steps += 1
        tick_samples.append(tick_cpu / rounds * 1e6 - cost)
        step_samples.append(step_cpu / steps * 1e6 - cost)
    out["tick"], out["reply_step"] = tick_samples, step_samples
    heartbeat = leader.tick(now + H).messages[0][1]
    assert isinstance(heartbeat, Heartbeat)

    def fresh(n: int) -> list[Heartbeat]:
        return [
            Heartbeat(
                heartbeat.sender,
                heartbeat.term,
                heartbeat.seq + k,
                heartbeat.address,
                heartbeat.tags,
                heartbeat.voter_set,
            )
            for k in range(n)
        ]

    encoder = HttpTransport(PREFIX, signer=signer)
    encode = _product_encoder(encoder)
    out["encode"] = _batches(encode, rounds, batches, fresh)
    body = encode(heartbeat)
    out["sign"] = _batches(
        lambda: signer.request_headers("POST", PATH, "n2", body), rounds, batches
    )

    # The reply, as n2 signs it.
    follower = nodes["n2"]
    verifier = _verifier("n2", ["n1", "n3"])
    headers, _ = signer.request_headers("POST", PATH, "n2", body)
    claim = verifier.check_headers(headers)
    reply_msg = follower.step(heartbeat, now + H).reply
    assert reply_msg is not None
    reply_body = json_answer(to_wire(reply_msg)).body
    reply_headers = {"X-Goelect-Signature": verifier.reply_signature(claim, 200, reply_body)}
    nonce = claim.nonce

    def check_reply() -> object:
        signer.verify_reply("n2", nonce, 200, reply_headers, reply_body)
        return from_wire(HeartbeatReply, json.loads(reply_body))

    out["check_reply"] = _batches(check_reply, rounds, batches)

    # The call alone: a canned reply.
    canned = _Server(lambda path, h, b: (200, reply_headers, reply_body))
    client = RpcClient(canned.url, max_body=64 * 1024)
    call_headers = headers
    timeout = (1.0, 5.0)
    out["call"] = _batches(
        lambda: client.call("POST", PATH, body, call_headers, timeout), rounds, batches
    )
    client.close()
    canned.close()

    # The whole send, against the real server side of n2 (its CPU in its own thread).
    lock = threading.Lock()

    def handle(msg: Any) -> Any:
        with lock:
            return follower.step(msg, time.monotonic()).reply

    server = RpcServer(verifier, handle, PREFIX)
    real = _Server(
        lambda path, h, b: tuple(server.serve(path.rsplit("/", 1)[1], h, b))  # type: ignore[arg-type]
    )
    peer = core.Peer("n2", real.url)
    for key, lean in (("send_lean", True), ("send_requests", False)):
        transport = HttpTransport(PREFIX, signer=signer, lean=lean)
        live = Heartbeat(
            heartbeat.sender,
            heartbeat.term,
            heartbeat.seq,
            heartbeat.address,
            heartbeat.tags,
            heartbeat.voter_set,
        )
        transport.send(peer, live, timeout)  # the connection, and the round's encoding
        out[key] = _batches(lambda t=transport, m=live: t.send(peer, m, timeout), rounds, batches)
        transport.close()
    real.close()
    return out


def _product_encoder(transport: HttpTransport) -> Callable[[Any], bytes]:
    """How the transport encodes a round: ``messages.encode`` where there is one."""
    encode = getattr(messages, "encode", None)
    if encode is not None:
        return encode  # type: ignore[no-any-return]
    # Older versions encoded inline in HttpTransport.send, with this expression.
    return lambda msg: json.dumps(messages.to_wire(msg), separators=(",", ":")).encode()


def _app(node_id: str, addresses: dict[str, str], state_dir: str) -> Any:
    from flask import Flask, Response

    from flask_goelect import LeaderElect

    app = Flask(f"bench_{node_id}")
    app.config.update(
        GOELECT_NODE_ID=node_id,
        GOELECT_PEERS=[f"{i}={a}" for i, a in addresses.items()],
        GOELECT_SECRET=SECRET,
        GOELECT_CLUSTER=CLUSTER,
        GOELECT_AUTOSTART=False,
        GOELECT_STATE_FILE=str(Path(state_dir) / f"goelect-{node_id}.json"),
        GOELECT_ELECT_TIMEOUT=60000,
        GOELECT_HEARTBEAT_INTERVAL=10000,
    )
    elect = LeaderElect(app)

    @app.post("/bench-noop")
    def noop() -> Response:
        return Response(b"", status=200)

    return app, elect


def _environ(path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "5000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:5000",
        "HTTP_ACCEPT": "application/json",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def _call_wsgi(app: Any, environ: dict[str, Any]) -> bytes:
    status: list[str] = []

    def start_response(s: str, h: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(s)
        return None

    result = app(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not status or not status[0].startswith("200"):
        raise RuntimeError(f"the route answered {status}: {data[:200]!r}")
    return data


def follower_parts(rounds: int, batches: int) -> dict[str, list[float]]:
    """The follower's parts, in this process (its elector runs in a native thread)."""
    out: dict[str, list[float]] = {}
    addresses = {i: f"http://127.0.0.1:{9000 + n}" for n, i in enumerate(("n1", "n2", "n3"))}
    nodes, now = _elected(addresses)
    hb = nodes["n1"].tick(now + H).messages[0][1]
    assert isinstance(hb, Heartbeat)
    signer = RequestSigner(Keyring([SECRET]), CLUSTER, "n1")
    body = json.dumps(to_wire(hb), separators=(",", ":")).encode()

    def signed(n: int) -> list[dict[str, str]]:
        return [signer.request_headers("POST", PATH, "n2", body)[0] for _ in range(n)]

    state_dir = tempfile.TemporaryDirectory(prefix="goelect-bench-")
    app, elect = _app("n2", addresses, state_dir.name)
    state = app.extensions["goelect"]
    elect.start()
    try:
        rpc: RpcServer = state.node.rpc
        verifier = rpc.verifier
        # The elector follows n1 from the first heartbeat on.
        _call_wsgi(app, _environ(PATH, signed(1)[0], body))

        def environs(path: str) -> Callable[[int], list[dict[str, Any]]]:
            return lambda n: [_environ(path, h, body) for h in signed(n)]

        out["flask_noop"] = _batches(
            lambda e: _call_wsgi(app, e), rounds, batches, environs("/bench-noop")
        )
        out["route"] = _batches(lambda e: _call_wsgi(app, e), rounds, batches, environs(PATH))

        def verify(h: dict[str, str]) -> object:
            claim = verifier.check(h["X-Goelect-Auth"])
            verifier.verify(claim, "POST", PATH, body)
            return claim

        out["verify"] = _batches(verify, rounds, batches, signed)
        out["parse"] = _batches(lambda: from_wire(Heartbeat, json.loads(body)), rounds, batches)
        follower = nodes["n2"]
        out["step"] = _batches(lambda: follower.step(hb, now + H), rounds, batches)
        elector = state.elector
        out["handle"] = _batches(lambda: elector.handle(hb), rounds, batches)
        reply = elector.handle(hb)
        claim = verify(signed(1)[0])

        def reply_part() -> object:
            return rpc.sign(json_answer(to_wire(reply)), claim)  # type: ignore[arg-type]

        out["reply"] = _batches(reply_part, rounds, batches)

        def serve(h: dict[str, str]) -> object:
            answer = rpc.serve(
                "heartbeat",
                {
                    "content-type": "application/json",
                    "content-length": str(len(body)),
                    "x-goelect-auth": h["X-Goelect-Auth"],
                },
                body,
                remote_addr="127.0.0.1",
            )
            if answer.status != 200:
                raise RuntimeError(f"RpcServer.serve answered {answer}")
            return answer

        out["rpc_serve"] = _batches(serve, rounds, batches, signed)
    finally:
        elect.stop(transfer=False)
        state_dir.cleanup()
    return out


# -- end to end, two processes --------------------------------------------------------------


def e2e_client(args: argparse.Namespace) -> int:
    """The client process of the end-to-end part (``--e2e-client``): prints JSON."""
    from goelect_harness.cluster import process_cpu_seconds

    addresses = json.loads(args.addresses)
    config = _config("n1", addresses)
    signer = RequestSigner(Keyring([SECRET]), CLUSTER, "n1")
    transport = HttpTransport(PREFIX, signer=signer)
    peer = core.Peer("n2", addresses["n2"])
    me, server = os.getpid(), args.server_pid
    seq = 0
    samples: dict[str, list[float]] = {"client": [], "server": []}

    def round_message() -> Heartbeat:
        nonlocal seq
        seq += 1
        return Heartbeat("n1", 1, seq, addresses["n1"], {}, config.voter_set_fingerprint)

    for _ in range(20):  # the connection, the follower's term (persisted once)
        transport.send(peer, round_message(), (2.0, 5.0))
    for _ in range(args.batches):
        msgs = [round_message() for _ in range(args.heartbeats)]
        c0, s0 = process_cpu_seconds(me), process_cpu_seconds(server)
        for msg in msgs:
            transport.send(peer, msg, (2.0, 5.0))
        c1, s1 = process_cpu_seconds(me), process_cpu_seconds(server)
        samples["client"].append((c1 - c0) / args.heartbeats * 1e6)
        samples["server"].append((s1 - s0) / args.heartbeats * 1e6)
    transport.close()
    print(json.dumps(samples))
    return 0


def e2e_parts(heartbeats: int, batches: int) -> dict[str, list[float]]:
    """Client and server process CPU per heartbeat, on two real processes."""
    from goelect_harness.cluster import LocalCluster

    with LocalCluster(
        ["n1", "n2"],
        elect_timeout=60000,
        heartbeat_interval=10000,
        job_interval=0,
        log_level="WARNING",
        node_args=["--secret", SECRET, "--cluster", CLUSTER],
    ) as cluster:
        cluster.start(["n2"], timeout=60)
        node = cluster.nodes["n2"]
        assert node.pid is not None
        addresses = {i: cluster.nodes[i].address for i in ("n1", "n2")}
        command = [
            sys.executable,
            "-m",
            "bench.heartbeat",
            "--e2e-client",
            "--patched",
            "--addresses",
            json.dumps(addresses),
            "--server-pid",
            str(node.pid),
            "--heartbeats",
            str(heartbeats),
            "--batches",
            str(batches),
        ]
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PYTHONPATH": path},
            cwd=root,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the end-to-end client failed: {done.stderr[-2000:]}")
        samples = json.loads(done.stdout.strip().splitlines()[-1])
    client, server = samples["client"], samples["server"]
    return {
        "e2e_client": client,
        "e2e_server": server,
        "e2e_sum": [c + s for c, s in zip(client, server, strict=True)],
    }


def idle_parts(seconds: float) -> dict[str, list[float]]:
    """The leader's and followers' idle CPU of a 3-node cluster (bench.election's)."""
    from bench.election import BenchConfig, Figure, bench_idle_cpu

    config = BenchConfig(nodes=3, idle_seconds=seconds, verbose=False)
    leader = Figure("idle CPU, leader", "% of a core")
    follower = Figure("idle CPU, follower", "% of a core")
    bench_idle_cpu(config, leader, follower)
    sent_per_second = (config.nodes - 1) / (config.heartbeat_interval / 1000)
    return {
        "idle_leader": leader.samples,
        "idle_follower": follower.samples,
        # % of a core -> µs of CPU per second -> per heartbeat sent.
        "idle_per_hb": [p / 100 * 1e6 / sent_per_second for p in leader.samples],
    }


# -- the run and the table -----------------------------------------------------------------


def _summary(samples: list[float]) -> dict[str, Any]:
    values = sorted(samples)
    if not values:
        return {"n": 0, "median": None, "p10": None, "p90": None}

    def rank(q: float) -> float:
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]

    return {
        "n": len(values),
        "median": statistics.median(values),
        "p10": rank(0.1),
        "p90": rank(0.9),
    }


def run(
    rounds: int = 1000,
    batches: int = 11,
    *,
    e2e_heartbeats: int = 2000,
    idle_seconds: float = 20.0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Measure every part; a JSON-ready dict of the samples and their summaries."""
    t0 = time.monotonic()
    samples: dict[str, list[float]] = {}

    def say(text: str) -> None:
        if verbose:
            print(text, file=sys.stderr, flush=True)

    say(f"leader parts: {batches} batches of {rounds}")
    samples.update(leader_parts(rounds, batches))
    say(f"follower parts: {batches} batches of {rounds}")
    samples.update(follower_parts(rounds, batches))
    if e2e_heartbeats > 0:
        say(f"end to end: {batches} batches of {e2e_heartbeats} heartbeats on 2 processes")
        samples.update(e2e_parts(e2e_heartbeats, batches))
    if idle_seconds > 0:
        say(f"idle CPU of a 3-node cluster over {idle_seconds:g} s")
        samples.update(idle_parts(idle_seconds))
    summaries = {key: _summary(values) for key, values in samples.items()}
    if "e2e_sum" in summaries:
        parts = summaries["send_lean"]["median"] + summaries["route"]["median"]
        gap = [s - parts for s in samples["e2e_sum"]]
        samples["e2e_gap"] = gap
        summaries["e2e_gap"] = _summary(gap)
    return {
        "benchmark": "bench.heartbeat",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": _commit(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "batches": batches,
        "e2e_heartbeats": e2e_heartbeats,
        "idle_seconds": idle_seconds,
        "duration_s": round(time.monotonic() - t0, 1),
        "samples": samples,
        "summaries": summaries,
    }


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
            check=False,
        )
    except OSError:
        return ""
    return done.stdout.strip()


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _cell(summary: dict[str, Any] | None) -> tuple[str, str]:
    if not summary or summary["median"] is None:
        return "-", "-"
    return _fmt(summary["median"]), f"{_fmt(summary['p10'])}-{_fmt(summary['p90'])}"


def format_table(result: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """The table: CPU µs per heartbeat for each part (idle rows in % of a core)."""
    s = result["summaries"]
    head = ["side", "part", "median", "p10-p90"]
    if before is not None:
        head += ["before", "before p10-p90", "after / before"]
    rows = []
    for part in PARTS:
        if part.key not in s and (before is None or part.key not in before["summaries"]):
            continue
        median, spread = _cell(s.get(part.key))
        row = [part.side, part.name, median, spread]
        if before is not None:
            b = before["summaries"].get(part.key)
            b_median, b_spread = _cell(b)
            ratio = "-"
            a = s.get(part.key)
            if a and b and a["median"] is not None and b["median"]:
                ratio = f"{a['median'] / b['median']:.2f}"
            row += [b_median, b_spread, ratio]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        f"CPU per heartbeat, us (idle rows: % of a core); median and p10-p90 of"
        f" {result['batches']} batches of {result['rounds']} calls"
        f" (end to end: {result['e2e_heartbeats']} heartbeats a batch);"
        f" secret set; commit {result['commit'] or '?'}"
        + (f", before: {before['commit'] or before.get('ref', '?')}" if before else ""),
        "",
        "  ".join(
            h.ljust(w) if i < 2 else h.rjust(w)
            for i, (h, w) in enumerate(zip(head, widths, strict=True))
        ),
        "  ".join("-" * w for w in widths),
    ]
    for row in rows:
        lines.append(
            "  ".join(
                str(c).ljust(w) if i < 2 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


@contextlib.contextmanager
def _checkout(ref: str) -> Iterator[Path]:
    """The code of ``ref`` (the package, the example app, the harness, the benches)."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="goelect-bench-") as tmp:
        archive = subprocess.run(
            ["git", "archive", ref, "flask_goelect", "example_app", "goelect_harness", "bench"],
            cwd=root,
            capture_output=True,
            check=True,
            timeout=60,
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True, timeout=60)
        yield Path(tmp)


def _run_elsewhere(ref: str, argv: list[str]) -> dict[str, Any]:
    """This benchmark run on the code of ``ref`` in a subprocess."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()
    with _checkout(ref) as path, tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = dict(os.environ, PYTHONPATH=str(path))
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--json", out.name]
        # Its own table is not shown: the one printed here has both.
        subprocess.run(
            command, cwd=path, env=env, stdout=subprocess.DEVNULL, check=True, timeout=3600
        )
        result: dict[str, Any] = json.loads(Path(out.name).read_text())
    result["commit"] = f"{ref} ({commit})"
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.heartbeat", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=1000, help="calls per batch (default 1000)")
    parser.add_argument("--batches", type=int, default=11, help="batches per part (default 11)")
    parser.add_argument(
        "--e2e-heartbeats",
        type=int,
        default=2000,
        metavar="N",
        help="heartbeats per batch of the end-to-end part (0: skip it)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=20.0,
        metavar="S",
        help="idle CPU measured over S seconds (0: skip it)",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    parser.add_argument(
        "--compare",
        default=None,
        metavar="REF",
        help="also run on the code of git REF (e.g. main) first, and show both",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    # The end-to-end client process.
    parser.add_argument("--e2e-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--patched", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--addresses", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--heartbeats", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.e2e_client:
        return e2e_client(args)
    if args.rounds < 1 or args.batches < 1:
        raise SystemExit("--rounds and --batches must be positive")
    common = [
        "--rounds",
        str(args.rounds),
        "--batches",
        str(args.batches),
        "--e2e-heartbeats",
        str(args.e2e_heartbeats),
        "--idle-seconds",
        str(args.idle_seconds),
    ] + (["--quiet"] if args.quiet else [])
    before = None
    if args.compare:
        if not args.quiet:
            print(f"before: the code of {args.compare}", file=sys.stderr, flush=True)
        before = _run_elsewhere(args.compare, common)
    result = run(
        args.rounds,
        args.batches,
        e2e_heartbeats=args.e2e_heartbeats,
        idle_seconds=args.idle_seconds,
        verbose=not args.quiet,
    )
    if before is not None:
        result["before"] = before
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(format_table(result, before))
    return 0


if __name__ == "__main__":
    sys.exit(main())
