"""One node's elector in this process, and what it holds.

A :class:`NodeRunner` starts the runner's :class:`~flask_goelect.runner.Elector`
for one node's :class:`~flask_goelect._settings.Settings`: it takes the lock on
the node's state file (one elector per node), opens the storage and the HTTP
transport, and starts the elector; :meth:`NodeRunner.stop` stops it and gives
everything back. It knows nothing of Flask: the glue hands it the callbacks.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import auth
from ._lock import StateFileLock
from ._settings import Settings
from .runner import Elector, TaskFunc
from .runner.callbacks import OnTransition
from .storage import FileStorage, MemoryStorage, Storage

if TYPE_CHECKING:
    import requests

    from .transport import HttpTransport

__all__ = ["NodeRunner", "make_transport", "tls_session"]

_log = logging.getLogger("flask_goelect")


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
    )


class NodeRunner:
    """Runs the elector of one node in this process.

    :param settings: the node's checked configuration.
    :param new_transport: makes the transport of each run.
    :param on_transition: the elector's callback (the glue sends signals from it).
    """

    def __init__(
        self,
        settings: Settings,
        new_transport: Callable[[], Any],
        on_transition: OnTransition,
    ) -> None:
        self.settings = settings
        self._new_transport = new_transport
        self._on_transition = on_transition
        self._tasks: list[TaskFunc] = []
        self._file_lock: StateFileLock | None = None
        #: The elector of the current (or last) run, None before the first start.
        self.elector: Elector | None = None

    def __repr__(self) -> str:
        return f"<NodeRunner {self.settings.node_id!r} elector={self.elector!r}>"

    @property
    def running(self) -> bool:
        return self.elector is not None and self.elector.running

    @property
    def admin_token(self) -> str:
        """The token of ``POST <prefix>/transfer`` while this process runs the node."""
        lock = self._file_lock
        return lock.token if lock is not None and self.elector is not None else ""

    def add_task(self, task: TaskFunc) -> None:
        """Run ``task`` while this node leads, in this run and every later one."""
        self._tasks.append(task)
        if self.running:
            assert self.elector is not None
            self.elector.leader_task(task)

    def start(self) -> Elector:
        """Take the node's lock, open its storage and transport, start an elector.

        :raises flask_goelect._lock.LockError: another elector runs this node.
        """
        if self.elector is not None and self.elector.running:
            return self.elector
        # An elector that stopped by itself (its storage failed) left its lock.
        self.release()
        s = self.settings
        file_lock = None
        storage: Storage
        if s.state_file is None:
            storage = MemoryStorage()
        else:
            file_lock = StateFileLock(s.state_file, s.node_id)
            file_lock.acquire()
            try:
                storage = FileStorage(s.state_file)
            except BaseException:
                file_lock.release()
                raise
        transport = None
        try:
            transport = self._new_transport()
            elector = Elector(
                s.election,
                storage,
                transport,
                on_transition=self._on_transition,
                callback_timeout=s.callback_timeout,
                # A reply that comes later than one election timeout is useless:
                # the heartbeat round it answers can no longer extend the lease.
                rpc_timeout=(s.connect_timeout, s.elect_timeout),
            )
            for task in self._tasks:
                elector.leader_task(task)
            elector.start()
        except BaseException:
            if transport is not None:
                transport.close()
            storage.close()
            if file_lock is not None:
                file_lock.release()
            raise
        self.elector = elector
        self._file_lock = file_lock
        return elector

    def stop(self, transfer: bool, timeout: float) -> Elector | None:
        """Stop the elector (a leader first hands over, if ``transfer``) and release
        the lock; returns the elector that was running, or None."""
        elector = self.elector
        if elector is None or not elector.running:
            self.release()
            return None
        try:
            elector.stop(transfer=transfer, timeout=timeout)
        finally:
            self.release()
        return elector

    def release(self) -> None:
        """Give the lock back (the runner closes a stopped elector's storage and transport)."""
        if self._file_lock is not None:
            self._file_lock.release()
            self._file_lock = None

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's lock descriptor without releasing it."""
        if self._file_lock is not None:
            self._file_lock.forget_after_fork()
            self._file_lock = None
