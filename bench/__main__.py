"""``python -m bench``: the benchmark suite.

``python -m bench --quick`` is a short run for CI smoke use (5 rounds, 10 s
idle; about 40 s on a 2-CPU machine); without ``--quick`` it is the full run of
:mod:`bench.election` (20 rounds, 20 s idle; about two minutes).
"""

from __future__ import annotations

import argparse
import sys

from bench.election import BenchConfig, report, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few rounds only (CI smoke run)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    config = BenchConfig(nodes=args.nodes, verbose=not args.quiet)
    if args.quick:
        config.rounds = 5
        config.idle_seconds = 10.0
        config.overhead_calls = 100_000
    return report(run(config), args.json)


if __name__ == "__main__":
    sys.exit(main())
