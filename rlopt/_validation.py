"""Constructor checks shared by the optimizers: each raises ValueError naming the argument and its range."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_open(name: str, value: Any, low: float, high: float) -> None:
    """Require ``low < value < high``."""
    if not (_is_real(value) and low < value < high):
        raise ValueError(f"Invalid {name}: {value!r}, expected {low} < {name} < {high}")


def check_positive(name: str, value: Any, *, allow_none: bool = False) -> None:
    """Require a finite ``value > 0`` (or None when allowed)."""
    if value is None and allow_none:
        return
    if not (_is_real(value) and value > 0):
        none = " or None" if allow_none else ""
        raise ValueError(f"Invalid {name}: {value!r}, expected a finite number > 0{none}")


def check_at_least(name: str, value: Any, low: float) -> None:
    """Require a finite ``value >= low``."""
    if not (_is_real(value) and value >= low):
        raise ValueError(f"Invalid {name}: {value!r}, expected a finite number >= {low}")


def check_half_open(name: str, value: Any, low: float, high: float) -> None:
    """Require ``low <= value < high``."""
    if not (_is_real(value) and low <= value < high):
        raise ValueError(f"Invalid {name}: {value!r}, expected {low} <= {name} < {high}")


def check_int(name: str, value: Any, low: int) -> None:
    """Require an integer ``value >= low``."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"Invalid {name}: {value!r}, expected an integer >= {low}")


def check_choice(name: str, value: Any, choices: Collection[Any]) -> None:
    """Require ``value`` to be one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"Invalid {name}: {value!r}, expected one of {allowed}")


def check_finite(name: str, value: Any) -> None:
    """Require a finite real number."""
    if not _is_real(value):
        raise ValueError(f"Invalid {name}: {value!r}, expected a finite number")
