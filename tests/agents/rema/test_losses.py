"""Losses: k3 KL, per-group GRPO advantages, REINFORCE++ returns, the turn-level ratio and the aggregation."""

from __future__ import annotations

import math

import pytest
import torch

from rlopt.agents.rema.losses import (
    grpo_advantages,
    k3_kl,
    masked_mean,
    policy_loss,
    reinforce_pp_advantages,
    turn_level_ratio,
)


def test_k3_is_nonnegative_zero_at_equality_and_unbiased_for_kl() -> None:
    logp = torch.log(torch.tensor([0.2, 0.5, 0.3]))
    ref = torch.log(torch.tensor([0.4, 0.4, 0.2]))
    values = k3_kl(logp, ref)
    assert (values >= 0).all()
    assert torch.equal(k3_kl(logp, logp), torch.zeros(3))
    # E_{x ~ p}[k3] = KL(p || ref) exactly, for a discrete distribution
    expected = (logp.exp() * (logp - ref)).sum()
    torch.testing.assert_close((logp.exp() * values).sum(), expected)


def test_grpo_advantages_are_normalised_within_each_group_only() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, -1.0, 0.5, 0.5])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    adv = grpo_advantages(rewards, groups, eps=0.0)
    g0 = rewards[:3]
    torch.testing.assert_close(adv[:3], (g0 - g0.mean()) / g0.std())
    torch.testing.assert_close(adv[3:5], torch.tensor([1.0, -1.0]) / math.sqrt(2.0))
    # a singleton group keeps its reward (mean 0, std 1, as verl)
    torch.testing.assert_close(adv[5:], torch.tensor([0.5, 0.5]))
    # a group with equal rewards has no signal (not NaN)
    assert torch.equal(grpo_advantages(torch.ones(3), torch.zeros(3, dtype=torch.long)), torch.zeros(3))
    with pytest.raises(ValueError, match="rewards"):
        grpo_advantages(torch.ones(3), torch.zeros(2))


def test_reinforce_pp_returns_and_whitening() -> None:
    rewards = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 0]], dtype=torch.float32)
    kl = torch.full((2, 5), 0.5)
    adv = reinforce_pp_advantages(rewards, mask, kl, kl_coef=0.1)
    # returns-to-go: r - 0.1 * 0.5 * (number of masked tokens from t on)
    returns = torch.tensor([[0, 1 - 0.15, 1 - 0.10, 1 - 0.05, 0], [0, 0, -1 - 0.10, -1 - 0.05, 0]])
    values = returns[mask.bool()]
    expected = (returns - values.mean()) / values.std(unbiased=False) * mask
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    assert adv[mask.bool()].mean().abs() < 1e-6


def test_turn_level_ratio_is_the_geometric_mean_of_token_ratios_per_turn() -> None:
    logp = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -0.5, 0.0, 0.0]])
    old = torch.tensor([[0.0, -1.2, -1.9, 5.0], [0.0, -0.2, 9.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    ratio = turn_level_ratio(logp, old, mask)
    torch.testing.assert_close(ratio, torch.tensor([math.exp((0.2 - 0.1) / 2), math.exp(-0.3)]))
    # the log-ratio is clamped at +-3 before averaging
    assert turn_level_ratio(torch.zeros(1, 2), torch.tensor([[-10.0, 0.0]]), torch.ones(1, 2)).item() == \
        pytest.approx(math.exp(1.5))


def test_policy_loss_turn_ratio_clips_per_turn_and_averages_per_trajectory() -> None:
    # three segments: trajectory 0 has two turns, trajectory 1 one turn
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    old = torch.zeros(3, 3)
    logp = torch.tensor([[0.5, 0.5, 9.0], [-0.1, 0.0, 0.0], [0.0, 0.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0, 0.0], [-2.0, 0, 0], [0.5, 0.5, 0.5]])
    loss = policy_loss(logp, old, adv, mask, torch.tensor([0, 0, 1]), clip_eps=0.2, ratio="turn",
                       aggregate="trajectory")
    r0 = math.exp(0.5)  # clipped to 1.2 for a positive advantage
    r1 = math.exp(-0.1)  # inside the range
    turn = [-min(r0 * 1.0, 1.2 * 1.0), -min(r1 * -2.0, max(min(r1, 1.2), 0.8) * -2.0), -0.5]
    expected = ((turn[0] + turn[1]) / 2 + turn[2]) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    token_loss = policy_loss(logp, old, adv, mask, torch.tensor([0, 0, 1]), ratio="turn", aggregate="token")
    weights = mask.sum(1)
    weighted = sum(t * w for t, w in zip(turn, weights.tolist(), strict=True)) / 6
    assert token_loss.item() == pytest.approx(weighted, rel=1e-6)


def test_policy_loss_gradient_at_ratio_one_is_the_policy_gradient() -> None:
    # with old == current, d loss / d logp_j = -A / (|turn| * n_trajectories) for both ratio kinds
    logp = torch.tensor([[-0.3, -0.7, 0.0], [-1.0, -0.2, -0.4]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.float32)
    adv = torch.tensor([[2.0, 2.0, 0.0], [-1.0, -1.0, -1.0]])
    for ratio in ("turn", "token"):
        (grad,) = torch.autograd.grad(
            policy_loss(logp, logp.detach(), adv, mask, torch.tensor([0, 1]), ratio=ratio), logp)
        expected = -adv * mask / mask.sum(1, keepdim=True) / 2
        torch.testing.assert_close(grad, expected)


def test_masked_mean_and_bad_arguments() -> None:
    assert masked_mean(torch.tensor([1.0, 3.0]), torch.tensor([0, 1])).item() == 3.0
    assert masked_mean(torch.tensor([1.0]), torch.tensor([0])).item() == 0.0
    with pytest.raises(ValueError, match="ratio"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1),
                    ratio="seq")
    with pytest.raises(ValueError, match="aggregate"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1),
                    aggregate="batch")
