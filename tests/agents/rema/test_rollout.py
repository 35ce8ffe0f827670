"""Rollouts with scripted agents: reward routing, what each agent sees, termination codes, demonstrations."""

from __future__ import annotations

import itertools

import pytest
import torch

from rlopt.agents.rema.rollout import (
    FINISH,
    TERMINATION,
    RewardConfig,
    Rollout,
    Sampling,
    demonstrations,
    rollout_multi_turn,
    rollout_single_agent,
    rollout_single_turn,
)
from rlopt.envs.reasoning import ReasoningTask, answers_match, extract_answer, make_split

from .helpers import ScriptedPolicy

TASKS = [ReasoningTask("3+4*2", "1", "3+4*2", 10), ReasoningTask("9-2", "7", "9-2", 10)]
SAMPLING = Sampling(max_new_tokens=40)


def test_reward_routing_single_turn() -> None:
    # meta: a proper plan for the first question, a plan that states the answer for the second
    meta = ScriptedPolicy(lambda p: "21" if "3+4*2" in p else "\\boxed{7}")
    # reasoner answers cycle through: correct, wrong but marked, no answer, correct ...
    answers = itertools.cycle(["right", "wrong", "none", "right"])

    def reasoner_script(prompt: str) -> str:
        kind = next(answers)
        gold = "1" if "3+4*2" in prompt else "7"
        return {"right": f"x;\\boxed{{{gold}}}", "wrong": "x;\\boxed{0}", "none": "x=0"}[kind]

    reasoner = ScriptedPolicy(reasoner_script)
    rollout = rollout_single_turn(meta, reasoner, TASKS, n_plans=2, n_answers=2, sampling=SAMPLING)
    r = rollout.role("reasoner")
    assert [s.reward for s in r] == [1.0, -0.5, -1.0, 1.0, 1.0, -0.5, -1.0, 1.0]
    m = rollout.role("meta")
    # plan i is answered by reasoner samples 2i, 2i+1; the second question's plans leak the answer: -1
    assert [s.reward for s in m] == [0.5, 0.5, 0.5 - 1.0, 0.5 - 1.0]
    assert [s.group for s in m] == [0, 0, 1, 1] and [s.group for s in r] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert rollout.stats["accuracy"] == 0.5
    assert rollout.stats["meta/leak_rate"] == 0.5
    # what each agent saw: its own system prompt; the reasoner sees question and plan
    assert meta.seen[0] == "<system>plan<user>3+4*2<assistant>"
    assert reasoner.seen[0] == "<system>solve<user>3+4*2|21<assistant>"
    # the response of each segment is exactly what the agent generated (with its EOS)
    assert all(s.response[-1] == meta.eos_id for s in rollout.segments)
    assert [meta.decode(s.response) for s in m] == ["21", "21", "\\boxed{7}", "\\boxed{7}"]


def test_reward_config_is_configurable() -> None:
    rewards = RewardConfig(correct=2.0, wrong_formatted=0.0, no_answer=-3.0, leak_penalty=-0.25)
    meta = ScriptedPolicy(lambda p: "\\boxed{1}")
    reasoner = ScriptedPolicy(lambda p: "\\boxed{1}" if "3+4*2" in p else "nothing")
    rollout = rollout_single_turn(meta, reasoner, TASKS, 1, 1, SAMPLING, rewards=rewards)
    assert [s.reward for s in rollout.role("reasoner")] == [2.0, -3.0]
    assert [s.reward for s in rollout.role("meta")] == [1.0 - 0.25, 0.0 - 0.25]


def test_single_agent_baselines_use_their_prompts() -> None:
    for mode, system in (("vrp", "direct"), ("mrp", "plan+solve")):
        agent = ScriptedPolicy(lambda p: "\\boxed{7}")
        rollout = rollout_single_agent(agent, TASKS, 3, SAMPLING, mode=mode)
        assert agent.seen[0] == f"<system>{system}<user>3+4*2<assistant>"
        assert [s.reward for s in rollout.segments] == [-0.5] * 3 + [1.0] * 3
        assert {s.role for s in rollout.segments} == {"reasoner"}
    with pytest.raises(ValueError, match="mode"):
        rollout_single_agent(agent, TASKS, 1, SAMPLING, mode="cot")


