"""``SPS``: stochastic Polyak step size, SPS_max and DecSPS, plain, preconditioned or under an envelope."""

from __future__ import annotations

from typing import Any

from rlopt.envelope import Envelope
from rlopt.optimizer import ParamsT, StepSizeOptimizer
from rlopt.rules.polyak import PolyakRule, PolyakSearchRule
from rlopt.sls import check_direction_options, make_direction
from rlopt.validation import check_choice, check_finite, check_int, check_open, check_positive

__all__ = ["SPS"]

MODES = ("max", "dec")


class SPS(StepSizeOptimizer):
    r"""Stochastic Polyak step size (Loizou et al., AISTATS 2021) and DecSPS (Orvieto et al., NeurIPS 2022).

    ``mode="max"`` (SPS_max): ``eta_k = min((f_k - f_star) / (c * g^T d), max_lr)``, 0 when
    ``f_k <= f_star``. ``mode="dec"`` (DecSPS): ``eta_k = min((f_k - f_star) / g^T d, c_{k-1} eta_{k-1}) / c_k``
    with ``c_k = c * sqrt(k + 1)`` and ``eta_{-1} = max_lr`` (10 when None); non-increasing. With an
    ``envelope`` the step is also capped by ``u_k`` (SPSB). ``d = g`` or ``P^{-1} g`` with ``precondition``.

    No re-evaluation: call ``step(closure)`` or, after ``loss.backward()``, ``step(loss=loss)``. With
    ``search=True`` (``mode="max"`` only) the capped Polyak step is the first trial of a monotone Armijo search
    ``f(w - eta d) <= f(w) - search_c * eta * g^T d`` with backtracking ``eta <- beta * eta`` on the same
    minibatch (:class:`rlopt.rules.polyak.PolyakSearchRule`); it then needs ``step(closure)``. Under an
    envelope every trial is ``<= u_k``; ``max_backtracks`` failed trials take no step.

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
        search: accept the Polyak step only after an Armijo test, backtracking otherwise (``mode="max"``).
        search_c: sufficient-decrease constant of that test, ``0 < search_c < 1``.
        beta: backtracking factor of that test, ``0 < beta < 1``.
        max_backtracks: trials rejected before the search gives up (no step is taken).
        max_kl: a trust region for policy losses (implies ``search``): with ``step(closure, kl=fn)`` a trial is
            accepted only if it also satisfies ``fn() <= max_kl`` (TRPO's backtracking).
        process_group: the ranks that decide together: every decision uses the mean over them of the losses
            (and ``||g||^2``, ``g^T d``, ``value``), all-reduced in one collective per evaluation, so every rank
            takes the same step. ``"world"`` (default): torch.distributed's world group when one is initialized;
            None: decide alone. Gradients must be DDP's (averaged) or FSDP2's shards (``fully_shard`` with
            ``reshard_after_forward=True`` on the root, so that every trial point is gathered afresh).

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
        search: bool = False,
        search_c: float = 0.1,
        beta: float = 0.5,
        max_backtracks: int = 100,
        max_kl: float | None = None,
        process_group: Any = "world",
    ) -> None:
        if not isinstance(search, bool):
            raise TypeError(f"Invalid search: {search!r}, expected a bool")
        search = search or max_kl is not None  # the trust region is a condition of the search
        if search and mode != "max":
            raise ValueError(f"Invalid mode: {mode!r} with search=True or max_kl, expected 'max' (DecSPS has no "
                             "search)")
        defaults = dict(c=c, f_star=f_star, max_lr=max_lr, mode=mode, precondition=precondition,
                        envelope=envelope, momentum=momentum, beta2=beta2, eps=eps, search_c=search_c,
                        beta=beta, max_backtracks=max_backtracks, max_kl=max_kl)
        self._validate_group(defaults)
        rule = PolyakSearchRule() if search else PolyakRule()
        super().__init__(params, defaults, rule, make_direction(precondition), process_group)

    @classmethod
    def _validate_group(cls, group: dict[str, Any]) -> None:
        check_positive("c", group["c"])
        check_finite("f_star", group["f_star"])
        check_positive("max_lr", group["max_lr"], allow_none=True)
        check_choice("mode", group["mode"], MODES)
        check_open("search_c", group["search_c"], 0.0, 1.0)
        check_open("beta", group["beta"], 0.0, 1.0)
        check_int("max_backtracks", group["max_backtracks"], 0)
        check_positive("max_kl", group.get("max_kl"), allow_none=True)
        check_direction_options(group)
