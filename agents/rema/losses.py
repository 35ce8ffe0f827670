"""Advantages, importance ratios, the k3 KL estimator and the clipped policy loss of ReMA.

References: ReMA (Wan et al., arXiv 2503.09501) Eq. 12/13 (turn-level ratio) and App. D; REINFORCE++
(Hu, arXiv 2501.03262); GRPO (Shao et al., arXiv 2402.03300); the k3 estimator (Schulman, "Approximating KL
divergence", 2020).

Shapes: ``logp``, ``old_logp``, ``ref_logp``, ``mask`` and token advantages are ``(N, T)`` over N segments
(one assistant turn each); ``mask`` is 1 on the tokens the segment's agent generated.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "LOG_RATIO_CLIP",
    "grpo_advantages",
    "k3_kl",
    "masked_mean",
    "policy_loss",
    "reinforce_pp_advantages",
    "turn_level_ratio",
]

#: the log-ratio is clamped to +-3 before exponentiation (ReMA's ``log_ratio_clip_c``)
LOG_RATIO_CLIP = 3.0


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over ``dim``, or all); 0 where the mask is empty."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): ``exp(d) - d - 1`` with ``d = ref_logp - logp``, in [-10, 10].

    Unbiased for KL(pi || pi_ref) under samples of pi and always >= 0 (before the clamp that guards
    against overflow, as in ReMA's ``low_var_kl``).
    """
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)


def grpo_advantages(rewards: Tensor, groups: Tensor, eps: float = 1e-6) -> Tensor:
    """Group-normalised advantages ``(r_i - mean_g) / (std_g + eps)`` over segments sharing a group id.

    ``std`` is the unbiased standard deviation; a group of one gets mean 0 and std 1 (as verl does).
    Per-role groups come from giving the segments of each role their own group ids.
    """
    if rewards.shape != groups.shape or rewards.dim() != 1:
        raise ValueError(f"Invalid rewards/groups: expected equal 1-D shapes, got {tuple(rewards.shape)} and "
                         f"{tuple(groups.shape)}")
    advantages = torch.empty_like(rewards)
    for g in torch.unique(groups):
        index = groups == g
        r = rewards[index]
        if r.numel() == 1:
            advantages[index] = r
        else:
            advantages[index] = (r - r.mean()) / (r.std() + eps)
    return advantages


def reinforce_pp_advantages(rewards: Tensor, mask: Tensor, token_kl: Tensor | None = None,
                            kl_coef: float = 0.0, sum_over_ranks: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """REINFORCE++ token advantages: return-to-go of the KL-shaped reward, whitened over the batch.

    The per-token reward is ``-kl_coef * kl_t`` plus the outcome ``r`` on the segment's last token; with
    ``gamma = 1`` the return at token t is ``r - kl_coef * sum_{s >= t} kl_s``; the returns of all masked
    tokens of the batch are then whitened (mean 0, std 1), the global baseline of REINFORCE++.
    ``sum_over_ranks`` (a data-parallel run's all-reduce) makes the batch the union of the ranks' batches:
    the whitening's mean and variance are then those of every rank's tokens.
    """
    mask_f = mask.to(rewards.dtype)
    token_rewards = torch.zeros_like(mask_f)
    if token_kl is not None and kl_coef:
        token_rewards = token_rewards - kl_coef * token_kl.detach() * mask_f
    lengths = mask_f.sum(-1).long()
    last = (mask_f * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)
    has_tokens = lengths > 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has_tokens]
    token_rewards[rows, last[has_tokens]] += rewards[has_tokens]
    returns = token_rewards.flip(-1).cumsum(-1).flip(-1) * mask_f
    if sum_over_ranks is not None:
        moments = sum_over_ranks(torch.stack((mask_f.sum(), returns.sum(), returns.square().sum())))
        n = moments[0].clamp_min(1.0)
        mean_t = moments[1] / n
        var_t = (moments[2] / n - mean_t.square()).clamp_min(0.0)
        return (returns - mean_t.to(returns.dtype)) / (var_t.sqrt().to(returns.dtype) + 1e-8) * mask_f
    mean = masked_mean(returns, mask_f)
    var = masked_mean((returns - mean) ** 2, mask_f)
    return (returns - mean) / (var.sqrt() + 1e-8) * mask_f


def turn_level_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """ReMA's turn-level importance ratio, one per segment: ``exp(mean_j clamp(logp_j - old_logp_j))``.

    The geometric mean of the token ratios of the turn (the form of ReMA's code, ``clip_mode="turn"``;
    Eq. 13 of the paper writes the arithmetic mean), with the log-ratio clamped to +-3.
    """
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLIP, LOG_RATIO_CLIP)
    return torch.exp(masked_mean(log_ratio, mask, dim=-1))


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    trajectories: Tensor,
    clip_eps: float = 0.2,
    ratio: str = "turn",
    aggregate: str = "trajectory",
) -> Tensor:
    """Clipped surrogate loss ``-min(rho A, clip(rho, 1 - eps, 1 + eps) A)`` aggregated as ReMA does.

    Args:
        logp: current log-probs ``(N, T)``.
        old_logp: behaviour log-probs ``(N, T)``.
        advantages: token advantages ``(N, T)`` (a per-segment advantage broadcast over its tokens).
        mask: loss mask ``(N, T)``.
        trajectories: ``(N,)`` trajectory id of each segment (turns of one episode share it).
        clip_eps: clipping range.
        ratio: ``"turn"`` (one ratio per segment, :func:`turn_level_ratio`, with the segment's mean advantage)
            or ``"token"`` (one ratio per token).
        aggregate: ``"trajectory"``: ``1/G sum_i 1/T_i sum_t loss_{i,t}`` with ``loss_{i,t}`` the token mean of
            turn t (Eq. 13); ``"token"``: the mean over all masked tokens of the batch.
    """
    if ratio not in ("turn", "token"):
        raise ValueError(f"Invalid ratio: {ratio!r}, expected 'turn' or 'token'")
    if aggregate not in ("trajectory", "token"):
        raise ValueError(f"Invalid aggregate: {aggregate!r}, expected 'trajectory' or 'token'")
    mask_f = mask.to(logp.dtype)
    if ratio == "turn":
        rho = turn_level_ratio(logp, old_logp, mask_f)
        adv = masked_mean(advantages, mask_f, dim=-1)
        turn_loss = -torch.minimum(rho * adv, rho.clamp(1 - clip_eps, 1 + clip_eps) * adv)
        token_loss = turn_loss[:, None].expand_as(logp)
    else:
        rho_t = torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLIP, LOG_RATIO_CLIP))
        token_loss = -torch.minimum(rho_t * advantages, rho_t.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
        turn_loss = masked_mean(token_loss, mask_f, dim=-1)
    if aggregate == "token":
        return masked_mean(token_loss, mask_f)
    unique, inverse = torch.unique(trajectories, return_inverse=True)
    per_traj = torch.zeros(len(unique), dtype=logp.dtype, device=logp.device).index_add_(0, inverse, turn_loss)
    turns = torch.zeros(len(unique), dtype=logp.dtype, device=logp.device).index_add_(
        0, inverse, torch.ones_like(turn_loss))
    return (per_traj / turns).mean()
