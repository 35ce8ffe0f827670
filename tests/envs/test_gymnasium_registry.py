"""``gymnasium.make_vec("rlopt/<id>")`` builds the tensor-batched env, equal to ``rlopt.envs.make``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlopt import envs

from .test_equivalence import random_actions


@pytest.mark.parametrize("env_id", envs.registered_ids())
def test_make_vec_builds_the_batched_env_with_the_reference_spec(env_id: str) -> None:
    env = gym.make_vec(f"rlopt/{env_id}", num_envs=6)
    reference = gym.spec(env_id)
    assert isinstance(env, envs.TorchVecEnv) and env.num_envs == 6
    assert env.spec is not None and env.spec.id == f"rlopt/{env_id}"
    assert env.max_episode_steps == reference.max_episode_steps
    assert env.spec.reward_threshold == reference.reward_threshold
    # the same episodes as rlopt.envs.make from one seed
    direct = envs.make(env_id, num_envs=6, max_episode_steps=reference.max_episode_steps)
    a, _ = env.reset(seed=3)
    b, _ = direct.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(50):
        action = torch.as_tensor(random_actions(direct, rng))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        a, ra, ta, ua, _ = env.step(action)
        b, rb, tb, ub, _ = direct.step(action)
        assert torch.equal(ra, rb) and torch.equal(ta, tb) and torch.equal(ua, ub)


def test_make_vec_passes_keywords_and_the_single_env_stays_gymnasiums() -> None:
    env = gym.make_vec("rlopt/Pendulum-v1", num_envs=3, max_episode_steps=7, g=5.0, autoreset_mode="same_step")
    assert env.max_episode_steps == 7 and env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    single = gym.make("rlopt/Pendulum-v1", g=5.0)
    assert type(single.unwrapped) is type(gym.make("Pendulum-v1").unwrapped)
    envs.register_gymnasium_envs()  # idempotent: a second call registers nothing twice
    assert sum(1 for name in gym.registry if name.startswith("rlopt/")) == len(envs.registered_ids())


def test_the_module_form_of_the_id_imports_the_package_itself() -> None:
    import subprocess
    import sys

    code = ("import gymnasium as gym; env = gym.make_vec('rlopt.envs:rlopt/CartPole-v1', num_envs=4); "
            "print(type(env).__name__, env.num_envs)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["CartPoleEnv", "4"]


def test_the_vector_env_api_gymnasium_code_relies_on() -> None:
    env = envs.make("CartPole-v1", num_envs=3, max_episode_steps=50)
    assert env.spec is not None and env.spec.id == "rlopt/CartPole-v1" and env.spec.max_episode_steps == 50
    first, _ = env.reset(seed=42)
    assert env.np_random_seed == 42
    again, _ = env.reset(seed=[42, 43, 44])  # Gymnasium's per-copy form of an int seed
    assert torch.equal(first, again)
    with pytest.raises(ValueError, match="invalid seed list"):
        env.reset(seed=[1, 5, 9])
    with pytest.raises(ValueError, match=r"invalid reset options \['high', 'low'\]"):
        env.reset(options={"low": -0.1, "high": 0.1})  # silently ignored before
    assert env.get_attr("max_episode_steps") == (50, 50, 50)
    assert env.call("get_attr", "num_envs") == ((3, 3, 3),) * 3
    env.set_attr("max_episode_steps", [60, 60, 60])
    assert env.max_episode_steps == 60
    with pytest.raises(ValueError, match="one value for all 3 copies"):
        env.set_attr("max_episode_steps", [1, 2, 3])
