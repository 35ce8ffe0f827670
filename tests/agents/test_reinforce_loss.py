"""The REINFORCE/GPOMDP loss the step-size rules see: its value is the return estimate's negative to first
order (importance ratio), its gradient the GPOMDP estimate; SPS gets the online return target as ``f*``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy

import rlopt
from rlopt import agents
from rlopt.agents.reinforce.reinforce import SPS_MARGIN


def _model(**kwargs: Any) -> agents.REINFORCE:
    return agents.REINFORCE("MlpPolicy", "CartPole-v1", n_envs=4, n_steps=128, seed=0, device="cpu", **kwargs)


def test_loss_value_is_minus_return_and_gradient_is_gpomdp() -> None:
    model = _model(optimizer="adam")
    params = [p for p in model.policy.parameters() if p.requires_grad]
    trial = [p.detach() + 0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i))
             for i, p in enumerate(params)]
    captured: dict[str, Any] = {}
    weights, step_losses = model._weights, model._step_losses

    def record_weights() -> Any:
        out = weights()
        captured["w"], captured["usable"], captured["returns"] = out
        return out

    def record_step(policy_loss: Any, value_loss: Any, kl: Any = None, value: Any = None) -> Any:
        with torch.enable_grad():
            loss = policy_loss()
        captured["loss"], captured["grads"] = loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            saved = [p.clone() for p in params]
            for p, t in zip(params, trial, strict=True):
                p.copy_(t)
            captured["trial"] = policy_loss()
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        return step_losses(policy_loss, value_loss)

    model._weights, model._step_losses = record_weights, record_step  # type: ignore[method-assign]
    # reference: the classic log-likelihood surrogate -(1/M) sum log pi (W - b), at the parameters of the update
    model.learn(512)  # one rollout, one update
    j_hat = float(captured["returns"].mean())
    assert captured["loss"].item() == pytest.approx(-j_hat, rel=1e-6)

    buf, policy = model.rollout_buffer, model.policy
    idx = captured["usable"].reshape(-1).nonzero().squeeze(1)
    obs = buf.observations.reshape(-1, *buf.observations.shape[2:])[idx]
    actions = buf.actions.reshape(-1, *buf.actions.shape[2:])[idx]
    w = captured["w"].reshape(-1)[idx]
    w = w - w.mean()
    m = captured["returns"].numel()
    with torch.no_grad():  # back to the parameters the update started from: undo Adam's step
        after = [p.clone() for p in params]
    fresh = _model(optimizer="adam")  # same seed: the same initial parameters
    start = [p for p in fresh.policy.parameters() if p.requires_grad]
    with torch.no_grad():
        for p, s in zip(params, start, strict=True):
            p.copy_(s)
    log_prob, _ = policy.log_prob_and_entropy(obs, actions)
    surrogate = -(log_prob * w).sum() / m
    ref = torch.autograd.grad(surrogate, params, allow_unused=True)
    for g, r in zip(captured["grads"], ref, strict=True):
        if r is None:
            assert g is None
        else:
            torch.testing.assert_close(g, r, rtol=0, atol=0)

    # at another point theta', the value is -J_hat - (1/M) sum (pi'/pi - 1)(W - b)
    with torch.no_grad():
        for p, t in zip(params, trial, strict=True):
            p.copy_(t)
        new_log_prob, _ = policy.log_prob_and_entropy(obs, actions)
        expected = -j_hat - ((torch.exp(new_log_prob - log_prob) - 1) * w).sum() / m
        for p, a in zip(params, after, strict=True):
            p.copy_(a)
    assert captured["trial"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_is_bounded_below_for_discrete_actions() -> None:
    # pi'/pi <= 1/pi: however far a line search goes, the value stays above -J_hat - (1/M) sum_{A>0} A/pi
    model = _model(optimizer="sls")
    model.learn(512)
    assert model.optimizer.stats["step_size"] < 1.0  # type: ignore[attr-defined]  # Armijo backtracked


def test_sps_lower_bound_is_the_online_return_target() -> None:
    model = _model(optimizer="sps")
    seen: list[float] = []
    original = model._set_sps_lower_bound

    def record(j_hat: float) -> None:
        seen.append(j_hat)
        original(j_hat)

    model._set_sps_lower_bound = record  # type: ignore[method-assign]
    model.learn(4 * 512)
    best = max(seen)
    expected = -(best + SPS_MARGIN * max(abs(best), 1.0))
    assert isinstance(model.optimizer, rlopt.SPS)
    assert model.optimizer.param_groups[0]["f_star"] == pytest.approx(expected)
    assert model.optimizer.stats["step_size"] > 0.0  # type: ignore[attr-defined]


def test_sps_keeps_a_user_lower_bound() -> None:
    model = _model(optimizer="sps", optimizer_kwargs={"f_star": -100.0})
    model.learn(1024)
    assert model.optimizer.param_groups[0]["f_star"] == -100.0


def test_other_optimizers_are_left_alone() -> None:
    model = _model(optimizer="sls")
    model.learn(512)
    assert "f_star" not in model.optimizer.param_groups[0]


@pytest.mark.slow
def test_gpomdp_with_sps_at_defaults_improves_clearly() -> None:
    # before f* = -J*_k, SPS at its default f* = 0 took steps of 0 on CartPole (the loss value was ~0)
    def evaluate(model: agents.REINFORCE) -> float:
        env = agents.make_eval_env("CartPole-v1", n_envs=10, seed=123)
        return float(evaluate_policy(model, env, n_eval_episodes=10, deterministic=True)[0])

    model = agents.REINFORCE("MlpPolicy", "CartPole-v1", n_envs=16, n_steps=512, seed=0, device="cpu",
                             optimizer="sps")
    start = evaluate(model)
    model.learn(8 * 8192)
    assert evaluate(model) >= max(100.0, 5 * start)


@pytest.mark.parametrize("twin", [True, "both"])
def test_twin_model_target_the_worse_twin_aims_at_the_better_ones_return(twin: bool | str) -> None:
    """``twin=True``: per update the twin whose rollout return is lower takes the Polyak step with ``J*`` = the
    other's measured return and the better one stays; ``"both"``: the better one also steps, on the online
    target. ``model.policy`` is then the twin that measured better, and both twins' env steps count."""
    from rlopt.agents import REINFORCE

    calls: list[tuple[int, float | None, float]] = []
    original = REINFORCE._step_losses

    def spy(self: Any, policy_loss: Any, value_loss: Any, kl: Any = None, value: float | None = None) -> Any:
        calls.append((id(self.policy), self.optimizer.param_groups[0]["j_star"], float(value)))
        return original(self, policy_loss, value_loss, kl, value)

    model = REINFORCE("MlpPolicy", "CartPole-v1", optimizer="polyak", twin=twin, n_envs=4, n_steps=128, seed=0)
    REINFORCE._step_losses = spy  # type: ignore[method-assign]
    try:
        for update in range(3):
            before = {id(p): [t.detach().clone() for t in p.parameters()]
                      for p in (model.policy, model._twin_agent.policy if model._twin_agent else model.policy)}
            model.learn(2 * 4 * 128, reset_num_timesteps=update == 0)
            if twin == "both":
                (first, target_1, j_1), (second, target_2, j_2) = calls[-2:]
                assert first != second  # one step of each twin
                (worse_target, worse_j), (better_target, better_j), better = (
                    ((target_1, j_1), (target_2, j_2), second) if target_1 is not None else
                    ((target_2, j_2), (target_1, j_1), first))
                assert better_target is None and worse_j < better_j
            else:
                (worse, worse_target, worse_j), = calls[-1:]
                twins = [model.policy, model._twin_agent.policy]
                better = next(id(p) for p in twins if id(p) != worse)
                better_j = worse_target
                if update > 0:  # the better twin did not move
                    same = [torch.equal(a, b) for a, b in zip(before[better], twins[[id(p) for p in twins].index(
                        better)].parameters(), strict=True)]
                    assert all(same)
            assert worse_target == better_j and worse_j < better_j
            assert id(model.policy) == better
            assert model.optimizer.param_groups[0]["j_star"] is None  # the twin target is for that step only
    finally:
        REINFORCE._step_losses = original  # type: ignore[method-assign]
    assert len(calls) == (6 if twin == "both" else 3) and model.num_timesteps == 3 * 2 * 4 * 128


def test_twin_model_needs_the_polyak_step_and_an_env_id() -> None:
    from rlopt import envs
    from rlopt.agents import REINFORCE

    with pytest.raises(ValueError, match="twin=True with optimizer='adam'"):
        REINFORCE("MlpPolicy", "CartPole-v1", optimizer="adam", twin=True)
    with pytest.raises(ValueError, match="Invalid twin"):
        REINFORCE("MlpPolicy", "CartPole-v1", optimizer="polyak", twin="three")
    env = envs.make("CartPole-v1", num_envs=2, autoreset_mode="same_step")
    with pytest.raises(ValueError, match="env id"):
        REINFORCE("MlpPolicy", env, optimizer="polyak", twin=True)
