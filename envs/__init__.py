"""Tensor-batched environments that run many copies in one tensor op on any torch device.

``rlopt.envs.make(env_id, num_envs, device, seed)`` gives a `TorchVecEnv` (a ``gymnasium.vector.VectorEnv``)
for CartPole-v1, Acrobot-v1, MountainCar-v0, MountainCarContinuous-v0 and Pendulum-v1, step for step
identical to Gymnasium's; `SB3VecEnv` adapts one to stable-baselines3; `SingleEnv` is one copy behind
Gymnasium's single-env API; `check_env` checks the contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlopt.envs.classic import AcrobotEnv, CartPoleEnv, MountainCarContinuousEnv, MountainCarEnv, PendulumEnv
from rlopt.envs.core import BACKENDS, TorchVecEnv
from rlopt.envs.registry import GYMNASIUM_NAMESPACE, make, register_gymnasium_envs, registered_ids
from rlopt.envs.single import SingleEnv

if TYPE_CHECKING:
    from rlopt.envs.checker import check_env
    from rlopt.envs.sb3 import SB3VecEnv

__all__ = [
    "BACKENDS",
    "GYMNASIUM_NAMESPACE",
    "AcrobotEnv",
    "CartPoleEnv",
    "MountainCarContinuousEnv",
    "MountainCarEnv",
    "PendulumEnv",
    "SB3VecEnv",
    "SingleEnv",
    "TorchVecEnv",
    "check_env",
    "make",
    "register_gymnasium_envs",
    "registered_ids",
]

register_gymnasium_envs()


def __getattr__(name: str) -> Any:
    # stable_baselines3 is imported only by its adapter, and only when asked for.
    if name == "SB3VecEnv":
        from rlopt.envs.sb3 import SB3VecEnv

        return SB3VecEnv
    if name == "check_env":
        from rlopt.envs.checker import check_env

        return check_env
    raise AttributeError(f"module 'rlopt.envs' has no attribute {name!r}")
