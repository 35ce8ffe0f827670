"""A2C: synchronous advantage actor-critic."""

from rlopt.agents.a2c.a2c import A2C

__all__ = ["A2C"]
