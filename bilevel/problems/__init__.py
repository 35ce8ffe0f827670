"""Bilevel problems: a common interface (:class:`BilevelProblem`) and standard tasks.

- :class:`Ridge`: ridge regularization on diabetes data, with the closed-form hypergradient.

The RL meta-gradient problem (Xu et al. 2018) is not provided yet.
"""

from bilevel.problems.base import BilevelProblem
from bilevel.problems.ridge import Ridge

__all__ = ["BilevelProblem", "Ridge"]
