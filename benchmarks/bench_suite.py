"""The tuning-free suite on the results page: ``rlopt bench agents`` (rlopt.agents.suite), then its table.

    python benchmarks/bench_suite.py --quick              # seed 0, <= 50k steps per run, every env and rule
    python benchmarks/bench_suite.py --seeds 5            # the whole suite (hours on 2 cores; resumable)
    python benchmarks/bench_suite.py --algorithms PPO --envs CartPole-v1 --seeds 5   # re-run some cells

Every argument goes to ``rlopt bench agents``. Outside ``--quick`` the per-run records (final, best, learning
curve) are merged into ``results/agents_suite_runs.jsonl``, a re-run replacing a run of the same name, and the
page's table is summarized from that archive, so that re-running some cells updates their rows and keeps the
others. A row with no runs in the archive keeps its published values; its line in the notes says so.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import report

from rlopt.agents import suite

ARCHIVE = Path(__file__).parent / "results" / "agents_suite_runs.jsonl"
#: what the archive keeps of a run (the curve's returns rounded to 0.1)
KEPT = ("algorithm", "env", "rule", "seed", "budget", "eval_every", "eval_episodes", "final", "final_std", "best",
        "curve", "train_seconds", "timesteps", "failures", "skipped")
RULE_COLORS = {"adam": "#444444", "sls": "#1f77b4", "sps": "#ff7f0e", "ponos": "#2ca02c", "polyak": "#d62728"}


def merge_archive(records: list[dict], archive: Path = ARCHIVE) -> list[dict]:
    """Merge ``records`` into the archive (one JSON line per run, keyed by algorithm, env, rule and seed; a new
    record replaces an old one), written atomically; returns every archived record."""
    from rlopt._atomic import atomic_write

    def key(r: dict) -> tuple[str, str, str, int]:
        return r["algorithm"], r["env"], r["rule"], int(r["seed"])

    merged = {}
    if archive.exists():
        for line in archive.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                merged[key(record)] = record
    for r in records:
        kept = {k: r[k] for k in KEPT if k in r}
        kept["curve"] = [[int(t), round(float(v), 1)] for t, v in r["curve"]]
        merged[key(kept)] = kept
    archived = [merged[k] for k in sorted(merged)]
    with atomic_write(archive) as f:
        f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in archived).encode())
    return archived


def plot_curves(records: list[dict], algorithm: str, envs: list[str], rules: list[str], seeds: int, out: Path) -> Path:
    """One panel per env: each rule's learning curve (deterministic evaluation every ``budget / 20`` steps), the
    median over seeds as a line and the range over seeds as a band, with the random policy's return dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.4 * len(envs), 3.0), layout="constrained")
    axes = fig.subplots(1, len(envs), squeeze=False)[0]
    for ax, env in zip(axes, envs, strict=True):
        for rule in rules:
            curves = [r["curve"] for r in records
                      if (r["algorithm"], r["env"], r["rule"]) == (algorithm, env, rule) and r["seed"] < seeds]
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


def suite_plots(archived: list[dict], seeds: int, out_dir: Path) -> tuple[list[Path], str]:
    """Every algorithm's plot, whichever cells this invocation re-ran: redrawn from the archive where it holds
    every env of that algorithm, else the published plot kept (and said so in the notes)."""
    plots: list[Path] = []
    notes = ""
    for algo in suite.ALGORITHMS:
        mine = [r for r in archived if r["algorithm"] == algo]
        path = out_dir / f"agents_suite_{algo}.png"
        if {r["env"] for r in mine} == set(suite.ENVS):
            plots.append(plot_curves(mine, algo, list(suite.ENVS), list(suite.RULES), seeds, path))
        elif path.exists():
            plots.append(path)
            notes += (f" The {algo} plot is the full run's: the archive does not hold every env of {algo} yet, so "
                      "its curves are not redrawn.")
    return plots, notes


