"""ReMA: two-agent meta-thinking RL (Wan et al., arXiv 2503.09501).

A meta-thinking agent writes a plan for a question, a reasoning agent follows it and answers in the marked
format; both are trained by multi-agent RL (REINFORCE++ with separate weights and the alternating
schedule, or GRPO with shared weights and the turn-level ratio), with any rlopt optimizer per agent.

Example:
    >>> from rlopt.agents.rema import ReMA
    >>> agent = ReMA(batch_questions=2, eval_tasks=[], ood_tasks=[])
    >>> agent.roles
    ('meta', 'reasoner')
"""

from rlopt.agents.rema.config import ALGORITHMS, MODES, PAPER_FILTER, ReMAConfig
from rlopt.agents.rema.losses import grpo_advantages, k3_kl, policy_loss, reinforce_pp_advantages, turn_level_ratio
from rlopt.agents.rema.policy import CharTokenizer, Generation, Policy, TinyConfig, TinyPolicy
from rlopt.agents.rema.rema import ReMA
from rlopt.agents.rema.rollout import (
    FINISH,
    META_REWARDS,
    PAPER_PROMPTS,
    ROLES,
    TERMINATION,
    TINY_PROMPTS,
    Prompts,
    RewardConfig,
    Rollout,
    Sampling,
    Segment,
    consistency,
    demonstrations,
    success_rates,
)

__all__ = [
    "ALGORITHMS",
    "FINISH",
    "META_REWARDS",
    "MODES",
    "PAPER_FILTER",
    "PAPER_PROMPTS",
    "ROLES",
    "TERMINATION",
    "TINY_PROMPTS",
    "CharTokenizer",
    "Generation",
    "Policy",
    "Prompts",
    "ReMA",
    "ReMAConfig",
    "RewardConfig",
    "Rollout",
    "Sampling",
    "Segment",
    "TinyConfig",
    "TinyPolicy",
    "consistency",
    "demonstrations",
    "grpo_advantages",
    "k3_kl",
    "policy_loss",
    "reinforce_pp_advantages",
    "success_rates",
    "turn_level_ratio",
]
