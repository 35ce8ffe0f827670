"""A short ReMA run improves the reasoner's accuracy over its warm start (CI budget: about a minute)."""

from __future__ import annotations

import pytest

from rlopt.agents.rema import ReMA, TinyConfig
from rlopt.envs.reasoning import ArithmeticTasks


@pytest.mark.slow
def test_short_rl_run_improves_accuracy_over_the_warm_start() -> None:
    # Small enough to run in CI: 2-3 operands mod 5, a 2-layer width-32 model, a brief warm start whose
    # demonstrations leave the final answer unmarked 60% of the time (and state the answer in 30% of the
    # plans). RL on the reasoner (REINFORCE++, its phase of the alternating schedule) must raise the accuracy
    # of both sampled and greedy episodes on held-out questions.
    eval_tasks = ArithmeticTasks(2, 3, modulus=5, max_operand=4, seed=99).sample(64)
    agent = ReMA(ArithmeticTasks(2, 3, modulus=5, max_operand=4, seed=0), algorithm="reinforce++",
                 batch_questions=16, n_plans=2, n_answers=4, max_new_tokens=32, optimizer_kwargs={"lr": 3e-3},
                 start_role="reasoner", switch_every=100, eval_tasks=[], ood_tasks=[], seed=0,
                 tiny_config=TinyConfig(d_model=32, n_layers=2, d_ff=64, max_length=80))
    agent.warm_start(steps=120, batch_size=32, p_bad_plan=0.2, p_unformatted=0.6, p_leak=0.3)
    greedy0 = agent.evaluate(eval_tasks)["accuracy"]
    sampled0 = agent.evaluate(eval_tasks, greedy=False, n_samples=4)["accuracy"]
    agent.learn(8)
    greedy1 = agent.evaluate(eval_tasks)["accuracy"]
    sampled1 = agent.evaluate(eval_tasks, greedy=False, n_samples=4)["accuracy"]
    assert sampled1 >= sampled0 + 0.08, (sampled0, sampled1)
    assert greedy1 >= greedy0 + 0.08, (greedy0, greedy1)
