"""The model-pace plots: p99 pace and delivery lag by N (steady state, bursts beside), and the
lag over time (by second of arrival) of the steady steps and the bursts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.pace.results import BUILD_LABELS, R, current_builds, databases_run, pace_results


def by_n(results: R, directory: Path, plt: Any) -> str | None:
    series = [
        (f"{db.get('label', key)}, {BUILD_LABELS.get(bkey, bkey)}", b)
        for key, db in databases_run(pace_results(results))
        for bkey, b in (db.get("builds") or {}).items()
        if b.get("sweep")
    ]
    if not series:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for i, (name, build) in enumerate(series):
        color = f"C{i}"
        steps = build["sweep"]
        xs = [s["n"] for s in steps]
        left.plot(xs, [s["pace_rows"]["p99"] for s in steps], "-o", color=color, label=name)
        right.plot(xs, [s["lag"]["p99_ms"] for s in steps], "-o", color=color, label=name)
        bursts = build.get("bursts") or []
        if bursts:
            right.plot(
                [s["n"] for s in bursts],
                [s["lag"]["p99_ms"] for s in bursts],
                ":x",
                color=color,
                label=f"{name}: burst, its first seconds",
            )
    left.axhline(1.1, color="tab:red", ls="--", lw=1, label="target 1.1")
    right.axhline(100, color="tab:red", ls="--", lw=1, label="target 100 ms")
    for ax, label in (
        (left, "p99 pace, steady state (duration / the generator's own)"),
        (right, "delivery lag p99, ms"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("answers open at once")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Streaming at a model's pace ({results['machine']['date'][:10]})", fontsize=10)
    fig.tight_layout()
    path = directory / "bench-model-pace.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def over_time(results: R, directory: Path, plt: Any) -> str | None:
    """One panel per database: the lag p99 of each second, steady steps and bursts by N."""
    panels = [(db, b) for _k, db, b in current_builds(pace_results(results)) if b.get("sweep")]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), dpi=110)
    axes = axes if len(panels) > 1 else [axes]
    for ax, (db, build) in zip(axes, panels, strict=True):
        for i, step in enumerate(build["sweep"]):
            _line(ax, step, f"C{i}", "-", f"steady {step['n']:,}")
        for i, step in enumerate(build.get("bursts") or []):
            _line(ax, step, f"C{i}", ":", f"burst {step['n']:,}")
        first = build["sweep"][0]["window"]
        ax.axvspan(first["start_s"], first["end_s"], color="gray", alpha=0.12, lw=0)
        ax.set_yscale("log")
        ticker = plt.matplotlib.ticker
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _p: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("second of the step (the steady steps' window shaded)")
        ax.set_ylabel("delivery lag p99 of the deltas of that second, ms")
        ax.set_title(db.get("label", "?"), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(
        f"Delivery lag over time: steady state against a burst ({results['machine']['date'][:10]})",
        fontsize=10,
    )
    fig.tight_layout()
    path = directory / "bench-model-pace-lag.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def _line(ax: Any, step: R, color: str, style: str, label: str) -> None:
    rows = [r for r in step.get("lag_by_second") or [] if r[3] is not None and r[3] > 0]
    ax.plot([r[0] + 0.5 for r in rows], [r[3] for r in rows], style, color=color, label=label)
