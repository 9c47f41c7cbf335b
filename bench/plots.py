"""PNG plots for docs/benchmarks.md, drawn with matplotlib's Agg backend (no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

__all__ = ["bars", "latency_lines", "paired_bars", "series", "simple_bars"]

COLOURS = {
    "direct": "#7f7f7f",
    "nobusy": "#1f77b4",
    "litellm": "#d62728",
    "workers=1": "#1f77b4",
    "workers=2": "#2ca02c",
    "llama-cpp-python": "#7f7f7f",
}
_MODES = ((False, "non-streaming"), (True, "streaming"))


def _colour(name: str, index: int) -> str:
    return COLOURS.get(name, f"C{index}")


def _save(fig: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def latency_lines(rows: list[dict[str, Any]], paths: list[str], title: str, out: Path) -> None:
    """p50 (solid) and p99 (dashed) latency against concurrency, one panel per mode."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (stream, mode) in zip(axes, _MODES, strict=True):
        for i, path in enumerate(paths):
            mine = [r for r in rows if r["path"] == path and r["stream"] == stream]
            mine = [r for r in mine if r["p50_ms"] is not None]
            if not mine:
                continue
            xs = [r["concurrency"] for r in mine]
            colour = _colour(path, i)
            ax.plot(xs, [r["p50_ms"] for r in mine], "o-", color=colour, label=f"{path} p50")
            ax.plot(xs, [r["p99_ms"] for r in mine], "x--", color=colour, label=f"{path} p99")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted({r["concurrency"] for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrent connections")
        ax.set_title(mode)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency (ms, log scale)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, out)


def bars(
    rows: list[dict[str, Any]],
    paths: list[str],
    title: str,
    out: Path,
    value: str = "rps",
    ylabel: str = "requests/s",
    annotate: str | None = None,
    annotate_paths: tuple[str, ...] = (),
    log: bool = False,
) -> None:
    """Grouped bars of ``value`` per concurrency, one panel per mode; ``annotate`` names a
    field (a ratio) written above the bars of ``annotate_paths``; ``log``: log-scale y."""
    modes = [m for m in _MODES if any(r["stream"] == m[0] for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
    width = 0.8 / max(len(paths), 1)
    for ax, (stream, mode) in zip(axes[0], modes, strict=True):
        levels = sorted({r["concurrency"] for r in rows if r["stream"] == stream})
        for i, path in enumerate(paths):
            xs, ys, notes = [], [], []
            for j, level in enumerate(levels):
                for r in rows:
                    if (r["path"], r["stream"], r["concurrency"]) == (path, stream, level):
                        if r.get(value) is not None:
                            xs.append(j + (i - (len(paths) - 1) / 2) * width)
                            ys.append(r[value])
                            wanted = annotate is not None and path in annotate_paths
                            notes.append(r.get(annotate) if annotate and wanted else None)
            drawn = ax.bar(xs, ys, width, label=path, color=_colour(path, i))
            for bar, note in zip(drawn, notes, strict=True):
                if note is not None:
                    ax.annotate(
                        f"{note:.1f}×",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        ax.set_xticks(range(len(levels)), [f"c={c}" for c in levels])
        ax.set_title(mode)
        ax.set_ylabel(ylabel + (" (log scale)" if log else ""))
        if log:
            ax.set_yscale("log")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, out)


def series(
    xs: list[float], ys: list[float], xlabel: str, ylabel: str, title: str, out: Path
) -> None:
    """One line, e.g. RSS over time."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(xs, ys, "-", color=COLOURS["nobusy"])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    low, high = min(ys, default=0), max(ys, default=1)
    ax.set_ylim(max(0.0, low - 10), high + 10)
    _save(fig, out)


def simple_bars(labels: list[str], values: list[float], ylabel: str, title: str, out: Path) -> None:
    """A few bars with their value on top."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    drawn = ax.bar(labels, values, color=[_colour(label, i) for i, label in enumerate(labels)])
    for bar, v in zip(drawn, values, strict=True):
        ax.annotate(
            f"{v:,.1f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    _save(fig, out)


def paired_bars(
    labels: list[str],
    groups: dict[str, list[float | None]],
    ylabel: str,
    title: str,
    out: Path,
    target: float | None = None,
) -> None:
    """Bars side by side per label, one colour per group, values on top; ``target`` draws a
    dashed horizontal line (a ratio of 1, say)."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / max(len(groups), 1)
    for i, (name, values) in enumerate(groups.items()):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(labels))]
        shown = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        drawn = ax.bar([x for x, _ in shown], [v for _, v in shown], width, label=name,
                       color=f"C{i}")  # fmt: skip
        for bar, (_, v) in zip(drawn, shown, strict=True):
            ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
    if target is not None:
        ax.axhline(target, color="#444", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out)
