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
        if info.value is None:
            raise ValueError("PolyakPG needs the current return estimate: call step(..., value=J_hat)")
        best = max(state["best_value"], info.value)
        gap = return_target(hp, best) - info.value
        eta = polyak_step(gap, float(hp["c"]), info.slope)
        return Proposal(min(eta, float(hp["max_lr"])))

    def update(self, hp: dict[str, Any], state: RuleState, info: StepInfo, result: SearchResult) -> None:
        assert info.value is not None
        state["best_value"] = max(state["best_value"], info.value)
        state["target"] = return_target(hp, state["best_value"])
