"""The examples in the agents' docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "rlopt.agents.common.buffer",
    "rlopt.agents.common.policies",
    "rlopt.agents.hyperparams",
    "rlopt.agents.ppo.ppo",
    "rlopt.agents.common.policy_loss",
    "rlopt.agents.a2c.a2c",
    "rlopt.agents.reinforce.reinforce",
    "rlopt.agents.sb3",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
