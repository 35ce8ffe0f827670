"""Hypergradients and stochastic bilevel solvers with automatic step sizes on both levels.

Public contract: :func:`hypergradient` (methods ``"itd"``, ``"higher"``, ``"cg"``, ``"neumann"``,
``"exact"``), :class:`BilevelSolver` (stocBiO, AmIGO, SOBA, a generic double loop; per level ``"sgd"``,
``"adam"``, ``"bisls"``, ``"bisps"`` or any rlopt optimizer), the linear solvers in
:mod:`rlopt.bilevel.linear_solvers` and the problems in :mod:`rlopt.bilevel.problems`.

BiSLS / BiSPS as implemented here (Fan, Choné-Ducasse, Schmidt & Thrampoulidis, "BiSLS/SPS: Auto-tune Step
Sizes for Stable Bi-level Optimization", NeurIPS 2023). The paper body could not be read when this was
written; what follows is built from its abstract and public reviews, and the places where we had to choose
are marked (*choice*).

- Lower level: ``rlopt.SLS`` (BiSLS) or ``rlopt.SPS`` (BiSPS) with ``envelope=rlopt.envelope.InvSqrt(lr_b)``:
  every lower step satisfies ``η_k <= lr_b / sqrt(k + 1)``, ``k`` counting lower steps over the whole run
  (*choice*: not reset at each outer step); SLS additionally satisfies its stochastic Armijo condition and
  starts each search from the previous step grown by ``γ^(1/n)`` (the bound's reset).
- Upper level, BiSLS: Armijo backtracking along the hypergradient estimate ``d`` on a line model
  ``φ(α) ≈ F(x - α d)``, accepting ``φ(α) <= φ(0) - c α ‖d‖² + δ`` with a safeguard slack
  ``δ = safeguard · |φ(0)|`` (*choice* of the form and of the default 1e-4), starting at
  ``min(u_k, α_{k-1} γ^{1/n})`` with ``u_k = lr_b / sqrt(k + 1)`` (the bound's reset, so the start can grow
  back instead of only decaying); a failed search takes no step and is counted.
- The line model (*choice*, a departure from "``y`` held fixed"): ``φ(α) = f(x - α d, y + α r)`` with
  ``r = [∇²_yy g]⁻¹ ∇²_yx g d``, the first-order response of ``y*`` along the step. With ``y`` held fixed
  (``response="fixed"``) the test is meaningless whenever ``f`` does not depend on ``x`` directly, as in
  hyper-cleaning and regularization tuning (then ``φ`` is constant).
- Upper level, BiSPS: the capped Polyak step ``α_0 = min((φ(0) - f*) / (c ‖d‖²), u_k)`` with ``f* = 0``; on
  non-interpolating upper losses (validation losses) this is usually the envelope ``u_k`` itself. By default
  (*choice*, a departure from the evaluation-free rule) ``α_0`` is the first trial of the same Armijo test
  with slack as BiSLS's and is halved until it passes; the lower ``rlopt.SPS`` does the same on its level
  (``search=True``). Without the test, BiSPS is SGD on the envelope schedules and its large first steps go
  unchecked: on hyper-cleaning at p = 0.7 they saturated 8.5 % of the weights ``σ(λ_i)`` for good and the
  test accuracy stayed 3.3 points below the best tuned grid point (``benchmarks/notes/RESULTS.md``).
  ``upper_options={"search": False}`` / ``lower_options={"search": False}`` give the evaluation-free rules.
- Defaults (*choice*): upper ``lr_b = 1e3``, ``c = 0.1``, ``β = 0.5``, ``γ = 2``, ``n = 10``; lower
  ``lr_b = 10`` with rlopt's SLS/SPS defaults. Adam versions ``"bisls-adam"``/``"bisps-adam"``: both levels
  search along Adam's preconditioned direction (``lr_b`` 0.3 upper, 0.1 lower: Adam's steps are per coordinate).
"""

from rlopt.bilevel.hypergradients import (
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
from rlopt.bilevel.solver import ALGORITHMS, BilevelHistory, BilevelSolver

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
