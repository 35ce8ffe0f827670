"""One class per stochastic bilevel algorithm: how an outer step of :class:`rlopt.bilevel.BilevelSolver` gets
its hypergradient estimate ``d``. The solver owns the state (``x``, ``y``, ``v``, the step-size rules) and the
upper step; an algorithm decides the lower steps, the minibatches and the linear solve before it (the
algorithms themselves are described in :mod:`rlopt.bilevel.solver`). A new algorithm is one subclass added to
:data:`ALGORITHMS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from rlopt.bilevel import _tree
from rlopt.bilevel._tree import Tree
from rlopt.bilevel.hypergradients import ImplicitSystem, hypergradient
from rlopt.bilevel.linear_solvers import neumann_series, richardson

if TYPE_CHECKING:
    from rlopt.bilevel.solver import BilevelSolver

__all__ = ["ALGORITHMS", "SOBA", "AmIGO", "BilevelAlgorithm", "DoubleLoop", "Lookahead", "OuterDirection", "StocBiO"]


@dataclass
class OuterDirection:
    """What an algorithm hands the upper step: ``d``, the upper minibatch, and the implicit system or the
    look-ahead line model the upper rule's line search evaluates (one of the two)."""

    d: Tree
    upper_batch: Any
    system: ImplicitSystem | None = None
    line: Callable[[Tree], float] | None = None


class BilevelAlgorithm(ABC):
    """One outer step's hypergradient estimate; stateless (the solver holds ``v`` between steps)."""

    name: ClassVar[str]
    #: one lower step per outer step, whatever ``inner_steps`` says
    single_loop: ClassVar[bool] = False

    @abstractmethod
    def direction(self, solver: BilevelSolver, record: dict[str, float], lower_batch: Any,
                  x_start: Tree) -> OuterDirection:
        """Run the lower steps (recording their statistics in ``record``) and estimate ``d``."""

    def linear_iterations(self, solver: BilevelSolver) -> int:
        """Iterations of the linear solve for ``v ≈ H⁻¹ ∇_y f``."""
        return solver.linear_steps

    def linear_solve(self, system: ImplicitSystem, v0: Tree | None, eta: float, steps: int
                     ) -> tuple[Tree, float, int]:
        """``v`` from ``steps`` Richardson iterations warm-started at ``v0``, with the start norm and the number
        of terms of the solver's divergence bound ``‖v‖ <= start + η terms ‖b‖``."""
        v = richardson(system.hvp, system.grad_y_upper, v0, alpha=eta, iterations=steps).solution
        return v, 0.0 if v0 is None else float(_tree.norm(v0)), steps


class StocBiO(BilevelAlgorithm):
    """``inner_steps`` lower steps, ``v`` by a Neumann series on one lower minibatch, ``d`` on an upper one."""

    name = "stocbio"

    def direction(self, solver: BilevelSolver, record: dict[str, float], lower_batch: Any,
                  x_start: Tree) -> OuterDirection:
        record.update(solver._lower_sweep(solver.inner_steps))
        upper_batch = solver.problem.sample_upper_batch(solver.generator, *solver.variables)
        system = solver._system(lower_batch, upper_batch)
        return OuterDirection(system.combine(solver._solve_v(system, None)), upper_batch, system=system)

    def linear_solve(self, system: ImplicitSystem, v0: Tree | None, eta: float, steps: int
                     ) -> tuple[Tree, float, int]:
        v = neumann_series(system.hvp, system.grad_y_upper, alpha=eta, iterations=steps).solution
        return v, 0.0, steps + 1


class AmIGO(BilevelAlgorithm):
    """As stocBiO, with ``v`` by Richardson steps warm-started at the previous outer step's ``v``."""

    name = "amigo"

    def direction(self, solver: BilevelSolver, record: dict[str, float], lower_batch: Any,
                  x_start: Tree) -> OuterDirection:
        record.update(solver._lower_sweep(solver.inner_steps))
        upper_batch = solver.problem.sample_upper_batch(solver.generator, *solver.variables)
        system = solver._system(lower_batch, upper_batch)
        solver.v = solver._solve_v(system, solver.v)
        return OuterDirection(system.combine(solver.v), upper_batch, system=system)


class SOBA(BilevelAlgorithm):
    """Single loop: every term at the current ``(x, y, v)`` on one lower minibatch, then all updates."""

    name = "soba"
    single_loop = True

    def linear_iterations(self, solver: BilevelSolver) -> int:
        return 1

    def direction(self, solver: BilevelSolver, record: dict[str, float], lower_batch: Any,
                  x_start: Tree) -> OuterDirection:
        upper_batch = solver.problem.sample_upper_batch(solver.generator, *solver.variables)
        system = solver._system(lower_batch, upper_batch)
        v = solver.v if solver.v is not None else _tree.zeros_like(system.grad_y_upper)
        d = system.combine(v)
        v_next = solver._solve_v(system, v)
        record.update(solver._lower_sweep(1, lower_batch))
        solver.v = v_next
        return OuterDirection(d, upper_batch, system=system)


class DoubleLoop(BilevelAlgorithm):
    """``inner_steps`` lower steps, then any registered hypergradient method on one minibatch of each level."""

    name = "double_loop"

    def direction(self, solver: BilevelSolver, record: dict[str, float], lower_batch: Any,
                  x_start: Tree) -> OuterDirection:
        problem = solver.problem
        record.update(solver._lower_sweep(solver.inner_steps))
        upper_batch = problem.sample_upper_batch(solver.generator, *solver.variables)
        system = solver._system(lower_batch, upper_batch)

        def upper(x: Tree, y: Tree) -> Tensor:
            return problem.upper_loss(x, y, upper_batch)

        def lower(x: Tree, y: Tree) -> Tensor:
            return problem.lower_loss(x, y, lower_batch)

        d = hypergradient(upper, lower, system.x, system.y, solver.hypergrad, validate=False,
                          **solver.hypergrad_options)
        return OuterDirection(d, upper_batch, system=system)


class Lookahead(BilevelAlgorithm):
    """The one-step look-ahead meta-gradient: one lower step, then ``d`` through it on a fresh upper batch."""

    name = "lookahead"
    single_loop = True

    def direction(self, solver: BilevelSolver, record: dict[str, float], lower_batch: Any,
                  x_start: Tree) -> OuterDirection:
        y_start = _tree.tree_map(lambda t: t.detach().clone(), solver.y)
        skipped_before = solver.lower_skipped
        record.update(solver._lower_sweep(1, lower_batch))
        if solver.lower_skipped > skipped_before:  # the step was undone: there is no step to differentiate
            record["lower_step_size"] = 0.0
        # Drawn after the lower step: an on-policy problem collects it with the updated y.
        upper_batch = solver.problem.sample_upper_batch(solver.generator, *solver.variables)
        d, line = solver._lookahead(x_start, y_start, record["lower_step_size"], lower_batch, upper_batch)
        return OuterDirection(d, upper_batch, line=line)


#: the algorithms by name (``BilevelSolver(algorithm=...)``)
ALGORITHMS: dict[str, type[BilevelAlgorithm]] = {
    cls.name: cls for cls in (StocBiO, AmIGO, SOBA, DoubleLoop, Lookahead)
}
