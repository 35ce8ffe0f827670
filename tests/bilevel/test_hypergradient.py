"""Hypergradient methods against closed forms, finite differences, each other, and bad input."""

from __future__ import annotations

import doctest
import importlib
import itertools

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev

from rlopt import bilevel
from rlopt.bilevel import NonFiniteError, hypergradient
from rlopt.bilevel.problems import Ridge

F64 = torch.float64


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.fixture(params=[True, False], ids=["per_feature", "scalar"])
def ridge(request: pytest.FixtureRequest) -> Ridge:
    return Ridge(per_feature=request.param)


def ridge_point(problem: Ridge) -> torch.Tensor:
    # Distinct per-feature values so that a per-feature bug cannot hide behind symmetry.
    if problem.per_feature:
        return problem.initial_x() + torch.linspace(-1.0, 1.0, problem.n_features, dtype=F64)
    return problem.initial_x() + 0.5


@pytest.mark.parametrize("method", ["exact", "cg"])
def test_ridge_closed_form_direct_methods(ridge: Ridge, method: str) -> None:
    x = ridge_point(ridge)
    out = hypergradient(ridge.upper_loss, ridge.lower_loss, x, ridge.solve_lower(x), method=method)
    assert out.shape == x.shape
    assert rel_err(out, ridge.closed_form_hypergradient(x)) < 1e-8


def test_closed_form_matches_central_differences(ridge: Ridge) -> None:
    x = ridge_point(ridge)
    eps = 1e-5
    basis = torch.eye(ridge.n_features, dtype=F64) if ridge.per_feature else torch.ones(1, dtype=F64)
    fd = torch.tensor(
        [
            (ridge.value(x + eps * e.reshape(x.shape)) - ridge.value(x - eps * e.reshape(x.shape))) / (2 * eps)
            for e in basis
        ],
        dtype=F64,
    ).reshape(x.shape)
    assert rel_err(fd, ridge.closed_form_hypergradient(x)) < 1e-6


def test_neumann_error_decreases_with_iterations(ridge: Ridge) -> None:
    x = ridge_point(ridge)
    y, ref = ridge.solve_lower(x), ridge.closed_form_hypergradient(x)
    errors = [
        rel_err(hypergradient(ridge.upper_loss, ridge.lower_loss, x, y, "neumann", iterations=k, alpha=0.3), ref)
        for k in (2, 8, 32, 128, 512)
    ]
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-8


def test_itd_error_decreases_with_steps(ridge: Ridge) -> None:
    x = ridge_point(ridge)
    ref = ridge.closed_form_hypergradient(x)
    errors = [
        rel_err(
            hypergradient(ridge.upper_loss, ridge.lower_loss, x, ridge.initial_y(), "itd", steps=t, lr=0.3),
            ref,
        )
        for t in (50, 100, 200, 400, 700)
    ]
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-8


def test_truncated_itd_error_decreases_with_truncation_length() -> None:
    problem = Ridge()
    x = ridge_point(problem)
    ref = problem.closed_form_hypergradient(x)
    errors = [
        rel_err(
            hypergradient(
                problem.upper_loss,
                problem.lower_loss,
                x,
                problem.initial_y(),
                "itd",
                steps=400,
                lr=0.3,
                truncate=k,
            ),
            ref,
        )
        for k in (2, 8, 32, 128)
    ]
    assert all(b < a for a, b in itertools.pairwise(errors)), errors


def test_itd_backends_agree() -> None:
    p = MLPProblem()
    x = {"log_decay": torch.tensor([-2.0, -1.5], dtype=F64)}
    for options in ({"steps": 15, "lr": 0.2}, {"steps": 15, "lr": 0.2, "truncate": 5}):
        a = hypergradient(p.upper, p.lower, x, p.y0, "itd", backend="autograd", **options)
        b = hypergradient(p.upper, p.lower, x, p.y0, "itd", backend="func", **options)
        torch.testing.assert_close(a["log_decay"], b["log_decay"], rtol=1e-12, atol=1e-15)


