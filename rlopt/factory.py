"""Build any optimizer by name, and step any optimizer with the rlopt closure protocol.

Callers that accept "any optimizer" (the agents, the bilevel solvers, the command line) use these two
functions so that rlopt's rules and plain ``torch.optim`` optimizers are interchangeable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rlopt.closure import Closure
from rlopt.optimizer import StepSizeOptimizer
from rlopt.polyak_pg import PolyakPG
from rlopt.ponos import PoNoS
from rlopt.sls import SLS
from rlopt.sps import SPS

__all__ = [
    "OPTIMIZERS",
    "OptimizerSpec",
    "StepStats",
    "build_optimizer",
    "closure_step",
    "optimizer_spec",
    "register_optimizer",
    "step_stats",
]

OptimizerLike = str | type[torch.optim.Optimizer] | torch.optim.Optimizer


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer known by name, with the traits that callers otherwise re-derive from its class.

    Attributes:
        name: the registry key (``build_optimizer(name, ...)``).
        cls: the optimizer class that ``factory`` returns.
        factory: ``factory(params, **kwargs)`` builds it; calling the spec does the same.
        line_search: the rule re-evaluates the closure at trial points (SLS, AdaSLS, PoNoS), so a loss with
            several parts (a policy and a critic) is better given one optimizer per part.
        needs_value: ``step`` needs ``value=`` as well as the closure (PolyakPG's return estimate).
        default_lr: the learning rate it gets when none is given; ``None`` for the tuning-free rules.
    """

    name: str
    cls: type[torch.optim.Optimizer]
    factory: Callable[..., torch.optim.Optimizer]
    line_search: bool = False
    needs_value: bool = False
    default_lr: float | None = None

    @property
    def tuning_free(self) -> bool:
        """Whether the rule sets its own step size (no learning rate to tune)."""
        return issubclass(self.cls, StepSizeOptimizer)

    def __call__(self, params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
        return self.factory(params, **kwargs)


def _with_lr(cls: type[torch.optim.Optimizer], lr: float) -> Callable[..., torch.optim.Optimizer]:
    def factory(params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
        kwargs.setdefault("lr", lr)
        return cls(params, **kwargs)

    return factory


def _adasls(params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    kwargs.setdefault("precondition", "amsgrad")
    return SLS(params, **kwargs)


#: the optimizers :func:`build_optimizer` knows by name (add more with :func:`register_optimizer`)
OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("adam", torch.optim.Adam, _with_lr(torch.optim.Adam, 1e-3), default_lr=1e-3),
        OptimizerSpec("sgd", torch.optim.SGD, _with_lr(torch.optim.SGD, 1e-2), default_lr=1e-2),
        OptimizerSpec("sls", SLS, SLS, line_search=True),
        OptimizerSpec("adasls", SLS, _adasls, line_search=True),
        OptimizerSpec("sps", SPS, SPS),
        OptimizerSpec("ponos", PoNoS, PoNoS, line_search=True),
        OptimizerSpec("polyak", PolyakPG, PolyakPG, needs_value=True),
    )
}


def register_optimizer(spec: OptimizerSpec, *, replace: bool = False) -> None:
    """Make ``spec`` available by its name everywhere an optimizer name is accepted.

    Raises:
        ValueError: if the name is taken and ``replace`` is false.
    """
    key = spec.name.lower()
    if key in OPTIMIZERS and not replace:
        raise ValueError(f"Invalid name: {spec.name!r} is already registered (pass replace=True to replace it)")
    OPTIMIZERS[key] = spec


def _names() -> str:
    return ", ".join(repr(n) for n in sorted(OPTIMIZERS))


def optimizer_spec(optimizer: OptimizerLike) -> OptimizerSpec:
    """The spec of a registered name, or of an optimizer class or instance (its traits from the class).

    Raises:
        ValueError: on an unknown name. TypeError: on anything that is not a name, an optimizer class or an
        optimizer.

    Example:
        >>> import rlopt
        >>> rlopt.optimizer_spec("ponos").line_search, rlopt.optimizer_spec("adam").default_lr
        (True, 0.001)
    """
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key not in OPTIMIZERS:
            raise ValueError(f"Invalid optimizer: {optimizer!r}, expected one of {_names()} "
                             "or a torch.optim.Optimizer subclass")
        return OPTIMIZERS[key]
    cls = type(optimizer) if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise TypeError(f"Invalid optimizer: {optimizer!r} (type {type(optimizer).__name__}), expected a name in "
                        f"{_names()} or a torch.optim.Optimizer subclass")
    same = [spec for spec in OPTIMIZERS.values() if spec.cls is cls]
    if same:  # the registered traits, the class itself as the factory (its own defaults)
        exact = [spec for spec in same if spec.factory is cls]
        return exact[0] if exact else replace(same[0], factory=cls)
    return OptimizerSpec(cls.__name__.lower(), cls, cls, line_search=issubclass(cls, (SLS, PoNoS)),
                         needs_value=issubclass(cls, PolyakPG))


def build_optimizer(optimizer: str | type[torch.optim.Optimizer], params: Iterable[Any], **kwargs: Any
                    ) -> torch.optim.Optimizer:
    """An optimizer from a name in :data:`OPTIMIZERS` or a ``torch.optim.Optimizer`` subclass.

    ``"adam"`` and ``"sgd"`` are torch's, with ``lr`` defaulting to 1e-3 and 1e-2; ``"adasls"`` is
    ``SLS(precondition="amsgrad")``; the others are the rlopt optimizers with their defaults.

    Example:
        >>> import torch, rlopt
        >>> type(rlopt.build_optimizer("sls", torch.nn.Linear(2, 1).parameters())).__name__
        'SLS'
    """
    return optimizer_spec(optimizer)(params, **kwargs)


class StepStats(NamedTuple):
    """What every optimizer's last step reports, read the same way for rlopt's rules and torch's."""

    step_size: float
    backtracks: float
    forward_calls: float


def step_stats(optimizer: torch.optim.Optimizer) -> StepStats:
    """``(step_size, backtracks, forward_calls)`` of the last step of any optimizer.

    rlopt's optimizers report them in ``optimizer.stats``; a torch optimizer's step size is the learning rate
    of its first parameter group (NaN if it has none), with no backtracks and one forward call.
    """
    stats = getattr(optimizer, "stats", None)
    if isinstance(stats, dict) and "step_size" in stats:
        return StepStats(float(stats["step_size"]), float(stats.get("backtracks", 0)),
                         float(stats.get("forward_calls", 1)))
    return StepStats(float(optimizer.param_groups[0].get("lr", float("nan"))), 0.0, 1.0)


def closure_step(
    optimizer: torch.optim.Optimizer,
    closure: Closure,
    *,
    max_grad_norm: float | None = None,
    value: float | None = None,
    kl: Callable[[], Tensor] | None = None,
    grad_hook: Callable[[list[Tensor]], None] | None = None,
) -> Tensor:
    """One step of any optimizer from an rlopt closure (returns the loss without calling backward).

    rlopt optimizers get ``optimizer.step(closure)`` (``value`` is passed to rules that need it, ``kl`` to line
    searches built with ``max_kl``; other optimizers ignore ``kl``).
    Plain torch optimizers get ``zero_grad``, ``backward``, optional ``clip_grad_norm_`` and ``step``.
    Gradient clipping is not applied to rlopt's rules: clipping would change the direction their
    sufficient-decrease test and Polyak step are computed for; their step size already adapts to the norm.

    ``grad_hook(grads)`` runs once the gradients exist and before anything reads them (clipping included): the
    place to all-reduce them across data-parallel ranks (see :meth:`rlopt.StepSizeOptimizer.register_grad_hook`).
    """
    if isinstance(optimizer, StepSizeOptimizer):
        if kl is not None and optimizer.param_groups[0].get("max_kl") is None:
            kl = None  # no trust region asked for: the KL function is not needed
        handle = None if grad_hook is None else optimizer.register_grad_hook(lambda _, grads: grad_hook(grads))
        try:
            if optimizer_spec(optimizer).needs_value:
                loss = optimizer.step(closure, value=value, kl=kl)  # value=None: the closure returns -J_hat itself
            else:
                loss = optimizer.step(closure, kl=kl)
        finally:
            if handle is not None:
                handle.remove()
        assert loss is not None
        return loss
    optimizer.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = closure()
    loss.backward()
    if grad_hook is not None or max_grad_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grad_hook is not None:
            grad_hook([p.grad for p in params])
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return loss
