"""Seeded generator of verifiable multi-step arithmetic tasks, with exact solutions and reduction traces.

A task is an expression over integers with the operators ``+``, ``-`` and ``*`` (ordinary precedence), for
example ``3+4*2-7``, evaluated either modulo ``modulus`` (every intermediate result reduced, so with
``modulus=10`` every number stays one digit) or over the integers (``modulus=None``). The number of operands
controls the number of reasoning steps: the in-distribution split uses 2 to 4 operands, the
out-of-distribution split the longer 5 to 6 (the analogue of the OOD benchmarks of ReMA, Wan et al.,
arXiv 2503.09501, Table 1).

Besides the answer, the module computes *reduction traces*: an expression is solved by reducing one operator
at a time, ``3+4*2-7 -> 3+8-7 -> 1-7 -> 4``. A *plan* is the list of 1-based operator indices reduced at
each step, counted in the current expression (here ``[2, 1, 1]``); :func:`precedence_plan` gives the plan
that respects precedence (multiplications first, then left to right), which always yields the true value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

__all__ = [
    "OPERATORS",
    "SPLITS",
    "ArithmeticTasks",
    "ReasoningTask",
    "evaluate_expression",
    "execute_plan",
    "make_split",
    "parse_expression",
    "precedence_plan",
    "render_expression",
]

#: the operators of generated expressions
OPERATORS = "+-*"

_NUMBER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class ReasoningTask:
    """One verifiable question.

    Attributes:
        question: the text shown to the agents.
        answer: the reference answer as a string (normalised by :func:`rlopt.envs.reasoning.normalize_answer`).
        expression: the arithmetic expression for generated tasks, ``None`` for loaded ones.
        modulus: the modulus of a generated task (``None``: integer arithmetic or a loaded task).
    """

    question: str
    answer: str
    expression: str | None = None
    modulus: int | None = None

    @property
    def n_operands(self) -> int:
        """Number of operands of a generated task (0 for a loaded task)."""
        if self.expression is None:
            return 0
        return len(parse_expression(self.expression)[0])


def parse_expression(expression: str) -> tuple[list[int], list[str]]:
    """Split ``expression`` into its numbers and operators.

    A ``-`` directly at the start or after an operator is the sign of the following number, so the
    intermediate expressions of integer traces (``3+-5``) parse.

    Raises:
        ValueError: if ``expression`` is not ``number (op number)*`` with ops in ``+-*``.
    """
    if not isinstance(expression, str):
        raise TypeError(f"Invalid expression: expected str, got {type(expression).__name__}")
    numbers: list[int] = []
    ops: list[str] = []
    pos = 0
    text = expression.replace(" ", "")
    while True:
        match = _NUMBER.match(text, pos)
        if match is None:
            raise ValueError(f"Invalid expression: {expression!r}, expected numbers joined by one of {OPERATORS!r}")
        numbers.append(int(match.group()))
        pos = match.end()
        if pos == len(text):
            break
        if text[pos] not in OPERATORS:
            raise ValueError(f"Invalid expression: {expression!r}, unexpected {text[pos]!r} at {pos}")
        ops.append(text[pos])
        pos += 1
    return numbers, ops


def render_expression(numbers: list[int], ops: list[str]) -> str:
    """Inverse of :func:`parse_expression`."""
    if len(numbers) != len(ops) + 1:
        raise ValueError(f"Invalid expression parts: {len(numbers)} numbers need {len(numbers) - 1} operators, "
                         f"got {len(ops)}")
    parts = [str(numbers[0])]
    for op, number in zip(ops, numbers[1:], strict=True):
        parts.append(op + str(number))
    return "".join(parts)


def apply_operator(a: int, op: str, b: int, modulus: int | None = None) -> int:
    """``a op b`` for ``op`` in ``+ - *``, reduced mod ``modulus`` when one is given.

    Example:
        >>> apply_operator(7, "*", 8, modulus=10), apply_operator(2, "-", 9)
        (6, -7)
    """
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return value % modulus if modulus is not None else value


def precedence_plan(expression: str) -> list[int]:
    """The plan (1-based operator indices in the current expression) that respects precedence.

    Multiplications are reduced first, left to right, then additions and subtractions left to right.
    """
    _, ops = parse_expression(expression)
    ops = list(ops)
    plan: list[int] = []
    while ops:
        index = ops.index("*") if "*" in ops else 0
        plan.append(index + 1)
        del ops[index]
    return plan


def execute_plan(expression: str, plan: list[int], modulus: int | None) -> list[str]:
    """The reduction trace of ``expression`` under ``plan``: one expression per step, the last a number.

    Raises:
        ValueError: if the plan does not have one valid index per operator.
    """
    numbers, ops = parse_expression(expression)
    if len(plan) != len(ops):
        raise ValueError(f"Invalid plan: {plan}, expected {len(ops)} operator indices for {expression!r}")
    trace: list[str] = []
    for index in plan:
        if not 1 <= index <= len(ops):
            raise ValueError(f"Invalid plan: {plan}, index {index} outside 1..{len(ops)}")
        i = index - 1
        numbers[i : i + 2] = [apply_operator(numbers[i], ops[i], numbers[i + 1], modulus)]
        del ops[i]
        trace.append(render_expression(numbers, ops))
    return trace


def worked_steps(expression: str, plan: list[int], modulus: int | None = None) -> list[str]:
    """One line per reduction of ``expression`` under ``plan``: ``a op b=c`` followed by the rewritten
    expression, the last line ``a op b=value`` alone. Every character is a copy or one local operation.

    Example:
        >>> worked_steps("3+4*2-7", [2, 1, 1])
        ['4*2=8,3+8-7', '3+8=11,11-7', '11-7=4']
    """
    trace = execute_plan(expression, plan, modulus)
    current, lines = expression, []
    for k, index in enumerate(plan):
        numbers, ops = parse_expression(current)
        a, op, b = numbers[index - 1], ops[index - 1], numbers[index]
        lines.append(f"{a}{op}{b}={trace[k]}" if k == len(plan) - 1
                     else f"{render_expression([a, b], [op])}={apply_operator(a, op, b, modulus)},{trace[k]}")
        current = trace[k]
    return lines


def evaluate_expression(expression: str, modulus: int | None = None) -> int:
    """The value of ``expression`` with ordinary precedence (exact integer arithmetic, reduced mod ``modulus``).

    Example:
        >>> evaluate_expression("3+4*2-7", modulus=10)
        4
        >>> evaluate_expression("3+4*2-7")
        4
        >>> evaluate_expression("2-9")
        -7
    """
    if modulus is not None and (not isinstance(modulus, int) or modulus < 2):
        raise ValueError(f"Invalid modulus: {modulus!r}, expected an integer >= 2 or None")
    numbers, ops = parse_expression(expression)
    if not ops:
        return numbers[0] % modulus if modulus is not None else numbers[0]
    return int(execute_plan(expression, precedence_plan(expression), modulus)[-1])


class ArithmeticTasks:
    """A seeded stream of arithmetic tasks with ``min_operands`` to ``max_operands`` operands.

    Operands are uniform in ``[0, max_operand]``, operators uniform in ``operators``, the number of operands
    uniform in ``[min_operands, max_operands]``; all draws come from one ``torch.Generator`` seeded by
    ``seed``, so the stream is identical across runs and platforms.

    Args:
        min_operands: smallest number of operands (>= 2).
        max_operands: largest number of operands (>= min_operands).
        modulus: arithmetic modulo this number (default 10: one-digit numbers), or ``None`` for integers.
        max_operand: largest operand value.
        operators: a non-empty subset of ``"+-*"``.
        seed: seed of the generator.

    Example:
        >>> tasks = ArithmeticTasks(2, 4, seed=0).sample(3)
        >>> [t.answer == str(evaluate_expression(t.expression, 10)) for t in tasks]
        [True, True, True]
    """

    def __init__(
        self,
        min_operands: int = 2,
        max_operands: int = 4,
        modulus: int | None = 10,
        max_operand: int = 9,
        operators: str = OPERATORS,
        seed: int = 0,
    ) -> None:
        if not isinstance(min_operands, int) or min_operands < 2:
            raise ValueError(f"Invalid min_operands: {min_operands!r}, expected an integer >= 2")
        if not isinstance(max_operands, int) or max_operands < min_operands:
            raise ValueError(f"Invalid max_operands: {max_operands!r}, expected an integer >= min_operands "
                             f"({min_operands})")
        if modulus is not None and (not isinstance(modulus, int) or modulus < 2):
            raise ValueError(f"Invalid modulus: {modulus!r}, expected an integer >= 2 or None")
        if not isinstance(max_operand, int) or max_operand < 1:
            raise ValueError(f"Invalid max_operand: {max_operand!r}, expected an integer >= 1")
        if not operators or any(op not in OPERATORS for op in operators):
            raise ValueError(f"Invalid operators: {operators!r}, expected a non-empty subset of {OPERATORS!r}")
        self.min_operands = min_operands
        self.max_operands = max_operands
        self.modulus = modulus
        self.max_operand = max_operand
        self.operators = operators
        self.generator = torch.Generator().manual_seed(int(seed))

    def sample(self, n: int) -> list[ReasoningTask]:
        """The next ``n`` tasks of the stream."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"Invalid n: {n!r}, expected a non-negative integer")
        g = self.generator
        tasks = []
        for _ in range(n):
            # one task's draws together, so sample(a) + sample(b) == sample(a + b)
            count = int(torch.randint(self.min_operands, self.max_operands + 1, (1,), generator=g))
            numbers = torch.randint(0, self.max_operand + 1, (count,), generator=g).tolist()
            op_ids = torch.randint(0, len(self.operators), (count - 1,), generator=g).tolist()
            expression = render_expression(numbers, [self.operators[i] for i in op_ids])
            value = evaluate_expression(expression, self.modulus)
            tasks.append(ReasoningTask(question=expression, answer=str(value), expression=expression,
                                       modulus=self.modulus))
        return tasks


#: operand ranges of the named splits
SPLITS = {"train": (2, 4), "test": (2, 4), "ood": (5, 6)}
# distinct streams per split so test questions are not a prefix of the training stream
_SPLIT_OFFSETS = {"train": 0, "test": 1_000_003, "ood": 2_000_003}


def make_split(split: str, n: int, seed: int = 0, modulus: int | None = 10) -> list[ReasoningTask]:
    """``n`` tasks of a named split: ``"train"``/``"test"`` (2-4 operands) or ``"ood"`` (5-6 operands).

    Example:
        >>> [t.n_operands >= 5 for t in make_split("ood", 4)]
        [True, True, True, True]
    """
    if split not in SPLITS:
        raise ValueError(f"Invalid split: {split!r}, expected one of {sorted(SPLITS)}")
    low, high = SPLITS[split]
    return ArithmeticTasks(low, high, modulus=modulus, seed=int(seed) + _SPLIT_OFFSETS[split]).sample(n)
