"""The cost of deciding together: one step of each rlopt optimizer under DDP on 2 gloo processes, with its scalars
all-reduced (``process_group`` = the world, the default) against the same step deciding alone (``None``), and
torch.optim.SGD's DDP step as the floor, measured in the same run.

    python benchmarks/bench_distributed.py [--steps 200] [--repeats 3]

Each rank steps an MLP (64-256-256-10, minibatch 128 per rank) on its own data; DDP all-reduces the gradients in
``backward`` in every row. The ratio ``together / alone`` is the price of the scalar all-reduces (one per
evaluation: the loss with ``||g||^2`` at the iterate, each trial's loss).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import report
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import rlopt

WORLD = 2
RULES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda p, **kw: torch.optim.SGD(p, lr=0.05),
    "sls": lambda p, **kw: rlopt.SLS(p, **kw),
    "ponos": lambda p, **kw: rlopt.PoNoS(p, **kw),
    "sps": lambda p, **kw: rlopt.SPS(p, max_lr=1.0, **kw),
}


def _time(rule: str, together: bool, steps: int, rank: int) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(rank)
    x, y = torch.randn(128, 64, generator=gen), torch.randint(0, 10, (128,), generator=gen)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    net = torch.nn.parallel.DistributedDataParallel(model)
    kwargs = {} if rule == "sgd" else {"process_group": "world" if together else None}
    opt = RULES[rule](model.parameters(), **kwargs)

    def closure() -> torch.Tensor:
        return F.cross_entropy(net(x), y)

    calls = 0.0
    for i in range(steps + 20):
        if i == 20:
            dist.barrier()
            start = time.perf_counter()
        rlopt.closure_step(opt, closure)
        calls += getattr(opt, "stats", {}).get("forward_calls", 1) if i >= 20 else 0
    dist.barrier()
    return (time.perf_counter() - start) / steps, calls / steps


def _worker(rank: int, init_file: str, out: str, steps: int, repeats: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {}
    calls: dict[str, float] = {}
    for _ in range(repeats):
        for rule in RULES:
            for together in ((True,) if rule == "sgd" else (True, False)):
                key = f"{rule}/{'together' if together else 'alone'}"
                t, c = _time(rule, together, steps, rank)
                times.setdefault(key, []).append(t)
                calls[key] = c
    if rank == 0:
        torch.save({"times": times, "calls": calls}, os.path.join(out, "times.pt"))
    dist.barrier()  # every rank done before any tears the process group down
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp, args.steps, args.repeats), nprocs=WORLD, join=True)
        record = torch.load(os.path.join(tmp, "times.pt"))
    times, calls = record["times"], record["calls"]
    sgd = statistics.median(times["sgd/together"])
    rows = []
    for rule in RULES:
        if rule == "sgd":
            rows.append(["sgd (DDP)", round(sgd * 1e3, 3), "", 1.0, 1.0])
            continue
        together, alone = statistics.median(times[f"{rule}/together"]), statistics.median(times[f"{rule}/alone"])
        rows.append([rule, round(together * 1e3, 3), round(alone * 1e3, 3), round(together / alone, 3),
                     round(calls[f"{rule}/together"], 2)])
    for row in rows:
        print(" | ".join(str(c) for c in row))
    report.save(
        "optim_distributed", package="rlopt",
        title="Deciding together under DDP: the scalar all-reduces' cost per step (2 gloo processes)",
        protocol=__doc__.split("\n\n")[1].replace("\n", " ") + f" Median over {args.repeats} repeats of "
        f"{args.steps} steps, one thread per process.",
        columns=["optimizer", "ms/step together", "ms/step alone", "together / alone", "forward calls/step"],
        rows=rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
