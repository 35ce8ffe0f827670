"""Gymnasium's vector-env contract, as its own test suite checks it (tests/vector), run against the batched envs.

Written here after what Gymnasium's tests assert: the reset/step signatures and types, observations inside the
spaces, seeding (int and per-copy list), the three autoreset modes and their info keys, partial resets,
attribute calls, closing, and Gymnasium's vector wrappers around the env. Deliberate differences from
Gymnasium's numpy vector envs are listed in README's "Differences from Gymnasium" and asserted at the end.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from rlopt import envs

IDS = ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1"]
MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED]
N = 4


def _actions(env: envs.TorchVecEnv) -> torch.Tensor:
    return torch.as_tensor(env.action_space.sample())


@pytest.mark.parametrize("env_id", IDS)
def test_reset_and_step_signatures_types_and_spaces(env_id: str) -> None:
    env = envs.make(env_id, num_envs=N, seed=0)
    assert env.num_envs == N and isinstance(env, gym.vector.VectorEnv)
    assert env.observation_space == gym.vector.utils.batch_space(env.single_observation_space, N)
    assert env.action_space == gym.vector.utils.batch_space(env.single_action_space, N)
    env.action_space.seed(0)
    obs, info = env.reset(seed=0)
    assert isinstance(info, dict)
    assert obs.shape == (N, *env.single_observation_space.shape) and obs.dtype == torch.float32
    assert env.observation_space.contains(obs.numpy())
    for _ in range(50):
        obs, reward, terminated, truncated, info = env.step(_actions(env))
        assert env.observation_space.contains(obs.numpy())
        assert reward.shape == (N,) and reward.dtype == torch.float32
        assert terminated.shape == truncated.shape == (N,)
        assert terminated.dtype == truncated.dtype == torch.bool
        assert isinstance(info, dict)
    env.close()
    assert env.closed


@pytest.mark.parametrize("env_id", IDS)
def test_seeding_int_list_and_none(env_id: str) -> None:
    env = envs.make(env_id, num_envs=N)
    a, _ = env.reset(seed=123)
    assert env.np_random_seed == 123
    b, _ = env.reset(seed=123)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c, _ = env.reset(seed=124)
    assert not torch.equal(a, c)
    d, _ = env.reset(seed=[123 + i for i in range(N)])  # Gymnasium's per-copy form of seed=123
    torch.testing.assert_close(a, d, rtol=0, atol=0)
    e, _ = env.reset()  # no seed: the generator goes on, a new start
    assert not torch.equal(a, e)
    with pytest.raises((TypeError, ValueError)):
        env.reset(seed=[1, 2])  # a list must have one seed per copy


@pytest.mark.parametrize("mode", MODES)
def test_autoreset_modes_and_their_info_keys(mode: AutoresetMode) -> None:
    env = envs.make("CartPole-v1", num_envs=N, seed=0, autoreset_mode=mode)
    assert env.metadata["autoreset_mode"] == mode
    env.reset(seed=0)
    prev_done = torch.zeros(N, dtype=torch.bool)
    ended = 0
    for _ in range(200):
        obs, reward, terminated, truncated, info = env.step(torch.zeros(N, dtype=torch.long))  # always left
        done = terminated | truncated
        if mode == AutoresetMode.NEXT_STEP:  # the step after an ending resets: reward 0, not done
            assert (reward[prev_done] == 0).all() and not done[prev_done].any()
        if mode == AutoresetMode.DISABLED and done.any():  # the caller resets ended copies
            env.reset(options={"reset_mask": done})
        if done.any():
            ended += int(done.sum())
            assert info["_episode_stats"].tolist() == done.tolist()
            if mode == AutoresetMode.SAME_STEP:
                assert info["_final_obs"].tolist() == done.tolist()
                assert (info["final_obs"][done][:, 2].abs() > 0.2).all()  # the pole fell: the true last state
                assert (obs[done][:, 2].abs() <= 0.05).all()  # and obs is already the reset one
        else:
            assert info == {}  # keys only where a copy ended, as Gymnasium's
        prev_done = done
    assert ended >= N


def test_partial_reset_with_a_mask_resets_only_those_copies() -> None:
    env = envs.make("Pendulum-v1", num_envs=N, seed=0, autoreset_mode=AutoresetMode.DISABLED)
    env.reset(seed=0)
    for _ in range(5):
        env.step(torch.ones(N, 1))
    before = env.state
    mask = torch.tensor([True, False, True, False])
    env.reset(options={"reset_mask": mask})
    after = env.state
    torch.testing.assert_close(after[~mask], before[~mask], rtol=0, atol=0)
    assert not torch.equal(after[mask], before[mask])
    with pytest.raises(ValueError, match="option"):
        env.reset(options={"low": -0.1, "high": 0.1})  # options the env does not have are refused


def test_attribute_calls_follow_gymnasiums_vector_api() -> None:
    env = envs.make("Pendulum-v1", num_envs=N, seed=0)
    assert env.get_attr("g") == (10.0,) * N
    env.set_attr("g", 9.81)
    assert env.g == 9.81
    assert env.call("g") == (9.81,) * N  # a plain attribute comes back as its value, a method is called
    assert env.call("_reset_states", torch.zeros(2, 1, dtype=torch.float64))[0].shape == (2, 1)
    assert env.unwrapped is env


def test_gymnasiums_vector_wrappers_work_around_the_env() -> None:
    from gymnasium.wrappers.vector import (
        ArrayConversion,
        ClipAction,
        DictInfoToList,
        NormalizeObservation,
        RecordEpisodeStatistics,
    )

    numpy_env = ArrayConversion(envs.make("MountainCarContinuous-v0", num_envs=N, seed=0, max_episode_steps=50),
                                env_xp=torch, target_xp=np)
    env = RecordEpisodeStatistics(NormalizeObservation(ClipAction(numpy_env)))
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, np.ndarray)
    episodes = 0
    for _ in range(120):
        obs, reward, _, _, info = env.step(np.full((N, 1), 5.0, dtype=np.float32))  # clipped to 1
        assert isinstance(reward, np.ndarray) and np.isfinite(obs).all()
        if "episode" in info:  # Gymnasium's wrapper's own statistics, next to the env's
            episodes += int(info["_episode"].sum())
            np.testing.assert_array_equal(info["episode"]["l"][info["_episode"]], 50)
    assert episodes >= N
    as_list = DictInfoToList(numpy_env)  # SB3-style per-copy info dicts
    as_list.reset(seed=0)
    infos: list = []
    for _ in range(50):
        *_, infos = as_list.step(np.zeros((N, 1), dtype=np.float32))
    assert isinstance(infos, list) and len(infos) == N and all("episode_stats" in i for i in infos)


def test_make_vec_and_the_spec() -> None:
    env = gym.make_vec("rlopt/CartPole-v1", num_envs=N)
    assert isinstance(env, envs.TorchVecEnv)
    assert env.spec is not None and env.spec.id == "rlopt/CartPole-v1" and env.spec.max_episode_steps == 500
    assert envs.make("CartPole-v1", num_envs=2).spec.id == "rlopt/CartPole-v1"


def test_deliberate_differences_from_gymnasiums_numpy_envs() -> None:
    """Tensors, not arrays; the episode statistics under their own key; no per-copy info dicts."""
    env = envs.make("CartPole-v1", num_envs=N, seed=0, autoreset_mode=AutoresetMode.SAME_STEP)
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, torch.Tensor)  # TorchToNumpy gives numpy (test above)
    for _ in range(40):
        _, _, terminated, truncated, info = env.step(torch.zeros(N, dtype=torch.long))
        if (terminated | truncated).any():
            assert "episode" not in info and "episode_stats" in info  # RecordEpisodeStatistics owns "episode"
            assert info["final_info"] == {}  # no per-copy info dicts: the copies are rows of tensors
            break
    else:
        pytest.fail("no episode ended")
