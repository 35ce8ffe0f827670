"""A data-set bilevel problem split over the ranks of a torch.distributed process group.

:class:`DataParallelProblem` gives each rank a disjoint, equal share of both levels' samples and makes the
losses it returns those of the union: their values are the ranks' mean, and so is every derivative autograd
takes of them, of any order (gradients, Hessian-vector products, mixed products, unrolled steps). A solver
run on it (:class:`rlopt.bilevel.BilevelSolver`, unchanged) therefore takes on every rank the decisions one
process would take on the whole data: the same minibatch positions, the same hypergradient, the same lower and
upper step sizes, and the variables stay identical on every rank.

How. With ``M`` the mean over ranks (an all-reduce) and ``L_r`` a rank's loss on its share,

    loss = Mean(L_r(Sync(x), Sync(y))),

where ``Sync`` is the identity whose vector-Jacobian product is ``M`` and ``Mean`` is ``M`` whose
vector-Jacobian product is the identity. The value is ``M L_r``; the gradient is ``M ∇L_r``; a
Hessian-vector product ``∇⟨∇loss, v⟩`` with ``v`` the same on every rank is ``M ∇²L_r v`` (``M`` is linear and
self-adjoint, and ``M v = v``). Each collective runs inside autograd, in the order of the graph, which every
rank builds identically.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlopt.bilevel import _tree
from rlopt.bilevel._tree import Tree
from rlopt.bilevel.problems.base import BilevelProblem
from rlopt.optimizer import resolve_process_group

__all__ = ["DataParallelProblem"]


def _mean_over_ranks(t: Tensor, group: Any) -> Tensor:
    import torch.distributed as dist

    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out / dist.get_world_size(group)


class _Mean(torch.autograd.Function):
    """``M``: the mean over ranks; its vector-Jacobian product is ``M`` again (self-adjoint)."""

    @staticmethod
    def forward(t: Tensor, group: Any) -> Tensor:
        return _mean_over_ranks(t, group)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.group = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _Mean.apply(grad, ctx.group), None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], t: Tensor, group: Any) -> tuple[Tensor, Any]:
        # a batch of tensors (torch.func.jacrev's basis vectors) is reduced as one tensor: every rank vmaps the same
        return _Mean.apply(t, group), in_dims[0]


class _Sync(torch.autograd.Function):
    """The identity on a variable held by every rank, whose vector-Jacobian product is ``M``."""

    @staticmethod
    def forward(t: Tensor, group: Any) -> Tensor:
        return t.view_as(t)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.group = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _Mean.apply(grad, ctx.group), None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], t: Tensor, group: Any) -> tuple[Tensor, Any]:
        return _Sync.apply(t, group), in_dims[0]


class _MeanValue(torch.autograd.Function):
    """A rank's loss as the ranks' mean, with the identity as vector-Jacobian product (``Sync`` averages)."""

    @staticmethod
    def forward(t: Tensor, group: Any) -> Tensor:
        return _mean_over_ranks(t, group)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], t: Tensor, group: Any) -> tuple[Tensor, Any]:
        return _MeanValue.apply(t, group), in_dims[0]


def _share(n: int, rank: int, world: int, name: str) -> Tensor:
    if n % world:
        raise ValueError(f"the {n} {name} samples cannot be split evenly over the {world} ranks: use a multiple of "
                         f"{world} samples (n_train / n_val of the problem)")
    return torch.arange(rank, n, world)


class DataParallelProblem(BilevelProblem):
    """``problem`` with each rank on its share of both levels' samples, and losses over all ranks' data.

    Rank ``r`` of ``W`` owns the samples ``r, r + W, r + 2W, ...`` of each level (so the sample counts must be
    multiples of ``W``); a minibatch of ``batch_size`` samples becomes ``batch_size / W`` on each rank, drawn
    at the same positions of each rank's share (so its batch sizes must be multiples of ``W`` too, or None for
    the full batch). The variables ``x``, ``y`` are held whole by every rank. Every rank must build the same
    problem (same data and seed) and run the same solver with the same seed.

    On-policy problems (whose batches are rollouts, such as :class:`MetaGradientRL`) are not data sets: run
    them data-parallel as the agents are.

    Args:
        problem: a data-set problem (its batches are sample indices).
        process_group: ``"world"`` (the default; torch.distributed must be initialized) or a process group.

    Example (under ``torchrun --nproc_per_node=2``)::

        problem = DataParallelProblem(DataHyperCleaning(corruption=0.5, n_train=800, n_val=400))
        history = BilevelSolver(problem, upper="bisls", lower="bisls", seed=0).run(outer_steps=200)
    """

    def __init__(self, problem: BilevelProblem, process_group: Any = "world") -> None:
        import torch.distributed as dist

        if not isinstance(problem, BilevelProblem):
            raise TypeError(f"Invalid problem: expected a BilevelProblem, got {type(problem).__name__}")
        if (type(problem).sample_lower_batch is not BilevelProblem.sample_lower_batch
                or type(problem).sample_upper_batch is not BilevelProblem.sample_upper_batch):
            raise ValueError(f"Invalid problem: {type(problem).__name__} draws its own batches (an on-policy "
                             "problem); DataParallelProblem splits data-set problems, whose batches are indices")
        process_group = resolve_process_group(process_group)
        if process_group is None:
            raise RuntimeError("DataParallelProblem needs torch.distributed and a process group: call "
                               "init_process_group first (torchrun sets up the environment it reads)")
        self.problem = problem
        self.group = process_group
        self.rank, self.world_size = dist.get_rank(process_group), dist.get_world_size(process_group)
        w = self.world_size
        sizes = ((problem.lower_batch_size, "lower_batch_size"), (problem.upper_batch_size, "upper_batch_size"))
        for size, name in sizes:
            if size is not None and size % w:
                raise ValueError(f"Invalid {name}: {size} is split over the {w} ranks: use a multiple of {w} or None")
        self._lower = _share(problem.n_lower, self.rank, w, "lower-level").to(problem.device)
        self._upper = _share(problem.n_upper, self.rank, w, "upper-level").to(problem.device)
        self.n_lower, self.n_upper = problem.n_lower // w, problem.n_upper // w
        self.lower_batch_size = None if problem.lower_batch_size is None else problem.lower_batch_size // w
        self.upper_batch_size = None if problem.upper_batch_size is None else problem.upper_batch_size // w
        self.device, self.dtype = problem.device, problem.dtype
        self.algorithms, self.algorithms_note = problem.algorithms, problem.algorithms_note
        self.name = problem.name

    def _sync(self, tree: Tree) -> Tree:
        return _tree.tree_map(lambda t: _Sync.apply(t, self.group), tree)

    def initial_x(self) -> Tree:
        return self.problem.initial_x()

    def initial_y(self) -> Tree:
        return self.problem.initial_y()

    def upper_loss(self, x: Tree, y: Tree, batch: Tensor | None = None) -> Tensor:
        idx = self._upper if batch is None else self._upper[batch]
        return _MeanValue.apply(self.problem.upper_loss(self._sync(x), self._sync(y), idx), self.group)

    def lower_loss(self, x: Tree, y: Tree, batch: Tensor | None = None) -> Tensor:
        idx = self._lower if batch is None else self._lower[batch]
        return _MeanValue.apply(self.problem.lower_loss(self._sync(x), self._sync(y), idx), self.group)

    def metrics(self, x: Tree, y: Tree) -> dict[str, float]:
        """The wrapped problem's metrics (on its whole evaluation data, the same on every rank)."""
        return self.problem.metrics(x, y)

    def reset(self) -> None:
        self.problem.reset()

    def __repr__(self) -> str:
        return f"DataParallelProblem({self.problem!r}, rank={self.rank}, world_size={self.world_size})"