def _multi_turn(finish_at: int, reasoner_text: str = "y", max_turns: int = 5, max_prompt_length: int = 400,
                max_new_tokens: int = 40) -> tuple[ScriptedPolicy, ScriptedPolicy, Rollout]:
    def meta_script(prompt: str) -> str:
        turn = prompt.count("<assistant>") - 1  # earlier meta turns in its own history
        return f"m{turn}{FINISH}" if turn + 1 == finish_at else f"m{turn}"

    def reasoner_script(prompt: str) -> str:
        turn = prompt.count("<assistant>") - 1
        gold = "1" if "3+4*2" in prompt else "7"
        return f"\\boxed{{{gold}}}" if f"m{turn}" in prompt and turn + 1 == finish_at else f"{reasoner_text}{turn}"

    meta, reasoner = ScriptedPolicy(meta_script), ScriptedPolicy(reasoner_script)
    rollout = rollout_multi_turn(meta, reasoner, TASKS[:1], 1, Sampling(max_new_tokens=max_new_tokens),
                                 max_turns=max_turns, max_prompt_length=max_prompt_length)
    return meta, reasoner, rollout


def test_multi_turn_histories_finish_marker_and_reward() -> None:
    meta, reasoner, rollout = _multi_turn(finish_at=3)
    assert rollout.termination == [TERMINATION["finished"]]
    # each agent is the assistant of its own chat; the other agent's turns are user messages; the finish
    # marker is stripped from what the reasoner sees
    assert meta.seen[-1] == ("<system>plan<user>3+4*2<assistant>m0<eos><user>y0<assistant>m1<eos><user>y1"
                             "<assistant>")
    assert reasoner.seen[-1] == ("<system>solve<user>3+4*2|m0<assistant>y0<eos><user>m1<assistant>y1<eos>"
                                 "<user>m2<assistant>")
    assert [s.turn for s in rollout.role("meta")] == [0, 1, 2]
    assert [s.turn for s in rollout.role("reasoner")] == [0, 1, 2]
    assert {s.trajectory for s in rollout.segments} == {0}
    # finished and the last answer right: both agents get 1
    assert all(s.reward == 1.0 for s in rollout.segments)
    assert rollout.stats["episodes/turns"] == 3


def test_multi_turn_termination_codes() -> None:
    _, _, rollout = _multi_turn(finish_at=99, max_turns=2)
    assert rollout.termination == [TERMINATION["max_turns"]]
    assert all(s.reward == 0.0 for s in rollout.segments)  # not finished: no reward
    _, _, rollout = _multi_turn(finish_at=99, reasoner_text="y" * 30, max_turns=10, max_prompt_length=80)
    assert rollout.termination == [TERMINATION["token_budget"]]
    assert all(len(s.prompt) <= 80 for s in rollout.segments)
    _, _, rollout = _multi_turn(finish_at=99, reasoner_text="y" * 30, max_new_tokens=20)
    assert rollout.termination == [TERMINATION["truncated"]]
    assert len(rollout.role("reasoner")[-1].response) == 20
    assert rollout.stats["episodes/truncated"] == 1.0


def test_demonstrations_are_correct_for_precedence_plans_and_faithful_otherwise() -> None:
    tasks = make_split("train", 200, seed=1)
    for p_bad in (0.0, 1.0):
        demos = demonstrations(tasks, "rema", torch.Generator().manual_seed(0), p_bad_plan=p_bad)
        pairs = zip(demos["reasoner"], tasks, strict=True)
        right = [answers_match(extract_answer(text), t.answer) for (_, text), t in pairs]
        if p_bad == 0.0:
            assert all(right)
        else:
            assert 0 < sum(right) < len(right)  # random plans are often wrong, but faithfully executed
        assert all(extract_answer(text) is None for _, text in demos["meta"])  # plans never state the answer
    for mode in ("vrp", "mrp"):
        demos = demonstrations(tasks, mode, torch.Generator().manual_seed(0), p_bad_plan=0.0)
        pairs = zip(demos["reasoner"], tasks, strict=True)
        assert all(answers_match(extract_answer(text), t.answer) for (_, text), t in pairs)
    multi = demonstrations(tasks[:5], "rema", torch.Generator().manual_seed(0), p_bad_plan=0.0, multi_turn=True)
    assert sum(FINISH in text for _, text in multi["meta"]) == 5
    with pytest.raises(ValueError, match="expression"):
        demonstrations([ReasoningTask("q", "1")], "rema", torch.Generator())


def test_docstring_examples() -> None:
    import doctest

    from rlopt.agents.rema import rollout

    result = doctest.testmod(rollout, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


def test_the_verifier_choice_is_explicit_and_saved_with_the_rewards(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    from dataclasses import asdict

    from rlopt.agents.rema import RewardConfig

    assert RewardConfig().use_math_verify is False
    assert asdict(RewardConfig())["use_math_verify"] is False  # what ReMA.save stores
    monkeypatch.setitem(sys.modules, "math_verify", None)
    with pytest.raises(ImportError, match=r"torch-rlopt\[math\]"):
        RewardConfig(use_math_verify=True)  # refused at construction, not mid-rollout
    with pytest.raises(TypeError, match="use_math_verify"):
        RewardConfig(use_math_verify="yes")  # type: ignore[arg-type]
