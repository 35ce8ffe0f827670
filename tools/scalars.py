"""The one TensorBoard path of the project: stable-baselines3's logger, for the runs that are not SB3 algorithms.

The agents log through the logger SB3 configures for them; ReMA, the bilevel command and the optimizer
comparison log through :func:`tensorboard_logger` here, so every event file is written the same way and read
back by :func:`rlopt.tools.plotting.read_scalars`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["tensorboard_logger", "write_scalars"]


def tensorboard_logger(folder: str | os.PathLike[str]) -> Any:
    """An SB3 ``Logger`` writing TensorBoard events into ``folder`` (created if needed)."""
    from stable_baselines3.common.logger import configure

    return configure(os.fspath(folder), ["tensorboard"])


def write_scalars(logger: Any, scalars: Mapping[str, float], step: int) -> None:
    """Record every finite value of ``scalars`` under its tag and write them at ``step``."""
    for tag, value in scalars.items():
        if math.isfinite(value):
            logger.record(tag, float(value))
    logger.dump(step)
