"""SPS_max, DecSPS and the Polyak policy-gradient step."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import rlopt
from rlopt.rules import PolicyPolyakRule, StepInfo
from tests.rlopt.problems import least_squares


def test_sps_solves_isotropic_quadratic_in_one_step(device: torch.device) -> None:
    a = 3.0
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 4.0, -3.0], dtype=torch.float64, device=device))
    opt = rlopt.SPS([w], c=0.5, f_star=0.0)
    opt.step(lambda: 0.5 * a * (w**2).sum())
    assert opt.stats["step_size"] == pytest.approx(1 / a, rel=1e-12)
    assert w.detach().abs().max().item() < 1e-14


def test_sps_loss_path_equals_closure_path() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 4, generator=g), torch.randn(20, generator=g)
    w1 = torch.nn.Parameter(torch.zeros(4))
    w2 = torch.nn.Parameter(torch.zeros(4))
    o1, o2 = rlopt.SPS([w1], max_lr=10.0), rlopt.SPS([w2], max_lr=10.0)
    for _ in range(5):
        o1.step(lambda: ((x @ w1 - y) ** 2).mean())
        o2.zero_grad()
        loss = ((x @ w2 - y) ** 2).mean()
        loss.backward()
        o2.step(loss=loss)
        assert o1.stats["step_size"] == o2.stats["step_size"]
    torch.testing.assert_close(w1, w2, rtol=0, atol=0)


def test_sps_max_lr_and_formula() -> None:
    w = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = rlopt.SPS([w], c=0.2, max_lr=100.0, f_star=0.5)
    opt.step(lambda: (w**2).sum() + 1.0)  # f = 5, g = 4
    assert opt.stats["step_size"] == pytest.approx((5.0 - 0.5) / (0.2 * 16.0))
    w2 = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    capped = rlopt.SPS([w2], c=0.2, max_lr=0.1)
    capped.step(lambda: (w2**2).sum())
    assert capped.stats["step_size"] == 0.1


def test_sps_never_steps_uphill_on_losses_below_f_star() -> None:
    # The reference code's default mode takes a negative step on negative losses; ours takes none.
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    for mode in ("max", "dec"):
        opt = rlopt.SPS([w], mode=mode)
        before = w.detach().clone()
        opt.step(lambda: (w**2).sum() - 10.0)
        assert opt.stats["step_size"] == 0.0
        torch.testing.assert_close(w.detach(), before, rtol=0, atol=0)


def test_decsps_is_non_increasing_and_first_step_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = x @ torch.randn(5, generator=g) + 0.5 * torch.randn(200, generator=g)  # noisy: no interpolation
    w = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    x, y = x.double(), y.double()
    opt = rlopt.SPS([w], mode="dec", c=0.5, max_lr=10.0)
    sizes = []
    for k in range(100):
        i = torch.randint(0, 200, (10,), generator=g)
        if k == 0:
            f0 = (0.5 * (x[i] @ w - y[i]) ** 2).mean()
            (grad,) = torch.autograd.grad(f0, w)
            expected0 = min(f0.item() / (0.5 * grad.square().sum().item()), 10.0)
        opt.step(lambda i=i: (0.5 * (x[i] @ w - y[i]) ** 2).mean())
        sizes.append(opt.stats["step_size"])
    assert sizes[0] == pytest.approx(expected0, rel=1e-12)
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(sizes))
    assert sizes[-1] < sizes[0]


def test_decsps_keeps_decreasing_where_sps_max_plateaus() -> None:
    # Noisy least squares: SPS_max stays in a neighbourhood, DecSPS converges (Orvieto et al. 2022).
    g = torch.Generator().manual_seed(1)
    n, d = 500, 5
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, generator=g, dtype=torch.float64) + torch.randn(n, generator=g, dtype=torch.float64)
    w_opt = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    dists = {}
    for mode in ("max", "dec"):
        w = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
        opt = rlopt.SPS([w], mode=mode, max_lr=1.0)
        gen = torch.Generator().manual_seed(2)
        for _ in range(3000):
            i = torch.randint(0, n, (5,), generator=gen)
            opt.step(lambda i=i, w=w: (0.5 * (x[i] @ w - y[i]) ** 2).mean())
        dists[mode] = (w.detach() - w_opt).norm().item()
    assert dists["dec"] < 0.5 * dists["max"], dists


def test_polyak_pg_step_formula_and_known_optimum() -> None:
    theta = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    rewards = torch.tensor([1.0, 0.2, 0.0], dtype=torch.float64)
    opt = rlopt.PolyakPG([theta], c=0.5, j_star=1.0, max_lr=100.0)
    probs = theta.softmax(0)
    j = (probs @ rewards).item()
    (grad,) = torch.autograd.grad(-(theta.softmax(0) @ rewards), theta)
    opt.step(lambda: -(theta.softmax(0) @ rewards), value=j)
    assert opt.stats["step_size"] == pytest.approx((1.0 - j) / (0.5 * grad.square().sum().item()), rel=1e-12)
    assert opt.stats["target"] == 1.0
    for _ in range(30):
        j = (theta.softmax(0) @ rewards).item()
        opt.step(lambda: -(theta.softmax(0) @ rewards), value=j)
    assert (theta.softmax(0) @ rewards).item() > 0.97


def test_polyak_pg_online_target_keeps_numerator_positive() -> None:
    rule = PolicyPolyakRule()
    hp = dict(c=0.5, max_lr=1e9, j_star=None, margin=0.1)
    state = rule.init_state(hp)
    from rlopt.rules import SearchResult

    for value in [10.0, 30.0, 20.0, -5.0, 50.0]:
        info = StepInfo(loss=0.0, grad_sq=2.0, slope=2.0, step=0, value=value)
        prop = rule.propose(hp, state, info)
        best = max(state["best_value"], value)
        target = best + 0.1 * max(abs(best), 1.0)
        assert target > value
        assert prop.step_size == pytest.approx((target - value) / (0.5 * 2.0))
        rule.update(hp, state, info, SearchResult(prop.step_size, 0, True, False))
        assert state["target"] == pytest.approx(target)


def test_polyak_pg_without_value_takes_the_loss_as_minus_the_return() -> None:
    rewards = torch.tensor([1.0, 0.2, 0.0], dtype=torch.float64)
    thetas = [torch.nn.Parameter(torch.tensor([0.3, -0.1, 0.2], dtype=torch.float64)) for _ in range(2)]
    opts = [rlopt.PolyakPG([t], c=0.5, max_lr=100.0) for t in thetas]  # online target: the best tracks J_hat too
    for _ in range(5):
        j = (thetas[0].softmax(0) @ rewards).item()
        opts[0].step(lambda: -(thetas[0].softmax(0) @ rewards), value=j)
        opts[1].step(lambda: -(thetas[1].softmax(0) @ rewards))  # the loss is -J_hat: no value needed
        torch.testing.assert_close(thetas[0], thetas[1], rtol=0, atol=0)
        assert opts[0].stats["target"] == opts[1].stats["target"]
    assert opts[1].stats["step_size"] > 0


def test_polyak_pg_skips_non_finite() -> None:
    w = torch.nn.Parameter(torch.ones(2))
    opt = rlopt.PolyakPG([w])
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step(lambda: w.sum(), value=math.nan)
    assert opt.stats["skipped"] == 1
    torch.testing.assert_close(w.detach(), torch.ones(2))


@pytest.mark.parametrize("precondition", [None, "adam"])
def test_sps_interpolation(precondition: str | None) -> None:
    problem = least_squares(3)
    opt = rlopt.SPS(problem.model.parameters(), precondition=precondition)
    with torch.no_grad():
        start = problem.full_loss().item()  # type: ignore[attr-defined]
    for _ in range(300):
        opt.step(problem.closure)
        problem.next_batch()
    with torch.no_grad():
        assert problem.full_loss().item() < 1e-3 * start  # type: ignore[attr-defined]


def test_sps_search_accepts_the_polyak_step_when_it_is_exact() -> None:
    # f(w) = ½ a ‖w‖², f* = 0: the SPS_max step 1/a reaches the minimiser and passes the test at once.
    a = 3.0
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = rlopt.SPS([w], search=True)
    opt.step(lambda: 0.5 * a * (w**2).sum())
    assert opt.stats["step_size"] == pytest.approx(1 / a, rel=1e-12)
    assert opt.stats["backtracks"] == 0 and opt.stats["forward_calls"] == 2
    assert w.detach().abs().max().item() < 1e-14


def test_sps_search_backtracks_an_overshoot_and_respects_the_envelope() -> None:
    # f(w) = (w - 1)² + 1 at w = 1.5 with f* = 0 below min f = 1: SPS_max = 1.25 / (0.5 · 1) = 2.5 lands on
    # w = -1 (f = 5); 1.25 gives w = 0.25 (f = 1.5625 > 1.25 - 0.125); 0.625 gives w = 0.875 (f = 1.015625 <=
    # 1.25 - 0.0625): two backtracks.
    w = torch.nn.Parameter(torch.tensor([1.5], dtype=torch.float64))
    opt = rlopt.SPS([w], search=True)
    opt.step(lambda: ((w - 1.0) ** 2).sum() + 1.0)
    assert opt.stats["step_size"] == pytest.approx(0.625, rel=1e-12) and opt.stats["backtracks"] == 2
    assert opt.stats["accepted_loss"] == pytest.approx(1.015625, rel=1e-12)
    torch.testing.assert_close(w.detach(), torch.tensor([0.875], dtype=torch.float64))
    # Under an envelope the first trial is min(SPS_max, u_k): here u_0 = 0.1 passes without a backtrack.
    w2 = torch.nn.Parameter(torch.tensor([1.5], dtype=torch.float64))
    capped = rlopt.SPS([w2], search=True, envelope=rlopt.envelope.InvSqrt(0.1))
    capped.step(lambda: ((w2 - 1.0) ** 2).sum() + 1.0)
    assert capped.stats["step_size"] == 0.1 and capped.stats["backtracks"] == 0


def test_sps_search_matches_closed_form_path_when_no_trial_fails() -> None:
    # On interpolating least squares with a small cap every first trial passes: same path as plain SPSB.
    runs = []
    for search in (False, True):
        problem = least_squares(3)
        opt = rlopt.SPS(problem.model.parameters(), search=search, envelope=rlopt.envelope.InvSqrt(1e-3))
        sizes = []
        for _ in range(20):
            opt.step(problem.closure)
            sizes.append(opt.stats["step_size"])
            assert opt.stats["backtracks"] == 0
            problem.next_batch()
        runs.append((sizes, [p.detach().clone() for p in problem.model.parameters()]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sps_search_needs_closure_and_validates() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = rlopt.SPS([w], search=True)
    loss = (w**2).sum()
    loss.backward()
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step(loss=loss)
    with pytest.raises(ValueError, match="Invalid mode"):
        rlopt.SPS([w], mode="dec", search=True)
    with pytest.raises(TypeError, match="Invalid search"):
        rlopt.SPS([w], search=1)  # type: ignore[arg-type]
    bad = (({"search_c": 1.0}, "search_c"), ({"beta": 0.0}, "beta"), ({"max_backtracks": -1}, "max_backtracks"))
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            rlopt.SPS([w], search=True, **kwargs)  # type: ignore[arg-type]
