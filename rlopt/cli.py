"""The ``rlopt`` command line: the one place that sees every layer (each subcommand imports lazily).

    rlopt bench optim    tuning-free step sizes vs tuned SGD/Adam on bundled datasets (table, PNG, TensorBoard)
    rlopt plot RUN_DIR   plot the TensorBoard scalars of a run directory to a PNG

Every subcommand documents its options under ``--help``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main"]


def _bench_optim(args: argparse.Namespace) -> int:
    from rlopt import compare

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


def _plot(args: argparse.Namespace) -> int:
    from rlopt.plotting import plot_run

    png = plot_run(args.run_dir, args.out, tags=args.tags)
    print(f"plot: {png}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlopt", description="Tuning-free step sizes for PyTorch: benchmarks, training and plots.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("bench", help="run a benchmark")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    optim = bench_sub.add_parser(
        "optim",
        help="step-size rules at defaults vs SGD/Adam at the best of a 7-point learning-rate grid",
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
    optim.set_defaults(func=_bench_optim)

    plot = sub.add_parser("plot", help="plot the TensorBoard scalars of a run directory",
                          description="Read every TensorBoard event file under RUN_DIR and draw one panel per "
                          "scalar tag into a PNG.")
    plot.add_argument("run_dir", help="directory containing TensorBoard event files (searched recursively)")
    plot.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/scalars.png)")
    plot.add_argument("--tags", nargs="*", default=None, help="only these scalar tags (default: all)")
    plot.set_defaults(func=_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlopt`` command."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
