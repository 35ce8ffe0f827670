"""The tuning-free suite on the results page: ``rlopt bench agents`` (rlopt.agents.suite), then its table.

    python benchmarks/bench_suite.py --quick              # seed 0, <= 50k steps per run, every env and rule
    python benchmarks/bench_suite.py --seeds 5            # the whole suite (hours on 2 cores; resumable)

Every argument goes to ``rlopt bench agents``; the summary it writes becomes the page's table.
"""

from __future__ import annotations

import json
import sys

import report

from rlopt.agents import suite


def main(argv: list[str]) -> int:
    args = suite._parser().parse_args(argv)
    suite.main(argv)
    summary = json.loads((args.out / "summary.json").read_text())
    rows = [[r["algorithm"], r["env"], r["rule"], r["budget"], round(r["final"], 1), round(r["best"], 1),
             round(r["score"], 2), f"{r['collapsed']}/{r['seeds']}", suite._verdict(r["meets_target"])]
            for r in summary["rows"]]
    seeds = 1 if args.quick else args.seeds
    subset = "" if set(args.envs) == set(suite.ENVS) else "_".join(e.split("-")[0].lower() for e in args.envs)
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
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
