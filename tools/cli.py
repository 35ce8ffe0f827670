"""``rlopt bench`` and ``rlopt plot``: the command-line faces of :mod:`rlopt.tools.compare` and
:mod:`rlopt.tools.plotting`."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BENCH_GROUP", "bench_main", "bench_optim_main", "plot_main"]


BENCH_GROUP = "rlopt.bench"


def _optim_parser() -> argparse.ArgumentParser:
    optim = argparse.ArgumentParser(
        prog="rlopt bench optim",
        description="Train a digits MLP and a breast-cancer logistic regression (scikit-learn's bundled data) "
        "with SLS, AdaSLS, SPS, DecSPS and PoNoS at their defaults, and with SGD and Adam at each of 7 "
        "learning rates; print epochs to a target training loss, save a PNG of loss and step size, a JSON "
        "summary and TensorBoard logs.",
    )
    optim.add_argument("--tasks", nargs="+", default=["digits", "breast_cancer"],
                       choices=["digits", "breast_cancer"], help="datasets (default: both)")
    optim.add_argument("--epochs", type=int, default=30, help="epochs per run (default: 30)")
    optim.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    optim.add_argument("--quick", action="store_true", help="8 epochs, first seed only")
    optim.add_argument("--out", default="runs/bench_optim", help="output directory (default: runs/bench_optim)")
    optim.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    optim.add_argument("--no-progress", action="store_true", help="no progress bar")
    return optim


def bench_main(argv: Sequence[str] | None = None) -> int:
    """Run a benchmark: rlopt bench optim (step-size rules on bundled data), rlopt bench agents (the RL suite)."""
    from rlopt.cli import commands, load_command

    args = list(argv or [])
    found = commands(BENCH_GROUP)
    if args and args[0] in found:
        return load_command(found[args[0]], f"rlopt bench {args[0]}")(args[1:])
    parser = argparse.ArgumentParser(prog="rlopt bench", description="Run a benchmark.")
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name in found:
        sub.add_parser(name, add_help=False, help=f"see rlopt bench {name} --help")
    parser.parse_args(args)
    return 2


def bench_optim_main(argv: Sequence[str] | None = None) -> int:
    """Step-size rules at their defaults against SGD and Adam on a learning-rate grid (bundled data)."""
    from rlopt.tools import compare

    args = _optim_parser().parse_args(argv)
    epochs = 8 if args.quick else args.epochs
    seeds = tuple(args.seeds[:1]) if args.quick else tuple(args.seeds)
    out = Path(args.out)
    results = compare.compare(tuple(args.tasks), epochs=epochs, seeds=seeds,
                              log_dir=None if args.no_tensorboard else out / "tensorboard",
                              progress=not args.no_progress)
    rows = compare.summary_rows(results)
    print(compare.format_rows(rows))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(
        [{k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()} for r in rows],
        indent=2))
    png = compare.plot(results, out / "bench_optim.png")
    print(f"\nplot: {png}\nsummary: {out / 'summary.json'}")
    if not args.no_tensorboard:
        print(f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    return 0


def _plot_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlopt plot",
        description="Read every TensorBoard event file under RUN_DIR and draw one panel per scalar tag into a PNG.")
    parser.add_argument("run_dir", help="directory containing TensorBoard event files (searched recursively)")
    parser.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/scalars.png)")
    parser.add_argument("--tags", nargs="*", default=None, help="only these scalar tags (default: all)")
    return parser


def plot_main(argv: Sequence[str] | None = None) -> int:
    """Plot the TensorBoard scalars of a run directory into a PNG."""
    from rlopt.tools.plotting import plot_run

    args = _plot_parser().parse_args(argv)
    try:
        png = plot_run(args.run_dir, args.out, tags=args.tags)
    except (FileNotFoundError, ValueError) as error:  # a user error: one line, no traceback
        raise SystemExit(f"rlopt plot: {error}") from None
    print(f"plot: {png}")
    return 0
