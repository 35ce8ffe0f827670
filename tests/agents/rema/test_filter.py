"""Algorithm 1's prompt filter (success rates per phase, the kept range, the empty-set fallback, logging) and the
consistency-based meta reward (Eq. 14) with its routing to the meta agent."""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rlopt.agents.rema import ReMA, RewardConfig, TinyConfig, TinyPolicy
from rlopt.agents.rema.policy import Generation
from rlopt.agents.rema.rollout import Sampling, consistency, in_range, rollout_single_turn, success_rates
from rlopt.envs.reasoning import ArithmeticTasks, ReasoningTask

from .helpers import ScriptedPolicy

# eight questions "q0+0" ... "q7+0" whose answer is "7"; question q is answered correctly by the reasoner in
# SUCCESSES[q] of every 4 consecutive samples it gets (a scripted, exactly known success rate of SUCCESSES[q] / 4)
SUCCESSES = [0, 1, 2, 3, 4, 1, 4, 0]
TASKS = [ReasoningTask(f"q{q}+0", "7") for q in range(len(SUCCESSES))]
K = 4


class RecordingPolicy(ScriptedPolicy):
    """A scripted policy that also records, per ``generate`` call, the batch size and the sampling mode."""

    def __init__(self, script: Callable[[str], str]) -> None:
        super().__init__(script)
        self.calls: list[tuple[int, bool, float]] = []

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, generator: torch.Generator | None = None, greedy: bool = False) -> Generation:
        self.calls.append((len(prompts), greedy, temperature))
        return super().generate(prompts, max_new_tokens, temperature, top_p, generator, greedy)


def _question(prompt: str) -> int:
    return int(prompt.split("<user>q")[1][0])


def _agents() -> tuple[RecordingPolicy, RecordingPolicy]:
    """A meta agent writing plan "1", and a reasoner that is right on the first SUCCESSES[q] of each run of K
    samples of question q (wrong but marked otherwise)."""
    seen: Counter[int] = Counter()

    def reasoner_script(prompt: str) -> str:
        q = _question(prompt)
        right = seen[q] % K < SUCCESSES[q]
        seen[q] += 1
        return "\\boxed{7}" if right else "\\boxed{3}"

    return RecordingPolicy(lambda p: "1"), RecordingPolicy(reasoner_script)


@pytest.mark.parametrize("role", ["meta", "reasoner"])
def test_success_rates_sample_as_algorithm_1_in_one_batch_per_agent(role: str) -> None:
    meta, reasoner = _agents()
    rates, tokens = success_rates(meta, reasoner, TASKS, role, K, max_new_tokens=16)
    assert rates.dtype == torch.float64 and rates.tolist() == [s / K for s in SUCCESSES]
    n = len(TASKS)
    # meta phase: K plans at temperature 1, each answered once greedily; reasoner phase: one greedy plan, K answers
    # at temperature 1. Each agent generates once for the whole batch (no loop over questions).
    if role == "meta":
        assert meta.calls == [(n * K, False, 1.0)] and reasoner.calls == [(n * K, True, 1.0)]
    else:
        assert meta.calls == [(n, True, 1.0)] and reasoner.calls == [(n * K, False, 1.0)]
    plan_tokens = (n * K if role == "meta" else n) * 2  # "1" + EOS
    assert tokens == plan_tokens + n * K * len("\\boxed{7}") + n * K  # answers + EOS


def test_in_range_keeps_both_ends_and_rejects_the_rest() -> None:
    rates = torch.tensor([s / K for s in SUCCESSES], dtype=torch.float64)
    assert in_range(rates, 0.2, 0.8).tolist() == [False, True, True, True, False, True, False, False]
    assert in_range(rates, 0.25, 0.75).tolist() == in_range(rates, 0.2, 0.8).tolist()
    assert in_range(rates, 0.0, 1.0).all() and not in_range(rates, 0.3, 0.4).any()
    tenths = torch.arange(11, dtype=torch.float64) / 10  # k = 10 as in the paper: 2/10 and 8/10 are kept
    assert in_range(tenths, 0.2, 0.8).nonzero().flatten().tolist() == [2, 3, 4, 5, 6, 7, 8]


def _filtered_agent(meta: ScriptedPolicy, reasoner: ScriptedPolicy, **kwargs: object) -> ReMA:
    defaults: dict[str, object] = {"batch_questions": 3, "n_plans": 1, "n_answers": 2, "max_new_tokens": 16,
                                   "eval_tasks": [], "ood_tasks": [], "prompt_filter": (0.2, 0.8), "filter_k": K,
                                   "filter_pool": len(TASKS), "switch_every": 2}
    defaults.update(kwargs)
    return ReMA(list(TASKS), {"meta": meta, "reasoner": reasoner}, **defaults)  # type: ignore[arg-type]


