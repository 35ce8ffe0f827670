"""The rollouts of ReMA (and its single-agent baselines), reward routing, and warm-start demonstrations.

ReMA (Wan et al., arXiv 2503.09501): the meta-thinking agent sees the question and writes a plan m (it
must not state the answer); the reasoning agent sees the question and the plan and answers in the marked
format ``\\boxed{...}``. Each agent keeps its own chat in which it is the ``assistant`` and the other agent
is the ``user``:

* meta agent: ``[system S_h, user: question, assistant: m_1, user: y_1, assistant: m_2, ...]``
* reasoner:  ``[system S_l, user: question + m_1, assistant: y_1, user: m_2, assistant: y_2, ...]``

In the multi-turn rollout the meta agent ends the episode with the finish marker ``[FINISH]`` (stripped
from what the reasoner sees); the episode ends after the reasoner's next turn. Termination codes
(ReMA's code): 0 finished, 1 reached ``max_turns``, 2 token budget exceeded (an agent's accumulated prompt
over ``max_prompt_length``), 3 a turn was truncated at ``max_new_tokens``.

Every assistant turn becomes a :class:`Segment`: the prompt the agent saw (its chat rendered with the
generation prompt) and the tokens it generated, which are exactly the tokens of its loss mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rlopt.agents.rema.policy import Policy
from rlopt.envs.reasoning import (
    ReasoningTask,
    answers_match,
    execute_plan,
    extract_answer,
    format_answer,
    normalize_answer,
    precedence_plan,
    require_math_verify,
    worked_steps,
)

__all__ = [
    "FINISH",
    "META_REWARDS",
    "PAPER_PROMPTS",
    "ROLES",
    "TERMINATION",
    "TINY_PROMPTS",
    "Prompts",
    "RewardConfig",
    "Rollout",
    "Sampling",
    "Segment",
    "consistency",
    "demonstrations",
    "in_range",
    "rollout_multi_turn",
    "rollout_single_agent",
    "rollout_single_turn",
    "success_rates",
]

#: the two agents of ReMA; the single-agent baselines use the role "reasoner" only
ROLES = ("meta", "reasoner")
#: the marker with which the meta agent ends a multi-turn episode
FINISH = "[FINISH]"
#: the meta agent's rewards of the paper: mean correctness (App. C.2) or consistency (Eq. 14)
META_REWARDS = ("correctness", "consistency")
#: termination codes of a multi-turn episode
TERMINATION = {"finished": 0, "max_turns": 1, "token_budget": 2, "truncated": 3}


@dataclass(frozen=True)
class Prompts:
    """System prompts of the roles and the template of the reasoner's first user message.

    ``reasoner_user`` is formatted with ``question`` and ``plan``; ``vrp_system`` and ``mrp_system`` are the
    prompts of the single-agent baselines (answer directly; plan then solve in one pass).
    """

    meta_system: str
    reasoner_system: str
    reasoner_user: str
    vrp_system: str
    mrp_system: str


#: short prompts for the character-level tiny models (every character is a token)
TINY_PROMPTS = Prompts(meta_system="plan", reasoner_system="solve", reasoner_user="{question}|{plan}",
                       vrp_system="direct", mrp_system="plan+solve")

#: the prompts of the paper (App. G.1.2) for instruction-tuned LLMs
PAPER_PROMPTS = Prompts(
    meta_system=(
        "You are a math expert specialized in solving mathematical problems, you need to teach a weaker agent "
        "with minimal capability in math how to solve a problem step-by-step. Your task is to provide a "
        "high-level solution plan for the given problem, in order to guide a low-level math solving agent to "
        "solve the problem. You can not directly answer the question. You'll be punished if you include any "
        "answer in your response. You need to first think deeply in mind and output your final instruction."
    ),
    reasoner_system=(
        "You are a math expert tasked with solving problems step by step. Follow the provided instructions "
        "precisely, showing all reasoning and intermediate steps. Present the final answer within \\boxed{}."
    ),
    reasoner_user=("[Question]\n{question}\n[End of Question]\n\n[Provided Instruction]\n{plan}\n"
                   "[End of Instruction]"),
    vrp_system=("You are a math expert. Solve the problem step by step and present the final answer within "
                "\\boxed{}."),
    mrp_system=("You are a math expert. First write a high-level plan for the problem, then follow it step "
                "by step, and present the final answer within \\boxed{}."),
)


@dataclass(frozen=True)
class RewardConfig:
    """The rewards of ReMA's base setting (App. C.2), configurable.

    Reasoner: ``correct`` if its marked answer is right, ``wrong_formatted`` if wrong but marked,
    ``no_answer`` if it has no marked answer. Meta agent (``meta_reward``):

    * ``"correctness"`` (App. C.2, the default): the mean correctness (1/0) of the ``n`` reasoner answers
      to its plan, ``R_h = (1/n) sum_i 1[y_i = y*]``;
    * ``"consistency"`` (Eq. 14): the share of the most frequent answer among the ``n`` answers,
      ``R_h = max_a |{i : y_i = a}| / n`` (answers compared after :func:`rlopt.envs.reasoning.normalize_answer`,
      responses without a marked answer count in ``n`` but never as an answer), and 0 when most responses
      (more than ``n / 2``) have no marked answer. It needs no reference answer.

    Either way ``leak_penalty`` is added if the plan contains a marked answer (it must not state the answer).
    Multi-turn (App. D.2): both agents get ``correct`` when the episode finished (code 0) and the last answer
    is right, else 0.

    Answers are compared by :func:`rlopt.envs.reasoning.answers_match`: the exact normaliser, or with
    ``use_math_verify=True`` also math-verify's symbolic check (the ``math`` extra). The choice is explicit and
    saved in checkpoints with the other reward settings, so a run scores answers the same way wherever it
    resumes.

    Raises:
        ValueError: for an unknown ``meta_reward``. ImportError: for ``use_math_verify=True`` without
        math-verify installed.

    Example:
        >>> rewards = RewardConfig()
        >>> [rewards.reasoner(text, "7") for text in ("3+4=7;\\\\boxed{7}", "\\\\boxed{6}", "7")]
        [(1.0, True), (-0.5, False), (-1.0, False)]
        >>> answers = ["\\\\boxed{3}", "\\\\boxed{3}", "\\\\boxed{4}", "no answer"]
        >>> RewardConfig().meta("21", answers, [True, True, False, False])
        0.5
        >>> RewardConfig(meta_reward="consistency").meta("21", answers, [True, True, False, False])
        0.5
    """

    correct: float = 1.0
    wrong_formatted: float = -0.5
    no_answer: float = -1.0
    leak_penalty: float = -1.0
    use_math_verify: bool = False
    meta_reward: str = "correctness"

    def __post_init__(self) -> None:
        if self.meta_reward not in META_REWARDS:
            raise ValueError(f"Invalid meta_reward: {self.meta_reward!r}, expected one of {list(META_REWARDS)}")
        if not isinstance(self.use_math_verify, bool):
            raise TypeError(f"Invalid use_math_verify: {self.use_math_verify!r}, expected a bool")
        if self.use_math_verify:
            require_math_verify()  # fail at construction, not in the middle of a rollout

    def reasoner(self, text: str, reference: str) -> tuple[float, bool]:
        """(reward, correct) of a reasoner response."""
        answer = extract_answer(text)
        if answer is None:
            return self.no_answer, False
        if answers_match(answer, reference, self.use_math_verify):
            return self.correct, True
        return self.wrong_formatted, False

    def meta(self, plan: str, answers: Sequence[str], correct: Sequence[bool]) -> float:
        """The meta agent's reward for ``plan`` given the reasoner's ``answers`` to it and their correctness.

        Raises:
            ValueError: for no answers, or ``answers`` and ``correct`` of different lengths.
        """
        if not answers or len(answers) != len(correct):
            raise ValueError(f"Invalid answers: expected a non-empty list with one correctness flag each, got "
                             f"{len(answers)} answers and {len(correct)} flags")
        penalty = self.leak_penalty if plan_leaks(plan) else 0.0
        if self.meta_reward == "correctness":
            return sum(map(bool, correct)) / len(correct) + penalty
        return consistency(answers) + penalty


def consistency(answers: Sequence[str]) -> float:
    """ReMA's consistency score (Eq. 14) of reasoner responses: the share of the most frequent marked answer,
    ``max_a |{i : y_i = a}| / n``, or 0 when more than half of the ``n`` responses have no marked answer.

    Example:
        >>> consistency(["\\\\boxed{3}", "\\\\boxed{3.0}", "\\\\boxed{4}", "none"])
        0.5
        >>> consistency(["a", "b", "\\\\boxed{1}"])  # most responses have no marked answer
        0.0
    """
    if not answers:
        raise ValueError("Invalid answers: expected at least one reasoner response")
    counts: dict[str, int] = {}
    unanswered = 0
    for text in answers:
        answer = extract_answer(text)
        if answer is None:
            unanswered += 1
            continue
        key = normalize_answer(answer)
        counts[key] = counts.get(key, 0) + 1
    if 2 * unanswered > len(answers) or not counts:
        return 0.0
    return max(counts.values()) / len(answers)


def plan_leaks(plan: str) -> bool:
    """Whether a plan states an answer: it contains the marked answer format (the paper's rule)."""
    return extract_answer(plan) is not None


@dataclass
class Segment:
    """One assistant turn of one agent: what it saw and what it generated.

    Attributes:
        role: ``"meta"`` or ``"reasoner"``.
        prompt: ids of the agent's chat up to the generation prompt.
        response: the generated ids (EOS included when it stopped on it): the loss mask covers exactly these.
        text: the decoded response.
        group: GRPO group (the question index); groups are per role since each role is normalised alone.
        trajectory: id of the agent's trajectory (the turns of one episode share it).
        turn: turn index within the trajectory.
        reward: the reward of the agent's trajectory.
        old_logprobs: behaviour log-probs of ``response`` from the sampler (``None`` if not kept).
    """

    role: str
    prompt: list[int]
    response: list[int]
    text: str
    group: int
    trajectory: int
    turn: int
    reward: float = 0.0
    old_logprobs: Tensor | None = None


@dataclass
class Rollout:
    """The segments of one batch of episodes and the per-role statistics of their outcome."""

    segments: list[Segment]
    stats: dict[str, float] = field(default_factory=dict)
    termination: list[int] = field(default_factory=list)

    def role(self, role: str) -> list[Segment]:
        """The segments of ``role``."""
        return [s for s in self.segments if s.role == role]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of a rollout."""

    max_new_tokens: int = 72
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False


def _generate(policy: Policy, prompts: list[list[int]], sampling: Sampling,
              generator: torch.Generator | None) -> tuple[list[list[int]], list[str], list[Tensor], list[bool]]:
    out = policy.generate(prompts, sampling.max_new_tokens, sampling.temperature, sampling.top_p, generator,
                          sampling.greedy)
    texts = [policy.decode([t for t in tokens if t != policy.eos_id]) for tokens in out.tokens]
    return out.tokens, texts, out.logprobs, out.stopped


def _meta_prompts(meta: Policy, tasks: Sequence[ReasoningTask], n_plans: int, prompts: Prompts) -> list[list[int]]:
    """The meta agent's prompt of every task, repeated ``n_plans`` times (task-major)."""
    out = []
    for task in tasks:
        chat = [{"role": "system", "content": prompts.meta_system}, {"role": "user", "content": task.question}]
        out.extend([meta.encode_chat(chat)] * n_plans)
    return out


def _reasoner_prompts(reasoner: Policy, tasks: Sequence[ReasoningTask], plans: Sequence[str], n_plans: int,
                      n_answers: int, prompts: Prompts) -> list[list[int]]:
    """The reasoner's prompt of every plan (plan ``i`` answers task ``i // n_plans``), repeated ``n_answers``
    times (plan-major)."""
    out = []
    for i, plan in enumerate(plans):
        task = tasks[i // n_plans]
        chat = [{"role": "system", "content": prompts.reasoner_system},
                {"role": "user", "content": prompts.reasoner_user.format(question=task.question, plan=plan)}]
        out.extend([reasoner.encode_chat(chat)] * n_answers)
    return out


@torch.no_grad()
def success_rates(
    meta: Policy,
    reasoner: Policy,
    tasks: Sequence[ReasoningTask],
    role: str,
    k: int,
    max_new_tokens: int,
    generator: torch.Generator | None = None,
    prompts: Prompts = TINY_PROMPTS,
    rewards: RewardConfig = RewardConfig(),
) -> tuple[Tensor, int]:
    """Empirical success rate of every question, as Algorithm 1 of ReMA (App. D.1) measures it before the
    phase that trains ``role``:

    * ``role="meta"``: the meta agent samples ``k`` plans at temperature 1 and the reasoner answers each once
      greedily;
    * ``role="reasoner"``: the meta agent writes one greedy plan and the reasoner samples ``k`` answers to it
      at temperature 1.

    The rate of question ``q`` is ``(1/k) sum_i 1[y_{q,i} = y*_q]``. Each agent generates once for the whole
    batch (``len(tasks) * k`` sequences at most), on the policies' device.

    Returns:
        The rates, a float64 tensor of shape ``(len(tasks),)`` on the reasoner's device, and the number of
        tokens generated.

    Raises:
        ValueError: for an unknown role or ``k < 1``.
    """
    if role not in ROLES:
        raise ValueError(f"Invalid role: {role!r}, expected one of {list(ROLES)}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"Invalid k: {k!r}, expected a positive integer")
    sampled = Sampling(max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0)
    greedy = Sampling(max_new_tokens=max_new_tokens, greedy=True)
    n_plans, n_answers = (k, 1) if role == "meta" else (1, k)
    plan_ids, plans, _, _ = _generate(meta, _meta_prompts(meta, tasks, n_plans, prompts),
                                      sampled if role == "meta" else greedy, generator)
    answer_ids, answers, _, _ = _generate(reasoner, _reasoner_prompts(reasoner, tasks, plans, n_plans, n_answers,
                                                                      prompts),
                                          greedy if role == "meta" else sampled, generator)
    # answer j belongs to question j // k in both layouts (task-major plans, plan-major answers)
    correct = torch.tensor([rewards.reasoner(text, tasks[j // k].answer)[1] for j, text in enumerate(answers)],
                           dtype=torch.float64, device=reasoner.device)
    tokens = sum(map(len, plan_ids)) + sum(map(len, answer_ids))
    return correct.view(len(tasks), k).mean(dim=1), tokens


def in_range(rates: Tensor, eps_min: float, eps_max: float) -> Tensor:
    """Algorithm 1's filter: ``eps_min <= rate <= eps_max`` (both ends included), as a boolean mask.

    A tolerance of 1e-9 absorbs the rounding of ``count / k`` (e.g. 2/10 against 0.2).

    Example:
        >>> in_range(torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0], dtype=torch.float64), 0.2, 0.8).tolist()
        [False, True, True, True, False]
    """
    return (rates >= eps_min - 1e-9) & (rates <= eps_max + 1e-9)


def rollout_single_turn(
    meta: Policy,
    reasoner: Policy,
    tasks: Sequence[ReasoningTask],
    n_plans: int,
    n_answers: int,
    sampling: Sampling,
    generator: torch.Generator | None = None,
    prompts: Prompts = TINY_PROMPTS,
    rewards: RewardConfig = RewardConfig(),
) -> Rollout:
    """Single-turn ReMA: ``n_plans`` plans per question, ``n_answers`` reasoner answers per plan.

    Rewards: each answer its reasoner reward; each plan ``rewards.meta`` of its answers (mean correctness or
    consistency) plus the leak penalty. Statistics: accuracy, reward, response length per role, leak and
    empty-plan rates.
    """
    meta_prompts = _meta_prompts(meta, tasks, n_plans, prompts)
    plan_ids, plans, plan_logp, _ = _generate(meta, meta_prompts, sampling, generator)
    segments: list[Segment] = []
    reasoner_prompts = _reasoner_prompts(reasoner, tasks, plans, n_plans, n_answers, prompts)
    answer_ids, answers, answer_logp, _ = _generate(reasoner, reasoner_prompts, sampling, generator)
    correct = []
    for j, text in enumerate(answers):
        i = j // n_answers
        reward, ok = rewards.reasoner(text, tasks[i // n_plans].answer)
        correct.append(ok)
        segments.append(Segment("reasoner", reasoner_prompts[j], answer_ids[j], text, group=i // n_plans,
                                trajectory=j, turn=0, reward=reward, old_logprobs=answer_logp[j]))
    leaks = [plan_leaks(p) for p in plans]
    for i, plan in enumerate(plans):
        own = slice(i * n_answers, (i + 1) * n_answers)
        reward = rewards.meta(plan, answers[own], correct[own])
        segments.append(Segment("meta", meta_prompts[i], plan_ids[i], plan, group=i // n_plans, trajectory=i,
                                turn=0, reward=reward, old_logprobs=plan_logp[i]))
    rollout = Rollout(segments, termination=[TERMINATION["finished"]] * len(plans))
    rollout.stats = _stats(rollout, correct, leaks, [not p.strip() for p in plans])
    return rollout


def rollout_single_agent(
    policy: Policy,
    tasks: Sequence[ReasoningTask],
    n_samples: int,
    sampling: Sampling,
    generator: torch.Generator | None = None,
    prompts: Prompts = TINY_PROMPTS,
    rewards: RewardConfig = RewardConfig(),
    mode: str = "vrp",
) -> Rollout:
    """A single-agent baseline: VRP (answer directly) or MRP (plan then solve in one pass), as role "reasoner"."""
    if mode not in ("vrp", "mrp"):
        raise ValueError(f"Invalid mode: {mode!r}, expected 'vrp' or 'mrp'")
    system = prompts.vrp_system if mode == "vrp" else prompts.mrp_system
    chats = []
    for task in tasks:
        chat = [{"role": "system", "content": system}, {"role": "user", "content": task.question}]
        chats.extend([policy.encode_chat(chat)] * n_samples)
    ids, texts, logp, _ = _generate(policy, chats, sampling, generator)
    segments, correct = [], []
    for j, text in enumerate(texts):
        reward, ok = rewards.reasoner(text, tasks[j // n_samples].answer)
        correct.append(ok)
        segments.append(Segment("reasoner", chats[j], ids[j], text, group=j // n_samples, trajectory=j, turn=0,
                                reward=reward, old_logprobs=logp[j]))
    rollout = Rollout(segments, termination=[TERMINATION["finished"]] * len(texts))
    rollout.stats = _stats(rollout, correct, [], [])
    return rollout


def rollout_multi_turn(
    meta: Policy,
    reasoner: Policy,
    tasks: Sequence[ReasoningTask],
    n_episodes: int,
    sampling: Sampling,
    max_turns: int,
    max_prompt_length: int,
    generator: torch.Generator | None = None,
    prompts: Prompts = TINY_PROMPTS,
    rewards: RewardConfig = RewardConfig(),
) -> Rollout:
    """Multi-turn ReMA: ``m_1 -> y_1 -> m_2 -> y_2 -> ...`` until the meta agent writes ``[FINISH]``.

    All live episodes advance together, one batched generation per agent per turn. An episode ends with
    code 0 after the reasoner answers a finishing meta turn, 1 after ``max_turns`` meta turns, 2 when an
    agent's prompt would exceed ``max_prompt_length`` tokens, 3 when a turn is cut at ``max_new_tokens``.
    Both agents get ``rewards.correct`` if the code is 0 and the last answer is right, else 0.
    """
    if max_turns < 1:
        raise ValueError(f"Invalid max_turns: {max_turns!r}, expected >= 1")
    n = len(tasks) * n_episodes
    task_of = [tasks[e // n_episodes] for e in range(n)]
    meta_chat = [[{"role": "system", "content": prompts.meta_system}, {"role": "user", "content": t.question}]
                 for t in task_of]
    reasoner_chat: list[list[dict[str, str]]] = [[{"role": "system", "content": prompts.reasoner_system}]
                                                 for _ in range(n)]
    code: list[int | None] = [None] * n
    last_answer = [""] * n
    segments: list[Segment] = []
    leaked = [False] * n
    empty = [False] * n
    for turn in range(max_turns):
        live = [e for e in range(n) if code[e] is None]
        if not live:
            break
        m_prompts = {e: meta.encode_chat(meta_chat[e]) for e in live}
        live = _within_budget(live, m_prompts, code, max_prompt_length)
        if not live:
            break
        ids, texts, logp, stopped = _generate(meta, [m_prompts[e] for e in live], sampling, generator)
        finishing = {}
        for k, e in enumerate(live):
            segments.append(Segment("meta", m_prompts[e], ids[k], texts[k], group=e // n_episodes, trajectory=e,
                                    turn=turn, old_logprobs=logp[k]))
            meta_chat[e].append({"role": "assistant", "content": texts[k]})
            leaked[e] |= plan_leaks(texts[k])
            empty[e] |= not texts[k].replace(FINISH, "").strip()
            finishing[e] = FINISH in texts[k]
            if not stopped[k]:
                code[e] = TERMINATION["truncated"]
                continue
            instruction = texts[k].replace(FINISH, "").strip()
            content = (prompts.reasoner_user.format(question=task_of[e].question, plan=instruction)
                       if turn == 0 else instruction)
            reasoner_chat[e].append({"role": "user", "content": content})
        live = [e for e in live if code[e] is None]
        r_prompts = {e: reasoner.encode_chat(reasoner_chat[e]) for e in live}
        live = _within_budget(live, r_prompts, code, max_prompt_length)
        if not live:
            continue
        ids, texts, logp, stopped = _generate(reasoner, [r_prompts[e] for e in live], sampling, generator)
        for k, e in enumerate(live):
            segments.append(Segment("reasoner", r_prompts[e], ids[k], texts[k], group=e // n_episodes,
                                    trajectory=e, turn=turn, old_logprobs=logp[k]))
            reasoner_chat[e].append({"role": "assistant", "content": texts[k]})
            meta_chat[e].append({"role": "user", "content": texts[k]})
            last_answer[e] = texts[k]
            if not stopped[k]:
                code[e] = TERMINATION["truncated"]
            elif finishing[e]:
                code[e] = TERMINATION["finished"]
    final = [TERMINATION["max_turns"] if c is None else c for c in code]
    correct = []
    for e in range(n):
        _, ok = rewards.reasoner(last_answer[e], task_of[e].answer)
        correct.append(ok and final[e] == TERMINATION["finished"])
    for segment in segments:
        segment.reward = rewards.correct if correct[segment.trajectory] else 0.0
    rollout = Rollout(segments, termination=final)
    rollout.stats = _stats(rollout, correct, leaked, empty)
    for name, value in TERMINATION.items():
        rollout.stats[f"episodes/{name}"] = sum(c == value for c in final) / max(n, 1)
    rollout.stats["episodes/turns"] = sum(s.role == "meta" for s in segments) / max(n, 1)
    return rollout


def _within_budget(live: list[int], prompts: dict[int, list[int]], code: list[int | None],
                   max_prompt_length: int) -> list[int]:
    """The live episodes whose prompt fits the token budget; the others get code 2."""
    for e in live:
        if len(prompts[e]) > max_prompt_length:
            code[e] = TERMINATION["token_budget"]
    return [e for e in live if code[e] is None]


def _stats(rollout: Rollout, correct: list[bool], leaks: list[bool], empty: list[bool]) -> dict[str, float]:
    stats: dict[str, float] = {"accuracy": sum(correct) / max(len(correct), 1)}
    for role in ROLES:
        segments = rollout.role(role)
        if not segments:
            continue
        stats[f"{role}/reward"] = sum(s.reward for s in segments) / len(segments)
        stats[f"{role}/response_length"] = sum(len(s.response) for s in segments) / len(segments)
        stats[f"{role}/accuracy"] = stats["accuracy"]
    if leaks:
        stats["meta/leak_rate"] = sum(leaks) / len(leaks)
    if empty:
        stats["meta/empty_plan_rate"] = sum(empty) / len(empty)
    stats["generated_tokens"] = float(sum(len(s.response) for s in rollout.segments))
    return stats


def _random_plan(n_ops: int, generator: torch.Generator) -> list[int]:
    return [int(torch.randint(1, n_ops - k + 1, (1,), generator=generator)) for k in range(n_ops)]


def _steps(expression: str, plan: list[int], modulus: int | None) -> list[str]:
    """The reasoner's lines for ``plan`` (:func:`rlopt.envs.reasoning.worked_steps`), the last ending with the
    marked answer (``4*2=8,3+8-7;3+8=11,11-7;11-7=4;\\boxed{4}``)."""
    lines = worked_steps(expression, plan, modulus)
    lines[-1] += ";" + format_answer(execute_plan(expression, plan, modulus)[-1])
    return lines


def _solution(expression: str, plan: list[int], modulus: int | None) -> str:
    return ";".join(_steps(expression, plan, modulus))


def demonstrations(
    tasks: Sequence[ReasoningTask],
    mode: str,
    generator: torch.Generator,
    p_bad_plan: float = 0.3,
    multi_turn: bool = False,
    prompts: Prompts = TINY_PROMPTS,
    p_unformatted: float = 0.0,
    p_leak: float = 0.0,
) -> dict[str, list[tuple[list[dict[str, str]], str]]]:
    """Warm-start demonstrations per role: ``(chat before the turn, assistant text)`` pairs.

    A plan is the list of operator indices to reduce (``"211"``): the precedence plan, or with probability
    ``p_bad_plan`` a uniformly random plan, so the warm-started agents are imperfect and RL has something
    to fix. The reasoner faithfully executes the plan it is given, writing every intermediate expression and
    the marked answer (``3+8-7;1-7;\\boxed{4}``). VRP demonstrations are executions of such plans without the
    plan; MRP demonstrations write the plan, ``:``, then the execution. Multi-turn demonstrations give one
    operator index per meta turn (the last with ``[FINISH]``) and one reduction per reasoner turn (the last
    marked as the answer).

    Format noise, for studying the format terms of the rewards: with probability ``p_unformatted`` a
    (single-turn) solution ends without the answer marker, and with probability ``p_leak`` a single-turn plan
    ends by stating the answer in the marked format (which the meta agent's reward penalises).

    Raises:
        ValueError: for tasks without an arithmetic expression (loaded tasks have no demonstrations).
    """
    if mode not in ("rema", "vrp", "mrp"):
        raise ValueError(f"Invalid mode: {mode!r}, expected 'rema', 'vrp' or 'mrp'")
    out: dict[str, list[tuple[list[dict[str, str]], str]]] = {"meta": [], "reasoner": []}
    for task in tasks:
        if task.expression is None:
            raise ValueError("Invalid tasks: demonstrations need generated arithmetic tasks (with an expression)")
        n_ops = task.n_operands - 1
        bad = bool(torch.rand((), generator=generator) < p_bad_plan)
        plan = _random_plan(n_ops, generator) if bad else precedence_plan(task.expression)
        plan_text = "".join(map(str, plan))
        solution = _solution(task.expression, plan, task.modulus)
        if p_unformatted and bool(torch.rand((), generator=generator) < p_unformatted):
            solution = solution[: solution.rindex(";")]  # the last step without the marked answer
        if p_leak and bool(torch.rand((), generator=generator) < p_leak):
            plan_text = f"{plan_text};{format_answer(task.answer)}"
        if mode in ("vrp", "mrp"):
            system = prompts.vrp_system if mode == "vrp" else prompts.mrp_system
            text = solution if mode == "vrp" else f"{plan_text}:{solution}"
            out["reasoner"].append(([{"role": "system", "content": system},
                                     {"role": "user", "content": task.question}], text))
            continue
        meta_chat = [{"role": "system", "content": prompts.meta_system}, {"role": "user", "content": task.question}]
        reasoner_chat = [{"role": "system", "content": prompts.reasoner_system}]
        if not multi_turn:
            out["meta"].append((meta_chat, plan_text))
            reasoner_chat.append({"role": "user", "content": prompts.reasoner_user.format(
                question=task.question, plan=plan_text)})
            out["reasoner"].append((reasoner_chat, solution))
            continue
        steps = _steps(task.expression, plan, task.modulus)
        for k, index in enumerate(plan):
            last = k == len(plan) - 1
            meta_text = f"{index}{FINISH}" if last else str(index)
            out["meta"].append(([dict(m) for m in meta_chat], meta_text))
            meta_chat.append({"role": "assistant", "content": meta_text})
            content = (prompts.reasoner_user.format(question=task.question, plan=str(index)) if k == 0
                       else str(index))
            reasoner_chat.append({"role": "user", "content": content})
            answer = steps[k]
            out["reasoner"].append(([dict(m) for m in reasoner_chat], answer))
            reasoner_chat.append({"role": "assistant", "content": answer})
            meta_chat.append({"role": "user", "content": answer})
    return out
