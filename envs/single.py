"""One copy of a tensor-batched env as a plain Gymnasium ``Env``: numpy in and out, Gymnasium's env API."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from rlopt.envs.core import RENDER_MODES, TorchVecEnv
from rlopt.envs.registry import make

__all__ = ["SingleEnv"]


class SingleEnv(gym.Env[np.ndarray, Any]):
    """A single copy of ``env_id``'s batched dynamics behind Gymnasium's ``Env`` API.

    The same tensor code as `rlopt.envs.make` with ``num_envs=1`` (so the same episodes as Gymnasium's env
    from the same state), presented as one env: ``reset`` and ``step`` take and return numpy values and Python
    scalars, an episode ends with ``terminated`` or ``truncated`` (the time limit is the env's, as
    ``gymnasium.make`` applies it) and the caller resets, and ``render_mode="rgb_array"`` draws frames with
    Gymnasium's own renderer. It passes ``gymnasium.utils.env_checker.check_env``. For speed use the batched
    env: this view is for tools that expect one env (checkers, recorders, notebooks).

    Args:
        env_id: one of `rlopt.envs.make`'s ids.
        render_mode: None or ``"rgb_array"``.
        device: torch device of the underlying tensors.
        **kwargs: `rlopt.envs.make`'s keywords (``max_episode_steps``, ``dtype``, Pendulum's ``g``, ...).

    Example:
        >>> from rlopt import envs
        >>> env = envs.SingleEnv("CartPole-v1")
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(1)
        >>> obs.shape, reward, terminated
        ((4,), 1.0, False)
    """

    def __init__(self, env_id: str, render_mode: str | None = None, device: str | torch.device = "cpu",
                 **kwargs: Any) -> None:
        for reserved in ("num_envs", "autoreset_mode", "seed"):
            if reserved in kwargs:
                raise TypeError(f"Invalid keyword {reserved!r}: a SingleEnv is one copy without autoreset, seeded "
                                "by reset(seed=...)")
        self.batched: TorchVecEnv = make(env_id, num_envs=1, device=device, autoreset_mode=AutoresetMode.DISABLED,
                                         render_mode=render_mode, **kwargs)
        self.observation_space = self.batched.single_observation_space
        self.action_space = self.batched.single_action_space
        self.metadata = {"render_modes": list(RENDER_MODES), "render_fps": self.batched.metadata["render_fps"]}
        self.render_mode = render_mode
        self._discrete = isinstance(self.action_space, gym.spaces.Discrete)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode: ``seed`` reseeds the env's generator (the same seed gives the same episode)."""
        super().reset(seed=seed)
        obs, _ = self.batched.reset(seed=seed, options=options)
        return _fresh_numpy(obs[0]), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One step of the copy; after ``terminated`` or ``truncated`` call :meth:`reset`."""
        if self._discrete:
            batched = torch.as_tensor(np.asarray(action).reshape(1).astype(np.int64), device=self.batched.device)
        else:
            batched = torch.as_tensor(np.asarray(action, dtype=np.float32).reshape(self.batched.action_space.shape),
                                      device=self.batched.device)
        obs, reward, terminated, truncated, _ = self.batched.step(batched)
        return _fresh_numpy(obs[0]), float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def render(self) -> np.ndarray | None:
        """The frame of the copy (``render_mode="rgb_array"``), else None."""
        frames = self.batched.render()
        return None if frames is None else frames[0]

    def close(self) -> None:
        self.batched.close()


def _fresh_numpy(x: torch.Tensor) -> np.ndarray:
    """A numpy copy the caller owns (a CPU tensor's ``numpy()`` would share the env's memory)."""
    return x.detach().to("cpu", copy=True).numpy()