def main(argv: list[str]) -> int:
    args = suite._parser().parse_args(argv)
    suite.main(argv)
    summary = json.loads((args.out / "summary.json").read_text())
    seeds = 1 if args.quick else args.seeds
    random = summary["random"]
    notes = ""
    plots: list[Path] = []
    if args.quick:
        table = summary["rows"]
    else:
        runs = suite.plan(args)
        archived = merge_archive([json.loads((args.out / f"{r.name}.json").read_text()) for r in runs])
        random = {env: random[env] if env in random else suite.random_return(env)
                  for env in sorted({r["env"] for r in archived})}
        table, notes = _merged_rows(archived, random)
        notes = (notes + " Why the cells that miss a target do, with per-seed traces: benchmarks/notes/RESULTS.md "
                 "(the sections on the suite's re-runs); which rule to use where: README, 'Which step-size rule "
                 "where'.").strip()
        plots, plot_notes = suite_plots(archived, seeds, Path(__file__).parent)
        notes += plot_notes
    rows = [[r["algorithm"], r["env"], r["rule"], r["budget"], round(r["final"], 1), round(r["best"], 1),
             round(r["score"], 2), f"{r['collapsed']}/{r['seeds']}", suite._verdict(r["meets_target"])]
            for r in table]
    report.save(
        "agents_suite" + ("_quick" if args.quick else ""), package="agents",
        title="The tuning-free suite: every step-size rule at its defaults against tuned Adam"
        + (" (quick subset)" if args.quick else ""),
        command=None if args.quick else "python benchmarks/bench_suite.py --algorithms PPO A2C --seeds 5 --jobs 2 "
        "--out runs/suite",
        protocol=suite.__doc__.split("Protocol, per (algorithm, env, rule, seed):")[1].split("Each run writes")[0]
        .strip() + f" Seeds: {seeds}. Targets: normalized final >= 0.9 of tuned Adam's (median over seeds) and no "
        "collapse (a seed whose best normalized score is >= 0.5 ends at >= 0.8 of it). Random-policy returns: "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(random.items())) + "."
        + (" The quick subset caps every budget at 50k steps, far below the yaml's: it shows how each rule starts, "
           "not the targets' verdict (where tuned Adam has not learned yet the score is undefined)."
           if args.quick else ""),
        columns=["algorithm", "env", "rule", "budget", "final return", "best return", "normalized final",
                 "collapsed seeds", "target"],
        rows=rows,
        plots=plots,
        notes=notes,
    )
    return 0


def _merged_rows(archived: list[dict], random: dict[str, float], published: Path | None = None
                 ) -> tuple[list[dict], str]:
    """The table's rows: summarized from the archive where it holds a cell's runs, else the published row (a
    cell of the full run whose per-run records predate the archive). Where the archive has a rule's runs but
    not tuned Adam's for that (algorithm, env), the published Adam final is the normalized score's 1."""
    published = published or report.RESULTS / "agents_suite.json"
    old = {(r[0], r[1], r[2]): r for r in json.loads(published.read_text())["rows"]} if published.exists() else {}
    adam = {(a, e): row[4] for (a, e, rule), row in old.items() if rule == "adam"}
    rows = suite.summarize(archived, random, reference=adam)
    cells = {(r["algorithm"], r["env"], r["rule"]) for r in rows}
    kept = []
    for cell, row in old.items():
        if cell not in cells:
            algo, env, rule, budget, final, best, score, collapsed, verdict = row
            bad, seeds = (int(x) for x in collapsed.split("/"))
            rows.append({"algorithm": algo, "env": env, "rule": rule, "seeds": seeds, "budget": budget,
                         "final": final, "best": best, "score": score, "collapsed": bad,
                         "meets_target": {"met": True, "missed": False}.get(verdict)})
            kept.append(cell)
    rows.sort(key=lambda r: (r["algorithm"], r["env"], r["rule"]))
    notes = ""
    if kept:
        by_pair: dict[tuple[str, str], list[str]] = {}
        for a, e, r in kept:
            by_pair.setdefault((a, e), []).append(r)
        notes = (f"{len(rows) - len(kept)} rows are summarized from the per-run records in "
                 f"results/{ARCHIVE.name}; {len(kept)} keep the values of the full run that predates it ("
                 + "; ".join(f"{a} {e}: {', '.join(rs)}" for (a, e), rs in sorted(by_pair.items())) + ").")
    return rows, notes


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
