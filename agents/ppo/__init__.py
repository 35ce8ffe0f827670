"""PPO: clipped-surrogate proximal policy optimization."""

from rlopt.agents.ppo.ppo import PPO

__all__ = ["PPO"]
