"""The single-file PPO in examples/ and agents.PPO compute the same thing: equal parameters after training."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from rlopt import agents

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ppo.py"


def _example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("example_ppo", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["example_ppo"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [0, 3])
def test_library_ppo_equals_the_example(seed: int) -> None:
    ex = _example()
    args = ex.Args(seed=seed, total_timesteps=3 * 64 * 16, num_envs=64, num_steps=16, minibatch_size=256,
                   update_epochs=2, learning_rate=1e-3, ent_coef=0.01)
    reference = ex.train(args)
    model = agents.PPO("MlpPolicy", "CartPole-v1", n_envs=64, n_steps=16, batch_size=256, n_epochs=2,
                       learning_rate=1e-3, ent_coef=0.01, seed=seed, device="cpu")
    model.learn(args.total_timesteps)
    ours = dict(model.policy.named_parameters())
    for name, param in reference.named_parameters():
        assert torch.equal(param, ours[name]), name
