"""Autoreset, time limits, partial resets and episode statistics in lockstep with Gymnasium's SyncVectorEnv.

Both sides get the same actions; after every step Gymnasium's physical states are copied into ours, so
floating-point chaos never accumulates and the comparison isolates the vector-env machinery: which
copies reset when, rewards and flags on reset steps, truncation counting, `final_obs`, partial resets and
RecordEpisodeStatistics' returns and lengths.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from rlopt import envs

from .test_equivalence import random_actions

MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED]
LIMIT = 25


def gym_states(ref: SyncVectorEnv) -> np.ndarray:
    return np.stack([np.asarray(e.unwrapped.state, dtype=np.float64) for e in ref.envs])


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("env_id", envs.registered_ids())
def test_lockstep_with_sync_vector_env(env_id: str, mode: AutoresetMode) -> None:
    n, steps = 6, 4 * LIMIT
    rng = np.random.default_rng(5)
    ref = RecordEpisodeStatistics(
        SyncVectorEnv(
            [lambda: gym.make(env_id, max_episode_steps=LIMIT) for _ in range(n)], autoreset_mode=mode
        )
    )
    env = envs.make(env_id, num_envs=n, seed=0, autoreset_mode=mode, max_episode_steps=LIMIT)
    ref.reset(seed=0)
    env.reset()
    env.state = torch.from_numpy(gym_states(ref.unwrapped))
    resets = 0
    prev_done = np.zeros(n, dtype=bool)
    own_return, own_length = np.zeros(n), np.zeros(n, dtype=int)
    for t in range(steps):
        actions = random_actions(env, rng)
        g_obs, g_rew, g_term, g_trunc, g_info = ref.step(actions)
        obs, rew, term, trunc, info = env.step(torch.from_numpy(actions))
        np.testing.assert_array_equal(term.numpy(), g_term, err_msg=f"terminated at step {t}")
        np.testing.assert_array_equal(trunc.numpy(), g_trunc, err_msg=f"truncated at step {t}")
        np.testing.assert_allclose(rew.numpy(), g_rew, rtol=1e-6, atol=1e-6, err_msg=f"reward at step {t}")
        done = g_term | g_trunc
        # Episode statistics as RecordEpisodeStatistics reports them. With DISABLED, Gymnasium's wrapper
        # loses the mask on a partial reset (SyncVectorEnv pops it first) and zeroes every copy, so the
        # reference there is a plain running sum from the last reset.
        # Keys only where a copy ended, as Gymnasium's; the statistics under their own key.
        theirs = {"episode_stats" if k == "episode" else "_episode_stats" if k == "_episode" else k for k in g_info}
        assert set(info) == theirs, f"info keys at step {t}"
        if done.any():
            np.testing.assert_array_equal(info["_episode_stats"].numpy(), g_info["_episode"])
        own_return += g_rew
        own_length += 1
        if done.any():
            want_r = own_return if mode == AutoresetMode.DISABLED else g_info["episode"]["r"]
            want_l = own_length if mode == AutoresetMode.DISABLED else g_info["episode"]["l"]
            np.testing.assert_allclose(info["episode_stats"]["r"].numpy()[done], want_r[done], rtol=1e-5)
            np.testing.assert_array_equal(info["episode_stats"]["l"].numpy()[done], want_l[done])
            own_return[done] = 0.0
            own_length[done] = 0
        if mode == AutoresetMode.SAME_STEP:
            if done.any():
                np.testing.assert_array_equal(info["_final_obs"].numpy(), g_info["_final_obs"])
                np.testing.assert_array_equal(info["_final_info"].numpy(), g_info["_final_info"])
            for i in np.flatnonzero(done):
                np.testing.assert_allclose(
                    info["final_obs"][i].numpy(), g_info["final_obs"][i], rtol=1e-5, atol=1e-6
                )
            running = ~done
            np.testing.assert_allclose(obs.numpy()[running], g_obs[running], rtol=1e-5, atol=1e-6)
        elif mode == AutoresetMode.NEXT_STEP:
            # Copies reset on this step start from different random states; the rest must agree.
            same = ~prev_done
            np.testing.assert_allclose(
                obs.numpy()[same], g_obs[same], rtol=1e-5, atol=1e-6, err_msg=f"step {t}"
            )
        else:
            np.testing.assert_allclose(obs.numpy(), g_obs, rtol=1e-5, atol=1e-6)
            if done.any():
                ref.reset(options={"reset_mask": done})
                env.reset(options={"reset_mask": torch.from_numpy(done)})
        resets += int(done.sum())
        prev_done = done
        env.state = torch.from_numpy(gym_states(ref.unwrapped))
    assert resets >= n, "the run must cross several episode ends"


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("env_id", envs.registered_ids())
def test_check_env(env_id: str, mode: AutoresetMode) -> None:
    envs.check_env(envs.make(env_id, num_envs=7, seed=1, autoreset_mode=mode, max_episode_steps=50))


def test_next_step_reset_ignores_the_action_and_truncation_is_not_termination() -> None:
    env = envs.make("Pendulum-v1", num_envs=3, seed=0, max_episode_steps=4)
    env.reset()
    a = torch.zeros(3, 1)
    for _ in range(3):
        _, _, term, trunc, _ = env.step(a)
        assert not trunc.any()
    _, _, term, trunc, info = env.step(a)
    assert trunc.all() and not term.any()
    assert info["episode_stats"]["l"].tolist() == [4, 4, 4]
    state_after_reset = []
    for action in (torch.full((3, 1), -2.0), torch.full((3, 1), 2.0)):
        env2 = envs.make("Pendulum-v1", num_envs=3, seed=0, max_episode_steps=4, dense_info=True)
        env2.reset()
        for _ in range(4):
            env2.step(a)
        _, rew, term, trunc, info = env2.step(action)
        assert rew.tolist() == [0.0, 0.0, 0.0] and not (term | trunc).any()
        assert info["episode_stats"]["l"].tolist() == [0, 0, 0]  # (dense: no copy ended on this step)
        state_after_reset.append(env2.state)
    torch.testing.assert_close(state_after_reset[0], state_after_reset[1], rtol=0, atol=0)


def test_partial_reset_touches_only_masked_copies() -> None:
    env = envs.make("CartPole-v1", num_envs=5, seed=0, dense_info=True)
    env.reset()
    for _ in range(3):
        env.step(torch.ones(5, dtype=torch.long))
    before = env.state
    mask = torch.tensor([True, False, True, False, False])
    obs, _ = env.reset(options={"reset_mask": mask})
    after = env.state
    torch.testing.assert_close(after[~mask], before[~mask], rtol=0, atol=0)
    assert not torch.equal(after[mask], before[mask])
    assert (after[mask].abs() <= 0.05).all()
    torch.testing.assert_close(obs, after.float(), rtol=0, atol=0)
    _, _, _, _, info = env.step(torch.ones(5, dtype=torch.long))
    assert info["episode_stats"]["l"].tolist() == [1, 4, 1, 4, 4]
    # A numpy mask is accepted as in Gymnasium.
    env.reset(options={"reset_mask": np.array([False, True, False, False, False])})


def test_same_seed_same_trajectories_different_seeds_differ() -> None:
    def rollout(seed: int) -> torch.Tensor:
        env = envs.make(
            "Acrobot-v1", num_envs=16, seed=seed, autoreset_mode="same_step", max_episode_steps=10
        )
        obs, _ = env.reset()
        gen = torch.Generator().manual_seed(0)
        out = [obs]
        for _ in range(35):
            out.append(env.step(torch.randint(0, 3, (16,), generator=gen))[0])
        return torch.stack(out)

    a, b, c = rollout(3), rollout(3), rollout(4)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], c[0])
    # Resets draw fresh states: the episode starts at steps 0, 11, 22, 33 differ.
    assert not torch.equal(a[11], a[0]) and not torch.equal(a[22], a[11])


def test_reset_noise_follows_gymnasium_distribution() -> None:
    env = envs.make("Pendulum-v1", num_envs=20000, seed=0)
    env.reset()
    s = env.state
    assert s[:, 0].min() >= -np.pi and s[:, 0].max() <= np.pi
    assert s[:, 1].abs().max() <= 1.0
    # Uniform: mean ~ 0, variance ~ (2 pi)^2 / 12 (five standard errors).
    var = (2 * np.pi) ** 2 / 12
    assert abs(float(s[:, 0].mean())) < 5 * np.sqrt(var / 20000)
    assert abs(float(s[:, 0].var()) - var) < 0.05 * var
    env = envs.make("Acrobot-v1", num_envs=64, seed=0)
    env.reset()
    s = env.state
    torch.testing.assert_close(s, s.float().double(), rtol=0, atol=0)  # rounded to float32 as Gymnasium


def test_bad_input_raises_clear_errors() -> None:
    env = envs.make("CartPole-v1", num_envs=4, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(4, dtype=torch.long))
    env.reset()
    before = env.state
    with pytest.raises(ValueError, match=r"CartPole-v1.*shape \(4,\).*\(3,\)"):
        env.step(torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"CartPole-v1.*integer dtype.*float32"):
        env.step(torch.zeros(4))
    with pytest.raises(ValueError, match=r"CartPole-v1.*\[0, 1\].*\[0, 2\]"):
        env.step(torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"\[-1, 0\]"):
        env.step(torch.tensor([0, -1, 0, 0]))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        env.step([0, 1, 0, 1])  # type: ignore[arg-type]
    assert torch.equal(env.state, before)
    with pytest.raises(ValueError, match=r"reset_mask.*shape"):
        env.reset(options={"reset_mask": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"reset_mask.*torch\.bool"):
        env.reset(options={"reset_mask": torch.ones(4)})
    with pytest.raises(ValueError, match="at least one True"):
        env.reset(options={"reset_mask": torch.zeros(4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="state shape"):
        env.state = torch.zeros(4, 3)
    pend = envs.make("Pendulum-v1", num_envs=2)
    pend.reset()
    with pytest.raises(TypeError, match="floating dtype"):
        pend.step(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(2, 1\)"):
        pend.step(torch.zeros(2))
    with pytest.raises(ValueError, match=r"Unknown env_id.*CartPole-v1"):
        envs.make("CartPole-v0")
    with pytest.raises(ValueError, match="autoreset_mode"):
        envs.make("CartPole-v1", autoreset_mode="sometimes")
    with pytest.raises(ValueError, match="num_envs"):
        envs.make("CartPole-v1", num_envs=0)
    with pytest.raises(ValueError, match="dtype"):
        envs.make("CartPole-v1", dtype=torch.int32)
    with pytest.raises(ValueError, match="'float64'"):
        envs.make("CartPole-v1", dtype="float16")
    # config files name dtypes as strings
    assert envs.make("CartPole-v1", dtype="float32").dtype == torch.float32
    assert envs.make("CartPole-v1", dtype="torch.float64").dtype == torch.float64


def test_continuous_actions_are_clipped_as_gymnasium() -> None:
    env = envs.make("Pendulum-v1", num_envs=2, seed=0, autoreset_mode="disabled")
    env.reset()
    start = env.state
    env.step(torch.tensor([[5.0], [-7.0]]))
    clipped = env.state
    env.state = start
    env.step(torch.tensor([[2.0], [-2.0]]))
    torch.testing.assert_close(env.state, clipped, rtol=0, atol=0)


def test_works_under_gymnasium_vector_wrappers() -> None:
    """Gymnasium's own vector wrappers accept the env, and its episode statistics equal ours."""
    pytest.importorskip("array_api_compat")  # Gymnasium's array conversion needs it
    from gymnasium.wrappers.vector import ArrayConversion

    env = envs.make("CartPole-v1", num_envs=4, seed=0)
    wrapped = RecordEpisodeStatistics(ArrayConversion(env, env_xp=torch, target_xp=np))
    obs, _ = wrapped.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs.shape == (4, 4)
    wrapped.action_space.seed(0)
    ended = 0
    for _ in range(200):
        _, rew, _, _, info = wrapped.step(wrapped.action_space.sample())
        assert isinstance(rew, np.ndarray)
        assert ("episode" in info) == ("episode_stats" in info)  # no key collision: both where a copy ended
        if "episode" in info:
            done = info["_episode"]
            np.testing.assert_array_equal(info["_episode_stats"], done)
            ended += int(done.sum())
            np.testing.assert_allclose(info["episode_stats"]["r"][done], info["episode"]["r"][done])
            np.testing.assert_array_equal(info["episode_stats"]["l"][done], info["episode"]["l"][done])
    assert ended > 0