def test_higher_equals_itd(ridge: Ridge) -> None:
    pytest.importorskip("higher")
    x = ridge_point(ridge)
    args = (ridge.upper_loss, ridge.lower_loss, x, ridge.initial_y())
    for options in ({"steps": 30, "lr": 0.3}, {"steps": 30, "lr": 0.3, "truncate": 10}):
        a = hypergradient(*args, "itd", **options)
        b = hypergradient(*args, "higher", **options)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_cg_warm_start_gives_same_answer() -> None:
    problem = Ridge()
    x = ridge_point(problem)
    y = problem.solve_lower(x)
    cold = hypergradient(problem.upper_loss, problem.lower_loss, x, y, "cg")
    warm = hypergradient(problem.upper_loss, problem.lower_loss, x, y, "cg", v0=torch.ones_like(y))
    assert rel_err(warm, cold) < 1e-9


def test_dict_variables_give_the_tensor_answer() -> None:
    problem = Ridge()
    x = ridge_point(problem)
    y = problem.solve_lower(x)

    def split(t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"first": t[:4], "rest": t[4:]}

    def join(d: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([d["first"], d["rest"]])

    def upper(xd: dict[str, torch.Tensor], yd: dict[str, torch.Tensor]) -> torch.Tensor:
        return problem.upper_loss(join(xd), join(yd))

    def lower(xd: dict[str, torch.Tensor], yd: dict[str, torch.Tensor]) -> torch.Tensor:
        return problem.lower_loss(join(xd), join(yd))

    ref = problem.closed_form_hypergradient(x)
    for method, options in (("cg", {}), ("exact", {}), ("neumann", {"iterations": 600, "alpha": 0.3})):
        out = hypergradient(upper, lower, split(x), split(y), method, **options)
        assert isinstance(out, dict) and set(out) == {"first", "rest"}
        assert rel_err(join(out), ref) < 1e-8
    out = hypergradient(upper, lower, split(x), split(problem.initial_y()), "itd", steps=600, lr=0.3)
    assert rel_err(join(out), ref) < 1e-8


# ---------------------------------------------------------------------------------------------------
# Nonlinear problem: MLP lower level, per-layer log weight decay upstairs, central finite differences.


class MLPProblem:
    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).to(F64)
        self.inputs = torch.randn(40, 2, generator=gen, dtype=F64)
        self.targets = torch.sin(2 * self.inputs[:, :1]) + 0.1 * torch.randn(40, 1, generator=gen, dtype=F64)
        self.val_inputs = torch.randn(30, 2, generator=gen, dtype=F64)
        self.val_targets = torch.sin(2 * self.val_inputs[:, :1])
        self.y0 = {k: 0.5 * torch.randn(v.shape, generator=gen, dtype=F64) for k, v in self.net.named_parameters()}

    def predict(self, y: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, y, (inputs,))

    def lower(self, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
        fit = ((self.predict(y, self.inputs) - self.targets) ** 2).mean()
        decay = torch.exp(x["log_decay"])
        reg = decay[0] * ((y["0.weight"] ** 2).sum() + (y["0.bias"] ** 2).sum())
        reg = reg + decay[1] * ((y["2.weight"] ** 2).sum() + (y["2.bias"] ** 2).sum())
        return fit + 0.5 * reg

    def upper(self, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((self.predict(y, self.val_inputs) - self.val_targets) ** 2).mean() + 0.01 * (x["log_decay"] ** 2).sum()

    def solve(self, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """L-BFGS (cold start only) then Newton to machine precision (13 parameters: dense is cheap)."""

        def g(v: torch.Tensor) -> torch.Tensor:
            return self.lower(x, bilevel._tree.unravel(v, self.y0))  # type: ignore[arg-type]

        if y is None:
            flat = bilevel._tree.ravel(self.y0).clone().requires_grad_(True)
            opt = torch.optim.LBFGS([flat], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = g(flat)
                loss.backward()
                return loss

            opt.step(closure)
            flat = flat.detach()
        else:
            flat = bilevel._tree.ravel(y)
        for _ in range(8):
            flat = flat - torch.linalg.solve(jacrev(grad(g))(flat), grad(g)(flat))
        assert float(torch.linalg.norm(grad(g)(flat))) < 1e-13
        return bilevel._tree.unravel(flat, self.y0)  # type: ignore[return-value]


def test_mlp_lower_level_against_central_differences() -> None:
    p = MLPProblem()
    x = {"log_decay": torch.tensor([-2.0, -1.5], dtype=F64)}
    y_star = p.solve(x)
    eps = 1e-5
    fd = torch.zeros(2, dtype=F64)
    for j in range(2):
        e = torch.zeros(2, dtype=F64)
        e[j] = eps
        plus = {"log_decay": x["log_decay"] + e}
        minus = {"log_decay": x["log_decay"] - e}
        fd[j] = (p.upper(plus, p.solve(plus, y_star)) - p.upper(minus, p.solve(minus, y_star))) / (2 * eps)
    exact = hypergradient(p.upper, p.lower, x, y_star, "exact")["log_decay"]
    cg = hypergradient(p.upper, p.lower, x, y_star, "cg")["log_decay"]
    assert rel_err(exact, fd) < 1e-6
    assert rel_err(cg, exact) < 1e-8
    # ITD started at the solution stays there, so it converges to the implicit value as T grows.
    itd = hypergradient(p.upper, p.lower, x, y_star, "itd", steps=400, lr=0.2)["log_decay"]
    assert rel_err(itd, exact) < 1e-6


def test_deterministic() -> None:
    problem = Ridge()
    x = ridge_point(problem)
    for method, y, options in (
        ("cg", problem.solve_lower(x), {}),
        ("neumann", problem.solve_lower(x), {"iterations": 20}),
        ("itd", problem.initial_y(), {"steps": 20}),
    ):
        a = hypergradient(problem.upper_loss, problem.lower_loss, x, y, method, **options)
        b = hypergradient(problem.upper_loss, problem.lower_loss, x, y, method, **options)
        assert torch.equal(a, b)


def test_inputs_are_not_modified() -> None:
    problem = Ridge()
    x = ridge_point(problem)
    y = problem.solve_lower(x)
    x_copy, y_copy = x.clone(), y.clone()
    for method in ("cg", "itd"):
        hypergradient(problem.upper_loss, problem.lower_loss, x, y, method)
        assert torch.equal(x, x_copy) and torch.equal(y, y_copy)


def test_runs_on_device(device: torch.device) -> None:
    problem = Ridge(device=device)
    x = ridge_point(problem).to(device)
    out = hypergradient(problem.upper_loss, problem.lower_loss, x, problem.solve_lower(x), "cg")
    assert out.device.type == device.type
    assert rel_err(out, problem.closed_form_hypergradient(x)) < 1e-8


# ---------------------------------------------------------------------------------------------------
# Bad input


def quad_upper(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (y**2).sum()


def quad_lower(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (y**2).sum() - (x * y).sum()


X = torch.ones(3, dtype=F64)
Y = torch.ones(3, dtype=F64)


def test_unknown_method_lists_allowed() -> None:
    with pytest.raises(
        ValueError, match=r"Unknown hypergradient method 'bogus'.*'cg'.*'exact'.*'higher'.*'itd'.*'neumann'"
    ):
        hypergradient(quad_upper, quad_lower, X, Y, method="bogus")


def test_unknown_option_lists_fields() -> None:
    with pytest.raises(TypeError, match=r"Unknown option\(s\) \['steps'\] for method 'cg'.*maxiter"):
        hypergradient(quad_upper, quad_lower, X, Y, method="cg", steps=3)


@pytest.mark.parametrize(
    ("method", "options", "match"),
    [
        ("cg", {"maxiter": 0}, "maxiter"),
        ("cg", {"rtol": -1.0}, "rtol"),
        ("neumann", {"alpha": 0.0}, "alpha"),
        ("neumann", {"iterations": -1}, "iterations"),
        ("itd", {"steps": 0}, "steps"),
        ("itd", {"lr": -0.1}, "lr"),
        ("itd", {"steps": 5, "truncate": 6}, "truncate"),
        ("itd", {"backend": "jax"}, "backend"),
        ("exact", {"max_dim": 2}, "max_dim"),
    ],
)
def test_invalid_config_values(method: str, options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hypergradient(quad_upper, quad_lower, X, Y, method=method, **options)


def test_non_scalar_loss() -> None:
    with pytest.raises(ValueError, match=r"upper\(x, y\) must return a scalar.*shape \(3,\)"):
        hypergradient(lambda x, y: y**2, quad_lower, X, Y)
    with pytest.raises(ValueError, match=r"lower\(x, y\) must return a scalar"):
        hypergradient(quad_upper, lambda x, y: y**2 - x * y, X, Y)
    with pytest.raises(TypeError, match=r"must return a torch\.Tensor"):
        hypergradient(lambda x, y: 1.0, quad_lower, X, Y)  # type: ignore[arg-type, return-value]


def test_wrong_types() -> None:
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor or a dict"):
        hypergradient(quad_upper, quad_lower, [1.0, 2.0, 3.0], Y)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"x has dtype torch.int64; it must be floating point"):
        hypergradient(quad_upper, quad_lower, torch.ones(3, dtype=torch.long), Y)
    with pytest.raises(TypeError, match=r"y\['w'\] must be a torch.Tensor"):
        hypergradient(quad_upper, quad_lower, X, {"w": 1.0})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"y is an empty dict"):
        hypergradient(quad_upper, quad_lower, X, {})
    with pytest.raises(TypeError, match="upper must be a callable"):
        hypergradient("f", quad_lower, X, Y)  # type: ignore[arg-type]


def test_x_without_gradient_path() -> None:
    with pytest.raises(ValueError, match=r"neither upper.*nor lower.*depends on x"):
        hypergradient(quad_upper, lambda x, y: 0.5 * (y**2).sum() - (x.detach() * y).sum(), X, Y)
    with pytest.raises(ValueError, match=r"lower\(x, y\) does not depend on y"):
        hypergradient(quad_upper, lambda x, y: (x**2).sum(), X, Y)


def test_shape_mismatch() -> None:
    problem = Ridge()
    with pytest.raises(ValueError, match=r"lower\(x, y\) failed on the given x Tensor\(3,\)"):
        hypergradient(problem.upper_loss, problem.lower_loss, torch.zeros(3, dtype=F64), problem.initial_y())
    with pytest.raises(ValueError, match=r"v0 must have the structure and shapes of y"):
        hypergradient(quad_upper, quad_lower, X, Y, "cg", v0=torch.zeros(4, dtype=F64))


def test_non_finite_values() -> None:
    with pytest.raises(ValueError, match="x contains non-finite"):
        hypergradient(quad_upper, quad_lower, torch.tensor([1.0, float("nan"), 0.0], dtype=F64), Y)
    with pytest.raises(NonFiniteError, match=r"upper\(x, y\) is not finite"):
        hypergradient(lambda x, y: (y**2).sum() / 0.0, quad_lower, X, Y)
    # A diverging unrolled inner loop (lr far above 2/L) is reported, not returned.
    with pytest.raises(NonFiniteError, match="diverged"):
        hypergradient(quad_upper, lambda x, y: 1e3 * (y**2).sum() - (x * y).sum(), X, Y, "itd", steps=200, lr=1.0)


def test_higher_missing_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "higher", None)
    with pytest.raises(ImportError, match="pip install higher"):
        hypergradient(quad_upper, quad_lower, X, Y, "higher", steps=2)


@pytest.mark.parametrize(
    "name", ["rlopt.bilevel.hypergradients", "rlopt.bilevel.linear_solvers", "rlopt.bilevel.problems.ridge"]
)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_implicit_system_products_match_matrices() -> None:
    from rlopt.bilevel.hypergradients import ImplicitSystem

    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)
    B = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]], dtype=F64)
    system = ImplicitSystem(
        lambda x, y: (y**2).sum() + (x**2).sum(),
        lambda x, y: 0.5 * y @ A @ y - (B @ x) @ y,
        torch.ones(3, dtype=F64),
        torch.ones(2, dtype=F64),
    )
    v, d = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([1.0, -1.0, 2.0], dtype=F64)
    torch.testing.assert_close(system.hvp(v), A @ v)
    torch.testing.assert_close(system.cross(v), -B.T @ v)  # ∇²_xy g = -Bᵀ
    torch.testing.assert_close(system.jvp_x(d), -B @ d)
    torch.testing.assert_close(system.grad_x_upper, 2 * torch.ones(3, dtype=F64))
    # No coupling between x and y in g: the mixed products are zero, not an error.
    uncoupled = ImplicitSystem(lambda x, y: x.sum() + y.sum(), lambda x, y: (y**2).sum(), d, v)
    assert not bool(uncoupled.jvp_x(d).any()) and not bool(uncoupled.cross(v).any())
