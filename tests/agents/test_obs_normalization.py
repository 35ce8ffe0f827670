"""Observation normalisation inside the policy: running statistics, their use, and their life cycle."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlopt import agents
from rlopt.agents.common.policies import ActorCriticPolicy


def test_running_statistics_equal_those_of_all_observations_seen() -> None:
    pi = ActorCriticPolicy(gym.spaces.Box(-10, 10, (3,)), gym.spaces.Discrete(2), normalize_obs=True)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, generator=gen) * torch.tensor([1.0, 5.0, 0.1]) + 2.0 for n in (7, 50, 1, 300)]
    for b in batches:
        pi.update_obs_stats(b)
    seen = torch.cat(batches).double().numpy()
    # the prior count of 1e-4 (at mean 0, variance 1) is the only difference from the exact statistics
    np.testing.assert_allclose(pi.obs_mean.numpy(), seen.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pi.obs_var.numpy(), seen.var(0), rtol=1e-5, atol=1e-5)
    assert float(pi.obs_count) == pytest.approx(len(seen) + 1e-4)
    x = pi._flat(torch.cat(batches))
    torch.testing.assert_close(x.mean(0), torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


def test_normalised_inputs_are_clipped_and_off_by_default() -> None:
    space = gym.spaces.Box(-100, 100, (2,))
    pi = ActorCriticPolicy(space, gym.spaces.Discrete(2), normalize_obs=True, clip_obs=3.0)
    obs = torch.tensor([[100.0, -100.0]])
    assert pi._flat(obs).tolist() == [[3.0, -3.0]]
    plain = ActorCriticPolicy(space, gym.spaces.Discrete(2))
    assert plain._flat(obs).tolist() == [[100.0, -100.0]]
    with pytest.raises(ValueError, match="clip_obs"):
        ActorCriticPolicy(space, gym.spaces.Discrete(2), normalize_obs=True, clip_obs=0.0)


def test_agent_updates_statistics_after_each_update_and_saves_them(tmp_path: Path) -> None:
    model = agents.PPO("MlpPolicy", "MountainCar-v0", n_envs=8, n_steps=16, batch_size=64, n_epochs=1, seed=0,
                       policy_kwargs={"normalize_obs": True})
    model.learn(3 * 8 * 16)
    buf_obs = model.rollout_buffer.observations
    assert float(model.policy.obs_count) == pytest.approx(3 * 8 * 16 + 1e-4, rel=1e-6)
    # MountainCar positions lie in [-1.2, 0.6]: the running mean has moved off its prior of 0
    assert -1.2 < float(model.policy.obs_mean[0]) < 0.6 and float(model.policy.obs_mean[0]) != 0.0
    model.save(tmp_path / "m")
    loaded = agents.PPO.load(tmp_path / "m.zip")
    assert loaded.policy.normalize_obs
    for name in ("obs_mean", "obs_var", "obs_count"):
        torch.testing.assert_close(getattr(loaded.policy, name), getattr(model.policy, name), rtol=0, atol=0)
    obs = buf_obs[0].cpu().numpy()
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
