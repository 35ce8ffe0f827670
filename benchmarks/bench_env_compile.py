"""When does ``compile=True`` pay for itself? Eager against compiled step time of envs' batched envs, the
compiled env's build time, and the number of batched steps after which the build is paid back.

Each env is built eagerly and compiled (same seed, same-step autoreset, the env's default threads), reset,
warmed up and stepped ``--steps`` times with fixed actions (0 for discrete spaces, zeros for boxes). Build
time runs from construction to the first observation; the first compiled env of the process also pays for
importing TorchInductor, so the envs are compiled in the order given.

Usage:
    python benchmarks/bench_env_compile.py                      # the agents' tuned batch sizes
    python benchmarks/bench_env_compile.py --envs CartPole-v1:4096 --steps 1000
"""

from __future__ import annotations

import argparse
import time

import torch

from rlopt import envs

DEFAULT = ["Acrobot-v1:64", "CartPole-v1:128", "Pendulum-v1:32"]


def step_time(env_id: str, num_envs: int, compile: bool, steps: int) -> tuple[float, float]:
    """(seconds per batched step, build seconds)."""
    start = time.perf_counter()
    env = envs.make(env_id, num_envs=num_envs, seed=0, compile=compile, autoreset_mode="same_step")
    env.reset(seed=0)
    build = time.perf_counter() - start
    shape = env.single_action_space.shape or ()  # () for a discrete space
    actions = torch.zeros((num_envs, *shape), dtype=torch.float32 if shape else torch.int64)
    for _ in range(min(steps, 200)):
        env.step(actions)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(actions)
    return (time.perf_counter() - start) / steps, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=DEFAULT, help="ID:NUM_ENVS pairs")
    parser.add_argument("--steps", type=int, default=3000, help="timed batched steps per env and mode")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| env x copies | eager step | compiled step | build | break-even (batched steps) |")
    print("|---|---:|---:|---:|---:|")
    for item in args.envs:
        env_id, _, n = item.partition(":")
        num_envs = int(n or 1)
        eager, _ = step_time(env_id, num_envs, False, args.steps)
        compiled, build = step_time(env_id, num_envs, True, args.steps)
        saved = eager - compiled
        even = f"{build / saved:,.0f}" if saved > 0 else "never"
        print(f"| {env_id} x {num_envs} | {eager * 1e6:.0f} us | {compiled * 1e6:.0f} us | {build:.1f} s | {even} |",
              flush=True)


if __name__ == "__main__":
    main()
