"""Bilevel problems: a common interface (:class:`BilevelProblem`) and standard tasks.

- :class:`Ridge`: ridge regularization on diabetes data, with the closed-form hypergradient.
- :class:`DataHyperCleaning`: per-sample weights on corrupted labels (digits, or local MNIST files).
- :class:`RegularizationHPO`: per-feature L2 for logistic regression on breast-cancer data.
- :class:`HyperRepresentation`: the upper level learns a feature network, the lower level a linear head.

The RL meta-gradient problem (Xu et al. 2018) is not provided yet: it needs the agents and environments
packages.
"""

from bilevel.problems.base import BilevelProblem
from bilevel.problems.classification import DataHyperCleaning, HyperRepresentation, RegularizationHPO
from bilevel.problems.ridge import Ridge

PROBLEMS: dict[str, type[BilevelProblem]] = {
    "ridge": Ridge,
    "hypercleaning": DataHyperCleaning,
    "regularization": RegularizationHPO,
    "representation": HyperRepresentation,
}
"""Name -> problem class (the names used on the command line)."""

__all__ = ["PROBLEMS", "BilevelProblem", "DataHyperCleaning", "HyperRepresentation", "RegularizationHPO", "Ridge"]
