"""The tuning-free suite: PPO and A2C on the five classic-control envs, every step-size rule at its defaults
against tuned Adam (``rlopt bench agents``; ``benchmarks/bench_suite.py`` puts its table on the results page).

Protocol, per (algorithm, env, rule, seed):

- the agent is ``Agent.tuned(env, optimizer=rule, seed=seed)``: Adam at the yaml's tuned settings (its
  ``by_optimizer: adam`` entries included), the other rules at their defaults (no step size given);
- the budget is the yaml's ``total_timesteps`` capped at the RL Zoo's ``n_timesteps`` for that algorithm and
  env (:data:`ZOO_TIMESTEPS`, from rl_zoo3 2.9.2's ``hyperparams/{ppo,a2c}.yml``), so no rule gets more
  experience than an RL Zoo user;
- every ``eval_every`` steps the deterministic policy is evaluated on 10 episodes (the learning curve); at the
  end on ``eval_episodes`` (20) episodes, the final score; ``best`` is the best point of the curve;
- a normalized score maps a random policy's mean return (:func:`random_return`, 20 episodes of uniform actions)
  to 0 and tuned Adam's median final return on that (algorithm, env) to 1.

Each run writes one JSON file under the output folder and is skipped when its file exists, so an interrupted
suite resumes where it stopped; runs are independent and execute in ``jobs`` processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["ENVS", "RULES", "ZOO_TIMESTEPS", "SuiteRun", "budget", "main", "random_return", "run", "summarize"]

ALGORITHMS = ("PPO", "A2C")
ENVS = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1")
RULES = ("adam", "sls", "sps", "ponos", "polyak")
#: the RL Zoo's n_timesteps (rl_zoo3 2.9.2, hyperparams/ppo.yml and a2c.yml)
ZOO_TIMESTEPS: dict[tuple[str, str], int] = {
    ("PPO", "CartPole-v1"): 100_000, ("PPO", "Acrobot-v1"): 1_000_000, ("PPO", "MountainCar-v0"): 1_000_000,
    ("PPO", "Pendulum-v1"): 100_000, ("PPO", "MountainCarContinuous-v0"): 20_000,
    ("A2C", "CartPole-v1"): 500_000, ("A2C", "Acrobot-v1"): 500_000, ("A2C", "MountainCar-v0"): 1_000_000,
    ("A2C", "Pendulum-v1"): 1_000_000, ("A2C", "MountainCarContinuous-v0"): 100_000,
}
CURVE_EPISODES = 10


@dataclass(frozen=True)
class SuiteRun:
    """One run of the suite."""

    algorithm: str
    env: str
    rule: str
    seed: int
    budget: int
    eval_every: int
    eval_episodes: int = 20

    @property
    def name(self) -> str:
        return f"{self.algorithm}_{self.env}_{self.rule}_s{self.seed}"


def budget(algorithm: str, env: str, rule: str, cap: int | None = None) -> int:
    """The run's budget: the yaml's ``total_timesteps`` (else the Zoo's), at most the Zoo's and ``cap``."""
    from rlopt.agents.hyperparams import hyperparams

    zoo = ZOO_TIMESTEPS[(algorithm, env)]
    steps = min(int(hyperparams(algorithm, env, rule).get("total_timesteps", zoo)), zoo)
    return steps if cap is None else min(steps, cap)


def random_return(env: str, episodes: int = 20, seed: int = 0) -> float:
    """The mean return of uniformly random actions over ``episodes`` episodes (the normalized score's 0)."""
    import numpy as np

    from rlopt import envs

    batched = envs.make(env, num_envs=episodes, seed=seed, autoreset_mode="disabled")
    batched.reset(seed=seed)
    space: Any = batched.single_action_space
    rng = np.random.default_rng(seed)
    total = np.zeros(episodes)
    alive = np.ones(episodes, dtype=bool)
    while alive.any():
        if hasattr(space, "n"):
            action = rng.integers(0, int(space.n), size=episodes)
        else:
            action = rng.uniform(space.low, space.high, size=(episodes, *space.shape)).astype(np.float32)
        _, reward, terminated, truncated, _ = batched.step(action)
        total += np.where(alive, reward.cpu().numpy(), 0.0)
        alive &= ~(terminated | truncated).cpu().numpy()
    return float(total.mean())


def run(spec: SuiteRun, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Train and evaluate one run (see module docstring); writes and returns its record (skipped if present)."""
    path = Path(out_dir) / f"{spec.name}.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    from rlopt import agents
    from rlopt._atomic import atomic_write

    torch.set_num_threads(1)  # runs go in parallel processes
    cls = getattr(agents, spec.algorithm)
    model = cls.tuned(spec.env, optimizer=spec.rule, seed=spec.seed, device="cpu")
    curve_env = agents.make_eval_env(spec.env, n_envs=CURVE_EPISODES, seed=spec.seed + 1000,
                                     env_kwargs=model.env_kwargs)
    curve: list[tuple[int, float]] = []
    clock = {"eval": 0.0}

    class Curve(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next = spec.eval_every

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                self.next += spec.eval_every
                start = time.perf_counter()
                mean, _ = evaluate_policy(self.model, curve_env, n_eval_episodes=CURVE_EPISODES,
                                          deterministic=True, warn=False)
                clock["eval"] += time.perf_counter() - start
                curve.append((int(self.num_timesteps), float(mean)))  # type: ignore[arg-type]
            return True

    start = time.perf_counter()
    model.learn(spec.budget, callback=Curve())
    train_seconds = time.perf_counter() - start - clock["eval"]
    final_env = agents.make_eval_env(spec.env, n_envs=min(spec.eval_episodes, 20), seed=spec.seed + 2000,
                                     env_kwargs=model.env_kwargs)
    final: Any
    final_std: Any
    final, final_std = evaluate_policy(model, final_env, n_eval_episodes=spec.eval_episodes, deterministic=True,
                                       warn=False)
    stats = getattr(model.optimizer, "stats", {})
    record = {**asdict(spec), "final": float(final), "final_std": float(final_std),
              "best": max([float(final)] + [m for _, m in curve]), "curve": curve,
              "train_seconds": train_seconds, "timesteps": int(model.num_timesteps),
              "failures": float(stats.get("failures", 0)), "skipped": float(stats.get("skipped", 0))}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(json.dumps(record).encode())
    return record


def _normalize(value: float, low: float, high: float) -> float:
    # undefined where tuned Adam is no better than a random policy (a budget too short for Adam to learn)
    return (value - low) / (high - low) if high > low else math.nan


def summarize(records: Sequence[dict[str, Any]], random: dict[str, float],
              reference: dict[tuple[str, str], float] | None = None) -> list[dict[str, Any]]:
    """One row per (algorithm, env, rule): medians over seeds of the final and best returns and normalized
    scores, the targets' verdicts (median normalized final >= 0.9; no collapse: on every seed whose best
    normalized score is >= 0.5 the final one is >= 0.8 of it). Where tuned Adam's median final return is no
    better than the random policy's the score is undefined (NaN) and the verdict ``None``. ``reference`` gives
    tuned Adam's median final per (algorithm, env) where ``records`` hold no Adam runs (else the score is NaN)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["algorithm"], r["env"], r["rule"]), []).append(r)
    rows = []
    for (algo, env, rule), runs in sorted(groups.items()):
        adam = groups.get((algo, env, "adam"))
        high = statistics.median(r["final"] for r in adam) if adam else (reference or {}).get((algo, env), math.nan)
        low = random[env]
        finals = [_normalize(r["final"], low, high) for r in runs]
        bests = [_normalize(r["best"], low, high) for r in runs]
        collapsed = sum(1 for f, b in zip(finals, bests, strict=True) if b >= 0.5 and f < 0.8 * b)
        score = statistics.median(finals)
        defined = math.isfinite(score)
        rows.append({
            "algorithm": algo, "env": env, "rule": rule, "seeds": len(runs), "budget": runs[0]["budget"],
            "final": statistics.median(r["final"] for r in runs), "best": statistics.median(r["best"] for r in runs),
            "score": score, "best_score": statistics.median(bests), "collapsed": collapsed,
            "meets_target": bool(score >= 0.9 and collapsed == 0) if defined else None,
        })
    return rows


def _verdict(meets: bool | None) -> str:
    return "n/a: Adam no better than random" if meets is None else "met" if meets else "missed"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlopt bench agents", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: 5)")
    p.add_argument("--max-steps", type=int, default=None, help="cap every budget further (default: none)")
    p.add_argument("--eval-every", type=int, default=None, help="learning-curve interval (default: budget / 20)")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)), help="parallel processes")
    p.add_argument("--out", type=Path, default=Path("runs/bench_agents"), help="one JSON per run here")
    p.add_argument("--quick", action="store_true",
                   help="seed 0 only, at most 50k steps per run: every env and rule in a few minutes on 2 cores")
    return p


