"""PPO: clipped-surrogate proximal policy optimization."""

from agents.ppo.ppo import PPO

__all__ = ["PPO"]
