"""Bilevel solvers: convergence on ridge and hyper-cleaning, acceptance conditions, determinism, bad input."""

from __future__ import annotations

import functools
import itertools
import math
import warnings

import pytest
import torch

import rlopt
from rlopt.bilevel import BilevelSolver
from rlopt.bilevel.problems import DataHyperCleaning, Ridge
from rlopt.bilevel.upper_rules import ArmijoSearch, PolyakStep

F64 = torch.float64
RIDGE_F_STAR = 0.247837  # min_x F(x) for Ridge(): 3000 closed-form gradient steps (see test below)


@pytest.fixture(scope="module")
def ridge() -> Ridge:
    return Ridge()


@pytest.fixture(scope="module")
def cleaning() -> DataHyperCleaning:
    return DataHyperCleaning(n_train=120, n_val=80, n_test=200, dtype=F64, seed=1)


@pytest.fixture(scope="module")
def cleaning_baseline(cleaning: DataHyperCleaning) -> dict[str, float]:
    """The uniformly weighted lower solution: upper level frozen, same lower solver and lower steps."""
    solver = BilevelSolver(cleaning, "stocbio", "sgd", "bisls", upper_lr=1e-12, inner_steps=3, seed=0)
    return solver.run(10, eval_every=1000).final


def test_ridge_reference_optimum(ridge: Ridge) -> None:
    x = ridge.initial_x()
    for _ in range(3000):
        x = x - 50.0 * ridge.closed_form_hypergradient(x)
    assert float(torch.linalg.norm(ridge.closed_form_hypergradient(x))) < 1e-4
    assert abs(ridge.value(x) - RIDGE_F_STAR) < 1e-5


@pytest.mark.parametrize(
    ("algorithm", "steps", "max_gap"),
    [("stocbio", 25, 0.15), ("amigo", 25, 0.15), ("soba", 80, 0.5), ("double_loop", 25, 0.2)],
)
def test_bisls_converges_on_ridge(ridge: Ridge, algorithm: str, steps: int, max_gap: float) -> None:
    history = BilevelSolver(ridge, algorithm, "bisls", "bisls", seed=0).run(steps, eval_every=steps)
    f0 = ridge.value(ridge.initial_x())
    gap = (history.final["value"] - RIDGE_F_STAR) / (f0 - RIDGE_F_STAR)
    assert gap < max_gap, gap
    assert history.final["upper_skipped"] == 0 and history.final["lower_skipped"] == 0


@pytest.mark.parametrize(
    "rules",
    [("sgd", "sgd"), ("adam", "adam"), ("bisps", "bisps"), ("bisls-adam", "bisls-adam"), ("bisps-adam", "bisps-adam")],
)
def test_other_rules_decrease_ridge_objective(ridge: Ridge, rules: tuple[str, str]) -> None:
    lrs = {"sgd": (50.0, 0.2), "adam": (0.1, 0.05)}.get(rules[0], (None, None))
    solver = BilevelSolver(ridge, "stocbio", *rules, upper_lr=lrs[0], lower_lr=lrs[1], seed=0)
    history = solver.run(25, eval_every=25)
    assert history.final["value"] < ridge.value(ridge.initial_x()) - 0.2 * (
        ridge.value(ridge.initial_x()) - RIDGE_F_STAR
    )


@pytest.mark.parametrize("algorithm", ["stocbio", "amigo", "soba", "double_loop"])
def test_hypercleaning_finds_noisy_samples(
    cleaning: DataHyperCleaning, cleaning_baseline: dict[str, float], algorithm: str
) -> None:
    steps = 40 if algorithm == "soba" else 10
    solver = BilevelSolver(
        cleaning, algorithm, "bisls", "bisls", inner_steps=3, linear_steps=5, hypergrad_options={"maxiter": 5}, seed=0
    )
    final = solver.run(steps, eval_every=steps).final
    # The upper level learned to down-weight corrupted samples...
    assert final["weight_noisy"] < final["weight_clean"] - 0.2, final
    # ...and the validation loss and test accuracy beat the uniformly weighted lower solution's.
    assert final["val_loss"] < cleaning_baseline["val_loss"] - 0.15, (final["val_loss"], cleaning_baseline)
    assert final["test_accuracy"] > cleaning_baseline["test_accuracy"]