def plan(args: argparse.Namespace) -> list[SuiteRun]:
    """The runs ``args`` ask for."""
    envs, seeds, cap = args.envs, range(args.seeds), args.max_steps
    if args.quick:
        seeds, cap = range(1), min(cap or 50_000, 50_000)
    runs = []
    for algo in args.algorithms:
        for env in envs:
            for rule in args.rules:
                steps = budget(algo, env, rule, cap)
                every = args.eval_every or max(steps // 20, 1)
                runs += [SuiteRun(algo, env, rule, seed, steps, every) for seed in seeds]
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tuning-free suite: every step-size rule at its defaults against tuned Adam on PPO and A2C."""
    args = _parser().parse_args(argv)
    runs = plan(args)
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if not (args.out / f"{r.name}.json").exists()]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} done already; {args.jobs} processes; results in {args.out}")
    if args.jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for record in pool.map(run, todo, [args.out] * len(todo)):
                print(f"{record['algorithm']} {record['env']} {record['rule']} s{record['seed']}: "
                      f"final {record['final']:.1f}, best {record['best']:.1f}", flush=True)
    else:
        for spec in todo:
            record = run(spec, args.out)
            print(f"{spec.name}: final {record['final']:.1f}, best {record['best']:.1f}", flush=True)
    records = [json.loads((args.out / f"{r.name}.json").read_text()) for r in runs]
    random = {env: random_return(env) for env in {r.env for r in runs}}
    rows = summarize(records, random)
    (args.out / "summary.json").write_text(json.dumps({"random": random, "rows": rows}, indent=1))
    print("\n| algorithm | env | rule | budget | final | best | normalized | collapsed | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['algorithm']} | {row['env']} | {row['rule']} | {row['budget']} | {row['final']:.1f} | "
              f"{row['best']:.1f} | {row['score']:.2f} | {row['collapsed']}/{row['seeds']} | "
              f"{_verdict(row['meets_target'])} |")
    return 0
