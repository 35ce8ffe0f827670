"""Tuned defaults per algorithm and env (``agents/hyperparams.yaml``), like the RL Zoo's."""

from __future__ import annotations

import copy
from collections.abc import Callable
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


def linear_schedule(start: float) -> Callable[[float], float]:
    """``progress_remaining -> start * progress_remaining``: linear decay to 0 over the training budget."""

    def schedule(progress_remaining: float) -> float:
        return start * progress_remaining

    return schedule


def hyperparams(algorithm: str, env_id: str, optimizer: Any = "adam") -> dict[str, Any]:
    """A copy of the tuned keyword arguments of ``algorithm`` on ``env_id`` (empty if none are recorded).

    ``total_timesteps`` is the suggested training budget; the other keys are constructor arguments. As in
    the RL Zoo, a value ``"lin_<x>"`` is a linear schedule from ``x`` to 0 (:func:`linear_schedule`).
    An entry may hold a ``by_optimizer`` mapping from an ``optimizer=`` name to settings that override the
    others for that optimizer (``optimizer`` defaults to the agents' default, ``"adam"``; a class gets no
    override): a setting tuned for Adam is not imposed on the step-size rules.

    Example:
        >>> hyperparams("PPO", "CartPole-v1")["n_envs"]
        128
        >>> hyperparams("PPO", "CartPole-v1")["clip_range"], hyperparams("PPO", "CartPole-v1", "sls")["clip_range"]
        (0.3, 0.2)
    """
    table = _table()
    if algorithm not in table:
        raise ValueError(f"Invalid algorithm: {algorithm!r}, expected one of {sorted(table)}")
    params = copy.deepcopy(table[algorithm].get(env_id, {}))
    overrides = params.pop("by_optimizer", None) or {}
    if isinstance(optimizer, str):
        params.update(overrides.get(optimizer.lower(), {}))
    return parse_schedules(params)


def parse_schedules(params: dict[str, Any]) -> dict[str, Any]:
    """Replace every ``"lin_<x>"`` value by :func:`linear_schedule` of ``x`` (in place; returns ``params``)."""
    for key, value in params.items():
        if isinstance(value, str) and value.startswith("lin_"):
            try:
                params[key] = linear_schedule(float(value[4:]))
            except ValueError:
                raise ValueError(f"Invalid {key}: {value!r}, expected 'lin_<number>'") from None
    return params
