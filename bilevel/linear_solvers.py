"""Linear solvers for the implicit-differentiation system ``H v = b`` with ``H`` given only as a product.

Implicit hypergradients need ``v = [∇²_yy g]⁻¹ ∇_y f``. ``H = ∇²_yy g`` is never formed: the solvers take
``matvec(v) = H v`` (one Hessian-vector product) and work on tensors or dicts of tensors. ``H`` must be
symmetric positive definite (the lower problem strongly convex in ``y`` near the solution).

- :func:`conjugate_gradient`: Hestenes & Stiefel (1952); exact in ``dim`` steps in exact arithmetic.
- :func:`neumann_series`: ``v = α Σ_{k=0}^{K} (I - αH)^k b``, the truncated Neumann series of ``(αH)⁻¹``
  used by stocBiO (Ji, Yang & Liang, ICML 2021); converges when ``0 < α < 2 / λ_max(H)``.
- :func:`richardson`: ``v ← v - α (H v - b)`` from a warm start, the inner solver of AmIGO
  (Arbel & Mairal, ICLR 2022). From ``v = 0``, ``K`` steps give the Neumann sum with ``K - 1`` terms.
- :func:`dense_solve`: Cholesky (LU fallback) for an explicit matrix; for small problems and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rlopt.bilevel import _tree
from rlopt.bilevel._tree import Tree
from rlopt.validation import check_int, check_positive

MatVec = Callable[[Tree], Tree]


@dataclass
class SolveResult:
    """The outcome of an iterative solve.

    Attributes:
        solution: the approximate solution ``v`` (same structure as ``b``).
        iterations: number of matrix-vector products used.
        residual_norm: ``‖H v - b‖`` when the solver computes it for free (CG), else ``nan``.
        converged: True when a tolerance was reached (CG); False for fixed-count solvers that stopped early
            for no reason other than the count.
    """

    solution: Tree
    iterations: int
    residual_norm: float
    converged: bool


def conjugate_gradient(
    matvec: MatVec,
    b: Tree,
    x0: Tree | None = None,
    *,
    maxiter: int = 100,
    rtol: float = 1e-10,
    atol: float = 0.0,
) -> SolveResult:
    """Solve ``H v = b`` for symmetric positive definite ``H`` by conjugate gradients.

    Stops when ``‖r‖ <= max(rtol ‖b‖, atol)`` or after ``maxiter`` products. ``matvec`` must be a fixed linear
    map (same minibatch at every call), or CG's conjugacy is lost.

    Args:
        matvec: ``v -> H v``.
        b: right-hand side (tensor or dict of tensors).
        x0: warm start (default zeros).
        maxiter: maximum number of products.
        rtol: tolerance relative to ``‖b‖``.
        atol: absolute tolerance on ``‖r‖``.

    Returns:
        A :class:`SolveResult`.

    Example:
        >>> import torch
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> res = conjugate_gradient(lambda v: A @ v, torch.ones(2, dtype=torch.float64))
        >>> torch.allclose(A @ res.solution, torch.ones(2, dtype=torch.float64))
        True
    """
    check_int("maxiter", maxiter, 0)
    if not rtol >= 0 or not atol >= 0:
        raise ValueError(f"Invalid tolerances: rtol={rtol!r}, atol={atol!r}, expected both >= 0")
    b_norm = float(_tree.norm(b))
    threshold = max(rtol * b_norm, atol)
    if x0 is None:
        x = _tree.zeros_like(b)
        r = b
        used = 0
    else:
        x = x0
        r = _tree.sub(b, matvec(x0))
        used = 1
    p = r
    rs = _tree.dot(r, r)
    res_norm = float(torch.sqrt(rs))
    iterations = 0
    while res_norm > threshold and iterations < maxiter:
        hp = matvec(p)
        used += 1
        curvature = _tree.dot(p, hp)
        if not curvature > 0:
            # H is not positive definite along p: stop with what we have rather than divide by <= 0.
            break
        step = rs / curvature
        x = _tree.add(x, p, step)
        r = _tree.add(r, hp, -step)
        rs_new = _tree.dot(r, r)
        p = _tree.add(r, p, rs_new / rs)
        rs = rs_new
        res_norm = float(torch.sqrt(rs))
        iterations += 1
    return SolveResult(x, used, res_norm, res_norm <= threshold)


def neumann_series(matvec: MatVec, b: Tree, *, alpha: float, iterations: int) -> SolveResult:
    """Approximate ``H⁻¹ b`` by the truncated Neumann series ``α Σ_{k=0}^{K} (I - αH)^k b``.

    The error is ``(I - αH)^{K+1} H⁻¹ b``: it vanishes geometrically when ``0 < α < 2/λ_max(H)`` and
    ``H`` is positive definite. Uses ``K = iterations`` products. stocBiO (Ji et al. 2021) uses this with a
    fresh minibatch in each product; pass a ``matvec`` that draws one if you want that.

    Args:
        matvec: ``v -> H v``.
        b: right-hand side.
        alpha: the scaling ``α``.
        iterations: ``K``, the number of products (``K + 1`` terms).

    Returns:
        A :class:`SolveResult` (``residual_norm`` is ``nan``: it would cost one more product).

    Example:
        >>> import torch
        >>> A = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> v = neumann_series(lambda v: A @ v, torch.ones(2, dtype=torch.float64), alpha=0.5, iterations=60)
        >>> torch.allclose(v.solution, torch.tensor([0.5, 1.0], dtype=torch.float64))
        True
    """
    check_positive("alpha", alpha)
    check_int("iterations", iterations, 0)
    term = b
    total = b
    for _ in range(iterations):
        term = _tree.add(term, matvec(term), -alpha)
        total = _tree.add(total, term)
    return SolveResult(_tree.scale(total, alpha), iterations, float("nan"), False)


def richardson(matvec: MatVec, b: Tree, x0: Tree | None = None, *, alpha: float, iterations: int) -> SolveResult:
    """Run ``iterations`` steps of ``v ← v - α (H v - b)`` (gradient descent on ``½vᵀHv - bᵀv``).

    Warm-starting from the previous outer step's solution is AmIGO's amortization (Arbel & Mairal 2022).

    Args:
        matvec: ``v -> H v``.
        b: right-hand side.
        x0: warm start (default zeros).
        alpha: step size, convergent for ``0 < α < 2/λ_max(H)``.
        iterations: number of steps (= products).

    Returns:
        A :class:`SolveResult` (``residual_norm`` is that of the last iterate before its update).
    """
    check_positive("alpha", alpha)
    check_int("iterations", iterations, 0)
    v = _tree.zeros_like(b) if x0 is None else x0
    res_norm = float("nan")
    for _ in range(iterations):
        residual = _tree.sub(matvec(v), b)
        res_norm = float(_tree.norm(residual))
        v = _tree.add(v, residual, -alpha)
    return SolveResult(v, iterations, res_norm, False)


def dense_solve(matrix: Tensor, rhs: Tensor) -> Tensor:
    """Solve ``matrix @ v = rhs`` for a symmetric matrix: Cholesky when positive definite, else LU.

    Args:
        matrix: a square ``(n, n)`` tensor.
        rhs: an ``(n,)`` or ``(n, k)`` tensor.

    Returns:
        The solution, shaped like ``rhs``.
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square 2-D, got shape {tuple(matrix.shape)}")
    if rhs.shape[0] != matrix.shape[0]:
        raise ValueError(f"rhs has {rhs.shape[0]} rows, matrix has {matrix.shape[0]}")
    column = rhs.ndim == 1
    rhs2 = rhs.unsqueeze(-1) if column else rhs
    factor, info = torch.linalg.cholesky_ex(matrix)
    out = torch.cholesky_solve(rhs2, factor) if int(info) == 0 else torch.linalg.solve(matrix, rhs2)
    return out.squeeze(-1) if column else out
