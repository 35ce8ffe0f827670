"""REINFORCE / GPOMDP Monte-Carlo policy gradients."""

from agents.reinforce.reinforce import ESTIMATORS, REINFORCE

__all__ = ["ESTIMATORS", "REINFORCE"]
