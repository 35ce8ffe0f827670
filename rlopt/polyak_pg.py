"""``PolyakPG``: Polyak step size for policy-gradient ascent (after Li et al., arXiv 2404.07525)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from rlopt.directions import SGDDirection
from rlopt.optimizer import ParamsT, StepSizeOptimizer
from rlopt.rules.policy_polyak import PolicyPolyakRule, PolicyPolyakSearchRule
from rlopt.validation import check_at_least, check_finite, check_int, check_open, check_positive

__all__ = ["PolyakPG"]


class PolyakPG(StepSizeOptimizer):
    r"""Polyak step for maximising a return ``J`` whose estimate the caller supplies each step.

    The gradient is that of the loss being *minimised* (``-J`` surrogate, e.g. the REINFORCE/GPOMDP loss),
    and ``value`` is the current return estimate ``J_hat`` on the same trajectories (``value=None``: the loss
    is ``-J_hat`` itself, an estimate of minus the return at the current parameters):

        eta = min( max(J* - J_hat, 0) / (c * ||g||^2), max_lr ),

    with ``J* = j_star`` if known, else the running best return plus a margin (see
    :mod:`rlopt.rules.policy_polyak` for the estimator and why). ``stats["target"]`` reports the ``J*`` used.

    Args:
        params: policy parameters (one global step size).
        c: Polyak scale, ``> 0``.
        max_lr: cap on the step (guards near-deterministic policies with tiny gradients).
        j_star: the optimal return if known (e.g. 500 for CartPole-v1); None to estimate online.
        margin: relative margin of the online estimate, ``J* = best + margin * max(|best|, 1)``.
        momentum: heavy-ball coefficient applied after the step.
        search: take the capped Polyak step as the first trial of a monotone Armijo search on the loss,
            ``f(w - eta d) <= f(w) - search_c * eta * ||g||^2``, backtracking ``eta <- beta * eta`` on the same
            batch (needs a closure).
        search_c: sufficient-decrease constant of that test, ``0 < search_c < 1``.
        beta: backtracking factor, ``0 < beta < 1``.
        max_backtracks: trials rejected before the search gives up (then no step is taken).
        max_kl: a trust region (implies ``search``): with ``step(closure, kl=fn)`` a trial is accepted only if it
            also satisfies ``fn() <= max_kl`` (TRPO's backtracking, with the Polyak step as the first trial).
        process_group: the ranks that decide together: every decision uses the mean over them of the losses
            (and ``||g||^2``, ``g^T d``, ``value``), all-reduced in one collective per evaluation, so every rank
            takes the same step. ``"world"`` (default): torch.distributed's world group when one is initialized;
            None: decide alone. Gradients must be DDP's (averaged) or FSDP2's shards (``fully_shard`` with
            ``reshard_after_forward=True`` on the root, so that every trial point is gathered afresh).

    Example:
        >>> import torch, rlopt
        >>> theta = torch.nn.Parameter(torch.zeros(2))           # softmax bandit, arm rewards 1 and 0
        >>> opt = rlopt.PolyakPG([theta], j_star=1.0, max_lr=10.0)
        >>> for _ in range(20):
        ...     probs = theta.softmax(0)
        ...     ret = probs @ torch.tensor([1.0, 0.0])            # exact expected return
        ...     _ = opt.step(lambda: -(theta.softmax(0) @ torch.tensor([1.0, 0.0])), value=ret.item())
        >>> theta.softmax(0)[0].item() > 0.95
        True
    """

    def __init__(
        self,
        params: ParamsT,
        c: float = 0.5,
        max_lr: float = 1.0,
        j_star: float | None = None,
        margin: float = 0.1,
        *,
        momentum: float = 0.0,
        search: bool = False,
        search_c: float = 0.1,
        beta: float = 0.5,
        max_backtracks: int = 30,
        max_kl: float | None = None,
        process_group: Any = "world",
    ) -> None:
        if not isinstance(search, bool):
            raise TypeError(f"Invalid search: {search!r}, expected a bool")
        search = search or max_kl is not None
        defaults = dict(c=c, max_lr=max_lr, j_star=j_star, margin=margin, momentum=momentum, search_c=search_c,
                        beta=beta, max_backtracks=max_backtracks, max_kl=max_kl)
        self._validate_group(defaults)
        rule = PolicyPolyakSearchRule() if search else PolicyPolyakRule()
        super().__init__(params, defaults, rule, SGDDirection(), process_group)

    @classmethod
    def _validate_group(cls, group: dict[str, Any]) -> None:
        check_positive("c", group["c"])
        check_positive("max_lr", group["max_lr"])
        if group["j_star"] is not None:
            check_finite("j_star", group["j_star"])
        check_positive("margin", group["margin"])
        check_at_least("momentum", group["momentum"], 0.0)
        check_open("search_c", group["search_c"], 0.0, 1.0)
        check_open("beta", group["beta"], 0.0, 1.0)
        check_int("max_backtracks", group["max_backtracks"], 0)
        check_positive("max_kl", group["max_kl"], allow_none=True)
        if group["momentum"] >= 1.0:
            raise ValueError(f"Invalid momentum: {group['momentum']!r}, expected 0 <= momentum < 1")

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        *,
        loss: Tensor | float | None = None,
        value: float | None = None,
        kl: Callable[[], Tensor] | None = None,
    ) -> Tensor | None:
        """One step with ``value = J_hat``, the current return estimate.

        ``value=None`` takes the loss as ``-J_hat``: the closure (or ``loss``) must then return minus a return
        estimate at the current parameters, in the units of ``J*`` (as the agents' Polyak closures do).
        """
        out = super().step(closure, loss=loss, value=None if value is None else float(value), kl=kl)
        self.stats["target"] = self.rule_state["target"]
        return out
