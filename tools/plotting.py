"""Plot TensorBoard scalars of a run directory (used by ``rlopt plot``; imports tensorboard lazily)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

__all__ = ["plot_run", "read_scalars"]


def read_scalars(run_dir: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{run: {tag: [(step, value), ...]}}`` for every event file under ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(run_dir)
    if not root.exists():
        raise FileNotFoundError(f"run_dir does not exist: {root}")
    files = sorted(root.rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {root}")
    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(dict)
    for file in files:
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
        acc.Reload()
        run = str(file.parent.relative_to(root)) or "."
        for tag in acc.Tags()["scalars"]:
            points = out[run].setdefault(tag, [])
            points.extend((e.step, e.value) for e in acc.Scalars(tag))
    return dict(out)


def plot_run(run_dir: str | Path, out: str | Path | None = None, tags: list[str] | None = None) -> Path:
    """One panel per scalar tag, one line per run; returns the PNG path."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figure list stay untouched

    data = read_scalars(run_dir)
    all_tags = sorted({t for by_tag in data.values() for t in by_tag})
    if tags:
        unknown = sorted(set(tags) - set(all_tags))
        if unknown:
            raise ValueError(f"Invalid tags: {unknown}, expected some of {all_tags}")
        all_tags = [t for t in all_tags if t in tags]
    cols = min(3, len(all_tags))
    rows = math.ceil(len(all_tags) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, tag in zip(axes.flat, all_tags, strict=False):
        for run, by_tag in sorted(data.items()):
            if tag in by_tag:
                steps, values = zip(*sorted(by_tag[tag]), strict=True)
                ax.plot(steps, values, lw=1.4, label=run)
        ax.set_title(tag, loc="left", fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(alpha=0.25, lw=0.5)
        if len(data) > 1:
            ax.legend(frameon=False, fontsize=7)
    for ax in list(axes.flat)[len(all_tags):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(out) if out is not None else Path(run_dir) / "scalars.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
