"""Linear solvers against a dense solve on random SPD systems (tensors and dicts of tensors)."""

from __future__ import annotations

import pytest
import torch

from rlopt.bilevel import _tree
from rlopt.bilevel.linear_solvers import conjugate_gradient, dense_solve, neumann_series, richardson

F64 = torch.float64


def spd(n: int, seed: int, cond: float = 50.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=F64)
    return q @ torch.diag(eig) @ q.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cg_solves_in_n_steps(seed: int) -> None:
    A = spd(12, seed)
    b = torch.randn(12, generator=torch.Generator().manual_seed(seed + 10), dtype=F64)
    res = conjugate_gradient(lambda v: A @ v, b, maxiter=100, rtol=1e-12)
    assert res.converged and res.iterations <= 14
    torch.testing.assert_close(res.solution, torch.linalg.solve(A, b), rtol=1e-9, atol=1e-12)


def test_cg_on_dict_and_warm_start() -> None:
    A = spd(6, 3)
    b = torch.arange(1.0, 7.0, dtype=F64)
    like = {"a": b[:2], "b": b[2:].reshape(2, 2)}

    def matvec(v: _tree.Tree) -> _tree.Tree:
        return _tree.unravel(A @ _tree.ravel(v), like)

    ref = torch.linalg.solve(A, b)
    res = conjugate_gradient(matvec, like)
    torch.testing.assert_close(_tree.ravel(res.solution), ref)
    warm = conjugate_gradient(matvec, like, _tree.unravel(ref, like))
    assert warm.iterations == 1  # the residual check costs one product and is already below tolerance


def test_neumann_error_is_geometric() -> None:
    A = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=F64))
    b = torch.ones(3, dtype=F64)
    alpha = 0.2
    for k in (0, 3, 10):
        v = neumann_series(lambda u: A @ u, b, alpha=alpha, iterations=k).solution
        # Exact error: (I - αA)^{k+1} A⁻¹ b.
        expected = torch.linalg.matrix_power(torch.eye(3, dtype=F64) - alpha * A, k + 1) @ torch.linalg.solve(A, b)
        torch.testing.assert_close(torch.linalg.solve(A, b) - v, expected)


def test_richardson_from_zero_is_neumann() -> None:
    A = spd(5, 4, cond=5.0)
    b = torch.ones(5, dtype=F64)
    r = richardson(lambda u: A @ u, b, alpha=0.1, iterations=8).solution
    n = neumann_series(lambda u: A @ u, b, alpha=0.1, iterations=7).solution
    torch.testing.assert_close(r, n)


def test_dense_solve_spd_and_indefinite() -> None:
    A = spd(4, 5)
    b = torch.ones(4, dtype=F64)
    torch.testing.assert_close(A @ dense_solve(A, b), b)
    B = torch.diag(torch.tensor([1.0, -2.0, 3.0, 4.0], dtype=F64))
    torch.testing.assert_close(B @ dense_solve(B, b), b)


def test_bad_arguments() -> None:
    b = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match="Invalid alpha"):
        neumann_series(lambda v: v, b, alpha=0.0, iterations=2)
    with pytest.raises(ValueError, match="Invalid iterations"):
        richardson(lambda v: v, b, alpha=0.1, iterations=-1)
    with pytest.raises(ValueError, match="Invalid maxiter"):
        conjugate_gradient(lambda v: v, b, maxiter=-1)
    with pytest.raises(ValueError, match="square"):
        dense_solve(torch.ones(2, 3, dtype=F64), b)
