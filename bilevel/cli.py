"""``rlopt bilevel PROBLEM``: run a bilevel solver on a named problem, log it, save the results.

Writes under ``--out`` (default ``runs/bilevel/<problem>-<algorithm>-<upper>-<lower>-s<seed>``):
``history.json`` (every record and the arguments), ``summary.png`` (losses, step sizes, hypergradient norm,
accuracy), and TensorBoard event files (``tensorboard --logdir runs``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlopt.bilevel.hypergradients import HYPERGRADIENT_METHODS
from rlopt.bilevel.problems import PROBLEMS, BilevelProblem, MetaGradientRL
from rlopt.bilevel.solver import ALGORITHMS, RULES, BilevelHistory, BilevelSolver
from rlopt.tools.scalars import tensorboard_logger, write_scalars

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The argument parser (pass a subparser to attach it to a larger command line)."""
    p = parser if parser is not None else argparse.ArgumentParser(prog="rlopt bilevel", description=__doc__)
    p.add_argument("problem", choices=sorted(PROBLEMS), help="bilevel problem to solve")
    p.add_argument(
        "--algorithm",
        default=None,
        choices=ALGORITHMS,
        help="bilevel algorithm (default: stocbio; lookahead for metagrad, the only one that applies to it)",
    )
    p.add_argument("--upper", default="bisls", help=f"upper step-size rule: {', '.join(RULES)} or an rlopt name")
    p.add_argument("--lower", default="bisls", help=f"lower step-size rule: {', '.join(RULES)} or an rlopt name")
    p.add_argument("--upper-lr", type=float, default=None, help="upper lr (sgd/adam) or envelope scale (bisls/bisps)")
    p.add_argument("--lower-lr", type=float, default=None, help="lower lr (sgd/adam) or envelope scale (bisls/bisps)")
    p.add_argument(
        "--hypergrad",
        default="cg",
        choices=sorted(HYPERGRADIENT_METHODS),
        help="hypergradient method of --algorithm double_loop",
    )
    p.add_argument("--outer-steps", type=int, default=200, help="outer (upper-level) steps")
    p.add_argument("--inner-steps", type=int, default=10, help="lower steps per outer step (double loops)")
    p.add_argument("--linear-steps", type=int, default=10, help="Hessian-vector products per linear solve")
    p.add_argument("--response", default="linear", choices=["linear", "fixed"], help="upper line model")
    p.add_argument("--batch-size", type=int, default=None, help="lower-level minibatch size (default: full)")
    p.add_argument("--upper-batch-size", type=int, default=None, help="upper-level minibatch size (default: full)")
    p.add_argument("--dataset", default="digits", help="digits, or a local MNIST/FashionMNIST .npz or IDX folder")
    p.add_argument("--corruption", type=float, default=0.5, help="label corruption rate (hypercleaning)")
    p.add_argument("--env", default="CartPole-v1", help="metagrad: discrete-action env id of envs.make")
    p.add_argument(
        "--meta-param",
        default="gamma",
        choices=["gamma", "lambda", "entropy"],
        help="metagrad: the tuned hyperparameter",
    )
    p.add_argument("--meta-init", type=float, default=None, help="metagrad: its start value (default per parameter)")
    p.add_argument("--num-envs", type=int, default=16, help="metagrad: env copies stepped together")
    p.add_argument("--n-steps", type=int, default=32, help="metagrad: rollout steps per copy (per level per step)")
    p.add_argument("--eval-every", type=int, default=10, help="compute metrics every N outer steps")
    p.add_argument("--seed", type=int, default=0, help="seed of splits and minibatches")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="floating dtype")
    p.add_argument("--out", default=None, help="output folder (default runs/bilevel/<run name>)")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def make_problem(args: argparse.Namespace) -> BilevelProblem:
    """The problem named in ``args`` with the data options that apply to it."""
    if args.problem == "metagrad":
        if args.batch_size is not None or args.upper_batch_size is not None:
            raise ValueError("metagrad: --batch-size/--upper-batch-size do not apply (a batch is one rollout)")
        return MetaGradientRL(
            args.env,
            meta_param=args.meta_param,
            init=args.meta_init,
            num_envs=args.num_envs,
            n_steps=args.n_steps,
            seed=args.seed,
            device=args.device,
            dtype=DTYPES[args.dtype],
        )
    common: dict[str, Any] = {
        "lower_batch_size": args.batch_size,
        "upper_batch_size": args.upper_batch_size,
        "seed": args.seed,
        "device": args.device,
        "dtype": DTYPES[args.dtype],
    }
    if args.problem == "hypercleaning":
        common.update(dataset=args.dataset, corruption=args.corruption)
    elif args.problem == "representation":
        common.update(dataset=args.dataset)
    return PROBLEMS[args.problem](**common)


