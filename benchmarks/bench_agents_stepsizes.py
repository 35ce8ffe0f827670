"""Step-size study after the Polyak policy-gradient paper (Li et al., arXiv 2404.07525): REINFORCE/GPOMDP with
the tuning-free step sizes at their defaults ("polyak", "sls", "sps") against Adam at its best learning rate
from a grid of 5, measured as env steps and wall time to a target evaluation return.

Protocol: one ``learn()`` call per run with the env's budget; every ``eval_every`` steps the deterministic
policy is evaluated on 10 episodes and the run stops at the target; training time excludes evaluation.
Adam's best learning rate is the grid value that solves the most seeds, then with the fewest median steps to
target. One PNG per env (median evaluation return against env steps) is written to ``--out``.

Runs are independent, so the study can be split across processes: each call runs the ``--methods`` it is
given on the ``--envs`` and writes every curve to ``--results`` (JSON); ``--report A.json B.json ...``
merges result files, prints the tables and draws the plots without training.

``--trace N`` prints, for one seed, the return estimate and the step of every update of an N-step run (how
the step-size rules behave on the REINFORCE loss). Results and the commands of the recorded study:
benchmarks/notes/RESULTS.md ("step sizes for REINFORCE/GPOMDP"); its curves: benchmarks/agents_stepsizes.json.

Usage:
    python benchmarks/bench_agents_stepsizes.py --envs CartPole-v1 --seeds 5
    python benchmarks/bench_agents_stepsizes.py --envs Acrobot-v1 --methods adam --results adam.json
    python benchmarks/bench_agents_stepsizes.py --envs Acrobot-v1 --methods polyak,sps,sls --results rules.json
    python benchmarks/bench_agents_stepsizes.py --report adam.json rules.json
    python benchmarks/bench_agents_stepsizes.py --envs CartPole-v1 --methods sls,sps,polyak --trace 32768
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy

#: per env: target evaluation return, training budget (env steps), evaluation period (env steps)
SETTINGS: dict[str, dict[str, float]] = {
    # budgets are whole rollouts of 16 envs x 512 steps; evaluations come at the end of each rollout, before
    # its update (so the one at 8192 steps is the initial policy's)
    "CartPole-v1": {"target": 475.0, "budget": 12 * 8192, "eval_every": 8192},
    "Acrobot-v1": {"target": -100.0, "budget": 10 * 8192, "eval_every": 8192},
    # REINFORCE/GPOMDP is far from -200 within any budget this study affords (see benchmarks/notes/RESULTS.md):
    # the target is a clear improvement over the initial policies' -1100 to -1600 (none reached it)
    "Pendulum-v1": {"target": -900.0, "budget": 160_000, "eval_every": 16_000},
    "MountainCarContinuous-v0": {"target": 90.0, "budget": 300_000, "eval_every": 20_000},
}
#: per env: constructor arguments over agents/hyperparams.yaml (Pendulum's episodes are always 200 steps:
#: rollouts of 200 use every transition, 256 would drop the part of each episode begun in the last rollout)
ENV_KWARGS: dict[str, dict[str, Any]] = {"Pendulum-v1": {"n_steps": 200}}
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


def run(env_id: str, optimizer: str, kwargs: dict[str, Any], seed: int, settings: dict[str, float]) -> dict[str, Any]:
    """One training run; returns its evaluation curve and, if reached, the steps and train seconds to target."""
    from rlopt import agents
    from rlopt.agents.hyperparams import hyperparams

    params = hyperparams("REINFORCE", env_id)
    params.pop("total_timesteps", None)
    params.pop("learning_rate", None)
    params.update(kwargs)
    model = agents.REINFORCE("MlpPolicy", env_id, optimizer=optimizer, seed=seed, device="cpu", **params)
    cb = Curve(agents.make_eval_env(env_id, n_envs=10), settings["target"], int(settings["eval_every"]))
    t0 = time.perf_counter()
    model.learn(int(settings["budget"]), callback=cb)
    wall = time.perf_counter() - t0
    return {"seed": seed, "points": cb.points, "reached": cb.reached, "train_s": wall - cb.eval_time}


def trace(env_id: str, optimizer: str, seed: int, steps: int, n_envs: int) -> None:
    """Print the return estimate and the step taken at each update of one short run (no evaluation)."""
    from rlopt import agents
    from rlopt.agents.hyperparams import hyperparams

    params = hyperparams("REINFORCE", env_id)
    params.pop("total_timesteps", None)
    params.pop("learning_rate", None)
    params.update({"n_envs": n_envs, "estimator": "gpomdp", **ENV_KWARGS.get(env_id, {})})
    model = agents.REINFORCE("MlpPolicy", env_id, optimizer=optimizer, seed=seed, device="cpu", **params)
    train = model.train
    rows: list[str] = []

    def traced() -> None:
        train()
        stats = getattr(model.optimizer, "stats", {})
        rows.append(f"{model._return_estimate:.1f} ({stats.get('step_size', float('nan')):.2g}, "
                    f"{int(stats.get('backtracks', 0))})")

    model.train = traced  # type: ignore[method-assign]
    model.learn(steps)
    print(f"{env_id} {optimizer} seed {seed}: J_hat before each update (step size, backtracks):")
    print("  " + "; ".join(rows), flush=True)


def truncate(runs: list[dict[str, Any]], budget: float) -> list[dict[str, Any]]:
    """The runs as a run with ``budget`` steps would have gone: curves are identical up to there."""
    out = []
    for r in runs:
        reached = r["reached"] if r["reached"] and r["reached"][0] <= budget else None
        out.append({**r, "points": [p for p in r["points"] if p[0] <= budget], "reached": reached})
    return out


def summarize(runs: list[dict[str, Any]]) -> tuple[float, float, int]:
    """``(median steps, median train seconds, solved)``; an unsolved run counts as infinitely slow."""
    steps = [r["reached"][0] if r["reached"] else float("inf") for r in runs]
    secs = [r["reached"][1] if r["reached"] else float("inf") for r in runs]
    return statistics.median(steps), statistics.median(secs), sum(r["reached"] is not None for r in runs)


def methods_for(names: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Label -> (optimizer, extra constructor kwargs); ``adam`` expands to the learning-rate grid."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in names:
        if name == "adam":
            out.update({f"adam lr={lr:g}": ("adam", {"learning_rate": lr}) for lr in ADAM_GRID})
        elif name.startswith("adam:"):  # one learning rate, e.g. adam:0.003
            lr = float(name.split(":", 1)[1])
            out[f"adam lr={lr:g}"] = ("adam", {"learning_rate": lr})
        else:
            out[name] = (name, {})
    return out


def rank(runs: list[dict[str, Any]]) -> tuple[float, float, float, float]:
    """Order of grid values: largest fraction of seeds solved, then fewest median steps, then seconds, then
    (when no seed is solved) the highest median of the runs' best evaluations."""
    steps, secs, solved = summarize(runs)
    best_eval = statistics.median(max(p[1] for p in r["points"]) if r["points"] else float("-inf") for r in runs)
    return -solved / len(runs), steps, secs, -best_eval


