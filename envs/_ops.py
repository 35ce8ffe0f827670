"""The array operations a `TorchVecEnv` step is written in, for torch tensors and for NumPy arrays.

An environment's transition is written once against these operations (``xp = ops(state)``; ``xp.cos``,
``xp.where``, ``xp.astype``, ...) and runs on either kind of array: torch for every device and for the
compiled kernel, NumPy for small eager batches on the CPU, where an operation's fixed cost is what a step
pays (about 0.5 us per NumPy call on 8 values against 2-3 us per torch call). Arithmetic and comparison
operators are the arrays' own; both follow IEEE 754 elementwise, so the two agree to the last bit except in
the transcendental functions, whose implementations may differ by an ulp.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import torch

#: a torch.Tensor or a numpy.ndarray (the transition's functions accept either, consistently)
Array: TypeAlias = Any


class TorchOps:
    """The operations on torch tensors."""

    host = False  # a branch on values costs a device synchronisation
    float32: Any = torch.float32
    float64: Any = torch.float64
    int64: Any = torch.int64
    bool: Any = torch.bool
    cos: Any = torch.cos
    sin: Any = torch.sin
    square: Any = torch.square
    ceil: Any = torch.ceil
    remainder: Any = torch.remainder
    where: Any = torch.where
    clip: Any = torch.clamp
    zeros_like: Any = torch.zeros_like
    ones_like: Any = torch.ones_like
    full_like: Any = torch.full_like

    @staticmethod
    def astype(x: Array, dtype: Any) -> Array:
        return x.to(dtype)

    @staticmethod
    def stack(arrays: Any, axis: int = 0) -> Array:
        return torch.stack(arrays, dim=axis)

    @staticmethod
    def masked_fill(x: Array, mask: Array, value: float) -> Array:
        return x.masked_fill(mask, value)

    @staticmethod
    def assign(dst: Array, src: Array) -> None:
        """``dst[...] = src`` in place (casting as a copy does)."""
        dst.copy_(src)

    @staticmethod
    def add_(dst: Array, src: Array) -> None:
        dst.add_(src)

    @staticmethod
    def rows_as_columns(x: Array, dtype: Any) -> Array:
        """``x.T`` as a new C-contiguous array of ``dtype`` (never a view of ``x``)."""
        return x.t().to(dtype, memory_format=torch.contiguous_format, copy=True)


class NumpyOps:
    """The same operations on NumPy arrays (host memory: a branch on values is free)."""

    host = True
    float32: Any = np.float32
    float64: Any = np.float64
    int64: Any = np.int64
    bool: Any = np.bool_
    cos: Any = np.cos
    sin: Any = np.sin
    square: Any = np.square
    ceil: Any = np.ceil
    remainder: Any = np.remainder
    where: Any = np.where
    clip: Any = np.clip
    zeros_like: Any = np.zeros_like
    ones_like: Any = np.ones_like
    full_like: Any = np.full_like

    @staticmethod
    def astype(x: Array, dtype: Any) -> Array:
        return x.astype(dtype, copy=False)

    @staticmethod
    def stack(arrays: Any, axis: int = 0) -> Array:
        # np.array builds the same stack as np.stack for equal shapes, at a quarter of its call cost
        stacked = np.array(arrays)
        return stacked if axis == 0 else np.ascontiguousarray(np.moveaxis(stacked, 0, axis))

    @staticmethod
    def masked_fill(x: Array, mask: Array, value: float) -> Array:
        return np.where(mask, np.asarray(value, dtype=x.dtype), x)

    @staticmethod
    def assign(dst: Array, src: Array) -> None:
        np.copyto(dst, src, casting="unsafe")

    @staticmethod
    def add_(dst: Array, src: Array) -> None:
        np.add(dst, src, out=dst, casting="unsafe")

    @staticmethod
    def rows_as_columns(x: Array, dtype: Any) -> Array:
        return np.array(x.T, dtype=dtype, order="C")


def ops(x: Array) -> type[TorchOps] | type[NumpyOps]:
    """The operations for ``x``'s kind of array."""
    return NumpyOps if isinstance(x, np.ndarray) else TorchOps
