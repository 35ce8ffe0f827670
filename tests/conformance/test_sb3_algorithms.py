"""The agents under stable-baselines3's algorithm tests (test_predict.py, test_save_load.py, test_callbacks.py):
what SB3 asserts of its own PPO/A2C, asserted of rlopt.agents' PPO, A2C and REINFORCE."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    EveryNTimesteps,
    StopTrainingOnMaxEpisodes,
    StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from rlopt import agents, envs

ALGOS = ["PPO", "A2C", "REINFORCE"]


def _model(algo: str, env: object = "CartPole-v1", **kwargs: object) -> agents.PPO:
    small = {"PPO": {"n_envs": 4, "n_steps": 32, "batch_size": 64, "n_epochs": 2},
             "A2C": {"n_envs": 4, "n_steps": 8}, "REINFORCE": {"n_envs": 4, "n_steps": 64}}[algo]
    return getattr(agents, algo)("MlpPolicy", env, seed=0, **{**small, **kwargs})


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_predict_shapes_single_and_batched(algo: str, env_id: str) -> None:
    model = _model(algo, env_id)
    single = envs.SingleEnv(env_id)
    obs, _ = single.reset(seed=0)
    action, state = model.predict(obs, deterministic=True)
    assert state is None
    assert action.shape == single.action_space.shape and single.action_space.contains(action)
    batch = np.stack([obs, obs, obs])
    actions, _ = model.predict(batch, deterministic=True)
    assert actions.shape == (3, *single.action_space.shape)
    again, _ = model.predict(batch, deterministic=True)
    np.testing.assert_array_equal(actions, again)  # deterministic predictions repeat


@pytest.mark.parametrize("algo", ALGOS)
def test_save_load_to_a_path_and_to_a_file_object(algo: str, tmp_path: Path) -> None:
    model = _model(algo)
    model.learn(512)
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    expected, _ = model.predict(obs, deterministic=True)
    params = model.get_parameters()
    model.save(tmp_path / "model.zip")
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    cls = getattr(agents, algo)
    for loaded in (cls.load(tmp_path / "model.zip"), cls.load(buffer)):
        actions, _ = loaded.predict(obs, deterministic=True)
        np.testing.assert_array_equal(actions, expected)
        for name, tensors in params.items():
            for key, value in tensors.items():
                if isinstance(value, torch.Tensor):
                    torch.testing.assert_close(loaded.get_parameters()[name][key], value, rtol=0, atol=0)
    other = _model(algo)
    other.set_parameters(params)  # SB3's set_parameters: the same predictions
    np.testing.assert_array_equal(other.predict(obs, deterministic=True)[0], expected)


@pytest.mark.parametrize("algo", ALGOS)
def test_sb3_callbacks(algo: str, tmp_path: Path) -> None:
    eval_env = agents.make_eval_env("CartPole-v1", n_envs=2, seed=1)
    stop_never = StopTrainingOnRewardThreshold(reward_threshold=1e9)
    no_improvement = StopTrainingOnNoModelImprovement(max_no_improvement_evals=1000)
    evaluation = EvalCallback(eval_env, callback_on_new_best=stop_never, callback_after_eval=no_improvement,
                              eval_freq=64, n_eval_episodes=2, best_model_save_path=str(tmp_path / "best"),
                              log_path=str(tmp_path / "eval"), warn=False)
    checkpoints = CheckpointCallback(save_freq=64, save_path=str(tmp_path / "ckpt"), name_prefix=algo)
    counted: list[int] = []

    class Count(BaseCallback):
        def _on_step(self) -> bool:
            counted.append(self.num_timesteps)
            return True

    model = _model(algo)
    model.learn(1024, callback=CallbackList([evaluation, checkpoints, EveryNTimesteps(256, Count())]))
    assert (tmp_path / "best" / "best_model.zip").exists() and (tmp_path / "eval.npz").exists() is False
    assert np.load(tmp_path / "eval" / "evaluations.npz")["results"].shape[1] == 2
    saved = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {f"{algo}_{64 * 4}_steps.zip", f"{algo}_{128 * 4}_steps.zip"} <= saved  # every 64 calls of 4 copies
    assert len(counted) >= 3
    stopper = _model(algo)
    stopper.learn(100_000, callback=StopTrainingOnMaxEpisodes(max_episodes=2, verbose=0))
    assert stopper.num_timesteps < 100_000  # stopped on the episode count


@pytest.mark.parametrize("algo", ALGOS)
def test_evaluate_policy_on_batched_and_single_envs(algo: str) -> None:
    model = _model(algo)
    batched_mean, _ = evaluate_policy(model, agents.make_eval_env("CartPole-v1", n_envs=4, seed=0),
                                      n_eval_episodes=4, deterministic=True)
    single = Monitor(envs.SingleEnv("CartPole-v1"))  # as SB3 asks of any single env
    single_mean, _ = evaluate_policy(model, single, n_eval_episodes=2, deterministic=True)
    assert batched_mean > 0 and single_mean > 0
