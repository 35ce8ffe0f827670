"""Shared bases of the agents: rollout buffer and GAE, policies, env resolution, optimizer plumbing."""

from rlopt.agents.common.base import OnPolicyAgent
from rlopt.agents.common.buffer import RolloutBatch, RolloutBuffer, compute_gae
from rlopt.agents.common.optim import OPTIMIZER_NAMES, build_optimizer
from rlopt.agents.common.policies import ActorCriticPolicy

__all__ = [
    "OPTIMIZER_NAMES",
    "ActorCriticPolicy",
    "OnPolicyAgent",
    "RolloutBatch",
    "RolloutBuffer",
    "build_optimizer",
    "compute_gae",
]
