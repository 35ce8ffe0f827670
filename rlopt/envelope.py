"""Envelopes: non-increasing upper bounds ``u_k`` on the step size (the BiSLS/BiSPS family).

Fan, Choné-Ducasse, Schmidt and Thrampoulidis ("BiSLS/SPS: Auto-tune Step Sizes for Stable Bi-level
Optimization", NeurIPS 2023, arXiv 2305.18666) show that SPS and SLS variants whose step is capped by a
deterministic non-increasing envelope keep the guarantees of SGD with that decreasing step, while early on the
step stays adaptive. Passing ``envelope=InvSqrt(lr_b)`` to :class:`rlopt.SLS`, :class:`rlopt.SPS` or
:class:`rlopt.PoNoS` gives:

* **SPSB** (``SPS(..., envelope=...)``): ``eta_k = min((f_k - f*) / (c ||g_k||^2), u_k)``.
* **SLSB** (``SLS(..., envelope=...)``): Armijo backtracking whose first trial is
  ``min(reset(eta_{k-1}), u_k)``. The *reset* of the bound is SLS's ``reset`` rule: with the default
  ``"increase"`` the first trial is the previous accepted step grown by ``gamma^(1/n_batches_per_epoch)``, so
  the start of the search can grow back up to the envelope instead of only decaying, and a search rarely
  starts far above the step it will accept (fewer backtracks than always starting at ``u_k``, which is
  ``reset="init"`` with ``lr >= lr_b``). Every accepted step satisfies ``eta_k <= u_k``.

The paper body was not available to us; the two rules above are our reading of its abstract and of reviews,
written so that the envelope property ``eta_k <= u_k`` (the one the convergence argument needs) holds exactly.

``k`` counts the optimizer's non-skipped steps from 0. Any callable ``k -> float`` with non-increasing,
positive values can be used as an envelope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlopt.validation import check_at_least, check_positive

__all__ = ["Constant", "Envelope", "InvSqrt", "InvTime"]


class Envelope:
    """Base class: ``envelope(k)`` is the upper bound on the step size at step ``k`` (k = 0, 1, ...)."""

    def __call__(self, k: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class InvSqrt(Envelope):
    """``u_k = lr_b / sqrt(k / warmup + 1)``: the envelope of the BiSLS/BiSPS analysis (``warmup = 1``).

    ``warmup`` stretches the time scale: the bound halves after ``3 * warmup`` steps.

    Example:
        >>> from rlopt.envelope import InvSqrt
        >>> env = InvSqrt(1.0)
        >>> [round(env(k), 4) for k in range(4)]
        [1.0, 0.7071, 0.5774, 0.5]
    """

    lr_b: float = 1.0
    warmup: float = 1.0

    def __post_init__(self) -> None:
        check_positive("lr_b", self.lr_b)
        check_positive("warmup", self.warmup)

    def __call__(self, k: int) -> float:
        return self.lr_b / math.sqrt(k / self.warmup + 1.0)


@dataclass(frozen=True)
class InvTime(Envelope):
    """``u_k = lr_b / (k / warmup + 1)``: a faster-decaying envelope (strongly convex rates)."""

    lr_b: float = 1.0
    warmup: float = 1.0

    def __post_init__(self) -> None:
        check_positive("lr_b", self.lr_b)
        check_positive("warmup", self.warmup)

    def __call__(self, k: int) -> float:
        return self.lr_b / (k / self.warmup + 1.0)


@dataclass(frozen=True)
class Constant(Envelope):
    """``u_k = lr_b``: a plain cap (SPS_max's ``max_lr``), for comparisons."""

    lr_b: float = 1.0

    def __post_init__(self) -> None:
        check_at_least("lr_b", self.lr_b, 0.0)

    def __call__(self, k: int) -> float:
        return self.lr_b