def test_filter_keeps_exactly_the_questions_in_range_and_trains_only_on_them() -> None:
    meta, reasoner = _agents()
    agent = _filtered_agent(meta, reasoner, start_role="reasoner")
    kept, rates = agent.filter_tasks(TASKS, "reasoner")
    expected = [TASKS[q] for q, s in enumerate(SUCCESSES) if 0.2 <= s / K <= 0.8]
    assert kept == expected and rates.tolist() == [s / K for s in SUCCESSES]
    # a phase: the filter draws the pool (the whole dataset here), then every batch comes from the kept set
    meta.seen.clear()
    stats = agent.train_step()
    assert stats["filter/kept_fraction"] == len(expected) / len(TASKS)
    assert stats["filter/success_rate"] == pytest.approx(sum(SUCCESSES) / (K * len(TASKS)))
    assert stats["filter/fallbacks"] == 0.0 and stats["filter/tokens"] > 0
    # the last meta prompts of the update are the plans of the training batch
    batch_questions = {_question(p) for p in meta.seen[-agent.batch_questions:]}
    assert batch_questions <= {1, 2, 3, 5}
    second = agent.train_step()  # same phase: no new filtering
    assert not any(key.startswith("filter/") for key in second)
    assert {_question(p) for p in meta.seen[-agent.batch_questions:]} <= {1, 2, 3, 5}
    # the direct call and the phase's filter generated the same scripted responses
    assert agent.num_filter_tokens == 2 * stats["filter/tokens"]


def test_filter_runs_before_each_phase_for_the_role_it_trains() -> None:
    meta, reasoner = _agents()
    agent = _filtered_agent(meta, reasoner, switch_every=2, start_role="meta")
    modes = []
    for _ in range(4):
        meta.calls.clear()
        reasoner.calls.clear()
        stats = agent.train_step()
        modes.append(("filter/kept_fraction" in stats, meta.calls[0][1] if "filter/tokens" in stats else None))
    # phases: meta (updates 0-1) then reasoner (2-3); the filter of the meta phase samples plans (not greedy),
    # the filter of the reasoner phase asks for one greedy plan
    assert modes == [(True, False), (False, None), (True, True), (False, None)]


def test_empty_filtered_set_falls_back_to_the_candidates_with_a_counted_warning() -> None:
    meta, reasoner = _agents()
    agent = _filtered_agent(meta, reasoner, prompt_filter=(0.3, 0.4))  # no rate k/4 lies in [0.3, 0.4]
    with pytest.warns(RuntimeWarning, match="kept no question"):
        stats = agent.train_step()
    assert stats["filter/kept_fraction"] == 0.0 and stats["filter/fallbacks"] == 1.0
    assert agent.filter_fallbacks == 1 and agent._phase_tasks is not None and len(agent._phase_tasks) == len(TASKS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agent.train_step()  # inside the phase: no second warning


def test_filter_off_paper_default_and_bad_values() -> None:
    meta, reasoner = _agents()
    assert _filtered_agent(meta, reasoner, prompt_filter=None).prompt_filter is None
    assert _filtered_agent(meta, reasoner, prompt_filter="off").prompt_filter is None
    assert _filtered_agent(meta, reasoner, prompt_filter=True).prompt_filter == (0.2, 0.8)
    assert _filtered_agent(meta, reasoner, prompt_filter="on").prompt_filter == (0.2, 0.8)
    stats = _filtered_agent(meta, reasoner, prompt_filter=None).train_step()
    assert not any(key.startswith("filter/") for key in stats)
    for bad in [(0.9, 0.1), (-0.1, 0.5), (0.2, 1.5), (0.2,), "some", (0.2, float("nan")), (True, 0.8)]:
        with pytest.raises(ValueError, match="prompt_filter"):
            _filtered_agent(meta, reasoner, prompt_filter=bad)
    for name, value in (("filter_k", 0), ("filter_pool", 0), ("filter_k", 2.5)):
        with pytest.raises(ValueError, match=name):
            _filtered_agent(meta, reasoner, **{name: value})
    small = TinyConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_length=96)
    for kwargs in ({"mode": "vrp"}, {"algorithm": "grpo"}, {"schedule": "simultaneous"},
                   {"multi_turn": True, "n_answers": 1}):
        with pytest.raises(ValueError, match="prompt_filter"):
            ReMA(tiny_config=small, prompt_filter=(0.2, 0.8), eval_tasks=[], ood_tasks=[], **kwargs)
    with pytest.raises(ValueError, match="Invalid role"):
        _filtered_agent(meta, reasoner).filter_tasks(TASKS, "critic")
    with pytest.raises(ValueError, match="off"):
        _filtered_agent(meta, reasoner, prompt_filter=None).filter_tasks(TASKS, "meta")


