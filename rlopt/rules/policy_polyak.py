"""Polyak step size for policy-gradient ascent with an online estimate of the optimal return.

After Li, Yuan, Fan, Schmidt, Horváth, Gower, Takáč, "Enhancing Policy Gradient with the Polyak Step-Size
Adaption" (arXiv 2404.07525). The policy maximises ``J``; the optimizer minimises a surrogate loss whose
gradient is ``-grad J_hat``. With ``J_hat_k`` the caller's return estimate (``value=``),

    eta_k = min( max(J*_k - J_hat_k, 0) / (c * ||grad J_hat_k||^2), max_lr ).

``J*`` is unknown in general. If ``j_star`` is given (e.g. 500 for CartPole-v1) it is used. Otherwise we use
the estimator **running best plus a margin**:

    B_k = max_{i <= k} J_hat_i,    J*_k = B_k + margin * max(|B_k|, 1).

It is an optimistic bound (at least every return seen so far), it is cheap, and it keeps the numerator
positive: at a new best return the step is ``margin * max(|B_k|, 1) / (c ||g||^2)``, a normalised-gradient
step, and below the best it grows with the gap. The paper instead trains two policies and uses the better
one's return as the worse one's target (a twin model); that needs two agents and is not expressible inside
one optimizer. The cap ``max_lr`` guards against the tiny gradients of near-deterministic policies.

``J_hat_k`` is the caller's ``value``; without one the loss itself is taken as ``-J_hat_k`` (a closure that
returns minus a return estimate at the iterate, in the units of ``J*``, such as an importance-weighted
surrogate around the rollout's policy: its value then follows the iterate through the steps of one update).
"""

from __future__ import annotations

from typing import Any

from rlopt.rules.base import Proposal, RuleState, SearchResult, StepInfo, StepSizeRule
from rlopt.rules.polyak import polyak_step


def return_target(hp: dict[str, Any], best: float) -> float:
    """``J*`` in use: ``j_star`` if given, else the running best plus the margin."""
    if hp.get("j_star") is not None:
        return float(hp["j_star"])
    return best + float(hp["margin"]) * max(abs(best), 1.0)


class PolicyPolyakRule(StepSizeRule):
    """Polyak step for ascent; state: the best return estimate seen so far."""

    def init_state(self, hp: dict[str, Any]) -> RuleState:
        return {"best_value": float("-inf"), "target": float("nan")}

    def propose(self, hp: dict[str, Any], state: RuleState, info: StepInfo) -> Proposal:
        j_hat = return_estimate(info)
        best = max(state["best_value"], j_hat)
        gap = return_target(hp, best) - j_hat
        eta = polyak_step(gap, float(hp["c"]), info.slope)
        return Proposal(min(eta, float(hp["max_lr"])))

    def update(self, hp: dict[str, Any], state: RuleState, info: StepInfo, result: SearchResult) -> None:
        state["best_value"] = max(state["best_value"], return_estimate(info))
        state["target"] = return_target(hp, state["best_value"])


def return_estimate(info: StepInfo) -> float:
    """``J_hat`` at the iterate: the caller's ``value``, or else minus the loss (a loss that *is* ``-J_hat``)."""
    return info.value if info.value is not None else -info.loss


class PolicyPolyakSearchRule(PolicyPolyakRule):
    """The capped Polyak step as the first trial of a monotone Armijo search on the loss
    (``hp["search_c"]``, ``hp["beta"]``); with ``max_kl`` a trial must also stay in the trust region."""

    needs_closure = True

    def propose(self, hp: dict[str, Any], state: RuleState, info: StepInfo) -> Proposal:
        first = super().propose(hp, state, info).step_size
        return Proposal(first, reference=info.loss, c=float(hp["search_c"]), shrink=float(hp["beta"]))
