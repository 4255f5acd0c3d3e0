"""The process harness of flask-goelect's system tests and benchmarks.

Real nodes in real processes on this machine, and the means to hurt them and to
judge what they did. It is not part of the flask-goelect package: it is not
installed with it (``pyproject.toml`` ships ``flask_goelect`` only) and is
imported from the repository root, as ``tests/`` and ``bench/`` do (pytest's
``pythonpath = ["."]``; ``python -m bench`` from the root).

* :mod:`goelect_harness.cluster`: :class:`~goelect_harness.cluster.LocalCluster`
  starts, watches, signals and stops example-app nodes (or another program's, by
  its hooks), each a process of its own on loopback; ``free_ports`` and
  ``process_cpu_seconds`` beside it.
* :mod:`goelect_harness.faultproxy`: a TCP proxy with one port per directed link
  between two nodes, which resets, black-holes, delays or cuts any one of them.
* :mod:`goelect_harness.faults`: a cluster behind that proxy
  (:class:`~goelect_harness.faults.FaultCluster`), the monitor that records
  what every process said, the checks (the ledger, one vote per term, terms
  never backwards, durability), the fault scenarios' rounds and their report.
* :mod:`goelect_harness.netns`: the same nodes, each in a network namespace of
  its own (Linux, root), partitioned by the kernel.
* :mod:`goelect_harness.helpers`: ``free_port`` and ``wait_until``, shared with
  the in-process tests.

Every process is signalled by its own PID, never by name; every wait is bounded.
"""
