"""The Polyak policy-gradient step inside the actor-critic agents: the loss it is handed is minus a return
estimate in the return's units, the agents search by default, and A2C's ratio loss has A2C's gradient."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import rlopt
from rlopt import agents


def _record_policy_steps(model: Any) -> list[dict[str, float]]:
    steps: list[dict[str, float]] = []
    step = model.optimizer.step

    def recording(*args: Any, **kwargs: Any) -> Any:
        out = step(*args, **kwargs)
        steps.append({**model.optimizer.stats, "j_star": model.optimizer.param_groups[0]["j_star"]})
        return out

    model.optimizer.step = recording
    return steps


@pytest.mark.parametrize("algo", ["PPO", "A2C"])
def test_polyak_loss_is_minus_the_measured_return_at_the_rollout_policy(algo: str) -> None:
    n_envs, n_steps = 16, 64
    extra = {"batch_size": n_envs * n_steps, "n_epochs": 2} if algo == "PPO" else {}
    model = getattr(agents, algo)("MlpPolicy", "CartPole-v1", optimizer="polyak", n_envs=n_envs, n_steps=n_steps,
                                  normalize_advantage=True, seed=0, **extra)
    assert isinstance(model.optimizer, rlopt.PolyakPG)
    assert type(model.optimizer.rule).needs_closure  # the agents' default: the Polyak step checked by Armijo
    steps = _record_policy_steps(model)
    seen: list[tuple[float, float, float]] = []
    train = model.train

    def train_and_record() -> None:
        adv = model.rollout_buffer.flatten().advantages
        steps.clear()
        train()
        seen.append((model._return_estimate, model._polyak_horizon * float(adv.std() + 1e-8), steps[0]["loss"]))
        first = steps[0]
        target = model._polyak_target
        # J* in the loss's units never exceeds the return target (PPO caps it at the clip's bound)
        assert first["j_star"] * seen[-1][1] <= target + 1e-6 * abs(target)
        assert all(s["step_size"] <= 1.0 for s in steps)  # max_lr

    model.train = train_and_record  # type: ignore[method-assign]
    model.learn(4 * n_envs * n_steps)
    assert len(seen) == 4
    for j_hat, scale, loss in seen:
        # at the rollout's policy (the first step of an update) the loss is -J_hat in units of T * std(A)
        assert -loss * scale == pytest.approx(j_hat, rel=1e-4)


def test_a2c_ratio_loss_has_the_log_likelihood_gradient() -> None:
    model = agents.A2C("MlpPolicy", "CartPole-v1", n_envs=8, n_steps=16, seed=0, ent_coef=0.01)
    grads: dict[str, list[torch.Tensor]] = {}
    params = list(model.policy.actor_parameters())

    def record(policy_loss: Any, value_loss: Any, kl: Any = None, value: Any = None) -> torch.Tensor:
        batch = model.rollout_buffer.flatten()
        with torch.enable_grad():
            grads["ratio"] = list(torch.autograd.grad(policy_loss(), params))
            log_prob, entropy = model.policy.log_prob_and_entropy(batch.observations, batch.actions)
            classic = -(batch.advantages * log_prob).mean() - model.ent_coef * entropy.mean()
            grads["classic"] = list(torch.autograd.grad(classic, params))
            return value_loss().detach()

    model._step_losses = record  # type: ignore[method-assign]
    model.learn(8 * 16)
    for a, b in zip(grads["ratio"], grads["classic"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_polyak_search_steps_satisfy_armijo_and_the_trust_region() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(6, generator=gen, dtype=torch.float64)
    theta = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    opt = rlopt.PolyakPG([theta], max_lr=100.0, max_kl=0.05)  # max_kl implies the search

    def loss() -> torch.Tensor:
        return -(theta.softmax(0) @ rewards)

    for _ in range(25):
        old = theta.detach().log_softmax(0)

        def kl(old: torch.Tensor = old) -> torch.Tensor:
            new = theta.log_softmax(0)
            return (old.exp() * (old - new)).sum()

        before, w = loss().item(), theta.detach().clone()
        (g,) = torch.autograd.grad(loss(), theta)
        opt.step(loss, kl=kl)
        eta = opt.stats["step_size"]
        if eta > 0:  # accepted: both conditions hold at the new point
            assert loss().item() <= before - 0.1 * eta * g.square().sum().item() + 1e-12
            assert kl().item() <= 0.05 + 1e-12
            torch.testing.assert_close(theta.detach(), w - eta * g)
    assert -loss().item() > rewards.mean().item() + 0.5 * (rewards.max() - rewards.mean()).item()


@pytest.mark.parametrize("algo", ["PPO", "A2C"])
def test_return_target_follows_measured_returns_only(algo: str) -> None:
    """Before the first episode ends ``J_hat`` is a stand-in (the rollout's mean discounted return-to-go, about -40
    on Pendulum where episodes return about -1200): it sets the target of those updates only, and the running best
    that ``J*`` grows from is that of the measured episode returns."""
    kwargs: dict[str, Any] = {"n_envs": 4, "n_steps": 16}
    if algo == "PPO":
        kwargs.update(batch_size=32, n_epochs=1)
    model = getattr(agents, algo)("MlpPolicy", "Pendulum-v1", optimizer="polyak", seed=0, **kwargs)
    targets: list[tuple[bool, float, float]] = []
    original = model._polyak_update_target

    def spy() -> None:
        original()
        targets.append((bool(model.ep_info_buffer), model._return_estimate, model._polyak_target))

    model._polyak_update_target = spy  # type: ignore[method-assign]
    model.learn(4 * 16 * 16)  # 256 steps per copy: the first episodes (200 steps) end in the 13th rollout
    stand_in = [(j, t) for measured, j, t in targets if not measured]
    measured = [(j, t) for measured, j, t in targets if measured]
    assert stand_in and measured
    margin = model.optimizer.param_groups[0]["margin"]
    for j_hat, target in stand_in:  # that update's own stand-in, plus the margin
        assert target == pytest.approx(j_hat + margin * abs(j_hat))
    best = max(j for j, _ in measured)
    assert max(j for j, _ in stand_in) > best  # the stand-in is far above what episodes return
    assert measured[-1][1] == pytest.approx(best + margin * abs(best))
