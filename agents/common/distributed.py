"""Data-parallel agents on ``torch.distributed``: what the ranks of one training run exchange.

Each rank steps its own share of the env copies on its own device and seed stream; everything a decision is
taken from is then made the same on every rank, so the ranks stay bit-identical without a parameter broadcast
after the first:

* gradients: averaged in one flat all-reduce per backward (:meth:`DataParallel.average_gradients`), before
  clipping or a step-size rule reads them;
* the step-size rules' scalars (losses, ``||g||^2``, trial losses, KL): the optimizers' ``process_group``;
* statistics that normalise or bound a loss (the advantages' mean and standard deviation, the surrogate's
  infimum, the mean KL of PPO's ``target_kl``, the observation statistics): over the union of the ranks' data;
* episode statistics: gathered, so every rank holds the same ``ep_info_buffer`` (and return estimate);
* a callback that stops training: honoured by every rank at the end of the rollout.

The policy is not wrapped in ``DistributedDataParallel``: its losses come from methods other than ``forward``
(``log_prob_and_entropy``, ``value``), and a line search evaluates them again without gradients, which DDP's
reducer does not expect. One flat all-reduce of the gradients is what DDP's buckets amount to for networks of
this size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

import rlopt
from rlopt.optimizer import resolve_process_group

__all__ = ["BUCKET_BYTES", "DataParallel", "resolve_data_parallel", "torchrun_process_group", "with_process_group"]

#: the most bytes of gradients all-reduced at once (DistributedDataParallel's default ``bucket_cap_mb``)
BUCKET_BYTES = 25 * 2**20


class DataParallel:
    """The ranks of a process group, seen from one of them.

    Args:
        group: the torch.distributed process group (``dist.group.WORLD`` for all processes).
        device: the device of this rank's tensors (collectives run on it: NCCL needs CUDA tensors).
    """

    def __init__(self, group: Any, device: torch.device) -> None:
        import torch.distributed as dist

        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.device = device

    # ------------------------------------------------------------------------------------------ reductions
    def sum(self, values: Tensor) -> Tensor:
        """The sum over ranks of ``values`` (a float64 copy; one collective)."""
        import torch.distributed as dist

        out = values.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def mean(self, values: Tensor) -> Tensor:
        """The mean over ranks of ``values`` (float64; one collective)."""
        return self.sum(values) / self.world_size

    def max(self, values: Tensor) -> Tensor:
        """The elementwise maximum over ranks of ``values`` (float64; one collective)."""
        import torch.distributed as dist

        out = values.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=self.group)
        return out

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor, int]:
        """``(mean, unbiased std, count)`` of the rows of ``x`` over the union of the ranks' rows (one
        collective), as ``x.mean(0)``, ``x.std(0)`` and ``len(x)`` of one process holding them all."""
        flat = x.detach().reshape(x.shape[0], -1).to(torch.float64)
        total = self.sum(torch.cat((flat.new_tensor([flat.shape[0]]), flat.sum(0), flat.square().sum(0))))
        n = int(total[0])
        d = flat.shape[1]
        mean = total[1:1 + d] / max(n, 1)
        var = (total[1 + d:] - n * mean.square()).clamp_min(0.0) / max(n - 1, 1)
        return mean.to(x.dtype).reshape(x.shape[1:]), var.sqrt().to(x.dtype).reshape(x.shape[1:]), n

    def average_gradients(self, grads: list[Tensor]) -> None:
        """Replace every gradient by its mean over the ranks: one all-reduce per bucket of at most
        ``BUCKET_BYTES`` (DDP's default size) of gradients of one dtype, each bucket the concatenation of its
        gradients (one bucket for the agents' networks; bounded extra memory for a language model's).

        Every rank must pass gradients of the same shapes in the same order (the same loss on its own data).
        """
        import torch.distributed as dist

        buckets: list[list[Tensor]] = []
        current: dict[torch.dtype, tuple[list[Tensor], int]] = {}
        for g in grads:
            bucket, size = current.get(g.dtype, ([], 0))
            bucket.append(g)
            size += g.numel() * g.element_size()
            if size >= BUCKET_BYTES:
                buckets.append(bucket)
                bucket, size = [], 0
            current[g.dtype] = (bucket, size)
        buckets.extend(bucket for bucket, _ in current.values() if bucket)
        for bucket in buckets:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            flat /= self.world_size
            for g, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                g.copy_(part.view_as(g))

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (one collective per floating-point dtype)."""
        import torch.distributed as dist

        tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
        for dtype in sorted({t.dtype for t in tensors}, key=str):
            group = [t for t in tensors if t.dtype == dtype]
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            dist.broadcast(flat, src=dist.get_global_rank(self.group, 0), group=self.group)
            with torch.no_grad():
                for t, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
                    t.copy_(part.view_as(t))

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every rank."""
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(t, src=dist.get_global_rank(self.group, 0), group=self.group)
        return int(t[0])

    def check_same(self, name: str, value: int) -> None:
        """Raise ValueError on every rank unless every rank has the same ``value`` (one collective)."""
        extremes = self.max(torch.tensor([value, -value], dtype=torch.float64))
        low, high = -int(extremes[1]), int(extremes[0])
        if low != high:
            raise ValueError(f"{name} differs between the ranks of the data-parallel run (from {low} to {high}): "
                             "every rank must have the same")

    def gather(self, values: Tensor) -> list[Tensor]:
        """Every rank's 1-D ``values`` (of any lengths), in rank order (two collectives)."""
        import torch.distributed as dist

        values = values.detach().reshape(-1).to(self.device, torch.float64)
        size = torch.tensor([values.numel()], dtype=torch.float64, device=self.device)
        sizes = [torch.empty_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size, group=self.group)
        counts = [int(n) for n in sizes]
        padded = torch.zeros(max(max(counts), 1), dtype=torch.float64, device=self.device)
        padded[: values.numel()] = values
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded, group=self.group)
        return [part[:n] for part, n in zip(parts, counts, strict=True)]

    def gather_episodes(self, returns: Tensor, lengths: Tensor, stop: bool) -> tuple[list[float], list[int], bool]:
        """Every rank's ended episodes, in rank order, and whether any rank asked to stop (two collectives)."""
        local = torch.cat((returns.detach().double().reshape(-1), lengths.detach().double().reshape(-1),
                           torch.tensor([float(stop)], dtype=torch.float64, device=returns.device)))
        rets: list[float] = []
        lens: list[int] = []
        any_stop = False
        for part in self.gather(local):
            n = (part.numel() - 1) // 2
            rets.extend(part[:n].tolist())
            lens.extend(int(v) for v in part[n:2 * n].tolist())
            any_stop = any_stop or bool(part[-1])
        return rets, lens, any_stop


