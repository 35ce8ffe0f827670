"""Bilevel benchmarks: BiSLS/BiSPS at defaults against grid-tuned SGD/Adam, and hypergradient cost.

Part ``grid`` (the benchopt protocol, on scikit-learn's digits, so it runs offline): data hyper-cleaning with
label corruption ``p``, stocBiO with minibatches; BiSLS and BiSPS at their defaults against SGD and Adam
bilevel at every point of a 5 x 5 grid of (upper, lower) learning rates. Reports the final test accuracy
(median and 20-80 % band over seeds) and wall time, the best grid point, and the defaults' compute as a
fraction of the whole grid's.

Part ``hypergrad``: the cost of one hypergradient on the same problem (full batch) for unrolled
differentiation (ours with torch.func against ``higher``) as ``T`` grows, and for implicit differentiation by
conjugate gradients (ours against TorchOpt's ``custom_root`` with ``solve_cg``), at the same iteration
counts. Each configuration runs in a fresh subprocess that reports time per call (median of repeats) and the
peak memory allocated by one call (from ``torch.profiler``'s CPU allocation record: the running sum of
allocations and frees in time order). Both libraries' answers are compared to ours.

    python benchmarks/bench_bilevel.py                 # full: 5 seeds, 5x5 grid, 150 outer steps
    python benchmarks/bench_bilevel.py --quick         # 2 seeds, 3x3 grid, 40 outer steps
    python benchmarks/bench_bilevel.py --part hypergrad
    python benchmarks/bench_bilevel.py --part pairings --seeds 5 --steps 160 --corruption 0.7
    python benchmarks/bench_bilevel.py --part trace --seeds 5 --steps 80 --defaults-steps 80 160 240 --corruption 0.7
    python benchmarks/bench_bilevel.py --part grid --no-grid --seeds 2 --steps 80   # defaults only, quick

Part ``trace``: the first outer steps of BiSPS with and without the Armijo test on its Polyak steps and of
BiSLS (upper step against the envelope, hypergradient norm, saturated weights, accuracy at each budget).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import report
import torch

GRID = {
    "sgd": ([1.0, 10.0, 100.0, 1e3, 1e4], [0.01, 0.03, 0.1, 0.3, 1.0]),
    "adam": ([0.003, 0.01, 0.03, 0.1, 0.3], [0.001, 0.003, 0.01, 0.03, 0.1]),
}
QUICK_GRID = {
    "sgd": ([10.0, 1e3, 1e4], [0.03, 0.3, 1.0]),
    "adam": ([0.01, 0.03, 0.1], [0.003, 0.01, 0.03]),
}


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """Median and the 20 % / 80 % quantiles (linear interpolation)."""
    v = sorted(values)
    if len(v) == 1:
        return v[0], v[0], v[0]
    q = statistics.quantiles(v, n=10, method="inclusive")
    return statistics.median(v), q[1], q[7]


def solve(
    upper: str,
    lower: str,
    seed: int,
    args: argparse.Namespace,
    steps: int,
    eval_every: int,
    upper_lr: float | None = None,
    lower_lr: float | None = None,
    options: dict[str, Any] | None = None,
    callback: Any = None,
) -> list[dict[str, float]]:
    """The records of one hyper-cleaning run of ``args.algorithm`` with rule ``upper``/``lower`` on each level.

    ``options``: ``{"upper": {...}, "lower": {...}}`` passed as ``upper_options``/``lower_options``;
    ``callback(solver, record)`` is called after every outer step.
    """
    import warnings

    from rlopt.bilevel import BilevelSolver
    from rlopt.bilevel.problems import DataHyperCleaning

    problem = DataHyperCleaning(
        corruption=args.corruption, lower_batch_size=args.batch_size, upper_batch_size=args.batch_size, seed=seed
    )
    solver = BilevelSolver(
        problem,
        args.algorithm,
        upper,
        lower,
        upper_lr=upper_lr,
        lower_lr=lower_lr,
        inner_steps=args.inner_steps,
        linear_steps=args.linear_steps,
        upper_options=(options or {}).get("upper"),
        lower_options=(options or {}).get("lower"),
        seed=seed,
    )
    # Process CPU time of the solver, evaluation excluded: unlike wall time it does not count the time the
    # process is descheduled or stopped by other work on the machine (--clock process).
    evaluation = [0.0]
    metrics = problem.metrics

    def timed_metrics(*a: Any) -> dict[str, float]:
        start = time.process_time()
        out = metrics(*a)
        evaluation[0] += time.process_time() - start
        return out

    problem.metrics = timed_metrics  # type: ignore[method-assign]
    cpu_start = time.process_time()

    def hook(record: dict[str, float]) -> None:
        record["cpu_time"] = time.process_time() - cpu_start - evaluation[0]
        if callback is not None:
            callback(solver, record)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # counted skips/failures of diverging grid points
        return solver.run(steps, eval_every=eval_every, callback=hook).records


def one_run(
    rule: str,
    upper_lr: float | None,
    lower_lr: float | None,
    seed: int,
    args: argparse.Namespace,
    steps: int | None = None,
) -> dict[str, Any]:
    """One solver run; returns the final test accuracy and solver time, and the curve of both over the run."""
    records = solve(rule, rule, seed, args, steps or args.steps, max(1, args.steps // 8), upper_lr, lower_lr)
    curve = [
        {
            "step": int(r["step"]) + 1,
            "wall_time": r["cpu_time" if args.clock == "process" else "wall_time"],
            "test_accuracy": _finite(r["test_accuracy"]),
        }
        for r in records
        if "test_accuracy" in r
    ]
    return {"test_accuracy": curve[-1]["test_accuracy"], "wall_time": curve[-1]["wall_time"], "curve": curve}


def _finite(acc: float) -> float:
    return acc if acc == acc else 0.0  # a diverged run (NaN) counts as 0


def _at(run: dict[str, Any], steps: int) -> dict[str, Any]:
    """The run as if it had stopped after ``steps`` outer steps (the solver does not know its horizon)."""
    point = next(c for c in run["curve"] if c["step"] == steps)
    curve = [c for c in run["curve"] if c["step"] <= steps]
    return {"test_accuracy": point["test_accuracy"], "wall_time": point["wall_time"], "curve": curve}


def run_grid(args: argparse.Namespace) -> dict[str, Any]:
    grid = QUICK_GRID if args.quick else GRID
    seeds = list(range(args.seeds))
    budgets = sorted(set(args.defaults_steps or [args.steps]))
    unit = max(1, args.steps // 8)
    if any(b % unit for b in budgets):
        raise SystemExit(f"--defaults-steps must be multiples of {unit} (the evaluation interval)")
    results: dict[str, Any] = {"defaults": {}, "grid": {}}
    for rule in ("bisls", "bisps"):
        # One run per seed at the largest budget; the smaller budgets are read off its evaluations.
        longest = [one_run(rule, None, None, s, args, budgets[-1]) for s in seeds]
        for steps in budgets:
            runs = [_at(r, steps) for r in longest]
            key = rule if steps == args.steps else f"{rule}, {steps} steps"
            results["defaults"][key] = runs
            acc = quantiles([r["test_accuracy"] for r in runs])
            print(
                f"{key:16s} defaults: acc {acc[0]:.4f} [{acc[1]:.4f}, {acc[2]:.4f}] "
                f"time {sum(r['wall_time'] for r in runs):.1f}s",
                flush=True,
            )
    for rule, (uppers, lowers) in grid.items():
        if args.no_grid:
            break
        for ul in uppers:
            for ll in lowers:
                runs = [one_run(rule, ul, ll, s, args) for s in seeds]
                results["grid"][f"{rule} {ul:g} {ll:g}"] = runs
                acc = quantiles([r["test_accuracy"] for r in runs])
                print(
                    f"{rule:6s} upper {ul:<7g} lower {ll:<6g}: acc {acc[0]:.4f} [{acc[1]:.4f}, {acc[2]:.4f}]",
                    flush=True,
                )
    return results


def best_grid_points(results: dict[str, Any]) -> dict[str, str]:
    """Rule -> key of its grid point with the highest median final test accuracy."""
    best: dict[str, tuple[float, str]] = {}
    for key, runs in results["grid"].items():
        rule = key.split()[0]
        med = quantiles([r["test_accuracy"] for r in runs])[0]
        if rule not in best or med > best[rule][0]:
            best[rule] = (med, key)
    return {rule: key for rule, (_, key) in best.items()}


def plot_grid(results: dict[str, Any], path: str, title: str) -> None:
    """Median test accuracy (20-80 % band over seeds) against solver time for the defaults and best grid points."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figure list stay untouched

    series: dict[str, list[dict[str, Any]]] = {}
    for rule in ("bisls", "bisps"):  # each rule's longest budget (its curve contains the shorter ones)
        keys = [k for k in results["defaults"] if k.split(",")[0] == rule]
        longest = max(keys, key=lambda k: len(results["defaults"][k][0]["curve"]))
        series[_label(longest)] = results["defaults"][longest]
    for rule, key in best_grid_points(results).items():
        series[f"best {rule} grid point ({', '.join(key.split()[1:])})"] = results["grid"][key]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for label, runs in series.items():
        n = min(len(r["curve"]) for r in runs)
        t = [statistics.median(r["curve"][i]["wall_time"] for r in runs) for i in range(n)]
        q = [quantiles([r["curve"][i]["test_accuracy"] for r in runs]) for i in range(n)]
        (line,) = ax.plot(t, [v[0] for v in q], marker="o", markersize=3, label=label)
        ax.fill_between(t, [v[1] for v in q], [v[2] for v in q], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("solver time (s), evaluation excluded")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


TRACE_RULES = {
    # label: (rule on both levels, options)
    "bisps, no test (closed-form Polyak steps)": ("bisps", {"upper": {"search": False}, "lower": {"search": False}}),
    "bisps (default: Polyak step checked by Armijo)": ("bisps", None),
    "bisls (default)": ("bisls", None),
}


def run_trace(args: argparse.Namespace) -> str:
    """What the first outer steps do: BiSPS with and without the Armijo test on its Polyak steps, and BiSLS.

    Per rule, medians over seeds of: the upper step against its envelope at outer steps 0-3 (the largest
    steps of a run), the hypergradient norm at step 0, the fraction of training weights saturated
    (``σ(λ_i) > 0.99`` or ``< 0.01``, where ``σ'`` and hence their hypergradient all but vanish) after 3
    outer steps and at the end, the mean weight of noisy and clean samples at the end, the validation
    loss and test accuracy at each budget of ``--defaults-steps``.
    """
    budgets = sorted(set(args.defaults_steps or [args.steps]))
    unit = max(1, args.steps // 8)
    lines = [
        "| rule | upper step / envelope, outer steps 0-3 | hypergradient norm, step 0 | saturated weights "
        "after 3 steps / at the end | mean weight noisy / clean, end | val loss | test accuracy "
        f"({' / '.join(str(b) for b in budgets)} steps) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, (rule, options) in TRACE_RULES.items():
        per_seed: list[dict[str, Any]] = []
        for seed in range(args.seeds):
            saturated: list[float] = []

            def track(solver: Any, record: dict[str, float], saturated: list[float] = saturated) -> None:
                w = torch.sigmoid(solver.x.detach())
                saturated.append(float(((w > 0.99) | (w < 0.01)).to(torch.float64).mean()))

            records = solve(rule, rule, seed, args, budgets[-1], unit, options=options, callback=track)
            per_seed.append(
                {
                    "ratio": [r["upper_step_size"] / r["upper_envelope"] for r in records[:4]],
                    "hg0": records[0]["hypergradient_norm"],
                    "sat3": saturated[2],
                    "sat_end": saturated[-1],
                    "noisy": records[-1]["weight_noisy"],
                    "clean": records[-1]["weight_clean"],
                    "val": [records[b - 1]["val_loss"] for b in budgets],
                    "acc": [_finite(records[b - 1]["test_accuracy"]) for b in budgets],
                }
            )

        def med(key: str, i: int | None = None, runs: list[dict[str, Any]] = per_seed) -> float:
            return statistics.median(p[key] if i is None else p[key][i] for p in runs)

        ratios = " ".join(f"{med('ratio', i):.2f}" for i in range(4))
        val = " / ".join(f"{med('val', i):.3f}" for i in range(len(budgets)))
        acc = " / ".join(f"{med('acc', i):.4f}" for i in range(len(budgets)))
        lines.append(
            f"| {label} | {ratios} | {med('hg0'):.3f} | {med('sat3'):.3f} / {med('sat_end'):.3f} | "
            f"{med('noisy'):.2f} / {med('clean'):.2f} | {val} | {acc} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def run_pairings(args: argparse.Namespace) -> str:
    """BiSLS/BiSPS on each level in all four pairings: final accuracy and the steps taken late in the run.

    The step sizes are the means over the last 20 outer steps of ``upper_step_size`` and ``lower_step_size``
    (the last lower step of each outer step), next to the envelopes' values there.
    """
    lines = [
        "| upper | lower | test accuracy, median | upper step (last 20) | lower step (last 20) |",
        "|---|---|---|---|---|",
    ]
    for upper in ("bisps", "bisls"):
        for lower in ("bisps", "bisls"):
            acc, up_steps, low_steps = [], [], []
            for seed in range(args.seeds):
                records = solve(upper, lower, seed, args, args.steps, args.steps)
                acc.append(_finite(records[-1]["test_accuracy"]))
                up_steps += [r["upper_step_size"] for r in records[-20:]]
                low_steps += [r["lower_step_size"] for r in records[-20:]]
            lines.append(
                f"| {upper} | {lower} | {statistics.median(acc):.4f} | {statistics.mean(up_steps):.2f} | "
                f"{statistics.mean(low_steps):.3f} |"
            )
    return "\n".join(lines)


def _label(key: str) -> str:
    """``"bisls"`` -> ``"bisls (defaults)"``; ``"bisls, 160 steps"`` -> ``"bisls (defaults, 160 steps)"``."""
    rule, _, budget = key.partition(", ")
    return f"{rule} (defaults{', ' + budget if budget else ''})"


def report_grid(results: dict[str, Any]) -> str:
    lines = [
        "| method | test accuracy, median [20%, 80%] | wall time per run (s), median | runs |",
        "|---|---|---|---|",
    ]
    grid_time = {"sgd": 0.0, "adam": 0.0}
    for key, runs in results["grid"].items():
        grid_time[key.split()[0]] += sum(r["wall_time"] for r in runs)
    best = best_grid_points(results)
    for rule, runs in results["defaults"].items():
        acc = quantiles([r["test_accuracy"] for r in runs])
        t = statistics.median(r["wall_time"] for r in runs)
        lines.append(f"| {_label(rule)} | {acc[0]:.4f} [{acc[1]:.4f}, {acc[2]:.4f}] | {t:.2f} | {len(runs)} |")
    for rule, key in best.items():
        runs = results["grid"][key]
        acc = quantiles([r["test_accuracy"] for r in runs])
        t = statistics.median(r["wall_time"] for r in runs)
        lines.append(
            f"| best {rule} grid point (upper, lower lr = {', '.join(key.split()[1:])}) | "
            f"{acc[0]:.4f} [{acc[1]:.4f}, {acc[2]:.4f}] | {t:.2f} | {len(runs)} |"
        )
    for rule in ("sgd", "adam"):
        keys = [k for k in results["grid"] if k.startswith(rule)]
        if not keys:
            continue
        meds = sorted(quantiles([r["test_accuracy"] for r in results["grid"][k]])[0] for k in keys)
        lines.append(
            f"| {rule} grid: worst / median grid point | {meds[0]:.4f} / {statistics.median(meds):.4f} | "
            f"| {len(keys)} points |"
        )
    lines.append("")
    for rule, runs in results["defaults"].items():
        own = sum(r["wall_time"] for r in runs)
        for grid_rule in ("sgd", "adam"):
            if not grid_time[grid_rule]:
                continue
            lines.append(
                f"- {_label(rule)} used {own / grid_time[grid_rule]:.3f} of the {grid_rule} grid's total solver time "
                f"({own:.1f}s vs {grid_time[grid_rule]:.1f}s)."
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Hypergradient cost (each configuration in its own process, so that peak memory is its own)

CHILD = r'''
import json, sys, time, statistics
import torch
torch.set_num_threads(1)
from rlopt.bilevel import hypergradient
from rlopt.bilevel.problems import DataHyperCleaning
cfg = json.loads(sys.argv[1])
p = DataHyperCleaning(corruption=0.5, dtype=torch.float64, seed=0)
x = p.initial_x() + 0.1 * torch.randn(p.n_lower, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
y = p.initial_y()
g = torch.func.grad(p.lower_loss, argnums=1)
for _ in range(30):
    step = g(x, y)
    y = {k: v - 0.5 * step[k] for k, v in y.items()}

def peak_mb(fn):
    """Peak of CPU memory allocated during one call, from the profiler's allocation record, in MB."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20

def ours():
    if cfg["kind"] == "itd":
        return hypergradient(p.upper_loss, p.lower_loss, x, y, "itd", steps=cfg["T"], lr=0.5, validate=False)
    return hypergradient(p.upper_loss, p.lower_loss, x, y, "cg", maxiter=cfg["K"], rtol=0.0, validate=False)

def theirs():
    if cfg["kind"] == "itd":
        return hypergradient(p.upper_loss, p.lower_loss, x, y, "higher", steps=cfg["T"], lr=0.5, validate=False)
    import torchopt
    def optimality(params, lam):
        gy = torch.func.grad(p.lower_loss, argnums=1)(lam, {"weight": params[0], "bias": params[1]})
        return (gy["weight"], gy["bias"])
    solve_cg = torchopt.linear_solve.solve_cg(maxiter=cfg["K"], rtol=0.0, atol=0.0)
    @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve_cg)
    def solve(params, lam):
        return (params[0].detach(), params[1].detach())
    lam = x.clone().requires_grad_(True)
    w, b = solve((y["weight"], y["bias"]), lam)
    loss = p.upper_loss(lam, {"weight": w, "bias": b})
    return torch.autograd.grad(loss, lam)[0]

fn = ours if cfg["who"] == "ours" else theirs
reference = ours() if cfg["who"] != "ours" else None
result = fn()  # warm-up (also the value compared)
memory = peak_mb(fn)
times = []
for _ in range(cfg["repeats"]):
    t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
out = {"time": statistics.median(times), "peak_mb": memory}
if reference is not None:
    out["rel_diff"] = float(torch.linalg.norm(result - reference) / torch.linalg.norm(reference))
print(json.dumps(out))
'''


def run_child(cfg: dict[str, Any]) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}  # type: ignore[dict-item]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def save_grid_report(args: argparse.Namespace, table: str) -> None:
    """The grid table of :func:`report_grid` on the results page (its bullet lines become the notes)."""
    lines = table.splitlines()
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    report.save(
        f"bilevel_hypercleaning_p{args.corruption:g}", package="bilevel",
        title=f"Hyper-cleaning on digits, corruption p = {args.corruption:g}: BiSLS/BiSPS at defaults against "
        "grid-tuned SGD and Adam",
        protocol=f"Data hyper-cleaning (scikit-learn's digits, labels corrupted with probability "
        f"{args.corruption:g}), {args.algorithm} with minibatches, {args.steps} outer steps. BiSLS and BiSPS run "
        "at their defaults (no step size given), also at the longer budgets listed; SGD and Adam run at every "
        f"point of a grid of (upper, lower) learning rates and the best point is shown. Test accuracy over "
        f"{args.seeds} seeds; solver time excludes evaluation.",
        columns=cells[0], rows=[row for row in cells[2:] if len(row) == len(cells[0])],
        plots=[args.plot] if args.plot else [], notes="\n".join(line for line in lines if line.startswith("- ")),
    )


def run_hypergrad(args: argparse.Namespace) -> str:
    repeats = 3 if args.quick else 5
    ts = [5, 20] if args.quick else [5, 20, 80]
    ks = [10, 50] if args.quick else [10, 50, 200]
    lines = [
        "| method | setting | ours: time / call | ours: peak memory | reference | reference: time / call | "
        "reference: peak memory | ratio time (ref / ours) | rel. diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, values, name, ref in (("itd", ts, "T", "higher"), ("cg", ks, "K", "TorchOpt custom_root + solve_cg")):
        for value in values:
            cfg = {"kind": kind, "T": value, "K": value, "repeats": repeats}
            a = run_child({**cfg, "who": "ours"})
            b = run_child({**cfg, "who": "theirs"})
            if "error" in a or "error" in b:
                lines.append(f"| {kind} | {name}={value} | error: {a.get('error', '')} {b.get('error', '')} |||||||")
                continue
            lines.append(
                f"| {kind} | {name}={value} | {1e3 * a['time']:.1f} ms | {a['peak_mb']:.1f} MB | {ref} | "
                f"{1e3 * b['time']:.1f} ms | {b['peak_mb']:.1f} MB | {b['time'] / a['time']:.2f} | "
                f"{b['rel_diff']:.1e} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["grid", "hypergrad", "pairings", "trace", "all"], default="all")
    parser.add_argument(
        "--no-grid", action="store_true", help="grid part: run only the defaults (quick checks), no SGD/Adam grid"
    )
    parser.add_argument("--quick", action="store_true", help="2 seeds, 3x3 grid, 40 steps; fewer sizes for hypergrad")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 5, quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="outer steps (default 150, quick 40)")
    parser.add_argument(
        "--defaults-steps",
        type=int,
        nargs="+",
        default=None,
        help="outer-step budgets for the defaults (default: --steps); the grid always uses --steps",
    )
    parser.add_argument("--corruption", type=float, default=0.5)
    parser.add_argument("--algorithm", default="stocbio")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--linear-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 gives steadier timings)")
    parser.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="solver time as wall time (default) or as the process's CPU time (immune to other load; use with "
        "--threads 1), evaluation excluded either way",
    )
    parser.add_argument("--json", default=None, help="also write raw results to this path")
    parser.add_argument("--plot", default=None, help="write a PNG of test accuracy against solver time here")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (2 if args.quick else 5)
    args.steps = args.steps or (40 if args.quick else 150)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out: dict[str, Any] = {"arguments": vars(args)}
    if args.part in ("grid", "all"):
        out["grid"] = run_grid(args)
        print("\n" + report_grid(out["grid"]) + "\n", flush=True)
        if args.plot:
            plot_grid(out["grid"], args.plot, f"Hyper-cleaning, digits, p = {args.corruption}, {args.seeds} seeds")
            print(f"wrote {args.plot}")
        save_grid_report(args, report_grid(out["grid"]))
    if args.part == "pairings":
        print(run_pairings(args), flush=True)
    if args.part == "trace":
        print(run_trace(args), flush=True)
    if args.part in ("hypergrad", "all"):
        table = run_hypergrad(args)
        out["hypergrad"] = table
        print("\n" + table + "\n", flush=True)
    print(f"total {time.perf_counter() - start:.0f}s; torch {torch.__version__}; threads {args.threads}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
