"""Where the runner's background work runs: a native thread for the election, and
the server's hub or native threads for the application's code.

The election loop always runs as a greenlet in a native OS thread of its own,
with a gevent hub of its own. Where the rest runs depends on the process:

* **Not monkey-patched** (``flask run``, gunicorn sync or gthread workers,
  uWSGI): calls to peers, callbacks and leader tasks run in native threads.
* **Monkey-patched** (gunicorn ``-k gevent``, a ``gevent.pywsgi`` server): the
  calls to peers are greenlets of the loop's hub, next to the loop (their
  sockets are gevent's, bound to that hub); callbacks and leader tasks are
  greenlets of the server's hub (the *app hub*), where the application's code
  expects to cooperate. A view that computes without yielding blocks the
  server's hub, but not the election: the interpreter hands the GIL to the
  loop's thread at every switch interval (5 ms), so heartbeats and their
  replies keep flowing. (Before, the loop lived in the server's hub too, and a
  0.3 s computation cost a leadership at an election timeout of 0.2 s.)

Greenlets of two hubs share the elector's state, so in a patched process the
primitives come from this module and work across threads: a lock or event that
a greenlet waits for yields to *its own* hub (it is woken by a callback that
the other thread schedules there with ``run_callback_threadsafe``), so waiting
for the loop's thread never blocks the server's hub, nor the reverse. They do
not rely on gevent's own cross-thread behaviour of ``gevent.lock`` and
``gevent.event``, which changed between the versions this package supports.

Every primitive the runner uses to wait or to run something in the background
comes from :class:`Runtime`, so that the two modes share all the other code.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import gevent  # type: ignore[import-untyped]
import gevent._hub_local  # type: ignore[import-untyped]
import gevent.event  # type: ignore[import-untyped]
import gevent.monkey  # type: ignore[import-untyped]

__all__ = [
    "Event",
    "HubEvent",
    "HubLock",
    "HubQueue",
    "HubWorker",
    "LoopWaker",
    "Runtime",
    "in_main_hub",
    "is_patched",
    "native_lock",
    "start_native_thread",
]

# The OS's own lock and thread start, even in a monkey-patched process (where
# ``threading.Lock`` is a gevent lock and ``threading.Thread`` a greenlet).
_allocate_lock = gevent.monkey.get_original("_thread", "allocate_lock")
_start_new_thread = gevent.monkey.get_original("_thread", "start_new_thread")
# The hub of the calling thread, or None (never creates one). gevent's own
# primitives use it; it is not exported under a public name.
_hub_if_any: Callable[[], Any] = gevent._hub_local.get_hub_if_exists

#: How much longer than its stop's deadline a stop waits for the loop's thread to
#: end (it kills its greenlets at the deadline, then closes its connections).
LOOP_THREAD_GRACE = 1.0


class Event(Protocol):
    """A ``threading.Event`` or a :class:`HubEvent`."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


def is_patched() -> bool:
    """Whether this process is monkey-patched by gevent (its sockets cooperate)."""
    return bool(gevent.monkey.is_module_patched("socket"))


def call_after_patch_all(func: Callable[[], None]) -> None:
    """Call ``func()`` once, as soon as gevent's ``monkey.patch_all()`` has patched
    this process (in the thread that patches it, at the end of the patching).

    For a process forked by a server's master before its worker patches itself
    (gunicorn ``--preload -k gevent``): what starts before the patching would
    run on the original threads and sockets while the rest of the process
    cooperates.
    """
    import gevent.events  # type: ignore[import-untyped]
    import zope.event  # type: ignore[import-untyped]

    def subscriber(event: object) -> None:
        if isinstance(event, gevent.events.GeventDidPatchAllEvent):
            with contextlib.suppress(ValueError):
                zope.event.subscribers.remove(subscriber)
            func()

    zope.event.subscribers.append(subscriber)


