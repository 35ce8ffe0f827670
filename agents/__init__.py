"""Policy-gradient agents with the stable-baselines3 API and any rlopt step size.

``agents.PPO``, ``agents.A2C`` and ``agents.REINFORCE`` are stable-baselines3 ``BaseAlgorithm`` subclasses:
SB3's ``evaluate_policy``, callbacks, logger and zip save/load work unchanged. ``agents.ReMA`` trains a
meta-thinking agent and a reasoning agent together by multi-agent RL (``agents.rema``).
"""

from agents.a2c import A2C
from agents.common.env_util import make_eval_env
from agents.ppo import PPO
from agents.reinforce import REINFORCE
from agents.rema import ReMA

__all__ = ["A2C", "PPO", "REINFORCE", "ReMA", "make_eval_env"]
