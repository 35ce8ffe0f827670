"""``rlopt train``: train an agent from the command line.

    rlopt train [ALGO] [ENV] [--optimizer NAME] [--n-envs N] [--device DEV] [--seed S]
                [--total-timesteps T] [--config file.yaml] [--optimizer-kwargs JSON] [--log-dir runs]

Defaults: PPO on the tensor-batched CartPole-v1, on the CPU, with the tuned hyperparameters of
``agents/hyperparams.yaml``. Shows a progress bar, logs TensorBoard scalars under ``runs/``, evaluates the
deterministic policy every ``--eval-freq`` env steps (keeping the best model, ``best_model.zip``, and stopping
once the env's reward threshold is reached, as the RL Zoo does), prints a final evaluation, saves the final
model and a PNG of the return and the step size over training in the run folder.

Under ``torchrun`` (``torchrun --nproc_per_node=N --no-python rlopt train ...``) the processes train one agent
data-parallel: each steps its share of the ``--n-envs`` copies (on ``cuda:LOCAL_RANK`` with ``--device cuda``),
gradients and step-size decisions are averaged over them, and rank 0 alone evaluates, logs, prints and saves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ALGORITHMS = ("PPO", "A2C", "REINFORCE")


def _parser() -> argparse.ArgumentParser:
    import rlopt

    p = argparse.ArgumentParser(
        prog="rlopt train",
        description="Train a policy-gradient agent with a tuning-free step size (TensorBoard logs under --log-dir).",
    )
    p.add_argument("algo", nargs="?", default="PPO", type=str.upper, choices=ALGORITHMS,
                   help="algorithm (default: PPO)")
    p.add_argument("env", nargs="?", default="CartPole-v1",
                   help="env id: a tensor-batched env of the envs package or a Gymnasium id (default: CartPole-v1)")
    p.add_argument("--optimizer", default="adam", choices=tuple(rlopt.OPTIMIZERS),
                   help="step-size rule (default: adam at the tuned learning rate)")
    p.add_argument("--optimizer-kwargs", default=None, type=json.loads, metavar="JSON",
                   help='optimizer keyword arguments as JSON, e.g. \'{"c": 0.5}\'')
    p.add_argument("--n-envs", type=int, default=None, help="number of env copies (default: tuned value)")
    p.add_argument("--env-kwargs", default=None, type=json.loads, metavar="JSON",
                   help='env keyword arguments as JSON, e.g. \'{"max_episode_steps": 200}\' or \'{"compile": true}\' '
                   "(one fused kernel per step of a batched env: seconds to build, for runs of many batched steps)")
    p.add_argument("--device", default="cpu", help="torch device for the agent and the batched env (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--total-timesteps", type=int, default=None, help="training budget (default: tuned value)")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML file of agent keyword arguments (and total_timesteps) overriding the tuned defaults")
    p.add_argument("--log-dir", type=Path, default=Path("runs"), help="TensorBoard and output folder (default: runs)")
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes of the final evaluation (default: 10)")
    p.add_argument("--eval-freq", type=int, default=10_000,
                   help="evaluate every this many env steps during training, keeping the best model (default: 10000;"
                   " 0 disables)")
    p.add_argument("--stop-at", type=float, default=None,
                   help="stop once an evaluation reaches this mean return (default: the env's reward threshold,"
                   " e.g. 475 for CartPole-v1)")
    p.add_argument("--no-stop", action="store_true", help="train for the whole budget even once solved")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--verbose", type=int, default=0, help="SB3 verbosity (1: print the log table)")
    return p


def _load_config(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"--config: no such file: {path}")
    from rlopt.agents.hyperparams import parse_schedules

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--config: expected a mapping of agent keyword arguments, got {type(data).__name__}")
    return parse_schedules(data)


def _reward_threshold(env_id: str) -> float | None:
    import gymnasium as gym

    try:
        threshold = gym.spec(env_id).reward_threshold
    except gym.error.Error:
        return None
    return None if threshold is None else float(threshold)


def plot_run(run_dir: Path, out: Path) -> Path:
    """PNG of ``rollout/ep_rew_mean`` and ``train/step_size`` against env steps, from the run's event file."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figure list stay untouched

    from rlopt.tools.plotting import read_scalars

    scalars = read_scalars(run_dir).get(".", {})  # the run's own event file, not those of sub-folders
    fig = Figure(figsize=(7, 6))
    axes = fig.subplots(2, 1, sharex=True)
    for ax, tag, label in ((axes[0], "rollout/ep_rew_mean", "episode return"),
                           (axes[1], "train/step_size", "step size")):
        if tag in scalars:
            ax.plot(*zip(*sorted(scalars[tag]), strict=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if any(value > 0 for _, value in scalars.get("train/step_size", [])):  # a run too short to log an update
        axes[1].set_yscale("log")  # has nothing to log-scale
    axes[1].set_xlabel("env steps")
    axes[0].set_title(run_dir.name)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def _periodic_evaluation(eval_env: Any, threshold: float | None, n_episodes: int, every: int) -> Any:
    """SB3's EvalCallback saving ``best_model.zip`` into the run folder, stopping at ``threshold``."""
    from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold

    class RunDirEvalCallback(EvalCallback):
        # the run folder is known only once learn() has configured the logger
        def _init_callback(self) -> None:
            self.best_model_save_path = self.model.logger.get_dir()
            super()._init_callback()

    stop = StopTrainingOnRewardThreshold(threshold, verbose=0) if threshold is not None else None
    return RunDirEvalCallback(eval_env, callback_on_new_best=stop, n_eval_episodes=n_episodes, eval_freq=every,
                              deterministic=True, verbose=0)


def train_main(argv: list[str] | None = None) -> int:
    """Train a policy-gradient agent (PPO, A2C, REINFORCE/GPOMDP) with any step-size rule.

    Entry point of ``rlopt train``; returns the exit status. Under torchrun the processes train one agent
    data-parallel (see the module docstring).
    """
    args = _parser().parse_args(argv)
    from rlopt.agents.common.distributed import torchrun_process_group

    with torchrun_process_group(args.device) as (args.device, _):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from stable_baselines3.common.evaluation import evaluate_policy

    from rlopt import agents
    from rlopt.agents.hyperparams import hyperparams

    kwargs = hyperparams(args.algo, args.env, args.optimizer)
    if args.config is not None:
        kwargs.update(_load_config(args.config))
    total = int(kwargs.pop("total_timesteps", 100_000))
    if args.total_timesteps is not None:
        total = args.total_timesteps
    if total <= 0:
        raise SystemExit(f"rlopt train: --total-timesteps must be positive, got {total}")
    if args.n_envs is not None:
        kwargs["n_envs"] = args.n_envs
    if args.optimizer_kwargs is not None:
        kwargs["optimizer_kwargs"] = args.optimizer_kwargs
    if args.env_kwargs is not None:
        if not isinstance(args.env_kwargs, dict):
            raise SystemExit(f"rlopt train: --env-kwargs must be a JSON object, got {args.env_kwargs!r}")
        kwargs["env_kwargs"] = {**(kwargs.get("env_kwargs") or {}), **args.env_kwargs}
    cls = getattr(agents, args.algo)
    model = cls("MlpPolicy", args.env, optimizer=args.optimizer, seed=args.seed, device=args.device,
                tensorboard_log=str(args.log_dir), verbose=args.verbose, **kwargs)
    main = model.rank == 0  # evaluates, logs, prints and saves
    name = f"{args.algo}_{args.env}_{args.optimizer}_s{args.seed}"
    threshold = None if args.no_stop else (args.stop_at if args.stop_at is not None else _reward_threshold(args.env))
    n_envs = model.n_envs * model.world_size
    if main:
        print(f"Training {args.algo} on {args.env} with {args.optimizer} for up to {total} steps "
              f"({n_envs} envs" + (f" over {model.world_size} processes" if model.world_size > 1 else "")
              + f", device {model.device})"
              + (f", stopping at an evaluation return of {threshold:g}" if threshold is not None else ""))
    callback = None
    if main:
        eval_env = agents.make_eval_env(args.env, n_envs=min(args.eval_episodes, 10), device=args.device,
                                        seed=args.seed + 1, env_kwargs=model.env_kwargs)
        if args.eval_freq > 0:
            callback = _periodic_evaluation(eval_env, threshold, args.eval_episodes, max(args.eval_freq // n_envs, 1))
    model.learn(total, callback=callback, tb_log_name=name, progress_bar=main and not args.no_progress)
    if not main:
        return 0
    run_dir = Path(model.logger.get_dir() or args.log_dir / name)
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
    print(f"Final evaluation over {args.eval_episodes} episodes after {model.num_timesteps} steps: "
          f"{mean:.2f} +/- {std:.2f}")
    if callback is not None and (run_dir / "best_model.zip").exists():
        print(f"Best evaluation during training: {callback.best_mean_reward:.2f} "
              f"(saved to {run_dir / 'best_model.zip'})")
    model_path = run_dir / "model.zip"
    model.save(model_path)
    png = plot_run(run_dir, run_dir / "training.png")
    print(f"Saved the model to {model_path}, TensorBoard logs and {png.name} to {run_dir}")
    return 0
