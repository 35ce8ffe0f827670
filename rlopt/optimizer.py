"""``StepSizeOptimizer``: the thin ``torch.optim`` face shared by every rlopt optimizer.

An optimizer is a step-size rule (:mod:`rlopt.rules`) composed with a direction (:mod:`rlopt.directions`)
and an optional envelope (:mod:`rlopt.envelope`). This class owns what they have in common: the closure
protocol (:mod:`rlopt.closure`), non-finite handling, the backtracking loop, ``stats`` and ``state_dict``.

**One global step size.** The step size is a single scalar over all parameter groups, chosen from the loss
and the global ``||g||^2`` (a line search evaluates the whole model at once, so per-group searches would be
meaningless). The rule's hyperparameters are therefore shared: every group must carry the same values; a
group that sets a different one is rejected by :meth:`add_param_group`.

**Parameters are moved in place.** A trial sets ``w <- w - eta d`` by adding the difference to the previous
trial: no copy of the parameters or of the gradients is made per step. The accepted point therefore equals
``w_k - eta d_k`` up to floating-point rounding, and the sufficient-decrease test is made at exactly the
parameters that are kept.

**Failure is designed.** A non-finite loss, gradient (or caller-supplied ``value``) skips the step:
parameters and state are untouched, ``stats["skipped"]`` counts it, and a ``RuntimeWarning`` is issued once
per optimizer. A trial whose loss is not finite counts as rejected. A search that rejects
``max_backtracks + 1`` trials restores the parameters, takes no step (step size 0), leaves the rule's state
as it was and counts ``stats["failures"]``; the reference code instead takes a silent step of 1e-6. A
monotone search (reference = the loss) ends the same way as soon as a trial shows no decrease while the
decrease it predicts, ``eta * slope``, is within the loss's floating-point resolution (``eps * |loss|`` of the
loss's dtype): every shorter trial rounds to the loss, so the rest of the search could only fail (counted in
``stats["stalls"]`` too). Near a float32 optimum this saves up to ``max_backtracks`` loss evaluations per step.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from rlopt.closure import Closure, RngSnapshot, RunningStatsGuard
from rlopt.directions import Direction, DirectionStep, squared_norm
from rlopt.rules.base import Proposal, RuleState, SearchResult, StepInfo, StepSizeRule, armijo_backtracking

#: a search whose first trial exceeds this moves every trial from a copy of the parameters (see ``_backtrack``)
_EXACT_TRIALS_ABOVE = 100.0
#: the largest step size taken or tried (finite in float32, so a trial can always be evaluated and rejected)
_LARGEST_STEP = 1e30

__all__ = ["StepSizeOptimizer", "resolve_process_group"]


def _materialize(t: Tensor) -> Tensor:
    """A DTensor (FSDP2's sharded gradients and what is computed from them) as the plain full value its placements
    stand for (partial sums reduced over its mesh); any other tensor unchanged."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


def resolve_process_group(process_group: Any) -> Any:
    """The ``process_group=`` argument of rlopt's optimizers, agents and data-parallel problems as a group or None.

    ``"world"`` (the default): torch.distributed's world group when a process group is initialized, else None;
    None: none (each process decides alone); a process group: that group. Any other string is a ``ValueError``.
    """
    if isinstance(process_group, str):
        if process_group != "world":
            raise ValueError(f"Invalid process_group: {process_group!r}, expected 'world', None or a ProcessGroup")
        import torch.distributed as dist

        return dist.group.WORLD if dist.is_available() and dist.is_initialized() else None
    return process_group

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


class StepSizeOptimizer(torch.optim.Optimizer):
    """Base class of the rlopt optimizers (see the module docstring for the shared behaviour).

    Subclasses pass a rule, a direction and validated ``defaults``; they implement nothing else but
    :meth:`_validate_group` and their constructor.

    Attributes:
        stats: updated after every call to :meth:`step`: ``step_size`` (0 when no step was taken),
            ``backtracks``, ``loss``, ``grad_norm``, ``forward_calls`` (closure evaluations in this step),
            ``accepted_loss`` (the loss at the accepted trial, NaN without a search), ``slope`` (``g^T d``,
            the slope of the sufficient-decrease test; ``grad_norm**2`` for ``d = g``), ``skipped`` (cumulative
            non-finite steps), ``failures`` (cumulative searches without an accepted trial), ``steps``
            (cumulative steps taken, the envelope's ``k``).
        rule_state: the step-size rule's state (saved in ``state_dict`` under ``"rule_state"``).
    """

    requires_closure: ClassVar[bool] = False

    def __init__(
        self,
        params: ParamsT,
        defaults: dict[str, Any],
        rule: StepSizeRule,
        direction: Direction,
        process_group: Any = "world",
    ) -> None:
        self.rule = rule
        self.direction = direction
        self._process_group = resolve_process_group(process_group)
        super().__init__(params, defaults)
        self.rule_state: RuleState = rule.init_state(self.param_groups[0])
        self.stats: dict[str, float] = {
            "step_size": 0.0,
            "backtracks": 0,
            "loss": math.nan,
            "grad_norm": math.nan,
            "forward_calls": 0,
            "accepted_loss": math.nan,
            "slope": math.nan,
            "kl": math.nan,
            "skipped": 0,
            "failures": 0,
            "stalls": 0,
            "steps": 0,
        }
        self._warned: set[str] = set()
        self._running_stats = RunningStatsGuard()
        self._kl: Callable[[], Tensor] | None = None  # the step's KL function (step(kl=...)), never saved
        self._loss_dtype: torch.dtype = torch.float64  # the step's loss dtype: its resolution ends a stalled search
        self._grad_hooks: OrderedDict[int, Callable[[StepSizeOptimizer, list[Tensor]], None]] = OrderedDict()

    def register_grad_hook(self, hook: Callable[[StepSizeOptimizer, list[Tensor]], None]) -> RemovableHandle:
        """Run ``hook(optimizer, grads)`` on every step once the gradients exist and before anything reads them.

        ``grads`` are the ``.grad`` tensors of the parameters that have one, in parameter-group order; the hook
        may change them in place. This is where gradients computed by the optimizer's own ``backward`` (the
        closure protocol) can be all-reduced across data-parallel ranks without wrapping the model in DDP, as
        the agents do for modules whose methods other than ``forward`` compute the loss. Not saved with the
        optimizer (hooks are not part of ``state_dict`` or a pickled copy), as torch's own hooks.

        Returns:
            A handle whose ``remove()`` unregisters the hook.
        """
        hooks = self.__dict__.setdefault("_grad_hooks", OrderedDict())
        handle = RemovableHandle(hooks)
        hooks[handle.id] = hook
        return handle

    # ------------------------------------------------------------------ validation and groups
    @classmethod
    def _validate_group(cls, group: dict[str, Any]) -> None:
        """Raise ValueError for an invalid hyperparameter in ``group`` (overridden by subclasses)."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group)
        first = self.param_groups[0]
        for key in self.defaults:
            if group[key] is not first[key] and group[key] != first[key]:
                raise ValueError(
                    f"Invalid {key} in param group {len(self.param_groups) - 1}: {group[key]!r}; "
                    f"{type(self).__name__} uses one global step size, so every group must share the "
                    f"step-size hyperparameters (group 0 has {key}={first[key]!r})"
                )

    # ------------------------------------------------------------------ pickling and copies
    _EXTRA_STATE = ("rule", "direction", "rule_state", "stats", "_warned", "_running_stats")

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim.Optimizer pickles (and deep-copies) only defaults, state and param_groups; a copy
        # without the rule and its state could not step.
        state: dict[str, Any] = super().__getstate__()
        state.update({key: getattr(self, key) for key in self._EXTRA_STATE})
        return state

    # ------------------------------------------------------------------ state_dict
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["rule_state"] = dict(self.rule_state)
        state["stats"] = dict(self.stats)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rule_state = state_dict.pop("rule_state", None)
        stats = state_dict.pop("stats", None)
        if rule_state is None:
            raise ValueError(f"state_dict has no 'rule_state': it was not saved by a {type(self).__name__}")
        super().load_state_dict(state_dict)
        self.rule_state = dict(rule_state)
        if stats is not None:
            self.stats = {**self.stats, **stats}  # counters added since the checkpoint start from their defaults

    # ------------------------------------------------------------------ hooks for subclasses
    def _reduce(self, values: Tensor) -> Tensor:
        """All-reduce seam: average the step's scalars across data-parallel ranks.

        ``values`` holds the quantities every decision is made from (minibatch losses, ``||g||^2``,
        ``g^T d``, a caller's ``value``). A single process returns them unchanged; with a process group they
        are averaged over its ranks in one collective, so every rank takes the same step. Under DDP the
        gradients are already averaged, so ``||g||^2`` and ``g^T d`` agree on every rank and only the losses
        differ (each rank's minibatch); their mean is the loss of the union of equal-sized minibatches.
        """
        group = getattr(self, "_process_group", None)
        if group is None:
            return values
        import torch.distributed as dist

        values = values.detach().to(torch.float64).clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM, group=group)
        return values / dist.get_world_size(group)

    def _reduces(self) -> bool:
        """Whether the step's scalars go through :meth:`_reduce` (a process group, or a subclass's own)."""
        return getattr(self, "_process_group", None) is not None or type(self)._reduce is not StepSizeOptimizer._reduce

    def _scalar(self, value: Tensor) -> float:
        """A loss value as a float, all-reduced when the optimizer reduces (one op otherwise)."""
        if not self._reduces():
            return float(value)
        return float(self._reduce(value.detach().to(torch.float64).reshape(1))[0])

    def _loss_and_grad_sq(
        self, loss: Tensor, grads: list[Tensor], value: float | None = None
    ) -> tuple[float, float, float | None]:
        """The minibatch loss, ``||g||^2`` and the caller's ``value`` as floats, all-reduced (one collective) when
        the optimizer reduces: ``value`` comes from this rank's data too, so the ranks' mean is used.

        This read-out runs on every step, and on small models each kernel and host synchronisation costs as
        much as the arithmetic: on one process the per-tensor norms and the loss go to the host in a single
        stacked read-out and are squared and summed there in float64.
        """
        loss = loss.detach().reshape(())
        if self._reduces() or not grads:
            grad_sq_t = _materialize(squared_norm(grads)).to(loss.device)
            extra = [] if value is None else [torch.tensor(float(value), dtype=torch.float64, device=loss.device)]
            reduced = self._reduce(torch.stack([loss.to(torch.float64), grad_sq_t, *extra])).tolist()
            return reduced[0], reduced[1], (reduced[2] if extra else None)
        norms = torch._foreach_norm(grads)
        if all(n.device == loss.device and n.dtype == loss.dtype for n in norms):
            *values, loss_v = torch.stack([*norms, loss]).tolist()
        else:  # parameters on several devices or in several dtypes (rare): gather in float64 on the loss's device
            *values, loss_v = torch.stack(
                [n.to(loss.device, torch.float64) for n in norms] + [loss.to(torch.float64)]
            ).tolist()
        return loss_v, math.fsum(v * v for v in values), value

    # ------------------------------------------------------------------ the step
    def _warn_once(self, key: str, message: str, stacklevel: int) -> None:
        # stacklevel points at the caller of step() (torch wraps step in one extra frame)
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)

    def _params_with_grad(self) -> tuple[list[Tensor], list[Tensor], list[dict[str, Any]]]:
        params, grads, states = [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                params.append(p)
                grads.append(p.grad)
                states.append(self.state[p])
        return params, grads, states

    def _cuda_devices(self) -> list[int]:
        return sorted(
            {p.device.index or 0 for g in self.param_groups for p in g["params"] if p.device.type == "cuda"}
        )

    def _first_evaluation(self, closure: Closure) -> Tensor:
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise TypeError(
                f"closure must return the loss as a scalar tensor, got {type(loss).__name__}"
                + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
            )
        if any(p.grad is not None for g in self.param_groups for p in g["params"]):
            raise RuntimeError(
                "closure must return the loss without calling backward(): the optimizer computes the "
                "gradient itself and re-evaluates the closure without gradients at trial points"
            )
        if not loss.requires_grad:
            raise RuntimeError(
                "the loss returned by closure does not require grad: build it from the optimizer's "
                "parameters, with gradients enabled"
            )
        loss.backward()
        return loss

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        *,
        loss: Tensor | float | None = None,
        value: float | None = None,
        kl: Callable[[], Tensor] | None = None,
    ) -> Tensor | None:
        """Take one step; see :mod:`rlopt.closure` for the protocol.

        Args:
            closure: returns the minibatch loss without calling ``backward()``.
            loss: the minibatch loss whose gradient the caller already computed (rules without a search).
            value: an objective estimate for rules that need one (the return estimate of PolyakPG).
            kl: for a line search built with ``max_kl``: returns, at the current parameters, the divergence of
                the policy from the one that collected the batch (e.g. PPO's approximate KL); a trial is accepted
                only if it passes the decrease test and ``kl() <= max_kl`` (TRPO's backtracking). Evaluated
                like the closure, without gradients and with the same random numbers.

        Returns:
            The loss at the current iterate (the first evaluation of ``closure``, or ``loss``).
        """
        name = type(self).__name__
        if (closure is None) == (loss is None):
            raise ValueError(f"{name}.step needs exactly one of closure=... or loss=..., got "
                             + ("both" if closure is not None else "neither"))
        if closure is None and self.rule.needs_closure:
            raise ValueError(
                f"{name} evaluates the loss at trial points and needs a closure: call step(closure) with a "
                "closure that returns the minibatch loss without calling backward()"
            )
        max_kl = self.param_groups[0].get("max_kl")
        if kl is not None and max_kl is None:
            raise ValueError(f"{name}.step got kl=... but the optimizer has no max_kl: build it with max_kl=<bound> "
                             "(SLS and PoNoS take one)")
        if max_kl is not None and kl is None:
            raise ValueError(f"{name} was built with max_kl={max_kl!r} and needs step(closure, kl=fn): fn returns the "
                             "policy's divergence from the one that collected the batch")
        self._kl = kl
        snapshot = RngSnapshot(self._cuda_devices()) if self.rule.needs_closure else None
        if closure is not None:
            loss_t = self._first_evaluation(closure)
        else:
            loss_t = loss if isinstance(loss, Tensor) else torch.tensor(float(loss))  # type: ignore[arg-type]

        self._loss_dtype = loss_t.dtype if loss_t.is_floating_point() else torch.float64
        params, grads, states = self._params_with_grad()
        for hook in tuple(getattr(self, "_grad_hooks", {}).values()):
            hook(self, grads)
        loss_v, grad_sq, value = self._loss_and_grad_sq(loss_t, grads, value)
        self.stats.update(loss=loss_v, grad_norm=math.sqrt(grad_sq) if grad_sq >= 0 else math.nan,
                          forward_calls=int(closure is not None), backtracks=0, accepted_loss=math.nan,
                          slope=math.nan, kl=math.nan)
        if not (math.isfinite(loss_v) and math.isfinite(grad_sq) and math.isfinite(value or 0.0)):
            self.stats["skipped"] += 1
            self.stats["step_size"] = 0.0
            self._warn_once(
                "nonfinite",
                f"{name}: non-finite loss ({loss_v}), gradient norm^2 ({grad_sq}) or value ({value}); the "
                "step was skipped and parameters and state are unchanged (counted in stats['skipped']; "
                "warned once)",
                stacklevel=3,
            )
            return loss_t

        with torch.no_grad():
            result, info, k = self._take_step(closure, snapshot, params, grads, states, loss_v, grad_sq, value)
        self.rule.update(self.param_groups[0], self.rule_state, info, result)
        self.stats["steps"] = k + 1
        self.stats["step_size"] = result.step_size
        self.stats["backtracks"] = result.backtracks
        return loss_t

    def _take_step(
        self,
        closure: Closure | None,
        snapshot: RngSnapshot | None,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        loss_v: float,
        grad_sq: float,
        value: float | None,
    ) -> tuple[SearchResult, StepInfo, int]:
        hp = self.param_groups[0]
        k = int(self.stats["steps"])
        ds = self.direction.prepare(grads, states, hp, k + 1)
        slope = grad_sq if ds.slope is None else float(self._reduce(_materialize(ds.slope).reshape(1))[0])
        info = StepInfo(loss=loss_v, grad_sq=grad_sq, slope=slope, step=k, value=value)
        self.stats["slope"] = slope
        proposal = self.rule.propose(hp, self.rule_state, info)
        eta0 = proposal.step_size
        envelope = hp.get("envelope")
        if envelope is not None:
            eta0 = min(eta0, float(envelope(k)))
        eta0 = min(eta0, _LARGEST_STEP)  # a Polyak step over a vanishing gradient can exceed what float32 holds

        if slope <= 0.0 or eta0 <= 0.0:
            result = SearchResult(0.0, 0, accepted=False, searched=False)
        elif proposal.reference is None:
            torch._foreach_add_(params, ds.direction, alpha=-eta0)
            result = SearchResult(eta0, 0, accepted=True, searched=False)
        else:
            assert closure is not None and snapshot is not None
            result = self._backtrack(closure, snapshot, params, ds, proposal, eta0, slope, hp, loss_v)

        if result.step_size > 0.0:
            self.direction.finish(params, grads, states, hp, ds, result.step_size)
        return result, info, k

    def _backtrack(
        self,
        closure: Closure,
        snapshot: RngSnapshot,
        params: list[Tensor],
        ds: DirectionStep,
        proposal: Proposal,
        eta0: float,
        slope: float,
        hp: dict[str, Any],
        loss: float,
    ) -> SearchResult:
        assert proposal.reference is not None
        max_backtracks = int(hp["max_backtracks"])
        reference = proposal.reference
        resolution = torch.finfo(self._loss_dtype).eps * abs(loss)  # the loss's spacing near its value, 1-2 ulp
        stall: list[bool] = []

        def stalled(eta: float, trial: float) -> bool:
            # This trial shows no decrease at all, the reference is the loss itself (a monotone search), and the
            # decrease it predicts to first order, eta * slope, is within the loss's rounding: every shorter trial
            # rounds to the loss and fails too, so the search would only backtrack to its limit. (A nonmonotone
            # reference above the loss is reached by short trials: such a search never stalls.)
            if reference <= loss and trial >= loss and eta * slope <= resolution:
                stall.append(True)  # why the search ended, for _count_failure
                return True
            return False

        moved = [0.0]  # the step the parameters are at now: each trial moves them by the difference
        # Moving by differences is exact to rounding for moderate steps; a huge first trial (a Polyak step
        # over a tiny gradient) would swamp the parameters' digits (w + a d - a d != w in floating point), so
        # from there on every trial and the final restore start from a copy of w.
        origin = [p.detach().clone() for p in params] if eta0 > _EXACT_TRIALS_ABOVE else None

        def move_to(eta: float) -> None:
            if origin is None:
                torch._foreach_add_(params, ds.direction, alpha=moved[0] - eta)
            else:
                torch._foreach_copy_(params, origin)
                if eta != 0.0:
                    torch._foreach_add_(params, ds.direction, alpha=-eta)
            moved[0] = eta

        def phi(eta: float) -> float:
            move_to(eta)
            snapshot.restore()
            self.stats["forward_calls"] += 1
            return self._scalar(closure())

        feasible = hopeless = None
        kl_rejected = [False]
        at_edge: list[bool] = []
        kl, max_kl = self._kl, hp.get("max_kl")
        if kl is not None and max_kl is not None:
            bound = float(max_kl)

            def feasible() -> bool:
                snapshot.restore()
                value = self._scalar(kl())
                self.stats["kl"] = value
                inside = math.isfinite(value) and value <= bound
                kl_rejected[0] |= not inside
                return inside

            def hopeless() -> bool:
                # After the first trial the region rejected: is the iterate itself outside it? Then so is every
                # shorter trial (to first order), and the search stops instead of backtracking to the limit.
                if not at_edge:
                    move_to(0.0)
                    snapshot.restore()
                    value = self._scalar(kl())
                    self.stats["kl"] = value
                    at_edge.append(not (math.isfinite(value) and value <= bound))
                return at_edge[0]

        # Same batch and same random numbers at every trial, or the test compares different functions.
        with snapshot.forked(), self._running_stats(), torch.no_grad():
            result, accepted_loss = armijo_backtracking(phi, eta0, reference, proposal.c * slope, proposal.shrink,
                                                        max_backtracks, feasible, hopeless, stalled)
            if not result.accepted:
                move_to(0.0)
        if result.accepted:
            self.stats["accepted_loss"] = accepted_loss
        else:
            self._count_failure(result, max_backtracks, max_kl, bool(at_edge and at_edge[0]), kl_rejected[0],
                                bool(stall), loss)
        return result

    def _count_failure(self, result: SearchResult, max_backtracks: int, max_kl: Any, at_edge: bool,
                       kl_rejected: bool, stalled: bool, loss: float) -> None:
        """Count a search that took no step, and warn once per cause."""
        self.stats["failures"] += 1
        if at_edge:
            self._warn_once(
                "kl_edge",
                f"{type(self).__name__}: the policy is already outside its trust region (KL above max_kl="
                f"{max_kl} before this step); no step was taken (counted in stats['failures']; warned once)",
                stacklevel=6,
            )
        elif stalled:
            self.stats["stalls"] += 1
            self._warn_once(
                "stall",
                f"{type(self).__name__}: the search stopped after {result.backtracks} backtracks, where the "
                f"decrease a shorter trial predicts is within the rounding of the "
                f"{str(self._loss_dtype).removeprefix('torch.')} loss ({loss:.6g}); no step was taken (counted "
                "in stats['failures'] and stats['stalls']; warned once)",
                stacklevel=6,
            )
        elif kl_rejected:
            self._warn_once(
                "kl_failure",
                f"{type(self).__name__}: no trial satisfied both the sufficient-decrease test and max_kl="
                f"{max_kl} after {max_backtracks} backtracks (the policy is at the edge of its trust region); "
                "no step was taken (counted in stats['failures']; warned once)",
                stacklevel=6,
            )
        else:
            self._warn_once(
                "failure",
                f"{type(self).__name__}: no trial satisfied the sufficient-decrease test after "
                f"{max_backtracks} backtracks; no step was taken (counted in stats['failures']; warned once)",
                stacklevel=6,
            )