def test_minibatch_hypercleaning_runs_and_improves() -> None:
    problem = DataHyperCleaning(n_train=120, n_val=80, n_test=200, lower_batch_size=60, upper_batch_size=40, seed=1)
    solver = BilevelSolver(problem, "amigo", "bisls", "bisls", inner_steps=3, linear_steps=3, seed=0)
    final = solver.run(15, eval_every=15).final
    # Each weight moves only when its sample is drawn: a smaller but clear separation.
    assert final["weight_noisy"] < final["weight_clean"] - 0.1


def check_upper_armijo(record: dict[str, float], c: float = 0.1) -> None:
    alpha = record["upper_step_size"]
    assert alpha <= record["upper_envelope"] * (1 + 1e-12)
    if record["upper_accepted"]:
        bound = record["upper_loss"] - c * alpha * record["upper_slope"] + record["upper_slack"]
        assert record["upper_trial_loss"] <= bound


def test_acceptance_conditions_bisls(cleaning: DataHyperCleaning) -> None:
    solver = BilevelSolver(cleaning, "stocbio", "bisls", "bisls", inner_steps=4, linear_steps=3, seed=0)
    lower_checks: list[tuple[float, float, float, float, int]] = []
    original_step = solver.lower_opt.step

    def recording_step(*args: object, **kwargs: object) -> object:
        out = original_step(*args, **kwargs)  # type: ignore[arg-type]
        s = solver.lower_opt.stats  # type: ignore[attr-defined]
        lower_checks.append((s["loss"], s["accepted_loss"], s["slope"], s["step_size"], int(s["steps"]) - 1))
        return out

    solver.lower_opt.step = recording_step  # type: ignore[method-assign]
    history = solver.run(12, eval_every=100)
    envelope = rlopt.envelope.InvSqrt(10.0)
    c_lower = solver.lower_opt.param_groups[0]["c"]
    assert len(lower_checks) == 48
    for loss, accepted, slope, eta, k in lower_checks:
        assert eta <= envelope(k) * (1 + 1e-12)
        assert accepted <= loss - c_lower * eta * slope + 1e-12
    starts = []
    for record in history.records:
        check_upper_armijo(record)
        starts.append(record["upper_step_size"])
    # The bound's reset: a search never starts above the previous accepted step grown by gamma^(1/n).
    assert all(b <= a * 2.0 ** (1 / 10) * (1 + 1e-12) for a, b in itertools.pairwise(starts) if a > 0)


def test_acceptance_conditions_bisps(cleaning: DataHyperCleaning) -> None:
    """Both levels: the capped Polyak step is the first trial; the accepted step passes the Armijo test."""
    solver = BilevelSolver(cleaning, "amigo", "bisps", "bisps", inner_steps=3, linear_steps=3, seed=0)
    lower_checks: list[tuple[float, float, float, float, float, int, int]] = []
    original_step = solver.lower_opt.step

    def recording_step(*args: object, **kwargs: object) -> object:
        out = original_step(*args, **kwargs)  # type: ignore[arg-type]
        s = solver.lower_opt.stats  # type: ignore[attr-defined]
        lower_checks.append(
            (s["loss"], s["accepted_loss"], s["slope"], s["grad_norm"], s["step_size"], s["backtracks"], s["steps"] - 1)
        )
        return out

    solver.lower_opt.step = recording_step  # type: ignore[method-assign]
    history = solver.run(10, eval_every=100)
    backtracked = 0
    for record in history.records:
        gap, slope = record["upper_loss"], record["upper_slope"]
        first = min(gap / (0.5 * slope), record["upper_envelope"])
        backtracked += int(record["upper_backtracks"])
        assert math.isclose(record["upper_step_size"], first * 0.5 ** record["upper_backtracks"], rel_tol=1e-12)
        check_upper_armijo(record)
    envelope = rlopt.envelope.InvSqrt(10.0)
    assert len(lower_checks) == 30
    for loss, accepted, slope, grad_norm, eta, backtracks, k in lower_checks:
        first = min(loss / (0.5 * grad_norm**2), envelope(k))
        assert math.isclose(eta, first * 0.5**backtracks, rel_tol=1e-9)
        assert eta <= envelope(k) * (1 + 1e-12)
        assert accepted <= loss - 0.1 * eta * slope + 1e-12
    # The test is not idle here: the first steps of hyper-cleaning overshoot and are cut.
    assert backtracked > 0 or any(b for *_, b, _ in lower_checks)


