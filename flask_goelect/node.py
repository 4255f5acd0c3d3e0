"""One node, served by any number of processes of one machine: who runs its elector.

A production Flask app runs in several processes per machine (gunicorn or
uWSGI workers, recycled and replaced over time), and every one of them loads
the extension. They are still *one* node of the cluster, with one vote per
term: exactly one process of the node runs the elector at a time, and the
others act through it. A :class:`NodeRunner` is this process's part:

* **The elector process** holds the node's elector lock (:mod:`._lock`), runs
  the runner's :class:`~flask_goelect.runner.Elector` (state file, transport,
  signals, leader tasks), publishes every snapshot to the node's record
  (:mod:`.shared`) and answers the other processes on a local socket
  (:mod:`.local`).
* **A member** (any other serving process) reads the node's state from the
  record (so ``is_leader``, ``@leader_only`` views and the routes agree in every
  worker), hands the peers' RPCs it receives to the elector process as they
  came, and waits in the kernel for the elector lock: when the elector process
  exits or dies, one member takes the elector over at once.
* **A reader** is a child that the application forked from a member (a
  ``multiprocessing`` worker, say): it reads the record and never runs the
  elector; a fork never moves or stops the parent's elector.
* **Deferred**: the master of a preforking server (gunicorn ``--preload``,
  uWSGI without ``--lazy-apps``) loads the app but serves nothing: it runs no
  elector, and each worker it forks starts as a member.

A fork is noticed by the pid, at every entry point, not only by Python's
at-fork hooks: uWSGI forks its workers from C, where no hook runs.

When the elector process leaves (a recycled or replaced worker), it hands the
elector to another member of the node if one is there, keeping the node's
role and lease; the last process of a node to leave hands leadership over to
another node instead.
"""

from __future__ import annotations

import enum
import functools
import importlib
import itertools
import logging
import os
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _hooks, auth, clock, core
from ._answers import Answer, json_answer
from ._lock import LockFile, lock_file
from ._settings import Settings
from .auth import AUTH_HEADER
from .local import LocalClient, LocalError, LocalServer, socket_address
from .messages import Reply, Request
from .rpc import MAX_BODY, Body, Headers, RpcServer, StatusRead
from .runner import Elector, TaskFunc
from .runner.callbacks import OnTransition
from .runner.runtime import call_after_patch_all, in_main_hub, is_patched, start_native_thread
from .shared import NodeRecord, SharedRecord, record_path
from .state import (
    ErrorRecord,
    FixedElector,
    InFlight,
    NotRunning,
    Snapshot,
    State,
    new_error_log,
    status_of,
)
from .storage import FileStorage, MemoryStorage, Storage

if TYPE_CHECKING:
    import requests

    from .transport import HttpTransport

__all__ = [
    "MemberView",
    "NodeRunner",
    "Role",
    "make_transport",
    "prefork_master",
    "tls_context",
    "tls_session",
]

_log = logging.getLogger("flask_goelect")

#: How long an elector process leaving at exit waits to see whether the rest of
#: its server is leaving too (gunicorn stops every worker at once).
EXIT_SETTLE = 0.05

# Serializes noticing a fork (never held across anything that blocks). A runner's
# own lock cannot serve: a thread of the parent may have held it at the fork (a
# stop in progress), and that thread does not exist in the child.
_FORK_GUARD = threading.Lock()


#: How long a hand-off to another process of the node waits for the elector's
#: workers (a sender blocked on a slow peer is abandoned, not waited for).
HANDOFF_STOP = 0.1

#: How long an exiting elector process waits for a new worker of its server, forked
#: after it, to join the node (a reload), before it hands leadership to another node.
REPLACEMENT_WAIT = 10.0


def _replacement_booting() -> bool:
    """Whether this process is a worker of a preforking server (gunicorn, uWSGI) and
    the server has forked a worker after this one that is still alive: a
    replacement, loading the app (Linux only: it reads ``/proc``)."""
    return _newest_generation() is not None


def _newest_generation() -> int | None:
    """The start time of the newest live worker of this process's server, if it was
    forked a generation after this one (see :data:`_GENERATION_TICKS`), else None."""
    if "gunicorn.workers.base" not in sys.modules and server_worker_id() is None:
        return None
    master, me = os.getppid(), os.getpid()
    newest: int | None = None
    try:
        mine = _start_time(me)
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                fields = _stat(int(entry))
            except OSError:
                continue
            started = int(fields[19])
            if (
                int(fields[1]) == master
                and fields[0] != "Z"
                and started > mine + _GENERATION_TICKS
                and (newest is None or started > newest)
            ):
                newest = started
    except (OSError, ValueError, IndexError):
        return None
    return newest


#: Workers a server forks together start within this many clock ticks of each other
#: (``os.sysconf("SC_CLK_TCK")``, 100 a second), on a loaded machine too (gunicorn
#: waits up to 0.1 s at random between two forks): a worker forked by a later
#: reload starts after the others had time to load the app and join. A reload
#: sooner than this after the start is taken for the start itself.
_GENERATION_TICKS = 100


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name: ``[0]`` is the
    state (field 3), ``[1]`` the parent (field 4), ``[19]`` the start time in
    clock ticks since boot (field 22). :raises OSError: no such process."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        return f.read().rsplit(")", 1)[1].split()


