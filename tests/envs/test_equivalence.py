"""Differential tests against Gymnasium's own classes, driven from identical states and actions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlopt import envs

ENV_IDS = envs.registered_ids()

# Per-env ranges of random test states (Gymnasium's `unwrapped.state` layout), wide enough to exercise
# termination, clipping and Acrobot's angle wrapping.
STATE_RANGES: dict[str, list[tuple[float, float]]] = {
    "CartPole-v1": [(-2.6, 2.6), (-3.0, 3.0), (-0.25, 0.25), (-3.5, 3.5)],
    "Acrobot-v1": [(-np.pi, np.pi), (-np.pi, np.pi), (-4 * np.pi, 4 * np.pi), (-9 * np.pi, 9 * np.pi)],
    "MountainCar-v0": [(-1.2, 0.6), (-0.07, 0.07)],
    "MountainCarContinuous-v0": [(-1.2, 0.6), (-0.07, 0.07)],
    "Pendulum-v1": [(-3 * np.pi, 3 * np.pi), (-8.0, 8.0)],
}


def random_states(env_id: str, n: int, rng: np.random.Generator) -> np.ndarray:
    cols = [rng.uniform(lo, hi, size=n) for lo, hi in STATE_RANGES[env_id]]
    states = np.stack(cols, axis=1)
    if env_id == "MountainCar-v0" or env_id == "MountainCarContinuous-v0":
        # Hit the wall and the goal exactly sometimes.
        states[: n // 8, 0] = -1.2
        states[n // 8 : n // 4, 0] = 0.5
    if env_id == "MountainCarContinuous-v0":
        states = states.astype(np.float32)  # Gymnasium keeps this state in float32
    return states


def random_actions(env: envs.TorchVecEnv, rng: np.random.Generator) -> np.ndarray:
    space = env.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, int(space.n), size=env.num_envs)
    # Beyond the bounds too: Gymnasium clips the force but (MountainCarContinuous) not the cost.
    return rng.uniform(-3.0, 3.0, size=(env.num_envs, 1)).astype(np.float32)


def gym_step(ref: gym.Env, state: np.ndarray, action: np.ndarray | np.integer) -> tuple:
    ref.unwrapped.state = state.copy()
    if hasattr(ref.unwrapped, "steps_beyond_terminated"):
        ref.unwrapped.steps_beyond_terminated = None  # a fresh state, not a step after termination
    with np.errstate(all="ignore"):
        obs, reward, terminated, _truncated, _ = ref.unwrapped.step(action)
    return obs, reward, terminated, ref.unwrapped.state


@pytest.mark.parametrize("backend", envs.BACKENDS)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_one_step_matches_gymnasium_from_random_states(env_id: str, backend: str) -> None:
    rng = np.random.default_rng(0)
    n = 512
    env = envs.make(env_id, num_envs=n, seed=0, autoreset_mode="disabled", backend=backend)
    env.reset()
    states = random_states(env_id, n, rng)
    actions = random_actions(env, rng)
    env.state = torch.from_numpy(states)
    obs, reward, terminated, truncated, _ = env.step(torch.from_numpy(actions))
    ref = gym.make(env_id)
    ref.reset(seed=0)
    next_states = env.state.numpy()
    for i in range(n):
        a = actions[i] if actions.ndim == 2 else int(actions[i])
        g_obs, g_rew, g_term, g_state = gym_step(ref, states[i], a)
        np.testing.assert_allclose(obs[i].numpy(), g_obs, rtol=1e-6, atol=1e-6, err_msg=f"{env_id} copy {i}")
        np.testing.assert_allclose(
            next_states[i], np.asarray(g_state, dtype=np.float64), rtol=1e-6, atol=1e-7
        )
        assert float(reward[i]) == pytest.approx(float(g_rew), rel=1e-6, abs=1e-6), (env_id, i)
        assert bool(terminated[i]) == bool(g_term), (env_id, i, states[i])
    assert not bool(truncated.any())
    ref.close()


@pytest.mark.parametrize("backend", envs.BACKENDS)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_whole_episodes_match_gymnasium(env_id: str, backend: str) -> None:
    """Same start state, same actions: whole episodes agree, to the last (terminating or truncating) step.

    The port follows Gymnasium's order of floating-point operations, so nothing diverges within an
    episode: on the reference machine the largest observation difference over whole episodes is 0 for
    CartPole (500 balanced steps), MountainCar and Pendulum, 5e-7 for Acrobot and 3e-6 for
    MountainCarContinuous (float32 state). The assertion allows 1e-5 so that a libm whose sin/cos differ
    by an ulp still passes while a wrong formula does not. CartPole is driven by a balancing policy so its
    episodes run to the time limit instead of ending after a dozen random steps.
    """
    rng = np.random.default_rng(1)
    n = 8
    env = envs.make(env_id, num_envs=n, seed=3, autoreset_mode="disabled", backend=backend)
    env.reset()
    start = env.state.numpy()
    refs = [gym.make(env_id) for _ in range(n)]
    for i, ref in enumerate(refs):
        ref.reset(seed=i)
        ref.unwrapped.state = (
            start[i].astype(np.float32) if env_id == "MountainCarContinuous-v0" else start[i].copy()
        )
    alive = np.ones(n, dtype=bool)
    lengths = np.zeros(n, dtype=int)
    worst = 0.0
    for t in range(env.max_episode_steps):
        if env_id == "CartPole-v1":
            s = env.state.numpy()
            actions = (s[:, 2] + 0.5 * s[:, 3] > 0).astype(np.int64)
        else:
            actions = random_actions(env, rng)
        obs, reward, terminated, truncated, _ = env.step(torch.from_numpy(actions))
        for i, ref in enumerate(refs):
            if not alive[i]:
                continue
            a = actions[i] if actions.ndim == 2 else int(actions[i])
            g_obs, g_rew, g_term, g_trunc, _ = ref.step(a)
            worst = max(worst, float(np.abs(obs[i].numpy() - g_obs).max()))
            np.testing.assert_allclose(
                obs[i].numpy(), g_obs, rtol=1e-5, atol=1e-5, err_msg=f"copy {i} step {t}"
            )
            assert float(reward[i]) == pytest.approx(float(g_rew), rel=1e-5, abs=1e-5)
            assert bool(terminated[i]) == bool(g_term), (env_id, i, t)
            assert bool(truncated[i]) == bool(g_trunc), (env_id, i, t)
            lengths[i] = t + 1
            if g_term or g_trunc:
                alive[i] = False
        if not alive.any():
            break
    assert not alive.any(), "every episode must end within the time limit"
    if env_id == "CartPole-v1":
        assert (lengths == env.max_episode_steps).all(), lengths
    print(f"{env_id}: episode lengths {lengths.tolist()}, largest |obs difference| {worst:.1e}")


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_spaces_and_time_limits_equal_gymnasium(env_id: str) -> None:
    ref = gym.make(env_id)
    env = envs.make(env_id, num_envs=3)
    assert env.single_observation_space == ref.observation_space
    assert env.single_action_space == ref.action_space
    assert env.single_observation_space.dtype == ref.observation_space.dtype
    assert env.max_episode_steps == gym.spec(env_id).max_episode_steps
    ref.reset(seed=0)
    assert env.state.shape == (3, np.asarray(ref.unwrapped.state).shape[0])
    ref.close()
