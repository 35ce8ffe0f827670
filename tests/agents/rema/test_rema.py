"""The ReMA trainer: schedule and frozen agents, loss masks, per-role groups, determinism, save/load,
per-agent optimizers, TensorBoard, bad input."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
import torch

from rlopt.agents import rema as rema_package
from rlopt.agents.rema import PAPER_FILTER, ReMA, RewardConfig, TinyConfig
from rlopt.agents.rema import rema as rema_module
from rlopt.agents.rema.rema import _pad_segments
from rlopt.envs.reasoning import ArithmeticTasks, ReasoningTask, make_split

from .helpers import ScriptedPolicy

SMALL = TinyConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_length=96)


class ParityReward(RewardConfig):
    """Untrained models never answer, so every reward would tie and every advantage vanish: this reward calls
    an answer correct when its length is even, giving the mechanics tests a learning signal."""

    def reasoner(self, text: str, reference: str) -> tuple[float, bool]:
        return (1.0, True) if len(text) % 2 == 0 else (-1.0, False)


def _agent(**kwargs: object) -> ReMA:
    defaults: dict[str, object] = {"batch_questions": 3, "n_plans": 2, "n_answers": 2, "max_new_tokens": 24,
                                   "tiny_config": SMALL, "eval_tasks": [], "ood_tasks": [], "seed": 0,
                                   "rewards": ParityReward()}
    defaults.update(kwargs)
    return ReMA(**defaults)  # type: ignore[arg-type]


def _params(policy: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in policy.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_alternating_schedule_keeps_the_frozen_agent_bit_identical() -> None:
    agent = _agent(algorithm="reinforce++", switch_every=2, start_role="meta", optimizer_kwargs={"lr": 1e-2})
    assert [agent.trained_roles(u) for u in range(5)] == [["meta"], ["meta"], ["reasoner"], ["reasoner"], ["meta"]]
    meta0, reasoner0 = _params(agent.policy("meta")), _params(agent.policy("reasoner"))
    agent.learn(2)  # the meta phase
    meta1, reasoner1 = _params(agent.policy("meta")), _params(agent.policy("reasoner"))
    assert _same(reasoner0, reasoner1) and not _same(meta0, meta1)
    agent.learn(2)  # the reasoner phase
    assert _same(meta1, _params(agent.policy("meta"))) and not _same(reasoner1, _params(agent.policy("reasoner")))
    # the reference copies never move
    for name, reference in agent.references.items():
        assert _same(_params(reference), meta0 if name == "meta" else reasoner0)


def test_shared_weights_grpo_updates_one_model_for_both_roles() -> None:
    agent = _agent(algorithm="grpo")
    assert agent.shared_weights and agent.schedule == "simultaneous"
    assert agent.policy("meta") is agent.policy("reasoner") and len(agent.optimizers) == 1
    before = _params(agent.policy("meta"))
    stats = agent.train_step()
    assert not _same(before, _params(agent.policy("meta")))
    assert {"meta/loss", "reasoner/loss", "meta/kl", "reasoner/kl", "meta/leak_rate"} <= set(stats)


def test_loss_masks_cover_exactly_each_agents_own_tokens() -> None:
    # scripted agents, so multi-turn episodes run several turns; with the tiny model for single turns
    count = iter(range(10**6))
    meta = ScriptedPolicy(lambda p: "1" * (next(count) % 3) + ("[FINISH]" if p.count("<assistant>") > 2 else ""))
    reasoner = ScriptedPolicy(lambda p: "2" * (next(count) % 4 + 1))
    for multi_turn in (False, True):
        policy = {"meta": meta, "reasoner": reasoner} if multi_turn else "tiny"
        agent = _agent(policy=policy, multi_turn=multi_turn, n_answers=1, max_turns=4, algorithm="reinforce++")
        rollout = agent.rollout(make_split("train", 3, seed=1))
        if multi_turn:
            assert max(s.turn for s in rollout.segments) == 2
        for role in ("meta", "reasoner"):
            segments = rollout.role(role)
            assert segments and all(s.role == role for s in segments)
            batch = _pad_segments([s.prompt for s in segments], [s.response for s in segments], 0,
                                  torch.device("cpu"))
            for i, s in enumerate(segments):
                target_positions = batch["mask"][i].nonzero().squeeze(-1) + 1
                assert batch["ids"][i, target_positions].tolist() == s.response
                assert batch["ids"][i, : len(s.prompt)].tolist() == s.prompt
                # the prompt (the system prompt, the other agent's turns, earlier own turns) is never trained on
                assert batch["mask"][i, : len(s.prompt) - 1].sum() == 0


def test_grpo_advantages_are_normalised_per_role_per_question() -> None:
    agent = _agent(algorithm="grpo", n_plans=4, n_answers=1, batch_questions=4)
    rollout = agent.rollout(make_split("train", 4, seed=2))
    policy = agent.policy("meta")
    reference = policy.frozen_copy()
    for role in ("meta", "reasoner"):
        batch = agent._role_batch(rollout.role(role), policy, reference)
        adv = batch["advantages"].sum(-1) / batch["mask"].sum(-1)
        for g in batch["groups"].unique():
            index = batch["groups"] == g
            rewards = batch["rewards"][index]
            if rewards.std() > 0:
                torch.testing.assert_close(adv[index], (rewards - rewards.mean()) / (rewards.std() + 1e-6))
            else:
                assert torch.equal(adv[index], torch.zeros_like(adv[index]))


def test_behaviour_logprobs_from_the_sampler_equal_a_recomputation() -> None:
    agent = _agent()
    rollout = agent.rollout(make_split("train", 2, seed=3))
    for role in ("meta", "reasoner"):
        policy = agent.policy(role)
        batch = agent._role_batch(rollout.role(role), policy, policy.frozen_copy())
        recomputed = policy.token_logprobs(batch["ids"], batch["attention"])
        torch.testing.assert_close(batch["old_logp"] * batch["mask"], recomputed * batch["mask"], atol=1e-5,
                                   rtol=0)
        assert batch["mask"].sum() == sum(len(s.response) for s in rollout.role(role))


def test_training_is_deterministic() -> None:
    def run(seed: int) -> tuple[list[torch.Tensor], list[dict[str, float]]]:
        agent = _agent(seed=seed, eval_tasks=make_split("test", 4))
        agent.warm_start(steps=2, batch_size=4)
        agent.learn(3)
        return _params(agent.policy("meta")) + _params(agent.policy("reasoner")), agent.history

    a, b, c = run(0), run(0), run(1)
    assert _same(a[0], b[0]) and a[1] == b[1]
    assert not _same(a[0], c[0])


def test_save_load_round_trip_resumes_identically(tmp_path: Path) -> None:
    agent = _agent(tasks=ArithmeticTasks(2, 3, seed=4), optimizer={"meta": "adam", "reasoner": "sgd"},
                   eval_tasks=make_split("test", 4))
    agent.learn(1)
    path = tmp_path / "ckpt" / "rema.pt"
    agent.save(path)
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["rema.pt"]  # no temp file left
    loaded = ReMA.load(path, rewards=ParityReward())
    assert loaded.num_updates == 1 and loaded.history == agent.history
    assert type(loaded.optimizers["reasoner"]) is torch.optim.SGD
    agent.learn(2)
    loaded.learn(2)
    for role in ("meta", "reasoner"):
        assert _same(_params(agent.policy(role)), _params(loaded.policy(role)))
    assert agent.history == loaded.history


class _Payload:
    """Unpickling this object creates a file: the stand-in for a checkpoint that runs code on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    agent = _agent()
    path = tmp_path / "rema.pt"
    agent.save(path)
    state = torch.load(path, weights_only=True)
    marker = tmp_path / "payload-ran"
    state["history"] = [_Payload(marker)]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"rema\.pt holds objects other than tensors and plain data"):
        ReMA.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("optimizer", [{"meta": "sls", "reasoner": "sps"}, "ponos", "adasls"])
