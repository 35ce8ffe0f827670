"""The single-env view passes Gymnasium's own env checker and matches Gymnasium's env step for step; frames
are Gymnasium's, pixel for pixel, for the same state."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from rlopt import envs

pytest.importorskip("pygame", reason="rendering needs the 'render' extra (pygame)")

IDS = ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1"]


@pytest.mark.parametrize("env_id", IDS)
def test_single_env_passes_gymnasiums_env_checker(env_id: str) -> None:
    env = envs.SingleEnv(env_id, render_mode="rgb_array")
    with warnings.catch_warnings():
        # the checker's advice on unbounded Box spaces (Gymnasium's own CartPole has them) and on a spec
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value.*")
        warnings.filterwarnings("ignore", message=".*environment not having a spec.*")
        warnings.filterwarnings("ignore", message=".*symmetric and normalized space.*")  # Pendulum's [-2, 2]
        check_env(env, skip_render_check=False)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_single_env_matches_gymnasium_step_for_step_and_draws_its_frames(env_id: str) -> None:
    ours = envs.SingleEnv(env_id, render_mode="rgb_array", dtype="float64")
    theirs = gym.make(env_id, render_mode="rgb_array")
    reference = theirs.unwrapped
    theirs.reset(seed=3)
    ours.reset(seed=0)
    ours.batched.state = np.asarray(reference.state, dtype=np.float64)[None]  # start from Gymnasium's state
    theirs.action_space.seed(1)
    for step in range(60):
        action = theirs.action_space.sample()
        g_obs, g_rew, g_term, g_trunc, _ = theirs.step(action)
        o_obs, o_rew, o_term, o_trunc, _ = ours.step(action)
        np.testing.assert_allclose(o_obs, g_obs, rtol=1e-5, atol=1e-6)
        assert o_rew == pytest.approx(float(g_rew), rel=1e-5, abs=1e-6)
        assert (o_term, o_trunc) == (g_term, g_trunc)
        if step % 20 == 0:  # same state (and torque): the same picture
            np.testing.assert_array_equal(ours.render(), theirs.render())
        if g_term or g_trunc:
            break
    assert isinstance(o_obs, np.ndarray) and o_obs.dtype == np.float32 and isinstance(o_rew, float)
    ours.close()
    theirs.close()


def test_batched_render_gives_one_frame_per_copy_and_sb3_tiles_them() -> None:
    env = envs.make("CartPole-v1", num_envs=3, seed=0, render_mode="rgb_array")
    assert env.metadata["render_modes"] == ["rgb_array"] and env.metadata["render_fps"] == 50
    env.reset()
    frames = env.render()
    assert frames is not None and len(frames) == 3
    assert all(f.shape == (400, 600, 3) and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[1])  # different copies, different start states
    venv = envs.SB3VecEnv(envs.make("CartPole-v1", num_envs=4, seed=0, render_mode="rgb_array"))
    venv.reset()
    tiled = venv.render()
    assert tiled is not None and tiled.shape == (800, 1200, 3)  # SB3 tiles the 4 frames 2 x 2
    plain = envs.make("CartPole-v1", num_envs=2, seed=0)
    plain.reset()
    with pytest.warns(UserWarning, match="render_mode"):
        assert plain.render() is None
    with pytest.raises(ValueError, match="render_mode"):
        envs.make("CartPole-v1", num_envs=2, render_mode="human")
    env.close()


def test_single_env_refuses_batched_keywords() -> None:
    with pytest.raises(TypeError, match="num_envs"):
        envs.SingleEnv("CartPole-v1", num_envs=4)
    with pytest.raises(ValueError, match="Unknown env_id"):
        envs.SingleEnv("CartPole-v9")
    env = envs.SingleEnv("Pendulum-v1")
    env.reset(seed=0)
    _ = env.step(np.array([0.5], dtype=np.float32))
    assert torch.is_tensor(env.batched.state)