def test_kept_fraction_is_logged_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    meta, reasoner = _agents()
    agent = _filtered_agent(meta, reasoner, tensorboard_log=str(tmp_path))
    agent.learn(3, tb_log_name="run")
    events = EventAccumulator(str(tmp_path / "run_1"))
    events.Reload()
    kept = events.Scalars("filter/kept_fraction")
    # scalars are logged at the update count reached by the update (the filter runs at updates 0 and 2)
    assert [e.step for e in kept] == [1, 3] and kept[0].value == pytest.approx(4 / 8)
    assert {"filter/success_rate", "filter/fallbacks", "filter/tokens"} <= set(events.Tags()["scalars"])


def _params(agent: ReMA) -> list[torch.Tensor]:
    return [p.detach().clone() for role in ("meta", "reasoner") for p in agent.policy(role).parameters()]


def test_filtered_training_is_deterministic_and_resumes_identically(tmp_path: Path) -> None:
    class Parity(RewardConfig):
        # untrained models never answer: call an answer right when its length is even, so rates vary
        def reasoner(self, text: str, reference: str) -> tuple[float, bool]:
            return (1.0, True) if len(text) % 2 == 0 else (-1.0, False)

    def agent(seed: int) -> ReMA:
        return ReMA(ArithmeticTasks(2, 3, seed=4), batch_questions=3, n_plans=2, n_answers=2, max_new_tokens=12,
                    tiny_config=TinyConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_length=96),
                    eval_tasks=[], ood_tasks=[], rewards=Parity(), prompt_filter=(0.2, 0.8), filter_k=4,
                    filter_pool=6, switch_every=2, seed=seed)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pool may come out empty: the fallback is tested above
        a, b = agent(0), agent(0)
        a.learn(1)
        b.learn(1)
        assert all(torch.equal(x, y) for x, y in zip(_params(a), _params(b), strict=True))
        a.save(tmp_path / "a.pt")  # mid-phase: the filtered questions and their order are restored
        loaded = ReMA.load(tmp_path / "a.pt", rewards=Parity())
        a.learn(3)
        loaded.learn(3)
    assert all(torch.equal(x, y) for x, y in zip(_params(a), _params(loaded), strict=True))
    assert a.num_filter_tokens == loaded.num_filter_tokens > 0
    assert a.num_generated_tokens == loaded.num_generated_tokens


# ---------------------------------------------------------------------------------- consistency reward (Eq. 14)
def _boxed(*answers: str | None) -> list[str]:
    return [f"work;\\boxed{{{a}}}" if a is not None else "work, no answer" for a in answers]


@pytest.mark.parametrize(("answers", "expected"), [
    (_boxed("3", "3", "3", "3"), 1.0),
    (_boxed("3", "3", "4", "5"), 0.5),
    (_boxed("3", "3", "4", "4"), 0.5),  # a tie: the count of either most frequent answer
    (_boxed("3", "4", "5", "6"), 0.25),
    (_boxed("3", "3.0", "+3", "\\frac{6}{2}"), 1.0),  # answers are compared after normalisation
    (_boxed(None, None, "3", "3"), 0.5),  # half without an answer is not "most": they count in n
    (_boxed(None, None, "3", "4"), 0.25),
    (_boxed(None, None, None, "3"), 0.0),  # most responses have no definitive answer
    (_boxed(None, None, None), 0.0),
    (_boxed("3"), 1.0),
    (_boxed(None, "3", "3"), 2 / 3),
])
def test_consistency_on_hand_made_response_sets(answers: list[str], expected: float) -> None:
    assert consistency(answers) == expected
    wrong = [False] * len(answers)
    assert RewardConfig(meta_reward="consistency").meta("21", answers, wrong) == expected
    # the same answer-leak penalty as the correctness reward
    leaked = RewardConfig(meta_reward="consistency", leak_penalty=-0.75).meta("21;\\boxed{7}", answers, wrong)
    assert leaked == expected - 0.75