def fmt(x: float, spec: str) -> str:
    return "-" if x == float("inf") else format(x, spec)


def report(results: dict[str, dict[str, list[dict[str, Any]]]], out: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figure list stay untouched

    for env_id, by_method in results.items():
        settings = SETTINGS[env_id]
        by_method = {k: truncate(v, settings["budget"]) for k, v in by_method.items()}
        adam = [k for k in by_method if k.startswith("adam")]
        # best learning rate: see rank (grid values may have been run on different numbers of seeds)
        best = min(adam, key=lambda k, runs=by_method: rank(runs[k])) if adam else None
        seeds = max(len(v) for v in by_method.values())
        print(f"\n{env_id}: target {settings['target']:g}, budget {settings['budget']:.0f} steps, "
              f"evaluation every {settings['eval_every']:.0f} steps, up to {seeds} seeds")
        print("| step size | solved | median env steps to target | median train s to target | "
              "steps to target per seed | median best evaluation |")
        print("|---|---|---|---|---|---|")
        rules = [k for k in by_method if not k.startswith("adam")]
        order = [*rules, *([best] if best else []), *(k for k in adam if k != best)]
        for name in order:
            runs = by_method[name]
            steps, secs, solved = summarize(runs)
            tag = " (best of grid)" if name == best else ""
            per_seed = ", ".join(str(r["reached"][0]) if r["reached"] else "-"
                                 for r in sorted(runs, key=lambda r: r["seed"]))
            best_eval = -rank(runs)[3]
            print(f"| {name}{tag} | {solved}/{len(runs)} | {fmt(steps, '.0f')} | {fmt(secs, '.1f')} | {per_seed} | "
                  f"{best_eval:.0f} |")
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        every, budget = int(settings["eval_every"]), int(settings["budget"])
        grid = np.arange(every, budget + 1, every)
        for name in [*rules, *([best] if best else [])]:
            curves = []
            for r in by_method[name]:
                xs, ys = zip(*r["points"], strict=True) if r["points"] else ((0,), (np.nan,))
                # after reaching the target a run stops: hold its last value
                curves.append(np.interp(grid, xs, ys, right=ys[-1]))
            med = np.median(curves, axis=0)
            lo, hi = np.percentile(curves, 25, axis=0), np.percentile(curves, 75, axis=0)
            (line,) = ax.plot(grid, med, label=f"{name} ({summarize(by_method[name])[2]}/{len(curves)} solved)")
            ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.15)
        ax.axhline(settings["target"], color="gray", ls="--", lw=0.8)
        ax.set_xlabel("env steps")
        ax.set_ylabel("evaluation return (median, 25-75%)")
        ax.set_title(f"{env_id}: REINFORCE/GPOMDP step sizes")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"agents_stepsizes_{env_id}.png", dpi=100)


