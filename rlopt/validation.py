"""Argument checks shared by every layer: each raises ``ValueError`` naming the argument, its value and the
allowed range, and returns the value normalised (a ``float`` or an ``int``), so a constructor reads
``self.n = check_int("n", n, 1)``. Standard library only."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any, TypeVar

__all__ = [
    "check_at_least",
    "check_choice",
    "check_closed",
    "check_finite",
    "check_half_open",
    "check_int",
    "check_open",
    "check_positive",
]

T = TypeVar("T")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_open(name: str, value: Any, low: float, high: float) -> float:
    """Require ``low < value < high``."""
    if not (_is_real(value) and low < value < high):
        raise ValueError(f"Invalid {name}: {value!r}, expected {low} < {name} < {high}")
    return float(value)


def check_closed(name: str, value: Any, low: float, high: float) -> float:
    """Require ``low <= value <= high``."""
    if not (_is_real(value) and low <= value <= high):
        raise ValueError(f"Invalid {name}: {value!r}, expected {low} <= {name} <= {high}")
    return float(value)


def check_half_open(name: str, value: Any, low: float, high: float) -> float:
    """Require ``low <= value < high``."""
    if not (_is_real(value) and low <= value < high):
        raise ValueError(f"Invalid {name}: {value!r}, expected {low} <= {name} < {high}")
    return float(value)


def check_positive(name: str, value: Any, *, allow_none: bool = False) -> Any:
    """Require a finite ``value > 0`` (or None when allowed); returns it as a float (or None)."""
    if value is None and allow_none:
        return None
    if not (_is_real(value) and value > 0):
        none = " or None" if allow_none else ""
        raise ValueError(f"Invalid {name}: {value!r}, expected a finite number > 0{none}")
    return float(value)


def check_at_least(name: str, value: Any, low: float, *, allow_none: bool = False) -> Any:
    """Require a finite ``value >= low`` (or None when allowed); returns it as a float (or None)."""
    if value is None and allow_none:
        return None
    if not (_is_real(value) and value >= low):
        none = " or None" if allow_none else ""
        raise ValueError(f"Invalid {name}: {value!r}, expected a finite number >= {low}{none}")
    return float(value)


def check_int(name: str, value: Any, low: int, high: int | None = None, *, allow_none: bool = False) -> Any:
    """Require an integer in ``[low, high]`` (``high=None``: no upper bound; None when allowed); returns an
    ``int`` (NumPy integers are accepted, booleans are not)."""
    if value is None and allow_none:
        return None
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= low
            and (high is None or int(value) <= high)):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        none = " or None" if allow_none else ""
        raise ValueError(f"Invalid {name}: {value!r}, expected an integer {span}{none}")
    return int(value)


def check_choice(name: str, value: T, choices: Collection[Any]) -> T:
    """Require ``value`` to be one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"Invalid {name}: {value!r}, expected one of {allowed}")
    return value


def check_finite(name: str, value: Any) -> float:
    """Require a finite real number."""
    if not _is_real(value):
        raise ValueError(f"Invalid {name}: {value!r}, expected a finite number")
    return float(value)
