"""Hypergradients ``d/dx f(x, y*(x))`` with ``y*(x) = argmin_y g(x, y)``: unrolled and implicit methods.

All methods share one signature and live in one registry (:data:`HYPERGRADIENT_METHODS`); each has its own
small typed config. The implicit formula (``∇²_yy g`` invertible at ``y*``) is

    ∇F(x) = ∇_x f(x, y*) - ∇²_xy g(x, y*) [∇²_yy g(x, y*)]⁻¹ ∇_y f(x, y*),

computed with Hessian-vector products (``torch.func.vjp`` of ``∇_y g``), never forming a Hessian except in
``"exact"``. The unrolled methods differentiate through ``T`` gradient steps ``y ← y - η ∇_y g(x, y)``
(reverse-mode iterative differentiation, Franceschi et al., ICML 2017; Grazzi et al., ICML 2020).

Using an ``nn.Module``: carry its parameters as a dict and call it functionally, e.g. for a lower-level
network ``net`` and hyperparameters ``x``::

    from torch.func import functional_call
    y = {k: v.detach() for k, v in net.named_parameters()}
    def lower(x, y):
        logits = functional_call(net, y, (inputs,))
        return cross_entropy(logits, targets) + (x.exp() * sum((p**2).sum() for p in y.values()))
    hg = hypergradient(upper, lower, x, y, method="cg")

The same works for an upper-level network (``x`` a dict). Buffers (BatchNorm statistics) are not
differentiated: pass them in the second dict of ``functional_call`` or use modules without running stats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, jacrev

from rlopt.bilevel import _tree
from rlopt.bilevel._tree import Tree
from rlopt.bilevel.linear_solvers import conjugate_gradient, dense_solve, neumann_series

LossFn = Callable[[Any, Any], Tensor]
"""``(x, y) -> scalar tensor``: the upper loss ``f`` or the lower loss ``g``."""


class NonFiniteError(ValueError):
    """A loss, iterate or hypergradient became nan or inf (typically a diverging inner problem)."""


# --------------------------------------------------------------------------------------------------------
# Configs


def _count(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r}, expected an int >= {minimum}")


def _positive(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"Invalid {name}: {value!r}, expected a float > 0")


@dataclass(frozen=True)
class ITDConfig:
    """Options of ``method="itd"``: unrolled gradient descent on ``g`` differentiated with ``torch.func``.

    Attributes:
        steps: ``T``, the number of inner steps ``y ← y - lr ∇_y g(x, y)`` from the given ``y``.
        lr: inner step size ``η`` (convergent for ``η < 2/L`` of ``g`` in ``y``).
        truncate: ``K``: differentiate only the last ``K`` steps (truncated back-propagation, Shaban et al.,
            AISTATS 2019); memory is ``O(K)`` instead of ``O(T)``. ``None`` differentiates all ``T``.
        backend: ``"autograd"`` (default: reverse mode through ``torch.autograd.grad(create_graph=True)``
            steps) or ``"func"`` (nested ``torch.func.grad``, composable with other ``torch.func``
            transforms). Same numbers; on CPU the nested transforms took about 1.5x the time and 3x the
            memory in our benchmark, hence the default.
    """

    steps: int = 100
    lr: float = 0.1
    truncate: int | None = None
    backend: str = "autograd"

    def __post_init__(self) -> None:
        _count(self.steps, "steps", 1)
        _positive(self.lr, "lr")
        if self.backend not in ("autograd", "func"):
            raise ValueError(f"Invalid backend: {self.backend!r}, expected 'autograd' or 'func'")
        if self.truncate is not None:
            _count(self.truncate, "truncate", 1)
            if self.truncate > self.steps:
                raise ValueError(f"Invalid truncate: {self.truncate}, expected <= steps ({self.steps})")


@dataclass(frozen=True)
class HigherConfig(ITDConfig):
    """Options of ``method="higher"``: the same unrolled SGD as ``"itd"``, through the ``higher`` package.

    ``higher`` (Grefenstette et al. 2019) is archived upstream (last release 0.2.1, 2020) and optional
    (``pip install higher``). Known limits: it monkey-patches private ``nn.Module`` internals; no
    ``DataParallel``/DDP; its differentiable Adam can give nan through ``sqrt`` at 0; BatchNorm running
    statistics of the patched module are not carried back; memory grows linearly with ``steps`` as for
    ``"itd"``. Truncation is done here by running the first ``steps - truncate`` steps without a graph.
    ``backend`` does not apply.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend != "autograd":
            raise ValueError(f"Invalid backend: {self.backend!r}; method 'higher' has no backend option")


