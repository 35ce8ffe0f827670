"""normalize_reward: the rewards an agent trains on are VecNormalize(norm_reward=True)'s, step for step; episode
statistics stay in the env's units; the statistics are saved and a run resumes exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3.common.running_mean_std import RunningMeanStd

from rlopt import agents


def _spy(model: Any) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Record (raw rewards, dones, normalised rewards) of every rollout."""
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    normalize = model._normalize_rewards

    def spy(buf: Any) -> None:
        raw, dones = buf.rewards.clone(), buf.dones.clone()
        normalize(buf)
        seen.append((raw, dones, buf.rewards.clone()))

    model._normalize_rewards = spy
    return seen


@pytest.mark.parametrize(("gamma", "clip"), [(0.99, 10.0), (0.9, 0.5)])
def test_rewards_are_vec_normalizes_step_for_step(gamma: float, clip: float) -> None:
    model = agents.A2C("MlpPolicy", "Pendulum-v1", n_envs=4, n_steps=8, seed=0, gamma=gamma,
                       normalize_reward=True, clip_reward=clip)
    seen = _spy(model)
    model.learn(4 * 8 * 30)  # 240 steps per copy: the 200-step episodes end inside
    # stable-baselines3's own statistics, fed as VecNormalize feeds them
    rms, returns, worst, clipped = RunningMeanStd(shape=()), np.zeros(4), 0.0, 0
    for raw, dones, scaled in seen:
        for t in range(raw.shape[0]):
            returns = returns * gamma + raw[t].numpy()
            rms.update(returns)
            expected = np.clip(raw[t].numpy() / np.sqrt(rms.var + 1e-8), -clip, clip)
            worst = max(worst, float(np.abs(expected - scaled[t].numpy()).max() / np.abs(expected).max()))
            clipped += int((np.abs(expected) == clip).sum())
            returns[dones[t].numpy()] = 0.0
    assert worst < 1e-6
    assert (clipped > 0) == (clip < 1)
    assert model.reward_scale == pytest.approx(float(np.sqrt(rms.var + 1e-8)), rel=1e-9)
    # episode returns are read before the scaling: the env's own units
    first_episode = float(torch.cat([raw for raw, _, _ in seen])[:200, 0].double().sum())
    assert model.ep_info_buffer[0]["r"] == pytest.approx(first_episode, rel=1e-6)


def test_statistics_are_saved_and_a_run_resumes_exactly(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = dict(n_envs=4, n_steps=8, seed=1, normalize_reward=True, optimizer="sls")
    straight = agents.A2C("MlpPolicy", "Pendulum-v1", **kwargs).learn(4 * 32)
    first = agents.A2C("MlpPolicy", "Pendulum-v1", **kwargs).learn(2 * 32)
    first.save(tmp_path / "ckpt")
    resumed = agents.A2C.load(tmp_path / "ckpt.zip", env=first.get_env(), force_reset=False)
    assert resumed.normalize_reward and torch.equal(resumed._reward_stats, first._reward_stats)
    resumed.learn(2 * 32, reset_num_timesteps=False)
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(straight._reward_stats, resumed._reward_stats)


def test_bad_reward_normalization_arguments() -> None:
    with pytest.raises(TypeError, match="Invalid normalize_reward"):
        agents.PPO("MlpPolicy", "Pendulum-v1", normalize_reward="yes")
    with pytest.raises(ValueError, match="clip_reward"):
        agents.A2C("MlpPolicy", "Pendulum-v1", normalize_reward=True, clip_reward=0.0)
    with pytest.raises(ValueError, match="Invalid normalize_reward=True for REINFORCE"):
        agents.REINFORCE("MlpPolicy", "Pendulum-v1", normalize_reward=True)
