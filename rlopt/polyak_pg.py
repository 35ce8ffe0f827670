"""``PolyakPG``: Polyak step size for policy-gradient ascent (after Li et al., arXiv 2404.07525)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from rlopt.directions import SGDDirection
from rlopt.optimizer import ParamsT, StepSizeOptimizer
from rlopt.rules.policy_polyak import PolicyPolyakRule
from rlopt.validation import check_at_least, check_finite, check_positive

__all__ = ["PolyakPG"]


class PolyakPG(StepSizeOptimizer):
    r"""Polyak step for maximising a return ``J`` whose estimate the caller supplies each step.

    The gradient is that of the loss being *minimised* (``-J`` surrogate, e.g. the REINFORCE/GPOMDP loss),
    and ``value`` is the current return estimate ``J_hat`` on the same trajectories:

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
    ) -> None:
        defaults = dict(c=c, max_lr=max_lr, j_star=j_star, margin=margin, momentum=momentum)
        self._validate_group(defaults)
        super().__init__(params, defaults, PolicyPolyakRule(), SGDDirection())

    @classmethod
    def _validate_group(cls, group: dict[str, Any]) -> None:
        check_positive("c", group["c"])
        check_positive("max_lr", group["max_lr"])
        if group["j_star"] is not None:
            check_finite("j_star", group["j_star"])
        check_positive("margin", group["margin"])
        check_at_least("momentum", group["momentum"], 0.0)
        if group["momentum"] >= 1.0:
            raise ValueError(f"Invalid momentum: {group['momentum']!r}, expected 0 <= momentum < 1")

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        *,
        loss: Tensor | float | None = None,
        value: float | None = None,
    ) -> Tensor | None:
        """One step; ``value`` (the current return estimate ``J_hat``) is required."""
        if value is None:
            raise ValueError("PolyakPG.step needs value=J_hat, the current return estimate (a float)")
        out = super().step(closure, loss=loss, value=float(value))
        self.stats["target"] = self.rule_state["target"]
        return out