@contextmanager
def torchrun_process_group(device: str) -> Iterator[tuple[str, int]]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment) for the block: NCCL on
    CUDA (this rank on ``cuda:LOCAL_RANK``), gloo on the CPU; left at the end after a barrier. Yields ``(this
    rank's device, its rank)``; without torchrun (or with a group already initialized) ``(device, rank)``
    unchanged."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield device, dist.get_rank() if dist.is_initialized() else 0
        return
    if torch.device(device).type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    try:
        yield device, dist.get_rank()
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


def resolve_data_parallel(process_group: Any, device: torch.device) -> DataParallel | None:
    """``process_group`` as the agents take it (:func:`rlopt.optimizer.resolve_process_group`): data parallelism
    over the group when it has more than one rank, else None."""
    import torch.distributed as dist

    group = resolve_process_group(process_group)
    if group is None or dist.get_world_size(group) == 1:
        return None
    return DataParallel(group, device)


def with_process_group(optimizer: Any, kwargs: Mapping[str, Any] | None, dp: DataParallel | None) -> dict[str, Any]:
    """``kwargs`` of ``optimizer`` (a name or class) with, for an rlopt rule, ``process_group`` = the agent's: the
    rule decides from its ranks' mean, or alone when the agent trains alone, whatever else the program initialized
    (unless ``kwargs`` sets one)."""
    kwargs = dict(kwargs or {})
    cls = rlopt.optimizer_spec(optimizer).cls
    if isinstance(cls, type) and issubclass(cls, rlopt.StepSizeOptimizer):
        kwargs.setdefault("process_group", None if dp is None else dp.group)
    return kwargs
