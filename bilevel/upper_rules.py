"""Step-size rules for the upper level of BiSLS/BiSPS: a search along a hypergradient estimate ``d``.

The upper objective ``F(x) = f(x, y*(x))`` cannot be evaluated exactly at trial points (that would need
``y*`` at each), so the rules work on a *line model* ``φ(α) ≈ F(x - α d)`` given by the caller (see
:class:`rlopt.bilevel.BilevelSolver` for the models used: ``y`` held fixed, or ``y`` moved along its first-order
response). Both rules bound the step by a non-increasing envelope ``u_k`` (Fan et al., NeurIPS 2023).

- :class:`ArmijoSearch` (upper level of BiSLS): backtrack ``α ← β α`` from
  ``α_0 = min(u_k, α_{k-1} γ^{1/n})`` until

      φ(α) <= φ(0) - c α ‖d‖² + δ,     δ = safeguard · |φ(0)|,

  the Armijo condition along ``-d`` with a slack ``δ`` for the error of ``d`` and of the lower solution.
  ``α_0`` is the bound's reset: the previous accepted step grown by ``γ^{1/n}``, so the start of the search
  can grow back towards the envelope instead of only decaying. If ``max_backtracks`` trials fail, no step is
  taken (``α = 0``, counted in ``failures``) and ``α_{k-1}`` is kept.
- :class:`PolyakStep` (upper level of BiSPS): ``α_0 = min((φ(0) - f*) / (c ‖d‖²), u_k)`` (SPS_max with the
  envelope as cap), by default accepted only if it meets the same Armijo test with slack, else backtracked
  (``search=False``: ``α_0`` without trial evaluations; see the class for why the test is the default).

With ``precondition="adam"`` (the Adam versions) both rules move along Adam's direction ``p`` built from the
successive ``d`` (:class:`AdamDirection`) and use ``d·p`` in place of ``‖d‖²``.

The paper body of Fan et al. could not be read; the slack's form (relative to ``|φ(0)|``), its default, the
line models and the Armijo test on the Polyak step are our choices, documented here and in the solver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlopt.bilevel import _tree
from rlopt.bilevel._tree import Tree
from rlopt.envelope import Envelope, InvSqrt
from rlopt.rules import (
    ArmijoRule,
    PolyakRule,
    PolyakSearchRule,
    RuleState,
    SearchResult,
    StepInfo,
    StepSizeRule,
    armijo_backtracking,
)
from rlopt.validation import check_at_least, check_choice, check_finite, check_int, check_open, check_positive

PRECONDITIONERS = (None, "adam")


class AdamDirection:
    """Adam's preconditioned direction ``p = m̂ / (sqrt(v̂) + eps)`` from successive hypergradients ``d``.

    The moments are updated once per outer step (before the search) and frozen during its trials, as in the
    Adam versions of SLS (Vaswani et al., arXiv 2006.06835). ``d·p > 0`` always holds for the first step;
    later a momentum direction can fail to be a descent direction, and the search then takes no step.
    """

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m: Tree | None = None
        self.v: Tree | None = None
        self.t = 0

    def __call__(self, d: Tree) -> Tree:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        if self.m is None or self.v is None:
            self.m, self.v = _tree.zeros_like(d), _tree.zeros_like(d)
        self.m = _tree.tree_map(lambda m, g: b1 * m + (1 - b1) * g, self.m, d)
        self.v = _tree.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, self.v, d)
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        return _tree.tree_map(lambda m, v: (m / c1) / (torch.sqrt(v / c2) + self.eps), self.m, self.v)


@dataclass
class UpperStep:
    """What an upper rule decided at one outer step.

    Attributes:
        step_size: accepted ``α`` (0 when the search failed or the step was skipped).
        backtracks: trials rejected.
        trial_loss: ``φ(α)`` at the accepted step (``φ(0)`` for Polyak; nan when not evaluated).
        reference_loss: ``φ(0)``.
        slope: ``d·p`` for the search direction ``p`` (``‖d‖²`` without preconditioning).
        envelope: ``u_k``.
        slack: the allowance ``δ`` used in the test (0 for Polyak).
        accepted: whether a step was taken.
        searched: whether trial points were evaluated (a search ran).
    """

    step_size: float
    backtracks: int
    trial_loss: float
    reference_loss: float
    slope: float
    envelope: float
    slack: float
    accepted: bool
    searched: bool = False


def _identity(d: Tree) -> Tree:
    return d


def _check_search_options(safeguard: float, max_backtracks: int, envelope: object) -> None:
    check_at_least("safeguard", safeguard, 0.0)
    check_int("max_backtracks", max_backtracks, 0)
    if envelope is not None and not callable(envelope):
        raise ValueError(f"Invalid envelope: {envelope!r}, expected a callable k -> float")


def _search(
    rule: StepSizeRule,
    hp: dict[str, Any],
    state: RuleState,
    phi: Callable[[float], float],
    reference: float,
    slope: float,
    bound: float,
    step: int,
    slack: float,
    max_backtracks: int,
) -> UpperStep:
    """One upper step of an rlopt rule on the line model ``phi``: the rule's proposal capped by the envelope
    ``bound``; a search (the rule's test with the slack added to its reference) runs rlopt's backtracking loop.
    """
    info = StepInfo(loss=reference, grad_sq=slope, slope=slope, step=step)
    proposal = rule.propose(hp, state, info)
    alpha = min(proposal.step_size, bound)
    if not (slope > 0 and alpha > 0):
        result, trial = SearchResult(0.0, 0, accepted=False, searched=False), reference
    elif proposal.reference is None:
        result, trial = SearchResult(alpha, 0, accepted=True, searched=False), float("nan")
    else:
        result, trial = armijo_backtracking(phi, alpha, proposal.reference + slack, proposal.c * slope,
                                            proposal.shrink, max_backtracks)
        if not result.accepted:
            trial = reference
    rule.update(hp, state, info, result)
    used_slack = slack if result.searched else 0.0
    return UpperStep(result.step_size, result.backtracks, trial, reference, slope, bound, used_slack,
                     result.accepted, result.searched)


class ArmijoSearch:
    """Upper-level Armijo search under an envelope with the bound's reset (BiSLS; see module docstring).

    Args:
        lr_b: envelope scale, ``u_k = lr_b / sqrt(k + 1)`` (ignored when ``envelope`` is given); also the
            first trial ``α_{-1}``.
        c: sufficient-decrease constant, ``0 < c < 1``.
        beta: backtracking factor, ``0 < beta < 1``.
        gamma: growth of the reset per ``n`` steps, ``>= 1``.
        n: steps over which the start may grow by ``gamma``.
        safeguard: slack relative to ``|φ(0)|`` (``>= 0``).
        max_backtracks: trials before giving up.
        envelope: any non-increasing ``k -> u_k``.
        precondition: ``None`` (search along ``d``) or ``"adam"`` (along Adam's ``p``; BiSLS-Adam).

    Example:
        >>> search = ArmijoSearch(lr_b=4.0)
        >>> # F(x) = x² at x = 1: d = 2, φ(α) = F(1 - 2α), ‖d‖² = 4
        >>> step = search.step(lambda a: (1.0 - 2.0 * a) ** 2, slope=4.0)
        >>> 0 < step.step_size <= 4.0 and step.trial_loss <= 1.0 - 0.1 * step.step_size * 4.0 + step.slack
        True
    """

    def __init__(
        self,
        lr_b: float = 1e3,
        *,
        c: float = 0.1,
        beta: float = 0.5,
        gamma: float = 2.0,
        n: int = 10,
        safeguard: float = 1e-4,
        max_backtracks: int = 60,
        envelope: Envelope | Callable[[int], float] | None = None,
        precondition: str | None = None,
    ) -> None:
        check_positive("lr_b", lr_b)
        check_choice("precondition", precondition, PRECONDITIONERS)
        check_open("c", c, 0.0, 1.0)
        check_open("beta", beta, 0.0, 1.0)
        check_at_least("gamma", gamma, 1.0)
        check_int("n", n, 1)
        _check_search_options(safeguard, max_backtracks, envelope)
        self.envelope = envelope if envelope is not None else InvSqrt(lr_b)
        self.c, self.beta, self.gamma, self.n = float(c), float(beta), float(gamma), n
        self.safeguard, self.max_backtracks = float(safeguard), max_backtracks
        self.direction: Callable[[Tree], Tree] = AdamDirection() if precondition == "adam" else _identity
        # rlopt's SLS rule: the "increase" reset from the last accepted step, which starts at lr_b
        self.rule = ArmijoRule()
        self.hp: dict[str, Any] = {"lr": float(lr_b), "c": self.c, "beta": self.beta, "reset": "increase",
                                   "gamma": self.gamma, "n_batches_per_epoch": n, "max_lr": None}
        self.state = self.rule.init_state(self.hp)
        self.k = 0
        self.failures = 0

    @property
    def previous(self) -> float:
        """The last accepted step size (``lr_b`` before the first)."""
        return float(self.state["step_size"])

    @property
    def evaluates_trials(self) -> bool:
        """Always: the search evaluates ``phi`` at its trial steps."""
        return True

    def step(self, phi: Callable[[float], float], slope: float, phi0: float | None = None) -> UpperStep:
        """Search along ``-d``: ``phi(α)`` is the line model, ``slope = ‖d‖²``, ``phi0 = phi(0)`` if known."""
        reference = phi(0.0) if phi0 is None else phi0
        bound = float(self.envelope(self.k))
        result = _search(self.rule, self.hp, self.state, phi, reference, slope, bound, self.k,
                         self.safeguard * abs(reference), self.max_backtracks)
        self.k += 1
        if result.searched and not result.accepted:
            self.failures += 1
        return result


class PolyakStep:
    """Upper-level Polyak step under an envelope (BiSPS), accepted by the Armijo test of :class:`ArmijoSearch`.

    The first trial is the paper's step ``α_0 = min((φ(0) - f*) / (c ‖d‖²), u_k)`` (SPS_max with the envelope
    as cap). With ``search=True`` (default) it is taken only if

        φ(α) <= φ(0) - c_search α ‖d‖² + δ,     δ = safeguard · |φ(0)|,

    the Armijo test with the safeguard slack that BiSLS uses on the same line model; otherwise
    ``α ← β α`` until it holds (``max_backtracks`` failures: no step, counted in ``failures``). With
    ``search=False`` the step is ``α_0`` itself and no trial is evaluated (the rule of Fan et al. as we
    read it).

    Why the test is the default (a departure from that reading): on the upper level ``φ(0) - f*`` is
    large and ``‖d‖`` small, so ``α_0`` is almost always the envelope itself; the closed form then cannot see
    that a step of that size overshoots, e.g. when the hypergradient is computed at a lower solution that
    is still far off in the first outer steps. On data hyper-cleaning such first steps push many
    ``σ(λ_i)`` into saturation, where their hypergradient vanishes and they stay. The test costs the
    linear response of the line model (one mixed product and ``linear_steps`` Hessian-vector products in
    :class:`rlopt.bilevel.BilevelSolver`) and one upper forward per trial; where ``α_0`` passes, the step is the
    paper's. Every trial is ``<= u_k`` and ``>= 0``, as without the test.

    Args:
        lr_b: envelope scale, ``u_k = lr_b / sqrt(k + 1)`` (ignored when ``envelope`` is given).
        c: Polyak constant (0.5 in SPS_max).
        f_star: lower bound of the upper loss (0 for non-negative losses).
        envelope: any non-increasing ``k -> u_k``.
        precondition: ``None`` or ``"adam"`` (step along Adam's ``p`` with ``d·p`` in the denominator).
        search: check ``α_0`` with the Armijo test and backtrack (default), or take it as it is.
        c_search: sufficient-decrease constant of the test, ``0 < c_search < 1``.
        beta: backtracking factor, ``0 < beta < 1``.
        safeguard: slack relative to ``|φ(0)|`` (``>= 0``).
        max_backtracks: trials before giving up.

    Example:
        >>> PolyakStep(lr_b=10.0, c=0.5, search=False).step(lambda a: 0.0, slope=4.0, phi0=1.0).step_size
        0.5
        >>> # F(x) = x² at x = 1: d = 2, α_0 = 1 / (0.5 · 4) = 0.5 lands on the minimiser and passes the test
        >>> PolyakStep(lr_b=10.0).step(lambda a: (1.0 - 2.0 * a) ** 2, slope=4.0).step_size
        0.5
    """

    def __init__(
        self,
        lr_b: float = 1e3,
        *,
        c: float = 0.5,
        f_star: float = 0.0,
        envelope: Envelope | Callable[[int], float] | None = None,
        precondition: str | None = None,
        search: bool = True,
        c_search: float = 0.1,
        beta: float = 0.5,
        safeguard: float = 1e-4,
        max_backtracks: int = 60,
    ) -> None:
        check_positive("lr_b", lr_b)
        check_choice("precondition", precondition, PRECONDITIONERS)
        check_positive("c", c)
        check_finite("f_star", f_star)
        if not isinstance(search, bool):
            raise TypeError(f"Invalid search: {search!r}, expected a bool")
        check_open("c_search", c_search, 0.0, 1.0)
        check_open("beta", beta, 0.0, 1.0)
        _check_search_options(safeguard, max_backtracks, envelope)
        self.envelope = envelope if envelope is not None else InvSqrt(lr_b)
        self.c, self.f_star = float(c), float(f_star)
        self.search, self.c_search, self.beta = search, float(c_search), float(beta)
        self.safeguard, self.max_backtracks = float(safeguard), max_backtracks
        self.direction: Callable[[Tree], Tree] = AdamDirection() if precondition == "adam" else _identity
        # rlopt's SPS_max rule (the envelope is its cap), as the first trial of a search when search=True
        self.rule: StepSizeRule = PolyakSearchRule() if search else PolyakRule()
        self.hp: dict[str, Any] = {"c": self.c, "f_star": self.f_star, "mode": "max", "max_lr": None,
                                   "search_c": self.c_search, "beta": self.beta}
        self.state = self.rule.init_state(self.hp)
        self.k = 0
        self.failures = 0

    @property
    def evaluates_trials(self) -> bool:
        """Whether :meth:`step` calls ``phi`` at trial steps (then the caller must give a line model)."""
        return self.search

    def step(self, phi: Callable[[float], float], slope: float, phi0: float | None = None) -> UpperStep:
        """The capped Polyak step, checked by the Armijo test when ``search``; ``phi(0)`` is only evaluated
        when ``phi0`` is not given."""
        reference = phi(0.0) if phi0 is None else phi0
        bound = float(self.envelope(self.k))
        result = _search(self.rule, self.hp, self.state, phi, reference, slope, bound, self.k,
                         self.safeguard * abs(reference), self.max_backtracks)
        self.k += 1
        if result.searched and not result.accepted:
            self.failures += 1
        return result
