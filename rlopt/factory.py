"""Build any optimizer by name, and step any optimizer with the rlopt closure protocol.

Callers that accept "any optimizer" (the agents, the bilevel solvers, the command line) use these two
functions so that rlopt's rules and plain ``torch.optim`` optimizers are interchangeable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from rlopt.closure import Closure
from rlopt.optimizer import StepSizeOptimizer
from rlopt.polyak_pg import PolyakPG
from rlopt.ponos import PoNoS
from rlopt.sls import SLS
from rlopt.sps import SPS

__all__ = ["OPTIMIZERS", "build_optimizer", "closure_step"]


def _adam(params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    kwargs.setdefault("lr", 1e-3)
    return torch.optim.Adam(params, **kwargs)


def _sgd(params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    kwargs.setdefault("lr", 1e-2)
    return torch.optim.SGD(params, **kwargs)


def _adasls(params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    kwargs.setdefault("precondition", "amsgrad")
    return SLS(params, **kwargs)


#: names accepted by :func:`build_optimizer`
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": _adam,
    "sgd": _sgd,
    "sls": SLS,
    "adasls": _adasls,
    "sps": SPS,
    "ponos": PoNoS,
    "polyak": PolyakPG,
}


def build_optimizer(
    optimizer: str | type[torch.optim.Optimizer], params: Iterable[Any], **kwargs: Any
) -> torch.optim.Optimizer:
    """An optimizer from a name in :data:`OPTIMIZERS` or a ``torch.optim.Optimizer`` subclass.

    ``"adam"`` and ``"sgd"`` are torch's, with ``lr`` defaulting to 1e-3 and 1e-2; ``"adasls"`` is
    ``SLS(precondition="amsgrad")``; the others are the rlopt optimizers with their defaults.

    Example:
        >>> import torch, rlopt
        >>> type(rlopt.build_optimizer("sls", torch.nn.Linear(2, 1).parameters())).__name__
        'SLS'
    """
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key not in OPTIMIZERS:
            raise ValueError(f"Invalid optimizer: {optimizer!r}, expected one of {sorted(OPTIMIZERS)} "
                             "or a torch.optim.Optimizer subclass")
        return OPTIMIZERS[key](params, **kwargs)
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer(params, **kwargs)
    raise TypeError(f"Invalid optimizer: {optimizer!r}, expected a name in {sorted(OPTIMIZERS)} "
                    "or a torch.optim.Optimizer subclass")


def closure_step(
    optimizer: torch.optim.Optimizer,
    closure: Closure,
    *,
    max_grad_norm: float | None = None,
    value: float | None = None,
) -> Tensor:
    """One step of any optimizer from an rlopt closure (returns the loss without calling backward).

    rlopt optimizers get ``optimizer.step(closure)`` (``value`` is passed to rules that need it).
    Plain torch optimizers get ``zero_grad``, ``backward``, optional ``clip_grad_norm_`` and ``step``.
    Gradient clipping is not applied to rlopt's rules: clipping would change the direction their
    sufficient-decrease test and Polyak step are computed for; their step size already adapts to the norm.
    """
    if isinstance(optimizer, StepSizeOptimizer):
        if isinstance(optimizer, PolyakPG):
            if value is None:
                raise ValueError("closure_step with PolyakPG needs value=J_hat, the current return estimate")
            loss = optimizer.step(closure, value=value)
        else:
            loss = optimizer.step(closure)
        assert loss is not None
        return loss
    optimizer.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = closure()
    loss.backward()
    if max_grad_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return loss
