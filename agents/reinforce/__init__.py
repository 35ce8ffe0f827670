"""REINFORCE / GPOMDP Monte-Carlo policy gradients."""

from rlopt.agents.reinforce.reinforce import ESTIMATORS, REINFORCE

__all__ = ["ESTIMATORS", "REINFORCE"]