def test_meta_reward_choice_is_validated_and_correctness_is_the_default() -> None:
    assert RewardConfig().meta_reward == "correctness"
    assert RewardConfig().meta("1", _boxed("3", "3", "4"), [True, True, False]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"meta_reward: 'majority'.*\['correctness', 'consistency'\]"):
        RewardConfig(meta_reward="majority")
    with pytest.raises(ValueError, match="answers"):
        RewardConfig().meta("1", [], [])
    with pytest.raises(ValueError, match="answers"):
        RewardConfig().meta("1", _boxed("3"), [True, False])
    with pytest.raises(ValueError, match="at least one"):
        consistency([])
    small = TinyConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_length=96)
    with pytest.raises(ValueError, match="meta_reward"):
        ReMA(tiny_config=small, multi_turn=True, n_answers=1, rewards=RewardConfig(meta_reward="consistency"),
             eval_tasks=[], ood_tasks=[])
    with pytest.raises(TypeError, match="RewardConfig"):
        ReMA(tiny_config=small, rewards={"correct": 1.0}, eval_tasks=[], ood_tasks=[])  # type: ignore[arg-type]


def _consistency_agents() -> tuple[ScriptedPolicy, ScriptedPolicy]:
    """The reasoner agrees on a wrong answer three times out of four for the first question; for the second
    (whose plans leak the answer) it is right once and leaves the rest unanswered."""
    first = itertools.cycle(["\\boxed{5}", "\\boxed{5}", "\\boxed{1}", "\\boxed{5}"])
    second = itertools.cycle(["\\boxed{7}", "none", "none", "none"])
    meta = ScriptedPolicy(lambda p: "21" if "3+4*2" in p else "\\boxed{7}")
    return meta, ScriptedPolicy(lambda p: next(first) if "3+4*2" in p else next(second))


def test_consistency_reward_is_routed_to_the_meta_agent_only() -> None:
    tasks = [ReasoningTask("3+4*2", "1", "3+4*2", 10), ReasoningTask("9-2", "7", "9-2", 10)]
    rollouts = {kind: rollout_single_turn(*_consistency_agents(), tasks, n_plans=1, n_answers=4,
                                          sampling=Sampling(max_new_tokens=16), rewards=RewardConfig(meta_reward=kind))
                for kind in ("correctness", "consistency")}
    correctness, consistent = rollouts["correctness"], rollouts["consistency"]
    assert [s.reward for s in correctness.role("meta")] == [0.25, 0.25 - 1.0]
    assert [s.reward for s in consistent.role("meta")] == [0.75, 0.0 - 1.0]
    # the reasoner's rewards do not depend on the meta agent's reward
    expected = [-0.5, -0.5, 1.0, -0.5, 1.0, -1.0, -1.0, -1.0]
    assert [s.reward for s in consistent.role("reasoner")] == [s.reward for s in correctness.role("reasoner")]
    assert [s.reward for s in consistent.role("reasoner")] == expected
    # and the trainer passes its reward settings to the rollout
    meta, reasoner = _consistency_agents()
    agent = ReMA(tasks, {"meta": meta, "reasoner": reasoner}, n_plans=1, n_answers=4, max_new_tokens=16,
                 rewards=RewardConfig(meta_reward="consistency"), eval_tasks=[], ood_tasks=[])
    assert [s.reward for s in agent.rollout(tasks).role("meta")] == [0.75, -1.0]


def test_success_rates_on_device_are_seeded_and_counted_in_steps_of_one_over_k(device: torch.device) -> None:
    class Parity(RewardConfig):
        # an untrained reasoner never answers: call a response right when its length is even
        def reasoner(self, text: str, reference: str) -> tuple[float, bool]:
            return (1.0, True) if len(text) % 2 == 0 else (-1.0, False)

    config = TinyConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_length=64)
    meta, reasoner = TinyPolicy(config, seed=0).to(device), TinyPolicy(config, seed=1).to(device)
    tasks = ArithmeticTasks(2, 3, seed=0).sample(6)
    k = 3
    for role in ("meta", "reasoner"):
        runs = [success_rates(meta, reasoner, tasks, role, k, 12, torch.Generator(device=device).manual_seed(5),
                              rewards=Parity()) for _ in range(2)]
        rates = runs[0][0]
        assert rates.device.type == device.type and rates.shape == (len(tasks),)
        assert torch.equal(rates, runs[1][0]) and runs[0][1] == runs[1][1]
        assert torch.equal(rates * k, (rates * k).round()) and bool(((rates >= 0) & (rates <= 1)).all())
