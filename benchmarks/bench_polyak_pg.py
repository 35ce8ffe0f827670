"""The Polyak policy-gradient comparison of Li et al. (arXiv 2404.07525) on the envs we have: REINFORCE/GPOMDP with
the Polyak step (online return target, and the twin-model target) against tuned Adam and the other rules.

    python benchmarks/bench_polyak_pg.py [--envs CartPole-v1 Acrobot-v1] [--seeds 5] [--jobs 2]

Each run is ``agents.REINFORCE.tuned(env, optimizer=rule, seed=seed)`` (GPOMDP, the yaml's rollout shape; Adam at
its tuned learning rate, the other rules at their defaults) trained for the yaml's budget, then its deterministic
policy evaluated on 20 episodes. Rows: the median final return over seeds, the seeds in order, and how many
reach the env's reward threshold. ``polyak twin``: ``twin=True`` (the worse twin aims at the better one's
measured return; both twins' steps count in the budget); ``polyak twin both``: ``twin="both"``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor

import gymnasium as gym
import report
import torch

VARIANTS = {
    "adam": ("adam", {}),
    "polyak": ("polyak", {}),
    "polyak twin": ("polyak", {"twin": True}),
    "polyak twin both": ("polyak", {"twin": "both"}),
    "sls": ("sls", {}),
    "sps": ("sps", {}),
}


def _run(env: str, variant: str, seed: int) -> float:
    from stable_baselines3.common.evaluation import evaluate_policy

    from rlopt import agents

    torch.set_num_threads(1)
    rule, kwargs = VARIANTS[variant]
    model = agents.REINFORCE.tuned(env, optimizer=rule, seed=seed, **kwargs)
    assert model.tuned_timesteps is not None
    model.learn(model.tuned_timesteps)
    eval_env = agents.make_eval_env(env, n_envs=10, seed=10_000 + seed)
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True)
    return float(mean)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1", "Acrobot-v1"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    jobs = [(env, variant, seed) for env in args.envs for variant in VARIANTS for seed in range(args.seeds)]
    with ProcessPoolExecutor(args.jobs) as pool:
        finals = dict(zip(jobs, pool.map(_run, *zip(*jobs, strict=True)), strict=True))
    rows = []
    for env in args.envs:
        threshold = gym.spec(env).reward_threshold
        for variant in VARIANTS:
            values = [finals[(env, variant, s)] for s in range(args.seeds)]
            solved = sum(v >= threshold for v in values) if threshold is not None else ""
            rows.append([env, variant, round(statistics.median(values), 1), " / ".join(f"{v:.0f}" for v in values),
                         f"{solved}/{args.seeds}"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    report.save(
        "agents_polyak_pg", package="agents",
        title="Polyak policy gradient (REINFORCE/GPOMDP): online and twin-model return targets against tuned Adam",
        protocol=__doc__.split("\n\n")[2].replace("\n", " "),
        columns=["env", "rule", "median final", "final per seed", "seeds at the threshold"],
        rows=rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
