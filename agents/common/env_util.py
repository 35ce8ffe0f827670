"""Turn whatever the user passes as ``env`` into (a) the SB3 ``VecEnv`` the SB3 API sees and (b) a stepper
that the rollout loop drives with torch tensors.

Accepted: an env id (a batched :mod:`envs` env when the id is one, else Gymnasium's vector env), a
``gymnasium.vector.VectorEnv`` (a tensor-batched ``rlopt.envs.TorchVecEnv`` included: its tensors are used as they
are, on its device), a Gymnasium ``Env`` (wrapped as SB3 does: ``Monitor`` + ``DummyVecEnv``) or an SB3
``VecEnv``.

The stepper returns, per step, tensors on the training device: next observation, reward, terminated,
truncated, and either the true final observations (same-step autoreset) or a ``valid`` mask (next-step
autoreset, where the step after an episode end only resets the env).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv


@dataclass
class StepOutput:
    """One batched env step as tensors on the training device (see module docstring)."""

    obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor | None = None
    final_mask: torch.Tensor | None = None
    valid: torch.Tensor | None = None


def _to_tensor(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    # a no-op for a tensor already on the device: the tensor-batched envs never round-trip through numpy
    return torch.as_tensor(x, device=device, dtype=dtype)


def autoreset_mode(env: gym.vector.VectorEnv) -> AutoresetMode:
    """The autoreset mode a Gymnasium vector env declares (next-step when it declares none), one the agents'
    rollouts support."""
    from rlopt.envs.core import declared_autoreset_mode

    mode = declared_autoreset_mode(env)
    if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
        raise ValueError(
            f"env autoreset_mode {mode} is not supported, expected {AutoresetMode.NEXT_STEP} or "
            f"{AutoresetMode.SAME_STEP}"
        )
    return mode


class VectorEnvStepper:
    """Drives a ``gymnasium.vector.VectorEnv`` (numpy or torch) with torch actions."""

    def __init__(self, env: gym.vector.VectorEnv, device: torch.device) -> None:
        self.env = env
        self.device = device
        self.num_envs = int(env.num_envs)
        self.mode = autoreset_mode(env)
        self.observation_space = env.single_observation_space
        self.action_space = env.single_action_space
        self.is_torch = False
        self._prev_done = torch.zeros(self.num_envs, dtype=torch.bool, device=device)

    def reset(self, seed: int | None) -> torch.Tensor:
        obs, _ = self.env.reset(seed=seed)
        self.is_torch = isinstance(obs, torch.Tensor)
        self._prev_done.zero_()
        return _to_tensor(obs, self.device, torch.float32)

    def step(self, actions: torch.Tensor) -> StepOutput:
        if self.is_torch:
            env_actions: Any = actions.to(self.env.device) if hasattr(self.env, "device") else actions
        else:
            env_actions = actions.cpu().numpy()
        obs, reward, terminated, truncated, info = self.env.step(env_actions)
        out = StepOutput(
            _to_tensor(obs, self.device, torch.float32),
            _to_tensor(reward, self.device, torch.float32),
            _to_tensor(terminated, self.device, torch.bool),
            _to_tensor(truncated, self.device, torch.bool),
        )
        if self.mode == AutoresetMode.NEXT_STEP:
            out.valid = ~self._prev_done
            self._prev_done = out.terminated | out.truncated
        elif "_final_obs" in info:
            mask = _to_tensor(info["_final_obs"], self.device, torch.bool)
            final = info["final_obs"]
            if isinstance(final, np.ndarray) and final.dtype == object:
                # Gymnasium's numpy vector envs give an object array with None where no episode ended
                blank = np.zeros_like(np.asarray(obs[0]))
                rows = [f if m else blank for f, m in zip(final, info["_final_obs"], strict=True)]
                final = np.stack(rows)
            out.final_obs = _to_tensor(final, self.device, torch.float32)
            out.final_mask = mask
        return out


class SB3VecEnvStepper:
    """Drives an SB3 ``VecEnv`` (numpy, same-step autoreset with ``terminal_observation``)."""

    mode = AutoresetMode.SAME_STEP
    is_torch = False

    def __init__(self, env: VecEnv, device: torch.device) -> None:
        self.env = env
        self.device = device
        self.num_envs = int(env.num_envs)
        self.observation_space = env.observation_space
        self.action_space = env.action_space

    def reset(self, seed: int | None) -> torch.Tensor:
        if seed is not None:
            self.env.seed(seed)
        return _to_tensor(self.env.reset(), self.device, torch.float32)

    def step(self, actions: torch.Tensor) -> StepOutput:
        obs, reward, dones, infos = self.env.step(actions.cpu().numpy())
        obs = np.asarray(obs)
        truncated = np.array([bool(info.get("TimeLimit.truncated", False)) for info in infos])
        dones = np.asarray(dones, dtype=bool)
        out = StepOutput(
            _to_tensor(obs, self.device, torch.float32),
            _to_tensor(reward, self.device, torch.float32),
            _to_tensor(dones & ~truncated, self.device, torch.bool),
            _to_tensor(truncated, self.device, torch.bool),
        )
        if truncated.any():
            blank = np.zeros_like(np.asarray(obs[0]))
            final = np.stack(
                [info["terminal_observation"] if t else blank for info, t in zip(infos, truncated, strict=True)]
            )
            out.final_obs = _to_tensor(final, self.device, torch.float32)
            out.final_mask = out.truncated
        return out


Stepper = VectorEnvStepper | SB3VecEnvStepper


def _batched_env_ids() -> set[str]:
    from rlopt import envs

    return set(envs.registered_ids())


#: ``env_kwargs`` of a batched env that change how it runs, not what it computes: not passed to evaluation envs
RUNTIME_ENV_KWARGS = frozenset({"compile", "threads", "validate_actions", "dense_info"})


def check_env_kwargs(env_kwargs: Any) -> dict[str, Any]:
    """``env_kwargs`` as a new dict (None: empty).

    Raises ``TypeError`` for anything but a dict with str keys, and ``ValueError`` for the keys the agent sets
    itself (``num_envs``, ``device``, ``seed``, ``autoreset_mode``).
    """
    if env_kwargs is None:
        return {}
    if not isinstance(env_kwargs, dict) or not all(isinstance(k, str) for k in env_kwargs):
        raise TypeError(f"Invalid env_kwargs: {env_kwargs!r}, expected a dict of keyword arguments or None")
    for key in ("num_envs", "device", "seed", "autoreset_mode"):
        if key in env_kwargs:
            raise ValueError(f"Invalid env_kwargs key {key!r}: set by the agent (n_envs=, device=, seed=)")
    return dict(env_kwargs)


def make_env_from_id(
    env_id: str,
    n_envs: int,
    device: torch.device,
    seed: int | None,
    env_kwargs: dict[str, Any] | None = None,
) -> gym.vector.VectorEnv:
    """A batched :mod:`envs` env when ``env_id`` is one (on ``device``), else Gymnasium's vector env: its
    batched implementation when the id has one (CartPole-v1), else a same-step ``SyncVectorEnv``.

    ``env_kwargs`` go to ``rlopt.envs.make`` (``max_episode_steps``, ``compile``, ``dtype``, ``threads``, Pendulum's
    ``g``, ...) or to ``gymnasium.make_vec`` (the env's constructor keywords).
    """
    if n_envs <= 0:
        raise ValueError(f"n_envs must be positive, got {n_envs}")
    kwargs = check_env_kwargs(env_kwargs)
    if env_id in _batched_env_ids():
        from rlopt import envs

        # same-step autoreset: no reset-only transitions, and SB3's VecEnv face (envs.SB3VecEnv) works
        return envs.make(
            env_id, num_envs=n_envs, device=device, seed=seed, autoreset_mode=AutoresetMode.SAME_STEP, **kwargs
        )
    if env_id not in gym.registry:
        raise ValueError(
            f"Unknown env id: {env_id!r}; expected a batched env in {sorted(_batched_env_ids())} or a registered "
            "Gymnasium id"
        )
    if gym.spec(env_id).vector_entry_point is not None:
        # Gymnasium's own batched implementation (numpy, one array op for all copies; next-step autoreset)
        return gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **kwargs)
    return gym.make_vec(
        env_id, num_envs=n_envs, vectorization_mode="sync", vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        **kwargs,
    )


def unwrap_torch_env(env: VecEnv) -> gym.vector.VectorEnv | None:
    """The Gymnasium vector env behind ``env`` when ``env`` is ``rlopt.envs.SB3VecEnv`` itself, else None.

    Only the adapter itself is looked through: an SB3 wrapper around it (``VecNormalize``, ``VecFrameStack``,
    ``VecMonitor``, ...) forwards attribute lookups to the adapter, and stepping the vector env behind it would
    silently skip what the wrapper does, so a wrapped env is stepped through its SB3 face.
    """
    from rlopt.envs.sb3 import SB3VecEnv

    return env.vector_env if isinstance(env, SB3VecEnv) else None


def to_sb3(env: gym.vector.VectorEnv) -> VecEnv:
    """The SB3 ``VecEnv`` face of a Gymnasium vector env: ``rlopt.envs.SB3VecEnv``, which the agents never step
    through (they drive the vector env's tensors directly), so a next-step env is accepted for it."""
    from rlopt.envs.sb3 import SB3VecEnv

    return SB3VecEnv(env, allow_next_step=True)


def resolve_env(
    env: Any, n_envs: int | None, device: torch.device, seed: int | None, env_kwargs: dict[str, Any] | None = None
) -> tuple[VecEnv, Stepper]:
    """``(SB3 VecEnv, stepper)`` for anything accepted as ``env`` (see module docstring); ``env_kwargs`` only
    with an env id (an env object is already built)."""
    if isinstance(env, str):
        env = make_env_from_id(env, n_envs or 1, device, seed, env_kwargs)
    elif env_kwargs:
        raise ValueError(
            f"env_kwargs={env_kwargs!r} needs an env id; pass them to the env's constructor instead "
            f"(env is a {type(env).__name__})"
        )
    if isinstance(env, VecEnv):
        inner = unwrap_torch_env(env)
        if inner is not None:
            return env, VectorEnvStepper(inner, device)
        return env, SB3VecEnvStepper(env, device)
    if isinstance(env, gym.vector.VectorEnv):
        return to_sb3(env), VectorEnvStepper(env, device)
    if isinstance(env, gym.Env):
        vec = DummyVecEnv([lambda: Monitor(env)])
        return vec, SB3VecEnvStepper(vec, device)
    raise TypeError(
        f"Invalid env: {env!r} (type {type(env).__name__}), expected an env id, a gymnasium.vector.VectorEnv "
        "(e.g. envs.TorchVecEnv), a gymnasium.Env or a stable_baselines3 VecEnv"
    )


def make_eval_env(
    env_id: str,
    n_envs: int = 1,
    device: torch.device | str = "cpu",
    seed: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> VecEnv:
    """An SB3 ``VecEnv`` for evaluating agents trained on ``env_id`` (``EvalCallback``, ``evaluate_policy``).

    It has SB3's same-step autoreset and the same ``VecEnv`` type as the training env's SB3 face, so
    ``EvalCallback`` does not warn about differing env types. ``env_kwargs`` are those of the training env:
    the ones that set the task (``max_episode_steps``, Pendulum's ``g``, ...) apply, the ones that only change
    how a batched env runs (``compile``, ``threads``, ``validate_actions``) do not.
    """
    kwargs = check_env_kwargs(env_kwargs)
    if env_id in _batched_env_ids():
        from rlopt import envs

        kwargs = {k: v for k, v in kwargs.items() if k not in RUNTIME_ENV_KWARGS}
        return to_sb3(
            envs.make(env_id, num_envs=n_envs, device=device, seed=seed, autoreset_mode="same_step", **kwargs)
        )
    if env_id not in gym.registry:
        raise ValueError(f"Unknown env id: {env_id!r}")
    vec = gym.make_vec(
        env_id, num_envs=n_envs, vectorization_mode="sync", vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        **kwargs,
    )
    face = to_sb3(vec)
    if seed is not None:
        face.seed(seed)
    return face
