"""The runnable examples in the docstrings of the public classes and functions run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["rlopt.envs.core", "rlopt.envs.classic", "rlopt.envs.registry", "rlopt.envs.checker", "rlopt.envs.sb3",
           "rlopt.envs.single"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
