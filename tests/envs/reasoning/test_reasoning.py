"""rlopt.envs.reasoning: generator properties, exact verifier, extractor, normaliser, JSONL loader, bad input."""

from __future__ import annotations

import doctest
import importlib.util
import itertools
import json
from pathlib import Path

import pytest

import rlopt.envs.reasoning as er
from rlopt.envs.reasoning import answers, arithmetic


def _reference_value(expression: str, modulus: int | None) -> int:
    # Python's own precedence rules are the trusted reference for the non-negative operands we generate
    value = eval(expression, {"__builtins__": {}})
    return value % modulus if modulus is not None else value


@pytest.mark.parametrize("modulus", [10, 7, None])
def test_generator_answers_equal_python_precedence(modulus: int | None) -> None:
    for task in er.ArithmeticTasks(2, 6, modulus=modulus, seed=3).sample(300):
        assert set(task.expression or "") <= set("0123456789+-*")
        assert task.answer == str(_reference_value(task.question, modulus))
        assert 2 <= task.n_operands <= 6
        if modulus is not None:
            assert 0 <= int(task.answer) < modulus


def test_every_plan_gives_a_trace_and_precedence_plan_is_correct() -> None:
    # exhaustive over all plans of small expressions: each step removes one operator; the precedence plan is
    # the true value; reduction in the modulus commutes with evaluation for any order
    for expression in ["3+4*2-7", "9-2-3*4", "2*3*4+1", "8-1+2-3"]:
        _, ops = er.parse_expression(expression)
        for plan in itertools.product(*[range(1, len(ops) - k + 1) for k in range(len(ops))]):
            trace = er.execute_plan(expression, list(plan), 10)
            assert len(trace) == len(ops)
            assert [len(er.parse_expression(step)[1]) for step in trace] == list(range(len(ops) - 1, -1, -1))
        assert er.execute_plan(expression, er.precedence_plan(expression), None)[-1] == str(eval(expression))
        assert er.execute_plan(expression, er.precedence_plan(expression), 10)[-1] == str(eval(expression) % 10)


def test_precedence_plan_example_and_integer_traces_with_negative_numbers() -> None:
    assert er.precedence_plan("3+4*2-7") == [2, 1, 1]
    assert er.execute_plan("3+4*2-7", [2, 1, 1], 10) == ["3+8-7", "1-7", "4"]
    # a plan that subtracts first creates a negative operand, which must parse again
    trace = er.execute_plan("3+2-7*1", [2, 1, 1], None)
    assert trace == ["3+-5*1", "-2*1", "-2"]
    assert er.parse_expression("3+-5*1") == ([3, -5, 1], ["+", "*"])


def test_generator_is_deterministic_and_seed_sensitive() -> None:
    a = er.ArithmeticTasks(seed=5).sample(50)
    b = er.ArithmeticTasks(seed=5).sample(50)
    c = er.ArithmeticTasks(seed=6).sample(50)
    assert a == b
    assert a != c
    stream = er.ArithmeticTasks(seed=5)
    assert stream.sample(20) + stream.sample(30) == a


def test_splits_have_their_operand_ranges_and_differ() -> None:
    train, test, ood = (er.make_split(s, 200, seed=0) for s in ("train", "test", "ood"))
    assert {t.n_operands for t in train} == {2, 3, 4}
    assert {t.n_operands for t in ood} == {5, 6}
    assert [t.question for t in train[:50]] != [t.question for t in test[:50]]


def test_extract_answer_takes_the_last_balanced_box() -> None:
    assert er.extract_answer("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert er.extract_answer("\\boxed{3} then \\boxed{4") == "3"
    assert er.extract_answer("\\boxed{}") == ""
    assert er.extract_answer("boxed{4}") is None
    assert er.extract_answer(er.format_answer("-12")) == "-12"


def test_normaliser_and_verifier() -> None:
    assert er.normalize_answer("$\\dfrac{6}{4}$") == "3/2"
    assert er.normalize_answer("\\left( 1, 2 \\right)") == "(1,2)"
    assert er.answers_match("1.5", "3/2", use_math_verify=False)
    assert er.answers_match("-0", "0", use_math_verify=False)
    assert not er.answers_match("4", "5", use_math_verify=False)
    assert not er.answers_match("", "0", use_math_verify=False)
    assert not er.answers_match(None, "0")
    assert er.answers_match("\\text{ 12 }", "12.00", use_math_verify=False)


def test_load_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": 2}) + "\n\n"
                    + json.dumps({"question": "x", "answer": "\\frac{1}{2}"}) + "\n")
    tasks = er.load_jsonl(path)
    assert tasks == [er.ReasoningTask("1+1?", "2"), er.ReasoningTask("x", "\\frac{1}{2}")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no task"),
        ("not json\n", ":1 is not JSON"),
        ('{"question": "q"}\n', "keys 'question' and 'answer'"),
        ('{"question": "", "answer": 1}\n', "non-empty string"),
        ('{"question": "q", "answer": [1]}\n', "string or a number"),
        ('[1, 2]\n', "expected an object"),
    ],
)
def test_load_jsonl_bad_input(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        er.load_jsonl(path)


def test_bad_input_errors_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="path"):
        er.load_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="min_operands"):
        er.ArithmeticTasks(min_operands=1)
    with pytest.raises(ValueError, match="max_operands"):
        er.ArithmeticTasks(min_operands=4, max_operands=3)
    with pytest.raises(ValueError, match="modulus"):
        er.ArithmeticTasks(modulus=1)
    with pytest.raises(ValueError, match="operators"):
        er.ArithmeticTasks(operators="/")
    with pytest.raises(ValueError, match="split"):
        er.make_split("val", 3)
    with pytest.raises(ValueError, match="expression"):
        er.parse_expression("3+")
    with pytest.raises(ValueError, match="plan"):
        er.execute_plan("3+4", [2], 10)
    with pytest.raises(TypeError, match="text"):
        er.extract_answer(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("module", [er, answers, arithmetic])
def test_docstring_examples(module: object) -> None:
    result = doctest.testmod(module, raise_on_error=False)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def test_math_verify_is_used_only_when_asked_and_then_required(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    symbolic = ("2\\sqrt{2}", "\\sqrt{8}")  # equal, but not by the exact normaliser
    assert not er.answers_match(*symbolic)  # the default ignores math-verify even where it is installed
    if importlib.util.find_spec("math_verify") is not None:
        assert er.answers_match(*symbolic, use_math_verify=True)
    monkeypatch.setitem(sys.modules, "math_verify", None)  # makes `import math_verify` fail
    with pytest.raises(ImportError, match=r"torch-rlopt\[math\]"):
        er.answers_match(*symbolic, use_math_verify=True)
    assert er.answers_match("4", "4.0", use_math_verify=True)  # an exact match needs no verifier