def study(args: argparse.Namespace) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Run the requested methods and seeds, skipping those already in ``--results``; returns all curves."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    if args.results is not None and args.results.exists():
        results = json.loads(args.results.read_text())
    for env_id in args.envs.split(","):
        settings = dict(SETTINGS[env_id])
        if args.budget is not None:
            settings["budget"] = args.budget
        for label, (optimizer, extra) in methods_for(args.methods.split(",")).items():
            runs = results.setdefault(env_id, {}).setdefault(label, [])
            done = {r["seed"] for r in runs}
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                if seed in done:  # resumable: a rerun skips what is recorded
                    continue
                kwargs = {"n_envs": args.n_envs, "estimator": "gpomdp", **ENV_KWARGS.get(env_id, {}), **extra}
                runs.append(run(env_id, optimizer, kwargs, seed, settings))
                if args.results is not None:
                    args.results.write_text(json.dumps(results))
                r = runs[-1]
                print(env_id, label, "seed", seed, "reached", r["reached"], f"train {r['train_s']:.1f}s",
                      "last", r["points"][-1] if r["points"] else None, flush=True)
            print(env_id, label, summarize(runs), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default="CartPole-v1")
    parser.add_argument("--methods", default="adam,polyak,sls,sps",
                        help="comma-separated: adam (the grid of 5), adam:LR (one value), polyak, sls, sps, ponos, ...")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=None, help="override the per-env budget")
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--results", type=Path, default=None, help="JSON file the curves are written to")
    parser.add_argument("--report", type=Path, nargs="*", default=None,
                        help="merge these result files, print the tables, draw the plots; no training")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    parser.add_argument("--trace", type=int, default=0,
                        help="instead of the study: print J_hat and the step of every update of one run this long")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.trace:
        for env_id in args.envs.split(","):
            for name in args.methods.split(","):
                trace(env_id, name, args.first_seed, args.trace, args.n_envs)
        return
    if args.report is not None:
        merged: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for path in args.report:
            for env_id, by_method in json.loads(path.read_text()).items():
                for name, runs in by_method.items():
                    merged.setdefault(env_id, {}).setdefault(name, []).extend(runs)
        report(merged, args.out)
        return

    results = study(args)
    if args.results is None:
        report(results, args.out)


if __name__ == "__main__":
    main()
