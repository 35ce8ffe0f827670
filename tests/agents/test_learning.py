"""Each algorithm learns CartPole-v1 (tensor-batched envs): PPO and A2C reach an evaluation return of 475,
REINFORCE/GPOMDP (Adam and the Polyak step) improves clearly. Deterministic on CPU, so each test is a fixed
run; the budgets leave room above the steps these seeds need."""

from __future__ import annotations

from typing import Any

import pytest
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy

from rlopt import agents
from rlopt.agents.hyperparams import hyperparams


class EvaluateUntil(BaseCallback):
    """Evaluate 10 deterministic episodes every `every` steps; stop once the mean reaches `target`."""

    def __init__(self, target: float, every: int = 5_000) -> None:
        super().__init__()
        self.env = agents.make_eval_env("CartPole-v1", n_envs=10, seed=123)
        self.target, self.every, self.next = target, every, every
        self.best = float("-inf")

    def _on_step(self) -> bool:
        if self.num_timesteps < self.next:
            return True
        self.next = (self.num_timesteps // self.every + 1) * self.every
        mean, _ = evaluate_policy(self.model, self.env, n_eval_episodes=10, deterministic=True)
        self.best = max(self.best, float(mean))
        return self.best < self.target


def _learn(cls: type, budget: int, target: float, every: int = 5_000, **kwargs: Any) -> float:
    model = cls("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **kwargs)
    callback = EvaluateUntil(target, every)
    model.learn(budget, callback=callback)
    return callback.best


def test_ppo_solves_cartpole() -> None:
    kwargs = hyperparams("PPO", "CartPole-v1")
    kwargs.pop("total_timesteps")
    assert _learn(agents.PPO, 150_000, 475, **kwargs) >= 475


@pytest.mark.slow
def test_a2c_solves_cartpole() -> None:
    kwargs = hyperparams("A2C", "CartPole-v1")
    kwargs.pop("total_timesteps")
    assert _learn(agents.A2C, 200_000, 475, **kwargs) >= 475


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "polyak"])
def test_gpomdp_improves_clearly(optimizer: str) -> None:
    initial = agents.REINFORCE("MlpPolicy", "CartPole-v1", seed=0, device="cpu")
    start, _ = evaluate_policy(initial, agents.make_eval_env("CartPole-v1", n_envs=10, seed=123),
                               n_eval_episodes=10, deterministic=True)
    best = _learn(agents.REINFORCE, 60_000, 300, every=15_000, n_envs=16, n_steps=512, estimator="gpomdp",
                  optimizer=optimizer)
    assert best >= max(100.0, 5 * start)
