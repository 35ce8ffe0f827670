"""``PoNoS``: nonmonotone line search with a Polyak initial step (Galli, Rauhut, Schmidt, NeurIPS 2023)."""

from __future__ import annotations

from typing import Any

from rlopt.envelope import Envelope
from rlopt.optimizer import ParamsT, StepSizeOptimizer
from rlopt.rules.nonmonotone import NonmonotoneRule
from rlopt.sls import check_direction_options, make_direction
from rlopt.validation import check_finite, check_half_open, check_int, check_open, check_positive

__all__ = ["PoNoS"]


class PoNoS(StepSizeOptimizer):
    r"""Polyak nonmonotone stochastic line search (arXiv 2306.12747); rule in :mod:`rlopt.rules.nonmonotone`.

    First trial ``clip((f - f_star) / (c_p g^T d) * delta^l, min_lr, max_lr)``, accepted when
    ``f(w - eta d) <= max(C, f(w)) - c eta g^T d`` with ``C`` the Zhang-Hager average of past minibatch
    losses (``xi = 1``: their running mean), else ``eta <- delta * eta``; ``l`` counts recent backtracks so
    that most steps need none.

    Args:
        params: parameters or param groups (one global step size).
        c: sufficient-decrease constant, ``0 < c < 1``.
        c_p: Polyak scale of the first trial, ``> 0``.
        delta: backtracking factor, ``0 < delta < 1``.
        xi: Zhang-Hager forgetting, ``0 <= xi <= 1`` (0: monotone Armijo on the current batch).
        max_lr: upper clip of the first trial.
        min_lr: lower clip of the first trial.
        f_star: lower bound of the minibatch losses used in the Polyak numerator.
        envelope: optional non-increasing bound on every trial.
        max_backtracks: backtracks before the search gives up (then no step is taken).
        max_kl: a trust region for policy losses: with ``step(closure, kl=fn)`` a trial is accepted only if it
            also satisfies ``fn() <= max_kl`` (``fn``: the policy's divergence from the one that collected the
            batch), as TRPO's backtracking does, so one step cannot move the policy arbitrarily far.
        process_group: the ranks that decide together: every decision uses the mean over them of the losses
            (and ``||g||^2``, ``g^T d``, ``value``), all-reduced in one collective per evaluation, so every rank
            takes the same step. ``"world"`` (default): torch.distributed's world group when one is initialized;
            None: decide alone. Gradients must be DDP's (averaged) or FSDP2's shards (``fully_shard`` with
            ``reshard_after_forward=True`` on the root, so that every trial point is gathered afresh).
        precondition, momentum, beta2, eps: as in :class:`rlopt.SLS`.

    Example:
        >>> import torch, rlopt
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Linear(4, 1)
        >>> x = torch.randn(64, 4); y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        >>> opt = rlopt.PoNoS(model.parameters())
        >>> losses = [opt.step(lambda: torch.nn.functional.mse_loss(model(x), y)).item() for _ in range(50)]
        >>> losses[-1] < 1e-3 * losses[0]
        True
    """

    requires_closure = True

    def __init__(
        self,
        params: ParamsT,
        c: float = 0.5,
        c_p: float = 0.1,
        delta: float = 0.5,
        xi: float = 1.0,
        max_lr: float = 10.0,
        min_lr: float = 1e-6,
        f_star: float = 0.0,
        envelope: Envelope | Any = None,
        *,
        max_backtracks: int = 100,
        precondition: str | None = None,
        momentum: float = 0.0,
        beta2: float = 0.99,
        eps: float = 1e-8,
        max_kl: float | None = None,
        process_group: Any = "world",
    ) -> None:
        defaults = dict(c=c, c_p=c_p, delta=delta, xi=xi, max_lr=max_lr, min_lr=min_lr, f_star=f_star,
                        envelope=envelope, max_backtracks=max_backtracks, precondition=precondition,
                        momentum=momentum, beta2=beta2, eps=eps, max_kl=max_kl)
        self._validate_group(defaults)
        super().__init__(params, defaults, NonmonotoneRule(), make_direction(precondition), process_group)

    @classmethod
    def _validate_group(cls, group: dict[str, Any]) -> None:
        check_open("c", group["c"], 0.0, 1.0)
        check_positive("c_p", group["c_p"])
        check_open("delta", group["delta"], 0.0, 1.0)
        check_half_open("xi", group["xi"], 0.0, 1.0 + 1e-12)
        check_positive("max_lr", group["max_lr"])
        check_positive("min_lr", group["min_lr"])
        if group["min_lr"] > group["max_lr"]:
            raise ValueError(f"Invalid min_lr: {group['min_lr']!r}, expected min_lr <= max_lr "
                             f"({group['max_lr']!r})")
        check_finite("f_star", group["f_star"])
        check_int("max_backtracks", group["max_backtracks"], 0)
        check_positive("max_kl", group.get("max_kl"), allow_none=True)
        check_direction_options(group)
