"""rlopt: tuning-free step sizes for PyTorch.

Step-size rules (stochastic Armijo line search, stochastic Polyak step sizes, nonmonotone line search with a
Polyak initial step, envelope-bounded variants, the Polyak step for policy gradient) as ``torch.optim``
optimizers. This package depends on torch alone.

The closure protocol shared by all optimizers is documented in :mod:`rlopt.closure`.
"""

from rlopt import envelope
from rlopt.factory import (
    OPTIMIZERS,
    OptimizerSpec,
    StepStats,
    build_optimizer,
    closure_step,
    optimizer_spec,
    register_optimizer,
    step_stats,
)
from rlopt.optimizer import StepSizeOptimizer
from rlopt.polyak_pg import PolyakPG
from rlopt.ponos import PoNoS
from rlopt.sls import SLS
from rlopt.sps import SPS

__version__ = "0.1.0"

__all__ = [
    "OPTIMIZERS",
    "SLS",
    "SPS",
    "OptimizerSpec",
    "PoNoS",
    "PolyakPG",
    "StepSizeOptimizer",
    "StepStats",
    "__version__",
    "build_optimizer",
    "closure_step",
    "envelope",
    "optimizer_spec",
    "register_optimizer",
    "step_stats",
]