def native_lock() -> Any:
    """A lock of the OS, even in a monkey-patched process.

    A greenlet that waits for it blocks its whole hub: hold it only for a few
    instructions, never across I/O or anything that can switch greenlets.
    """
    return _allocate_lock()


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
    _start_new_thread(func, ())


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


def _call_in(hub: Any, func: Callable[..., object], *args: object) -> bool:
    """Run ``func(*args)`` in ``hub``: now if it is the calling thread's, else as a
    callback of that hub. False if the hub is gone (its thread ended)."""
    if hub is None:
        return False
    if _hub_if_any() is hub:
        func(*args)
        return True
    loop = hub.loop
    if loop is None:
        return False
    try:
        loop.run_callback_threadsafe(func, *args)
    except (AttributeError, ValueError):  # destroyed meanwhile
        return False
    return True


class _Wakeup:
    """One waiter, woken from any thread: a greenlet (it yields to its hub until
    woken) or a native thread without a hub (it blocks on an OS lock)."""

    __slots__ = ("_event", "_hub", "_lock")

    def __init__(self) -> None:
        self._hub = _hub_if_any()
        if self._hub is not None:
            self._event: Any = gevent.event.Event()
            self._lock: Any = None
        else:
            self._event = None
            self._lock = _allocate_lock()
            self._lock.acquire()

    def wait(self, timeout: float | None) -> None:
        if self._event is not None:
            self._event.wait(timeout)
        else:
            self._lock.acquire(True, -1 if timeout is None else max(0.0, timeout))

    def wake(self) -> None:
        if self._event is not None:
            _call_in(self._hub, self._event.set)
            return
        try:
            self._lock.release()
        except RuntimeError:  # woken twice
            pass


class _Started:
    """Set once from any thread; :meth:`wait` blocks the calling OS thread (its
    hub too): only for what takes milliseconds."""

    __slots__ = ("_flag", "_lock")

    def __init__(self) -> None:
        self._flag = False
        self._lock = _allocate_lock()
        self._lock.acquire()

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        with contextlib.suppress(RuntimeError):  # set twice
            self._lock.release()

    def wait(self, timeout: float) -> bool:
        return bool(self._lock.acquire(True, timeout))


class _LoopStart:
    """Between :meth:`Runtime.start_loop` and the loop's thread: whether the start
    still waits (under the runtime's guard), and a failure before the loop ran,
    which the start raises (once it gave up waiting, the thread reports it)."""

    __slots__ = ("error", "waiting")

    def __init__(self) -> None:
        self.waiting = True
        self.error: BaseException | None = None


class HubEvent:
    """An event set from any thread, waited for by greenlets of any hub (each
    yields to its own hub meanwhile) or by native threads. Like
    ``threading.Event``, :meth:`wait` returns the flag."""

    __slots__ = ("_flag", "_guard", "_waiters")

    def __init__(self) -> None:
        self._guard = _allocate_lock()
        self._flag = False
        self._waiters: list[_Wakeup] = []

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._guard:
            self._flag = True
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.wake()

    def clear(self) -> None:
        self._flag = False

    def set_in_child(self) -> None:
        """In a forked child: set the flag, taking no lock and waking no one (a
        thread of the parent may have held the lock at the fork; its waiters are
        gone, and those of this process are killed by whoever calls this)."""
        self._flag = True

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        if timeout is not None and timeout <= 0:
            return False
        waiter = _Wakeup()
        with self._guard:
            if self._flag:
                return True
            self._waiters.append(waiter)
        try:
            waiter.wait(timeout)
        finally:
            with self._guard:
                self._waiters.remove(waiter)
        return self._flag


