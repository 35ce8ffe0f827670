"""`rlopt.envs.make`: build a tensor-batched environment by its Gymnasium id."""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import torch
from gymnasium.vector import AutoresetMode

from rlopt.envs.classic import ENV_CLASSES
from rlopt.envs.core import TorchVecEnv

__all__ = ["GYMNASIUM_NAMESPACE", "make", "register_gymnasium_envs", "registered_ids"]

#: ids in Gymnasium's registry are ``rlopt/<id>`` (the plain ids stay Gymnasium's own)
GYMNASIUM_NAMESPACE = "rlopt"


def registered_ids() -> list[str]:
    """The environment ids `make` accepts."""
    return sorted(ENV_CLASSES)


def make(
    env_id: str,
    num_envs: int = 1,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    **kwargs: Any,
) -> TorchVecEnv:
    """Create ``num_envs`` copies of ``env_id`` stepped together on ``device``.

    Args:
        env_id: one of "CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0",
            "Pendulum-v1".
        num_envs: number of copies.
        device: torch device for every tensor.
        seed: seed of the env's generator (``None``: OS entropy); ``reset(seed=...)`` reseeds.
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (Gymnasium's default), ``SAME_STEP`` or ``DISABLED``,
            or their names "next_step", "same_step", "disabled".
        **kwargs: ``max_episode_steps``, ``dtype``, ``compile``, ``validate_actions``, ``threads``, ``dense_info`` (see
            `TorchVecEnv`)
            and environment keywords (Pendulum's ``g``).

    Returns:
        The `TorchVecEnv`; call ``reset()`` before ``step()``.

    Example:
        >>> from rlopt import envs
        >>> env = envs.make("Pendulum-v1", num_envs=16, seed=0, autoreset_mode="same_step")
        >>> obs, info = env.reset()
        >>> obs.shape, env.metadata["autoreset_mode"].name
        (torch.Size([16, 3]), 'SAME_STEP')
    """
    if env_id not in ENV_CLASSES:
        raise ValueError(f"Unknown env_id: {env_id!r}, expected one of {', '.join(registered_ids())}")
    env = ENV_CLASSES[env_id](
        num_envs=num_envs, device=device, seed=seed, autoreset_mode=autoreset_mode, **kwargs
    )
    name = f"{GYMNASIUM_NAMESPACE}/{env_id}"
    if name in gym.registry:  # the spec Gymnasium's make_vec would give it
        spec = copy.deepcopy(gym.spec(name))
        spec.kwargs = {**spec.kwargs, "num_envs": num_envs, **kwargs}
        spec.max_episode_steps = env.max_episode_steps
        env.spec = spec
    return env


def register_gymnasium_envs() -> None:
    """Register every env with Gymnasium as ``rlopt/<id>``, so ``gymnasium.make_vec`` builds the batched env.

    ``gymnasium.make_vec("rlopt/CartPole-v1", num_envs=4096, device="cuda")`` returns the `TorchVecEnv` (the
    spec's ``vector_entry_point``), with the spec's ``max_episode_steps`` and reward threshold and any keyword
    of `make`; ``gymnasium.make("rlopt/CartPole-v1")`` gives Gymnasium's own single env, the reference the
    batched one matches step for step. ``import rlopt.envs`` registers them (idempotent), and Gymnasium's
    ``"rlopt.envs:rlopt/CartPole-v1"`` form imports the module itself.
    """
    for env_id, cls in ENV_CLASSES.items():
        name = f"{GYMNASIUM_NAMESPACE}/{env_id}"
        if name in gym.registry:
            continue
        reference = gym.spec(env_id)
        gym.register(name, entry_point=reference.entry_point, vector_entry_point=f"{cls.__module__}:{cls.__name__}",
                     max_episode_steps=reference.max_episode_steps, reward_threshold=reference.reward_threshold)
