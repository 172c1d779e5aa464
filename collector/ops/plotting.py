"""``runlab report --plot``: a PNG to look at instead of read — start-time distributions, memory, latency.

matplotlib (the ``plot`` extra) is imported here only, with the Agg backend: no display needed, and the
agent never pays for it. Panels: cold-start distributions per node × variant (box plus every sample as a
dot), idle PSS bars on a log axis with each value written on its bar (0.7 MiB stays visible beside 182 MiB),
and latency CDFs drawn from each load phase's whole histogram (the summary percentiles only where a run has
none).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from collector.ops.link import OpsError
from runlab.report import cells
from runlab.results import ExperimentResult, VariantResult

_PERCENTILES = (("min", 0.0), ("median", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))


def _label(v: VariantResult, multi_node: bool) -> str:
    return f"{v.node}\n{v.name}" if multi_node else v.name


def plot_results(results: Sequence[ExperimentResult], out: str) -> tuple[int, int]:
    """Draw ``results`` into the PNG ``out``; its (width, height) in pixels."""
    try:
        import matplotlib
    except ImportError:
        if getattr(sys, "frozen", False):  # the runlab-collector .deb: its bundle leaves matplotlib out
            raise OpsError("--plot needs matplotlib, which the runlab-collector package does not bundle: run "
                           "this report from a source install (pipx install '.[plot]' in a runlab checkout), "
                           "or use --format markdown / json here") from None
        raise OpsError("--plot needs matplotlib: pip install 'runlab[plot]' (in a runlab checkout: "
                       "pip install '.[plot]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for r in results for v in r.variants]
    multi = len({v.node for v in variants}) > 1
    starts = [v for v in variants if v.startup_ms is not None and v.startup_ms.samples]
    memory = [v for v in variants if v.footprint is not None]
    loads = [(v, lf) for v in variants for lf in v.load if lf.latency_ms is not None]
    panels = 1 + bool(memory) + bool(loads)
    fig, axes = plt.subplots(panels, 1, figsize=(max(7.0, 1.3 * len(variants) + 3), 4.2 * panels), squeeze=False)
    ax = axes[0][0]
    title = " · ".join(dict.fromkeys(f"{r.experiment} run {r.run}" for r in results))
    if starts:
        data = [v.startup_ms.samples for v in starts if v.startup_ms is not None]
        ax.boxplot(data, showfliers=False)
        for i, xs in enumerate(data, start=1):
            jitter = [i + ((k % 7) - 3) * 0.03 for k in range(len(xs))]
            ax.plot(jitter, xs, "o", markersize=3, alpha=0.6)
        ax.set_xticks(range(1, len(starts) + 1), [_label(v, multi) for v in starts])
        if max(max(d) for d in data) / max(min(min(d) for d in data), 1e-9) > 50:
            ax.set_yscale("log")
        ax.set_ylabel("cold start (ms)")
    else:
        ax.text(0.5, 0.5, "no cold starts recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"{title}\ncold start: start issued → first probe success (warm-up excluded)", fontsize=10)
    row = 1
    if memory:
        ax = axes[row][0]
        row += 1
        mib = [max((v.footprint.pss_bytes if v.footprint else 0) / 2**20, 1e-3) for v in memory]
        bars = ax.bar(range(len(memory)), mib, color="tab:orange")
        ax.set_yscale("log")  # linear, 0.7 MiB beside 182 MiB is an invisible sliver
        ax.set_ylim(min(mib) / 2, max(mib) * 3)
        ax.bar_label(bars, [cells.size(v.footprint.pss_bytes if v.footprint else None) for v in memory],
                     padding=2, fontsize=8)
        ax.set_xticks(range(len(memory)), [_label(v, multi) for v in memory])
        ax.set_ylabel("idle PSS (MiB, log scale)")
        ax.set_title("memory the runtime added, idle after settling (PSS)", fontsize=10)
    if loads:
        ax = axes[row][0]
        for v, lf in loads:
            f = lf.latency_ms
            assert f is not None
            label = f"{v.node}/{v.name} ({lf.mode})" if multi else f"{v.name} ({lf.mode})"
            h = lf.distribution()
            if h is not None and h.count:
                cdf = h.cdf()
                ax.step([h.lo, *(x for x, _ in cdf)], [0.0, *(q for _, q in cdf)], where="post", label=label)
            else:  # an old run without a histogram: through its summary percentiles
                xs = [float(getattr(f, k)) for k, _ in _PERCENTILES]
                ax.plot(xs, [q for _, q in _PERCENTILES], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of requests ≤ x")
        ax.set_title("request latency under load (CDF of every request, from the histograms)", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=100, format="png")
    except OSError as e:
        raise OpsError(f"cannot write {out}: {e.strerror}") from None
    width, height = fig.canvas.get_width_height()
    plt.close(fig)
    return int(width), int(height)
