"""Stochastic Armijo backtracking line search (SLS).

Vaswani, Mishkin, Laradji, Schmidt, Gidel, Lacoste-Julien, "Painless Stochastic Gradient: Interpolation,
Line-Search, and Convergence Rates", NeurIPS 2019 (arXiv 1905.09997); the preconditioned form of Vaswani,
Kunstner, Laradji, Meng, Schmidt, Lacoste-Julien (arXiv 2006.06835).

At step k, on one minibatch ``f_k``, with direction ``d_k`` (``g_k`` or ``P_k^{-1} g_k``), the first trial
is ``eta_0 = reset(eta_{k-1})`` (capped by ``max_lr``), and ``eta <- beta * eta`` until

    f_k(w_k - eta d_k) <= f_k(w_k) - c * eta * g_k^T d_k.

``reset``: ``"keep"`` gives ``eta_{k-1}``; ``"increase"`` gives ``eta_{k-1} * gamma^(1/n_batches_per_epoch)``
(the step can grow by at most ``gamma`` per epoch); ``"init"`` gives ``lr``. As in the reference code the
reset is applied on the first step too (``eta_{-1} = lr``).
"""

from __future__ import annotations

from typing import Any

from rlopt.rules.base import Proposal, RuleState, SearchResult, StepInfo, StepSizeRule

RESETS = ("keep", "increase", "init")


def reset_step_size(hp: dict[str, Any], previous: float) -> float:
    """The first trial of a search from the previous accepted step size."""
    reset = hp["reset"]
    if reset == "keep":
        eta = previous
    elif reset == "increase":
        eta = previous * float(hp["gamma"]) ** (1.0 / int(hp["n_batches_per_epoch"]))
    else:
        eta = float(hp["lr"])
    max_lr = hp.get("max_lr")
    return eta if max_lr is None else min(eta, float(max_lr))


class ArmijoRule(StepSizeRule):
    """Monotone Armijo backtracking with a reset of the first trial. State: the last accepted step size.

    A search with no accepted trial leaves the state unchanged, so one bad minibatch does not shrink the
    steps that follow.
    """

    needs_closure = True

    def init_state(self, hp: dict[str, Any]) -> RuleState:
        return {"step_size": float(hp["lr"])}

    def propose(self, hp: dict[str, Any], state: RuleState, info: StepInfo) -> Proposal:
        return Proposal(
            step_size=reset_step_size(hp, state["step_size"]),
            reference=info.loss,
            c=float(hp["c"]),
            shrink=float(hp["beta"]),
        )

    def update(self, hp: dict[str, Any], state: RuleState, info: StepInfo, result: SearchResult) -> None:
        if result.accepted:
            state["step_size"] = result.step_size
