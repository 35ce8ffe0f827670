"""Stochastic bilevel solvers (stocBiO, AmIGO, SOBA, a generic double loop) with a step-size rule per level.

Problem: ``min_x F(x) = f(x, y*(x))``, ``y*(x) = argmin_y g(x, y)``, with minibatches of both losses (see
:class:`rlopt.bilevel.problems.BilevelProblem`). Notation: ``H = ∇²_yy g``, ``v ≈ H⁻¹ ∇_y f``,
``d = ∇_x f - ∇²_xy g v`` (the hypergradient estimate).

Algorithms (one outer step each):

- ``"stocbio"`` (Ji, Yang & Liang, ICML 2021): ``inner_steps`` lower steps (warm start), then ``v`` by a
  Neumann series with ``linear_steps`` Hessian-vector products on one lower minibatch, ``d`` on an upper
  minibatch, one upper step. (The reference code draws a fresh minibatch for each product; we use one, so that
  the products reuse one recorded graph.)
- ``"amigo"`` (Arbel & Mairal, ICLR 2022): as stocBiO, but ``v`` by ``linear_steps`` Richardson steps
  ``v ← v - η (H v - ∇_y f)`` warm-started at the previous outer step's ``v``.
- ``"soba"`` (Dagréou, Ablin, Vaiter & Moreau, NeurIPS 2022): single loop; per step one lower step, one
  Hessian-vector product ``v ← v - η (H v - ∇_y f)`` and one upper step, all evaluated at the current point
  (our ``v`` is SOBA's ``-v``).
- ``"double_loop"``: ``inner_steps`` lower steps, then any registered hypergradient method (``hypergrad``,
  e.g. ``"cg"``, ``"itd"``) on one minibatch of each level.
- ``"lookahead"``: the online one-step look-ahead meta-gradient (Xu, van Hasselt & Silver, NeurIPS 2018;
  the second-order rule of DARTS, Liu et al., ICLR 2019): one lower step ``y' = y - α ∇_y g(x, y; B)`` by the
  lower rule (``α``: the step size it took), an upper minibatch ``B'`` drawn *after* it (on-policy problems
  collect it with ``y'``), and ``d = d/dx f(x, y - α ∇_y g(x, y; B); B')`` (the ``"itd"`` hypergradient with
  one step of size ``α`` from the pre-step ``y``, ``α`` held constant). No implicit-function assumption: it
  applies when ``g`` has no minimiser (a policy-gradient surrogate). Exact for rules that step along
  ``-∇_y g`` (sgd, bisls, bisps); for preconditioned rules (adam, the ``-adam`` versions) the differentiated
  step is the plain gradient step of the same size, an approximation.

``η`` (``linear_lr``) defaults to ``"auto"``: ``1 / λ̂`` with ``λ̂`` from 20 power iterations on ``H`` at the
first outer step, re-estimated whenever an iteration is detected to diverge (``H`` changes with ``x``).

Step sizes per level (``upper=`` / ``lower=``):

- ``"sgd"``, ``"adam"``: ``torch.optim`` with ``lr = upper_lr`` / ``lower_lr``.
- ``"bisls"``: lower level ``rlopt.SLS`` with ``envelope=InvSqrt(lower_lr)`` (SLSB: Armijo backtracking with
  the reset rule, capped by ``u_k = lr_b / sqrt(k + 1)``, ``k`` counting lower steps over the whole run);
  upper level :class:`rlopt.bilevel.upper_rules.ArmijoSearch` (``upper_lr`` is its ``lr_b``).
- ``"bisps"``: lower ``rlopt.SPS`` with the envelope (SPSB), upper :class:`rlopt.bilevel.upper_rules.PolyakStep`.
  On both levels the capped Polyak step is, by default, the first trial of an Armijo test (``search=True``
  of both; on the upper level with the safeguard slack and the line model of BiSLS) and is backtracked when
  it fails the test; ``lower_options={"search": False}`` / ``upper_options={"search": False}`` give the
  evaluation-free rules. Why: with ``f* = 0`` both Polyak steps sit on their envelopes from the first steps
  on, so without a test BiSPS is plain SGD on the envelope schedules, and the large first steps of that
  schedule go unchecked (see :class:`rlopt.bilevel.upper_rules.PolyakStep`).
- ``"bisls-adam"``, ``"bisps-adam"``: the Adam versions: lower rule with ``precondition="adam"``, upper rule
  along Adam's direction (``precondition="adam"`` of the upper rules).
- any name of ``rlopt.OPTIMIZERS`` or a ``torch.optim.Optimizer`` class / factory ``params -> optimizer``
  (options through ``upper_options`` / ``lower_options``).

The upper line model. For ``"lookahead"`` it is the look-ahead objective itself,
``φ(α) = f(x - α d, y - α_y ∇_y g(x - α d, y; B); B')`` (one lower gradient and one upper forward per trial),
whose derivative at 0 is exactly ``-d·d``. Otherwise, BiSLS (and the test of BiSPS) search on the upper loss
along ``-d``. With ``y`` held fixed (``response="fixed"``), ``φ(α) = f(x - α d, y)`` is constant whenever ``f``
does not depend on ``x`` directly (hyper-cleaning, regularization tuning: ``f`` is a validation loss of ``y``
only), so the Armijo test could never be met. The default ``response="linear"`` moves ``y`` along its
first-order response,

    φ(α) = f(x - α d, y + α r),   r = H⁻¹ ∇²_yx g d   (the implicit-function derivative of y*(x) along -d),

so that ``φ'(0) = -d·∇F`` when ``y = y*`` and ``v`` is exact: the Armijo test is then the usual one for
``F``. ``r`` costs one mixed second-derivative product and ``linear_steps`` conjugate-gradient products per
outer step; each trial is one upper-loss forward. For rules from ``rlopt`` on the upper level, the closure
returns ``φ`` at the current ``x`` (the response is recomputed for ``x - x_k``) with gradient ``d``.

Non-finite values: rlopt's rules skip and count such lower steps themselves; for torch optimizers a lower
sweep that leaves ``y`` non-finite is undone and counted in ``lower_skipped``; a non-finite ``d`` or upper
loss skips the upper step (``upper_skipped``).

Example:
    >>> from rlopt.bilevel import BilevelSolver
    >>> from rlopt.bilevel.problems import Ridge
    >>> solver = BilevelSolver(Ridge(), algorithm="stocbio", upper="bisls", lower="bisls", seed=0)
    >>> history = solver.run(outer_steps=5)
    >>> len(history.records), sorted(history.records[-1])[:3]
    (5, ['exact_hypergradient_norm', 'hypergradient_norm', 'lower_backtracks'])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import rlopt
from rlopt.bilevel import _tree
from rlopt.bilevel._tree import Tree
from rlopt.bilevel.algorithms import ALGORITHMS, BilevelAlgorithm
from rlopt.bilevel.hypergradients import HYPERGRADIENT_METHODS, ImplicitSystem, NonFiniteError, hypergradient
from rlopt.bilevel.linear_solvers import conjugate_gradient
from rlopt.bilevel.problems.base import BilevelProblem
from rlopt.bilevel.upper_rules import ArmijoSearch, PolyakStep, UpperStep

RULES = ("sgd", "adam", "bisls", "bisps", "bisls-adam", "bisps-adam")
RESPONSES = ("linear", "fixed")

DEFAULT_LR = {
    # (upper, lower): defaults of lr (sgd, adam) or of the envelope scale lr_b (bisls, bisps).
    "sgd": (1.0, 0.1),
    "adam": (0.01, 0.01),
    "bisls": (1e3, 10.0),
    "bisps": (1e3, 10.0),
    # Adam's steps are per coordinate: envelopes on the scale of Adam learning rates.
    "bisls-adam": (0.3, 0.1),
    "bisps-adam": (0.3, 0.1),
}

RuleSpec = str | type | Callable[..., torch.optim.Optimizer]


@dataclass
class BilevelHistory:
    """Per-outer-step records of a run.

    Each record has: ``step``, ``upper_loss`` (``φ(0)``, upper minibatch), ``lower_loss`` (last lower
    minibatch loss), ``upper_step_size``, ``lower_step_size`` (last lower step), ``upper_backtracks``,
    ``lower_backtracks`` (summed over the outer step), ``hypergradient_norm``, ``wall_time`` (seconds since
    the start, evaluation excluded), the upper rule's ``upper_envelope``/``upper_trial_loss``/``upper_slack``
    when it has them, cumulative ``upper_skipped``/``lower_skipped``/``upper_failures``, and the problem's
    metrics at every ``eval_every``-th step and the last one.
    """

    records: list[dict[str, float]] = field(default_factory=list)

    def column(self, key: str) -> list[float]:
        """The values of ``key`` over the records that have it."""
        return [r[key] for r in self.records if key in r]

    @property
    def final(self) -> dict[str, float]:
        """The last record."""
        return self.records[-1] if self.records else {}


def _leaf_tree(tree: Tree, requires_grad: bool) -> Tree:
    return _tree.tree_map(lambda t: t.detach().clone().requires_grad_(requires_grad), tree)


def _decides_alone(spec: object, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with ``process_group=None`` for an rlopt rule: the solver's losses are already those of the
    problem (a :class:`rlopt.bilevel.problems.DataParallelProblem` averages them over its ranks itself), and
    a solver in a torch.distributed program must not average its decisions with other ranks' solvers."""
    cls = rlopt.optimizer_spec(spec).cls if isinstance(spec, (str, type)) else None
    if isinstance(cls, type) and issubclass(cls, rlopt.StepSizeOptimizer):
        options = {"process_group": None, **options}
    return options


