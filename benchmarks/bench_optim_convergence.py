"""Convergence without tuning on data shipped with scikit-learn, and separable logistic regression.

    python benchmarks/bench_optim_convergence.py [--epochs 20] [--seeds 0 1 2] [--out runs/bench_optim_full]

Part 1 (``rlopt.tools.compare``): a digits MLP and a breast-cancer logistic regression. Every rlopt rule at its
defaults against SGD and Adam at the best of a 7-point learning-rate grid: median epochs to a target training
loss over seeds, the final loss, forward passes per step, and the number of runs tuning needed.
Part 2: separable logistic regression (generated, no finite minimiser): how far each line search drives the
training loss in a fixed budget of epochs, at defaults, against SGD at its best grid learning rate.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from rlopt.tools import compare


def separable_logistic(epochs: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    n, d = 500, 20
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, generator=g) > 0).float()
    task = compare.Task("separable", x, y, lambda: nn.Linear(d, 1),
                        lambda out, t: nn.functional.binary_cross_entropy_with_logits(out.squeeze(-1), t),
                        batch_size=50, target=1e-3)
    checkpoints = [1, epochs // 10, epochs // 2, epochs]
    print(f"\nseparable logistic regression (n={n}, d={d}, batch 50): full training loss after k epochs")
    print(f"{'optimizer':<14}" + "".join(f"{'k=' + str(k):>11}" for k in checkpoints))
    configs = [("sls", "sls", {}), ("sls c=0.5", "sls", {"c": 0.5}), ("sls max_lr=10", "sls", {"max_lr": 10.0}),
               ("ponos", "ponos", {}), ("adasls", "adasls", {}), ("sps", "sps", {"max_lr": 10.0})]
    best_sgd = None
    for lr in compare.GRIDS["sgd"]:
        r = compare.run(task, "sgd", {"lr": lr}, epochs=epochs, seed=seed, label=f"sgd lr={lr:g}")
        if best_sgd is None or r.losses[-1] < best_sgd.losses[-1]:
            best_sgd = r
    print("(sls at the reference defaults c=0.1 and no cap grows its step without bound on separable data;")
    print(" c=0.5, the constant of the convergence theorem, or a cap keep the loss decreasing)")
    for label, name, kwargs in configs:
        r = compare.run(task, name, kwargs, epochs=epochs, seed=seed, label=label)
        print(f"{label:<14}" + "".join(f"{r.losses[k]:>11.2e}" for k in checkpoints)
              + f"   max step {max(r.step_sizes):.3g}")
    assert best_sgd is not None
    print(f"{best_sgd.label + ' (best)':<14}" + "".join(f"{best_sgd.losses[k]:>11.2e}" for k in checkpoints))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--separable-epochs", type=int, default=100)
    parser.add_argument("--out", default="runs/bench_optim_full")
    args = parser.parse_args()
    results = compare.compare(compare.DATASETS, epochs=args.epochs, seeds=tuple(args.seeds), progress=False)
    rows = compare.summary_rows(results)
    print(compare.format_rows(rows))
    print(f"\nplot: {compare.plot(results, f'{args.out}/bench_optim.png')}")
    for task_name in compare.DATASETS:
        grid_total = sum(sum(r.seconds for r in results[task_name][label])
                         for label in results[task_name] if label.split()[0] in compare.GRIDS)
        rule_mean = sum(sum(r.seconds for r in results[task_name][label]) for label in compare.RULES) / len(
            compare.RULES)
        print(f"{task_name}: tuning SGD+Adam over their grids cost {grid_total:.1f} s; "
              f"one rlopt rule run costs {rule_mean:.1f} s on average ({grid_total / rule_mean:.1f}x less)")
    separable_logistic(args.separable_epochs)
    assert all(math.isfinite(r["final_loss"]) for r in rows)


if __name__ == "__main__":
    main()
