"""Step-size rules: small objects over explicit state, composed with a direction by the optimizers."""

from rlopt.rules.armijo import ArmijoRule
from rlopt.rules.base import Proposal, RuleState, SearchResult, StepInfo, StepSizeRule, armijo_backtracking
from rlopt.rules.nonmonotone import NonmonotoneRule
from rlopt.rules.policy_polyak import PolicyPolyakRule
from rlopt.rules.polyak import PolyakRule, PolyakSearchRule, polyak_step

__all__ = [
    "ArmijoRule",
    "NonmonotoneRule",
    "PolicyPolyakRule",
    "PolyakRule",
    "PolyakSearchRule",
    "Proposal",
    "RuleState",
    "SearchResult",
    "StepInfo",
    "StepSizeRule",
    "armijo_backtracking",
    "polyak_step",
]
