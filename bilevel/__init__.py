"""Hypergradients and stochastic bilevel solvers with automatic step sizes on both levels.

Public contract: :func:`hypergradient` (methods ``"itd"``, ``"higher"``, ``"cg"``, ``"neumann"``,
``"exact"``), the linear solvers in :mod:`bilevel.linear_solvers`, and the problems in
:mod:`bilevel.problems`.
"""

from bilevel.hypergradients import (
    HYPERGRADIENT_METHODS,
    CGConfig,
    ExactConfig,
    HigherConfig,
    ITDConfig,
    NeumannConfig,
    NonFiniteError,
    hypergradient,
    register_hypergradient,
)
from bilevel.solver import ALGORITHMS, BilevelHistory, BilevelSolver

__all__ = [
    "ALGORITHMS",
    "HYPERGRADIENT_METHODS",
    "BilevelHistory",
    "BilevelSolver",
    "CGConfig",
    "ExactConfig",
    "HigherConfig",
    "ITDConfig",
    "NeumannConfig",
    "NonFiniteError",
    "hypergradient",
    "register_hypergradient",
]
