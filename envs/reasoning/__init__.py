"""Verifiable reasoning tasks for ReMA: a seeded arithmetic generator, the marked answer format, the exact
verifier, the answer normaliser, and a loader for a user's JSONL of ``{question, answer}`` pairs.

Tokenizer-independent: everything here works on strings.

Example:
    >>> from rlopt.envs.reasoning import make_split, extract_answer, answers_match
    >>> task = make_split("train", 1, seed=0)[0]
    >>> answers_match(extract_answer("\\\\boxed{" + task.answer + "}"), task.answer)
    True
"""

from rlopt.envs.reasoning.answers import (
    ANSWER_PREFIX,
    answers_match,
    extract_answer,
    format_answer,
    load_jsonl,
    normalize_answer,
    require_math_verify,
)
from rlopt.envs.reasoning.arithmetic import (
    OPERATORS,
    SPLITS,
    ArithmeticTasks,
    ReasoningTask,
    apply_operator,
    evaluate_expression,
    execute_plan,
    make_split,
    parse_expression,
    precedence_plan,
    render_expression,
    worked_steps,
)

__all__ = [
    "ANSWER_PREFIX",
    "OPERATORS",
    "SPLITS",
    "ArithmeticTasks",
    "ReasoningTask",
    "answers_match",
    "apply_operator",
    "evaluate_expression",
    "execute_plan",
    "extract_answer",
    "format_answer",
    "load_jsonl",
    "make_split",
    "normalize_answer",
    "parse_expression",
    "precedence_plan",
    "render_expression",
    "require_math_verify",
    "worked_steps",
]
