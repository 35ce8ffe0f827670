"""Search directions that a step-size rule is composed with.

A direction turns the gradients ``g`` into the vector ``d`` the rule moves along (``w <- w - eta * d``) and
reports ``g^T d``, the slope the sufficient-decrease tests use. Momentum is applied *after* the step size is
chosen (:meth:`Direction.finish`), as in AdaSLS: the search is made on the momentum-free step.

* :class:`SGDDirection`: ``d = g``; optional heavy-ball momentum
  ``w_{k+1} = w_k - eta_k g_k + mu (w_k - w_{k-1})``.
* :class:`Preconditioned`: ``d = P^{-1} g`` with a diagonal Adam, AMSGrad or AdaGrad preconditioner
  (Vaswani et al. 2020, arXiv 2006.06835). With ``momentum = beta1 > 0`` the final update uses the
  bias-corrected first moment: ``w_{k+1} = w_k - eta_k P^{-1} m_hat_k``.

Directions hold no state of their own: per-parameter buffers live in the optimizer's ``state`` (so they are
part of ``state_dict``) and are passed in.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

ParamState = dict[str, Any]

__all__ = ["Direction", "DirectionStep", "Preconditioned", "SGDDirection", "squared_norm"]


def squared_norm(tensors: Sequence[Tensor]) -> Tensor:
    """``sum_i ||t_i||^2`` over a list of tensors, with fused foreach norms, as a 0-d float64 tensor.

    Few kernels on purpose: on small models each extra op costs as much as the arithmetic.
    """
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    norms = list(torch._foreach_norm(list(tensors)))
    device, dtype = norms[0].device, norms[0].dtype
    if any(n.device != device or n.dtype != dtype for n in norms):
        norms = [n.to(device=device, dtype=torch.float64) for n in norms]
    return torch.stack(norms).to(torch.float64).square().sum()


@dataclass
class DirectionStep:
    """What one step's direction needs to remember between the search and :meth:`Direction.finish`."""

    direction: list[Tensor]
    slope: Tensor | None  # g^T d as a 0-d tensor, or None when d = g (then g^T d = ||g||^2)
    extra: dict[str, Any] = field(default_factory=dict)


class Direction(ABC):
    """A search direction with an optional momentum applied after the step size is chosen."""

    @abstractmethod
    def prepare(
        self, grads: list[Tensor], states: list[ParamState], hp: dict[str, Any], step: int
    ) -> DirectionStep:
        """Compute ``d`` (and ``g^T d`` unless ``d = g``), updating per-parameter statistics.

        Called only for steps whose loss and gradient are finite, so statistics never see NaN or inf.
        ``step`` counts accepted calls from 1 (bias corrections).
        """

    @abstractmethod
    def finish(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[ParamState],
        hp: dict[str, Any],
        ds: DirectionStep,
        step_size: float,
    ) -> None:
        """Called with the parameters at ``w - eta d``; applies momentum (if any) from there."""


class SGDDirection(Direction):
    """``d = g``, with heavy-ball momentum ``hp["momentum"]`` applied after the step size is chosen."""

    def prepare(
        self, grads: list[Tensor], states: list[ParamState], hp: dict[str, Any], step: int
    ) -> DirectionStep:
        return DirectionStep(direction=grads, slope=None)

    def finish(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[ParamState],
        hp: dict[str, Any],
        ds: DirectionStep,
        step_size: float,
    ) -> None:
        mu = float(hp.get("momentum", 0.0))
        if mu == 0.0 or step_size == 0.0:
            return
        # buffer = w_k - w_{k-1}: the previous displacement.
        bufs = [s.setdefault("momentum_buffer", torch.zeros_like(p)) for s, p in zip(states, params, strict=True)]
        torch._foreach_add_(params, bufs, alpha=mu)
        torch._foreach_mul_(bufs, mu)
        torch._foreach_add_(bufs, ds.direction, alpha=-step_size)


PRECONDITIONERS = ("adam", "amsgrad", "adagrad")


class Preconditioned(Direction):
    """``d = g / (sqrt(v_hat) + eps)`` with Adam, AMSGrad or AdaGrad second moments.

    Hyperparameters read from the param group: ``precondition`` (the kind), ``beta2`` (second-moment decay,
    unused by AdaGrad), ``eps``, ``momentum`` (``beta1`` of the first moment; 0 means ``d`` is used as is).

    ``v_hat = v / (1 - beta2^k)`` for Adam, ``max_{j<=k} v_j / (1 - beta2^k)`` for AMSGrad and
    ``sum_{j<=k} g_j^2`` for AdaGrad.
    """

    def prepare(
        self, grads: list[Tensor], states: list[ParamState], hp: dict[str, Any], step: int
    ) -> DirectionStep:
        kind = hp["precondition"]
        beta2, eps, beta1 = float(hp["beta2"]), float(hp["eps"]), float(hp["momentum"])
        v = [s.setdefault("exp_avg_sq", torch.zeros_like(g)) for s, g in zip(states, grads, strict=True)]
        squares = torch._foreach_mul(grads, grads)
        if kind == "adagrad":
            torch._foreach_add_(v, squares)
            denom = torch._foreach_sqrt(v)
        else:
            torch._foreach_lerp_(v, squares, 1.0 - beta2)
            if kind == "amsgrad":
                vmax = [s.setdefault("max_exp_avg_sq", torch.zeros_like(g)) for s, g in zip(states, grads, strict=True)]
                torch._foreach_maximum_(vmax, v)
                v = vmax
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, math.sqrt(1.0 - beta2**step))
        torch._foreach_add_(denom, eps)
        d = list(torch._foreach_div(grads, denom))
        # g^T P^{-1} g = || g / sqrt(denom) ||^2, reusing the fused norm.
        slope = squared_norm(torch._foreach_div(grads, torch._foreach_sqrt(denom)))
        extra: dict[str, Any] = {"denom": denom}
        if beta1 > 0.0:
            m = [s.setdefault("exp_avg", torch.zeros_like(g)) for s, g in zip(states, grads, strict=True)]
            torch._foreach_lerp_(m, grads, 1.0 - beta1)
            extra["bias1"] = 1.0 - beta1**step
            extra["exp_avg"] = m
        return DirectionStep(direction=d, slope=slope, extra=extra)

    def finish(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[ParamState],
        hp: dict[str, Any],
        ds: DirectionStep,
        step_size: float,
    ) -> None:
        if "exp_avg" not in ds.extra or step_size == 0.0:
            return
        # From w - eta g/denom to w - eta m_hat/denom: add eta (g - m_hat) / denom.
        m_hat = torch._foreach_div(ds.extra["exp_avg"], ds.extra["bias1"])
        correction = torch._foreach_sub(grads, m_hat)
        torch._foreach_div_(correction, ds.extra["denom"])
        torch._foreach_add_(params, correction, alpha=step_size)
