"""SB3VecEnv against stable-baselines3's DummyVecEnv at few copies: the time of one VecEnv step, and of a short
unmodified SB3 PPO training, measured in the same run.

    python benchmarks/bench_sb3_adapter.py [--envs 8] [--steps 3000] [--timesteps 100000]

Rows: ``DummyVecEnv`` over Monitor-wrapped Gymnasium envs (what an SB3 user builds); ``SB3VecEnv`` over the eager
batched env as ``envs.make`` builds it (at a few CPU copies its step runs in NumPy, ``backend="numpy"``); the same
with the torch step (``backend="torch"``); ``SB3VecEnv`` over the compiled env (``compile=True``; its one-off build
time is reported apart). One thread, random valid actions, alternating the backends three times and keeping each one's
best.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import report
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from rlopt import envs


def _step_time(venv: VecEnv, actions: np.ndarray) -> float:
    venv.reset()
    start = time.perf_counter()
    for a in actions:
        venv.step(a)
    return (time.perf_counter() - start) / len(actions)


def _train_time(venv: VecEnv, timesteps: int) -> float:
    model = PPO("MlpPolicy", venv, n_steps=256, batch_size=256, n_epochs=2, seed=0, device="cpu")
    start = time.perf_counter()
    model.learn(timesteps)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--timesteps", type=int, default=100_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.envs
    build = time.perf_counter()
    compiled_env = envs.make("CartPole-v1", num_envs=n, seed=0, compile=True)
    build = time.perf_counter() - build
    backends: dict[str, Callable[[], VecEnv]] = {
        "DummyVecEnv (Gymnasium + Monitor)": lambda: DummyVecEnv([lambda: Monitor(gym.make("CartPole-v1"))] * n),
        "SB3VecEnv (eager, default: NumPy step)": lambda: envs.SB3VecEnv(envs.make("CartPole-v1", num_envs=n, seed=0)),
        "SB3VecEnv (eager, torch step)": lambda: envs.SB3VecEnv(
            envs.make("CartPole-v1", num_envs=n, seed=0, backend="torch")),
        "SB3VecEnv (compiled)": lambda: envs.SB3VecEnv(compiled_env),
    }
    actions = np.random.default_rng(0).integers(0, 2, (args.steps, n))
    step: dict[str, float] = {}
    train: dict[str, float] = {}
    for _ in range(3):  # alternate, keep the best: machine noise only adds time
        for name, make in backends.items():
            step[name] = min(step.get(name, np.inf), _step_time(make(), actions))
            train[name] = min(train.get(name, np.inf), _train_time(make(), args.timesteps))
    base_step, base_train = step["DummyVecEnv (Gymnasium + Monitor)"], train["DummyVecEnv (Gymnasium + Monitor)"]
    rows = [[name, round(step[name] * 1e6, 1), round(step[name] / base_step, 2), round(train[name], 2),
             round(train[name] / base_train, 2)] for name in backends]
    for row in rows:
        print(" | ".join(str(c) for c in row))
    print(f"compile=True built in {build:.1f} s")
    report.save(
        "envs_sb3_adapter", package="envs",
        title=f"SB3VecEnv against DummyVecEnv at {n} copies (CartPole-v1)",
        protocol=__doc__.split("\n\n")[2].replace("\n", " ") + f" {args.steps} VecEnv steps; SB3 PPO (n_steps 256, "
        f"batch 256, 2 epochs) for {args.timesteps} timesteps. The compiled env was built once in {build:.1f} s, "
        "not counted in its rows.",
        columns=["backend", "us per VecEnv step", "step / DummyVecEnv", "PPO training s", "training / DummyVecEnv"],
        rows=rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
