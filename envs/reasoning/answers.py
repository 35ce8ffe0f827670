"""The marked answer format, the answer normaliser and exact verifier, and a JSONL loader.

The reasoner marks its final answer as ``\\boxed{...}`` (the format of ReMA, Wan et al., arXiv 2503.09501,
App. G). :func:`extract_answer` returns the content of the last ``\\boxed{...}`` with balanced braces.

Verification compares normalised strings exactly, then, when both sides are numbers, their exact rational
values (``0.5 == 1/2 == \\frac{1}{2}``). With ``use_math_verify=True`` (an explicit choice: it needs the
``math`` extra, ``pip install 'torch-rlopt[math]'``), :func:`answers_match` also accepts what
``math_verify.verify`` accepts (symbolic equivalence of LaTeX expressions); by default the documented
normaliser below is the whole rule, whatever is installed.

The normaliser (:func:`normalize_answer`): strip whitespace and surrounding ``$``; drop ``\\left``/``\\right``,
``\\!``, ``\\,``, ``\\text{...}``/``\\mathrm{...}`` wrappers (keeping their content), a trailing period, a
leading ``+``, thousands separators in numbers (``1,000``); ``\\dfrac``/``\\tfrac`` become ``\\frac``;
``\\frac{a}{b}`` and ``a/b`` of integers become the reduced fraction ``a/b``; decimals equal to integers
become integers (``4.0 -> 4``).
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

from rlopt.envs.reasoning.arithmetic import ReasoningTask

__all__ = [
    "ANSWER_PREFIX",
    "answers_match",
    "extract_answer",
    "format_answer",
    "load_jsonl",
    "normalize_answer",
]

#: the opening of the marked answer format
ANSWER_PREFIX = "\\boxed{"


def format_answer(answer: str) -> str:
    """``answer`` in the marked format: ``\\boxed{answer}``."""
    return f"{ANSWER_PREFIX}{answer}}}"


def extract_answer(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` in ``text`` (braces balanced), or ``None``.

    Example:
        >>> extract_answer("3+8-7;1-7;\\\\boxed{4}")
        '4'
        >>> extract_answer("no answer") is None
        True
    """
    if not isinstance(text, str):
        raise TypeError(f"Invalid text: expected str, got {type(text).__name__}")
    start = text.rfind(ANSWER_PREFIX)
    while start != -1:
        depth = 1
        pos = start + len(ANSWER_PREFIX)
        while pos < len(text):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    return text[start + len(ANSWER_PREFIX) : pos]
            pos += 1
        # an unclosed last box: look for an earlier complete one
        start = text.rfind(ANSWER_PREFIX, 0, start)
    return None


_WRAPPERS = re.compile(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}")
_FRAC = re.compile(r"^\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_SLASH = re.compile(r"^(-?\d+)/(-?\d+)$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")
_DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")


def _number(text: str) -> Fraction | None:
    if _DECIMAL.match(text):
        return Fraction(text)
    match = _FRAC.match(text) or _SLASH.match(text)
    if match and int(match.group(2)) != 0:
        return Fraction(int(match.group(1)), int(match.group(2)))
    return None


def normalize_answer(answer: str) -> str:
    """The canonical string of ``answer`` (rules in the module docstring).

    Example:
        >>> [normalize_answer(a) for a in [" $4.0$ ", "\\\\dfrac{2}{4}", "1,000", "+7.", "\\\\text{5}"]]
        ['4', '1/2', '1000', '7', '5']
    """
    if not isinstance(answer, str):
        raise TypeError(f"Invalid answer: expected str, got {type(answer).__name__}")
    text = answer.strip().strip("$").strip()
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;"):
        text = text.replace(token, "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    previous = None
    while previous != text:
        previous = text
        text = _WRAPPERS.sub(r"\1", text)
    text = text.strip()
    if text.endswith("."):
        text = text[:-1]
    if text.startswith("+"):
        text = text[1:]
    text = text.strip()
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    compact = text.replace(" ", "")
    value = _number(compact)
    if value is not None:
        return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    return compact


def require_math_verify() -> object:
    """The ``math_verify`` module, or an ``ImportError`` naming the extra that installs it."""
    try:
        import math_verify
    except ImportError as error:
        raise ImportError("use_math_verify=True needs math-verify: pip install 'torch-rlopt[math]' "
                          "(or pip install math-verify)") from error
    return math_verify


def _math_verify_match(predicted: str, reference: str) -> bool:
    """``math_verify``'s judgement (a parser failure is a non-match)."""
    math_verify: object = require_math_verify()
    try:
        gold = math_verify.parse(format_answer(reference))  # type: ignore[attr-defined]
        pred = math_verify.parse(format_answer(predicted))  # type: ignore[attr-defined]
        return bool(math_verify.verify(gold, pred))  # type: ignore[attr-defined]
    except Exception:  # a parser failure is a non-match, never a crash of the training loop
        return False


def answers_match(predicted: str | None, reference: str, use_math_verify: bool = False) -> bool:
    """Whether ``predicted`` equals ``reference`` after normalisation (or, with ``use_math_verify``, per
    math-verify's symbolic check, which needs the ``math`` extra).

    Raises:
        ImportError: with ``use_math_verify=True`` when math-verify is not installed.

    Example:
        >>> answers_match("0.5", "\\\\frac{1}{2}"), answers_match("3", "4"), answers_match(None, "4")
        (True, False, False)
    """
    if predicted is None:
        return False
    if normalize_answer(predicted) == normalize_answer(reference):
        return True
    if use_math_verify:
        return _math_verify_match(predicted, reference)
    return False


def load_jsonl(path: str | Path) -> list[ReasoningTask]:
    """Tasks from a JSONL file with one ``{"question": str, "answer": str | number}`` object per line.

    Blank lines are skipped; answers are kept as strings (numbers converted with ``str``).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on a line that is not a JSON object with a non-empty ``question`` and an ``answer``,
            naming the line, or if the file holds no task.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Invalid path: {str(path)!r} is not a file")
    tasks: list[ReasoningTask] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"Invalid JSONL: {path}:{lineno} is not JSON ({error.msg})") from None
            if not isinstance(record, dict) or "question" not in record or "answer" not in record:
                raise ValueError(f"Invalid JSONL: {path}:{lineno}, expected an object with keys 'question' and "
                                 f"'answer', got {str(record)[:80]!r}")
            question, answer = record["question"], record["answer"]
            if not isinstance(question, str) or not question.strip():
                raise ValueError(f"Invalid JSONL: {path}:{lineno}, 'question' must be a non-empty string")
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                raise ValueError(f"Invalid JSONL: {path}:{lineno}, 'answer' must be a string or a number, "
                                 f"got {type(answer).__name__}")
            tasks.append(ReasoningTask(question=question, answer=str(answer)))
    if not tasks:
        raise ValueError(f"Invalid JSONL: {path} holds no task")
    return tasks
