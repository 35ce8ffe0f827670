"""The eager step on NumPy against the eager step on torch (``TorchVecEnv(backend=)``), per env and batch size.

    python benchmarks/bench_env_backends.py [--sizes 8 64 256 1024 2048 4096] [--steps 200] [--repeats 2]

One thread; a pool of 8 random valid action batches, cycled; both backends alternate in the same process and
each keeps its best of ``--repeats`` runs of ``--steps`` steps. Prints microseconds per step and the ratio
torch / NumPy (above 1: NumPy is faster), which sets the default backend's largest batch
(``rlopt.envs.core._NUMPY_MAX_ENVS``).
"""

from __future__ import annotations

import argparse
import sys
import time

import report
import torch
from bench_envs import action_pool

from rlopt import envs


def _step_time(env_id: str, n: int, backend: str, steps: int) -> float:
    env = envs.make(env_id, num_envs=n, seed=0, backend=backend)
    env.reset()
    pool = action_pool(env)
    for i in range(20):
        env.step(pool[i % 8])
    start = time.perf_counter()
    for i in range(steps):
        env.step(pool[i % 8])
    return (time.perf_counter() - start) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=envs.registered_ids())
    parser.add_argument("--sizes", nargs="+", type=int, default=[8, 64, 256, 1024, 2048, 4096])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for env_id in args.envs:
        for n in args.sizes:
            best = {"numpy": float("inf"), "torch": float("inf")}
            for _ in range(args.repeats):
                for backend in best:
                    best[backend] = min(best[backend], _step_time(env_id, n, backend, args.steps))
            row = [env_id, n, round(best["numpy"] * 1e6, 1), round(best["torch"] * 1e6, 1),
                   round(best["torch"] / best["numpy"], 2)]
            print(" | ".join(str(c) for c in row), flush=True)
            rows.append(row)
    report.save(
        "envs_backends", package="envs",
        title="The eager step on NumPy against torch (TorchVecEnv(backend=))",
        protocol=__doc__.split("\n\n")[2].replace("\n", " "),
        columns=["env", "copies", "NumPy us per step", "torch us per step", "torch / NumPy"],
        rows=rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
