"""Tuning-free versus tuned: train small models on scikit-learn's bundled data with every step-size rule.

Used by ``rlopt bench optim`` and ``benchmarks/bench_optim_convergence.py``. The rlopt rules run with their
defaults; SGD and Adam run at every learning rate of a 7-point grid, and the best grid point is reported.
Each run records the full training loss after every epoch and the step size of every step.

This module is the command line's, not the core's: it imports scikit-learn (for the bundled datasets),
matplotlib and TensorBoard lazily, inside the functions that need them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlopt.factory import build_optimizer, closure_step, step_stats
from rlopt.optimizer import StepSizeOptimizer
from rlopt.tools.scalars import tensorboard_logger, write_scalars

__all__ = ["DATASETS", "GRIDS", "RULES", "RunResult", "Task", "compare", "load_task", "plot", "run"]

#: the rules compared at their defaults (name -> build_optimizer kwargs)
RULES: dict[str, tuple[str, dict[str, Any]]] = {
    "sls": ("sls", {}),
    "adasls": ("adasls", {}),
    "sps": ("sps", {"max_lr": 10.0}),
    "decsps": ("sps", {"mode": "dec"}),
    "ponos": ("ponos", {}),
}

#: the 7-point learning-rate grids of the tuned baselines
GRIDS: dict[str, list[float]] = {
    "sgd": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0],
    "adam": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
}


@dataclass
class Task:
    """A dataset, a model factory and a training-loss target."""

    name: str
    x: Tensor
    y: Tensor
    make_model: Callable[[], nn.Module]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    batch_size: int
    target: float


def _standardize(x: Tensor) -> Tensor:
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-8)


def load_task(name: str) -> Task:
    """``"digits"``: a 64-128-10 tanh MLP on digits; ``"breast_cancer"``: logistic regression."""
    from sklearn import datasets  # bundled data: no download

    if name == "digits":
        data = datasets.load_digits()
        x = _standardize(torch.tensor(data.data, dtype=torch.float32))
        y = torch.tensor(data.target, dtype=torch.long)
        return Task(
            name, x, y,
            lambda: nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10)),
            nn.functional.cross_entropy, batch_size=64, target=0.01,
        )
    if name == "breast_cancer":
        data = datasets.load_breast_cancer()
        x = _standardize(torch.tensor(data.data, dtype=torch.float32))
        y = torch.tensor(data.target, dtype=torch.float32)
        return Task(
            name, x, y, lambda: nn.Linear(30, 1),
            lambda out, t: nn.functional.binary_cross_entropy_with_logits(out.squeeze(-1), t),
            batch_size=32, target=0.06,
        )
    raise ValueError(f"Invalid dataset: {name!r}, expected one of {DATASETS}")


DATASETS = ("digits", "breast_cancer")


@dataclass
class RunResult:
    """One training run: full training loss per epoch (index 0 = before training) and per-step stats."""

    label: str
    losses: list[float]
    step_sizes: list[float] = field(default_factory=list)
    forward_calls: int = 0
    seconds: float = 0.0
    diverged: bool = False

    def epochs_to(self, target: float) -> float:
        """First epoch whose training loss is at most ``target`` (inf if never)."""
        for epoch, loss in enumerate(self.losses):
            if loss <= target:
                return float(epoch)
        return math.inf


def run(
    task: Task,
    optimizer: str,
    kwargs: dict[str, Any],
    *,
    epochs: int,
    seed: int,
    label: str | None = None,
    logger: Any = None,
) -> RunResult:
    """Train ``task`` with one optimizer for ``epochs`` epochs of shuffled minibatches."""
    torch.manual_seed(seed)
    model = task.make_model()
    n = task.x.shape[0]
    kwargs = dict(kwargs)
    if optimizer in ("sls", "adasls"):
        kwargs.setdefault("n_batches_per_epoch", math.ceil(n / task.batch_size))
    opt = build_optimizer(optimizer, model.parameters(), **kwargs)
    gen = torch.Generator().manual_seed(seed)
    result = RunResult(label or optimizer, [])

    def full_loss() -> float:
        with torch.no_grad():
            return float(task.loss_fn(model(task.x), task.y))

    result.losses.append(full_loss())
    start = time.perf_counter()
    step = 0
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(task.batch_size):
            xb, yb = task.x[idx], task.y[idx]

            def closure(xb: Tensor = xb, yb: Tensor = yb) -> Tensor:
                return task.loss_fn(model(xb), yb)

            closure_step(opt, closure)
            stats = step_stats(opt)
            result.step_sizes.append(stats.step_size)
            result.forward_calls += int(stats.forward_calls)
            if logger is not None and isinstance(opt, StepSizeOptimizer):
                write_scalars(logger, {f"{result.label}/{key}": float(opt.stats[key]) for key in
                                       ("step_size", "backtracks", "loss", "grad_norm", "forward_calls")}, step)
            step += 1
        loss_now = full_loss()
        result.losses.append(loss_now)
        if logger is not None:
            write_scalars(logger, {f"{result.label}/train_loss": loss_now}, len(result.losses) - 1)
        if not math.isfinite(loss_now):
            result.diverged = True
            break
    result.seconds = time.perf_counter() - start
    return result


def compare(
    task_names: tuple[str, ...] = DATASETS,
    *,
    epochs: int = 30,
    seeds: tuple[int, ...] = (0,),
    log_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, dict[str, list[RunResult]]]:
    """Every rule at defaults and every baseline grid point, on each task and seed.

    Returns ``{task: {label: [RunResult per seed]}}`` with labels ``"sls"``, ... and ``"sgd lr=0.1"``, ...
    """
    configs: list[tuple[str, str, dict[str, Any]]] = [(k, name, kw) for k, (name, kw) in RULES.items()]
    for base, grid in GRIDS.items():
        configs += [(f"{base} lr={lr:g}", base, {"lr": lr}) for lr in grid]
    total = len(task_names) * len(configs) * len(seeds)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="bench optim", unit="run")
    out: dict[str, dict[str, list[RunResult]]] = {}
    for task_name in task_names:
        task = load_task(task_name)
        out[task_name] = {}
        logger = tensorboard_logger(Path(log_dir) / task_name) if log_dir is not None else None
        for label, name, kwargs in configs:
            out[task_name][label] = []
            for seed in seeds:
                out[task_name][label].append(
                    run(task, name, kwargs, epochs=epochs, seed=seed, label=label,
                        logger=logger if seed == seeds[0] else None)
                )
                if bar is not None:
                    bar.update(1)
        if logger is not None:
            logger.close()
    if bar is not None:
        bar.close()
    return out


def best_of_grid(results: dict[str, list[RunResult]], base: str, target: float) -> str:
    """Label of the grid point of ``base`` reaching ``target`` fastest (then: lowest final loss)."""
    labels = [label for label in results if label.startswith(base + " ")]

    def key(label: str) -> tuple[float, float]:
        runs = results[label]
        epochs = sorted(r.epochs_to(target) for r in runs)[len(runs) // 2]
        final = sorted(r.losses[-1] if math.isfinite(r.losses[-1]) else math.inf for r in runs)[len(runs) // 2]
        return epochs, final

    return min(labels, key=key)


def summary_rows(results: dict[str, dict[str, list[RunResult]]]) -> list[dict[str, Any]]:
    """One row per task and (rule or best baseline): median epochs to target, final loss, cost."""
    rows = []
    for task_name, by_label in results.items():
        target = load_task(task_name).target
        chosen = list(RULES) + [best_of_grid(by_label, base, target) for base in GRIDS]
        for label in chosen:
            runs = by_label[label]
            mid = len(runs) // 2
            rows.append({
                "task": task_name,
                "optimizer": label,
                "target": target,
                "epochs_to_target": sorted(r.epochs_to(target) for r in runs)[mid],
                "final_loss": sorted(r.losses[-1] for r in runs)[mid],
                "fwd_per_step": sum(r.forward_calls / max(len(r.step_sizes), 1) for r in runs) / len(runs),
                "seconds": sorted(r.seconds for r in runs)[mid],
                "grid_runs": 1 if label in RULES else len(GRIDS[label.split()[0]]),
            })
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`summary_rows`."""
    header = (f"{'task':<14} {'optimizer':<16} {'target':>7} {'epochs':>7} {'final loss':>11} "
              f"{'fwd/step':>8} {'s/run':>6} {'runs to tune':>12}")
    lines = [header, "-" * len(header)]
    for r in rows:
        epochs = "never" if math.isinf(r["epochs_to_target"]) else f"{r['epochs_to_target']:.0f}"
        lines.append(
            f"{r['task']:<14} {r['optimizer']:<16} {r['target']:>7g} {epochs:>7} {r['final_loss']:>11.3e} "
            f"{r['fwd_per_step']:>8.2f} {r['seconds']:>6.2f} {r['grid_runs']:>12}"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict[str, list[RunResult]]], path: str | Path) -> Path:
    """Training loss per epoch and step size per step, one column per task; returns the PNG path."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figure list stay untouched

    tasks = list(results)
    fig = Figure(figsize=(6.5 * len(tasks), 8))
    axes = fig.subplots(2, len(tasks), squeeze=False)
    colors = matplotlib.colormaps["tab10"]
    for col, task_name in enumerate(tasks):
        by_label = results[task_name]
        target = load_task(task_name).target
        labels = list(RULES) + [best_of_grid(by_label, base, target) for base in GRIDS]
        ax_loss, ax_step = axes[0][col], axes[1][col]
        for i, label in enumerate(labels):
            run0 = by_label[label][0]
            style = "--" if label not in RULES else "-"
            name = label + (" (best of grid)" if label not in RULES else "")
            ax_loss.semilogy(range(len(run0.losses)), run0.losses, style, color=colors(i), label=name, lw=1.8)
            steps = torch.tensor(run0.step_sizes)
            window = max(1, len(steps) // 200)
            smooth = steps[: len(steps) // window * window].reshape(-1, window).mean(1)
            ax_step.semilogy(torch.arange(len(smooth)) * window, smooth, style, color=colors(i), lw=1.4)
        ax_loss.axhline(target, color="grey", lw=0.8, ls=":")
        ax_loss.set_title(f"{task_name}: full training loss", loc="left", fontsize=11)
        ax_loss.set_xlabel("epoch")
        ax_loss.legend(frameon=False, fontsize=8)
        ax_step.set_title(f"{task_name}: step size (learning rate)", loc="left", fontsize=11)
        ax_step.set_xlabel("step")
        for ax in (ax_loss, ax_step):
            ax.spines[["top", "right"]].set_visible(False)
            ax.grid(alpha=0.25, lw=0.5)
    fig.suptitle("Tuning-free step sizes at their defaults vs SGD/Adam at the best of a 7-point grid",
                 x=0.01, ha="left", fontsize=12)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
