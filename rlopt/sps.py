"""``SPS``: stochastic Polyak step size, SPS_max and DecSPS, plain, preconditioned or under an envelope."""

from __future__ import annotations

from typing import Any

from rlopt._validation import check_choice, check_finite, check_positive
from rlopt.envelope import Envelope
from rlopt.optimizer import ParamsT, StepSizeOptimizer
from rlopt.rules.polyak import PolyakRule
from rlopt.sls import check_direction_options, make_direction

__all__ = ["SPS"]

MODES = ("max", "dec")


class SPS(StepSizeOptimizer):
    r"""Stochastic Polyak step size (Loizou et al., AISTATS 2021) and DecSPS (Orvieto et al., NeurIPS 2022).

    ``mode="max"`` (SPS_max): ``eta_k = min((f_k - f_star) / (c * g^T d), max_lr)``, 0 when
    ``f_k <= f_star``. ``mode="dec"`` (DecSPS): ``eta_k = min((f_k - f_star) / g^T d, c_{k-1} eta_{k-1}) / c_k``
    with ``c_k = c * sqrt(k + 1)`` and ``eta_{-1} = max_lr`` (10 when None); non-increasing. With an
    ``envelope`` the step is also capped by ``u_k`` (SPSB). ``d = g`` or ``P^{-1} g`` with ``precondition``.

    No re-evaluation: call ``step(closure)`` or, after ``loss.backward()``, ``step(loss=loss)``.

    Args:
        params: parameters or param groups (one global step size).
        c: Polyak scale (``c0`` for DecSPS), ``> 0``; 0.5 solves an isotropic quadratic in one step.
        f_star: lower bound of the minibatch losses (0 for non-negative interpolating losses).
        max_lr: cap on the step (``gamma_b``); None for no cap in ``"max"`` mode.
        mode: ``"max"`` or ``"dec"``.
        precondition: None, ``"adam"``, ``"amsgrad"`` or ``"adagrad"``.
        envelope: optional non-increasing bound ``k -> u_k`` (SPSB).
        momentum: heavy-ball coefficient or Adam ``beta1`` with a preconditioner.
        beta2: second-moment decay of the Adam/AMSGrad preconditioner.
        eps: added to the preconditioner's square root.

    Example:
        >>> import torch, rlopt
        >>> w = torch.nn.Parameter(torch.tensor([3.0, -4.0]))
        >>> opt = rlopt.SPS([w], c=0.5)
        >>> _ = opt.step(lambda: 0.5 * (w ** 2).sum())  # f* = 0: one step to the minimiser
        >>> w.detach().abs().max().item()
        0.0
    """

    def __init__(
        self,
        params: ParamsT,
        c: float = 0.5,
        f_star: float = 0.0,
        max_lr: float | None = None,
        mode: str = "max",
        precondition: str | None = None,
        envelope: Envelope | Any = None,
        *,
        momentum: float = 0.0,
        beta2: float = 0.99,
        eps: float = 1e-8,
    ) -> None:
        defaults = dict(c=c, f_star=f_star, max_lr=max_lr, mode=mode, precondition=precondition,
                        envelope=envelope, momentum=momentum, beta2=beta2, eps=eps)
        self._validate_group(defaults)
        super().__init__(params, defaults, PolyakRule(), make_direction(precondition))

    @classmethod
    def _validate_group(cls, group: dict[str, Any]) -> None:
        check_positive("c", group["c"])
        check_finite("f_star", group["f_star"])
        check_positive("max_lr", group["max_lr"], allow_none=True)
        check_choice("mode", group["mode"], MODES)
        check_direction_options(group)