def test_bisps_without_search_is_the_closed_form(cleaning: DataHyperCleaning) -> None:
    solver = BilevelSolver(
        cleaning, "amigo", "bisps", "bisps", inner_steps=3, linear_steps=3, seed=0,
        upper_options={"search": False}, lower_options={"search": False},
    )
    history = solver.run(10, eval_every=100)
    for record in history.records:
        gap, slope = record["upper_loss"], record["upper_slope"]
        expected = min(gap / (0.5 * slope), record["upper_envelope"])
        assert math.isclose(record["upper_step_size"], expected, rel_tol=1e-12)
        assert record["upper_backtracks"] == 0 and math.isnan(record["upper_trial_loss"])
    stats = solver.lower_opt.stats  # type: ignore[attr-defined]
    assert stats["step_size"] <= rlopt.envelope.InvSqrt(10.0)(stats["steps"] - 1) * (1 + 1e-12)
    assert stats["forward_calls"] == 1  # no trial evaluations


def test_deterministic(cleaning: DataHyperCleaning) -> None:
    def run() -> list[dict[str, float]]:
        problem = DataHyperCleaning(n_train=120, n_val=80, n_test=100, lower_batch_size=32, upper_batch_size=32)
        solver = BilevelSolver(problem, "soba", "bisls", "bisls", seed=3)
        records = solver.run(8, eval_every=4).records
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]

    assert run() == run()


def test_run_continues_and_global_rng_untouched(ridge: Ridge) -> None:
    state = torch.get_rng_state()
    solver = BilevelSolver(ridge, "amigo", "bisls", "bisls", seed=0)
    solver.run(3)
    solver.run(2)
    assert solver.outer_step == 5
    assert torch.equal(state, torch.get_rng_state())


def test_rlopt_optimizers_as_rules(ridge: Ridge) -> None:
    f0 = ridge.value(ridge.initial_x())
    cases: list[tuple[object, object, dict[str, float]]] = [
        ("sps", "sls", {"max_lr": 100.0}),  # SPS_max on a non-interpolating upper loss needs its cap
        (functools.partial(rlopt.SLS, lr=100.0), rlopt.SPS, {}),
    ]
    for upper, lower, options in cases:
        with warnings.catch_warnings():
            # A full-batch line search at roundoff-level decrease may give up (counted in stats, warned once).
            warnings.simplefilter("ignore", RuntimeWarning)
            solver = BilevelSolver(ridge, "amigo", upper, lower, upper_options=options, seed=0)  # type: ignore[arg-type]
            history = solver.run(10, eval_every=10)
        assert history.final["value"] < f0 - 0.2 * (f0 - RIDGE_F_STAR)


