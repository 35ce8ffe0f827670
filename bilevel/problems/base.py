"""The small interface every bilevel problem implements, and shared helpers."""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import Tensor

from rlopt.bilevel._tree import Tree
from rlopt.validation import check_half_open, check_int


def check_batch_size(value: int | None, name: str, n: int) -> None:
    """Raise ``ValueError`` unless ``value`` is ``None`` (full batch) or an int in ``[1, n]``."""
    check_int(name, value, 1, n, allow_none=True)


def check_fraction(value: float, name: str, low: float = 0.0, high: float = 1.0) -> None:
    """Raise ``ValueError`` unless ``low <= value < high``."""
    check_half_open(name, value, low, high)


def split_indices(n: int, sizes: list[int], generator: torch.Generator) -> list[Tensor]:
    """A random partition of ``range(n)`` into consecutive groups of the given sizes (sum <= n)."""
    if sum(sizes) > n:
        raise ValueError(f"split sizes {sizes} exceed the {n} available samples")
    perm = torch.randperm(n, generator=generator)
    out = []
    start = 0
    for size in sizes:
        out.append(perm[start : start + size])
        start += size
    return out


class BilevelProblem(abc.ABC):
    """``min_x f(x, y*(x))`` s.t. ``y*(x) = argmin_y g(x, y)``, with minibatch access to both losses.

    Subclasses define the data, the initial points and the two losses. A *batch* is a tensor of sample
    indices into the level's data set, or ``None`` for the full data set. Randomness is passed: batches are
    drawn with a ``torch.Generator`` the caller owns.

    On-policy problems (reinforcement learning) have no fixed data set: their batch is fresh data collected
    at the current variables, so the samplers receive ``(x, y)`` and may return any object their losses
    accept (e.g. a rollout); data-set problems ignore ``(x, y)``. Such a problem sets :attr:`algorithms` to
    the solver algorithms that apply to it and resets its collection state in :meth:`reset`.

    Attributes:
        n_upper: number of upper-level (validation) samples.
        n_lower: number of lower-level (training) samples.
        upper_batch_size: default batch size for the upper level (``None`` = full batch).
        lower_batch_size: default batch size for the lower level (``None`` = full batch).
        device: where the data and variables live.
        dtype: floating dtype of data and variables.
        algorithms: names of the :class:`rlopt.bilevel.BilevelSolver` algorithms that apply (``None``: all).
        algorithms_note: why the others do not apply (quoted in the solver's error).
    """

    name: str = "problem"
    n_upper: int
    n_lower: int
    upper_batch_size: int | None
    lower_batch_size: int | None
    device: torch.device
    dtype: torch.dtype
    algorithms: tuple[str, ...] | None = None
    algorithms_note: str = ""

    @abc.abstractmethod
    def initial_x(self) -> Tree:
        """A fresh copy of the initial upper variable."""

    @abc.abstractmethod
    def initial_y(self) -> Tree:
        """A fresh copy of the initial lower variable."""

    @abc.abstractmethod
    def upper_loss(self, x: Tree, y: Tree, batch: Tensor | None = None) -> Tensor:
        """``f(x, y)`` on the upper batch (scalar)."""

    @abc.abstractmethod
    def lower_loss(self, x: Tree, y: Tree, batch: Tensor | None = None) -> Tensor:
        """``g(x, y)`` on the lower batch (scalar)."""

    @abc.abstractmethod
    def metrics(self, x: Tree, y: Tree) -> dict[str, float]:
        """Evaluation numbers at ``(x, y)`` (e.g. validation and test accuracy), without a graph."""

    def sample_upper_batch(self, generator: torch.Generator, x: Tree | None = None, y: Tree | None = None) -> Any:
        """Indices of an upper-level minibatch (without replacement), or ``None`` for full batch.

        ``x``, ``y`` are the current variables (detached); data-set problems ignore them, on-policy problems
        collect their batch with them.
        """
        return self._sample(self.n_upper, self.upper_batch_size, generator)

    def sample_lower_batch(self, generator: torch.Generator, x: Tree | None = None, y: Tree | None = None) -> Any:
        """Indices of a lower-level minibatch (without replacement), or ``None`` for full batch (see above)."""
        return self._sample(self.n_lower, self.lower_batch_size, generator)

    def reset(self) -> None:
        """Restart any state the problem keeps between batches (an on-policy problem's environments).

        Called by the solver when it (re)starts, so that two runs with the same seed are identical. Data-set
        problems keep no such state: nothing to do.
        """
        return None

    def _sample(self, n: int, batch_size: int | None, generator: torch.Generator) -> Tensor | None:
        if batch_size is None or batch_size >= n:
            return None
        # The permutation is drawn on the generator's device (CPU by default) and moved afterwards, so that
        # the stream of batches is the same whatever device the data lives on.
        idx = torch.randperm(n, generator=generator, device=generator.device)[:batch_size]
        return idx.to(self.device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_lower={self.n_lower}, n_upper={self.n_upper}, "
            f"lower_batch_size={self.lower_batch_size}, upper_batch_size={self.upper_batch_size}, "
            f"device={self.device}, dtype={self.dtype})"
        )
