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


class LinearDecay:
    """``progress_remaining -> start * max(progress_remaining, 0)``: linear decay to 0 over the training budget.

    The last rollout may end past the budget (whole rollouts, as SB3), where SB3's remaining progress is negative:
    the RL Zoo's ``lin_`` would then give a negative learning rate (Adam ascends) or clip range for one update.
    Here the schedule stays at 0 there.

    A class rather than a closure, so that a saved model stores it as plain data that loads without running
    code (see :mod:`rlopt.agents.common.serialization`).

    Example:
        >>> LinearDecay(2.5e-3)(0.5), LinearDecay(2.5e-3)(-0.024)
        (0.00125, 0.0)
    """

    def __init__(self, start: float) -> None:
        self.start = float(start)

    def __call__(self, progress_remaining: float) -> float:
        return self.start * max(progress_remaining, 0.0)

    def __repr__(self) -> str:
        return f"LinearDecay({self.start!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinearDecay) and other.start == self.start

    def __hash__(self) -> int:
        return hash(("LinearDecay", self.start))


def linear_schedule(start: float) -> Callable[[float], float]:
    """The RL Zoo's ``lin_<start>``: :class:`LinearDecay` of ``start``."""
    return LinearDecay(start)


def hyperparams(algorithm: str, env_id: str, optimizer: Any = "adam") -> dict[str, Any]:
    """A copy of the tuned keyword arguments of ``algorithm`` on ``env_id`` (empty if none are recorded).

    ``total_timesteps`` is the suggested training budget; the other keys are constructor arguments. As in
    the RL Zoo, a value ``"lin_<x>"`` is a linear schedule from ``x`` to 0 (:func:`linear_schedule`).
    An entry may hold a ``by_optimizer`` mapping from an ``optimizer=`` name to settings that override the
    others for that optimizer (``optimizer`` defaults to the agents' default, ``"adam"``; a class gets no
    override): a setting tuned for Adam is not imposed on the step-size rules.

    Example:
        >>> hyperparams("PPO", "CartPole-v1")["n_envs"]
        8
        >>> hyperparams("PPO", "Pendulum-v1")["n_envs"], hyperparams("PPO", "Pendulum-v1", "sls")["n_envs"]
        (4, 32)
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