def test_diverging_lower_level_is_skipped_and_counted(ridge: Ridge) -> None:
    solver = BilevelSolver(ridge, "stocbio", "sgd", "sgd", upper_lr=1.0, lower_lr=1e40, seed=0)
    history = solver.run(3)
    assert history.final["lower_skipped"] == 3
    assert all(torch.isfinite(t).all() for t in solver.variables)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"algorithm": "bogus"}, ValueError, r"Invalid algorithm: 'bogus'.*stocbio.*amigo.*soba"),
        ({"upper": "nope"}, ValueError, r"Invalid upper: 'nope'.*bisls"),
        ({"lower": 3}, TypeError, r"Invalid lower"),
        ({"upper_lr": -1.0}, ValueError, r"Invalid upper_lr"),
        ({"inner_steps": 0}, ValueError, r"Invalid inner_steps"),
        ({"linear_lr": "fast"}, ValueError, r"Invalid linear_lr"),
        ({"hypergrad": "magic"}, ValueError, r"Invalid hypergrad: 'magic'.*'cg'"),
        ({"response": "exact"}, ValueError, r"Invalid response"),
        ({"seed": 1.5}, TypeError, r"Invalid seed"),
    ],
)
def test_bad_solver_arguments(ridge: Ridge, kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        BilevelSolver(ridge, **kwargs)  # type: ignore[arg-type]


def test_bad_problem_and_run_arguments(ridge: Ridge) -> None:
    with pytest.raises(TypeError, match="Invalid problem"):
        BilevelSolver("ridge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Invalid outer_steps"):
        BilevelSolver(ridge).run(0)


# ---------------------------------------------------------------------------------------------------
# Upper rules in isolation


def test_armijo_search_condition_reset_and_failure() -> None:
    search = ArmijoSearch(lr_b=8.0, c=0.1, beta=0.5, gamma=2.0, n=1, safeguard=0.0)
    # F(x) = x² at x = 1 along d = 2: φ(α) = (1 - 2α)².
    step = search.step(lambda a: (1 - 2 * a) ** 2, slope=4.0)
    assert step.accepted and step.trial_loss <= 1.0 - 0.1 * step.step_size * 4.0
    assert step.step_size == 0.5  # 8 -> 4 -> 2 -> 1 -> 0.5 (first trial: min(u_0 = 8, 8 * 2))
    assert step.backtracks == 4
    # Reset: next start is min(u_1, 0.5 * 2) = 1.0, which fails; 0.5 is accepted after one backtrack.
    step2 = search.step(lambda a: (1 - 2 * a) ** 2, slope=4.0)
    assert step2.step_size == 0.5 and step2.backtracks == 1
    # Not a descent direction: every trial fails, no step, previous step kept.
    failed = ArmijoSearch(lr_b=1.0, max_backtracks=5, safeguard=0.0)
    out = failed.step(lambda a: 1.0 + a, slope=1.0)
    assert not out.accepted and out.step_size == 0.0 and failed.failures == 1 and failed.previous == 1.0


def test_adam_direction_search_condition() -> None:
    search = ArmijoSearch(lr_b=1.0, precondition="adam", safeguard=0.0)
    d = torch.tensor([2.0, -0.5], dtype=F64)
    p = search.direction(d)
    torch.testing.assert_close(p, torch.sign(d), rtol=1e-6, atol=1e-6)  # first Adam step: d / |d|
    x0 = torch.tensor([1.0, -0.25], dtype=F64)  # F(x) = ‖x‖², ∇F = d
    slope = float(d @ p)
    step = search.step(lambda a: float(((x0 - a * p) ** 2).sum()), slope)
    assert step.accepted and step.trial_loss <= step.reference_loss - 0.1 * step.step_size * slope


def test_armijo_search_envelope_bounds_the_start() -> None:
    search = ArmijoSearch(lr_b=1.0, safeguard=0.0)
    sizes = [search.step(lambda a: -a, slope=1e-9).step_size for _ in range(5)]
    assert sizes == pytest.approx([1.0 / math.sqrt(k + 1) for k in range(5)])


def test_polyak_step_formula_and_cap() -> None:
    rule = PolyakStep(lr_b=1.0, c=0.5, search=False)
    assert rule.step(lambda a: 0.0, slope=4.0, phi0=1.0).step_size == 0.5
    assert rule.step(lambda a: 0.0, slope=1e-6, phi0=1.0).step_size == pytest.approx(1 / math.sqrt(2))
    assert rule.step(lambda a: 0.0, slope=1.0, phi0=0.0).step_size == 0.0


def test_polyak_step_search_accepts_the_closed_form_on_a_quadratic() -> None:
    # F(x) = ½‖A x‖² with f* = 0 known: the Polyak step along d = Aᵀ A x passes the test, no trial rejected.
    torch.manual_seed(0)
    a = torch.randn(6, 4, dtype=F64)
    x0 = torch.randn(4, dtype=F64)

    def f(x: torch.Tensor) -> float:
        return float(0.5 * (a @ x).square().sum())

    d = a.T @ (a @ x0)
    slope = float(d @ d)
    step = PolyakStep(lr_b=1e6).step(lambda al: f(x0 - al * d), slope)
    assert step.accepted and step.backtracks == 0
    assert step.step_size == pytest.approx(f(x0) / (0.5 * slope), rel=1e-12)


def test_polyak_step_search_backtracks_an_overshoot_under_the_envelope() -> None:
    # φ(α) = (1 - 2α)² + 1, ‖d‖² = 4, f* = 0 far below min φ = 1: the closed form 2 / (0.5 · 4) = 1 overshoots
    # (φ(1) = φ(0)) and is halved until the Armijo test holds; every trial stays below the envelope.
    trials: list[float] = []

    def phi(alpha: float) -> float:
        trials.append(alpha)
        return (1.0 - 2.0 * alpha) ** 2 + 1.0

    rule = PolyakStep(lr_b=8.0, safeguard=0.0)
    step = rule.step(phi, slope=4.0)
    assert trials[0] == 0.0 and trials[1] == pytest.approx(min(2.0 / (0.5 * 4.0), 8.0))
    assert all(t <= 8.0 for t in trials)
    assert step.accepted and step.trial_loss <= 2.0 - 0.1 * step.step_size * 4.0
    assert step.step_size == pytest.approx(trials[1] * 0.5**step.backtracks) and step.backtracks >= 1
    # A model that never decreases: no step, counted, never negative.
    rule = PolyakStep(lr_b=8.0, safeguard=0.0, max_backtracks=5)
    step = rule.step(lambda al: 1.0 + al, slope=1.0, phi0=1.0)
    assert step.step_size == 0.0 and not step.accepted and rule.failures == 1


def test_polyak_step_search_treats_non_finite_trials_as_failures() -> None:
    rule = PolyakStep(lr_b=4.0, safeguard=0.0)
    step = rule.step(lambda al: 1.0 if al == 0 else (math.inf if al > 0.3 else 1.0 - al), slope=1.0, phi0=1.0)
    assert step.accepted and 0 < step.step_size <= 0.3


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (ArmijoSearch, {"c": 1.5}, "Invalid c"),
        (ArmijoSearch, {"beta": 0.0}, "Invalid beta"),
        (ArmijoSearch, {"gamma": 0.5}, "Invalid gamma"),
        (ArmijoSearch, {"safeguard": -1.0}, "Invalid safeguard"),
        (ArmijoSearch, {"lr_b": 0.0}, "Invalid lr_b"),
        (PolyakStep, {"c": 0.0}, "Invalid c"),
        (PolyakStep, {"c_search": 1.0}, "Invalid c_search"),
        (PolyakStep, {"beta": 1.0}, "Invalid beta"),
        (PolyakStep, {"safeguard": -1.0}, "Invalid safeguard"),
        (PolyakStep, {"max_backtracks": -1}, "Invalid max_backtracks"),
        (PolyakStep, {"f_star": math.nan}, "Invalid f_star"),
    ],
)
def test_upper_rule_validation(cls: type, kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("rules", [("bisls", "bisls"), ("bisls-adam", "bisls-adam")])
def test_solver_on_dict_upper_variable_and_regularization(rules: tuple[str, str]) -> None:
    from rlopt.bilevel.problems import HyperRepresentation, RegularizationHPO

    for problem in (
        HyperRepresentation(hidden=8, n_train=200, n_val=100, n_test=100, lower_batch_size=100, upper_batch_size=100),
        RegularizationHPO(),
    ):
        start = problem.metrics(problem.initial_x(), problem.initial_y())["val_loss"]
        final = BilevelSolver(problem, "amigo", *rules, inner_steps=5, linear_steps=5, seed=0).run(8).final
        assert final["val_loss"] < 0.7 * start, (type(problem).__name__, start, final["val_loss"])
