"""Ridge regression with a tuned (log) regularization: a bilevel problem with a closed-form hypergradient."""

from __future__ import annotations

import torch
from sklearn.datasets import load_diabetes
from torch import Tensor

from rlopt.bilevel._tree import Tree
from rlopt.bilevel.problems.base import BilevelProblem, check_batch_size, check_fraction, split_indices


class Ridge(BilevelProblem):
    r"""Tune ridge regularization on scikit-learn's bundled diabetes data (442 samples, 10 features).

    Lower level (training set, ``n`` samples): ``g(x, w) = (1/2n)‖X w - t‖² + ½ Σ_j λ_j w_j²`` with
    ``λ = exp(x)`` (one per feature, or one scalar). Upper level (validation set, ``m`` samples):
    ``f(w) = (1/2m)‖X_v w - t_v‖²``. With ``A = XᵀX/n + diag(λ)``:

        w*(x) = A⁻¹ Xᵀt / n,   ∂F/∂λ_j = -w*_j (A⁻¹ ∇f(w*))_j,   ∂F/∂x_j = λ_j ∂F/∂λ_j

    (scalar ``x``: the sum over ``j``). Features and target are standardized with training statistics.

    Args:
        per_feature: one log-regularization per feature (``x`` of shape ``(10,)``) or a scalar (``()``).
        val_fraction: share of the samples used for validation (the rest trains).
        log_reg_init: initial value of every entry of ``x``.
        lower_batch_size: training minibatch size (``None`` = full batch).
        upper_batch_size: validation minibatch size (``None`` = full batch).
        seed: seed of the train/validation split.
        device: where tensors live.
        dtype: floating dtype (float64 recommended for tests).

    Example:
        >>> import torch
        >>> from rlopt.bilevel import hypergradient
        >>> p = Ridge()
        >>> x = p.initial_x()
        >>> hg = hypergradient(p.upper_loss, p.lower_loss, x, p.solve_lower(x), method="cg")
        >>> bool(torch.allclose(hg, p.closed_form_hypergradient(x)))
        True
    """

    name = "ridge"

    def __init__(
        self,
        *,
        per_feature: bool = True,
        val_fraction: float = 0.5,
        log_reg_init: float = -2.0,
        lower_batch_size: int | None = None,
        upper_batch_size: int | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        check_fraction(val_fraction, "val_fraction", 0.05, 0.95)
        data, target = load_diabetes(return_X_y=True)
        features = torch.as_tensor(data, dtype=dtype)
        targets = torch.as_tensor(target, dtype=dtype)
        n_total = features.shape[0]
        n_val = round(val_fraction * n_total)
        gen = torch.Generator().manual_seed(seed)
        val_idx, train_idx = split_indices(n_total, [n_val, n_total - n_val], gen)
        mean, std = features[train_idx].mean(0), features[train_idx].std(0)
        t_mean, t_std = targets[train_idx].mean(), targets[train_idx].std()
        self.device = torch.device(device)
        self.dtype = dtype
        self.X = ((features[train_idx] - mean) / std).to(self.device)
        self.t = ((targets[train_idx] - t_mean) / t_std).to(self.device)
        self.X_val = ((features[val_idx] - mean) / std).to(self.device)
        self.t_val = ((targets[val_idx] - t_mean) / t_std).to(self.device)
        self.n_lower, self.n_upper = self.X.shape[0], self.X_val.shape[0]
        check_batch_size(lower_batch_size, "lower_batch_size", self.n_lower)
        check_batch_size(upper_batch_size, "upper_batch_size", self.n_upper)
        self.lower_batch_size, self.upper_batch_size = lower_batch_size, upper_batch_size
        self.per_feature = per_feature
        self.n_features = self.X.shape[1]
        self.log_reg_init = float(log_reg_init)

    def initial_x(self) -> Tensor:
        shape = (self.n_features,) if self.per_feature else ()
        return torch.full(shape, self.log_reg_init, dtype=self.dtype, device=self.device)

    def initial_y(self) -> Tensor:
        return torch.zeros(self.n_features, dtype=self.dtype, device=self.device)

    def _reg(self, x: Tensor) -> Tensor:
        return torch.exp(x) * torch.ones(self.n_features, dtype=self.dtype, device=self.device)

    def lower_loss(self, x: Tree, y: Tree, batch: Tensor | None = None) -> Tensor:
        assert isinstance(x, Tensor) and isinstance(y, Tensor)
        X, t = (self.X, self.t) if batch is None else (self.X[batch], self.t[batch])
        return 0.5 * ((X @ y - t) ** 2).mean() + 0.5 * (self._reg(x) * y**2).sum()

    def upper_loss(self, x: Tree, y: Tree, batch: Tensor | None = None) -> Tensor:
        assert isinstance(y, Tensor)
        X, t = (self.X_val, self.t_val) if batch is None else (self.X_val[batch], self.t_val[batch])
        return 0.5 * ((X @ y - t) ** 2).mean()

    def _system(self, x: Tensor) -> Tensor:
        return self.X.T @ self.X / self.n_lower + torch.diag(self._reg(x))

    def solve_lower(self, x: Tensor) -> Tensor:
        """The exact lower solution ``w*(x) = A⁻¹ Xᵀt / n``."""
        return torch.linalg.solve(self._system(x.detach()), self.X.T @ self.t / self.n_lower)

    def value(self, x: Tensor) -> float:
        """``F(x) = f(w*(x))``, the upper objective at the exact lower solution."""
        return float(self.upper_loss(x, self.solve_lower(x)))

    def closed_form_hypergradient(self, x: Tensor) -> Tensor:
        """``∇F(x)`` from the formula in the class docstring (shape of ``x``)."""
        x = x.detach()
        w = self.solve_lower(x)
        grad_f = self.X_val.T @ (self.X_val @ w - self.t_val) / self.n_upper
        q = torch.linalg.solve(self._system(x), grad_f)
        d_x = self._reg(x) * (-w * q)
        return d_x if self.per_feature else d_x.sum()

    def metrics(self, x: Tree, y: Tree) -> dict[str, float]:
        assert isinstance(x, Tensor) and isinstance(y, Tensor)
        with torch.no_grad():
            hg = self.closed_form_hypergradient(x)
            return {
                "val_loss": float(self.upper_loss(x, y)),
                "value": self.value(x),
                "lower_error": float(torch.linalg.norm(y - self.solve_lower(x))),
                "exact_hypergradient_norm": float(torch.linalg.norm(hg)),
            }
