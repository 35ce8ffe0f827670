"""The interface every step-size rule implements: a small object over an explicit, serialisable state.

A rule never touches tensors. Given the scalars of the current step (:class:`StepInfo`) it proposes a step
size and, for line searches, the reference value and constant of the sufficient-decrease test
(:class:`Proposal`); after the optimizer has searched, :meth:`StepSizeRule.update` folds the outcome
(:class:`SearchResult`) into the state. The state is a flat ``dict`` of Python numbers, saved in the
optimizer's ``state_dict``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RuleState = dict[str, Any]

__all__ = ["Proposal", "RuleState", "SearchResult", "StepInfo", "StepSizeRule", "armijo_backtracking"]


@dataclass(frozen=True)
class StepInfo:
    """Scalars of one step, all computable from all-reducible quantities.

    Attributes:
        loss: minibatch loss ``f_k(w_k)``.
        grad_sq: ``||g_k||^2``.
        slope: ``g_k^T d_k`` (equal to ``grad_sq`` for the SGD direction).
        step: number of previous non-skipped steps ``k``.
        value: an extra objective estimate supplied by the caller (the return estimate for PolyakPG).
    """

    loss: float
    grad_sq: float
    slope: float
    step: int
    value: float | None = None


@dataclass(frozen=True)
class Proposal:
    """A rule's proposal for one step.

    ``reference is None`` means "take ``step_size`` without a search". Otherwise the optimizer backtracks
    ``eta <- shrink * eta`` from ``step_size`` until ``f(w - eta d) <= reference - c * eta * slope``.
    """

    step_size: float
    reference: float | None = None
    c: float = 0.0
    shrink: float = 1.0


@dataclass(frozen=True)
class SearchResult:
    """Outcome of a step: the step size taken (0 for none), backtracks made, and whether a trial passed."""

    step_size: float
    backtracks: int
    accepted: bool
    searched: bool


class StepSizeRule(ABC):
    """A step-size rule. Hyperparameters come in ``hp`` (the optimizer's first param group)."""

    #: whether the rule re-evaluates the loss at trial points (a line search)
    needs_closure: bool = False

    @abstractmethod
    def init_state(self, hp: dict[str, Any]) -> RuleState:
        """The state before the first step."""

    @abstractmethod
    def propose(self, hp: dict[str, Any], state: RuleState, info: StepInfo) -> Proposal:
        """Propose the step of this iteration; must not modify ``state``."""

    def update(self, hp: dict[str, Any], state: RuleState, info: StepInfo, result: SearchResult) -> None:
        """Fold the outcome of the step into ``state`` (default: nothing)."""
        return None


def armijo_backtracking(
    phi: Callable[[float], float],
    eta0: float,
    reference: float,
    decrease: float,
    shrink: float,
    max_backtracks: int,
    feasible: Callable[[], bool] | None = None,
    hopeless: Callable[[], bool] | None = None,
    stalled: Callable[[float, float], bool] | None = None,
) -> tuple[SearchResult, float]:
    """The one backtracking loop: the first ``eta = eta0 * shrink^j`` (``j <= max_backtracks``) with a finite
    ``phi(eta) <= reference - eta * decrease`` and, when ``feasible`` is given, ``feasible()`` true at that trial
    point (evaluated right after ``phi(eta)``, only when the decrease test passed: TRPO's backtracking on the
    surrogate with its KL constraint). ``hopeless`` is asked after a trial that passed the decrease test and
    failed ``feasible``; True ends the search there with no trial accepted (the line searches' trust region:
    the iterate itself is outside it, so every shorter trial is too, to first order). ``stalled(eta, trial)``
    is asked after a trial that failed the decrease test; True ends the search the same way (the optimizers:
    the objective's floating-point resolution can no longer show the decrease a shorter trial asks for).

    ``phi(eta)`` is the objective at the trial step ``eta`` (the optimizers move their parameters there and
    evaluate the closure; the bilevel upper rules evaluate a line model); ``decrease`` is ``c * g^T d``.
    Returns the :class:`SearchResult` (step 0 and ``accepted=False`` when every trial fails; ``backtracks``
    counts the shrinks) and the accepted trial's value (NaN when none was accepted).

    Example:
        >>> result, value = armijo_backtracking(lambda eta: (1.0 - 2.0 * eta) ** 2, 1.0, 1.0, 0.1 * 4.0, 0.5, 10)
        >>> result.step_size, result.backtracks, value
        (0.5, 1, 0.0)
    """
    eta, j = eta0, 0
    for j in range(max_backtracks + 1):
        trial = phi(eta)
        if math.isfinite(trial) and trial <= reference - eta * decrease:
            if feasible is None or feasible():
                return SearchResult(eta, j, accepted=True, searched=True), trial
            if hopeless is not None and hopeless():
                break
        elif stalled is not None and stalled(eta, trial):
            break
        if j < max_backtracks:
            eta *= shrink
    return SearchResult(0.0, j, accepted=False, searched=True), math.nan
