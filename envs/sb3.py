"""`SB3VecEnv`: the one stable-baselines3 ``VecEnv`` over a Gymnasium vector env (a `TorchVecEnv` above all),
with numpy at the boundary."""

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

from rlopt.envs.core import TorchVecEnv, declared_autoreset_mode

__all__ = ["SB3VecEnv"]


def _numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array (a CPU tensor's own memory, without a copy)."""
    if isinstance(x, torch.Tensor):
        return x.numpy() if x.device.type == "cpu" and not x.requires_grad else x.detach().cpu().numpy()
    return np.asarray(x)


class SB3VecEnv(VecEnv):
    """Expose a Gymnasium vector env, a `TorchVecEnv` above all, through stable-baselines3's ``VecEnv`` API.

    SB3 resets finished copies in the same step: a `TorchVecEnv` created with another autoreset mode
    (Gymnasium's default is next-step) is switched to ``"same_step"`` here (a compiled one is compiled
    again); other vector envs must be created with ``AutoresetMode.SAME_STEP``. Per step, everything
    crosses the device boundary once: observations, rewards and dones as numpy arrays, and a
    list of ``num_envs`` info dicts as ``DummyVecEnv`` over ``Monitor``-wrapped envs gives them:
    ``info["TimeLimit.truncated"] = truncated and not terminated`` for every copy; for copies that ended,
    ``info["terminal_observation"]`` (the true final observation) and ``info["episode"] = {"r": return, "l":
    length, "t": seconds since the episode began}``, so SB3 logs ``rollout/ep_rew_mean`` and
    ``rollout/ep_len_mean`` and ``evaluate_policy`` counts whole episodes (``env_is_wrapped(Monitor)`` is
    True). A `TorchVecEnv`'s own episode statistics are used; for other envs they are counted here.

    ``allow_next_step=True`` accepts a next-step env (Gymnasium's default) for code that only *evaluates*
    through this face (``evaluate_policy``, callbacks): after an episode end the observation returned is the
    final one (also in ``terminal_observation``) and the next step only resets that copy (its action is
    ignored, reward 0, not counted in the episode statistics). SB3 algorithms *training* on such a face would
    see one extra zero-reward transition per episode, hence the default refusal.

    ``get_attr``, ``set_attr`` and ``env_method`` act on the one batched env and return its answer once
    per requested index.

    Args:
        env: the batched environment.
        allow_next_step: accept a NEXT_STEP env other than a `TorchVecEnv` as described above.

    Example:
        >>> import numpy as np
        >>> from rlopt import envs
        >>> venv = envs.SB3VecEnv(envs.make("CartPole-v1", num_envs=4, seed=0))
        >>> obs = venv.reset()
        >>> obs, rewards, dones, infos = venv.step(np.ones(4, dtype=np.int64))
        >>> obs.shape, rewards.dtype, infos[0]["TimeLimit.truncated"]
        ((4, 4), dtype('float32'), False)
    """

    def __init__(self, env: gym.vector.VectorEnv, allow_next_step: bool = False) -> None:
        if not isinstance(env, gym.vector.VectorEnv):
            raise TypeError(f"Invalid env: expected a gymnasium.vector.VectorEnv such as an envs.TorchVecEnv, got "
                            f"{type(env).__name__}")
        if isinstance(env, TorchVecEnv):
            env._set_autoreset_mode(AutoresetMode.SAME_STEP)
        self.mode = declared_autoreset_mode(env)
        allowed = (AutoresetMode.SAME_STEP, AutoresetMode.NEXT_STEP) if allow_next_step else (AutoresetMode.SAME_STEP,)
        if self.mode not in allowed:
            raise ValueError(f"Invalid env: SB3 needs autoreset_mode=SAME_STEP, got {self.mode.name}; create it "
                             "with autoreset_mode=AutoresetMode.SAME_STEP (or pass allow_next_step=True to only "
                             "evaluate through this adapter)")
        self.env = env  # before VecEnv.__init__, which asks the env for its render_mode
        super().__init__(int(env.num_envs), env.single_observation_space, env.single_action_space)
        self._torch = isinstance(env, TorchVecEnv)
        self._device = getattr(env, "device", None)
        self._on_cpu = isinstance(self._device, torch.device) and self._device.type == "cpu"
        self._discrete = isinstance(env.single_action_space, gym.spaces.Discrete)
        self._actions: Any = None
        self._episode_start = np.full(self.num_envs, time.time())
        # episode statistics of envs that do not report them (a TorchVecEnv does)
        self._episode_return = np.zeros(self.num_envs)
        self._episode_length = np.zeros(self.num_envs, dtype=np.int64)
        self._resetting = np.zeros(self.num_envs, dtype=bool)

    @property
    def vector_env(self) -> gym.vector.VectorEnv:
        """The wrapped Gymnasium vector env."""
        return self.env

    def reset(self) -> VecEnvObs:
        """Reset every copy (seeded by the last ``seed()`` call, if any) and return the observations."""
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        options = self._options[0] if self._options and self._options[0] else None
        obs, _ = self.env.reset(seed=seed, options=options)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._episode_start[:] = time.time()
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0
        self._resetting[:] = False
        return _numpy(obs)

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions (numpy, as SB3 passes them), as a tensor on the env's device for a torch env."""
        if not (self._torch or isinstance(self._device, torch.device)):
            self._actions = actions
            return
        array = np.asarray(actions)
        if self._discrete and array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            # a cast would silently turn 0.7 into 0 (SB3's DummyVecEnv rejects such an action too)
            bad = array[array != np.round(array)].ravel()[:4].tolist()
            raise ValueError(f"Invalid actions: {bad} are not integers, expected actions of the "
                             f"{self.env.single_action_space} action space")
        dtype = np.int64 if self._discrete else np.float32
        # (the array's own memory when it has the step's dtype already, as SB3's policies give it)
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
        if self._discrete and tensor.dim() == 2 and tensor.shape[1] == 1:
            tensor = tensor[:, 0]  # some SB3 policies emit discrete actions as (n, 1)
        self._actions = tensor if self._on_cpu else tensor.to(self._device)

    def step_wait(self) -> VecEnvStepReturn:
        """Step the batched env and translate its outputs to SB3's conventions."""
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        obs, reward, terminated, truncated, info = self.env.step(self._actions)
        self._actions = None
        obs_np = _numpy(obs)
        reward_np = _numpy(reward).astype(np.float32, copy=False)
        term_np, trunc_np = _numpy(terminated).astype(bool, copy=False), _numpy(truncated).astype(bool, copy=False)
        dones = term_np | trunc_np
        infos: list[dict[str, Any]] = [{"TimeLimit.truncated": t} for t in (trunc_np & ~term_np).tolist()]
        own_stats = self._torch  # a TorchVecEnv reports them where a copy ended
        if not own_stats:
            self._episode_return += reward_np
            self._episode_length += ~self._resetting  # a next-step reset step is not part of an episode
            if self.mode == AutoresetMode.NEXT_STEP:
                self._resetting = dones.copy()
        ended = np.flatnonzero(dones)
        if ended.size:
            if self.mode == AutoresetMode.NEXT_STEP:
                final_obs = obs_np[ended]
            elif self._torch:
                final_obs = _numpy(info["final_obs"])[ended] if self._on_cpu else (
                    info["final_obs"][torch.as_tensor(ended, device=self._device)].cpu().numpy())
            else:
                final_obs = np.stack([_numpy(info["final_obs"][i]) for i in ended])
            if own_stats:
                ep_r, ep_l = _numpy(info["episode_stats"]["r"]), _numpy(info["episode_stats"]["l"])
            else:
                ep_r, ep_l = self._episode_return.copy(), self._episode_length.copy()
                self._episode_return[ended] = 0.0
                self._episode_length[ended] = 0
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
        """One RGB frame per copy when the env was built with ``render_mode="rgb_array"`` (``VecEnv.render``
        tiles them), else ``None`` per copy."""
        frames: Sequence[np.ndarray] | None = self.env.render() if self.env.render_mode == "rgb_array" else None  # type: ignore[assignment]
        return list(frames) if frames is not None else [None for _ in range(self.num_envs)]