def _start_time(pid: int) -> int:
    return int(_stat(pid)[19])


def tls_session(settings: Settings) -> requests.Session:
    """A ``requests`` session with this node's TLS settings (CA, client certificate)."""
    import requests

    session = requests.Session()
    if settings.tls_ca:
        session.verify = settings.tls_ca
    if settings.tls_cert:
        session.cert = (
            (settings.tls_cert, settings.tls_key) if settings.tls_key else settings.tls_cert
        )
    return session


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The TLS settings of the RPCs to ``https://`` peers: this node's CA bundle
    (or the system's trust store) and client certificate."""
    ca = settings.tls_ca
    if ca is not None and os.path.isdir(ca):
        context = ssl.create_default_context(capath=ca)
    else:
        context = ssl.create_default_context(cafile=ca)
    if settings.tls_cert:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def _any_https(settings: Settings) -> bool:
    return any(p.address.startswith("https://") for p in settings.election.peers)


def make_transport(
    settings: Settings, signer: auth.RequestSigner, url_prefix: str
) -> HttpTransport:
    """An :class:`~flask_goelect.transport.HttpTransport` with this node's TLS
    settings and signer, for the elector and for status queries."""
    from .transport import HttpTransport

    return HttpTransport(
        url_prefix=url_prefix,
        session_factory=functools.partial(tls_session, settings),
        signer=signer,
        # Loaded once, and only for https:// peers (a CA file that no peer needs
        # is not read, as before).
        ssl_context=tls_context(settings) if _any_https(settings) else None,
        lean=True,
    )


def prefork_master() -> str | None:
    """The preforking server whose master process is loading the app, or None.

    Such a master forks the workers that serve: the node must start in each
    worker, never in the master. Known: gunicorn with ``--preload`` (the app is
    loaded in ``Arbiter.setup``) and uWSGI without ``--lazy-apps`` (the app is
    loaded in the master, worker id 0).
    """
    if server_worker_id() == 0:
        return "uwsgi"
    frame = sys._getframe(1)
    arbiter = os.path.join("gunicorn", "arbiter.py")
    while frame is not None:
        code = frame.f_code
        if code.co_name == "setup" and code.co_filename.endswith(arbiter):
            return "gunicorn"
        frame = frame.f_back  # type: ignore[assignment]
    return None


def prefork_worker() -> bool:
    """Whether this process is a worker that a preforking server's master forked
    (and not another child of the master, a ``multiprocessing`` worker of the app
    say): uWSGI says so by the worker id; a gunicorn worker runs its whole life
    inside ``Arbiter.spawn_worker``.
    """
    worker_id = server_worker_id()
    if worker_id is not None:
        return worker_id > 0
    return _spawn_worker_frame() is not None


def _spawn_worker_frame() -> Any:
    """The frame of gunicorn's ``Arbiter.spawn_worker`` this process runs in, if any."""
    frame = sys._getframe(1)
    arbiter = os.path.join("gunicorn", "arbiter.py")
    while frame is not None:
        code = frame.f_code
        if code.co_name == "spawn_worker" and code.co_filename.endswith(arbiter):
            return frame
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _gunicorn_gevent_worker() -> bool:
    """Whether this process is a gunicorn worker of a gevent worker class, forked by
    its master (it patches itself once forked)."""
    frame = _spawn_worker_frame()
    worker_class = getattr(frame.f_locals.get("self") if frame else None, "worker_class", None)
    mro = getattr(worker_class, "__mro__", ())
    return any(c.__module__.startswith("gunicorn.workers.ggevent") for c in mro)


def server_worker_id() -> int | None:
    """Which worker of a preforking server this process is, where the server
    says so (uWSGI's worker id, 0 in its master), else None."""
    uwsgi = sys.modules.get("uwsgi")
    worker_id = getattr(uwsgi, "worker_id", None)
    if worker_id is None:
        return None
    try:
        return int(worker_id())
    except Exception:  # pragma: no cover - not inside a uWSGI server
        return None


class Role(str, enum.Enum):
    """What this process does for the node."""

    IDLE = "idle"
    DEFERRED = "deferred"
    ELECTOR = "elector"
    MEMBER = "member"
    READER = "reader"

    def __str__(self) -> str:
        return self.value


class MemberView:
    """The node as another process of it sees it: the elector process's record.

    It has the shape of an elector (:class:`~flask_goelect.state.ElectorLike`):
    the snapshot comes from the record, everything else is asked of the elector
    process. It runs no jobs: ``runs_jobs`` is False.
    """

    runs_jobs = False

    def __init__(self, runner: NodeRunner, record: SharedRecord) -> None:
        self._runner = runner
        self._record = record
        self._stopped = Snapshot.stopped(
            runner.settings.node_id,
            0,
            tuple(sorted(runner.settings.election.voters)),
            tuple(sorted(runner.settings.election.observers)),
        )
        self.errors: deque[ErrorRecord] = new_error_log()

    def __repr__(self) -> str:
        return f"<MemberView {self._runner.settings.node_id!r} {self.snapshot.state}>"

    def _live_record(self) -> NodeRecord | None:
        record = self._record.read()
        if (
            record is None
            or record.snapshot.node_id != self._runner.settings.node_id
            # Left from an earlier boot: its lease is a time on another boot's clock.
            or not record.this_boot
        ):
            return None
        return record

    @property
    def snapshot(self) -> Snapshot:
        record = self._live_record()
        return self._stopped if record is None else record.snapshot

    @property
    def running(self) -> bool:
        record = self._live_record()
        # A stopped elector process (SIGSTOP, a debugger) holds the node's lock and
        # runs nothing: the node is out of the election, whatever the record says.
        return record is not None and record.running and _serving(record.pid)

    def is_leader(self) -> bool:
        now = clock.now()
        return self.snapshot.is_leader(now)

    def handle(self, msg: Request) -> Reply:
        raise NotRunning("this process hands peers' requests to the node's elector process")

    def status(self) -> dict[str, Any]:
        try:
            header, _ = self._runner.call({"op": "status"})
        except LocalError as exc:
            status = status_of(self.snapshot)
            status.update(running=False, error=str(exc))
            return status
        result: dict[str, Any] = header["status"]
        return result

    def wait_for_leader(self, timeout: float) -> core.LeaderInfo | None:
        deadline = time.monotonic() + timeout
        me = self._runner.settings.node_id
        while True:
            snap = self.snapshot
            if snap.leader_id is not None and (snap.leader_id != me or snap.is_leader()):
                return snap.leader
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    def transfer_leadership(self, to: str | None = None) -> str:
        try:
            header, _ = self._runner.call({"op": "transfer", "to": to})
        except LocalError as exc:
            raise NotRunning(str(exc)) from None
        refused = header.get("refused")
        if refused:
            error = {
                "NotLeaderError": core.NotLeaderError,
                "TransferError": core.TransferError,
            }.get(refused["kind"], NotRunning)
            raise error(refused["message"])
        target: str = header["target"]
        return target


class ProcessGate(InFlight):
    """The leader-only calls running in this process, as the whole node sees them.

    In the elector process it is the plain gate the elector drains. In another
    process of the node it also publishes how many calls it runs (in its slot of
    the node's record file), and refuses calls while the elector has closed the
    node's gate: a leader about to hand leadership to another node waits for
    the calls of *every* process of the node, not only its own.
    """

    def __init__(self, runner: NodeRunner) -> None:
        super().__init__()
        self._runner = runner
        self._publish_lock = threading.Lock()

    def _slot(self) -> tuple[SharedRecord, int] | None:
        runner = self._runner
        record, locks = runner._record, runner._locks
        if runner._role is Role.ELECTOR or record is None or locks is None:
            return None
        slot = locks.member_byte
        return (record, slot) if slot is not None else None

    def _publish(self, target: tuple[SharedRecord, int]) -> None:
        record, slot = target
        # Under a lock (the count and its store together); the lock's release is
        # also a memory barrier between this store and the gate's read below.
        with self._publish_lock:
            record.set_running_calls(slot, len(self._running))

    def enter(self) -> bool:
        if not super().enter():
            return False
        if self._runner._role is Role.ELECTOR:  # the hot path: nothing to publish
            return True
        target = self._slot()
        if target is None:
            return True
        # Published first, the gate read after: either the elector sees this call
        # when it counts, or this call sees the gate closed.
        self._publish(target)
        last = target[0].read()
        if last is not None and last.gate_closed:
            super().leave()
            self._publish(target)
            return False
        return True

    def leave(self) -> None:
        self._running.pop()  # InFlight.leave, inline: it runs on every call
        if self._runner._role is Role.ELECTOR:  # the hot path: nothing to publish
            return
        target = self._slot()
        if target is not None:
            self._publish(target)


class NodeGate:
    """The gate the elector drains before it hands leadership to another node:
    the calls of this process, then those of the node's other processes."""

    def __init__(self, runner: NodeRunner) -> None:
        self._runner = runner

    @property
    def count(self) -> int:
        runner = self._runner
        return runner.inflight.count + runner._members_running_calls()

    def drain(self, timeout: float) -> bool:
        runner = self._runner
        deadline = time.monotonic() + timeout
        runner._close_node_gate(True)
        if not runner.inflight.drain(timeout):
            return False
        # The other processes see the gate at their next call; a call that passed
        # it a moment before has published itself by now.
        while runner._members_running_calls():
            if time.monotonic() >= deadline:
                return False
            time.sleep(InFlight.POLL)
        return True

    def reopen(self) -> None:
        runner = self._runner
        runner._close_node_gate(False)
        runner.inflight.reopen()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process: alive
        return True
    return True


def _serving(pid: int) -> bool:
    """Whether ``pid`` is alive and not stopped (``SIGSTOP``, a tracer) nor a zombie
    (Linux: its state in ``/proc``; elsewhere, alive is enough)."""
    if not os.path.isdir("/proc/self"):
        return _alive(pid)
    try:
        return _stat(pid)[0] not in ("T", "t", "Z", "X")
    except (OSError, IndexError):
        return False


class NodeRunner:
    """This process's part in running one node (see the module docs).

    :param settings: the node's checked configuration.
    :param verifier: checks the peers' requests (the elector process answers them).
    :param new_transport: makes the transport of each elector.
    :param on_transition: the elector's callback (the glue sends signals from it).
    """

    def __init__(
        self,
        settings: Settings,
        verifier: auth.RequestVerifier,
        new_transport: Callable[[], Any],
        on_transition: OnTransition,
    ) -> None:
        self.settings = settings
        self._new_transport = new_transport
        self._on_transition = on_transition
        self._tasks: list[TaskFunc] = []
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._worker_id = server_worker_id()
        self._role = Role.IDLE
        self._elector: Elector | None = None
        self._view: Any = None
        self._locks: LockFile | None = None
        self._record: SharedRecord | None = None
        self._server: LocalServer | None = None
        self._client: LocalClient | None = None
        self._member_view: MemberView | None = None
        self._exiting = False
        self._stepping_down = False
        self._gate_closed = False
        self._address_now = ""
        self._memory_token = ""
        #: The leader-only calls running in this process (see :class:`ProcessGate`).
        self.inflight = ProcessGate(self)
        #: Answers the peers' RPCs in the elector process.
        self.rpc = RpcServer(verifier, self._handle, settings.url_prefix)
        config = settings.election
        self._idle = FixedElector(
            Snapshot.stopped(
                settings.node_id, 0, tuple(sorted(config.voters)), tuple(sorted(config.observers))
            )
        )
        self._refresh_view()

    def __repr__(self) -> str:
        return f"<NodeRunner {self.settings.node_id!r} {self.role} pid={self._pid}>"

    # -- what readers use ------------------------------------------------------------

    @property
    def role(self) -> Role:
        """What this process does for the node."""
        return self._role

    @role.setter
    def role(self, role: Role) -> None:
        self._role = role
        self._refresh_view()

    @property
    def elector(self) -> Elector | None:
        """The elector of this process's current (or last) run, None before the first one."""
        return self._elector

    @elector.setter
    def elector(self, elector: Elector | None) -> None:
        self._elector = elector
        self._refresh_view()

    def _refresh_view(self) -> None:
        role, elector = self._role, self._elector
        view: Any = self._idle
        if elector is not None and role in (Role.ELECTOR, Role.IDLE):
            view = elector
        elif role in (Role.MEMBER, Role.READER) and self._member_view is not None:
            view = self._member_view
        self._view = view

    @property
    def view(self) -> Any:
        """What answers queries in this process: the elector, the record, or a stand-in.

        Every reader comes through here (the decorators on every call): one pid
        check, which notices a fork however it was made, then one attribute.
        """
        if self._pid != os.getpid() or self._role is Role.DEFERRED:
            return self._slow_view()
        return self._view

    def _slow_view(self) -> Any:
        if self._pid != os.getpid():
            self._forked()
        if self._role is Role.DEFERRED and server_worker_id():
            # uWSGI without --master: the process that loaded the app (worker id 0
            # then) serves as worker 1 after forking the others.
            self._join_deferred()
        return self._view

    @property
    def running(self) -> bool:
        return bool(self.view.running)

    @property
    def admin_token(self) -> str:
        """The token of ``POST <prefix>/transfer`` while this process runs the elector."""
        self.view  # noqa: B018 - notices a fork first
        locks = self._locks
        if self.role is Role.ELECTOR and locks is not None:
            return locks.token
        if self.role is Role.MEMBER and locks is not None:
            # A member hands the call to the elector process: the token to show is
            # the one that process wrote next to the state file.
            return locks.current_token()
        if self.settings.state_file is None and self.elector is not None:
            return self._memory_token
        return ""

    def add_task(self, task: TaskFunc) -> None:
        """Run ``task`` while this node leads, in the elector process's every run."""
        with self._lock:
            self._tasks.append(task)
            elector = self.elector
        if elector is not None and elector.running:
            elector.leader_task(task)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, *, defer_in_master: bool = False) -> None:
        """Start this process's part: the elector, or a member of the node.

        With ``defer_in_master``, a preforking server's master defers the start
        to the workers it forks.

        :raises LockError: another elector of this node runs in this process.
        """
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            if self.role in (Role.ELECTOR, Role.MEMBER):
                return
            self._exiting = False
            if defer_in_master:
                master = prefork_master()
                if master is not None:
                    self.role = Role.DEFERRED
                    _log.info(
                        "flask-goelect: node %r: the %s master defers the elector to its workers",
                        self.settings.node_id,
                        master,
                    )
                    _after_uwsgi_fork(self)
                    return
            if self.settings.state_file is None:
                self._start_in_memory()
                return
            self._join()

    def _start_in_memory(self) -> None:
        # GOELECT_STATE_FILE = ":memory:" (tests): one process, nothing shared.
        import secrets

        self.elector = self._new_elector(MemoryStorage())
        self.elector.start()
        self._memory_token = secrets.token_urlsafe(24)
        self.role = Role.ELECTOR

    def _join(self) -> None:
        state_file = self.settings.state_file
        assert state_file is not None
        locks = self._locks = lock_file(state_file)
        if self._record is None:
            self._record = SharedRecord(record_path(state_file))
            self._member_view = MemberView(self, self._record)
            self._refresh_view()
        byte = locks.join(self, self.settings.node_id)
        self._record.set_member_pid(byte, os.getpid())
        if locks.take_elector(self, self.settings.node_id):
            try:
                self._become_elector()
            except BaseException:
                locks.release_elector(self)
                locks.leave()
                locks.disown(self)
                raise
            return
        self.role = Role.MEMBER
        _log.info(
            "flask-goelect: node %r: %s runs the elector; process %d stands by",
            self.settings.node_id,
            locks.holder() or "another process",
            os.getpid(),
        )
        run_here = in_main_hub()
        locks.wait_for_elector(
            self,
            self.settings.node_id,
            lambda: self._took_over(run_here),
            start_native_thread,
        )

    def _took_over(self, run_here: Callable[[Callable[[], None]], None]) -> bool:
        """The elector lock came to this process (in the waiting thread).

        What to do with it is decided in ``take``, under this runner's lock: a
        runner that was stopped and started again meanwhile took the lock as its
        own (locks of one process never conflict), and it must then stay.
        """

        def take() -> None:
            with self._lock:
                locks = self._locks
                if self.role is Role.ELECTOR:
                    return  # started again meanwhile: the lock is its elector's now
                if self._exiting or self.role is not Role.MEMBER or self._pid != os.getpid():
                    if locks is not None:
                        locks.release_elector(self)
                        if self.role is not Role.MEMBER:
                            locks.disown(self)
                    return
                try:
                    self._become_elector()
                except Exception:
                    _log.exception(
                        "flask-goelect: node %r: process %d could not take the elector over",
                        self.settings.node_id,
                        os.getpid(),
                    )
                    if locks is not None:
                        locks.release_elector(self)
                    return
            _log.info(
                "flask-goelect: node %r: process %d took the elector over",
                self.settings.node_id,
                os.getpid(),
            )

        run_here(take)
        return True

    def _new_elector(self, storage: Storage) -> Elector:
        s = self.settings
        transport = self._new_transport()
        try:
            elector = Elector(
                s.election,
                storage,
                transport,
                on_transition=self._on_transition,
                callback_timeout=s.callback_timeout,
                # A reply that comes later than one election timeout is useless:
                # the heartbeat round it answers can no longer extend the lease.
                rpc_timeout=(s.connect_timeout, s.elect_timeout),
                gate=NodeGate(self),
            )
        except BaseException:
            transport.close()
            storage.close()
            raise
        for task in self._tasks:
            elector.leader_task(task)
        return elector

    def _become_elector(self) -> None:
        # Called with the elector lock held (and self._lock).
        state_file = self.settings.state_file
        record = self._record
        assert state_file is not None and record is not None
        elector = self._new_elector(FileStorage(state_file))
        # A name of its own per elector: a socket of an earlier one of this process
        # may not be released yet (its accept() still returning).
        address = f"{socket_address(state_file)}-{os.getpid()}-{next(_SERVER_NUMBERS)}"
        self._address_now = address
        elector.add_listener(self._write_record)
        try:
            server = LocalServer(address, self._serve_local, _start_thread)
        except BaseException:
            elector.stop(transfer=False, timeout=1.0)
            raise
        try:
            elector.start(resume=self._resume(record))
        except BaseException:
            server.close()
            raise
        self._server = server
        self.elector = elector
        self.role = Role.ELECTOR
        # Last: a call that the server answers finds this process the elector's.
        server.start()

    def _write_record(self, snap: Snapshot) -> None:
        """Publish ``snap`` (and this process's flags) for the node's other processes."""
        record = self._record
        if record is not None:
            record.write(
                NodeRecord(
                    snap,
                    os.getpid(),
                    snap.state is not State.STOPPED,
                    address=self._address_now,
                    stepping_down=self._stepping_down,
                    gate_closed=self._gate_closed,
                )
            )

    def _close_node_gate(self, closed: bool) -> None:
        """Close (or open again) the gate of leader-only calls in every process of the node."""
        self._gate_closed = closed
        elector = self._elector
        if elector is not None and self._role is Role.ELECTOR:
            self._write_record(elector.snapshot)

    def _members_running_calls(self) -> int:
        record, locks = self._record, self._locks
        if record is None or locks is None:
            return 0
        return record.running_calls(locks.other_members())

    def _resume(self, record: SharedRecord) -> core.Resume | None:
        """Where the node's previous elector process left off: its last record.

        The record is written after the state it shows was persisted, and only
        a record of this boot of the machine is taken (its lease is a time on
        this boot's clock); the core checks the rest against the state file.
        """
        # A writer that died inside a write leaves the record torn: this process
        # then has only the last record it saw, which may be far older than the
        # node's last step. Its term, leader and lease are still checked against the
        # state file and capped; but a promise it carries is not the node's last.
        last = record.read(fresh=True)
        torn = last is None
        if torn:
            last = record.read()
        if last is None or not last.this_boot:
            return None
        snap = last.snapshot
        if snap.node_id != self.settings.node_id or snap.state is State.STOPPED:
            return None
        lease = snap.lease_until if snap.state is State.LEADER else 0.0
        # Only a hand-off's record says what the stopped elector promised: a record
        # written while it ran may be older than its last promise.
        carried = last.handoff and not torn
        promise = last.promise_until if carried else None
        started = last.started_until if carried else None
        return core.Resume(
            term=snap.term,
            leader=snap.leader,
            lease_until=lease,
            promise_until=promise,
            started_until=started,
        )

    def stop(self, transfer: bool, timeout: float) -> Elector | None:
        """This process leaves the node; returns its elector if one was running.

        The elector process hands the elector to another process of the node
        when one is there (the node keeps its role and lease); otherwise it stops
        the elector, a leader first handing leadership over to another node if
        ``transfer``.
        """
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            role = self.role
            elector = self.elector
            locks = self._locks
            if role is Role.DEFERRED:
                self.role = Role.IDLE
                return None
            if role is Role.MEMBER and locks is not None:
                locks.stop_waiting()
                locks.leave()
                locks.disown(self)
                self.role = Role.IDLE
                self._close_client()
                return None
            if role is not Role.ELECTOR or elector is None:
                self.role = Role.IDLE
                return None
            in_node = locks is not None and self._successor_exists(locks)
            if in_node:
                self._hand_off(elector, timeout)
            else:
                if transfer:
                    self._step_down_first(elector)
                elector.stop(transfer=transfer, timeout=timeout)
                self._stepping_down = False
            self._close_server()
            if locks is not None:
                locks.release_elector(self)
                locks.leave()
                locks.disown(self)
            self.role = Role.IDLE
            return elector

    def stop_at_exit(self) -> Elector | None:
        """The process exits: leave the node (see :meth:`stop`), bounded in time."""
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            self._exiting = True
            locks = self._locks
            if self.role is Role.MEMBER and locks is not None:
                locks.stop_waiting()
                locks.leave()
        return self.stop(transfer=True, timeout=min(2.0, 2 * self.settings.elect_timeout))

    @property
    def stepping_down(self) -> bool:
        """Whether the node's leader is stopping and drains its load balancer."""
        if self.role is Role.ELECTOR or self._record is None:
            return self._stepping_down
        record = self._record.read()
        return record is not None and record.stepping_down

    def _step_down_first(self, elector: Elector) -> None:
        """``GOELECT_HANDOVER_DRAIN``: keep leading with ``/leader`` answering 503 for
        a while, so that a balancer routing by it moves first; then hand over."""
        drain = self.settings.handover_drain
        if drain <= 0 or not elector.is_leader():
            return
        self._stepping_down = True
        record = self._record
        if record is not None:
            snap = elector.snapshot
            record.write(
                NodeRecord(snap, os.getpid(), True, address=self._address_now, stepping_down=True)
            )
        _log.info(
            "flask-goelect: node %r steps out of its load balancer for %g ms before it hands"
            " leadership over",
            self.settings.node_id,
            drain * 1000,
        )
        time.sleep(drain)

    def _successor_exists(self, locks: LockFile) -> bool:
        if not self._exiting:
            return bool(locks.other_members())
        # The server may be stopping every worker at once: give the others a
        # moment to show that they are leaving too.
        locks.leave()
        time.sleep(EXIT_SETTLE)
        if not _replacement_booting():
            return bool(locks.other_members())
        # A reload (gunicorn's HUP) starts new workers, then stops the old ones:
        # the old members are on their way out too, and the new ones have not
        # loaded the app yet. Lead on until one of the new ones has joined.
        deadline = time.monotonic() + REPLACEMENT_WAIT
        while time.monotonic() < deadline:
            if self._younger_member():
                return True
            if not _replacement_booting():
                break
            time.sleep(0.02)
        return bool(locks.other_members())

    def _younger_member(self) -> bool:
        """Whether a member of the node is a replacement: a worker of the newest
        generation its server forked, well after this process (the workers of
        older generations, forked with this one or recycled since, are stopping
        with it)."""
        record, locks = self._record, self._locks
        if record is None or locks is None:
            return False
        newest = _newest_generation()
        if newest is None:
            return False
        try:
            first = max(
                _start_time(os.getpid()) + _GENERATION_TICKS + 1, newest - _GENERATION_TICKS
            )
            for byte in locks.other_members():
                pid = record.member_pid(byte)
                if pid and _alive(pid) and _start_time(pid) >= first:
                    return True
        except (OSError, ValueError, IndexError):
            return False
        return False

    def _hand_off(self, elector: Elector, timeout: float) -> None:
        """Stop the elector but keep the node's record: another process takes over.

        Jobs run in the elector's process only: those running here end (bounded)
        before the next process can start its own.
        """
        if not self.inflight.drain(min(timeout, self.settings.elect_timeout)):
            _log.warning(
                "flask-goelect: node %r: process %d hands its elector over while %d"
                " leader-only calls still run",
                self.settings.node_id,
                os.getpid(),
                self.inflight.count,
            )
        started = time.monotonic()
        record = self._record
        elector.remove_listeners()
        # Quickly: the node's followers wait for the next process's heartbeats, and
        # nothing of this elector may outlive the stop (the gate is drained, leader
        # tasks are cancelled and their greenlets killed).
        elector.stop(transfer=False, timeout=HANDOFF_STOP)
        snap = elector.last_snapshot
        if record is not None:
            # The node's state as it stopped stepping (a step after a snapshot read
            # before the stop, a transfer say, would not be in it), and the promise
            # and start guard it kept then.
            record.write(
                NodeRecord(
                    snap,
                    os.getpid(),
                    running=True,
                    handoff=True,
                    address="",
                    promise_until=elector.promise_until,
                    started_until=elector.started_until,
                )
            )
        self.inflight.reopen()  # this process is now a member: it runs no more jobs
        _log.info(
            "flask-goelect: node %r: process %d hands the elector to another process of the"
            " node (%s, term %d) after %.0f ms",
            self.settings.node_id,
            os.getpid(),
            snap.state,
            snap.term,
            (time.monotonic() - started) * 1000,
        )

    def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _forked(self) -> None:
        """This object was inherited by a forked child: act for the child now.

        The runner's lock is not taken: a thread of the parent may have held it
        at the fork, and it never lets it go in the child.
        """
        with _FORK_GUARD:
            if self._pid == os.getpid():
                return
            previous = self._role
            parent_worker = self._worker_id
            self._lock = threading.RLock()
            self._worker_id = server_worker_id()
            self._exiting = False
            self._elector = None
            self._locks = None
            if self._server is not None:
                # The parent's listening socket: close this process's copy only.
                self._server.forget_after_fork()
                self._server = None
            self._client = None
            state_file = self.settings.state_file
            self._record = SharedRecord(record_path(state_file)) if state_file else None
            self._member_view = MemberView(self, self._record) if self._record is not None else None
            # Only a worker of a preforking server serves, and joins the node: the
            # child of a master that deferred the node (not any child of that
            # master: the app may fork others), or a new uWSGI worker forked by the
            # first one (uWSGI without --master).
            worker = self._worker_id is not None and self._worker_id != parent_worker
            if previous is Role.DEFERRED and prefork_worker():
                role, join = Role.DEFERRED, True
            elif worker and previous is not Role.IDLE and previous is not Role.DEFERRED:
                role, join = Role.DEFERRED, True
            elif previous in (Role.ELECTOR, Role.MEMBER, Role.READER, Role.DEFERRED) and (
                self._record is not None
            ):
                role, join = Role.READER, False
            else:
                role, join = Role.IDLE, False
            self._role = role
            self._refresh_view()
            # Last: the other threads of this process take the fast path from now on.
            self._pid = os.getpid()
        if join and not is_patched() and _gunicorn_gevent_worker():
            # gunicorn --preload -k gevent: the worker patches itself after the
            # fork; an elector started now would run on the original threads and
            # sockets under a process that cooperates (seconds-long failovers).
            call_after_patch_all(self._join_deferred)
        elif join:
            self._join_deferred()

    def _join_deferred(self) -> None:
        with self._lock:
            if self.role is not Role.DEFERRED:
                return
            self.role = Role.IDLE
            self._worker_id = server_worker_id()
            try:
                self._join()
            except Exception:
                _log.exception(
                    "flask-goelect: node %r: worker %d could not join the node",
                    self.settings.node_id,
                    os.getpid(),
                )

    # -- the elector process answers the others ------------------------------------------

    def call(self, header: dict[str, Any], body: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """Ask the node's elector process (from another process of the node).

        :raises LocalError: there is none, or it did not answer.
        """
        record = self._record.read() if self._record is not None else None
        if record is None or not record.address:
            raise LocalError("no elector process of this node is running")
        client = self._client
        if client is None or client.address != record.address:
            if client is not None:
                client.close()
            client = self._client = LocalClient(record.address, self.settings.elect_timeout)
        return client.call(header, body)

    def _handle(self, msg: Request) -> Reply:
        elector = self.elector
        if elector is None or self.role is not Role.ELECTOR:
            raise NotRunning("the elector of this node does not run in this process")
        return elector.handle(msg)

    def _serve_local(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        op = header.get("op")
        if op == "rpc":
            answer = self.rpc.serve(
                str(header["kind"]), header["headers"], body, remote_addr=header["remote_addr"]
            )
            return {"status": answer.status, "headers": answer.headers}, answer.body
        if op == "status-route":
            read = StatusRead(
                str(header["method"]),
                str(header["path"]),
                header["headers"],
                body,
                str(header["remote_addr"]),
                bool(header["may_read_unsigned"]),
            )
            answer = self._status_answer(read, bool(header["full"]))
            return {"status": answer.status, "headers": answer.headers}, answer.body
        if op == "status":
            return {"status": self.status()}, b""
        if op == "transfer":
            elector = self.elector
            if elector is None:
                return {"refused": {"kind": "NotRunning", "message": "not running"}}, b""
            try:
                return {"target": elector.transfer_leadership(header.get("to"))}, b""
            except (core.NotLeaderError, core.TransferError, NotRunning) as exc:
                return {"refused": {"kind": type(exc).__name__, "message": str(exc)}}, b""
        return {"error": f"unknown operation {op!r}"}, b""

    # -- routes ------------------------------------------------------------------------------

    def serve_rpc(self, kind: str, headers: Headers, body: Body, remote_addr: str) -> Answer:
        """Answer a peer's RPC here, or have the elector process answer it."""
        view = self.view
        if view is self.elector or self._record is None:
            return self.rpc.serve(kind, headers, body, remote_addr=remote_addr)
        data = body if isinstance(body, bytes) else body.read(MAX_BODY + 1)
        return self._forward(
            {"op": "rpc", "kind": kind, "headers": dict(headers), "remote_addr": remote_addr}, data
        )

    def status_answer(self, read: StatusRead, full: bool) -> Answer:
        """The answer to a status route: the status (``full``) or ``{"may_read": true}``,
        or the refusal (a signed request's nonce is checked node-wide)."""
        view = self.view
        signed = self.rpc.verifier.signs and bool(read.headers.get(AUTH_HEADER.lower()))
        if not signed or view is self.elector or self._record is None:
            # Unsigned: nothing node-wide to check; the status itself is asked of
            # the elector process by the view.
            return self._status_answer(read, full)
        body = read.body
        data = body if isinstance(body, bytes) else body.read(MAX_BODY + 1)
        header = {
            "op": "status-route",
            "method": read.method,
            "path": read.path,
            "headers": dict(read.headers),
            "remote_addr": read.remote_addr,
            "may_read_unsigned": read.may_read_unsigned,
            "full": full,
        }
        return self._forward(header, data)

    def _status_answer(self, read: StatusRead, full: bool) -> Answer:
        reader = self.rpc.reader(read)
        if isinstance(reader, Answer):
            return reader
        return self.rpc.sign(json_answer(self.status() if full else {"may_read": True}), reader)

    def _forward(self, header: dict[str, Any], body: bytes) -> Answer:
        try:
            answer, data = self.call(header, body)
        except LocalError as exc:
            from ._answers import error_answer

            return error_answer(
                503, "not_running", f"the elector of this node is not running: {exc}"
            )
        return Answer(int(answer["status"]), dict(answer["headers"]), data)

    def status(self) -> dict[str, Any]:
        """This node's view, as its elector process sees it, and this process's part."""
        view = self.view
        status: dict[str, Any] = view.status()
        if view is self.elector:
            # Requests refused by this node, by the error's code (auth, cluster,
            # voter_set_mismatch...): answered here, wherever they landed.
            status["refused"] = dict(sorted(self.rpc.refused.items()))
        status["process"] = self.process()
        return status

    def process(self) -> dict[str, Any]:
        """This process's part in the node: ``pid``, ``role`` and the elector's pid."""
        view = self.view  # notices a fork first
        record = self._record.read() if self._record is not None else None
        if self.role is Role.ELECTOR or record is None:
            elector_pid = os.getpid() if view is self.elector else None
        else:
            elector_pid = record.pid if record.running else None
        return {"pid": os.getpid(), "role": str(self.role), "elector_pid": elector_pid}


_SERVER_NUMBERS = itertools.count(1)


def _start_thread(name: str, func: Callable[[], None]) -> object:
    # A greenlet in a monkey-patched process (threading is patched), else a thread.
    thread = threading.Thread(target=func, name=name, daemon=True)
    thread.start()
    return thread


def _after_uwsgi_fork(runner: NodeRunner) -> None:
    """In a uWSGI master: have each worker notice the fork as soon as it is made.

    uWSGI forks from C, where Python's at-fork hooks do not run; without this,
    a worker would notice at its first request (every entry point checks the pid).
    """
    try:
        uwsgidecorators = importlib.import_module("uwsgidecorators")
    except Exception:  # not under uWSGI, or without its master (the module refuses)
        return

    def notice() -> None:
        runner.view  # noqa: B018 - reading it makes the runner act for this process

    uwsgidecorators.postfork(notice)


def _reset_fork_guard() -> None:
    # In a child forked by Python: the guard may have been held by a thread that
    # does not exist here.
    global _FORK_GUARD
    _FORK_GUARD = threading.Lock()


_hooks.in_child("connections", _reset_fork_guard)
