"""The examples in the agents' docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "agents.common.buffer",
    "agents.common.policies",
    "agents.hyperparams",
    "agents.ppo.ppo",
    "agents.a2c.a2c",
    "agents.reinforce.reinforce",
    "agents.sb3",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
