"""Policy-gradient agents with the stable-baselines3 API and any rlopt step size.

``rlopt.agents.PPO``, ``rlopt.agents.A2C`` and ``rlopt.agents.REINFORCE`` are stable-baselines3
``BaseAlgorithm`` subclasses: SB3's ``evaluate_policy``, callbacks, logger and zip save/load work unchanged.
``rlopt.agents.ReMA`` trains a meta-thinking agent and a reasoning agent together by multi-agent RL
(``rlopt.agents.rema``).
"""

from rlopt.agents.a2c import A2C
from rlopt.agents.common.env_util import make_eval_env
from rlopt.agents.common.serialization import load_vec_normalize, save_vec_normalize
from rlopt.agents.ppo import PPO
from rlopt.agents.reinforce import REINFORCE
from rlopt.agents.rema import ReMA

__all__ = ["A2C", "PPO", "REINFORCE", "ReMA", "load_vec_normalize", "make_eval_env", "save_vec_normalize"]
