"""``rlopt rema``: warm-start and train ReMA (and optionally its single-agent baselines), write a checkpoint,
the history, TensorBoard logs and a PNG of accuracy over training.

Defaults run on a laptop CPU in a few minutes: tiny character transformers on the built-in arithmetic task
(2-4 operands; out-of-distribution evaluation on 5-6), a supervised warm start on generated demonstrations,
then REINFORCE++ with separate weights and the alternating schedule.

Under ``torchrun`` (``torchrun --nproc_per_node=N --no-python rlopt rema ...``) the processes train one pair of
agents data-parallel, each rolling out its share of every batch of questions (on ``cuda:LOCAL_RANK`` with
``--device cuda``); rank 0 alone prints and writes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlopt.agents.rema.policy import TinyConfig
from rlopt.agents.rema.rema import ALGORITHMS, PAPER_FILTER, ReMA
from rlopt.agents.rema.rollout import META_REWARDS, RewardConfig

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``rlopt rema``."""
    parser = argparse.ArgumentParser(
        prog="rlopt rema",
        description="Train ReMA (a meta-thinking agent that plans, a reasoning agent that solves) with multi-agent "
                    "RL; optionally the single-agent baselines VRP_RL and MRP_RL on the same budget.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--tasks", default="arithmetic",
                        help="'arithmetic' (built-in generated tasks) or a JSONL file of {question, answer} lines")
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (built-in character transformer) or a Hugging Face causal LM name/path "
                             "(needs the 'hf' extra: pip install 'torch-rlopt[hf]')")
    parser.add_argument("--baselines", action="store_true",
                        help="also train VRP_RL (answer directly) and MRP_RL (plan then solve in one pass)")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="reinforce++",
                        help="reinforce++ (separate weights, alternating schedule) or grpo (shared weights, "
                             "turn-level ratio)")
    parser.add_argument("--multi-turn", action="store_true", help="multi-turn episodes ended by [FINISH]")
    parser.add_argument("--max-turns", type=int, default=8, help="meta turns per multi-turn episode")
    parser.add_argument("--updates", type=int, default=40, help="RL updates")
    parser.add_argument("--warm-start-steps", type=int, default=600,
                        help="supervised warm-start steps for the tiny models (0 to skip)")
    parser.add_argument("--batch-questions", type=int, default=16, help="questions per update")
    parser.add_argument("--n-plans", type=int, default=2, help="plans (episodes) per question")
    parser.add_argument("--n-answers", type=int, default=4, help="reasoner answers per plan")
    parser.add_argument("--max-new-tokens", type=int, default=72, help="tokens per turn")
    parser.add_argument("--optimizer", default="adam",
                        help="optimizer of both agents: adam, sgd, sls, adasls, sps, ponos, polyak")
    parser.add_argument("--meta-optimizer", default=None, help="optimizer of the meta agent (overrides --optimizer)")
    parser.add_argument("--reasoner-optimizer", default=None,
                        help="optimizer of the reasoner (overrides --optimizer)")
    parser.add_argument("--lr", type=float, default=5e-4, help="learning rate of adam/sgd (initial step of sls)")
    parser.add_argument("--switch-every", type=int, default=10, help="updates between switches of the trained agent")
    parser.add_argument("--meta-reward", choices=META_REWARDS, default="correctness",
                        help="meta agent's reward: mean correctness of the reasoner's answers (App. C.2) or their "
                             "consistency, the share of the most frequent answer (Eq. 14)")
    parser.add_argument("--math-verify", action="store_true",
                        help="also accept answers math-verify judges equivalent (needs the math extra: pip install "
                             "'torch-rlopt[math]'); default: the exact normaliser of rlopt.envs.reasoning")
    parser.add_argument("--prompt-filter", type=_filter_range, default=None, metavar="{off,on,EPS_MIN,EPS_MAX}",
                        help="Algorithm 1's prompt filter before each phase of the alternating schedule: off, on "
                             f"(the paper's range {PAPER_FILTER[0]},{PAPER_FILTER[1]}) or a success-rate range "
                             "'EPS_MIN,EPS_MAX' (default: off)")
    parser.add_argument("--filter-k", type=int, default=4, help="samples per question of the prompt filter")
    parser.add_argument("--filter-pool", type=int, default=None,
                        help="candidate questions per phase of the prompt filter (default: batch-questions x "
                             "switch-every)")
    parser.add_argument("--kl-coef", type=float, default=None, help="KL weight (default: 0.01 REINFORCE++, 0 GRPO)")
    parser.add_argument("--d-model", type=int, default=64, help="width of the tiny transformer")
    parser.add_argument("--n-layers", type=int, default=2, help="layers of the tiny transformer")
    parser.add_argument("--eval-every", type=int, default=10, help="updates between greedy evaluations")
    parser.add_argument("--eval-size", type=int, default=128, help="evaluation questions per split")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch intra-op CPU threads (default: torch's); 1 is fastest on a busy small machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/rema", help="directory for checkpoints, history and the PNG")
    parser.add_argument("--tensorboard-log", default="runs/rema/tb", help="TensorBoard directory ('' to disable)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def _filter_range(text: str) -> tuple[float, float] | None:
    """``off`` -> None, ``on`` -> the paper's range, ``a,b`` -> (a, b) (checked by the trainer)."""
    if text == "off":
        return None
    if text == "on":
        return PAPER_FILTER
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected off, on or EPS_MIN,EPS_MAX, got {text!r}") from None
    return low, high


def _optimizer(args: argparse.Namespace) -> tuple[Any, Any]:
    names = {"meta": args.meta_optimizer or args.optimizer, "reasoner": args.reasoner_optimizer or args.optimizer}
    kwargs = {role: ({"lr": args.lr} if name in ("adam", "sgd", "sls", "adasls") else {})
              for role, name in names.items()}
    return names, kwargs


def main(argv: Sequence[str] | None = None) -> int:
    """Train ReMA: a meta-thinking agent and a reasoning agent, by multi-agent RL.

    Runs ``rlopt rema`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.
    """
    args = build_parser().parse_args(argv)
    from rlopt.agents.common.distributed import torchrun_process_group

    with torchrun_process_group(args.device) as (args.device, rank):
        return _main(args, quiet=args.quiet or rank != 0)


def _main(args: argparse.Namespace, quiet: bool) -> int:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from rlopt.envs.reasoning import load_jsonl, make_split

    tasks: Any = "arithmetic"
    eval_tasks: Any = make_split("test", args.eval_size, seed=args.seed)
    ood_tasks: Any = make_split("ood", args.eval_size, seed=args.seed)
    if args.tasks != "arithmetic":
        loaded = load_jsonl(args.tasks)
        cut = max(1, len(loaded) // 10) if len(loaded) > 1 else 0
        tasks, eval_tasks, ood_tasks = loaded[cut:] or loaded, loaded[:cut], []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names, kwargs = _optimizer(args)
    histories: dict[str, list[dict[str, float]]] = {}
    modes = ["rema", "vrp", "mrp"] if args.baselines else ["rema"]
    for mode in modes:
        start = time.perf_counter()
        policy: Any = "tiny"
        if args.model != "tiny":  # every method starts from the pretrained weights
            from rlopt.agents.rema.hf import HFPolicy

            policy = HFPolicy(args.model).to(args.device)
        agent = ReMA(
            tasks, policy, mode=mode, algorithm=args.algorithm, multi_turn=args.multi_turn and mode == "rema",
            max_turns=args.max_turns, batch_questions=args.batch_questions,
            n_plans=args.n_plans, n_answers=1 if args.multi_turn and mode == "rema" else args.n_answers,
            max_new_tokens=args.max_new_tokens, kl_coef=args.kl_coef, switch_every=args.switch_every,
            rewards=RewardConfig(meta_reward=args.meta_reward if mode == "rema" else "correctness",
                                 use_math_verify=args.math_verify),
            prompt_filter=args.prompt_filter if mode == "rema" else None, filter_k=args.filter_k,
            filter_pool=args.filter_pool,
            optimizer=names if mode == "rema" else names["reasoner"],
            optimizer_kwargs=kwargs if mode == "rema" else kwargs["reasoner"],
            tiny_config=TinyConfig(d_model=args.d_model, n_layers=args.n_layers), eval_tasks=eval_tasks,
            ood_tasks=ood_tasks, device=args.device, seed=args.seed,
            tensorboard_log=args.tensorboard_log or None, verbose=0 if quiet else 1)
        if args.model == "tiny" and args.tasks == "arithmetic" and args.warm_start_steps:
            losses = agent.warm_start(steps=args.warm_start_steps, batch_size=32)
            if not quiet:
                print(f"[{mode}] warm start done, loss {json.dumps({k: round(v, 4) for k, v in losses.items()})}")
        agent.learn(args.updates, eval_every=args.eval_every, tb_log_name=mode)
        agent.save(out / f"{mode}.pt")
        histories[mode] = agent.history
        if not quiet:
            print(f"[{mode}] {args.updates} updates in {time.perf_counter() - start:.1f}s, final "
                  f"{json.dumps(agent.history[-1] if agent.history else {})}")
    if agent.rank != 0:  # rank 0 writes the results
        return 0
    (out / "history.json").write_text(json.dumps(histories, indent=1))
    if any(histories.values()):
        from rlopt.agents.rema.plotting import plot_accuracy

        png = plot_accuracy({{"rema": "ReMA", "vrp": "VRP_RL", "mrp": "MRP_RL"}[m]: h for m, h in histories.items()},
                            out / "accuracy.png")
        if not quiet:
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
