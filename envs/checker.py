"""`check_env`: the contract every `TorchVecEnv` must keep, checked on a live environment."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from rlopt.envs.core import TorchVecEnv

__all__ = ["check_env"]


class EnvCheckError(AssertionError):
    """A `TorchVecEnv` breaks its contract; the message names the env and the broken property."""


def _require(condition: bool, env: TorchVecEnv, message: str) -> None:
    if not condition:
        raise EnvCheckError(f"{env.env_id or type(env).__name__}: {message}")


def _sample_actions(env: TorchVecEnv, generator: torch.Generator) -> torch.Tensor:
    """Random valid actions on the env's device, drawn from a CPU generator for reproducibility."""
    space = env.single_action_space
    n = env.num_envs
    if isinstance(space, gym.spaces.Discrete):
        actions = torch.randint(int(space.start), int(space.start + space.n), (n,), generator=generator)
        return actions.to(env.device)
    assert isinstance(space, gym.spaces.Box)
    low = torch.as_tensor(space.low, dtype=torch.float32)
    high = torch.as_tensor(space.high, dtype=torch.float32)
    u = torch.rand((n, *space.shape), generator=generator)
    return (low + (high - low) * u).to(env.device)


def _check_tensor(
    env: TorchVecEnv, name: str, value: Any, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    _require(
        isinstance(value, torch.Tensor), env, f"{name} must be a torch.Tensor, got {type(value).__name__}"
    )
    _require(tuple(value.shape) == shape, env, f"{name} must have shape {shape}, got {tuple(value.shape)}")
    _require(value.dtype == dtype, env, f"{name} must have dtype {dtype}, got {value.dtype}")
    _require(value.device == env.device, env, f"{name} must be on {env.device}, got {value.device}")


def _check_step_outputs(env: TorchVecEnv, out: tuple[Any, ...]) -> None:
    obs, reward, terminated, truncated, info = out
    n = env.num_envs
    obs_shape = (n, *env.single_observation_space.shape)
    _check_tensor(env, "observation", obs, obs_shape, torch.float32)
    _check_tensor(env, "reward", reward, (n,), torch.float32)
    _check_tensor(env, "terminated", terminated, (n,), torch.bool)
    _check_tensor(env, "truncated", truncated, (n,), torch.bool)
    _require(isinstance(info, dict), env, f"info must be a dict, got {type(info).__name__}")
    done = terminated | truncated
    if not env.dense_info and not bool(done.any()):
        _require(info == {}, env, f"info must be {{}} when no copy ended (dense_info=False), got keys {list(info)}")
        return
    _require({"episode_stats", "_episode_stats"} <= info.keys(), env,
             "info must hold 'episode_stats' and '_episode_stats'")
    _require("episode" not in info, env, "info must leave 'episode' to Gymnasium's RecordEpisodeStatistics")
    _check_tensor(env, "info['_episode_stats']", info["_episode_stats"], (n,), torch.bool)
    _check_tensor(env, "info['episode_stats']['r']", info["episode_stats"]["r"], (n,), torch.float32)
    _check_tensor(env, "info['episode_stats']['l']", info["episode_stats"]["l"], (n,), torch.int32)
    _require(
        bool(torch.equal(info["_episode_stats"], done)),
        env,
        "info['_episode_stats'] must equal terminated | truncated",
    )
    if env.autoreset_mode == AutoresetMode.SAME_STEP:
        _require(
            {"final_obs", "_final_obs", "final_info", "_final_info"} <= info.keys(),
            env,
            "SAME_STEP info keys",
        )
        _check_tensor(env, "info['final_obs']", info["final_obs"], obs_shape, torch.float32)
        _require(bool(torch.equal(info["_final_obs"], done)), env, "_final_obs mask")


def _within(space: gym.spaces.Box, obs: torch.Tensor) -> bool:
    low = torch.as_tensor(space.low, device=obs.device)
    high = torch.as_tensor(space.high, device=obs.device)
    return bool(((obs >= low) & (obs <= high)).all())


def _run_until_done(env: TorchVecEnv, generator: torch.Generator) -> tuple[Any, ...]:
    """Step with random actions until some copy ends (within the time limit); return that step."""
    for _ in range(env.max_episode_steps):
        out = env.step(_sample_actions(env, generator))
        _check_step_outputs(env, out)
        done = out[2] | out[3]
        if bool(done.any()):
            return out
    raise EnvCheckError(f"{env.env_id}: no copy ended within max_episode_steps={env.max_episode_steps}")


def check_env(env: TorchVecEnv, seed: int = 0) -> None:
    """Check that ``env`` keeps the `TorchVecEnv` contract; raise ``EnvCheckError`` naming what breaks.

    Checks, in order: it is a ``gymnasium.vector.VectorEnv`` declaring ``metadata["autoreset_mode"]``;
    batched spaces equal ``batch_space`` of the single spaces; ``reset`` and ``step`` return tensors of
    the documented shapes, dtypes and device, with reset observations inside the observation space;
    ``state`` has shape ``(num_envs, k)`` and round-trips; seeding is deterministic (same seed, same
    trajectory) and seeds matter (different seeds, different initial states); partial resets through
    ``options={"reset_mask": ...}`` touch only the masked copies; the declared autoreset mode behaves as
    Gymnasium defines it on the step where a copy ends and the one after; bad actions raise.

    The environment is reset and stepped (up to a few episode lengths); reset it before further use.

    Args:
        env: the environment to check.
        seed: seed used for the determinism checks.

    Example:
        >>> from rlopt import envs
        >>> envs.check_env(envs.make("MountainCar-v0", num_envs=4, max_episode_steps=20))
    """
    _require(isinstance(env, TorchVecEnv), env, f"must be a TorchVecEnv, got {type(env).__name__}")
    _require(isinstance(env, gym.vector.VectorEnv), env, "must be a gymnasium.vector.VectorEnv")
    mode = env.metadata.get("autoreset_mode")
    _require(isinstance(mode, AutoresetMode), env, "metadata['autoreset_mode'] must be an AutoresetMode")
    _require(mode == env.autoreset_mode, env, "metadata['autoreset_mode'] must match env.autoreset_mode")
    n = env.num_envs
    _require(env.observation_space == batch_space(env.single_observation_space, n), env, "observation_space")
    _require(env.action_space == batch_space(env.single_action_space, n), env, "action_space")
    _require(isinstance(env.single_observation_space, gym.spaces.Box), env, "observation space must be a Box")
    _require(env.single_observation_space.dtype == np.float32, env, "observations must be float32")

    # Seeding: same seed, same initial states and trajectory; another seed, other initial states.
    gen = torch.Generator().manual_seed(seed)
    actions = [_sample_actions(env, gen) for _ in range(5)]
    obs_a, info = env.reset(seed=seed)
    _require(isinstance(info, dict), env, "reset info must be a dict")
    _check_tensor(env, "reset observation", obs_a, (n, *env.single_observation_space.shape), torch.float32)
    _require(_within(env.single_observation_space, obs_a), env, "reset observations must lie in the space")
    traj_a = [env.step(a)[0] for a in actions]
    obs_b, _ = env.reset(seed=seed)
    traj_b = [env.step(a)[0] for a in actions]
    _require(bool(torch.equal(obs_a, obs_b)), env, "reset(seed=s) twice must give the same observations")
    _require(
        all(torch.equal(x, y) for x, y in zip(traj_a, traj_b, strict=True)), env, "same seed, same steps"
    )
    obs_c, _ = env.reset(seed=seed + 1)
    _require(not bool(torch.equal(obs_a, obs_c)), env, "different seeds must give different initial states")
    obs_d, _ = env.reset()
    _require(not bool(torch.equal(obs_c, obs_d)), env, "reset() without a seed must draw new initial states")

    # State: Gymnasium's layout, readable and writable.
    state = env.state
    k = len(env.state_names)
    _require(tuple(state.shape) == (n, k), env, f"state must have shape {(n, k)}, got {tuple(state.shape)}")
    _require(state.device == env.device, env, "state must be on env.device")
    env.state = state
    _require(bool(torch.equal(env.state, state)), env, "writing env.state must round-trip")

    # Partial reset: only the masked copies change.
    if n > 1:
        mask = torch.zeros(n, dtype=torch.bool, device=env.device)
        mask[0] = True
        before = env.state
        env.reset(options={"reset_mask": mask})
        after = env.state
        _require(
            bool(torch.equal(after[1:], before[1:])), env, "reset_mask must leave other copies untouched"
        )

    # Autoreset behaviour around the end of an episode.
    env.reset(seed=seed)
    obs, _, terminated, truncated, info = _run_until_done(env, gen)
    done = terminated | truncated
    ep_len = info["episode_stats"]["l"]  # a copy ended, so the key is there
    _require(bool((ep_len[done] >= 1).all()), env, "episode length of an ended episode must be >= 1")
    _require(bool((ep_len <= env.max_episode_steps).all()), env, "episode length must not exceed the limit")
    _require(
        bool((truncated == (ep_len >= env.max_episode_steps)).all()) or mode == AutoresetMode.DISABLED,
        env,
        "truncated must be exactly the time limit",
    )
    if mode == AutoresetMode.NEXT_STEP:
        obs2, reward2, term2, trunc2, _ = env.step(_sample_actions(env, gen))
        _require(bool((reward2[done] == 0).all()), env, "NEXT_STEP: the reset step must give reward 0")
        _require(not bool((term2 | trunc2)[done].any()), env, "NEXT_STEP: the reset step must not end")
        _require(
            bool((env._episode_length[done] == 0).all()), env, "NEXT_STEP: reset step starts at length 0"
        )
        _require(_within(env.single_observation_space, obs2[done]), env, "NEXT_STEP: reset obs in space")
    elif mode == AutoresetMode.SAME_STEP:
        final_obs = info["final_obs"]
        _require(
            bool(torch.equal(obs[~done], final_obs[~done])), env, "SAME_STEP: final_obs of running copies"
        )
        _require(_within(env.single_observation_space, obs[done]), env, "SAME_STEP: reset obs in space")
        _require(
            bool(torch.equal(obs, env._observe(env._state))), env, "SAME_STEP: obs must be the new state's"
        )
    else:
        before = env.state
        env.reset(options={"reset_mask": done})
        after = env.state
        _require(
            bool(torch.equal(after[~done], before[~done])), env, "DISABLED: reset_mask resets only ended"
        )

    # Bad input raises before touching the state.
    before = env.state
    space = env.single_action_space
    bad_shape = torch.zeros((n + 1, *(space.shape or ())), device=env.device)
    for bad in (bad_shape,):
        try:
            env.step(bad)
        except (ValueError, TypeError):
            pass
        else:
            raise EnvCheckError(f"{env.env_id}: an action of the wrong shape must raise")
    _require(bool(torch.equal(env.state, before)), env, "a rejected action must leave the state untouched")
    env.reset(seed=seed)