@dataclass(frozen=True)
class CGConfig:
    """Options of ``method="cg"``: implicit differentiation, ``[∇²_yy g]⁻¹ ∇_y f`` by conjugate gradients.

    ``y`` is taken as the (approximate) lower solution; the error of the result is of the order of the
    inner error ``‖y - y*(x)‖``.

    Attributes:
        maxiter: maximum Hessian-vector products.
        rtol: stop when ``‖r‖ <= rtol ‖∇_y f‖``.
        atol: or when ``‖r‖ <= atol``.
        v0: warm start for the solve (structure of ``y``), e.g. the previous solution.
    """

    maxiter: int = 100
    rtol: float = 1e-10
    atol: float = 0.0
    v0: Tree | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _count(self.maxiter, "maxiter", 1)
        if isinstance(self.rtol, bool) or not isinstance(self.rtol, (int, float)) or not self.rtol >= 0:
            raise ValueError(f"Invalid rtol: {self.rtol!r}, expected a float >= 0")
        if isinstance(self.atol, bool) or not isinstance(self.atol, (int, float)) or not self.atol >= 0:
            raise ValueError(f"Invalid atol: {self.atol!r}, expected a float >= 0")


@dataclass(frozen=True)
class NeumannConfig:
    """Options of ``method="neumann"``: ``[∇²_yy g]⁻¹ ≈ α Σ_{k=0}^{K} (I - α ∇²_yy g)^k`` (stocBiO).

    Attributes:
        iterations: ``K``, Hessian-vector products.
        alpha: ``α``; the series converges for ``0 < α < 2/λ_max(∇²_yy g)``.
    """

    iterations: int = 100
    alpha: float = 0.1

    def __post_init__(self) -> None:
        _count(self.iterations, "iterations", 0)
        _positive(self.alpha, "alpha")


@dataclass(frozen=True)
class ExactConfig:
    """Options of ``method="exact"``: dense Hessian and mixed derivative, then a Cholesky solve.

    Attributes:
        max_dim: refuse problems where ``x`` or ``y`` has more scalars than this (memory is
            ``dim(y) * (dim(x) + dim(y))``).
    """

    max_dim: int = 4096

    def __post_init__(self) -> None:
        _count(self.max_dim, "max_dim", 1)


# --------------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class HypergradientMethod:
    """A registered method: its config class and the function computing the hypergradient."""

    name: str
    config_class: type
    compute: Callable[[LossFn, LossFn, Tree, Tree, Any], Tree]
    description: str


HYPERGRADIENT_METHODS: dict[str, HypergradientMethod] = {}
"""Name -> method. ``hypergradient(..., method=name, **options)`` builds ``config_class(**options)``."""


def register_hypergradient(
    name: str, config_class: type, description: str
) -> Callable[[Callable[[LossFn, LossFn, Tree, Tree, Any], Tree]], Callable[..., Tree]]:
    """Register ``compute(upper, lower, x, y, config) -> hypergradient`` under ``name``."""

    def decorate(fn: Callable[[LossFn, LossFn, Tree, Tree, Any], Tree]) -> Callable[..., Tree]:
        if name in HYPERGRADIENT_METHODS:
            raise ValueError(f"hypergradient method {name!r} is already registered")
        HYPERGRADIENT_METHODS[name] = HypergradientMethod(name, config_class, fn, description)
        return fn

    return decorate


def make_config(method: str, **options: Any) -> Any:
    """The config object of ``method`` built from ``options``, with errors naming what is allowed."""
    if not isinstance(method, str) or method not in HYPERGRADIENT_METHODS:
        raise ValueError(f"Unknown hypergradient method {method!r}; allowed: {sorted(HYPERGRADIENT_METHODS)}")
    config_class = HYPERGRADIENT_METHODS[method].config_class
    allowed = [f.name for f in dataclasses.fields(config_class)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"Unknown option(s) {unknown} for method {method!r}; allowed: {allowed}")
    return config_class(**options)