def test_any_rlopt_optimizer_per_agent(optimizer: object) -> None:
    agent = _agent(optimizer=optimizer, switch_every=1)
    stats = [agent.train_step(), agent.train_step()]
    assert "meta/step_size" in stats[0] and "reasoner/step_size" in stats[1]
    assert all(torch.isfinite(p).all() for p in agent.policy("meta").parameters())


def test_tensorboard_scalars_per_role(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    agent = _agent(tensorboard_log=str(tmp_path), switch_every=1, eval_tasks=make_split("test", 2))
    agent.learn(2, tb_log_name="run")
    events = EventAccumulator(str(tmp_path / "run_1"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for role in ("meta", "reasoner"):
        assert {f"{role}/reward", f"{role}/accuracy", f"{role}/response_length", f"{role}/kl",
                f"{role}/step_size"} <= tags
    assert {"meta/leak_rate", "meta/empty_plan_rate", "eval/accuracy"} <= tags


def test_single_agent_baselines_train_one_model() -> None:
    for mode in ("vrp", "mrp"):
        agent = _agent(mode=mode)
        assert agent.roles == ("reasoner",) and len(agent.optimizers) == 1
        stats = agent.train_step()
        assert stats["samples"] == 3 * 2 * 2  # the same reasoner samples per update as ReMA
        assert "meta/reward" not in stats


def test_multi_turn_grpo_update_runs_and_reports_termination() -> None:
    agent = _agent(multi_turn=True, algorithm="grpo", n_answers=1, max_turns=2, max_new_tokens=12)
    stats = agent.train_step()
    assert {"episodes/finished", "episodes/max_turns", "episodes/token_budget", "episodes/truncated"} <= set(stats)
    assert sum(stats[f"episodes/{k}"] for k in ("finished", "max_turns", "token_budget", "truncated")) == 1.0
    assert agent.num_updates == 1


def test_user_tasks_and_the_hugging_face_policy() -> None:
    pytest.importorskip("transformers")
    from rlopt.agents.rema.hf import HFPolicy

    from .helpers import tiny_hf_model

    model, tokenizer = tiny_hf_model()
    tasks = [ReasoningTask("1+1", "2"), ReasoningTask("2+2", "4")]
    agent = ReMA(tasks, HFPolicy(model, tokenizer), algorithm="grpo", batch_questions=2, n_plans=2, n_answers=1,
                 max_new_tokens=8, rewards=ParityReward())
    assert agent.prompts.meta_system.startswith("You are a math expert")
    before = _params(model)
    agent.learn(1)
    assert not _same(before, _params(model))
    with pytest.raises(ValueError, match="warm start"):
        agent.warm_start(steps=1)


def test_bad_input_gets_clear_errors() -> None:
    with pytest.raises(ValueError, match="algorithm"):
        _agent(algorithm="ppo")
    with pytest.raises(ValueError, match="mode"):
        _agent(mode="solo")
    with pytest.raises(ValueError, match="unknown role"):
        _agent(optimizer={"critic": "adam"})
    with pytest.raises(ValueError, match="role"):
        _agent().policy("critic")
    with pytest.raises(ValueError, match="start_role"):
        _agent(start_role="critic")
    with pytest.raises(ValueError, match="empty"):
        _agent(tasks=[])
    with pytest.raises(ValueError, match="n_answers"):
        _agent(multi_turn=True, n_answers=2)
    with pytest.raises(ValueError, match="batch_questions"):
        _agent(batch_questions=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        _agent(max_new_tokens=96)
    with pytest.raises(ValueError, match="share one model"):
        _agent(algorithm="grpo", optimizer={"meta": "adam", "reasoner": "sgd"})
    long_question = [ReasoningTask("1+" * 40 + "1", "41")]
    with pytest.raises(ValueError, match="context length"):
        _agent(tasks=long_question).learn(1)


def test_docstring_examples() -> None:
    result = doctest.testmod(rema_module, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
    result = doctest.testmod(rema_package, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


def test_the_config_resolves_dependent_defaults_and_keywords_override_it() -> None:
    from rlopt.agents.rema import ReMAConfig

    base = ReMAConfig()
    assert (base.shared_weights, base.schedule, base.kl_coef, base.ratio, base.aggregate, base.filter_pool) == (
        False, "alternate", 0.01, "token", "token", 160)
    grpo = ReMAConfig.of(base, {"algorithm": "grpo"})  # the defaults that depend on the algorithm move with it
    assert (grpo.shared_weights, grpo.schedule, grpo.kl_coef, grpo.ratio) == (True, "simultaneous", 0.0, "turn")
    assert ReMAConfig(prompt_filter="on").prompt_filter == PAPER_FILTER
    agent = _agent(config=ReMAConfig(clip_eps=0.3, algorithm="grpo", n_plans=5), n_plans=3)  # keywords win
    assert agent.config.clip_eps == 0.3 and agent.algorithm == "grpo" and agent.config.n_plans == 3
    with pytest.raises(TypeError, match=r"Invalid argument\(s\) \['n_plan'\]"):
        _agent(n_plan=3)
    with pytest.raises(ValueError, match="Invalid top_p"):
        ReMAConfig(top_p=0.0)
    with pytest.raises(ValueError, match="Invalid n_answers: 4, expected 1 with multi_turn=True"):
        ReMAConfig(multi_turn=True)


def test_a_checkpoint_keeps_the_config(tmp_path: Path) -> None:
    agent = _agent(switch_every=3, kl_coef=0.05)
    agent.save(tmp_path / "c.pt")
    loaded = ReMA.load(tmp_path / "c.pt", rewards=ParityReward())
    assert loaded.config.switch_every == 3 and loaded.config.kl_coef == 0.05
    assert {k: v for k, v in loaded.config.stored().items() if k != "rewards"} == {
        k: v for k, v in agent.config.stored().items() if k != "rewards"}


def test_a_truncated_or_foreign_file_names_itself(tmp_path: Path) -> None:
    agent = _agent()
    agent.save(tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"half\.pt is not a complete ReMA checkpoint"):
        ReMA.load(tmp_path / "half.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt is not a ReMA checkpoint"):
        ReMA.load(tmp_path / "other.pt")
