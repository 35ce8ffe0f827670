"""stable-baselines3's VecEnv contract, as its test_vec_envs.py and test_vec_normalize.py check it, run against
SB3VecEnv over the batched envs; SB3's own env checker on the single-env view; unmodified SB3 algorithms on
the adapter under every SB3 wrapper that applies to vector observations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecCheckNan,
    VecFrameStack,
    VecMonitor,
    VecNormalize,
)

from rlopt import envs

N = 4


def _venv(env_id: str = "CartPole-v1", n: int = N, seed: int = 0, **kwargs: object) -> envs.SB3VecEnv:
    return envs.SB3VecEnv(envs.make(env_id, num_envs=n, seed=seed, **kwargs))  # type: ignore[arg-type]


def test_step_reset_types_and_terminal_observation() -> None:
    venv = _venv()
    obs = venv.reset()
    assert isinstance(obs, np.ndarray) and obs.shape == (N, 4) and obs.dtype == np.float32
    ended = 0
    for _ in range(100):
        obs, rewards, dones, infos = venv.step(np.zeros(N, dtype=np.int64))
        assert rewards.dtype == np.float32 and dones.dtype == bool and len(infos) == N
        for i in np.flatnonzero(dones):
            ended += 1
            terminal = infos[i]["terminal_observation"]
            assert terminal.shape == (4,) and abs(terminal[2]) > 0.2  # the fallen pole, not the reset state
            assert abs(obs[i][2]) <= 0.05
            assert {"r", "l", "t"} <= infos[i]["episode"].keys()
    assert ended >= N


def test_step_async_wait_and_the_custom_calls() -> None:
    venv = _venv("Pendulum-v1")
    venv.reset()
    venv.step_async(np.zeros((N, 1), dtype=np.float32))
    obs, *_ = venv.step_wait()
    assert obs.shape == (N, 3)
    assert venv.get_attr("g") == [10.0] * N
    assert venv.get_attr("g", indices=[0, 2]) == [10.0, 10.0]
    venv.set_attr("g", 3.7)
    assert venv.get_attr("g") == [3.7] * N
    assert len(venv.env_method("__repr__")) == N
    assert venv.env_is_wrapped(Monitor) == [True] * N  # the episode statistics Monitor adds are in the infos


def test_seeding_gives_the_same_observations() -> None:
    a, b, c = _venv(seed=None), _venv(seed=None), _venv(seed=None)  # type: ignore[arg-type]
    a.seed(7)
    b.seed(7)
    c.seed(8)
    oa, ob, oc = a.reset(), b.reset(), c.reset()
    np.testing.assert_array_equal(oa, ob)
    assert not np.array_equal(oa, oc)


@pytest.mark.parametrize("wrapper", ["VecNormalize", "VecFrameStack", "VecMonitor", "VecCheckNan"])
def test_sb3_wrappers_see_every_step(wrapper: str) -> None:
    inner = _venv()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # VecMonitor: the adapter already reports Monitor's statistics
        venv = {"VecNormalize": lambda: VecNormalize(inner), "VecFrameStack": lambda: VecFrameStack(inner, 3),
                "VecMonitor": lambda: VecMonitor(inner), "VecCheckNan": lambda: VecCheckNan(inner)}[wrapper]()
    obs = venv.reset()
    dones_seen = 0
    for _ in range(60):
        obs, _, dones, _ = venv.step(np.zeros(N, dtype=np.int64))
        dones_seen += int(dones.sum())
    assert dones_seen >= N
    if wrapper == "VecNormalize":
        assert venv.obs_rms.count > 60 * N and abs(float(obs.mean())) < 5
    elif wrapper == "VecFrameStack":
        assert obs.shape == (N, 12)
    elif wrapper == "VecMonitor":
        assert venv.episode_count >= N


def test_vec_normalize_statistics_round_trip_as_json(tmp_path: object) -> None:
    from pathlib import Path

    from rlopt.agents import load_vec_normalize, save_vec_normalize

    venv = VecNormalize(_venv())
    venv.reset()
    for _ in range(30):
        venv.step(np.ones(N, dtype=np.int64))
    path = Path(str(tmp_path)) / "norm.json"
    save_vec_normalize(venv, path)
    loaded = load_vec_normalize(path, _venv())
    np.testing.assert_allclose(loaded.obs_rms.mean, venv.obs_rms.mean)
    np.testing.assert_allclose(loaded.obs_rms.var, venv.obs_rms.var)
    assert loaded.obs_rms.count == venv.obs_rms.count


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0",
                                    "Pendulum-v1"])
def test_sb3_env_checker_accepts_the_single_env_view(env_id: str) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*symmetric and normalized.*")  # Pendulum's [-2, 2] torques
        warnings.filterwarnings("ignore", message=".*Box observation space.*")
        sb3_check_env(envs.SingleEnv(env_id), warn=True)


@pytest.mark.parametrize("algo", [PPO, A2C])
def test_unmodified_sb3_algorithms_train_on_the_adapter_under_its_wrappers(algo: type) -> None:
    venv = VecNormalize(VecFrameStack(_venv(), 2))
    model = algo("MlpPolicy", venv, n_steps=16, seed=0, device="cpu",
                 **({"batch_size": 32, "n_epochs": 1} if algo is PPO else {}))
    model.learn(256)
    assert model.num_timesteps >= 256
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (N,)


def test_the_adapter_matches_dummy_vec_env_over_gymnasiums_envs() -> None:
    import gymnasium as gym

    ours = _venv(n=2, seed=0)
    theirs = DummyVecEnv([lambda: Monitor(gym.make("CartPole-v1"))] * 2)
    ours.reset()
    theirs.reset()
    ours.env.state = np.stack([e.unwrapped.state for e in theirs.envs])  # type: ignore[attr-defined]
    for _ in range(30):
        action = np.array([1, 0])
        o1, r1, d1, _ = ours.step(action)
        o2, r2, d2, _ = theirs.step(action)
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_allclose(r1, r2)
        if not d1.any():
            np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-6)
        else:
            break
