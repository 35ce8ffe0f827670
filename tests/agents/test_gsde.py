"""gSDE (generalized state-dependent exploration): the distribution is stable-baselines3's, the noise is a
linear function of the actor's features held between draws, draws happen where SB3 makes them, runs are
seeded and resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.distributions import StateDependentNoiseDistribution

from rlopt import agents
from rlopt.agents.common.policies import ActorCriticPolicy


def _policy(**kwargs: Any) -> ActorCriticPolicy:
    torch.manual_seed(0)
    pi = ActorCriticPolicy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-2, 2, (2,)), use_sde=True, **kwargs)
    with torch.no_grad():
        pi.log_std.add_(0.3 * torch.randn_like(pi.log_std))  # different stds per entry
    return pi


@pytest.mark.parametrize("net_arch", [(16, 8), ()])
def test_log_prob_entropy_and_their_gradients_are_sb3s(net_arch: tuple[int, ...]) -> None:
    pi = _policy(net_arch=net_arch, log_std_init=-0.5)
    obs = torch.randn(6, 3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        actions, stored = pi.act(obs, g)
    log_prob, entropy, _ = pi.evaluate_actions(obs, actions)

    features = pi.actor[:-1](obs)
    reference = StateDependentNoiseDistribution(2)  # SB3's defaults: full_std, no expln, features not learned
    reference.proba_distribution(pi.actor[-1](features), pi.log_std, features)
    ref_log_prob, ref_entropy = reference.log_prob(actions), reference.entropy()
    assert ref_entropy is not None
    torch.testing.assert_close(log_prob, ref_log_prob)
    torch.testing.assert_close(stored, ref_log_prob.detach())
    torch.testing.assert_close(entropy, ref_entropy)
    # the same gradients, so the same policy-gradient updates: log_std gets one; the features only through the mean
    ours = torch.autograd.grad((log_prob + 0.1 * entropy).sum(), pi.actor_parameters())
    theirs = torch.autograd.grad((ref_log_prob + 0.1 * ref_entropy).sum(), pi.actor_parameters())
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    assert pi.log_std.shape == (pi.sde_features, 2)


def test_noise_is_the_features_times_each_copys_matrix_until_the_next_draw() -> None:
    pi = _policy()
    g = torch.Generator().manual_seed(0)
    pi.reset_noise(4, g)
    matrices = pi.exploration_matrices
    assert matrices is not None and matrices.shape == (4, pi.net_arch[-1], 2)
    obs = torch.randn(4, 3)
    first, _ = pi.act(obs, g)
    again, _ = pi.act(obs, g)
    torch.testing.assert_close(first, again)  # no fresh noise between draws: the same state, the same action
    features = pi.actor[:-1](obs)
    torch.testing.assert_close(first - pi.actor(obs), torch.einsum("bf,bfa->ba", features, matrices))
    pi.reset_noise(4, g)
    assert not torch.equal(pi.act(obs, g)[0], first)
    # the entries are N(0, exp(log_std)^2): standardised, a large draw has mean 0 and variance 1
    pi.reset_noise(4000, torch.Generator().manual_seed(2))
    assert pi.exploration_matrices is not None
    z = pi.exploration_matrices / pi.log_std.detach().exp()
    assert abs(float(z.mean())) < 0.01 and abs(float(z.var()) - 1) < 0.01


@pytest.mark.parametrize(("sample_freq", "draws"), [(-1, 1), (4, 4), (3, 6)])
def test_noise_is_drawn_at_each_rollout_start_and_every_sample_freq_steps(sample_freq: int, draws: int) -> None:
    model = agents.PPO("MlpPolicy", "Pendulum-v1", n_envs=2, n_steps=16, batch_size=32, n_epochs=1, seed=0,
                       use_sde=True, sde_sample_freq=sample_freq)
    seen: list[torch.Tensor] = []
    reset = model.policy.reset_noise

    def spy(n_envs: int = 1, generator: torch.Generator | None = None) -> None:
        reset(n_envs, generator)
        assert model.policy.exploration_matrices is not None
        seen.append(model.policy.exploration_matrices.clone())

    model.policy.reset_noise = spy  # type: ignore[method-assign]
    model.learn(2 * 32)  # two rollouts
    assert len(seen) == 2 * draws
    assert all(m.shape[0] == 2 for m in seen) and not torch.equal(seen[0], seen[1 % len(seen)])


def test_gsde_needs_box_actions_and_a_valid_sample_freq() -> None:
    with pytest.raises(ValueError, match="continuous actions"):
        agents.PPO("MlpPolicy", "CartPole-v1", use_sde=True)
    with pytest.raises(ValueError, match="Invalid use_sde"):
        ActorCriticPolicy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), use_sde=True)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="Invalid sde_sample_freq"):
            agents.A2C("MlpPolicy", "Pendulum-v1", use_sde=True, sde_sample_freq=bad)
    with pytest.raises(TypeError, match="Invalid use_sde"):
        agents.A2C("MlpPolicy", "Pendulum-v1", use_sde="yes")


@pytest.mark.parametrize(("algo", "optimizer"), [("PPO", "adam"), ("PPO", "ponos"), ("A2C", "sls"), ("A2C", "polyak")])
def test_gsde_runs_are_seeded_and_resume_exactly(tmp_path: Path, algo: str, optimizer: str) -> None:
    cls = getattr(agents, algo)
    kwargs: dict[str, Any] = {"n_envs": 2, "n_steps": 16, "seed": 3, "use_sde": True, "sde_sample_freq": 4,
                              "optimizer": optimizer, "policy_kwargs": {"log_std_init": -1.0}}
    if algo == "PPO":
        kwargs.update(batch_size=16, n_epochs=2)
    straight = cls("MlpPolicy", "MountainCarContinuous-v0", **kwargs).learn(4 * 32)
    twin = cls("MlpPolicy", "MountainCarContinuous-v0", **kwargs).learn(4 * 32)
    first = cls("MlpPolicy", "MountainCarContinuous-v0", **kwargs).learn(2 * 32)
    first.save(tmp_path / "ckpt")
    resumed = cls.load(tmp_path / "ckpt.zip", env=first.get_env(), force_reset=False)
    assert resumed.use_sde and resumed.policy.use_sde and resumed.sde_sample_freq == 4
    resumed.learn(2 * 32, reset_num_timesteps=False)
    for a, b, c in zip(straight.policy.parameters(), twin.policy.parameters(), resumed.policy.parameters(),
                       strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    # stochastic prediction draws from the global RNG and leaves the training noise alone
    before = straight.policy.exploration_matrices.clone()
    actions, _ = straight.predict(np.zeros((5, 2), dtype=np.float32), deterministic=False)
    assert actions.shape == (5, 1) and np.all(np.abs(actions) <= 1.0)
    assert torch.equal(before, straight.policy.exploration_matrices)
