"""A small zoo of named problems for the optimizer tests: each gives a model and a minibatch closure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Closure = Callable[[], Tensor]


@dataclass
class Problem:
    name: str
    model: nn.Module
    closure: Closure  # loss on the current minibatch
    next_batch: Callable[[], None]  # advance to the next minibatch


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Callable[[], Tensor]:
    """Cycle through shuffled minibatch index sets, epoch after epoch."""
    order: list[Tensor] = []

    def nxt() -> Tensor:
        if not order:
            order.extend(torch.randperm(n, generator=generator).split(batch_size))
        return order.pop(0)

    return nxt


class Vector(nn.Module):
    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)


def quadratic(seed: int, dim: int = 6, dtype: torch.dtype = torch.float64) -> Problem:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=g, dtype=dtype)
    a = m @ m.T / dim + 0.1 * torch.eye(dim, dtype=dtype)
    model = Vector(torch.randn(dim, generator=g, dtype=dtype))
    return Problem("quadratic", model, lambda: 0.5 * model.w @ a @ model.w, lambda: None)


def rosenbrock(seed: int) -> Problem:
    g = torch.Generator().manual_seed(seed)
    model = Vector(torch.tensor([-1.2, 1.0], dtype=torch.float64) + 0.1 * torch.randn(2, generator=g,
                                                                                     dtype=torch.float64))

    def closure() -> Tensor:
        x, y = model.w[0], model.w[1]
        return (1 - x) ** 2 + 100 * (y - x**2) ** 2

    return Problem("rosenbrock", model, closure, lambda: None)


def logistic(seed: int, n: int = 200, d: int = 10, batch_size: int = 25, separable: bool = False) -> Problem:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w_true = torch.randn(d, generator=g)
    logits = x @ w_true
    y = (logits > 0).float() if separable else (torch.rand(n, generator=g) < torch.sigmoid(logits)).float()
    model = nn.Linear(d, 1)
    with torch.no_grad():
        model.weight.copy_(0.1 * torch.randn(1, d, generator=g))
        model.bias.zero_()
    nxt = _batches(n, batch_size, g)
    idx = [nxt()]

    def closure() -> Tensor:
        i = idx[0]
        return nn.functional.binary_cross_entropy_with_logits(model(x[i]).squeeze(-1), y[i])

    def next_batch() -> None:
        idx[0] = nxt()

    return Problem("logistic", model, closure, next_batch)


def mlp(seed: int, n: int = 128, batch_size: int = 32, dropout: float = 0.0) -> Problem:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(8, 32), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(32, 1))
    model = nn.Sequential(*layers)
    nxt = _batches(n, batch_size, g)
    idx = [nxt()]

    def closure() -> Tensor:
        i = idx[0]
        return nn.functional.mse_loss(model(x[i]), y[i])

    def next_batch() -> None:
        idx[0] = nxt()

    return Problem("mlp", model, closure, next_batch)


ZOO: dict[str, Callable[[int], Problem]] = {
    "quadratic": quadratic,
    "rosenbrock": rosenbrock,
    "logistic": logistic,
    "mlp": mlp,
}


def least_squares(seed: int, n: int = 40, d: int = 100, batch_size: int = 10) -> Problem:
    """Consistent least squares with n < d: interpolation holds (every minibatch loss can reach 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) / d**0.5
    y = x @ torch.randn(d, generator=g)
    model = Vector(torch.zeros(d))
    nxt = _batches(n, batch_size, g)
    idx = [nxt()]

    def closure() -> Tensor:
        i = idx[0]
        return 0.5 * ((x[i] @ model.w - y[i]) ** 2).mean()

    def next_batch() -> None:
        idx[0] = nxt()

    def full() -> Tensor:
        return 0.5 * ((x @ model.w - y) ** 2).mean()

    problem = Problem("least_squares", model, closure, next_batch)
    problem.full_loss = full  # type: ignore[attr-defined]
    return problem
