"""``SLS``: stochastic Armijo line search, plain (SLS), preconditioned (AdaSLS) and under an envelope (SLSB)."""

from __future__ import annotations

from typing import Any

from rlopt.directions import PRECONDITIONERS, Direction, Preconditioned, SGDDirection
from rlopt.envelope import Envelope
from rlopt.optimizer import ParamsT, StepSizeOptimizer
from rlopt.rules.armijo import RESETS, ArmijoRule
from rlopt.validation import (
    check_at_least,
    check_choice,
    check_half_open,
    check_int,
    check_open,
    check_positive,
)

__all__ = ["SLS", "check_direction_options", "make_direction"]


def check_direction_options(group: dict[str, Any]) -> None:
    """Validate ``precondition``, ``momentum``, ``beta2``, ``eps`` and ``envelope``."""
    check_choice("precondition", group["precondition"], (None, *PRECONDITIONERS))
    check_half_open("momentum", group["momentum"], 0.0, 1.0)
    check_open("beta2", group["beta2"], 0.0, 1.0)
    check_positive("eps", group["eps"])
    envelope = group.get("envelope")
    if envelope is not None and not callable(envelope):
        raise ValueError(f"Invalid envelope: {envelope!r}, expected None or a callable k -> float "
                         "such as rlopt.envelope.InvSqrt(lr_b)")


def make_direction(precondition: str | None) -> Direction:
    """The direction object for a ``precondition`` value."""
    return SGDDirection() if precondition is None else Preconditioned()


class SLS(StepSizeOptimizer):
    r"""Stochastic Armijo line search (Vaswani et al., NeurIPS 2019; AdaSLS, arXiv 2006.06835).

    Each step evaluates the minibatch loss ``f`` and gradient ``g`` at ``w``, picks the first trial
    ``eta_0 = reset(eta_{k-1})`` (``min(., max_lr, envelope(k))``) and backtracks ``eta <- beta * eta`` until

        f(w - eta d) <= f(w) - c * eta * g^T d,

    with ``d = g`` or, with ``precondition``, ``d = P^{-1} g`` (Adam/AMSGrad/AdaGrad diagonal). Momentum is
    applied after the search: heavy ball ``+ momentum * (w_k - w_{k-1})`` for ``d = g``; for preconditioned
    directions ``momentum`` is Adam's ``beta1`` and the final update is ``w - eta P^{-1} m_hat``.

    Cost: one forward+backward, plus ``1 + backtracks`` forwards without gradient. See :mod:`rlopt.closure`
    for the closure protocol and :mod:`rlopt.envelope` for SLSB.

    Args:
        params: parameters or param groups (one global step size; groups must share hyperparameters).
        lr: initial step size ``eta_{-1}`` (and the first trial of every search with ``reset="init"``).
        c: sufficient-decrease constant, ``0 < c < 1``.
        beta: backtracking factor, ``0 < beta < 1``.
        reset: first trial of a search: ``"keep"`` (previous step), ``"increase"`` (previous step times
            ``gamma ** (1 / n_batches_per_epoch)``) or ``"init"`` (``lr``).
        gamma: growth per epoch for ``reset="increase"``, ``>= 1``.
        n_batches_per_epoch: minibatches per epoch for ``reset="increase"``.
        max_lr: optional cap on every trial.
        precondition: None, ``"adam"``, ``"amsgrad"`` or ``"adagrad"``.
        momentum: heavy-ball coefficient (``d = g``) or Adam ``beta1`` (preconditioned), ``0 <= . < 1``.
        envelope: optional non-increasing bound ``k -> u_k`` on the step (SLSB), e.g. ``InvSqrt(1.0)``.
        max_backtracks: backtracks before the search gives up (then no step is taken).
        max_kl: a trust region for policy losses: with ``step(closure, kl=fn)`` a trial is accepted only if it
            also satisfies ``fn() <= max_kl`` (``fn``: the policy's divergence from the one that collected the
            batch), as TRPO's backtracking does, so one step cannot move the policy arbitrarily far.
        process_group: the ranks that decide together: every decision uses the mean over them of the losses
            (and ``||g||^2``, ``g^T d``, ``value``), all-reduced in one collective per evaluation, so every rank
            takes the same step. ``"world"`` (default): torch.distributed's world group when one is initialized;
            None: decide alone. Gradients must be DDP's (averaged) or FSDP2's shards (``fully_shard`` with
            ``reshard_after_forward=True`` on the root, so that every trial point is gathered afresh).
        beta2: second-moment decay of the Adam/AMSGrad preconditioner (AdaSLS default 0.99).
        eps: added to the preconditioner's square root.

    Example:
        >>> import torch, rlopt
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Linear(3, 1)
        >>> x, y = torch.randn(32, 3), torch.randn(32, 1)
        >>> opt = rlopt.SLS(model.parameters())
        >>> closure = lambda: torch.nn.functional.mse_loss(model(x), y)
        >>> first = opt.step(closure).item()
        >>> bool(opt.stats["accepted_loss"] <= first - 0.1 * opt.stats["step_size"] * opt.stats["grad_norm"] ** 2)
        True
    """

    requires_closure = True

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        c: float = 0.1,
        beta: float = 0.9,
        reset: str = "increase",
        gamma: float = 2.0,
        n_batches_per_epoch: int = 500,
        max_lr: float | None = None,
        precondition: str | None = None,
        momentum: float = 0.0,
        envelope: Envelope | Any = None,
        *,
        max_backtracks: int = 100,
        beta2: float = 0.99,
        eps: float = 1e-8,
        max_kl: float | None = None,
        process_group: Any = "world",
    ) -> None:
        defaults = dict(
            lr=lr, c=c, beta=beta, reset=reset, gamma=gamma, n_batches_per_epoch=n_batches_per_epoch,
            max_lr=max_lr, precondition=precondition, momentum=momentum, envelope=envelope,
            max_backtracks=max_backtracks, beta2=beta2, eps=eps, max_kl=max_kl,
        )
        self._validate_group(defaults)
        super().__init__(params, defaults, ArmijoRule(), make_direction(precondition), process_group)

    @classmethod
    def _validate_group(cls, group: dict[str, Any]) -> None:
        check_positive("lr", group["lr"])
        check_open("c", group["c"], 0.0, 1.0)
        check_open("beta", group["beta"], 0.0, 1.0)
        check_choice("reset", group["reset"], RESETS)
        check_at_least("gamma", group["gamma"], 1.0)
        check_int("n_batches_per_epoch", group["n_batches_per_epoch"], 1)
        check_positive("max_lr", group["max_lr"], allow_none=True)
        check_int("max_backtracks", group["max_backtracks"], 0)
        check_positive("max_kl", group.get("max_kl"), allow_none=True)
        check_direction_options(group)
