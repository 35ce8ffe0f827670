"""Step-size study after the Polyak policy-gradient paper (Li et al., arXiv 2404.07525): REINFORCE/GPOMDP with
the tuning-free step sizes at their defaults ("polyak", "sls", "sps") against Adam at its best learning rate
from a grid of 5, measured as env steps and wall time to a target evaluation return.

Protocol: one ``learn()`` call per run with the budget; every ``--eval-every`` steps the deterministic
policy is evaluated on 10 episodes and the run stops at the target; training time excludes evaluation.
Adam's best learning rate is the grid value with the lowest median steps to target. One PNG per env
(median evaluation return against env steps) is written to ``--out``.

Usage:
    python benchmarks/bench_agents_stepsizes.py --envs CartPole-v1 --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy

TARGETS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "Pendulum-v1": -200.0}
ADAM_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
RULES = ("polyak", "sls", "sps")


class Curve(BaseCallback):
    def __init__(self, eval_env: Any, target: float, every: int) -> None:
        super().__init__()
        self.eval_env, self.target, self.every, self.next = eval_env, target, every, every
        self.points: list[tuple[int, float]] = []
        self.eval_time, self.start = 0.0, 0.0
        self.reached: tuple[int, float] | None = None

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        if self.num_timesteps < self.next:
            return True
        self.next = (self.num_timesteps // self.every + 1) * self.every
        t0 = time.perf_counter()
        self.eval_env.seed(self.num_timesteps)
        mean, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=10, deterministic=True, warn=False)
        t1 = time.perf_counter()
        self.eval_time += t1 - t0
        self.points.append((self.num_timesteps, float(mean)))
        if mean >= self.target:
            self.reached = (self.num_timesteps, t1 - self.start - self.eval_time)
            return False
        return True


def run(env_id: str, optimizer: str, kwargs: dict[str, Any], seed: int, budget: int, every: int) -> Curve:
    import agents
    from agents.hyperparams import hyperparams

    params = hyperparams("REINFORCE", env_id)
    params.pop("total_timesteps", None)
    params.pop("learning_rate", None)
    params.update(kwargs)
    model = agents.REINFORCE("MlpPolicy", env_id, optimizer=optimizer, seed=seed, device="cpu", **params)
    cb = Curve(agents.make_eval_env(env_id, n_envs=10), TARGETS[env_id], every)
    model.learn(budget, callback=cb)
    return cb


def summarize(curves: list[Curve]) -> tuple[float, float, int]:
    steps = [c.reached[0] if c.reached else float("inf") for c in curves]
    secs = [c.reached[1] if c.reached else float("inf") for c in curves]
    return statistics.median(steps), statistics.median(secs), sum(c.reached is not None for c in curves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default="CartPole-v1")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=150_000)
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for env_id in args.envs.split(","):
        base = {"n_envs": args.n_envs, "estimator": "gpomdp"}
        results: dict[str, list[Curve]] = {}
        for lr in ADAM_GRID:
            results[f"adam lr={lr:g}"] = [run(env_id, "adam", {**base, "learning_rate": lr}, s, args.budget,
                                              args.eval_every) for s in range(args.seeds)]
            print(env_id, f"adam lr={lr:g}", summarize(results[f"adam lr={lr:g}"]), flush=True)
        # best learning rate: most seeds solved, then fewest median steps
        best_adam = min((k for k in results if k.startswith("adam")),
                        key=lambda k: (-summarize(results[k])[2], summarize(results[k])[0]))
        for rule in RULES:
            results[rule] = [run(env_id, rule, base, s, args.budget, args.eval_every) for s in range(args.seeds)]
            print(env_id, rule, summarize(results[rule]), flush=True)
        print(f"\n{env_id}: target {TARGETS[env_id]}, REINFORCE/GPOMDP, {args.n_envs} envs, {args.seeds} seeds, "
              f"budget {args.budget}")
        print("| step size | solved | median env steps to target | median train s to target |")
        print("|---|---|---|---|")
        for name in [*RULES, best_adam, *(k for k in results if k.startswith("adam") and k != best_adam)]:
            steps, secs, solved = summarize(results[name])
            tag = " (best of grid)" if name == best_adam else ""
            print(f"| {name}{tag} | {solved}/{args.seeds} | {steps:.0f} | {secs:.2f} |")
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in [*RULES, best_adam]:
            grid = np.arange(args.eval_every, args.budget + 1, args.eval_every)
            curves = []
            for c in results[name]:
                xs, ys = zip(*c.points, strict=True) if c.points else ((0,), (np.nan,))
                # after reaching the target a run stops: hold its last value
                curves.append(np.interp(grid, xs, ys, right=ys[-1]))
            ax.plot(grid, np.median(curves, axis=0), label=name)
        ax.axhline(TARGETS[env_id], color="gray", ls="--", lw=0.8)
        ax.set_xlabel("env steps")
        ax.set_ylabel("median evaluation return")
        ax.set_title(f"{env_id}: REINFORCE/GPOMDP step sizes")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out / f"agents_stepsizes_{env_id}.png", dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    main()
