"""A PNG of evaluation accuracy over training for ReMA and its single-agent baselines."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_accuracy"]


def plot_accuracy(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    path: str | os.PathLike[str],
    x: str = "samples",
) -> Path:
    """Plot greedy accuracy (solid: in-distribution, dashed: out-of-distribution) against ``x``.

    Args:
        histories: run name -> :attr:`ReMA.history` rows (keys ``update``, ``samples``, ``tokens``,
            ``accuracy``, ``ood_accuracy``).
        path: the PNG to write (parent directories are created).
        x: ``"samples"`` (reasoner samples), ``"tokens"`` (generated tokens) or ``"update"``.

    Raises:
        ValueError: on an unknown ``x`` or when no run has an accuracy to plot.
    """
    if x not in ("samples", "tokens", "update"):
        raise ValueError(f"Invalid x: {x!r}, expected 'samples', 'tokens' or 'update'")
    if not any(any("accuracy" in row for row in rows) for rows in histories.values()):
        raise ValueError("Invalid histories: no run has an evaluated accuracy to plot")
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figure list stay untouched

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for i, (name, rows) in enumerate(histories.items()):
        color = f"C{i}"
        for key, style, suffix in (("accuracy", "-", ""), ("ood_accuracy", "--", " (OOD)")):
            points = [(row[x], row[key]) for row in rows if key in row]
            if points:
                ax.plot(*zip(*points, strict=True), style, color=color, marker="o", markersize=3,
                        label=name + suffix)
    ax.set_xlabel({"samples": "reasoner samples", "tokens": "generated tokens", "update": "RL updates"}[x])
    ax.set_ylabel("greedy accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
