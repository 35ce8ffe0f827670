"""The closure protocol shared by every rlopt optimizer, and the machinery for trial evaluations.

The protocol
------------
``loss = opt.step(closure)``

* ``closure()`` takes no arguments and returns the loss on the *current minibatch* as a scalar tensor.
* It must **not** call ``backward()`` and must not zero gradients in place: the optimizer clears the
  gradients (``set_to_none``), calls ``backward()`` on the first evaluation, and evaluates the closure again
  under ``torch.no_grad()`` at trial points ``w - eta * d``. A closure that calls ``backward()`` is detected on
  the first evaluation and raises ``RuntimeError``.
* Every evaluation within one ``step`` sees the same random numbers: the global RNG state (CPU and the CUDA
  devices holding parameters) is captured before the first evaluation and restored before each trial, so
  dropout masks and random augmentations inside the closure are identical and the sufficient-decrease test
  compares values of one function. After the step the RNG is where a single evaluation would have left it.
  The RNG is forked (``torch.random.fork_rng``), never reseeded.
* Normalisation layers with running statistics (BatchNorm, InstanceNorm with ``track_running_stats``) that
  run in training mode during a trial get their running statistics restored afterwards, so the statistics
  are those of a single evaluation at the current iterate.
* ``step`` returns the loss of the first evaluation (at the current iterate).

``opt.step(loss=loss)`` is the alternative for rules that need no re-evaluation (the Polyak family): the
caller computed ``loss`` and already ran ``loss.backward()``. Line-search rules raise ``ValueError`` without
a closure.

Every decision of a rule is a function of scalars that can be all-reduced across data-parallel ranks
(minibatch loss values, ``||g||^2`` and ``g^T d``); see :meth:`rlopt.StepSizeOptimizer._reduce`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _NormBase

Closure = Callable[[], Tensor]

__all__ = ["Closure", "RngSnapshot", "preserve_running_stats"]


class RngSnapshot:
    """The global RNG state (CPU and the given CUDA devices) at one moment, restorable at will.

    Args:
        cuda_devices: indices of the CUDA devices whose generators the closure may use.
    """

    def __init__(self, cuda_devices: Sequence[int] = ()) -> None:
        self.cuda_devices = list(cuda_devices)
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]

    def restore(self) -> None:
        """Set the global generators back to the captured state."""
        torch.set_rng_state(self.cpu_state)
        for device, state in zip(self.cuda_devices, self.cuda_states, strict=True):
            torch.cuda.set_rng_state(state, device)

    @contextmanager
    def forked(self) -> Iterator[None]:
        """Run a block whose RNG consumption is undone when it exits (the state on entry is kept)."""
        with torch.random.fork_rng(devices=self.cuda_devices, enabled=True):
            yield


@contextmanager
def preserve_running_stats() -> Iterator[None]:
    """Restore the running statistics of every normalisation layer that runs a forward inside the block.

    A global forward pre-hook snapshots the buffers of a training-mode normalisation layer the first time it
    runs; on exit the snapshots are copied back. Outside the block no hook is installed, so there is no cost
    on the ordinary forward path.
    """
    saved: dict[int, tuple[_NormBase, list[tuple[Tensor, Tensor]]]] = {}

    def hook(module: torch.nn.Module, args: object) -> None:
        if (
            isinstance(module, _NormBase)
            and module.training
            and module.track_running_stats
            and id(module) not in saved
        ):
            buffers = [module.running_mean, module.running_var, module.num_batches_tracked]
            saved[id(module)] = (module, [(b, b.clone()) for b in buffers if isinstance(b, Tensor)])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
        with torch.no_grad():
            for _, pairs in saved.values():
                for buffer, copy in pairs:
                    buffer.copy_(copy)
