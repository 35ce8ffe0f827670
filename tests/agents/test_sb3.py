"""rlopt.agents.sb3.PPO: SB3's own PPO with a closure-stepped optimizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import stable_baselines3
import torch
from stable_baselines3.common.env_util import make_vec_env

import rlopt
from rlopt.agents.sb3 import PPO

KW = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "seed": 0, "device": "cpu"}


@pytest.mark.parametrize("target_kl", [None, 1e-5])
def test_adam_path_equals_stable_baselines3_ppo_step_for_step(target_kl: float | None) -> None:
    """Also with a target_kl small enough to stop most updates early: the same minibatch stops both."""
    # SB3 samples actions from the global RNG its constructor seeds: build and train one model at a time
    ours = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), target_kl=target_kl, **KW)
    ours.learn(512)
    ref = stable_baselines3.PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), target_kl=target_kl,
                                **KW)
    ref.learn(512)
    for (name, a), (_, b) in zip(ours.policy.state_dict().items(), ref.policy.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    if target_kl is not None:  # and the stop did take effect: the run differs from one without it
        free = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), **KW)
        free.learn(512)
        assert not all(torch.equal(a, b) for a, b in zip(ours.policy.parameters(), free.policy.parameters(),
                                                         strict=True))


@pytest.mark.parametrize("optimizer", ["sls", "sps", "ponos"])
def test_rlopt_optimizers_run_inside_sb3(optimizer: str, tmp_path: Path) -> None:
    model = PPO("MlpPolicy", "CartPole-v1", optimizer=optimizer, **KW)
    assert isinstance(model.policy.optimizer, rlopt.StepSizeOptimizer)
    model.learn(256)
    model.save(tmp_path / "m.zip")
    loaded = PPO.load(tmp_path / "m.zip")
    assert type(loaded.policy.optimizer) is type(model.policy.optimizer)
    for a, b in zip(model.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_sls_logs_its_step_sizes(tmp_path: Path) -> None:
    import csv

    from stable_baselines3.common.logger import configure

    model = PPO("MlpPolicy", "CartPole-v1", optimizer="sls", **KW)
    logger = configure(str(tmp_path), ["csv"])
    model.set_logger(logger)
    model.learn(128)
    logger.close()
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    stepped = [r for r in rows if r.get("train/step_size")]
    assert stepped and all(float(r["train/step_size"]) > 0 for r in stepped)
    assert all(float(r["train/forward_calls"]) >= 1 for r in stepped)


def test_polyak_is_refused_with_a_pointer() -> None:
    with pytest.raises(ValueError, match=r"agents\.PPO"):
        PPO("MlpPolicy", "CartPole-v1", optimizer="polyak")
