"""Steps per second of envs' tensor-batched environments against Gymnasium's vector envs and EnvPool.

Every backend steps the same environment at the same batch size (num_envs copies, random valid actions,
autoreset on) in one run, and the table prints ratios against the peers a user would otherwise pick:

* ``eager`` / ``compiled``: `rlopt.envs.make(..., compile=False/True)` on ``--device``, stepping on the env's
  default threads (one below 65536 copies) or ``--env-threads`` (the ``threads=`` option of `rlopt.envs.make`).
* ``gym-sync``: ``gymnasium.vector.SyncVectorEnv`` (one Python env object per copy).
* ``gym-async``: ``gymnasium.vector.AsyncVectorEnv`` (one process per copy; only up to ``--max-async``).
* ``envpool``: ``envpool.make_gymnasium(..., num_threads=--envpool-threads)`` (C++ thread pool).

Memory per copy is the bytes of the env's per-copy tensors divided by num_envs (ours), and the growth of
the process's resident memory while creating the batch divided by num_envs (EnvPool, gym-sync).

Usage:
    python benchmarks/bench_envs.py                              # all envs, all sizes
    python benchmarks/bench_envs.py --envs CartPole-v1 --sizes 4096
    python benchmarks/bench_envs.py --max-size 4096 --seconds 1
    python benchmarks/bench_envs.py --envs CartPole-v1 --sizes 4096 --env-threads 2   # both cores, as EnvPool
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import report
import torch

from rlopt import envs

SIZES = [1, 64, 1024, 4096, 65536]


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc), falling back to the peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_steps(step: Callable[[int], Any], seconds: float, num_envs: int, sync: Callable[[], None]) -> float:
    """Steps/s (copies x calls / s): warm up, then the best of three timed windows of ~seconds/3."""
    for i in range(3):
        step(i)
    sync()
    calls = 1
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds / 10:
        step(calls)
        calls += 1
    sync()
    per_call = (time.perf_counter() - t0) / calls
    n_calls = max(3, int(seconds / 3 / per_call))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(n_calls):
            step(i)
        sync()
        best = min(best, (time.perf_counter() - t0) / n_calls)
    return num_envs / best


def action_pool(env: envs.TorchVecEnv, size: int = 8) -> list[torch.Tensor]:
    """``size`` batches of random valid actions for ``env`` on its device (seeded), to cycle through."""
    n, device, space = env.num_envs, env.device, env.single_action_space
    gen = torch.Generator(device=device).manual_seed(0)
    if isinstance(space, gym.spaces.Discrete):
        return [torch.randint(0, int(space.n), (n,), device=device, generator=gen) for _ in range(size)]
    low, high = float(space.low[0]), float(space.high[0])
    return [low + (high - low) * torch.rand((n, 1), device=device, generator=gen) for _ in range(size)]


def bench_ours(
    env_id: str,
    n: int,
    device: str,
    compile: bool,
    seconds: float,
    dtype: torch.dtype | None = None,
    threads: int | None = None,
) -> tuple[float, float]:
    env = envs.make(env_id, num_envs=n, device=device, seed=0, compile=compile, dtype=dtype, threads=threads)
    env.reset()
    pool = action_pool(env)
    dev = torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    rate = time_steps(lambda i: env.step(pool[i % 8]), seconds, n, sync)
    per_copy = sum(
        t.numel() * t.element_size()
        for t in (env._state, env._elapsed, env._prev_done, env._episode_return, env._episode_length)
    ) + sum(t.numel() * t.element_size() for t in (env._lane_key, env._reset_count, env._lane_index))
    # the eager step's table of upcoming initial states (see TorchVecEnv._fresh_states), when it has one
    table = env._fresh_table
    if table is not None and not env.compiled:
        per_copy += table.numel() * table.element_size() + env._fresh_base.numel() * env._fresh_base.element_size()
    return rate, per_copy / n


def _numpy_actions(space: gym.Space[Any], n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    if isinstance(space, gym.spaces.Discrete):
        return [rng.integers(0, int(space.n), size=n) for _ in range(8)]
    assert isinstance(space, gym.spaces.Box)
    return [
        rng.uniform(space.low[0], space.high[0], size=(n, *space.shape)).astype(np.float32) for _ in range(8)
    ]


def bench_gym(env_id: str, n: int, kind: str, seconds: float) -> tuple[float, float]:
    before = rss_bytes()
    cls = gym.vector.SyncVectorEnv if kind == "sync" else gym.vector.AsyncVectorEnv
    venv = cls([lambda: gym.make(env_id) for _ in range(n)])
    mem = (rss_bytes() - before) / n
    venv.reset(seed=0)
    actions = _numpy_actions(venv.single_action_space, n)
    rate = time_steps(lambda i: venv.step(actions[i % 8]), seconds, n, lambda: None)
    venv.close()
    return rate, mem


def bench_envpool(env_id: str, n: int, threads: int, seconds: float) -> tuple[float, float]:
    import envpool

    before = rss_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        venv = envpool.make_gymnasium(env_id, num_envs=n, batch_size=n, num_threads=threads, seed=0)
    mem = (rss_bytes() - before) / n
    venv.reset()
    actions = _numpy_actions(venv.action_space, n)
    rate = time_steps(lambda i: venv.step(actions[i % 8]), seconds, n, lambda: None)
    venv.close()
    return rate, mem


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "skip"
    return f"{x / 1e6:.2f}M" if x >= 1e5 else f"{x / 1e3:.1f}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", nargs="+", default=envs.registered_ids(), help="environment ids")
    parser.add_argument("--sizes", nargs="+", type=int, default=SIZES, help="num_envs values")
    parser.add_argument("--max-size", type=int, default=None, help="drop sizes above this")
    parser.add_argument("--device", default="cpu", help="torch device of our envs")
    parser.add_argument("--seconds", type=float, default=1.5, help="timing budget per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--envpool-threads", type=int, default=2)
    parser.add_argument("--env-threads", type=int, default=None, help="threads= of our envs (default: the env's)")
    parser.add_argument("--max-sync", type=int, default=4096, help="largest gym-sync batch (Python loop)")
    parser.add_argument(
        "--max-async", type=int, default=64, help="largest gym-async batch (one process each)"
    )
    parser.add_argument(
        "--dtype", choices=["default", "float32", "float64"], default="default", help="physics dtype"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile path")
    parser.add_argument("--no-peers", action="store_true", help="only our envs")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = None if args.dtype == "default" else getattr(torch, args.dtype)
    sizes = [s for s in args.sizes if args.max_size is None or s <= args.max_size]
    try:
        import envpool  # noqa: F401

        have_envpool = not args.no_peers
    except ImportError:
        have_envpool = False
        print("envpool not installed: its column is skipped (pip install envpool)")
    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} envpool_threads={args.envpool_threads} "
        f"dtype={args.dtype} env_threads={args.env_threads or 'default'}"
    )
    header = (
        f"{'env':26s} {'N':>6s} {'eager':>8s} {'compiled':>9s} {'gym-sync':>9s} {'gym-async':>9s} "
        f"{'envpool':>8s} {'comp/envpool':>12s} {'comp/sync':>9s} {'eager/envpool':>13s} "
        f"{'B/copy ours':>11s} {'B/copy envpool':>14s}"
    )
    print(header)
    rows: list[list[object]] = []
    for env_id in args.envs:
        for n in sizes:
            eager, mem_ours = bench_ours(env_id, n, args.device, False, args.seconds, dtype, args.env_threads)
            comp = None
            if not args.no_compile:
                comp = bench_ours(env_id, n, args.device, True, args.seconds, dtype, args.env_threads)[0]
            sync = (
                bench_gym(env_id, n, "sync", args.seconds)
                if not args.no_peers and n <= args.max_sync
                else None
            )
            asyn = (
                bench_gym(env_id, n, "async", args.seconds)
                if not args.no_peers and n <= args.max_async
                else None
            )
            pool = bench_envpool(env_id, n, args.envpool_threads, args.seconds) if have_envpool else None
            best = comp if comp is not None else eager

            def ratio(a: float | None, b: tuple[float, float] | None) -> str:
                return "-" if a is None or b is None else f"{a / b[0]:.1f}x"

            print(
                f"{env_id:26s} {n:6d} {fmt_rate(eager):>8s} {fmt_rate(comp):>9s} "
                f"{fmt_rate(sync[0] if sync else None):>9s} {fmt_rate(asyn[0] if asyn else None):>9s} "
                f"{fmt_rate(pool[0] if pool else None):>8s} {ratio(best, pool):>12s} {ratio(best, sync):>9s} "
                f"{ratio(eager, pool):>13s} {mem_ours:11.0f} {(pool[1] if pool else float('nan')):14.0f}",
                flush=True,
            )
            rows.append([env_id, n, fmt_rate(eager), fmt_rate(comp), fmt_rate(sync[0] if sync else None),
                         fmt_rate(asyn[0] if asyn else None), fmt_rate(pool[0] if pool else None),
                         ratio(best, sync), ratio(best, pool), round(mem_ours)])
            gc.collect()
    device_type = torch.device(args.device).type  # a CUDA run is a table of its own
    report.save(
        "envs_throughput" + ("" if device_type == "cpu" else f"_{device_type}"), package="envs",
        title="Steps per second against Gymnasium's vector envs and EnvPool"
        + ("" if device_type == "cpu" else f" ({device_type})"),
        protocol=f"Env steps per second (copies x batched steps / s) over about {args.seconds:g} s per measurement, "
        "random valid actions, autoreset on, every backend on the same env and batch size in one run. 'eager' and "
        "'compiled' are rlopt.envs.make(..., compile=False/True) on " + str(args.device) + " (eager on the CPU: "
        "the NumPy step up to 2048 copies, torch's above, the default backend); 'gym-sync' is "
        "gymnasium.vector.SyncVectorEnv, 'gym-async' AsyncVectorEnv (one process per copy), 'envpool' EnvPool's "
        "C++ thread pool ('skip': not measured at that size or not installed). The ratios take the faster of "
        "ours.",
        columns=["env", "copies", "eager", "compiled", "gym-sync", "gym-async", "envpool", "ours / sync",
                 "ours / envpool", "bytes per copy"],
        rows=rows,
    )


if __name__ == "__main__":
    main()
