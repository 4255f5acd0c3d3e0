"""Where the runner's background work runs: greenlets of the current hub, or native threads.

In a monkey-patched process (gunicorn ``-k gevent``, a ``gevent.pywsgi``
server) every piece of the runner is a greenlet in the current (the server's)
hub. Otherwise (``flask run``, gunicorn sync or gthread workers) the election
loop is a greenlet in a dedicated native daemon thread with its own hub, and
the blocking work (calls to peers, callbacks, leader tasks) runs in native
threads, so that nothing the application does can stall the election and
nothing the election does can block the application.

Every primitive the runner uses to wait or to run something in the background
comes from :class:`Runtime`, so that the two modes share all the other code.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

import gevent  # type: ignore[import-untyped]
import gevent.event  # type: ignore[import-untyped]
import gevent.lock  # type: ignore[import-untyped]
import gevent.monkey  # type: ignore[import-untyped]
import gevent.pool  # type: ignore[import-untyped]
import gevent.queue  # type: ignore[import-untyped]

__all__ = ["Event", "LoopWaker", "Runtime", "in_main_hub", "is_patched", "start_native_thread"]


class Event(Protocol):
    """A ``threading.Event`` or a ``gevent.event.Event``."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


def is_patched() -> bool:
    """Whether this process is monkey-patched by gevent (its sockets cooperate)."""
    return bool(gevent.monkey.is_module_patched("socket"))


def start_native_thread(name: str, func: Callable[[], None]) -> None:
    """Run ``func`` in a real OS thread, even in a monkey-patched process.

    For work that blocks in the kernel (waiting for a lock held by another
    process): in a patched process a ``threading.Thread`` is a greenlet, and a
    blocking call in it would stop the whole hub. The patched ``threading``
    module starts even its original ``Thread`` class as a greenlet, so this
    starts the thread with the original ``_thread.start_new_thread``.
    """
    if not is_patched():
        threading.Thread(target=func, name=name, daemon=True).start()
        return
    start_new_thread = gevent.monkey.get_original("_thread", "start_new_thread")
    start_new_thread(func, ())


def in_main_hub() -> Callable[[Callable[[], None]], None]:
    """A function that runs a callable in a greenlet of the calling thread's hub,
    from any thread (the thread that calls this must run that hub: a patched
    process's main thread). Not patched: the callable runs in the caller's thread.
    """
    if not is_patched():
        return lambda func: func()
    hub = gevent.get_hub()

    def call(func: Callable[[], None]) -> None:
        hub.loop.run_callback_threadsafe(gevent.spawn, func)

    return call


class LoopWaker:
    """Wakes the election loop from any thread or greenlet.

    The loop waits on :attr:`event` in its own hub; :meth:`send` fires a gevent
    async watcher of that hub, which sets the event there (a gevent event must
    not be set from another thread).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watcher: Any = None
        self.event: Any = None

    def attach(self) -> Any:
        """Create the event and the watcher in the calling thread's hub."""
        event = gevent.event.Event()
        watcher = gevent.get_hub().loop.async_()
        watcher.start(event.set)
        with self._lock:
            self.event, self._watcher = event, watcher
        return event

    def send(self) -> None:
        with self._lock:
            if self._watcher is not None:
                self._watcher.send()

    def detach(self) -> None:
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()


class Runtime:
    """Greenlets of the current hub (``patched``) or native threads.

    ``on_crash(name, exc)`` is called when a background worker dies of an
    exception: none dies silently.
    """

    def __init__(
        self, patched: bool, on_crash: Callable[[str, BaseException | None], None]
    ) -> None:
        self.patched = patched
        self._on_crash = on_crash
        self.group: Any = gevent.pool.Group() if patched else None

    def lock(self) -> Any:
        return gevent.lock.Semaphore() if self.patched else threading.Lock()

    def event(self) -> Event:
        event: Event = gevent.event.Event() if self.patched else threading.Event()
        return event

    def queue(self) -> Any:
        return gevent.queue.Queue() if self.patched else queue.SimpleQueue()

    def spawn(self, name: str, func: Callable[..., object], *args: object) -> Any:
        """Start ``func(*args)``; a crash is logged and recorded, never silent."""
        if self.patched:
            greenlet = self.group.spawn(func, *args)
            greenlet.name = name
            greenlet.link_exception(self._greenlet_crashed)
            return greenlet
        thread = threading.Thread(
            target=self._thread_main, args=(name, func, args), name=name, daemon=True
        )
        thread.start()
        return thread

    def start_loop(self, name: str, run: Callable[[Any], None], waker: LoopWaker) -> Any:
        """Start the election loop ``run(wake_event)``; return its worker.

        Patched: a greenlet of the current hub, next to the request handlers.
        Not patched: a greenlet in a native daemon thread with its own hub,
        where nothing else runs, so that nothing the application does can delay
        a heartbeat.
        """
        if self.patched:
            event = waker.attach()
            return self.spawn(name, run, event)
        ready = threading.Event()
        thread = threading.Thread(
            target=self._loop_thread_main, args=(name, run, waker, ready), name=name, daemon=True
        )
        thread.start()
        if not ready.wait(10.0):  # pragma: no cover - a hub that cannot start
            raise RuntimeError(f"the election loop {name!r} did not start")
        return thread

    def _loop_thread_main(
        self, name: str, run: Callable[[Any], None], waker: LoopWaker, ready: threading.Event
    ) -> None:
        hub = gevent.get_hub()
        try:
            event = waker.attach()
            ready.set()
            loop = gevent.spawn(run, event)
            loop.link_exception(lambda g: self._on_crash(name, g.exception))
            loop.join()
        except BaseException as exc:  # reported, never silent
            self._on_crash(f"{name} thread", exc)
        finally:
            waker.detach()
            hub.destroy(destroy_loop=True)

    def _greenlet_crashed(self, greenlet: Any) -> None:
        self._on_crash(str(greenlet.name), greenlet.exception)

    def _thread_main(
        self, name: str, func: Callable[..., object], args: tuple[object, ...]
    ) -> None:
        try:
            func(*args)
        except BaseException as exc:  # a native thread must not die silently
            self._on_crash(name, exc)

    def is_current(self, worker: Any) -> bool:
        if self.patched:
            return bool(worker is gevent.getcurrent())
        return bool(worker is threading.current_thread())

    def join(self, worker: Any, timeout: float) -> bool:
        """Wait up to ``timeout`` for ``worker`` to end; True if it has ended."""
        if worker is None:
            return True
        if self.is_current(worker):
            return False
        worker.join(max(0.0, timeout))
        return bool(worker.dead) if self.patched else not worker.is_alive()

    def abandon(self, worker: Any) -> None:
        """Give up on ``worker``: a greenlet is killed, a native thread cannot be."""
        if self.patched and worker is not None and not worker.dead and not self.is_current(worker):
            worker.kill(block=False)