def save_summary_png(history: BilevelHistory, path: Path, title: str) -> None:
    """A 2x2 figure: upper/lower loss, both step sizes, hypergradient norm, accuracies (if any)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figure list stay untouched

    steps = history.column("step")
    fig = Figure(figsize=(10, 7))
    axes = fig.subplots(2, 2)
    ax = axes[0][0]
    upper, lower = history.column("upper_loss"), history.column("lower_loss")
    ax.plot(steps, upper, label="upper loss")
    ax.plot(steps, lower, label="lower loss")
    # Surrogate losses (RL) can be negative: a symmetric log scale then.
    ax.set_yscale("log" if all(v > 0 for v in upper + lower if math.isfinite(v)) else "symlog")
    ax.legend()
    ax = axes[0][1]
    ax.plot(steps, [max(v, 1e-30) for v in history.column("upper_step_size")], label="upper step")
    ax.plot(steps, [max(v, 1e-30) for v in history.column("lower_step_size")], label="lower step")
    ax.set_yscale("log")
    ax.legend()
    ax = axes[1][0]
    ax.plot(steps, [max(v, 1e-30) for v in history.column("hypergradient_norm")], label="‖hypergradient‖")
    ax.set_yscale("log")
    ax.legend()
    ax = axes[1][1]
    for key in ("val_accuracy", "test_accuracy", "val_loss", "value", "eval_return", "train_return"):
        points = [(r["step"], r[key]) for r in history.records if key in r]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=key)
    ax.legend()
    for a in axes.flat:
        a.set_xlabel("outer step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    """Solve a bilevel problem (hyper-cleaning, regularization, ...) with BiSLS/BiSPS step sizes.

    Entry point of ``rlopt bilevel``; returns the process exit status.
    """
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run from parsed arguments (for a parent command line that attached :func:`build_parser` to a subparser)."""
    problem = make_problem(args)
    if args.algorithm is None:
        args.algorithm = problem.algorithms[0] if problem.algorithms is not None else "stocbio"
    solver = BilevelSolver(
        problem,
        args.algorithm,
        args.upper,
        args.lower,
        upper_lr=args.upper_lr,
        lower_lr=args.lower_lr,
        inner_steps=args.inner_steps,
        linear_steps=args.linear_steps,
        hypergrad=args.hypergrad,
        response=args.response,
        seed=args.seed,
    )
    name = f"{args.problem}-{args.algorithm}-{args.upper}-{args.lower}-s{args.seed}"
    out = Path(args.out) if args.out is not None else Path("runs") / "bilevel" / name
    out.mkdir(parents=True, exist_ok=True)
    logger = None if args.no_tensorboard else tensorboard_logger(out)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.outer_steps, desc=name, unit="step")

    def log(record: dict[str, float]) -> None:
        step = int(record["step"])
        if logger is not None:
            write_scalars(logger, {f"bilevel/{key}": value for key, value in record.items() if key != "step"}, step)
        if bar is not None:
            bar.update(1)
            shown: dict[str, str] = {
                k: f"{record[k]:.3g}" for k in ("upper_loss", "upper_step_size", "lower_step_size") if k in record
            }
            if "test_accuracy" in record:
                shown["test_acc"] = f"{record['test_accuracy']:.3f}"
            if "eval_return" in record:
                shown["eval_return"] = f"{record['eval_return']:.1f}"
            bar.set_postfix(shown)

    try:
        history = solver.run(args.outer_steps, eval_every=args.eval_every, callback=log)
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
    (out / "history.json").write_text(
        json.dumps({"arguments": vars(args), "records": history.records}, indent=1, default=str)
    )
    save_summary_png(history, out / "summary.png", name)
    final = {
        k: round(v, 6)
        for k, v in history.final.items()
        if k in ("upper_loss", "val_loss", "test_accuracy", "value", "eval_return", "gamma", "gae_lambda", "ent_coef")
    }
    print(f"{name}: {final}; results in {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
