r"""The policy-loss terms, once: the clipped surrogate, the (optionally clipped) value loss, the approximate KL
and the ``target_kl`` stop, shared by :class:`rlopt.agents.PPO` and :class:`rlopt.agents.sb3.PPO` (also as
:mod:`rlopt.agents.ppo.loss`); the approximate KL and the surrogate's infimum serve A2C's and REINFORCE's
trust regions and lower bounds too.

With :math:`\rho = \exp(\log\pi - \log\pi_{old})` and advantages :math:`A`,

.. math::
    L_{clip} = -\operatorname{mean}\min(\rho A, \operatorname{clip}(\rho, 1-\epsilon, 1+\epsilon) A), \qquad
    L_{V} = \operatorname{mean}(R - V_{clip})^2, \qquad
    \widehat{KL} = \operatorname{mean}((\rho - 1) - \log\rho)

(the last is Schulman's low-variance estimator of :math:`KL(\pi_{old} \| \pi)`, as SB3 and CleanRL log it).
``target_kl`` means what it means in stable-baselines3: before each minibatch step the approximate KL of the
current policy on that minibatch is computed, and once it exceeds ``1.5 * target_kl`` the update stops without
taking that step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "KL_STOP_FACTOR",
    "Surrogate",
    "approx_kl",
    "clipped_surrogate",
    "kl_stop",
    "surrogate_infimum",
    "value_loss",
]

#: the update stops once the approximate KL exceeds this multiple of ``target_kl`` (SB3's factor)
KL_STOP_FACTOR = 1.5


class Surrogate(NamedTuple):
    """The clipped-surrogate loss and the quantities logged with it."""

    loss: Tensor
    ratio: Tensor
    log_ratio: Tensor

    def approx_kl(self) -> Tensor:
        """:func:`approx_kl` of this evaluation."""
        return approx_kl(self.log_ratio, self.ratio)

    def clip_fraction(self, clip_range: float) -> Tensor:
        """The fraction of samples whose ratio is outside ``[1 - clip_range, 1 + clip_range]``."""
        return ((self.ratio - 1.0).abs() > clip_range).float().mean()


def clipped_surrogate(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float) -> Surrogate:
    """:math:`L_{clip}` of the module docstring, with the ratio it was computed from."""
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    surrogate = torch.min(advantages * ratio, advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range))
    return Surrogate(-surrogate.mean(), ratio, log_ratio)


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip_range_vf: float | None) -> Tensor:
    """:math:`L_V`: the mean squared error to the returns, of values clipped to ``old ± clip_range_vf``."""
    if clip_range_vf is not None:
        values = old_values + (values - old_values).clamp(-clip_range_vf, clip_range_vf)
    return (returns - values).pow(2).mean()


def approx_kl(log_ratio: Tensor, ratio: Tensor | None = None) -> Tensor:
    """:math:`\\widehat{KL}` of the module docstring (``ratio = exp(log_ratio)`` if not given)."""
    if ratio is None:
        ratio = log_ratio.exp()
    return ((ratio - 1.0) - log_ratio).mean()


def kl_stop(kl: float | Tensor, target_kl: float | None) -> bool:
    """Whether an update stops before a minibatch whose approximate KL is ``kl``."""
    return target_kl is not None and float(kl) > KL_STOP_FACTOR * target_kl


def surrogate_infimum(advantages: Tensor, clip_range: float) -> Tensor:
    r"""The infimum over all ratios of :math:`L_{clip}` on a minibatch.

    :math:`\min(\rho A, \operatorname{clip}(\rho, 1-\epsilon, 1+\epsilon) A)` is at most
    :math:`(1+\epsilon) A` for :math:`A > 0` and :math:`(1-\epsilon) A` for :math:`A \le 0` (reached at
    :math:`\rho \ge 1+\epsilon` and :math:`\rho \le 1-\epsilon`), so the loss is bounded below by
    ``-mean(where(A > 0, (1 + clip_range) A, (1 - clip_range) A))``.

    Example:
        >>> import torch
        >>> round(float(surrogate_infimum(torch.tensor([1.0, -1.0]), 0.2)), 6)
        -0.2
    """
    return -torch.where(advantages > 0, (1.0 + clip_range) * advantages, (1.0 - clip_range) * advantages).mean()