class HubLock:
    """A lock for greenlets of several hubs and for native threads.

    A greenlet that finds it held yields to its own hub until the holder, in
    whatever thread, releases it: the server's hub never stops for the loop's
    thread (or the reverse), and a holder may switch greenlets or do I/O
    without deadlocking the others of its hub. Not reentrant. Uncontended, it
    costs an OS lock's acquire and release.
    """

    __slots__ = ("_guard", "_lock", "_waiters")

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        self._guard = _allocate_lock()
        self._waiters: list[_Wakeup] = []

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(False):
            return True
        if not blocking:
            return False
        deadline = None if timeout < 0 else time.monotonic() + timeout
        while True:
            waiter = _Wakeup()
            with self._guard:
                self._waiters.append(waiter)
            try:
                # After joining the waiters: a release from now on wakes us.
                if self._lock.acquire(False):
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                waiter.wait(remaining)
            finally:
                with self._guard:
                    self._waiters.remove(waiter)

    def release(self) -> None:
        self._lock.release()
        if self._waiters:
            with self._guard:
                waiters = list(self._waiters)
            for waiter in waiters:
                waiter.wake()

    def locked(self) -> bool:
        return bool(self._lock.locked())

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class HubQueue:
    """An unbounded queue: put from any thread, one consumer in any hub or thread."""

    __slots__ = ("_items", "_ready")

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._ready = HubEvent()

    def put(self, item: Any) -> None:
        self._items.append(item)
        self._ready.set()

    def get(self) -> Any:
        while True:
            try:
                return self._items.popleft()
            except IndexError:
                pass
            self._ready.clear()
            if not self._items:  # a put between popleft and clear set the flag we cleared
                self._ready.wait()

    def qsize(self) -> int:
        return len(self._items)


class HubWorker:
    """A greenlet started in a given hub from any thread; joined, and killed,
    from any thread. ``on_crash(name, exc)`` hears of an exception it dies of."""

    def __init__(
        self,
        name: str,
        hub: Any,
        func: Callable[..., object],
        args: tuple[object, ...],
        on_crash: Callable[[str, BaseException | None], None],
    ) -> None:
        self.name = name
        self.hub = hub
        self.done = HubEvent()
        self.greenlet: Any = None
        self._func = func
        self._args = args
        self._on_crash = on_crash
        self._killed = False

    def __repr__(self) -> str:
        return f"<HubWorker {self.name!r} {'done' if self.done.is_set() else 'running'}>"

    @property
    def dead(self) -> bool:
        return self.done.is_set()

    def start(self) -> None:
        if not _call_in(self.hub, self._spawn):
            self.done.set()  # the hub is gone: nothing can run there

    def _spawn(self) -> None:
        if self._killed:
            self.done.set()
            return
        greenlet = self.greenlet = gevent.spawn(self._main)
        greenlet.name = self.name
        # A link, not a ``finally``: a greenlet killed before it ran never runs _main.
        greenlet.rawlink(self._ended)

    def _main(self) -> None:
        try:
            self._func(*self._args)
        except gevent.GreenletExit:
            pass
        except BaseException as exc:  # reported, never silent
            self._on_crash(self.name, exc)

    def _ended(self, _greenlet: Any) -> None:
        self.done.set()

    def is_current(self) -> bool:
        return self.greenlet is not None and self.greenlet is gevent.getcurrent()

    def kill(self) -> None:
        """Kill it (where it runs, without waiting); it may not have started yet."""
        if not self.done.is_set():
            _call_in(self.hub, self._kill_here)

    def kill_in_child(self) -> None:
        """In a forked child: kill the copy of the greenlet that the fork made (a
        greenlet of the forking thread's hub; those of other hubs are gone), and
        keep a start still queued in that hub from running it. Takes no lock."""
        self._killed = True
        greenlet = self.greenlet
        if greenlet is not None and not greenlet.dead and _hub_if_any() is self.hub:
            greenlet.kill(block=False)

    def _kill_here(self) -> None:
        self._killed = True
        if self.greenlet is not None and not self.greenlet.dead:
            self.greenlet.kill(block=False)