# --------------------------------------------------------------------------------------------------------
# Public entry point


def _check_loss(value: object, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{what} must return a torch.Tensor, got {type(value).__name__}")
    if value.ndim != 0:
        raise ValueError(
            f"{what} must return a scalar (0-dim) tensor, got shape {tuple(value.shape)}; "
            "reduce it with .mean() or .sum()"
        )
    if not bool(torch.isfinite(value.detach())):
        raise NonFiniteError(f"{what} is not finite ({float(value)}) at the given x and y")
    return value


def _call(fn: LossFn, x: Tree, y: Tree, what: str) -> Tensor:
    try:
        out = fn(x, y)
    except RuntimeError as err:
        # Shape mismatches between x, y and the data surface here; name the call that failed.
        raise ValueError(f"{what} failed on the given x {_tree.describe(x)} and y {_tree.describe(y)}: {err}") from err
    return _check_loss(out, what)


def check_inputs(upper: object, lower: object, x: object, y: object) -> None:
    """Validate the arguments of :func:`hypergradient` (raises ``TypeError``/``ValueError``).

    Checks: callables; ``x``/``y`` tensors or dicts of floating-point finite tensors; both losses scalar and
    finite at ``(x, y)``; ``lower`` depends on ``y``; ``upper`` or ``lower`` depends on ``x`` (otherwise the
    hypergradient is identically zero, almost always a detached ``x``). Costs three loss evaluations.
    """
    for fn, name in ((upper, "upper"), (lower, "lower")):
        if not callable(fn):
            raise TypeError(f"{name} must be a callable (x, y) -> scalar tensor, got {type(fn).__name__}")
    _tree.check_tree(x, "x")
    _tree.check_tree(y, "y")
    assert isinstance(x, (Tensor, dict)) and isinstance(y, (Tensor, dict))
    assert callable(upper) and callable(lower)
    x_req = _tree.tree_map(lambda t: t.detach().requires_grad_(True), x)
    y_det = _tree.detach(y)
    with torch.enable_grad():
        f = _call(upper, x_req, y_det, "upper(x, y)")
        g = _call(lower, x_req, y_det, "lower(x, y)")
        if not (f.requires_grad or g.requires_grad):
            raise ValueError(
                "neither upper(x, y) nor lower(x, y) depends on x (no gradient path): the hypergradient "
                "would be zero; make sure the losses use x and do not detach it"
            )
        y_req = _tree.tree_map(lambda t: t.detach().requires_grad_(True), y)
        if not _call(lower, _tree.detach(x), y_req, "lower(x, y)").requires_grad:
            raise ValueError("lower(x, y) does not depend on y (no gradient path); y*(x) is undefined")


def hypergradient(upper: LossFn, lower: LossFn, x: Tree, y: Tree, method: str = "cg", **options: Any) -> Tree:
    """The hypergradient ``d/dx f(x, y*(x))`` where ``y*(x) = argmin_y g(x, y)``.

    Methods (options in brackets are the fields of each config class):

    - ``"cg"`` (:class:`CGConfig`: maxiter, rtol, atol, v0) and ``"neumann"`` (:class:`NeumannConfig`:
      iterations, alpha): implicit differentiation at the given ``y``, taken as the approximate lower
      solution: ``∇_x f - ∇²_xy g v`` with ``∇²_yy g v = ∇_y f`` solved by Hessian-vector products.
    - ``"itd"`` (:class:`ITDConfig`: steps, lr, truncate) and ``"higher"`` (:class:`HigherConfig`):
      differentiate through ``steps`` inner gradient steps started at the given ``y``.
    - ``"exact"`` (:class:`ExactConfig`: max_dim): dense Hessian and solve, for small problems and tests.

    Args:
        upper: ``f(x, y)`` returning a scalar tensor.
        lower: ``g(x, y)`` returning a scalar tensor, strongly convex in ``y`` near ``y*`` for the implicit
            methods.
        x: upper variable, a floating tensor or a dict of them (never modified).
        y: lower variable, same types (never modified).
        method: one of :data:`HYPERGRADIENT_METHODS`.
        **options: fields of the method's config, plus ``validate=False`` to skip the input checks (three
            loss evaluations) in hot loops.

    Returns:
        The hypergradient, detached, with the structure of ``x``.

    Raises:
        ValueError: unknown method, bad shapes, non-scalar losses, no dependence on ``x``/``y``.
        TypeError: wrong types or unknown options.
        NonFiniteError: a non-finite loss or result (e.g. a diverging unrolled inner loop).

    Example:
        >>> import torch
        >>> A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> lower = lambda x, y: 0.5 * y @ A @ y - x @ y        # y*(x) = A⁻¹ x
        >>> upper = lambda x, y: 0.5 * (y**2).sum()              # F(x) = ½‖A⁻¹x‖², ∇F = A⁻² x
        >>> x = torch.tensor([1.0, -1.0], dtype=torch.float64)
        >>> y = torch.linalg.solve(A, x)
        >>> hg = hypergradient(upper, lower, x, y, method="cg")
        >>> torch.allclose(hg, torch.linalg.solve(A, torch.linalg.solve(A, x)))
        True
    """
    validate = options.pop("validate", True)
    config = make_config(method, **options)
    if validate:
        check_inputs(upper, lower, x, y)
    x0 = _tree.detach(x)
    y0 = _tree.detach(y)
    result = HYPERGRADIENT_METHODS[method].compute(upper, lower, x0, y0, config)
    result = _tree.detach(result)
    if not _tree.is_finite(result):
        raise NonFiniteError(
            f"hypergradient ({method!r}) is not finite: the inner problem diverged or the linear system is "
            "singular; for 'itd'/'higher'/'neumann' reduce lr/alpha"
        )
    return result


# --------------------------------------------------------------------------------------------------------
# Implicit differentiation


def _grads(
    outputs: Tensor | tuple[Tensor, ...],
    inputs: list[Tensor],
    grad_outputs: list[Tensor] | None = None,
    create_graph: bool = False,
) -> list[Tensor]:
    """``torch.autograd.grad`` with zeros for inputs the outputs do not depend on; keeps the graph."""
    out = torch.autograd.grad(
        outputs, inputs, grad_outputs=grad_outputs, retain_graph=True, create_graph=create_graph, allow_unused=True
    )
    return [torch.zeros_like(t) if g is None else g for g, t in zip(out, inputs, strict=True)]


class ImplicitSystem:
    """The pieces of the implicit hypergradient at one point ``(x, y)``, built once and reused.

    ``grad_x_upper`` and ``grad_y_upper`` are ``∇_x f`` and ``∇_y f``. ``∇_y g`` is recorded once with
    ``create_graph=True``; then ``hvp(v) = ∇²_yy g v`` and ``cross(v) = ∇²_xy g v`` are one backward pass each
    through that graph, and ``jvp_x(d) = ∇²_yx g d`` is the transpose of ``cross`` (double backward, rather
    than forward mode, whose operator coverage is narrower). ``combine(v) = ∇_x f - cross(v)``.

    Plain ``torch.autograd`` is used here rather than ``torch.func.vjp``: the products are the same, and
    repeated calls through one retained graph were cheaper on CPU. ``x`` and ``y`` must not be modified in
    place while the system is in use.
    """

    def __init__(self, upper: LossFn, lower: LossFn, x: Tree, y: Tree) -> None:
        self.x = x
        self.y = y
        with torch.enable_grad():
            self._x_req = _tree.tree_map(lambda t: t.detach().requires_grad_(True), x)
            self._y_req = _tree.tree_map(lambda t: t.detach().requires_grad_(True), y)
            self._x_leaves = _tree.leaves(self._x_req)
            self._y_leaves = _tree.leaves(self._y_req)
            f = upper(self._x_req, self._y_req)
            grads = _grads(f, self._x_leaves + self._y_leaves)
            n_x = len(self._x_leaves)
            self.grad_x_upper = _tree.rebuild(x, [g.detach() for g in grads[:n_x]])
            self.grad_y_upper = _tree.rebuild(y, [g.detach() for g in grads[n_x:]])
            g_y = torch.autograd.grad(
                lower(self._x_req, self._y_req), self._y_leaves, create_graph=True, allow_unused=True
            )
        # Leaves of y that g does not use contribute nothing to any product.
        self._used = [i for i, g in enumerate(g_y) if g is not None and g.requires_grad]
        self._g_y = tuple(g_y[i] for i in self._used)

    def _backward(self, v: Tree, inputs: list[Tensor], create_graph: bool = False) -> list[Tensor]:
        if not self._used:
            return [torch.zeros_like(t) for t in inputs]
        v_leaves = _tree.leaves(v)
        with torch.enable_grad():
            return _grads(self._g_y, inputs, [v_leaves[i] for i in self._used], create_graph=create_graph)

    def hvp(self, v: Tree) -> Tree:
        """``∇²_yy g(x, y) v``."""
        return _tree.rebuild(self.y, self._backward(v, self._y_leaves))

    def cross(self, v: Tree) -> Tree:
        """``∇²_xy g(x, y) v`` (shaped like ``x``)."""
        return _tree.rebuild(self.x, self._backward(v, self._x_leaves))

    def jvp_x(self, d: Tree) -> Tree:
        """``∇²_yx g(x, y) d`` (shaped like ``y``): how ``∇_y g`` moves when ``x`` moves along ``d``."""
        with torch.enable_grad():
            u = _tree.tree_map(lambda t: torch.zeros_like(t).requires_grad_(True), self.y)
            cross_u = self._backward(u, self._x_leaves, create_graph=True)
            pairs = [(c, t) for c, t in zip(cross_u, _tree.leaves(d), strict=True) if c.requires_grad]
            if not pairs:  # g does not couple x and y
                return _tree.zeros_like(self.y)
            out = _grads(tuple(c for c, _ in pairs), _tree.leaves(u), [t for _, t in pairs])
        return _tree.rebuild(self.y, [g.detach() for g in out])

    def combine(self, v: Tree) -> Tree:
        """``∇_x f - ∇²_xy g v``."""
        return _tree.sub(self.grad_x_upper, self.cross(v))


@register_hypergradient("cg", CGConfig, "implicit differentiation, conjugate gradients on ∇²_yy g")
def _cg(upper: LossFn, lower: LossFn, x: Tree, y: Tree, config: CGConfig) -> Tree:
    system = ImplicitSystem(upper, lower, x, y)
    if config.v0 is not None:
        _tree.check_like(config.v0, y, "v0", "y")
    solve = conjugate_gradient(
        system.hvp, system.grad_y_upper, config.v0, maxiter=config.maxiter, rtol=config.rtol, atol=config.atol
    )
    return system.combine(solve.solution)


@register_hypergradient("neumann", NeumannConfig, "implicit differentiation, truncated Neumann series")
def _neumann(upper: LossFn, lower: LossFn, x: Tree, y: Tree, config: NeumannConfig) -> Tree:
    system = ImplicitSystem(upper, lower, x, y)
    solve = neumann_series(system.hvp, system.grad_y_upper, alpha=config.alpha, iterations=config.iterations)
    return system.combine(solve.solution)


@register_hypergradient("exact", ExactConfig, "dense Hessian and Cholesky solve (small problems)")
def _exact(upper: LossFn, lower: LossFn, x: Tree, y: Tree, config: ExactConfig) -> Tree:
    for tree, name in ((x, "x"), (y, "y")):
        if _tree.numel(tree) > config.max_dim:
            raise ValueError(
                f"method 'exact' forms dense matrices: {name} has {_tree.numel(tree)} scalars > max_dim="
                f"{config.max_dim}; use 'cg' or raise max_dim"
            )
    xf, yf = _tree.ravel(x), _tree.ravel(y)

    def lower_flat(xv: Tensor, yv: Tensor) -> Tensor:
        return lower(_tree.unravel(xv, x), _tree.unravel(yv, y))

    def upper_flat(xv: Tensor, yv: Tensor) -> Tensor:
        return upper(_tree.unravel(xv, x), _tree.unravel(yv, y))

    # Reverse-over-reverse (not torch.func.hessian, which is forward-over-reverse): widest operator coverage.
    h_yy = jacrev(grad(lower_flat, argnums=1), argnums=1)(xf, yf)
    h_yx = jacrev(grad(lower_flat, argnums=1), argnums=0)(xf, yf)  # d(∇_y g)/dx: (dim y, dim x)
    fx, fy = grad(upper_flat, argnums=(0, 1))(xf, yf)
    v = dense_solve(h_yy, fy)
    return _tree.unravel(fx - h_yx.T @ v, x)


# --------------------------------------------------------------------------------------------------------
# Unrolled differentiation


def _plain_steps(lower: LossFn, x: Tree, y: Tree, lr: float, steps: int) -> Tree:
    """``steps`` inner gradient steps without a graph (the untracked head of a truncated unroll)."""
    grad_y = grad(lower, argnums=1)
    for _ in range(steps):
        y = _tree.detach(_tree.add(y, grad_y(x, y), -lr))
    return y


@register_hypergradient("itd", ITDConfig, "unrolled inner gradient descent (autograd or torch.func)")
def _itd(upper: LossFn, lower: LossFn, x: Tree, y: Tree, config: ITDConfig) -> Tree:
    tracked = config.truncate if config.truncate is not None else config.steps
    y_start = _plain_steps(lower, x, y, config.lr, config.steps - tracked)
    if config.backend == "autograd":
        return _unrolled_autograd(upper, lower, x, y_start, config.lr, tracked)
    grad_y = grad(lower, argnums=1)

    def unrolled(x_: Tree) -> Tensor:
        y_ = y_start
        for _ in range(tracked):
            y_ = _tree.add(y_, grad_y(x_, y_), -config.lr)
        return upper(x_, y_)

    return grad(unrolled)(x)


def _unrolled_autograd(upper: LossFn, lower: LossFn, x: Tree, y: Tree, lr: float, steps: int) -> Tree:
    """Reverse mode through ``steps`` gradient steps recorded with ``create_graph=True``."""
    with torch.enable_grad():
        x_req = _tree.tree_map(lambda t: t.detach().clone().requires_grad_(True), x)
        y_cur = _tree.tree_map(lambda t: t.detach().clone().requires_grad_(True), y)
        for _ in range(steps):
            y_leaves = _tree.leaves(y_cur)
            grads = torch.autograd.grad(lower(x_req, y_cur), y_leaves, create_graph=True, allow_unused=True)
            y_cur = _tree.rebuild(y_cur, [v if g is None else v - lr * g for v, g in zip(y_leaves, grads, strict=True)])
        x_leaves = _tree.leaves(x_req)
        out = torch.autograd.grad(upper(x_req, y_cur), x_leaves, allow_unused=True)
    return _tree.rebuild(x, [torch.zeros_like(t) if g is None else g for g, t in zip(out, x_leaves, strict=True)])


class _TreeModule(nn.Module):
    """Holds the leaves of a tree as parameters so that ``higher`` can patch them."""

    def __init__(self, tree: Tree) -> None:
        super().__init__()
        self._like = tree
        for i, leaf in enumerate(_tree.leaves(tree)):
            self.register_parameter(f"p{i}", nn.Parameter(leaf.detach().clone()))

    def forward(self) -> Tree:
        return _tree.rebuild(self._like, [getattr(self, f"p{i}") for i in range(len(_tree.leaves(self._like)))])


@register_hypergradient("higher", HigherConfig, "unrolled inner SGD through the optional `higher` package")
def _higher(upper: LossFn, lower: LossFn, x: Tree, y: Tree, config: HigherConfig) -> Tree:
    try:
        import higher
    except ImportError as err:
        raise ImportError(
            "method 'higher' needs the optional package `higher` (pip install higher, or the torch-rlopt[higher] "
            "extra); method 'itd' computes the same hypergradient with torch.func"
        ) from err
    tracked = config.truncate if config.truncate is not None else config.steps
    y_start = _plain_steps(lower, x, y, config.lr, config.steps - tracked)
    module = _TreeModule(y_start)
    inner_opt = torch.optim.SGD(module.parameters(), lr=config.lr)
    x_req = _tree.tree_map(lambda t: t.detach().clone().requires_grad_(True), x)
    with (
        torch.enable_grad(),
        higher.innerloop_ctx(module, inner_opt, copy_initial_weights=True) as (fmodel, diffopt),
    ):
        for _ in range(tracked):
            diffopt.step(lower(x_req, fmodel()))
        loss = upper(x_req, fmodel())
        grads = torch.autograd.grad(loss, _tree.leaves(x_req), allow_unused=True)
    values = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, _tree.leaves(x_req), strict=True)]
    return _tree.rebuild(x, values)
