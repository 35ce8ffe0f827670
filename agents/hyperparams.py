"""Tuned defaults per algorithm and env (``agents/hyperparams.yaml``), like the RL Zoo's."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

HYPERPARAMS_FILE = Path(__file__).with_name("hyperparams.yaml")


@cache
def _table() -> dict[str, dict[str, dict[str, Any]]]:
    with open(HYPERPARAMS_FILE) as f:
        data: dict[str, dict[str, dict[str, Any]]] = yaml.safe_load(f)
    return data


def hyperparams(algorithm: str, env_id: str) -> dict[str, Any]:
    """A copy of the tuned keyword arguments of ``algorithm`` on ``env_id`` (empty if none are recorded).

    ``total_timesteps`` is the suggested training budget; the other keys are constructor arguments.

    Example:
        >>> hyperparams("PPO", "CartPole-v1")["n_envs"]
        256
    """
    table = _table()
    if algorithm not in table:
        raise ValueError(f"Invalid algorithm: {algorithm!r}, expected one of {sorted(table)}")
    return copy.deepcopy(table[algorithm].get(env_id, {}))
