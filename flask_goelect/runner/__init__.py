"""The runner: the only gevent code. It drives the election core with real time and peers.

* :mod:`.runtime`: where work runs (the loop in a native thread with a hub of
  its own; in a monkey-patched process the calls to peers there too, callbacks
  and leader tasks in the server's hub; else native threads);
* :mod:`.senders`: one mailbox and one sender per peer;
* :mod:`.callbacks`: the state-change callbacks, off the loop and bounded;
* :mod:`.tasks`: leader tasks and their :class:`LeaderContext`;
* :mod:`.publish`: the snapshot readers see, its waiters and listeners;
* :mod:`.elector`: the :class:`Elector` itself (lifecycle, stepping the core,
  persisting before publishing, the loop).
"""

from __future__ import annotations

from .elector import Elector, forget_electors_after_fork
from .tasks import LeaderContext, TaskFunc

__all__ = ["Elector", "LeaderContext", "TaskFunc", "forget_electors_after_fork"]
