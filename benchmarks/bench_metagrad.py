"""Meta-gradient tuning of gamma/lambda/entropy (bilevel.problems.MetaGradientRL) against fixed values.

The same actor-critic (same losses, rollouts of ``num_envs x n_steps`` transitions, one SGD step per rollout)
is trained with the meta-parameter tuned online by the look-ahead meta-gradient (BilevelSolver, algorithm
"lookahead", one or more upper rules) and with it fixed at its start value and at other values. Reported per
configuration over seeds: final and mean greedy evaluation return (mean ± std), the final meta-parameter
value, env steps and wall time (evaluation excluded).

Run (2-core CPU, under nice):

    nice -n 19 python benchmarks/bench_metagrad.py --updates 150 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from rlopt.bilevel import BilevelSolver
from rlopt.bilevel.problems import MetaGradientRL
from rlopt.bilevel.problems.metagrad import METRIC_NAMES


def make_problem(args: argparse.Namespace, seed: int, init: float) -> MetaGradientRL:
    return MetaGradientRL(
        args.env,
        meta_param=args.meta_param,
        init=init,
        gamma=args.gamma,
        gae_lambda=args.gae_lambda,
        ent_coef=args.ent_coef,
        num_envs=args.num_envs,
        n_steps=args.n_steps,
        seed=seed,
    )


def run_tuned(args: argparse.Namespace, seed: int, rule: str, upper_lr: float) -> dict[str, Any]:
    problem = make_problem(args, seed, args.init)
    solver = BilevelSolver(
        problem, "lookahead", upper=rule, lower="sgd", upper_lr=upper_lr, lower_lr=args.lr, seed=seed
    )
    history = solver.run(args.updates, eval_every=args.eval_every)
    evals = history.column("eval_return")
    key = METRIC_NAMES[args.meta_param]
    return {
        "final": evals[-1],
        "mean": statistics.fmean(evals),
        "meta": history.final[key],
        "env_steps": history.final["env_steps"],
        "time": history.final["wall_time"],
    }


class FixedAgent:
    """The same agent without the upper level: one SGD step on the inner loss per fresh rollout."""

    def __init__(self, args: argparse.Namespace, seed: int, value: float) -> None:
        self.problem = make_problem(args, seed, value)
        self.problem.reset()
        self.generator = torch.Generator().manual_seed(seed)
        self.x = self.problem.initial_x()
        self.y = {k: v.requires_grad_(True) for k, v in self.problem.initial_y().items()}
        self.opt = torch.optim.SGD(list(self.y.values()), lr=args.lr)

    def params(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.y.items()}

    def update(self) -> None:
        batch = self.problem.sample_lower_batch(self.generator, self.x, self.params())
        self.opt.zero_grad()
        self.problem.lower_loss(self.x, self.y, batch).backward()
        self.opt.step()


def run_fixed(args: argparse.Namespace, seed: int, value: float) -> dict[str, Any]:
    agent = FixedAgent(args, seed, value)
    evals, elapsed = [], 0.0
    for i in range(args.updates):
        start = time.perf_counter()
        agent.update()
        elapsed += time.perf_counter() - start
        if (i + 1) % args.eval_every == 0 or i == args.updates - 1:
            evals.append(agent.problem.evaluate(agent.params()))
    return {
        "final": evals[-1],
        "mean": statistics.fmean(evals),
        "meta": value,
        "env_steps": agent.problem.env_steps,
        "time": elapsed,
    }


def cost(args: argparse.Namespace, reps: int) -> None:
    """Median seconds per update, meta-gradient step vs plain update, interleaved in one process."""
    problem = make_problem(args, 0, args.init)
    rule, lr = args.tuned[0].split(":") if args.tuned else ("adam", "0.05")
    solver = BilevelSolver(problem, "lookahead", upper=rule, lower="sgd", upper_lr=float(lr), lower_lr=args.lr)
    agent = FixedAgent(args, 0, args.init)
    meta, plain = [], []
    for _ in range(reps):
        start = time.perf_counter()
        solver.step()
        meta.append(time.perf_counter() - start)
        start = time.perf_counter()
        agent.update()
        plain.append(time.perf_counter() - start)
    m, q = statistics.median(meta), statistics.median(plain)
    print(
        f"per update (median of {reps}, interleaved): meta-gradient ({rule}) {1e3 * m:.1f} ms, fixed "
        f"{1e3 * q:.1f} ms, ratio {m / q:.2f}"
    )


def summary(name: str, runs: list[dict[str, Any]]) -> str:
    def ms(key: str, fmt: str) -> str:
        values = [r[key] for r in runs]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{format(statistics.fmean(values), fmt)} ± {format(sd, fmt)}"

    finals = ", ".join(f"{r['meta']:.4g}" for r in runs)
    return (
        f"| {name} | {ms('final', '.1f')} | {ms('mean', '.1f')} | {finals} | {int(runs[0]['env_steps'])} | "
        f"{ms('time', '.1f')} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--meta-param", default="gamma", choices=["gamma", "lambda", "entropy"])
    p.add_argument("--init", type=float, default=0.9, help="start value of the tuned meta-parameter")
    p.add_argument("--fixed", type=float, nargs="*", default=[0.95, 0.99], help="other fixed values to compare")
    p.add_argument("--tuned", nargs="*", default=["adam:0.05"], help="upper rules as rule:upper_lr")
    p.add_argument("--gamma", type=float, default=0.99, help="reference gamma of the outer objective")
    p.add_argument("--gae-lambda", type=float, default=1.0)
    p.add_argument("--ent-coef", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=0.01, help="inner SGD step size (all configurations)")
    p.add_argument("--updates", type=int, default=150)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--n-steps", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (small batches: 1 is fastest)")
    p.add_argument("--cost", type=int, default=0, help="only time N interleaved updates of each kind")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.cost:
        cost(args, args.cost)
        return
    key = METRIC_NAMES[args.meta_param]
    rows = []
    for spec in args.tuned:
        rule, lr = spec.split(":")
        runs = [run_tuned(args, s, rule, float(lr)) for s in args.seeds]
        rows.append(summary(f"meta-gradient ({rule}, lr {lr}), {key} from {args.init}", runs))
        print(rows[-1], flush=True)
    for value in [args.init, *args.fixed]:
        runs = [run_fixed(args, s, value) for s in args.seeds]
        rows.append(summary(f"fixed {key} = {value}", runs))
        print(rows[-1], flush=True)
    print(
        f"\n{args.env}, {args.updates} updates of {args.num_envs}x{args.n_steps} transitions, inner SGD lr "
        f"{args.lr}, reference {key} of the outer objective: {getattr(args, key)}, seeds {args.seeds}, greedy "
        f"evaluation on 16 copies every {args.eval_every} updates\n"
    )
    print(f"| configuration | final eval return | mean eval return | final {key} per seed | env steps | wall s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
