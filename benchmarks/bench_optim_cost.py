"""Cost per step of the rlopt optimizers against torch.optim.SGD and Adam on MLPs (wall time, forward calls).

    python benchmarks/bench_optim_cost.py [--steps 300] [--warmup 50] [--repeats 5]
        [--labels teacher|random] [--threads N]

Prints, per model, the median time per step over repeats and the ratio to SGD measured in the same run, the
same for the best (least) time over repeats (machine noise only ever adds time, so on a shared machine the
best-of-repeats ratio is the steadier estimate of the cost), and the average number of forward passes per
step. Target: SLS (reset "increase") and PoNoS at most 1.5x SGD.
The row ``floor`` is an SGD step plus one extra no-grad forward on the same minibatch: the least any line
search that evaluates one trial can cost, measured in the same run.
``--labels teacher`` (default) labels the inputs with a fixed random teacher network, a learnable task as in
training; ``--labels random`` gives labels no model can fit (the searches backtrack more there).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import report
import torch
from torch import nn

import rlopt

MODELS = {
    "mlp-64-256-256-10 (b=128)": ((64, 256, 256, 10), 128),
    "mlp-784-512-512-10 (b=256)": ((784, 512, 512, 10), 256),
}

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
    "floor": lambda p: torch.optim.SGD(p, lr=0.05),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "sls": lambda p: rlopt.SLS(p),
    "ponos": lambda p: rlopt.PoNoS(p),
    "sps": lambda p: rlopt.SPS(p, max_lr=1.0),
    "adasls": lambda p: rlopt.SLS(p, precondition="amsgrad"),
}


def make_model(sizes: tuple[int, ...]) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 2):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def time_optimizer(
    name: str, sizes: tuple[int, ...], batch: int, steps: int, warmup: int, labels: str = "teacher"
) -> tuple[float, float]:
    torch.manual_seed(0)
    model = make_model(sizes)
    n_batches = 16
    xs = torch.randn(n_batches, batch, sizes[0])
    if labels == "teacher":
        teacher = make_model(sizes)
        with torch.no_grad():
            ys = teacher(xs).argmax(-1)
    else:
        ys = torch.randint(0, sizes[-1], (n_batches, batch))
    opt = OPTIMIZERS[name](list(model.parameters()))
    loss_fn = nn.CrossEntropyLoss()
    forwards = 0
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
            forwards = 0
        x, y = xs[i % n_batches], ys[i % n_batches]
        if isinstance(opt, rlopt.StepSizeOptimizer):
            opt.step(lambda x=x, y=y: loss_fn(model(x), y))
            forwards += int(opt.stats["forward_calls"])
        else:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            forwards += 1
            if name == "floor":
                with torch.no_grad():
                    loss_fn(model(x), y)
                forwards += 1
    return (time.perf_counter() - t0) / steps, forwards / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--labels", choices=["teacher", "random"], default="teacher")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, labels {args.labels}")
    rows: list[list[object]] = []
    for label, (sizes, batch) in MODELS.items():
        print(f"\n{label}")
        print(f"{'optimizer':>10} {'ms/step':>9} {'x SGD':>7} {'best ms':>9} {'best x':>7} {'fwd/step':>9}")
        times: dict[str, list[float]] = {name: [] for name in OPTIMIZERS}
        fwd: dict[str, float] = {}
        for _ in range(args.repeats):  # interleave optimizers so machine noise hits all alike
            for name in OPTIMIZERS:
                t, f = time_optimizer(name, sizes, batch, args.steps, args.warmup, args.labels)
                times[name].append(t)
                fwd[name] = f
        sgd, sgd_best = statistics.median(times["sgd"]), min(times["sgd"])
        for name in OPTIMIZERS:
            t, best = statistics.median(times[name]), min(times[name])
            print(f"{name:>10} {1e3 * t:9.3f} {t / sgd:7.2f} {1e3 * best:9.3f} {best / sgd_best:7.2f} {fwd[name]:9.2f}")
            rows.append([label, name, round(1e3 * t, 3),
                         round(t / sgd, 2), round(best / sgd_best, 2), round(fwd[name], 2)])
    report.save(
        "optim_cost", package="rlopt", title="Cost per step against torch.optim.SGD and Adam",
        protocol=f"Median over {args.repeats} interleaved repeats of {args.steps} steps after {args.warmup} warm-up "
        f"steps on 16 fixed minibatches ({args.labels} labels, cross-entropy), torch's "
        f"{torch.get_num_threads()} threads. 'x SGD' is the median time per step over SGD's in the same run, "
        "'best x' the ratio of the fastest repeats (noise only adds time). 'floor' is an SGD step plus one no-grad "
        "forward: the least a line search with one trial can cost. Target: SLS and PoNoS at most 1.5x SGD.",
        columns=["model", "optimizer", "ms/step", "x SGD", "best x", "forwards/step"], rows=rows,
    )


if __name__ == "__main__":
    main()
