"""Example-app nodes each in a network namespace of its own, partitioned by the kernel.

* :class:`Netns`: one namespace per node, a veth pair per pair of nodes, and a
  management veth from the launcher's namespace to each node.
* :class:`NetnsCluster`: a :class:`~goelect_harness.faults.WatchedCluster` whose
  nodes run in those namespaces; its ``net`` cuts and heals the veth pairs, so
  the partition scenarios of :mod:`goelect_harness.faults` run on it unchanged.
* :func:`netns_unavailable`: why this machine cannot (Linux, root and ``ip``
  from iproute2 are needed), or None.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .cluster import ClusterError
from .faults import WatchedCluster

__all__ = ["Netns", "NetnsCluster", "netns_unavailable"]


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here (None: they can)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces exist on Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    name = f"gelprobe{os.getpid()}"
    try:
        made = subprocess.run(
            ["ip", "netns", "add", name], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"ip netns add failed: {exc}"
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip() or made.returncode}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


class Netns:
    """One network namespace per node, a veth pair per pair of nodes, and a
    management veth from the test's namespace to each node (for status polls).

    Node ``i`` reaches node ``j`` at ``mesh_address(i, j)``, the address of
    ``j``'s end of their pair; cutting the pair (:meth:`cut`) puts both ends
    down. The management link is never cut. Addresses are private
    (``10.X.0.0/16`` with ``X`` unused on this host) and exist only in the new
    namespaces and on the management veths. :meth:`destroy` deletes everything
    (also after a partial :meth:`create`).
    """

    #: Namespaces are named ``gel-<pid of the test process>-<random>-<node id>``.
    PREFIX = "gel-"

    def __init__(self, node_ids: Sequence[str]) -> None:
        self.ids = list(node_ids)
        salt = random.randrange(16**4)
        self.token = f"{os.getpid() % 100000:05d}{salt % 256:02x}"  # for host-side names
        self.ns = {n: f"{self.PREFIX}{os.getpid()}-{salt:04x}-{n}" for n in self.ids}
        self.octet = self._free_octet()
        self.pairs = [(a, b) for i, a in enumerate(self.ids) for b in self.ids[i + 1 :]]
        self._created: list[str] = []
        self._host_links: list[str] = []

    @classmethod
    def sweep_stale(cls) -> list[str]:
        """Delete the namespaces a test process that no longer runs left behind
        (killed before its clean-up); returns their names."""
        swept = []
        for line in _ip("netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            if not name.startswith(cls.PREFIX):
                continue
            pid = name[len(cls.PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                _ip("netns", "del", name, check=False)
                swept.append(name)
        return swept

    @staticmethod
    def _free_octet() -> int:
        used = _ip("-4", "addr").stdout + _ip("-4", "route").stdout
        for octet in random.sample(range(200, 250), 50):
            if f"10.{octet}." not in used:
                return octet
        raise ClusterError("no free 10.X.0.0/16 range for the test network")

    def management_address(self, node_id: str) -> str:
        return f"10.{self.octet}.{self.ids.index(node_id)}.2"

    def mesh_address(self, src: str, dst: str) -> str:
        """The address of ``dst`` on its link with ``src``."""
        pair = (src, dst) if (src, dst) in self.pairs else (dst, src)
        index = self.pairs.index(pair)
        return f"10.{self.octet}.{100 + index}.{1 if dst == pair[0] else 2}"

    @staticmethod
    def _ifname(peer: str) -> str:
        return f"to-{peer}"[:15]

    def create(self) -> None:
        try:
            for node_id in self.ids:
                _ip("netns", "add", self.ns[node_id])
                self._created.append(self.ns[node_id])
                _ip("-n", self.ns[node_id], "link", "set", "dev", "lo", "up")
            for index, node_id in enumerate(self.ids):
                host_end = f"ge{self.token}m{index}"[:15]
                _ip(
                    "link", "add", "name", host_end, "type", "veth",
                    "peer", "name", "mgmt", "netns", self.ns[node_id],
                )  # fmt: skip
                self._host_links.append(host_end)
                _ip("addr", "add", f"10.{self.octet}.{index}.1/30", "dev", host_end)
                _ip("link", "set", "dev", host_end, "up")
                _ip(
                    "-n", self.ns[node_id], "addr", "add",
                    f"{self.management_address(node_id)}/30", "dev", "mgmt",
                )  # fmt: skip
                _ip("-n", self.ns[node_id], "link", "set", "dev", "mgmt", "up")
            for a, b in self.pairs:
                _ip(
                    "link", "add", "name", self._ifname(b), "netns", self.ns[a], "type", "veth",
                    "peer", "name", self._ifname(a), "netns", self.ns[b],
                )  # fmt: skip
                for here, there in ((a, b), (b, a)):
                    address = self.mesh_address(there, here)
                    _ip("-n", self.ns[here], "addr", "add", f"{address}/30",
                        "dev", self._ifname(there))  # fmt: skip
                    _ip("-n", self.ns[here], "link", "set", "dev", self._ifname(there), "up")
        except BaseException:
            self.destroy()
            raise

    def _set_pair(self, a: str, b: str, up: bool) -> None:
        state = "up" if up else "down"
        _ip("-n", self.ns[a], "link", "set", "dev", self._ifname(b), state)
        _ip("-n", self.ns[b], "link", "set", "dev", self._ifname(a), state)

    def cut(self, a: str, b: str) -> None:
        """Put the link between ``a`` and ``b`` down (both directions)."""
        self._set_pair(a, b, up=False)

    def restore(self, a: str, b: str) -> None:
        self._set_pair(a, b, up=True)

    def partition(self, *groups: Iterable[str], rng: random.Random | None = None) -> None:
        where = {n: i for i, g in enumerate(groups) for n in g}
        if sorted(where) != sorted(self.ids):
            raise ValueError(f"groups must hold every node {self.ids} once")
        for a, b in self.pairs:
            if where[a] != where[b]:
                self.cut(a, b)

    def heal(self) -> None:
        for a, b in self.pairs:
            self.restore(a, b)

    def destroy(self) -> None:
        """Delete the namespaces (their veths go with them) and the management veths."""
        for name in self._host_links:
            _ip("link", "del", "dev", name, check=False)
        self._host_links.clear()
        for name in self._created:
            _ip("netns", "del", name, check=False)
        self._created.clear()


class NetnsCluster(WatchedCluster):
    """Example-app nodes, each in its own network namespace (see :class:`Netns`).

    The launcher (this process, in its own namespace) reaches each node on its
    management address; nodes reach each other over their veth pairs only.
    """

    net: Netns

    def __init__(self, nodes: int, *, lifetime: float, **kwargs: Any) -> None:
        super().__init__(nodes, lifetime=lifetime, **kwargs)
        self.net = Netns(list(self.nodes))
        try:
            self.net.create()
        except BaseException:
            super().close()
            raise
        for node in self.nodes.values():
            node.host = self.net.management_address(node.id)

    def peer_address(self, node_id: str, peer_id: str) -> str:
        return f"http://{self.net.mesh_address(node_id, peer_id)}:{self.nodes[peer_id].port}"

    def command(self, node_id: str, start_at: float | None = None) -> list[str]:
        cmd = super().command(node_id, start_at)
        # Listen on every address of the namespace: the management one and the veths.
        cmd[cmd.index("--listen") + 1] = f"0.0.0.0:{self.nodes[node_id].port}"
        # The launcher's polls come from another namespace, not from loopback.
        # `ip netns exec` and `env` exec the command: the PID stays the node's own.
        return [
            "ip", "netns", "exec", self.net.ns[node_id],
            "env", "GOELECT_STATUS_PUBLIC=true", *cmd,
        ]  # fmt: skip

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.net.destroy()
