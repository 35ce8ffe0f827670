"""The RL meta-gradient problem and the solver's look-ahead algorithm.

Defining property: the look-ahead meta-gradient is the derivative of
``F(x) = L_out(τ', θ - α ∇_θ L_in(τ, θ, η(x)))`` on fixed rollouts (central differences, float64); its sign
is the one a hand-built rollout dictates; runs are deterministic; bad input is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

from rlopt.bilevel import BilevelSolver, hypergradient
from rlopt.bilevel.cli import main
from rlopt.bilevel.problems import MetaGradientRL, Ridge, Rollout

ALPHA = 0.05


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Batches of a few hundred transitions: a thread team costs more than it saves, and stalls on a busy CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_problem(meta_param: str = "gamma", **kwargs: object) -> MetaGradientRL:
    options: dict[str, object] = {"num_envs": 4, "n_steps": 16, "net_arch": (16,), "eval_envs": 4}
    options.update(kwargs)
    return MetaGradientRL("CartPole-v1", meta_param=meta_param, **options)  # type: ignore[arg-type]


def lookahead_objective(
    problem: MetaGradientRL, y0: dict[str, Tensor], lower_batch: Rollout, upper_batch: Rollout, alpha: float
) -> Callable[[Tensor], float]:
    """``x -> L_out(τ', y0 - α ∇_y L_in(x, y0; τ))``, written out independently of the solver."""

    def value(x: Tensor) -> float:
        y = {k: v.detach().clone().requires_grad_(True) for k, v in y0.items()}
        grads = torch.autograd.grad(problem.lower_loss(x, y, lower_batch), list(y.values()))
        y1 = {k: (v - alpha * g).detach() for (k, v), g in zip(y.items(), grads, strict=True)}
        with torch.no_grad():
            return float(problem.upper_loss(x, y1, upper_batch))

    return value


def replay_batches(problem: MetaGradientRL, seed: int, alpha: float) -> tuple[Rollout, Rollout]:
    """The rollouts the solver's first look-ahead step sees (same draws from a generator seeded alike)."""
    problem.reset()
    gen = torch.Generator().manual_seed(seed)
    x0, y0 = problem.initial_x(), problem.initial_y()
    tau = problem.sample_lower_batch(gen, x0, y0)
    y = {k: v.clone().requires_grad_(True) for k, v in y0.items()}
    grads = torch.autograd.grad(problem.lower_loss(x0, y, tau), list(y.values()))
    y1 = {k: (v - alpha * g).detach() for (k, v), g in zip(y.items(), grads, strict=True)}
    tau_prime = problem.sample_upper_batch(gen, x0, y1)
    return tau, tau_prime


@pytest.mark.parametrize("meta_param", ["gamma", "lambda", "entropy"])
def test_meta_gradient_matches_central_difference(meta_param: str, monkeypatch: pytest.MonkeyPatch) -> None:
    entropy = meta_param == "entropy"
    problem = small_problem(
        meta_param, dtype=torch.float64, ent_coef=0.01 if entropy else 0.0, init=0.3 if entropy else None
    )
    # Start away from the near-uniform initial policy, where the entropy gradient (and with it the entropy
    # weight's meta-gradient) nearly vanishes.
    start = {**problem.initial_y(), "actor.2.bias": torch.tensor([0.8, -0.8], dtype=torch.float64)}
    monkeypatch.setattr(problem, "initial_y", lambda: {k: v.clone() for k, v in start.items()})
    tau, tau_prime = replay_batches(problem, seed=3, alpha=ALPHA)
    x0, y0 = problem.initial_x(), problem.initial_y()
    F = lookahead_objective(problem, y0, tau, tau_prime, ALPHA)
    h = 1e-5
    fd = (F(x0 + h) - F(x0 - h)) / (2 * h)

    def upper(x: Tensor, y: dict[str, Tensor]) -> Tensor:
        return problem.upper_loss(x, y, tau_prime)

    def lower(x: Tensor, y: dict[str, Tensor]) -> Tensor:
        return problem.lower_loss(x, y, tau)

    hg = hypergradient(upper, lower, x0, y0, method="itd", steps=1, lr=ALPHA)
    assert isinstance(hg, Tensor)
    assert abs(fd) > 1e-5  # a real dependence, so the comparison can fail
    assert float(hg) == pytest.approx(fd, rel=1e-6, abs=1e-12)

    # The solver's look-ahead step: with upper SGD at lr 1, x moves by exactly -d.
    solver = BilevelSolver(problem, "lookahead", upper="sgd", lower="sgd", upper_lr=1.0, lower_lr=ALPHA, seed=3)
    solver.step()
    x1 = solver.variables[0]
    assert isinstance(x1, Tensor)
    d = float(x0 - x1)
    assert d == pytest.approx(fd, rel=1e-6, abs=1e-12)


def hand_rollout(problem: MetaGradientRL, y: dict[str, Tensor], actions: list[int], rewards: list[float]) -> Rollout:
    """One copy, identical observations, zero values, terminating at the last step."""
    T = len(actions)
    obs = torch.zeros(T, 1, 4, dtype=torch.float64)
    act = torch.tensor(actions).reshape(T, 1)
    with torch.no_grad():
        log_pi = problem.log_pi(y, obs.reshape(T, 4))
    log_probs = log_pi.gather(-1, act.reshape(T, 1)).reshape(T, 1)
    zeros = torch.zeros(T, 1, dtype=torch.float64)
    terminated = torch.zeros(T, 1, dtype=torch.bool)
    terminated[-1] = True
    rew = torch.tensor(rewards, dtype=torch.float64).reshape(T, 1)
    return Rollout(obs, act, log_probs, zeros, zeros.clone(), rew, terminated, terminated.clone(), rew[-1:, 0])


@pytest.mark.parametrize("meta_param", ["gamma", "lambda"])
@pytest.mark.parametrize(("good_action", "expected_sign"), [(1, -1.0), (0, 1.0)])
def test_direction_follows_delayed_reward(meta_param: str, good_action: int, expected_sign: float) -> None:
    # Inner rollout: action 1 pays 1 one step later, action 0 pays 1 at once. With zero values the inner
    # advantage of action 1 is γλ (of action 0: 1), so a larger γ or λ moves the policy towards action 1.
    # The outer rollout rewards `good_action`: the meta-gradient must raise γ/λ (d < 0) iff that is action 1.
    problem = small_problem(meta_param, dtype=torch.float64, gamma=0.99, gae_lambda=1.0, init=0.5)
    x0, y0 = problem.initial_x(), problem.initial_y()
    tau = hand_rollout(problem, y0, [1, 0], [0.0, 1.0])
    tau_prime = hand_rollout(problem, y0, [good_action], [1.0])
    hg = hypergradient(
        lambda x, y: problem.upper_loss(x, y, tau_prime),
        lambda x, y: problem.lower_loss(x, y, tau),
        x0,
        y0,
        method="itd",
        steps=1,
        lr=ALPHA,
    )
    assert isinstance(hg, Tensor) and float(hg) * expected_sign > 1e-6


def test_entropy_weight_rises_when_outer_objective_values_entropy() -> None:
    # With zero outer rewards the outer loss is -c̄ H(π_θ'); the inner step raises H by α c ‖∇H‖², so
    # dL_out/dc = -α c̄ ‖∇H‖² < 0: the entropy weight must go up.
    problem = small_problem("entropy", dtype=torch.float64, ent_coef=1.0, init=0.1)
    x0, y0 = problem.initial_x(), problem.initial_y()
    y0 = {**y0, "actor.2.bias": torch.tensor([1.5, -1.5], dtype=torch.float64)}  # away from the uniform policy
    tau = hand_rollout(problem, y0, [1, 0, 1], [0.0, 0.0, 0.0])
    tau_prime = hand_rollout(problem, y0, [0, 1], [0.0, 0.0])
    hg = hypergradient(
        lambda x, y: problem.upper_loss(x, y, tau_prime),
        lambda x, y: problem.lower_loss(x, y, tau),
        x0,
        y0,
        method="itd",
        steps=1,
        lr=ALPHA,
    )
    assert isinstance(hg, Tensor) and float(hg) < -1e-6


def test_lookahead_on_ridge_is_one_step_itd() -> None:
    problem = Ridge()
    x0, y0 = problem.initial_x(), problem.initial_y()
    expected = hypergradient(problem.upper_loss, problem.lower_loss, x0, y0, method="itd", steps=1, lr=0.1)
    solver = BilevelSolver(problem, "lookahead", upper="sgd", lower="sgd", upper_lr=1.0, lower_lr=0.1)
    solver.step()
    x1 = solver.variables[0]
    assert isinstance(x1, Tensor)
    torch.testing.assert_close(x0 - x1, expected, rtol=1e-12, atol=1e-15)


def test_two_seeded_runs_are_identical() -> None:
    def run(problem: MetaGradientRL) -> tuple[list[dict[str, float]], dict[str, Tensor]]:
        solver = BilevelSolver(problem, "lookahead", upper="adam", lower="sgd", lower_lr=0.01, seed=5)
        records = solver.run(4, eval_every=2).records
        for r in records:
            r.pop("wall_time")
        y = solver.variables[1]
        assert isinstance(y, dict)
        return records, y

    first = small_problem(seed=2)
    a, ya = run(first)
    b, yb = run(small_problem(seed=2))
    c, yc = run(first)  # the same problem instance, restarted by the solver
    assert a == b == c
    for k in ya:
        assert torch.equal(ya[k], yb[k]) and torch.equal(ya[k], yc[k])
    assert a[-1]["env_steps"] == 5 * 4 * 16  # one rollout per step plus the first: reused across levels


def test_rollouts_are_on_policy_and_reused_once() -> None:
    problem = small_problem()
    gen = torch.Generator().manual_seed(0)
    x, y = problem.initial_x(), problem.initial_y()
    upper = problem.sample_upper_batch(gen, x, y)
    assert problem.sample_lower_batch(gen, x, y) is upper  # same policy: the upper rollout is reused...
    assert problem.sample_lower_batch(gen, x, y) is not upper  # ...once
    y2 = {k: v + 0.01 for k, v in y.items()}
    problem.sample_upper_batch(gen, x, y)
    fresh = problem.sample_lower_batch(gen, x, y2)  # changed policy: collected anew, with y2's probabilities
    obs = fresh.observations.reshape(len(fresh), -1)
    expected = problem.log_pi(y2, obs).gather(-1, fresh.actions.reshape(-1, 1)).reshape_as(fresh.log_probs)
    torch.testing.assert_close(fresh.log_probs, expected)
    assert fresh.observations.shape == (16, 4, 4) and len(fresh) == 64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"meta_param": "delta"}, r"Invalid meta_param: 'delta'.*gamma.*lambda.*entropy"),
        ({"meta_param": "gamma", "init": 1.0}, r"Invalid init: 1.0, expected 0.0 < init < 1.0"),
        ({"meta_param": "lambda", "init": 0.0}, r"Invalid init: 0.0"),
        ({"meta_param": "entropy", "init": 0.0}, r"Invalid init: 0.0.*> 0"),
        ({"gamma": 1.5}, r"Invalid gamma: 1.5"),
        ({"gae_lambda": -0.1}, r"Invalid gae_lambda: -0.1"),
        ({"ent_coef": -1.0}, r"Invalid ent_coef: -1.0"),
        ({"num_envs": 0}, r"Invalid num_envs: 0"),
        ({"n_steps": 2.5}, r"Invalid n_steps: 2.5"),
        ({"dtype": torch.int64}, r"Invalid dtype"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MetaGradientRL("CartPole-v1", **kwargs)  # type: ignore[arg-type]


def test_bad_env_and_usage() -> None:
    with pytest.raises(ValueError, match=r"Invalid env_id: 'Pendulum-v1'.*discrete"):
        MetaGradientRL("Pendulum-v1")
    with pytest.raises(ValueError, match=r"Unknown env_id"):
        MetaGradientRL("NoSuchEnv-v0")
    problem = small_problem()
    with pytest.raises(ValueError, match=r"Invalid algorithm: 'stocbio' does not apply to MetaGradientRL.*lookahead"):
        BilevelSolver(problem, "stocbio")
    with pytest.raises(ValueError, match=r"needs a Rollout batch"):
        problem.lower_loss(problem.initial_x(), problem.initial_y(), None)
    with pytest.raises(ValueError, match=r"pass the lower variable y"):
        problem.sample_upper_batch(torch.Generator(), problem.initial_x(), None)


def test_upper_armijo_condition_holds_on_the_lookahead_objective() -> None:
    problem = small_problem()
    solver = BilevelSolver(problem, "lookahead", upper="bisls", lower="sgd", lower_lr=0.01, seed=0)
    records = solver.run(3, eval_every=3).records
    accepted = [r for r in records if r["upper_accepted"]]
    assert accepted
    for r in accepted:
        bound = r["upper_loss"] - 0.1 * r["upper_step_size"] * r["upper_slope"] + r["upper_slack"]
        assert r["upper_trial_loss"] <= bound


def test_short_run_raises_gamma_and_return() -> None:
    # γ starts at 0.5 with the reference γ̄ = 0.99: short horizons hurt on CartPole, and the meta-gradient
    # raises γ while the agent learns.
    problem = MetaGradientRL("CartPole-v1", meta_param="gamma", init=0.5, num_envs=16, n_steps=16, seed=0)
    solver = BilevelSolver(problem, "lookahead", upper="adam", lower="sgd", upper_lr=0.1, lower_lr=0.02, seed=0)
    start = problem.metrics(*solver.variables)
    history = solver.run(40, eval_every=40)
    final = history.final
    assert final["gamma"] > start["gamma"] + 0.1
    assert final["eval_return"] > start["eval_return"] + 20


def test_cli_metagrad_run(tmp_path: Path) -> None:
    args = ["metagrad", "--upper", "adam", "--lower", "sgd", "--lower-lr", "0.01", "--outer-steps", "3"]
    args += ["--num-envs", "4", "--n-steps", "8", "--eval-every", "3", "--out", str(tmp_path), "--no-progress"]
    assert main([*args, "--no-tensorboard"]) == 0
    data = json.loads((tmp_path / "history.json").read_text())
    assert data["arguments"]["algorithm"] == "lookahead"
    assert {"eval_return", "gamma", "env_steps"} <= set(data["records"][-1])
    assert (tmp_path / "summary.png").stat().st_size > 1000


def test_runs_on_device(device: torch.device) -> None:
    problem = small_problem(device=device)
    solver = BilevelSolver(problem, "lookahead", upper="bisls", lower="sgd", upper_lr=10.0, lower_lr=0.01, seed=0)
    record = solver.run(2, eval_every=2).final
    x, y = solver.variables
    assert isinstance(x, Tensor) and isinstance(y, dict)
    assert x.device.type == device.type and all(v.device.type == device.type for v in y.values())
    rollout = problem.sample_upper_batch(torch.Generator().manual_seed(0), x, y)
    assert rollout.observations.device.type == device.type
    assert 0 < record["gamma"] < 1 and record["eval_return"] >= 1.0
