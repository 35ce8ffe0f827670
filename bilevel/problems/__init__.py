"""Bilevel problems: a common interface (:class:`BilevelProblem`) and standard tasks.

- :class:`Ridge`: ridge regularization on diabetes data, with the closed-form hypergradient.
- :class:`DataHyperCleaning`: per-sample weights on corrupted labels (digits, or local MNIST files).
- :class:`RegularizationHPO`: per-feature L2 for logistic regression on breast-cancer data.
- :class:`HyperRepresentation`: the upper level learns a feature network, the lower level a linear head.
- :class:`MetaGradientRL`: tune an actor-critic's discount, GAE lambda or entropy weight online by the
  one-step look-ahead meta-gradient (Xu et al. 2018) on a tensor-batched env; its batches are rollouts
  collected with the current policy (solver algorithm ``"lookahead"``).
- :class:`DataParallelProblem`: a data-set problem split over torch.distributed ranks, with the losses (and all
  their derivatives) of the union.
"""

from rlopt.bilevel.problems.base import BilevelProblem
from rlopt.bilevel.problems.classification import DataHyperCleaning, HyperRepresentation, RegularizationHPO
from rlopt.bilevel.problems.distributed import DataParallelProblem
from rlopt.bilevel.problems.metagrad import MetaGradientRL, Rollout
from rlopt.bilevel.problems.ridge import Ridge

PROBLEMS: dict[str, type[BilevelProblem]] = {
    "ridge": Ridge,
    "hypercleaning": DataHyperCleaning,
    "regularization": RegularizationHPO,
    "representation": HyperRepresentation,
    "metagrad": MetaGradientRL,
}
"""Name -> problem class (the names used on the command line)."""

__all__ = [
    "PROBLEMS",
    "BilevelProblem",
    "DataHyperCleaning",
    "DataParallelProblem",
    "HyperRepresentation",
    "MetaGradientRL",
    "RegularizationHPO",
    "Ridge",
    "Rollout",
]
