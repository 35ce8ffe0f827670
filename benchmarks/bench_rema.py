"""ReMA vs VRP_RL vs MRP_RL on the built-in arithmetic task (a miniature of ReMA's Table 1), and speed.

For each seed and method: the same tiny transformer size, the same supervised warm start (steps, batch,
demonstration noise), then the same RL budget per update (``batch_questions`` questions, ``n_plans *
n_answers`` reasoner samples per question) with REINFORCE++ (ReMA: separate weights, alternating
schedule). Greedy accuracy on in-distribution (2-4 operands) and OOD (5-6 operands) questions is compared

* at equal samples: after the same number of updates (every method draws the same reasoner samples);
* at equal generated tokens: each method's last evaluation within the smallest token count any method
  reached (ReMA spends tokens on plans, so it gets fewer updates there).

``--modes rema rema_filter vrp mrp`` adds ReMA with Algorithm 1's prompt filter (``--prompt-filter``, default the
paper's success-rate range 0.2-0.8, ``--filter-k`` samples per question, candidates per phase = questions per
phase): the filter's generated tokens count in its token budget, so "equal tokens" charges it for filtering.

Speed: generation throughput of the KV-cache sampler (tokens/s) against Hugging Face ``generate`` on a
LlamaForCausalLM of the same width and depth (when transformers is installed), and seconds per RL update.

Usage:
    python benchmarks/bench_rema.py --seeds 0 1 2 --jobs 2
    python benchmarks/bench_rema.py --seeds 0 1 2 --jobs 2 --modes rema rema_filter vrp mrp
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch

MODES = ("rema", "rema_filter", "vrp", "mrp")
NAMES = {"rema": "ReMA", "rema_filter": "ReMA + prompt filter", "vrp": "VRP_RL", "mrp": "MRP_RL"}


def run(mode: str, seed: int, args: dict[str, Any]) -> dict[str, Any]:
    """One warm start + RL run; returns its history and timings."""
    torch.set_num_threads(1)
    from rlopt.agents.rema import ReMA, TinyConfig
    from rlopt.envs.reasoning import make_split

    filtered = mode == "rema_filter"
    agent = ReMA(mode="rema" if filtered else mode, algorithm=args["algorithm"],
                 batch_questions=args["batch_questions"],
                 n_plans=args["n_plans"], n_answers=args["n_answers"], switch_every=args["switch_every"],
                 optimizer_kwargs={"lr": args["lr"]}, tiny_config=TinyConfig(d_model=args["d_model"], n_layers=2),
                 eval_tasks=make_split("test", args["eval_size"], seed=100),
                 ood_tasks=make_split("ood", args["eval_size"], seed=100), seed=seed,
                 prompt_filter=tuple(args["prompt_filter"]) if filtered else None, filter_k=args["filter_k"])
    start = time.perf_counter()
    agent.warm_start(steps=args["warm_start_steps"], batch_size=32, p_bad_plan=args["p_bad_plan"])
    warm_s = time.perf_counter() - start
    updates: list[float] = []
    rollouts: list[float] = []
    tokens: list[float] = []

    kept: list[float] = []

    def callback(stats: dict[str, float]) -> None:
        if "filter/kept_fraction" in stats:
            kept.append(stats["filter/kept_fraction"])
        updates.append(stats["time/update_s"])
        rollouts.append(stats["time/rollout_s"])
        tokens.append(stats["generated_tokens"])

    agent.learn(args["updates"], eval_every=args["eval_every"], callback=callback)
    return {"mode": mode, "seed": seed, "history": agent.history, "warm_start_s": warm_s,
            "filter_tokens": agent.num_filter_tokens, "filter_fallbacks": agent.filter_fallbacks,
            "kept_fraction": kept,
            "update_s": statistics.mean(updates), "rollout_tokens_per_s": sum(tokens) / sum(rollouts)}


def _at_tokens(history: list[dict[str, float]], budget: float, key: str) -> float:
    within = [row for row in history if row["tokens"] <= budget and key in row]
    return within[-1][key]


def throughput(device: str, batch: int = 256, new_tokens: int = 64, repeats: int = 5) -> dict[str, float]:
    """Tokens/s of the built-in sampler and of HF generate for equal-size models: the median of ``repeats``
    batches, the two samplers interleaved so that both see the same background load."""
    from rlopt.agents.rema import TinyConfig, TinyPolicy

    policy = TinyPolicy(TinyConfig(d_model=64, n_layers=2, max_length=192), seed=0).to(device)
    prompt = policy.encode_chat([{"role": "system", "content": "solve"}, {"role": "user", "content": "3+4*2-7|211"}])
    out: dict[str, float] = {}

    def timed(fn: Any) -> float:
        start = time.perf_counter()
        produced = fn()
        if device != "cpu":
            torch.cuda.synchronize()
        return produced / (time.perf_counter() - start)

    def ours() -> int:
        g = torch.Generator(device=device).manual_seed(0)
        # a prompt the untrained model continues for all new_tokens: eos is masked by a huge negative bias
        policy.model.head.weight.data[policy.eos_id] = -1e3
        result = policy.generate([prompt] * batch, new_tokens, generator=g)
        return sum(len(t) for t in result.tokens)

    samplers = {"rema_sampler_tokens_per_s": ours}
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return _medians(samplers, timed, repeats)
    config = LlamaConfig(vocab_size=policy.tokenizer.vocab_size, hidden_size=64, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=192, pad_token_id=0, eos_token_id=None, bos_token_id=None)
    model: Any = LlamaForCausalLM(config)
    model.to(device)
    model.eval()
    ids = torch.tensor([prompt] * batch, device=device)

    def hf() -> int:
        with torch.no_grad():
            result = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=new_tokens,
                                    min_new_tokens=new_tokens, top_k=0, pad_token_id=0)
        return int((result.shape[1] - ids.shape[1]) * batch)

    samplers["hf_generate_tokens_per_s"] = hf
    out.update(_medians(samplers, timed, repeats))
    out["ratio_rema_over_hf"] = out["rema_sampler_tokens_per_s"] / out["hf_generate_tokens_per_s"]
    return out


def _medians(samplers: dict[str, Any], timed: Any, repeats: int) -> dict[str, float]:
    for fn in samplers.values():  # warm-up
        fn()
    values: dict[str, list[float]] = {name: [] for name in samplers}
    for _ in range(repeats):
        for name, fn in samplers.items():
            values[name].append(timed(fn))
    return {name: statistics.median(v) for name, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (one thread each)")
    parser.add_argument("--algorithm", default="reinforce++")
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-size", type=int, default=100)
    parser.add_argument("--warm-start-steps", type=int, default=300)
    parser.add_argument("--p-bad-plan", type=float, default=0.3)
    parser.add_argument("--batch-questions", type=int, default=16)
    parser.add_argument("--n-plans", type=int, default=2)
    parser.add_argument("--n-answers", type=int, default=4)
    parser.add_argument("--switch-every", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["rema", "vrp", "mrp"])
    parser.add_argument("--prompt-filter", type=float, nargs=2, default=[0.2, 0.8], metavar=("EPS_MIN", "EPS_MAX"),
                        help="success-rate range kept by rema_filter's prompt filter")
    parser.add_argument("--filter-k", type=int, default=4, help="samples per question of rema_filter's filter")
    parser.add_argument("--skip-table", action="store_true", help="only the throughput measurement")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per sampler (median reported)")
    args = vars(parser.parse_args())
    torch.set_num_threads(1)
    speed = {"cpu": throughput("cpu", repeats=args["repeats"])}
    if torch.cuda.is_available():
        speed["cuda"] = throughput("cuda", repeats=args["repeats"])
    print(json.dumps({"throughput": speed}), flush=True)
    if args["skip_table"]:
        return
    jobs = [(mode, seed) for seed in args["seeds"] for mode in args["modes"]]
    results = []
    with ProcessPoolExecutor(max_workers=args["jobs"]) as pool:
        futures = [pool.submit(run, mode, seed, args) for mode, seed in jobs]
        for future in as_completed(futures):  # print each run as it ends
            r = future.result()
            results.append(r)
            print(json.dumps({k: r[k] for k in ("mode", "seed", "warm_start_s", "update_s", "rollout_tokens_per_s",
                                                "filter_tokens", "filter_fallbacks", "kept_fraction", "history")}),
                  flush=True)
    print("\n| method | ID acc (warm start) | ID acc (equal samples) | OOD acc (warm start) | OOD acc (equal samples) "
          "| ID acc (equal tokens) | OOD acc (equal tokens) | tokens/question | s/update |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in args["modes"]:
        rows = [r for r in results if r["mode"] == mode]
        seeds = sorted(r["seed"] for r in rows)
        cells = []
        for key in ("accuracy", "ood_accuracy"):
            init = [r["history"][0][key] for r in rows]
            final = [r["history"][-1][key] for r in rows]
            cells += [_mean_sd(init), _mean_sd(final)]
        equal_tokens = []
        for key in ("accuracy", "ood_accuracy"):
            values = []
            for seed in seeds:
                budget = min(r["history"][-1]["tokens"] for r in results if r["seed"] == seed)
                run_ = next(r for r in rows if r["seed"] == seed)
                values.append(_at_tokens(run_["history"], budget, key))
            equal_tokens.append(_mean_sd(values))
        tokens_per_q = statistics.mean(
            r["history"][-1]["tokens"] / (r["history"][-1]["update"] * args["batch_questions"]) for r in rows)
        print(f"| {NAMES[mode]} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {equal_tokens[0]} | "
              f"{equal_tokens[1]} | {tokens_per_q:.0f} | {statistics.mean(r['update_s'] for r in rows):.2f} |")


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


if __name__ == "__main__":
    main()
