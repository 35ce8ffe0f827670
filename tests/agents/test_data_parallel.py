"""Data-parallel agents: two gloo processes train one agent, each on its share of the env copies.

The defining properties: the ranks end with bit-identical parameters (every gradient and every statistic a
step-size decision is taken from is the same on both), each rank's share of the env copies is seeded as one
process would seed the whole batch, the episodes of both ranks reach every rank's statistics, a callback that
stops one rank stops both, and two processes learn CartPole with a tuning-free rule.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from stable_baselines3.common.callbacks import BaseCallback

from rlopt import agents
from rlopt.agents.common.distributed import DataParallel, resolve_data_parallel

WORLD = 2


class _StopOnRank(BaseCallback):
    """Asks to stop training on one rank only, at its ``at``-th env step."""

    def __init__(self, rank: int, at: int) -> None:
        super().__init__()
        self.rank, self.at = rank, at

    def _on_step(self) -> bool:
        return not (dist.get_rank() == self.rank and self.n_calls >= self.at)


def _flat(model: Any) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in (*model.policy.parameters(),
                                                                 *model.policy.buffers())])


def _short_runs(rank: int, out: str) -> dict[str, Any]:
    """A few updates of every algorithm, with the rules whose decisions read statistics of the data."""
    results: dict[str, Any] = {}
    runs = {
        # PPO: per-minibatch advantage normalisation, the surrogate's supremum under Polyak, target_kl, obs stats
        "ppo_polyak": (agents.PPO, dict(optimizer="polyak", n_envs=8, n_steps=32, batch_size=64, n_epochs=2,
                                        target_kl=0.05, policy_kwargs={"normalize_obs": True}), 1024),
        "ppo_sps": (agents.PPO, dict(optimizer="sps", n_envs=8, n_steps=32, batch_size=64, n_epochs=2), 1024),
        # A2C: the whole-rollout normalisation, SLS's trust region, the reward normalisation's return statistics
        "a2c_sls": (agents.A2C, dict(optimizer="sls", n_envs=8, n_steps=8, normalize_advantage=True,
                                     normalize_reward=True), 1024),
        # REINFORCE: unequal numbers of episodes per rank, SPS's online f* from the union's return
        "reinforce_sps": (agents.REINFORCE, dict(optimizer="sps", n_envs=4, n_steps=128), 2048),
        "reinforce_adam": (agents.REINFORCE, dict(optimizer="adam", n_envs=4, n_steps=128, normalize_advantage=True),
                           2048),
    }
    for name, (cls, kwargs, steps) in runs.items():
        model = cls("MlpPolicy", "CartPole-v1", seed=3, **kwargs)
        model.learn(steps)
        results[name] = {
            "params": _flat(model),
            "num_timesteps": model.num_timesteps,
            "episodes": [(ep["r"], ep["l"]) for ep in model.ep_info_buffer],
            "local_envs": model.n_envs,
            "step_size": model.optimizer.stats["step_size"] if hasattr(model.optimizer, "stats") else None,
            "reward_stats": getattr(model, "_reward_stats", None),
        }
    model = agents.A2C("MlpPolicy", "CartPole-v1", seed=3, n_envs=8, n_steps=8)
    model.learn(10_000, callback=_StopOnRank(rank=1, at=3))
    results["stopped_at"] = model.num_timesteps
    # one rank alone loads and uses a checkpoint: no collective waits for the other
    path = os.path.join(out, "a2c.zip")
    if rank == 0:
        model.save(path)
        loaded = agents.A2C.load(path)
        results["loaded"] = (loaded.world_size, torch.equal(_flat(loaded), _flat(model)))
    dist.barrier()
    # continuing a data-parallel run from the checkpoint: a fresh model on every rank takes its parameters
    resumed = agents.A2C("MlpPolicy", "CartPole-v1", seed=4, n_envs=8, n_steps=8)
    resumed.set_parameters(path)
    results["resumed_start"] = torch.equal(_flat(resumed), _flat(model))
    resumed.learn(256)
    results["resumed"] = _flat(resumed)
    return results


def _helpers(dp: DataParallel) -> dict[str, Any]:
    """The helpers' results on this rank's rows of one shared table."""
    table = torch.arange(30, dtype=torch.float64).reshape(10, 3).sin() * 5.0
    rows = table[:4] if dp.rank == 0 else table[4:]  # unequal shares
    mean, std, n = dp.moments(rows)
    grads = [torch.full((2, 2), float(dp.rank)), torch.full((3,), 2.0 * dp.rank)]
    dp.average_gradients(grads)
    returns = torch.arange(dp.rank + 1, dtype=torch.float64) + 10 * dp.rank
    rets, lens, stop = dp.gather_episodes(returns, returns.long() + 1, stop=dp.rank == 1)
    return {"mean": mean, "std": std, "n": n, "grads": grads, "rets": rets, "lens": lens, "stop": stop,
            "table": table}


def _learns(rank: int) -> dict[str, Any]:
    """PPO with SLS at the tuned settings, 8 env copies over the two ranks."""
    model = agents.PPO.tuned("CartPole-v1", optimizer="sls", seed=0)
    model.learn(model.tuned_timesteps)
    from stable_baselines3.common.evaluation import evaluate_policy

    env = agents.make_eval_env("CartPole-v1", n_envs=10, seed=100)
    mean, _ = evaluate_policy(model, env, n_eval_episodes=10, deterministic=True)
    return {"params": _flat(model), "eval": mean, "local_envs": model.n_envs, "world": model.world_size}


def _worker(rank: int, init_file: str, out: str, job: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        if job == "short":
            result = _short_runs(rank, out)
            dp = resolve_data_parallel("world", torch.device("cpu"))
            assert dp is not None
            result["helpers"] = _helpers(dp)
        else:
            result = _learns(rank)
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, job: str) -> list[dict[str, Any]]:
    for attempt in range(2):
        # gloo on a loaded machine now and then aborts a process (SIGABRT) while connecting or tearing down:
        # infrastructure, retried once on a fresh store. A wrong result fails the asserts.
        try:
            mp.spawn(_worker, args=(str(tmp_path / f"init{attempt}"), str(tmp_path), job), nprocs=WORLD, join=True)
            break
        except mp.ProcessExitedException as err:
            if attempt == 1 or err.signal_name != "SIGABRT":
                raise
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
def test_ranks_stay_identical_and_share_episodes_and_stops(tmp_path: Path) -> None:
    ranks = _spawn(tmp_path, "short")
    for name in ("ppo_polyak", "ppo_sps", "a2c_sls", "reinforce_sps", "reinforce_adam"):
        r0, r1 = ranks[0][name], ranks[1][name]
        torch.testing.assert_close(r0["params"], r1["params"], rtol=0, atol=0, msg=f"{name}: ranks differ")
        alone = agents.PPO if name.startswith("ppo") else agents.A2C if name.startswith("a2c") else agents.REINFORCE
        start = alone("MlpPolicy", "CartPole-v1", seed=3, n_envs=4)
        assert not torch.equal(r0["params"], _flat(start)), f"{name}: no step was taken"
        # the steps count both ranks' copies; every rank holds both ranks' episodes, in the same order
        assert r0["num_timesteps"] == r1["num_timesteps"] and r0["num_timesteps"] % (WORLD * r0["local_envs"]) == 0
        assert r0["episodes"] == r1["episodes"] and r0["episodes"]
        assert r0["step_size"] == r1["step_size"]
    assert ranks[0]["ppo_polyak"]["local_envs"] == 4  # n_envs=8 for an env id: the total, split over the ranks
    # the reward normalisation's statistics pool both ranks' returns (count: every transition plus the prior)
    stats0, stats1 = ranks[0]["a2c_sls"]["reward_stats"], ranks[1]["a2c_sls"]["reward_stats"]
    assert torch.equal(stats0, stats1) and float(stats0[0]) == pytest.approx(1024 + 1e-4)
    # rank 1's callback stopped both ranks, at the end of the same rollout
    assert ranks[0]["stopped_at"] == ranks[1]["stopped_at"] == 8 * 8
    assert ranks[0]["loaded"] == (1, True)  # rank 0 alone loaded the checkpoint: it trains alone
    assert ranks[0]["resumed_start"] and ranks[1]["resumed_start"]
    torch.testing.assert_close(ranks[0]["resumed"], ranks[1]["resumed"], rtol=0, atol=0)

    h0, h1 = ranks[0]["helpers"], ranks[1]["helpers"]
    table = h0["table"]
    for h in (h0, h1):
        torch.testing.assert_close(h["mean"], table.mean(0))
        torch.testing.assert_close(h["std"], table.std(0))
        assert h["n"] == 10
        torch.testing.assert_close(h["grads"][0], torch.full((2, 2), 0.5))
        torch.testing.assert_close(h["grads"][1], torch.full((3,), 1.0))
        assert h["rets"] == [0.0, 10.0, 11.0] and h["lens"] == [1, 11, 12] and h["stop"] is True


@pytest.mark.slow
def test_two_processes_learn_cartpole_with_identical_parameters(tmp_path: Path) -> None:
    ranks = _spawn(tmp_path, "learn")
    assert ranks[0]["world"] == WORLD and ranks[0]["local_envs"] == 4
    torch.testing.assert_close(ranks[0]["params"], ranks[1]["params"], rtol=0, atol=0)
    assert ranks[0]["eval"] == ranks[1]["eval"] >= 475.0, ranks[0]["eval"]


@pytest.mark.slow
def test_rlopt_train_under_torchrun(tmp_path: Path) -> None:
    """The README's launch command: one printer and one writer (rank 0), the copies split over the ranks."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
               "rlopt", "train", "a2c", "CartPole-v1", "--optimizer", "sls", "--total-timesteps", "4000",
               "--n-envs", "8", "--eval-freq", "2000", "--no-progress", "--log-dir", str(tmp_path / "runs")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    if run.returncode != 0 and "SIGABRT" in run.stderr:  # gloo's occasional abort: infrastructure, retried once
        run = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("Training A2C") == 1 and "8 envs over 2 processes" in run.stdout, run.stdout
    steps = int(re.search(r"after (\d+) steps", run.stdout).group(1))  # type: ignore[union-attr]
    assert steps >= 4000 and steps % 8 == 0
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "model.zip").exists() and (runs[0] / "training.png").exists()
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1


def test_training_alone_without_a_process_group() -> None:
    assert not dist.is_initialized()
    assert resolve_data_parallel("world", torch.device("cpu")) is None
    model = agents.A2C("MlpPolicy", "CartPole-v1", n_envs=2, seed=0)
    assert model.rank == 0 and model.world_size == 1
    with pytest.raises(ValueError, match="process_group"):
        agents.A2C("MlpPolicy", "CartPole-v1", n_envs=2, process_group="everyone")
