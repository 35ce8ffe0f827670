"""PoNoS: nonmonotone Armijo search with a Polyak initial step and the resetting technique.

Galli, Rauhut, Schmidt, "Don't be so Monotone: Relaxing Stochastic Line Search in Over-Parameterized
Models", NeurIPS 2023 (arXiv 2306.12747). At step k:

    eta_P   = (f_k(w_k) - f*) / (c_p * g_k^T d_k)                         Polyak initial step
    eta_0   = clip(eta_P * delta^{l_k}, min_lr, max_lr)                     resetting technique
    Q_{k+1} = xi * Q_k + 1,   C_{k+1} = (xi * Q_k * C_k + f_k(w_k)) / Q_{k+1}   Zhang-Hager average
    accept the first eta = eta_0 delta^j with
        f_k(w_k - eta d_k) <= max(C_{k+1}, f_k(w_k)) - c * eta * g_k^T d_k
    l_{k+1} = max(l_k + j - 1, 0)

With ``xi = 1`` C is the running mean of all minibatch losses seen. ``f*`` enters the Polyak numerator (the
reference code stores but ignores it); a numerator ``<= 0`` gives the initial step ``min_lr``. A search with
no accepted trial keeps ``l_k`` (otherwise the next hundred steps would start at ``min_lr``).
"""

from __future__ import annotations

from typing import Any

from rlopt.rules.base import Proposal, RuleState, SearchResult, StepInfo, StepSizeRule
from rlopt.rules.polyak import polyak_step


def zhang_hager(q: float, c_avg: float, loss: float, xi: float) -> tuple[float, float]:
    """One step of the Zhang-Hager recurrence: returns ``(Q_{k+1}, C_{k+1})``."""
    q_next = xi * q + 1.0
    return q_next, (xi * q * c_avg + loss) / q_next


class NonmonotoneRule(StepSizeRule):
    """PoNoS. State: ``Q``, ``C`` (Zhang-Hager) and ``l`` (the resetting counter)."""

    needs_closure = True

    def init_state(self, hp: dict[str, Any]) -> RuleState:
        return {"Q": 0.0, "C": 0.0, "l": 0}

    def propose(self, hp: dict[str, Any], state: RuleState, info: StepInfo) -> Proposal:
        delta = float(hp["delta"])
        eta_p = polyak_step(info.loss - float(hp["f_star"]), float(hp["c_p"]), info.slope)
        eta0 = min(max(eta_p * delta ** state["l"], float(hp["min_lr"])), float(hp["max_lr"]))
        _, c_next = zhang_hager(state["Q"], state["C"], info.loss, float(hp["xi"]))
        return Proposal(eta0, reference=max(c_next, info.loss), c=float(hp["c"]), shrink=delta)

    def update(self, hp: dict[str, Any], state: RuleState, info: StepInfo, result: SearchResult) -> None:
        state["Q"], state["C"] = zhang_hager(state["Q"], state["C"], info.loss, float(hp["xi"]))
        if result.accepted:
            state["l"] = max(state["l"] + result.backtracks - 1, 0)
