"""The PPO loss terms (:mod:`rlopt.agents.common.policy_loss`, where A2C and REINFORCE find them too), under the
name PPO's users know."""

from rlopt.agents.common.policy_loss import (
    KL_STOP_FACTOR,
    Surrogate,
    approx_kl,
    clipped_surrogate,
    kl_stop,
    surrogate_infimum,
    value_loss,
)

__all__ = [
    "KL_STOP_FACTOR",
    "Surrogate",
    "approx_kl",
    "clipped_surrogate",
    "kl_stop",
    "surrogate_infimum",
    "value_loss",
]
