"""`SB3VecEnv` against stable-baselines3's own DummyVecEnv over Monitor-wrapped Gymnasium envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecCheckNan, VecNormalize

from rlopt import envs

from .test_equivalence import random_actions

LIMIT = 30


@pytest.mark.parametrize("env_id", envs.registered_ids())
def test_lockstep_with_dummy_vec_env(env_id: str) -> None:
    n = 5
    rng = np.random.default_rng(2)
    ref = DummyVecEnv([lambda: Monitor(gym.make(env_id, max_episode_steps=LIMIT)) for _ in range(n)])
    torch_env = envs.make(env_id, num_envs=n, seed=0, autoreset_mode="same_step", max_episode_steps=LIMIT)
    venv = envs.SB3VecEnv(torch_env)
    assert venv.observation_space == ref.observation_space
    assert venv.action_space == ref.action_space
    ref.seed(0)
    ref.reset()
    obs = venv.reset()
    assert isinstance(obs, np.ndarray) and obs.shape == (n, *ref.observation_space.shape)

    def sync() -> None:
        torch_env.state = torch.from_numpy(
            np.stack([np.asarray(e.unwrapped.state, dtype=np.float64) for e in ref.envs])
        )

    sync()
    ended = 0
    for t in range(3 * LIMIT):
        actions = random_actions(torch_env, rng)
        g_obs, g_rew, g_done, g_infos = ref.step(actions)
        obs, rew, done, infos = venv.step(actions)
        assert rew.dtype == np.float32 and done.dtype == np.bool_
        np.testing.assert_array_equal(done, g_done, err_msg=f"step {t}")
        np.testing.assert_allclose(rew, g_rew, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(obs[~done], g_obs[~done], rtol=1e-5, atol=1e-6)
        for i in range(n):
            assert infos[i]["TimeLimit.truncated"] == g_infos[i]["TimeLimit.truncated"]
            assert ("terminal_observation" in infos[i]) == ("terminal_observation" in g_infos[i])
            if done[i]:
                ended += 1
                np.testing.assert_allclose(
                    infos[i]["terminal_observation"], g_infos[i]["terminal_observation"], rtol=1e-5, atol=1e-6
                )
                assert infos[i]["episode"]["l"] == g_infos[i]["episode"]["l"]
                assert infos[i]["episode"]["r"] == pytest.approx(
                    g_infos[i]["episode"]["r"], rel=1e-5, abs=1e-4
                )
                assert infos[i]["episode"]["t"] >= 0.0
        sync()
    assert ended >= n


def test_ppo_learns_a_few_hundred_steps_and_logs_episodes() -> None:
    venv = envs.SB3VecEnv(envs.make("CartPole-v1", num_envs=8, seed=0, autoreset_mode="same_step"))
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=128, n_epochs=2, seed=0, device="cpu")
    model.learn(total_timesteps=1024)
    assert model.num_timesteps >= 1024
    # ep_info_buffer feeds rollout/ep_rew_mean; CartPole's return equals its length.
    assert len(model.ep_info_buffer) > 0
    assert all(info["r"] == info["l"] for info in model.ep_info_buffer)


def test_sb3_wrappers_and_seeding() -> None:
    def make() -> VecNormalize:
        venv = envs.SB3VecEnv(envs.make("Pendulum-v1", num_envs=4, autoreset_mode="same_step"))
        return VecNormalize(VecCheckNan(venv, raise_exception=True))

    trajs = []
    for _ in range(2):
        venv = make()
        venv.seed(7)
        out = [venv.reset()]
        for _ in range(20):
            out.append(venv.step(np.full((4, 1), 0.5, dtype=np.float32))[0])
        trajs.append(np.stack(out))
    np.testing.assert_array_equal(trajs[0], trajs[1])
    venv = make()
    assert venv.get_attr("num_envs") == [4, 4, 4, 4]
    assert venv.env_is_wrapped(Monitor) == [True] * 4


def test_a_next_step_env_is_switched_to_same_step_and_others_are_refused() -> None:
    env = envs.make("CartPole-v1", num_envs=2)  # Gymnasium's default, next-step
    venv = envs.SB3VecEnv(env)
    assert env.autoreset_mode == AutoresetMode.SAME_STEP and venv.mode == AutoresetMode.SAME_STEP
    venv.reset()
    ends = 0
    for _ in range(60):
        _, _, dones, infos = venv.step(np.zeros(2, dtype=np.int64))  # always left: ends in ~10 steps
        for i in np.flatnonzero(dones):
            ends += 1
            assert "terminal_observation" in infos[i] and abs(infos[i]["terminal_observation"][2]) > 0.2
    assert ends >= 4
    sync = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    with pytest.raises(ValueError, match="SAME_STEP"):
        envs.SB3VecEnv(sync)
    with pytest.raises(TypeError, match="TorchVecEnv"):
        envs.SB3VecEnv(gym.make("CartPole-v1"))  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["same_step", "next_step"])
def test_a_gymnasium_vector_env_through_the_same_adapter_matches_dummy_vec_env(mode: str) -> None:
    """Gymnasium's own SyncVectorEnv: same-step gives SB3's transitions exactly; a next-step face (accepted
    with allow_next_step) gives the same episodes, with one extra reset step after each end."""
    n, limit = 3, 12
    ref = DummyVecEnv([lambda: Monitor(gym.make("CartPole-v1", max_episode_steps=limit)) for _ in range(n)])
    vec = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync", max_episode_steps=limit,
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode[mode.upper()]})
    if mode == "next_step":
        with pytest.raises(ValueError, match="SB3 needs autoreset_mode=SAME_STEP"):
            envs.SB3VecEnv(vec)
    venv = envs.SB3VecEnv(vec, allow_next_step=mode == "next_step")
    ref.seed(7)
    venv.seed(7)
    np.testing.assert_array_equal(venv.reset(), ref.reset())
    ours: list[tuple[float, int]] = []
    theirs: list[tuple[float, int]] = []
    resetting = np.zeros(n, dtype=bool)
    for _ in range(4 * limit):
        actions = np.ones(n, dtype=np.int64)  # always push right: every episode ends by termination or limit
        _, _, done, infos = venv.step(np.where(resetting, 0, actions))
        ours += [(i["episode"]["r"], i["episode"]["l"]) for i in infos if "episode" in i]
        if mode == "next_step":
            resetting = done & ~resetting
        if mode == "same_step" or not resetting.any():
            _, _, _, g_infos = ref.step(actions)
            theirs += [(i["episode"]["r"], i["episode"]["l"]) for i in g_infos if "episode" in i]
    assert ours and ours[: len(theirs)] == theirs[: len(ours)]


def test_a_fractional_discrete_action_is_refused_not_truncated() -> None:
    venv = envs.SB3VecEnv(envs.make("CartPole-v1", num_envs=2, seed=0, autoreset_mode="same_step"))
    venv.reset()
    with pytest.raises(ValueError, match=r"Invalid actions: \[0\.7\] are not integers.*Discrete\(2\)"):
        venv.step(np.array([0.7, 1.0]))
    obs, _, _, _ = venv.step(np.array([0.0, 1.0]))  # whole-valued floats are actions
    assert obs.shape == (2, 4)