class LoopWaker:
    """Wakes the election loop from any thread or greenlet.

    The loop waits on :attr:`event` in its own hub; :meth:`send` fires a gevent
    async watcher of that hub, which sets the event there (a gevent event must
    not be set from another thread). From a greenlet of the loop's own hub (a
    peer's reply that made this node leader), it sets the event at once: the
    loop then runs before the hub polls again, instead of after.
    """

    def __init__(self) -> None:
        self._lock = _allocate_lock()  # held for an assignment or a send only
        self._watcher: Any = None
        self._hub: Any = None
        self.event: Any = None

    def attach(self) -> Any:
        """Create the event and the watcher in the calling thread's hub."""
        event = gevent.event.Event()
        hub = gevent.get_hub()
        watcher = hub.loop.async_()
        watcher.start(event.set)
        with self._lock:
            self.event, self._watcher, self._hub = event, watcher, hub
        return event

    def send(self) -> None:
        with self._lock:
            if self._watcher is None:
                return
            if _hub_if_any() is self._hub:
                self.event.set()
            else:
                self._watcher.send()

    def detach(self) -> None:
        """In the thread that attached: close the watcher; later sends do nothing."""
        with self._lock:
            watcher, self._watcher, self._hub = self._watcher, None, None
        if watcher is not None:
            watcher.close()


