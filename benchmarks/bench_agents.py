"""Wall time to an evaluation return of 475 on CartPole-v1: rlopt's agents.PPO against stable-baselines3 PPO.

One protocol for both, measured in the same run:
- one ``learn()`` call with the whole budget;
- a callback evaluates the deterministic policy on 10 episodes whenever the step counter crosses a
  multiple of 5,000 steps and stops training at a mean return >= 475;
- the clock runs from the start of training to the stop, minus the time spent evaluating;
- median over seeds, run seed by seed with every agent in turn, so that a host whose speed drifts during
  the run (other tenants) slows both libraries alike.
- intra-op threads (``--sb3-threads``, ``--threads``): stable-baselines3 with one thread, its faster
  setting on this 2-core machine (its 8-envs x 256-sample updates only pay for the synchronisation of a
  second one: 9.6-10.8 s against 8.2-10.1 s on seed 3); agents.PPO with one and with two, one row each. Two
  threads split its 2,048-sample minibatches (0.61-0.72 s against 0.64-0.85 s on a quiet host), but while
  another tenant holds a core the thread team stalls, and one thread is steadier.

stable-baselines3 uses the RL Zoo's tuned CartPole-v1 hyperparameters (hyperparams/ppo.yml): 8 envs,
n_steps 32, batch_size 256, gae_lambda 0.8, gamma 0.98, n_epochs 20, ent_coef 0, learning_rate lin_0.001,
clip_range lin_0.2, budget 1e5 steps. agents.PPO runs on the tensor-batched CartPole (envs), with each optimizer
in turn, in two shapes (``--shapes``):
- ``tuned``: its tuned defaults from agents/hyperparams.yaml, which are the RL Zoo's entry (the same settings as
  stable-baselines3's here: the ratio is the implementations' speed);
- ``wide``: 128 copies x 32 steps, 2 minibatches of 2,048, 4 epochs, learning rate lin_2.5e-3 (clip 0.3 for
  Adam), the yaml's entry until the suite showed it falls back after solving (benchmarks/notes/RESULTS.md, "PPO
  CartPole-v1 at the RL Zoo's entry"): the shape that reaches 475 soonest on this machine.

Usage:
    python benchmarks/bench_agents.py [--seeds 5] [--optimizers adam,sls,sps,ponos,polyak] [--budget 200000]
                                      [--shapes tuned,wide] [--threads 1] [--sb3-threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import report
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy

TARGET = 475.0
EVAL_EVERY = 5_000
EVAL_EPISODES = 10


class StopAtTarget(BaseCallback):
    """Evaluate every EVAL_EVERY steps; stop at TARGET; keep the training clock free of evaluation time."""

    def __init__(self, eval_env: Any) -> None:
        super().__init__()
        self.eval_env = eval_env
        self.next_eval = EVAL_EVERY
        self.eval_time = 0.0
        self.start = 0.0
        self.reached_at: int | None = None
        self.train_time = float("nan")
        self.last_return = float("nan")

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        if self.num_timesteps < self.next_eval:
            return True
        while self.next_eval <= self.num_timesteps:
            self.next_eval += EVAL_EVERY
        t0 = time.perf_counter()
        self.eval_env.seed(int(self.num_timesteps))
        mean, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True,
                                  warn=False)
        t1 = time.perf_counter()
        self.eval_time += t1 - t0
        self.last_return = float(mean)
        if mean >= TARGET:
            self.reached_at = self.num_timesteps
            self.train_time = (t1 - self.start) - self.eval_time
            return False
        return True


def _linear(start: float) -> Any:
    return lambda progress_remaining: progress_remaining * start


def run_sb3(seed: int, eval_env: Any) -> StopAtTarget:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                ent_coef=0.0, learning_rate=_linear(1e-3), clip_range=_linear(0.2), seed=seed, device="cpu")
    cb = StopAtTarget(eval_env)
    model.learn(100_000, callback=cb)
    return cb


#: the ``wide`` shape: many tensor-batched copies and few, large minibatch steps
WIDE = {"n_envs": 128, "n_steps": 32, "batch_size": 2048, "n_epochs": 4, "learning_rate": "lin_2.5e-3",
        "gamma": 0.99, "gae_lambda": 0.95, "clip_range": 0.2}


def wide_kwargs(optimizer: str) -> dict[str, Any]:
    """agents.PPO's constructor arguments for the wide shape (Adam's clip range 0.3, as that entry had)."""
    from rlopt.agents.hyperparams import parse_schedules

    return parse_schedules(dict(WIDE, **({"clip_range": 0.3} if optimizer == "adam" else {})))


def run_ours(seed: int, optimizer: str, eval_env: Any, budget: int, shape: str = "tuned") -> StopAtTarget:
    from rlopt import agents
    from rlopt.agents.hyperparams import hyperparams

    kwargs = wide_kwargs(optimizer) if shape == "wide" else hyperparams("PPO", "CartPole-v1", optimizer)
    kwargs.pop("total_timesteps", None)
    if optimizer != "adam":
        kwargs.pop("learning_rate", None)
    model = agents.PPO("MlpPolicy", "CartPole-v1", optimizer=optimizer, seed=seed, device="cpu", **kwargs)
    cb = StopAtTarget(eval_env)
    model.learn(budget, callback=cb)
    return cb


def _summary(name: str, runs: list[StopAtTarget]) -> dict[str, Any]:
    times = [r.train_time if r.reached_at is not None else float("inf") for r in runs]
    steps = [r.reached_at if r.reached_at is not None else -1 for r in runs]
    solved = sum(r.reached_at is not None for r in runs)
    return {"name": name, "median_s": statistics.median(times), "times": times, "steps": steps, "solved": solved}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--optimizers", default="adam,sls,sps,ponos,polyak")
    parser.add_argument("--budget", type=int, default=200_000, help="agents.PPO step budget (one learn call)")
    parser.add_argument("--skip-sb3", action="store_true")
    parser.add_argument("--sb3-threads", type=int, default=1, help="torch intra-op threads for stable-baselines3")
    parser.add_argument("--threads", default="1",
                        help="torch intra-op thread counts for agents.PPO, comma-separated (one row each)")
    parser.add_argument("--shapes", default="tuned,wide",
                        help="agents.PPO settings, comma-separated: tuned (the yaml's), wide (128 copies)")
    args = parser.parse_args()
    from rlopt import agents

    thread_counts = [int(t) for t in args.threads.split(",")]
    if any(t < 1 for t in thread_counts):
        raise SystemExit(f"--threads must be positive integers, got {args.threads!r}")
    eval_env = agents.make_eval_env("CartPole-v1", n_envs=EVAL_EPISODES)
    sb3_name = "stable-baselines3 PPO (RL Zoo)"
    shapes = args.shapes.split(",")
    if not set(shapes) <= {"tuned", "wide"}:
        raise SystemExit(f"--shapes must be a comma-separated subset of tuned,wide, got {args.shapes!r}")
    labels = {"tuned": "8 copies (yaml)", "wide": "128 copies"}
    ours = [
        (f"agents.PPO {opt}, {labels[shape]}" + (f", {n} thread{'s' if n > 1 else ''}" if len(thread_counts) > 1
                                                 else ""), opt, n, shape)
        for shape in shapes
        for opt in args.optimizers.split(",")
        for n in thread_counts
    ]
    runs: dict[str, list[StopAtTarget]] = {} if args.skip_sb3 else {sb3_name: []}
    runs.update({name: [] for name, _, _, _ in ours})
    # Seed by seed, every agent in turn: a host that speeds up or slows down during the run (other tenants)
    # then affects both libraries alike instead of whichever happened to run in that stretch.
    for seed in range(args.seeds):
        if not args.skip_sb3:
            torch.set_num_threads(args.sb3_threads)
            runs[sb3_name].append(run_sb3(seed, eval_env))
        for name, opt, threads, shape in ours:
            torch.set_num_threads(threads)
            runs[name].append(run_ours(seed, opt, eval_env, args.budget, shape))
        print(f"seed {seed}: " + ", ".join(
            f"{name} {r[-1].train_time:.2f} s" if r[-1].reached_at is not None else f"{name} not solved"
            for name, r in runs.items()), flush=True)
    rows = [_summary(name, r) for name, r in runs.items()]
    base = rows[0]["median_s"] if not args.skip_sb3 else float("nan")
    print()
    print("| agent | solved | median s to 475 | speedup vs SB3 | steps to 475 (per seed) | seconds (per seed) |")
    print("|---|---|---|---|---|---|")
    table = []
    for r in rows:
        speed = base / r["median_s"] if np.isfinite(r["median_s"]) else 0.0
        secs = ", ".join(f"{t:.2f}" for t in r["times"])
        print(f"| {r['name']} | {r['solved']}/{args.seeds} | {r['median_s']:.3f} | {speed:.1f}x | "
              f"{', '.join(map(str, r['steps']))} | {secs} |")
        table.append([r["name"], f"{r['solved']}/{args.seeds}", round(r["median_s"], 3), f"{speed:.1f}x",
                      ", ".join(map(str, r["steps"]))])
    report.save(
        "agents_cartpole_wall_time", package="agents",
        title="Wall time to an evaluation return of 475 on CartPole-v1 against stable-baselines3",
        protocol=f"One learn() call per run; every 5,000 steps the deterministic policy is evaluated on "
        f"{EVAL_EPISODES} episodes and training stops at a mean return >= 475. The clock covers training only "
        f"(evaluation excluded). Median over {args.seeds} seeds, run seed by seed with every agent in turn. "
        "stable-baselines3's PPO uses the RL Zoo's tuned CartPole-v1 settings; rlopt.agents.PPO the tuned defaults "
        "of agents/hyperparams.yaml (the Zoo's entry: 8 copies, the same settings) and the wide shape (128 "
        "tensor-batched copies x 32 steps, 2 minibatches of 2,048, 4 epochs). Speedup: SB3's median time over the "
        "row's.",
        columns=["agent", "solved", "median s to 475", "speedup vs SB3", "steps to 475 (per seed)"], rows=table,
    )


if __name__ == "__main__":
    main()
