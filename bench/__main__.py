"""``python -m bench``: the benchmark suite.

For 3 and 5 nodes, the election workload (cold start, failover after SIGKILL of
the leader, idle CPU) on flask-goelect and on pysyncobj at the same timeouts
(election timeout 200 ms, heartbeat 50 ms), part by part in one invocation,
with the ratio ours / theirs per figure; flask-goelect's hand-over after SIGTERM
and ``@elect.leader_only`` overhead; then 5 voters + 45 observers of the example
app (election timeout 2000 ms, heartbeat 200 ms) watched for 60 s. Prints the
tables and the targets; writes one JSON file and a PNG histogram of the
failover times to ``bench/results/``.

``--quick`` is the CI smoke run (every code path, few rounds, under 3 minutes
on 2 CPUs: 142 s measured); the full run about 10 minutes. pysyncobj and matplotlib come
with ``pip install -e '.[bench]'``; without them their parts are skipped with a
note. The exit status is 1 if a round failed or the scale run saw an election
after the first; a target not met is reported, not an error.
"""

from __future__ import annotations

import argparse
import sys

from bench.suite import SuiteConfig, format_report, run_suite, write_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[1].replace("\n", " ")
    )
    parser.add_argument("--quick", action="store_true", help="few rounds (CI smoke run)")
    parser.add_argument("--no-pysyncobj", action="store_true", help="do not compare")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale run")
    parser.add_argument(
        "--sizes",
        default=None,
        metavar="N:ROUNDS,...",
        help="cluster sizes and their rounds (default 3:30,5:20; --quick 3:5,5:3)",
    )
    parser.add_argument(
        "--steady",
        type=float,
        default=None,
        metavar="S",
        help="fail over also after S seconds of steady leadership (default 10; --quick 4; 0: not)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    config = SuiteConfig.quick_run() if args.quick else SuiteConfig()
    if args.steady is not None:
        if args.steady < 0:
            parser.error("--steady must be 0 or more seconds")
        config.steady = args.steady
    if args.sizes:
        try:
            pairs = [item.split(":") for item in args.sizes.split(",")]
            config.sizes = {int(n): int(r) for n, r in pairs}
        except ValueError:
            parser.error(f"--sizes must look like 3:30,5:20, not {args.sizes!r}")
        if any(n < 2 or r < 1 for n, r in config.sizes.items()):
            parser.error("--sizes needs at least 2 nodes and 1 round per size")
    config.pysyncobj = not args.no_pysyncobj
    if args.no_scale:
        config.scale = None
    config.verbose = not args.quiet
    report = run_suite(config)
    paths = write_suite(report)
    print(format_report(report))
    for path in paths:
        print(f"written: {path}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