class Runtime:
    """Where one run of an elector does its work (see the module's text).

    ``patched``: whether the process is monkey-patched. :meth:`spawn` starts
    the application's side of the work (callbacks, leader tasks): greenlets of
    the app hub (the hub of the thread that makes the runtime), or native
    threads. :meth:`spawn_io` starts calls to peers: greenlets of the loop's hub,
    or native threads. ``on_crash(name, exc)`` is called when a background
    worker dies of an exception: none dies silently.
    """

    def __init__(
        self, patched: bool, on_crash: Callable[[str, BaseException | None], None]
    ) -> None:
        self.patched = patched
        self._on_crash = on_crash
        self.app_hub: Any = gevent.get_hub() if patched else None
        self.loop_hub: Any = None
        self._loop_thread_done = HubEvent()
        self._io_guard = _allocate_lock()
        self._io_workers: list[HubWorker] = []
        self._io_closed = False

    @property
    def where(self) -> str:
        """Where the work runs, for the status: ``"thread"`` (the loop in its own
        thread, the rest in native threads) or ``"thread+hub"`` (the loop and the
        calls to peers in its own thread, callbacks and tasks in the app hub)."""
        return "thread+hub" if self.patched else "thread"

    def lock(self) -> Any:
        return HubLock() if self.patched else threading.Lock()

    def event(self) -> Event:
        event: Event = HubEvent() if self.patched else threading.Event()
        return event

    def queue(self) -> Any:
        return HubQueue() if self.patched else queue.SimpleQueue()

    def spawn(self, name: str, func: Callable[..., object], *args: object) -> Any:
        """Start ``func(*args)`` on the application's side; a crash is logged and
        recorded, never silent. From any thread."""
        if self.patched:
            worker = HubWorker(name, self.app_hub, func, args, self._on_crash)
            worker.start()
            return worker
        thread = threading.Thread(
            target=self._thread_main, args=(name, func, args), name=name, daemon=True
        )
        thread.start()
        return thread

    def spawn_io(self, name: str, func: Callable[..., object], *args: object) -> Any:
        """Start ``func(*args)``, which calls peers: beside the loop (after
        :meth:`start_loop`), or in a native thread."""
        if not self.patched:
            return self.spawn(name, func, *args)
        worker = HubWorker(name, self.loop_hub, func, args, self._on_crash)
        with self._io_guard:
            if self._io_closed:
                worker.done.set()  # the loop's thread is ending: too late to start
                return worker
            self._io_workers.append(worker)
        worker.start()
        return worker

    def start_loop(
        self,
        name: str,
        run: Callable[[Any], None],
        waker: LoopWaker,
        on_exit: Callable[[], None] | None = None,
    ) -> Any:
        """Start the election loop ``run(wake_event)`` in a native thread with a
        hub of its own, where nothing of the application runs; return its worker.

        Patched, the thread runs the calls to peers too (:meth:`spawn_io`), and
        when the loop is over it waits for them, then calls ``on_exit()`` (to
        close their connections, which belong to its hub) and ends.
        """
        # Patched, the wait blocks the server's hub (for the few milliseconds a
        # thread takes to start) rather than yield it: a request served meanwhile
        # would find the elector neither stopped nor started (the node's view of
        # a process that is still becoming its elector says term 0).
        ready: Event | _Started = threading.Event() if not self.patched else _Started()
        box: list[Any] = []
        start = _LoopStart()
        args = (name, run, waker, ready, box, on_exit, start)
        if self.patched:
            _start_new_thread(self._loop_thread_main, args)
        else:
            thread = threading.Thread(
                target=self._loop_thread_main, args=args, name=name, daemon=True
            )
            thread.start()
            box.append(thread)
        if not ready.wait(10.0):  # pragma: no cover - a hub that cannot start
            with self._io_guard:
                start.waiting = False
            raise RuntimeError(f"the election loop {name!r} did not start")
        if start.error is not None:
            # It failed before it ran: the caller's start fails with it.
            raise RuntimeError(f"the election loop {name!r} did not start") from start.error
        return box[-1]

    def _loop_thread_main(
        self,
        name: str,
        run: Callable[[Any], None],
        waker: LoopWaker,
        ready: Event | _Started,
        box: list[Any],
        on_exit: Callable[[], None] | None,
        start: _LoopStart,
    ) -> None:
        hub = None
        try:
            hub = gevent.get_hub()
            event = waker.attach()
            if self.patched:
                self.loop_hub = hub
                loop = HubWorker(name, hub, run, (event,), self._on_crash)
                loop.start()
                box.append(loop)
                ready.set()
                loop.done.wait()
                with self._io_guard:
                    self._io_closed = True
                    workers = list(self._io_workers)
                # They end at the end of their call, or are killed by the stop.
                for worker in workers:
                    worker.done.wait()
                if on_exit is not None:
                    on_exit()
            else:
                ready.set()
                greenlet = gevent.spawn(run, event)
                greenlet.link_exception(lambda g: self._on_crash(name, g.exception))
                greenlet.join()
        except BaseException as exc:  # reported, never silent
            with self._io_guard:
                handed = not ready.is_set() and start.waiting
                if handed:  # before the loop ran: start_loop raises it to the start
                    start.error = exc
            if handed:
                ready.set()
            else:
                self._on_crash(f"{name} thread", exc)
        finally:
            waker.detach()
            try:
                if hub is not None:
                    hub.destroy(destroy_loop=True)
            finally:
                self._loop_thread_done.set()

    def join_loop_thread(self, timeout: float) -> bool:
        """Patched: wait up to ``timeout`` for the loop's thread to end (True if it has)."""
        if not self.patched:
            return True
        return self._loop_thread_done.wait(max(0.0, timeout))

    def _thread_main(
        self, name: str, func: Callable[..., object], args: tuple[object, ...]
    ) -> None:
        try:
            func(*args)
        except BaseException as exc:  # a native thread must not die silently
            self._on_crash(name, exc)

    def is_current(self, worker: Any) -> bool:
        if self.patched:
            return bool(worker.is_current())
        return bool(worker is threading.current_thread())

    def join(self, worker: Any, timeout: float) -> bool:
        """Wait up to ``timeout`` for ``worker`` to end; True if it has ended."""
        if worker is None:
            return True
        if self.is_current(worker):
            return False
        if self.patched:
            return bool(worker.done.wait(max(0.0, timeout)))
        worker.join(max(0.0, timeout))
        return not worker.is_alive()

    def abandon(self, worker: Any) -> None:
        """Give up on ``worker``: a greenlet is killed, a native thread cannot be."""
        if self.patched and worker is not None and not self.is_current(worker):
            worker.kill()
