"""`SB3VecEnv`: a stable-baselines3 ``VecEnv`` over a `TorchVecEnv`, with numpy at the boundary."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from rlopt.envs.core import TorchVecEnv

__all__ = ["SB3VecEnv"]


class SB3VecEnv(VecEnv):
    """Expose a `TorchVecEnv` through stable-baselines3's ``VecEnv`` API, so any SB3 algorithm can use it.

    SB3 resets finished copies in the same step, so the wrapped env must use
    ``autoreset_mode="same_step"``. Per step, everything crosses the device boundary once: observations,
    rewards and dones as numpy arrays, and a list of ``num_envs`` info dicts as ``DummyVecEnv`` over
    ``Monitor``-wrapped envs gives them: ``info["TimeLimit.truncated"] = truncated and not terminated``
    for every copy; for copies that ended, ``info["terminal_observation"]`` (the true final observation)
    and ``info["episode"] = {"r": return, "l": length, "t": seconds since the episode began}``, so SB3
    logs ``rollout/ep_rew_mean`` and ``rollout/ep_len_mean`` and ``evaluate_policy`` counts whole
    episodes (``env_is_wrapped(Monitor)`` is True).

    ``get_attr``, ``set_attr`` and ``env_method`` act on the one batched env and return its answer once
    per requested index.

    Args:
        env: the batched environment (SAME_STEP autoreset).

    Example:
        >>> import numpy as np
        >>> from rlopt import envs
        >>> venv = envs.SB3VecEnv(envs.make("CartPole-v1", num_envs=4, seed=0, autoreset_mode="same_step"))
        >>> obs = venv.reset()
        >>> obs, rewards, dones, infos = venv.step(np.ones(4, dtype=np.int64))
        >>> obs.shape, rewards.dtype, infos[0]["TimeLimit.truncated"]
        ((4, 4), dtype('float32'), False)
    """

    def __init__(self, env: TorchVecEnv) -> None:
        if not isinstance(env, TorchVecEnv):
            raise TypeError(f"Invalid env: expected an envs.TorchVecEnv, got {type(env).__name__}")
        if env.autoreset_mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"Invalid env: SB3 needs autoreset_mode=SAME_STEP, got {env.autoreset_mode.name}; "
                f"create it with envs.make({env.env_id!r}, ..., autoreset_mode='same_step')"
            )
        self.env = env  # before VecEnv.__init__, which asks the env for its render_mode
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self._discrete = isinstance(env.single_action_space, gym.spaces.Discrete)
        self._actions: torch.Tensor | None = None
        self._episode_start = np.full(env.num_envs, time.time())

    def reset(self) -> VecEnvObs:
        """Reset every copy (seeded by the last ``seed()`` call, if any) and return the observations."""
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        obs, _ = self.env.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._episode_start[:] = time.time()
        return obs.cpu().numpy()

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions (numpy, as SB3 passes them) as a tensor on the env's device."""
        tensor = torch.as_tensor(np.asarray(actions))
        tensor = tensor.to(torch.int64) if self._discrete else tensor.to(torch.float32)
        if self._discrete and tensor.dim() == 2 and tensor.shape[1] == 1:
            tensor = tensor[:, 0]  # some SB3 policies emit discrete actions as (n, 1)
        self._actions = tensor.to(self.env.device)

    def step_wait(self) -> VecEnvStepReturn:
        """Step the batched env and translate its outputs to SB3's conventions."""
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        obs, reward, terminated, truncated, info = self.env.step(self._actions)
        self._actions = None
        obs_np = obs.cpu().numpy()
        reward_np = reward.cpu().numpy()
        term_np = terminated.cpu().numpy()
        trunc_np = truncated.cpu().numpy()
        dones = term_np | trunc_np
        time_limit = trunc_np & ~term_np
        infos: list[dict[str, Any]] = [{"TimeLimit.truncated": bool(t)} for t in time_limit]
        ended = np.flatnonzero(dones)
        if ended.size:
            final_obs = info["final_obs"][torch.as_tensor(ended, device=self.env.device)].cpu().numpy()
            ep_r = info["episode"]["r"].cpu().numpy()
            ep_l = info["episode"]["l"].cpu().numpy()
            now = time.time()
            for j, i in enumerate(ended):
                infos[i]["terminal_observation"] = final_obs[j]
                infos[i]["episode"] = {
                    "r": round(float(ep_r[i]), 6),
                    "l": int(ep_l[i]),
                    "t": round(now - float(self._episode_start[i]), 6),
                }
            self._episode_start[ended] = now
        return obs_np, reward_np, dones, infos

    def close(self) -> None:
        """Close the batched env."""
        self.env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The batched env's attribute, once per requested index."""
        value = getattr(self.env, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the batched env (shared by every copy)."""
        setattr(self.env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a method of the batched env once; its result is returned once per requested index."""
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """True for ``Monitor``: the episode statistics it would add are already in the infos."""
        wrapped = isinstance(wrapper_class, type) and issubclass(wrapper_class, Monitor)
        return [wrapped for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        """No rendering: the copies have no frames."""
        return [None for _ in range(self.num_envs)]