def _check_rule(spec: object, name: str) -> None:
    if isinstance(spec, str):
        if spec not in RULES and spec.lower() not in rlopt.OPTIMIZERS:
            raise ValueError(
                f"Invalid {name}: {spec!r}, expected one of {list(RULES)}, a name in {sorted(rlopt.OPTIMIZERS)}, "
                "a torch.optim.Optimizer class or a factory params -> optimizer"
            )
    elif not callable(spec):
        raise TypeError(f"Invalid {name}: {spec!r}, expected a str, an optimizer class or a callable")


class BilevelSolver:
    """Run a stochastic bilevel algorithm with a step-size rule on each level (see module docstring).

    Args:
        problem: a :class:`rlopt.bilevel.problems.BilevelProblem`.
        algorithm: ``"stocbio"``, ``"amigo"``, ``"soba"``, ``"double_loop"`` or ``"lookahead"`` (those in
            ``problem.algorithms`` when the problem restricts them).
        upper: step-size rule of the upper level (``"sgd"``, ``"adam"``, ``"bisls"``, ``"bisps"``, an rlopt
            name, an optimizer class or factory).
        lower: same for the lower level.
        upper_lr: ``lr`` for sgd/adam, envelope scale ``lr_b`` for bisls/bisps (defaults in
            :data:`DEFAULT_LR`); passed as ``lr`` to other optimizers when given.
        lower_lr: same for the lower level.
        upper_options: extra keyword arguments of the upper rule (e.g. ``c``, ``safeguard``).
        lower_options: extra keyword arguments of the lower optimizer.
        inner_steps: lower steps per outer step (double-loop algorithms; SOBA takes one).
        linear_steps: Hessian-vector products for ``v`` (stocBiO, AmIGO) and for the linear response.
        linear_lr: ``η`` of the Neumann/Richardson iterations, or ``"auto"``.
        hypergrad: method for ``"double_loop"`` (a name of :data:`rlopt.bilevel.HYPERGRADIENT_METHODS`).
        hypergrad_options: its options.
        response: upper line model, ``"linear"`` or ``"fixed"`` (see module docstring).
        seed: seed of the minibatch stream (a ``torch.Generator``; global RNGs are untouched).

    Example:
        >>> from rlopt.bilevel.problems import Ridge
        >>> h = BilevelSolver(Ridge(), algorithm="amigo", upper="adam", lower="sgd").run(outer_steps=3)
        >>> len(h.records)
        3
    """

    def __init__(
        self,
        problem: BilevelProblem,
        algorithm: str = "stocbio",
        upper: RuleSpec = "bisls",
        lower: RuleSpec = "bisls",
        *,
        upper_lr: float | None = None,
        lower_lr: float | None = None,
        upper_options: dict[str, Any] | None = None,
        lower_options: dict[str, Any] | None = None,
        inner_steps: int = 10,
        linear_steps: int = 10,
        linear_lr: float | str = "auto",
        hypergrad: str = "cg",
        hypergrad_options: dict[str, Any] | None = None,
        response: str = "linear",
        seed: int = 0,
    ) -> None:
        if not isinstance(problem, BilevelProblem):
            raise TypeError(
                f"Invalid problem: expected a bilevel.problems.BilevelProblem, got {type(problem).__name__}"
            )
        if algorithm not in ALGORITHMS:
            raise ValueError(f"Invalid algorithm: {algorithm!r}, expected one of {list(ALGORITHMS)}")
        if problem.algorithms is not None and algorithm not in problem.algorithms:
            raise ValueError(
                f"Invalid algorithm: {algorithm!r} does not apply to {type(problem).__name__}, expected one of "
                f"{list(problem.algorithms)}: {problem.algorithms_note}"
            )
        _check_rule(upper, "upper")
        _check_rule(lower, "lower")
        for value, name in ((upper_lr, "upper_lr"), (lower_lr, "lower_lr")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise ValueError(f"Invalid {name}: {value!r}, expected None or a float > 0")
        for value, name in ((inner_steps, "inner_steps"), (linear_steps, "linear_steps")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r}, expected an int >= 1")
        if not (
            linear_lr == "auto"
            or (isinstance(linear_lr, (int, float)) and not isinstance(linear_lr, bool) and linear_lr > 0)
        ):
            raise ValueError(f"Invalid linear_lr: {linear_lr!r}, expected 'auto' or a float > 0")
        if hypergrad not in HYPERGRADIENT_METHODS:
            raise ValueError(f"Invalid hypergrad: {hypergrad!r}, expected one of {sorted(HYPERGRADIENT_METHODS)}")
        if response not in RESPONSES:
            raise ValueError(f"Invalid response: {response!r}, expected one of {list(RESPONSES)}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"Invalid seed: {seed!r}, expected an int")
        self.problem = problem
        self.algorithm = algorithm
        self.strategy: BilevelAlgorithm = ALGORITHMS[algorithm]()
        self.upper_spec, self.lower_spec = upper, lower
        self.upper_lr, self.lower_lr = upper_lr, lower_lr
        self.upper_options = dict(upper_options or {})
        self.lower_options = dict(lower_options or {})
        self.inner_steps = 1 if self.strategy.single_loop else inner_steps
        self.linear_steps = linear_steps
        self.linear_lr = linear_lr
        self.hypergrad = hypergrad
        self.hypergrad_options = dict(hypergrad_options or {})
        self.response = response
        self.seed = seed
        self._reset()

    # ------------------------------------------------------------------------------------------------
    # State

    def _reset(self) -> None:
        problem = self.problem
        problem.reset()
        self.generator = torch.Generator().manual_seed(self.seed)
        self.x = _leaf_tree(problem.initial_x(), True)
        self.y = _leaf_tree(problem.initial_y(), True)
        self.v: Tree | None = None
        self._eta: float | None = None if self.linear_lr == "auto" else float(self.linear_lr)
        self.lower_opt = self._build_lower()
        self.upper_rule: ArmijoSearch | PolyakStep | None = None
        self.upper_opt: torch.optim.Optimizer | None = None
        self._build_upper()
        self.outer_step = 0
        self.upper_skipped = 0
        self.lower_skipped = 0

    def _build_lower(self) -> torch.optim.Optimizer:
        params = _tree.leaves(self.y)
        spec, options = self.lower_spec, dict(self.lower_options)
        lr_b = self.lower_lr
        if isinstance(spec, str) and spec in RULES:
            lr = DEFAULT_LR[spec][1] if lr_b is None else lr_b
            if spec == "sgd":
                return torch.optim.SGD(params, lr=lr, **options)
            if spec == "adam":
                return torch.optim.Adam(params, lr=lr, **options)
            envelope = rlopt.envelope.InvSqrt(lr)
            if spec.endswith("-adam"):
                options.setdefault("precondition", "adam")
            options.setdefault("process_group", None)  # see _decides_alone
            if spec.startswith("bisls"):
                batch = self.problem.lower_batch_size or self.problem.n_lower
                options.setdefault("n_batches_per_epoch", max(1, math.ceil(self.problem.n_lower / batch)))
                return rlopt.SLS(params, lr=lr, envelope=envelope, **options)
            options.setdefault("search", True)
            return rlopt.SPS(params, envelope=envelope, **options)
        if lr_b is not None:
            options.setdefault("lr", lr_b)
        if isinstance(spec, (str, type)):
            return rlopt.build_optimizer(spec, params, **_decides_alone(spec, options))
        assert callable(spec)
        return spec(params, **options)

    def _build_upper(self) -> None:
        spec, options = self.upper_spec, dict(self.upper_options)
        if isinstance(spec, str) and spec.startswith(("bisls", "bisps")):
            lr_b = DEFAULT_LR[spec][0] if self.upper_lr is None else self.upper_lr
            if spec.endswith("-adam"):
                options.setdefault("precondition", "adam")
            rule = ArmijoSearch if spec.startswith("bisls") else PolyakStep
            self.upper_rule = rule(lr_b, **options)
            return
        params = _tree.leaves(self.x)
        if spec in ("sgd", "adam"):
            lr = DEFAULT_LR[str(spec)][0] if self.upper_lr is None else self.upper_lr
            cls = torch.optim.SGD if spec == "sgd" else torch.optim.Adam
            self.upper_opt = cls(params, lr=lr, **options)
            return
        if self.upper_lr is not None:
            options.setdefault("lr", self.upper_lr)
        if isinstance(spec, (str, type)):
            self.upper_opt = rlopt.build_optimizer(spec, params, **_decides_alone(spec, options))
        else:
            assert callable(spec)
            self.upper_opt = spec(params, **options)

    # ------------------------------------------------------------------------------------------------
    # Pieces

    def _lower_sweep(self, steps: int, first_batch: Any = "draw") -> dict[str, float]:
        problem = self.problem
        x_det = _tree.detach(self.x)
        snapshot = _tree.detach(_tree.tree_map(torch.clone, self.y))
        backtracks, loss_value, step_size = 0, float("nan"), 0.0
        for i in range(steps):
            batch = (
                problem.sample_lower_batch(self.generator, x_det, _tree.detach(self.y))
                if (i > 0 or isinstance(first_batch, str))
                else first_batch
            )

            def closure(batch: Any = batch) -> Tensor:
                return problem.lower_loss(x_det, self.y, batch)

            loss = rlopt.closure_step(self.lower_opt, closure)
            loss_value = float(loss.detach())
            step_size, step_backtracks, _ = rlopt.step_stats(self.lower_opt)
            backtracks += int(step_backtracks)
        if not _tree.is_finite(_tree.detach(self.y)):
            with torch.no_grad():
                for leaf, saved in zip(_tree.leaves(self.y), _tree.leaves(snapshot), strict=True):
                    leaf.copy_(saved)
            self.lower_skipped += 1
        return {"lower_loss": loss_value, "lower_step_size": step_size, "lower_backtracks": float(backtracks)}

    def _estimate_eta(self, system: ImplicitSystem) -> float:
        vec = _tree.tree_map(
            lambda t: torch.randn(t.shape, generator=self.generator, dtype=t.dtype).to(t.device), system.y
        )
        lam = 1.0
        for _ in range(20):
            vec = _tree.scale(vec, 1.0 / float(_tree.norm(vec)))
            hv = system.hvp(vec)
            lam = float(_tree.dot(vec, hv))
            vec = hv
        if not math.isfinite(lam) or lam <= 0:
            return 1e-3
        return 1.0 / lam

    def _eta_for(self, system: ImplicitSystem, refresh: bool = False) -> float:
        if self.linear_lr != "auto":
            return float(self.linear_lr)
        if refresh or self._eta is None:
            self._eta = self._estimate_eta(system)
        return self._eta

    def _solve_v(self, system: ImplicitSystem, v0: Tree | None) -> Tree:
        """``v ≈ H⁻¹ ∇_y f`` by the algorithm's iteration, re-estimating ``η`` once if it diverged.

        For ``η <= 2/λ_max`` every iteration is non-expansive, so ``‖v‖ <= ‖v0‖ + η K ‖b‖``; a larger
        ``‖v‖`` proves ``η`` too large for this ``H`` (``H`` changes with ``x``), and with ``linear_lr="auto"``
        ``η`` is re-estimated on the current ``H`` and the solve repeated.
        """
        b = system.grad_y_upper
        b_norm = float(_tree.norm(b))
        steps = self.strategy.linear_iterations(self)
        for attempt in range(2):
            eta = self._eta_for(system, refresh=attempt > 0)
            v, start, bound_terms = self.strategy.linear_solve(system, v0, eta, steps)
            bound = start + eta * bound_terms * b_norm
            if _tree.is_finite(v) and float(_tree.norm(v)) <= bound * (1 + 1e-6) + 1e-30:
                return v
            if self.linear_lr != "auto":
                break
        return v

    def _system(self, lower_batch: Any, upper_batch: Any) -> ImplicitSystem:
        problem = self.problem

        def upper(x: Tree, y: Tree) -> Tensor:
            return problem.upper_loss(x, y, upper_batch)

        def lower(x: Tree, y: Tree) -> Tensor:
            return problem.lower_loss(x, y, lower_batch)

        # Copies: the lower and upper steps update x and y in place while the system's graphs are in use.
        x = _tree.tree_map(lambda t: t.detach().clone(), self.x)
        y = _tree.tree_map(lambda t: t.detach().clone(), self.y)
        return ImplicitSystem(upper, lower, x, y)

    def _response(self, system: ImplicitSystem, direction: Tree) -> Tree:
        """``H⁻¹ ∇²_yx g · direction``: how ``y*`` moves (to first order) when ``x`` moves by ``-direction``."""
        rhs = system.jvp_x(direction)
        return conjugate_gradient(system.hvp, rhs, maxiter=self.linear_steps, rtol=1e-6).solution

    def _upper_value(self, x: Tree, y: Tree, batch: Any) -> float:
        with torch.no_grad():
            return float(self.problem.upper_loss(x, y, batch))

    def _apply_upper(
        self,
        system: ImplicitSystem | None,
        d: Tree,
        upper_batch: Any,
        line: Callable[[Tree], float] | None = None,
    ) -> UpperStep | dict[str, float]:
        """Take the upper step along ``d``; ``line(x)`` is the upper value at a trial ``x`` when the algorithm
        has its own line model (``"lookahead"``), else the model is built from ``system`` (module docstring)."""
        # Copies, not detached views: the optimizers below update x in place.
        x0 = _tree.tree_map(lambda t: t.detach().clone(), self.x)
        y0 = _tree.tree_map(lambda t: t.detach().clone(), self.y)
        phi0 = line(x0) if line is not None else self._upper_value(x0, y0, upper_batch)
        if self.upper_rule is not None:
            p = self.upper_rule.direction(d)  # d itself, or Adam's direction for the -adam versions
            slope = float(_tree.dot(d, p))
            r = (
                self._response(system, p)
                if line is None
                and system is not None
                and self.response == "linear"
                and self.upper_rule.evaluates_trials
                else None
            )

            def phi(alpha: float) -> float:
                x_t = _tree.add(x0, p, -alpha)
                if line is not None:
                    value = line(x_t)
                else:
                    y_t = y0 if r is None else _tree.add(y0, r, alpha)
                    value = self._upper_value(x_t, y_t, upper_batch)
                return value if math.isfinite(value) else math.inf

            step = self.upper_rule.step(phi, slope, phi0)
            with torch.no_grad():
                for leaf, g in zip(_tree.leaves(self.x), _tree.leaves(p), strict=True):
                    leaf.sub_(step.step_size * g)
            return step
        assert self.upper_opt is not None
        for leaf, g in zip(_tree.leaves(self.x), _tree.leaves(d), strict=True):
            leaf.grad = g.detach().clone()
        if isinstance(self.upper_opt, rlopt.StepSizeOptimizer):

            def closure() -> Tensor:
                # Value: the line model at the current x; gradient: d (through a linear term with zero value).
                x_now = _tree.detach(self.x)
                if line is not None:
                    value = line(x_now)
                else:
                    assert system is not None
                    delta = _tree.sub(x_now, x0)
                    if self.response == "linear" and float(_tree.norm(delta)) > 0:
                        with torch.enable_grad():
                            y_t = _tree.sub(y0, self._response(system, delta))
                    else:
                        y_t = y0
                    value = self._upper_value(x_now, y_t, upper_batch)
                linear = _tree.dot(self.x, d)
                return linear - linear.detach() + value

            rlopt.closure_step(self.upper_opt, closure)
        else:
            self.upper_opt.step()
        step_size, backtracks, _ = rlopt.step_stats(self.upper_opt)
        return {"upper_step_size": step_size, "upper_backtracks": backtracks}

    def _lookahead(
        self, x0: Tree, y0: Tree, alpha: float, lower_batch: Any, upper_batch: Any
    ) -> tuple[Tree, Callable[[Tree], float] | None]:
        """``d = d/dx f(x, y0 - α ∇_y g(x, y0))`` at ``x0`` and the line model ``x -> f(x, y0 - α ∇_y g(x, y0))``.

        A lower step that took no step (``α <= 0``, or skipped as non-finite) carries no meta-gradient: ``d``
        is then nan, and the upper step is skipped and counted.
        """
        problem = self.problem
        nan = _tree.tree_map(lambda t: torch.full_like(t, math.nan), x0)
        if not (math.isfinite(alpha) and alpha > 0):
            return nan, None

        def upper(x: Tree, y: Tree) -> Tensor:
            return problem.upper_loss(x, y, upper_batch)

        def lower(x: Tree, y: Tree) -> Tensor:
            return problem.lower_loss(x, y, lower_batch)

        try:
            d = hypergradient(upper, lower, x0, y0, "itd", steps=1, lr=alpha, validate=False)
        except NonFiniteError:
            return nan, None

        def line(x: Tree) -> float:
            x_t = _tree.detach(x)
            with torch.enable_grad():
                y_req = _tree.tree_map(lambda t: t.detach().requires_grad_(True), y0)
                leaves = _tree.leaves(y_req)
                grads = torch.autograd.grad(lower(x_t, y_req), leaves, allow_unused=True)
            y1 = _tree.rebuild(
                y0, [v.detach() if g is None else (v - alpha * g).detach() for v, g in zip(leaves, grads, strict=True)]
            )
            return self._upper_value(x_t, y1, upper_batch)

        return d, line

    # ------------------------------------------------------------------------------------------------
    # One outer step

    def step(self) -> dict[str, float]:
        """One outer step of the algorithm; returns its record (without metrics)."""
        problem = self.problem
        record: dict[str, float] = {"step": float(self.outer_step)}
        x_start = _tree.tree_map(lambda t: t.detach().clone(), self.x)
        lower_batch_h = problem.sample_lower_batch(self.generator, *self.variables)
        direction = self.strategy.direction(self, record, lower_batch_h, x_start)
        d, upper_batch, system, line = direction.d, direction.upper_batch, direction.system, direction.line
        d = _tree.detach(d)
        record["hypergradient_norm"] = float(_tree.norm(d))
        if not _tree.is_finite(d):
            self.upper_skipped += 1
            record.update({"upper_step_size": 0.0, "upper_backtracks": 0.0, "upper_loss": float("nan")})
        else:
            result = self._apply_upper(system, d, upper_batch, line)
            if isinstance(result, UpperStep):
                record.update(
                    {
                        "upper_loss": result.reference_loss,
                        "upper_step_size": result.step_size,
                        "upper_backtracks": float(result.backtracks),
                        "upper_envelope": result.envelope,
                        "upper_trial_loss": result.trial_loss,
                        "upper_slack": result.slack,
                        "upper_slope": result.slope,
                        "upper_accepted": float(result.accepted),
                    }
                )
            else:
                if line is not None:
                    record["upper_loss"] = line(x_start)
                else:
                    assert system is not None
                    record["upper_loss"] = self._upper_value(
                        _tree.detach(system.x), _tree.detach(system.y), upper_batch
                    )
                record.update(result)
        if self.upper_rule is not None:
            record["upper_failures"] = float(self.upper_rule.failures)
        record["upper_skipped"] = float(self.upper_skipped)
        record["lower_skipped"] = float(self.lower_skipped)
        self.outer_step += 1
        return record

    def run(
        self,
        outer_steps: int = 100,
        *,
        eval_every: int = 10,
        callback: Callable[[dict[str, float]], None] | None = None,
        max_time: float | None = None,
    ) -> BilevelHistory:
        """Run ``outer_steps`` outer steps (continuing from the current state) and return the history.

        Args:
            outer_steps: number of outer steps.
            eval_every: compute ``problem.metrics`` every this many steps (and at the last).
            callback: called with each record (after metrics are added), e.g. for logging.
            max_time: stop after this many seconds of solver time (evaluation excluded).
        """
        if isinstance(outer_steps, bool) or not isinstance(outer_steps, int) or outer_steps < 1:
            raise ValueError(f"Invalid outer_steps: {outer_steps!r}, expected an int >= 1")
        if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
            raise ValueError(f"Invalid eval_every: {eval_every!r}, expected an int >= 1")
        history = BilevelHistory()
        elapsed = 0.0
        for i in range(outer_steps):
            start = time.perf_counter()
            record = self.step()
            elapsed += time.perf_counter() - start
            record["wall_time"] = elapsed
            last = i == outer_steps - 1 or (max_time is not None and elapsed >= max_time)
            if (i + 1) % eval_every == 0 or last:
                record.update(self.problem.metrics(_tree.detach(self.x), _tree.detach(self.y)))
            history.records.append(record)
            if callback is not None:
                callback(record)
            if last:
                break
        return history

    @property
    def variables(self) -> tuple[Tree, Tree]:
        """The current ``(x, y)``, detached."""
        return _tree.detach(self.x), _tree.detach(self.y)
