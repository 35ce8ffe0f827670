"""The tuning-free suite on the results page: ``rlopt bench agents`` (rlopt.agents.suite), then its table.

    python benchmarks/bench_suite.py --quick              # seed 0, <= 50k steps per run, every env and rule
    python benchmarks/bench_suite.py --seeds 5            # the whole suite (hours on 2 cores; resumable)

Every argument goes to ``rlopt bench agents``; the summary it writes becomes the page's table.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import report

from rlopt.agents import suite

RULE_COLORS = {"adam": "#444444", "sls": "#1f77b4", "sps": "#ff7f0e", "ponos": "#2ca02c", "polyak": "#d62728"}


def plot_curves(run_dir: Path, algorithm: str, envs: list[str], rules: list[str], seeds: int, out: Path) -> Path:
    """One panel per env: each rule's learning curve (deterministic evaluation every ``budget / 20`` steps), the
    median over seeds as a line and the range over seeds as a band, with the random policy's return dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.4 * len(envs), 3.0), layout="constrained")
    axes = fig.subplots(1, len(envs), squeeze=False)[0]
    for ax, env in zip(axes, envs, strict=True):
        for rule in rules:
            curves = []
            for seed in range(seeds):
                path = run_dir / f"{algorithm}_{env}_{rule}_s{seed}.json"
                if path.exists():
                    curves.append(json.loads(path.read_text())["curve"])
            if not curves:
                continue
            length = min(len(c) for c in curves)
            steps = [curves[0][i][0] for i in range(length)]
            values = [[c[i][1] for c in curves] for i in range(length)]
            ax.plot(steps, [statistics.median(v) for v in values], color=RULE_COLORS.get(rule), lw=1.6,
                    label=rule)
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=RULE_COLORS.get(rule),
                            alpha=0.12, lw=0)
        ax.set_title(env, fontsize=10)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    axes[0].set_ylabel("return (deterministic policy)")
    axes[-1].legend(fontsize=8, frameon=False)
    fig.suptitle(f"{algorithm}: median over {seeds} seeds, band = range", fontsize=10)
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str]) -> int:
    args = suite._parser().parse_args(argv)
    suite.main(argv)
    summary = json.loads((args.out / "summary.json").read_text())
    rows = [[r["algorithm"], r["env"], r["rule"], r["budget"], round(r["final"], 1), round(r["best"], 1),
             round(r["score"], 2), f"{r['collapsed']}/{r['seeds']}", suite._verdict(r["meets_target"])]
            for r in summary["rows"]]
    seeds = 1 if args.quick else args.seeds
    subset = "" if set(args.envs) == set(suite.ENVS) else "_".join(e.split("-")[0].lower() for e in args.envs)
    plots = [] if args.quick else [
        plot_curves(args.out, algo, list(args.envs), list(args.rules), seeds,
                    Path(__file__).parent / f"agents_suite_{algo}.png")
        for algo in args.algorithms]
    report.save(
        "agents_suite" + ("_quick" if args.quick else "") + (f"_{subset}" if subset else ""), package="agents",
        title="The tuning-free suite: every step-size rule at its defaults against tuned Adam"
        + (" (quick subset)" if args.quick else "") + (f" on {', '.join(args.envs)} only" if subset else ""),
        protocol=suite.__doc__.split("Protocol, per (algorithm, env, rule, seed):")[1].split("Each run writes")[0]
        .strip() + f" Seeds: {seeds}. Targets: normalized final >= 0.9 of tuned Adam's (median over seeds) and no "
        "collapse (a seed whose best normalized score is >= 0.5 ends at >= 0.8 of it). Random-policy returns: "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(summary["random"].items())) + "."
        + (" The quick subset caps every budget at 50k steps, far below the yaml's: it shows how each rule starts, "
           "not the targets' verdict (where tuned Adam has not learned yet the score is undefined)."
           if args.quick else ""),
        columns=["algorithm", "env", "rule", "budget", "final return", "best return", "normalized final",
                 "collapsed seeds", "target"],
        rows=rows,
        plots=plots,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
