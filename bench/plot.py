"""Histograms of failover times, one panel per system and cluster size (matplotlib, Agg)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["available", "failover_histogram"]


def available() -> bool:
    """Whether matplotlib is installed (``pip install -e '.[bench]'``)."""
    return importlib.util.find_spec("matplotlib") is not None


def _samples(run: dict[str, Any], key: str) -> list[float]:
    for figure in run["figures"]:
        if figure.get("key") == key:
            return list(figure["samples"])
    return []


def failover_histogram(
    runs: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    key: str = "failover",
    title: str = "Time without a leader after SIGKILL of the leader",
) -> None:
    """Write a PNG of the ``key`` samples of ``runs`` (results of :func:`bench.election.run`).

    One row per system, one column per cluster size, the same bins and axes in
    every panel; each panel marks its median, and the 1.5 x election timeout bound.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    systems = list(dict.fromkeys(r["system"] for r in runs))
    sizes = sorted({r["config"]["nodes"] for r in runs})
    by_cell = {(r["system"], r["config"]["nodes"]): r for r in runs}
    values = [v for r in runs for v in _samples(r, key)]
    top = max(values, default=1.0)
    width = 10.0 if top <= 1500 else 50.0  # ms per bin
    bins = [i * width for i in range(int(top // width) + 2)]

    fig, axes = plt.subplots(
        len(systems),
        len(sizes),
        figsize=(4.8 * len(sizes), 2.6 * len(systems) + 0.6),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    colors = {"flask-goelect": "tab:blue", "pysyncobj": "tab:orange"}
    for row, system in enumerate(systems):
        for col, size in enumerate(sizes):
            ax = axes[row][col]
            run = by_cell.get((system, size))
            samples = _samples(run, key) if run is not None else []
            if samples:
                ax.hist(samples, bins=bins, color=colors.get(system, "tab:gray"), alpha=0.85)
                ordered = sorted(samples)
                median = ordered[len(ordered) // 2]
                if len(ordered) % 2 == 0:
                    median = (ordered[len(ordered) // 2 - 1] + median) / 2
                ax.axvline(median, color="black", linewidth=1.2)
                ax.text(
                    0.98,
                    0.95,
                    f"median {median:.0f} ms\nn = {len(samples)}",
                    transform=ax.transAxes,
                    ha="right",
                    va="top",
                    fontsize=9,
                )
            else:
                ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center")
            if run is not None:
                bound = 1.5 * run["config"]["elect_timeout_ms"]
                ax.axvline(bound, color="red", linestyle="--", linewidth=1)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{system}, {size} nodes", fontsize=10)
            if col == 0:
                ax.set_ylabel("rounds")
            if row == len(systems) - 1:
                ax.set_xlabel("ms without a leader")
    timeouts = sorted({r["config"]["elect_timeout_ms"] for r in runs})
    fig.suptitle(
        f"{title}\n(election timeout {', '.join(map(str, timeouts))} ms; black: median,"
        " red dashed: 1.5 x election timeout)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
