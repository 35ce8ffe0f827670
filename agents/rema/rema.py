"""``ReMA``: two-agent meta-thinking RL (a meta agent that plans, a reasoner that solves) and its baselines.

Wan et al., "ReMA: Learning to Meta-think for LLMs with Multi-Agent Reinforcement Learning", arXiv 2503.09501.

Objective (Eq. 9-11): both agents maximise the correctness of the reasoner's final answer,
``J(theta_h, theta_l) = E_{x, m ~ pi_h(.|x), y ~ pi_l(.|x, m)} [R(y, y*)]``, each with its own reward
(:class:`rlopt.agents.rema.rollout.RewardConfig`). Two training recipes of the paper:

* ``algorithm="reinforce++"`` (single-turn runs of the paper): separate weights and the iterative schedule
  (Algorithm 1): train one agent with the other frozen, switch every ``switch_every`` updates, starting with
  the meta agent. Token advantages are the KL-shaped return, whitened over the batch (REINFORCE++); the
  PPO-clipped token-ratio loss is averaged over tokens. With ``prompt_filter=(eps_min, eps_max)`` each phase
  trains on the questions whose success rate, measured for the agent about to be trained, lies in the range
  (Algorithm 1's filtered datasets D_h, D_l).
* ``algorithm="grpo"`` (multi-turn runs): shared weights (roles told apart by their system prompts),
  both roles updated together, group-normalised advantages per role per question, the turn-level ratio
  (Eq. 12/13) and the trajectory-averaged loss.

Every combination (shared or separate weights, alternating or simultaneous, single- or multi-turn, either
algorithm, any optimizer of :func:`rlopt.build_optimizer` per agent) is accepted. ``mode="vrp"`` and
``mode="mrp"`` train the single-agent baselines of the paper (VRP_RL: answer directly; MRP_RL: plan then
solve in one pass) with the same algorithm and the same number of reasoner samples per question.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import rlopt
from rlopt._atomic import atomic_write
from rlopt.agents.rema.losses import grpo_advantages, k3_kl, masked_mean, policy_loss, reinforce_pp_advantages
from rlopt.agents.rema.policy import Policy, TinyConfig, TinyPolicy
from rlopt.agents.rema.rollout import (
    PAPER_PROMPTS,
    ROLES,
    TINY_PROMPTS,
    Prompts,
    RewardConfig,
    Rollout,
    Sampling,
    Segment,
    demonstrations,
    in_range,
    rollout_multi_turn,
    rollout_single_agent,
    rollout_single_turn,
    success_rates,
)
from rlopt.envs.reasoning import ArithmeticTasks, ReasoningTask, make_split
from rlopt.tools.scalars import tensorboard_logger, write_scalars
from rlopt.validation import check_choice

__all__ = ["ALGORITHMS", "MODES", "PAPER_FILTER", "ReMA"]

ALGORITHMS = ("reinforce++", "grpo")
MODES = ("rema", "vrp", "mrp")
SCHEDULES = ("alternate", "simultaneous")
#: the success-rate range of Algorithm 1's prompt filter in the paper's MATH runs (App. D.1)
PAPER_FILTER = (0.2, 0.8)

Callback = Callable[[dict[str, float]], bool | None]


def _per_role(name: str, value: Any, roles: Sequence[str]) -> dict[str, Any]:
    """``value`` for every role: a mapping keyed by role (checked) or one value for all."""
    if isinstance(value, Mapping):
        unknown = set(value) - set(ROLES)
        if unknown:
            raise ValueError(f"Invalid {name}: unknown role(s) {sorted(unknown)}, expected keys in {list(ROLES)}")
        return {role: value.get(role) for role in roles}
    return dict.fromkeys(roles, value)


def _check_filter(prompt_filter: object, filter_k: object, filter_pool: object, *, mode: str, schedule: str,
                  multi_turn: bool) -> tuple[float, float] | None:
    """Check the prompt-filter arguments; returns ``(eps_min, eps_max)`` or ``None`` (off)."""
    for name, value in (("filter_k", filter_k), ("filter_pool", filter_pool)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"Invalid {name}: {value!r}, expected a positive integer")
    if filter_k is None:
        raise ValueError("Invalid filter_k: None, expected a positive integer")
    if prompt_filter is None or prompt_filter is False or prompt_filter == "off":
        return None
    if prompt_filter is True or prompt_filter == "on":
        prompt_filter = PAPER_FILTER
    if (isinstance(prompt_filter, (str, bytes)) or not isinstance(prompt_filter, Sequence)
            or len(prompt_filter) != 2
            or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in prompt_filter)):
        raise ValueError(f"Invalid prompt_filter: {prompt_filter!r}, expected None/'off', True/'on' "
                         f"(= {PAPER_FILTER}) or a pair (eps_min, eps_max) of numbers")
    eps_min, eps_max = float(prompt_filter[0]), float(prompt_filter[1])
    if not (math.isfinite(eps_min) and math.isfinite(eps_max) and 0.0 <= eps_min <= eps_max <= 1.0):
        raise ValueError(f"Invalid prompt_filter: {prompt_filter!r}, expected 0 <= eps_min <= eps_max <= 1")
    if mode != "rema" or schedule != "alternate" or multi_turn:
        raise ValueError(f"Invalid prompt_filter: Algorithm 1's filter is for single-turn ReMA with the alternating "
                         f"schedule, got mode={mode!r}, schedule={schedule!r}, multi_turn={multi_turn}")
    return eps_min, eps_max


def _validate(*, mode: str, algorithm: str, start_role: str, schedule: str | None, ratio: str | None,
              aggregate: str | None, switch_every: int, max_turns: int, batch_questions: int, n_plans: int,
              n_answers: int, max_new_tokens: int, n_epochs: int, multi_turn: bool, clip_eps: float) -> None:
    """Check the arguments of :class:`ReMA` before anything is built."""
    check_choice("mode", mode, MODES)
    check_choice("algorithm", algorithm, ALGORITHMS)
    check_choice("start_role", start_role, ROLES)
    if schedule is not None:
        check_choice("schedule", schedule, SCHEDULES)
    if ratio is not None:
        check_choice("ratio", ratio, ("turn", "token"))
    if aggregate is not None:
        check_choice("aggregate", aggregate, ("trajectory", "token"))
    for name, value in (("switch_every", switch_every), ("max_turns", max_turns),
                        ("batch_questions", batch_questions), ("n_plans", n_plans), ("n_answers", n_answers),
                        ("max_new_tokens", max_new_tokens), ("n_epochs", n_epochs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Invalid {name}: {value!r}, expected a positive integer")
    if multi_turn and mode != "rema":
        raise ValueError(f"Invalid multi_turn: True needs mode='rema', got mode={mode!r}")
    if multi_turn and n_answers != 1:
        raise ValueError(f"Invalid n_answers: {n_answers}, expected 1 with multi_turn=True (one reasoner per "
                         "episode)")
    if algorithm == "grpo" and n_plans * (1 if mode == "rema" else n_answers) < 2:
        raise ValueError("Invalid n_plans: GRPO needs groups of at least 2 samples per question")
    if not 0 < clip_eps < 1:
        raise ValueError(f"Invalid clip_eps: {clip_eps!r}, expected 0 < clip_eps < 1")


class ReMA:
    """The ReMA trainer with ``learn``/``evaluate``/``save``/``load`` in the style of the other agents.

    Args:
        tasks: ``"arithmetic"`` (the built-in task stream of :mod:`rlopt.envs.reasoning`, 2-4 operands), an
            :class:`rlopt.envs.reasoning.ArithmeticTasks` stream, or a non-empty sequence of
            :class:`rlopt.envs.reasoning.ReasoningTask` (e.g. from ``load_jsonl``).
        policy: ``"tiny"`` (built-in character transformers from ``tiny_config``), a :class:`Policy` (copied
            for the second agent when weights are separate) or a mapping ``{"meta": ..., "reasoner": ...}``.
        mode: ``"rema"`` (two agents), ``"vrp"`` or ``"mrp"`` (single-agent baselines).
        algorithm: ``"reinforce++"`` or ``"grpo"``.
        shared_weights: one model for both roles (default: True for GRPO, False for REINFORCE++).
        schedule: ``"alternate"`` (train one agent, freeze the other) or ``"simultaneous"``; default
            alternate for separate weights, simultaneous for shared ones.
        switch_every: updates between switches of the alternating schedule (paper code: 10).
        start_role: the role trained first by the alternating schedule.
        multi_turn: multi-turn episodes ending with ``[FINISH]`` (``n_answers`` must then be 1).
        max_turns: meta turns per multi-turn episode.
        batch_questions: questions per update.
        n_plans: plans (episodes) per question: the GRPO group of the meta agent.
        n_answers: reasoner answers per plan; baselines draw ``n_plans * n_answers`` answers per question.
        max_new_tokens: tokens per turn.
        max_prompt_length: token budget of an agent's accumulated prompt (multi-turn); default
            ``context length - max_new_tokens``.
        temperature: sampling temperature. top_p: nucleus mass.
        clip_eps: PPO clipping range.
        kl_coef: weight of the k3 KL to the frozen reference (REINFORCE++: in the reward, default 0.01 as in
            the paper; GRPO: in the loss, default 0 as in the paper's multi-turn runs).
        ratio: ``"turn"`` or ``"token"`` (default turn for GRPO, token for REINFORCE++).
        aggregate: ``"trajectory"`` or ``"token"`` (default trajectory for GRPO, token for REINFORCE++).
        n_epochs: optimizer steps on each rollout batch.
        optimizer: a name of :data:`rlopt.OPTIMIZERS` or an optimizer class, or a mapping per role.
        optimizer_kwargs: keyword arguments of the optimizer, or a mapping per role.
        max_grad_norm: gradient clipping for torch optimizers (rlopt's rules are not clipped).
        rewards: the reward settings. prompts: system prompts (default: short ones for tiny models, the
            paper's for Hugging Face models).
        prompt_filter: Algorithm 1's prompt filtering (single-turn ReMA, alternating schedule): before each phase
            (every ``switch_every`` updates) ``filter_pool`` candidate questions are drawn, their success rate
            measured as in :func:`rlopt.agents.rema.rollout.success_rates` for the role about to be trained, and the
            phase trains on the questions whose rate lies in ``[eps_min, eps_max]``. ``None``/``"off"``
            (default): no filtering; ``True``/``"on"``: the paper's MATH range :data:`PAPER_FILTER`
            ``(0.2, 0.8)``; or a pair ``(eps_min, eps_max)``. If no candidate is in range the phase trains on
            all candidates and a ``RuntimeWarning`` is issued (counted in ``filter_fallbacks``).
        filter_k: samples per question of the filter (paper: 10; default 4, which keeps the filter's cost near
            that of the phase's own rollouts on a CPU).
        filter_pool: candidate questions per phase (default ``batch_questions * switch_every``, what one phase
            consumes without filtering); kept questions are reshuffled and reused within the phase.
        tiny_config: size of the built-in models.
        eval_tasks: in-distribution evaluation tasks (default for ``"arithmetic"``: 128 test-split tasks).
        ood_tasks: out-of-distribution evaluation tasks (default for ``"arithmetic"``: 128 OOD tasks).
        modulus: modulus of the built-in tasks (``None``: integers).
        device: torch device of the policies and the sampler.
        seed: seed of the task stream, the initial weights and the sampler.
        tensorboard_log: directory of TensorBoard runs (``None``: no logging).
        verbose: 1 prints a line per evaluation.

    Example:
        >>> from rlopt.agents.rema import ReMA
        >>> from rlopt.agents.rema.policy import TinyConfig
        >>> agent = ReMA(batch_questions=2, n_plans=2, n_answers=2, tiny_config=TinyConfig(d_model=32, n_layers=1),
        ...              eval_tasks=[], ood_tasks=[])
        >>> _ = agent.warm_start(steps=2, batch_size=8)
        >>> _ = agent.learn(total_updates=1)
        >>> agent.num_updates
        1
    """

    def __init__(
        self,
        tasks: str | ArithmeticTasks | Sequence[ReasoningTask] = "arithmetic",
        policy: str | Policy | Mapping[str, Policy] = "tiny",
        *,
        mode: str = "rema",
        algorithm: str = "reinforce++",
        shared_weights: bool | None = None,
        schedule: str | None = None,
        switch_every: int = 10,
        start_role: str = "meta",
        multi_turn: bool = False,
        max_turns: int = 8,
        batch_questions: int = 16,
        n_plans: int = 2,
        n_answers: int = 4,
        max_new_tokens: int = 72,
        max_prompt_length: int | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        clip_eps: float = 0.2,
        kl_coef: float | None = None,
        ratio: str | None = None,
        aggregate: str | None = None,
        n_epochs: int = 1,
        optimizer: Any = "adam",
        optimizer_kwargs: Mapping[str, Any] | None = None,
        max_grad_norm: float | None = 1.0,
        rewards: RewardConfig | None = None,
        prompts: Prompts | None = None,
        prompt_filter: tuple[float, float] | bool | str | None = None,
        filter_k: int = 4,
        filter_pool: int | None = None,
        tiny_config: TinyConfig | None = None,
        eval_tasks: Sequence[ReasoningTask] | None = None,
        ood_tasks: Sequence[ReasoningTask] | None = None,
        modulus: int | None = 10,
        device: str | torch.device = "cpu",
        seed: int = 0,
        tensorboard_log: str | None = None,
        verbose: int = 0,
    ) -> None:
        _validate(mode=mode, algorithm=algorithm, start_role=start_role, schedule=schedule, ratio=ratio,
                  aggregate=aggregate, switch_every=switch_every, max_turns=max_turns,
                  batch_questions=batch_questions, n_plans=n_plans, n_answers=n_answers,
                  max_new_tokens=max_new_tokens, n_epochs=n_epochs, multi_turn=multi_turn, clip_eps=clip_eps)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.mode = mode
        self.algorithm = algorithm
        self.roles: tuple[str, ...] = ROLES if mode == "rema" else ("reasoner",)
        self.shared_weights = (algorithm == "grpo") if shared_weights is None else bool(shared_weights)
        if mode != "rema":
            self.shared_weights = True
        self.schedule = schedule or ("simultaneous" if self.shared_weights else "alternate")
        self.prompt_filter = _check_filter(prompt_filter, filter_k, filter_pool, mode=mode, schedule=self.schedule,
                                           multi_turn=multi_turn)
        self.filter_k = filter_k
        self.filter_pool = filter_pool or batch_questions * switch_every
        if not isinstance(rewards, (RewardConfig, type(None))):
            raise TypeError(f"Invalid rewards: expected a RewardConfig, got {type(rewards).__name__}")
        if multi_turn and rewards is not None and rewards.meta_reward != "correctness":
            raise ValueError(f"Invalid rewards: meta_reward={rewards.meta_reward!r} needs several reasoner answers "
                             "per plan; multi-turn episodes use the outcome reward (meta_reward='correctness')")
        self.switch_every = switch_every
        self.start_role = start_role
        self.multi_turn = multi_turn
        self.max_turns = max_turns
        self.batch_questions = batch_questions
        self.n_plans = n_plans
        self.n_answers = n_answers
        self.temperature = float(temperature)
        self.sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        self.clip_eps = clip_eps
        self.kl_coef = float(kl_coef if kl_coef is not None else (0.01 if algorithm == "reinforce++" else 0.0))
        self.ratio = ratio or ("turn" if algorithm == "grpo" else "token")
        self.aggregate = aggregate or ("trajectory" if algorithm == "grpo" else "token")
        self.n_epochs = n_epochs
        self.max_grad_norm = max_grad_norm
        self.rewards = rewards or RewardConfig()
        self.modulus = modulus
        self.verbose = verbose
        self.tensorboard_log = tensorboard_log

        # tasks
        if isinstance(tasks, (str, ArithmeticTasks)):
            if isinstance(tasks, str):
                check_choice("tasks", tasks, ("arithmetic",))
                tasks = ArithmeticTasks(2, 4, modulus=modulus, seed=self.seed)
            self._task_stream: ArithmeticTasks | None = tasks
            self.modulus = modulus = tasks.modulus
            self.tasks: list[ReasoningTask] = []
            default_eval = make_split("test", 128, seed=self.seed, modulus=modulus)
            default_ood = make_split("ood", 128, seed=self.seed, modulus=modulus)
        else:
            self.tasks = list(tasks)
            if not self.tasks:
                raise ValueError("Invalid tasks: the dataset is empty, expected at least one ReasoningTask")
            if not all(isinstance(t, ReasoningTask) for t in self.tasks):
                raise TypeError("Invalid tasks: expected ReasoningTask items (see envs.reasoning.load_jsonl)")
            self._task_stream = None
            default_eval, default_ood = [], []
        self.eval_tasks = list(default_eval if eval_tasks is None else eval_tasks)
        self.ood_tasks = list(default_ood if ood_tasks is None else ood_tasks)
        self._task_order: list[int] = []
        self._task_generator = torch.Generator().manual_seed(self.seed + 1)

        # policies
        self.tiny_config = tiny_config or TinyConfig()
        self._policy_spec = policy if isinstance(policy, str) else "custom"
        self.policies = self._build_policies(policy)
        if prompts is None:
            prompts = TINY_PROMPTS if all(isinstance(p, TinyPolicy) for p in self.policies.values()) else PAPER_PROMPTS
        self.prompts = prompts
        for p in self.policies.values():
            p.to(self.device)
            p.eval()  # no dropout: sampling and the losses must see one distribution
            if max_new_tokens >= p.max_length:
                raise ValueError(f"Invalid max_new_tokens: {max_new_tokens}, expected < the context length "
                                 f"{p.max_length}")
        self.max_prompt_length = (max_prompt_length if max_prompt_length is not None
                                  else min(p.max_length for p in self.policies.values()) - max_new_tokens)

        # optimizers, one per distinct model
        opt_names = _per_role("optimizer", optimizer, self.roles)
        opt_kwargs = _per_role("optimizer_kwargs", optimizer_kwargs or {}, self.roles) if (
            optimizer_kwargs is None or any(k in ROLES for k in optimizer_kwargs)) else dict.fromkeys(
            self.roles, optimizer_kwargs)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for name, roles in self._model_roles().items():
            specs = {repr(opt_names[r]) for r in roles}
            if len(specs) > 1:
                raise ValueError(f"Invalid optimizer: roles {roles} share one model and need one optimizer, got "
                                 f"{sorted(specs)}")
            kwargs = dict(opt_kwargs[roles[0]] or {})
            self.optimizers[name] = rlopt.build_optimizer(opt_names[roles[0]] or "adam",
                                                          self.policies[roles[0]].parameters(), **kwargs)
        self._optimizer_spec = {r: opt_names[r] if isinstance(opt_names[r], str) else "custom" for r in self.roles}
        self._optimizer_kwargs = {r: dict(opt_kwargs[r] or {}) for r in self.roles}

        self.references: dict[str, Policy] = {}
        self.sampler = torch.Generator(device=self.device).manual_seed(self.seed + 2)
        self.num_updates = 0
        self.num_samples = 0
        self.num_generated_tokens = 0
        self.num_filter_tokens = 0
        self.filter_fallbacks = 0
        # the questions of the current phase of the filtered schedule, and their shuffled order
        self._phase_tasks: list[ReasoningTask] | None = None
        self._phase_order: list[int] = []
        self.history: list[dict[str, float]] = []
        self._logger: Any = None
        self._init_kwargs = {
            "mode": mode, "algorithm": algorithm, "shared_weights": self.shared_weights, "schedule": self.schedule,
            "switch_every": switch_every, "start_role": start_role, "multi_turn": multi_turn, "max_turns": max_turns,
            "batch_questions": batch_questions, "n_plans": n_plans, "n_answers": n_answers,
            "max_new_tokens": max_new_tokens, "max_prompt_length": max_prompt_length, "temperature": temperature,
            "top_p": top_p, "clip_eps": clip_eps, "kl_coef": self.kl_coef, "ratio": self.ratio,
            "aggregate": self.aggregate, "n_epochs": n_epochs, "max_grad_norm": max_grad_norm,
            "prompt_filter": self.prompt_filter, "filter_k": filter_k, "filter_pool": filter_pool,
            "modulus": modulus, "seed": seed, "verbose": verbose, "tensorboard_log": tensorboard_log,
        }

    # ------------------------------------------------------------------ construction helpers
    def _build_policies(self, policy: str | Policy | Mapping[str, Policy]) -> dict[str, Policy]:
        if isinstance(policy, str):
            check_choice("policy", policy, ("tiny",))
            first = TinyPolicy(self.tiny_config, seed=self.seed)
            if self.shared_weights:
                return dict.fromkeys(self.roles, first)
            return {"meta": first, "reasoner": TinyPolicy(self.tiny_config, seed=self.seed + 1)}
        if isinstance(policy, Policy):
            if self.shared_weights:
                return dict.fromkeys(self.roles, policy)
            # two separate copies of the same model, as in the paper
            return {"meta": policy, "reasoner": policy.frozen_copy().requires_grad_(True)}
        if isinstance(policy, Mapping):
            unknown = set(policy) - set(ROLES)
            if unknown:
                raise ValueError(f"Invalid policy: unknown role(s) {sorted(unknown)}, expected keys {list(ROLES)}")
            missing = [r for r in self.roles if r not in policy]
            if missing:
                raise ValueError(f"Invalid policy: missing role(s) {missing}")
            if not all(isinstance(policy[r], Policy) for r in self.roles):
                raise TypeError("Invalid policy: mapping values must be agents.rema.Policy instances")
            out = {r: policy[r] for r in self.roles}
            if len(self.roles) == 2 and (out["meta"] is out["reasoner"]) != self.shared_weights:
                raise ValueError(f"Invalid policy: shared_weights={self.shared_weights} but the mapping gives "
                                 f"{'one' if out['meta'] is out['reasoner'] else 'two'} model(s)")
            return out
        raise TypeError(f"Invalid policy: {policy!r}, expected 'tiny', a Policy or a mapping role -> Policy")

    def _model_roles(self) -> dict[str, list[str]]:
        """Name of each distinct model -> the roles it plays."""
        if self.shared_weights:
            return {"shared" if self.mode == "rema" else "reasoner": list(self.roles)}
        return {r: [r] for r in self.roles}

    def _model_of(self, role: str) -> str:
        for name, roles in self._model_roles().items():
            if role in roles:
                return name
        raise ValueError(f"Invalid role: {role!r}, expected one of {list(self.roles)}")

    def policy(self, role: str) -> Policy:
        """The policy playing ``role``."""
        check_choice("role", role, self.roles)
        return self.policies[role]

    # ------------------------------------------------------------------ data
    def _draw(self, n: int) -> list[ReasoningTask]:
        """The next ``n`` questions of the task stream or of the shuffled dataset."""
        if self._task_stream is not None:
            return self._task_stream.sample(n)
        out = []
        for _ in range(n):
            if not self._task_order:  # reshuffle each epoch
                self._task_order = torch.randperm(len(self.tasks), generator=self._task_generator).tolist()
            out.append(self.tasks[self._task_order.pop()])
        return out

    def _next_tasks(self) -> list[ReasoningTask]:
        if self._phase_tasks is None:
            return self._draw(self.batch_questions)
        out = []
        for _ in range(self.batch_questions):
            if not self._phase_order:  # reshuffle each pass over the phase's filtered questions
                self._phase_order = torch.randperm(len(self._phase_tasks), generator=self._task_generator).tolist()
            out.append(self._phase_tasks[self._phase_order.pop()])
        return out

    def filter_tasks(self, tasks: Sequence[ReasoningTask], role: str) -> tuple[list[ReasoningTask], Tensor]:
        """Algorithm 1's prompt filter: the questions of ``tasks`` whose success rate, measured for the phase
        that trains ``role`` (:func:`rlopt.agents.rema.rollout.success_rates`, ``filter_k`` samples each, drawn
        with the trainer's sampler), lies in ``prompt_filter``; and the rates.

        Raises:
            ValueError: when the filter is off, for an unknown role or no tasks.
        """
        if self.prompt_filter is None:
            raise ValueError("Invalid prompt_filter: None (off); pass prompt_filter=(eps_min, eps_max)")
        check_choice("role", role, ROLES)
        if not tasks:
            raise ValueError("Invalid tasks: no questions to filter")
        rates, tokens = success_rates(self.policies["meta"], self.policies["reasoner"], tasks, role, self.filter_k,
                                      self.sampling.max_new_tokens, self.sampler, self.prompts, self.rewards)
        self.num_filter_tokens += tokens
        self.num_generated_tokens += tokens
        keep = in_range(rates, *self.prompt_filter).nonzero().flatten().tolist()
        return [tasks[i] for i in keep], rates

    def _start_phase(self, role: str) -> dict[str, float]:
        """Filter a fresh pool of candidates for the phase that trains ``role``; returns its statistics."""
        candidates = self._draw(self.filter_pool)
        before = self.num_filter_tokens
        kept, rates = self.filter_tasks(candidates, role)
        stats = {"filter/kept_fraction": len(kept) / len(candidates), "filter/success_rate": float(rates.mean()),
                 "filter/tokens": float(self.num_filter_tokens - before)}
        if not kept:
            # training on nothing would stall the phase: keep the unfiltered candidates and say so
            self.filter_fallbacks += 1
            warnings.warn(f"prompt filter kept no question in {list(self.prompt_filter or ())} for the {role} "
                          f"phase at update {self.num_updates} (mean success rate {stats['filter/success_rate']:.3f});"
                          f" training this phase on the {len(candidates)} unfiltered candidates "
                          f"(fallback {self.filter_fallbacks})", RuntimeWarning, stacklevel=3)
            kept = candidates
        stats["filter/fallbacks"] = float(self.filter_fallbacks)
        self._phase_tasks = kept
        self._phase_order = []
        return stats

    def rollout(self, tasks: Sequence[ReasoningTask], greedy: bool = False, n_plans: int | None = None,
                n_answers: int | None = None, generator: torch.Generator | None = None) -> Rollout:
        """Episodes of the current policies on ``tasks`` (sampled with ``generator``, default the trainer's
        sampler, or greedy with one sample each)."""
        sampling = Sampling(self.sampling.max_new_tokens, self.sampling.temperature, self.sampling.top_p, greedy)
        n_plans = n_plans or (1 if greedy else self.n_plans)
        n_answers = n_answers or (1 if greedy else self.n_answers)
        generator = generator or self.sampler
        if self.mode != "rema":
            return rollout_single_agent(self.policies["reasoner"], tasks, n_plans * n_answers, sampling, generator,
                                        self.prompts, self.rewards, self.mode)
        if self.multi_turn:
            return rollout_multi_turn(self.policies["meta"], self.policies["reasoner"], tasks, n_plans, sampling,
                                      self.max_turns, self.max_prompt_length, generator, self.prompts,
                                      self.rewards)
        return rollout_single_turn(self.policies["meta"], self.policies["reasoner"], tasks, n_plans, n_answers,
                                   sampling, generator, self.prompts, self.rewards)

    # ------------------------------------------------------------------ warm start
    def warm_start(self, steps: int = 300, batch_size: int = 64, lr: float = 3e-3, p_bad_plan: float = 0.3,
                   n_tasks: int | None = None, p_unformatted: float = 0.0, p_leak: float = 0.0) -> dict[str, float]:
        """Supervised warm start of the tiny models on generated demonstrations (cross-entropy on the
        assistant tokens, Adam). Returns the final loss per model. The noise levels are those of
        :func:`rlopt.agents.rema.rollout.demonstrations`.

        Raises:
            ValueError: without the built-in arithmetic tasks (demonstrations need expressions).
        """
        if self._task_stream is None and not all(t.expression is not None for t in self.tasks):
            raise ValueError("Invalid warm start: demonstrations need the built-in arithmetic tasks")
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"Invalid steps: {steps!r}, expected a non-negative integer")
        generator = torch.Generator().manual_seed(self.seed + 3)
        low, high = (self._task_stream.min_operands, self._task_stream.max_operands) if self._task_stream else (2, 4)
        # a pool of distinct demonstration tasks, at most one per example drawn (default cap 4000)
        n_tasks = n_tasks if n_tasks is not None else max(1, min(4000, steps * batch_size))
        pool = ArithmeticTasks(low, high, modulus=self.modulus, seed=self.seed + 4).sample(n_tasks)
        demos = demonstrations(pool, self.mode, generator, p_bad_plan, self.multi_turn, self.prompts, p_unformatted,
                               p_leak)
        losses: dict[str, float] = {}
        for name, roles in self._model_roles().items():
            policy = self.policies[roles[0]]
            pairs = []
            for role in roles:
                for chat, text in demos[role]:
                    prompt = policy.encode_chat(chat)
                    response = policy.encode_chat([*chat, {"role": "assistant", "content": text}],
                                                  add_generation_prompt=False)[len(prompt) - 1 :]
                    # the template renders "<assistant>text<eos>": keep what follows the generation prompt
                    pairs.append((prompt, response[1:]))
            optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
            loss_value = float("nan")
            for _ in range(steps):
                index = torch.randint(len(pairs), (batch_size,), generator=generator).tolist()
                batch = _pad_segments([pairs[i][0] for i in index], [pairs[i][1] for i in index], policy.pad_id,
                                      self.device)
                logp = policy.token_logprobs(batch["ids"], batch["attention"])
                loss = -masked_mean(logp, batch["mask"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_value = float(loss.detach())
            losses[name] = loss_value
        self.references = {}
        return losses

    # ------------------------------------------------------------------ training
    def trained_roles(self, update: int) -> list[str]:
        """Roles updated at ``update``: all (simultaneous), or one by the alternating schedule
        ``roles[(update // switch_every + start) % 2]``."""
        if self.schedule == "simultaneous" or len(self.roles) == 1:
            return list(self.roles)
        start = ROLES.index(self.start_role)
        return [ROLES[(update // self.switch_every + start) % 2]]

    def learn(self, total_updates: int, callback: Callback | None = None, eval_every: int = 0,
              max_samples: int | None = None, max_tokens: int | None = None, tb_log_name: str = "ReMA") -> ReMA:
        """Run ``total_updates`` RL updates (stopping early at ``max_samples`` reasoner samples or
        ``max_tokens`` generated tokens, the prompt filter's included). Evaluates greedily every
        ``eval_every`` updates (0: at the end only if evaluation tasks exist). ``callback(stats)`` returning
        ``False`` stops training."""
        if not isinstance(total_updates, int) or total_updates < 0:
            raise ValueError(f"Invalid total_updates: {total_updates!r}, expected a non-negative integer")
        if self.tensorboard_log is not None and self._logger is None:
            self._logger = tensorboard_logger(_next_run_dir(self.tensorboard_log, tb_log_name))
        if not self.history and (self.eval_tasks or self.ood_tasks):
            self._record_eval()
        for _ in range(total_updates):
            if max_samples is not None and self.num_samples >= max_samples:
                break
            if max_tokens is not None and self.num_generated_tokens >= max_tokens:
                break
            start = time.perf_counter()
            stats = self.train_step()
            stats["time/update_s"] = time.perf_counter() - start
            self._log(stats)
            if eval_every and self.num_updates % eval_every == 0:
                self._record_eval()
            if callback is not None and callback(stats) is False:
                break
        if (self.eval_tasks or self.ood_tasks) and (not self.history or self.history[-1]["update"] != self.num_updates):
            self._record_eval()
        return self

    def train_step(self) -> dict[str, float]:
        """One update: a rollout batch, then ``n_epochs`` optimizer steps of each trained model."""
        if not self.references:  # the reference is the policy at the start of RL (after any warm start)
            for name, roles in self._model_roles().items():
                self.references[name] = self.policies[roles[0]].frozen_copy()
        roles = self.trained_roles(self.num_updates)
        filter_stats: dict[str, float] = {}
        if self.prompt_filter is not None and (self.num_updates % self.switch_every == 0 or self._phase_tasks is None):
            start = time.perf_counter()
            filter_stats = self._start_phase(roles[0])
            filter_stats["time/filter_s"] = time.perf_counter() - start
        tasks = self._next_tasks()
        start = time.perf_counter()
        rollout = self.rollout(tasks)
        stats = dict(rollout.stats)
        stats.update(filter_stats)
        stats["time/rollout_s"] = time.perf_counter() - start
        for name, model_roles in self._model_roles().items():
            active = [r for r in model_roles if r in roles]
            batches = {r: self._role_batch(rollout.role(r), self.policies[r], self.references[name]) for r in
                       model_roles if rollout.role(r)}
            for role, batch in batches.items():
                stats[f"{role}/kl"] = float(masked_mean(k3_kl(batch["old_logp"], batch["ref_logp"]), batch["mask"]))
            if not active:
                continue
            stats.update(self._optimize(name, {r: batches[r] for r in active if r in batches}))
        self.num_updates += 1
        self.num_samples += len(rollout.role("reasoner"))
        self.num_generated_tokens += int(stats["generated_tokens"])
        stats["samples"] = float(self.num_samples)
        stats["tokens"] = float(self.num_generated_tokens)
        return stats

    @torch.no_grad()
    def _role_batch(self, segments: list[Segment], policy: Policy, reference: Policy) -> dict[str, Tensor]:
        batch = _pad_segments([s.prompt for s in segments], [s.response for s in segments], policy.pad_id,
                              self.device)
        if self.temperature == 1.0 and all(s.old_logprobs is not None for s in segments):
            # the sampler's log-probs at temperature 1 are the behaviour log-probs: no extra forward
            old = torch.zeros_like(batch["mask"], dtype=torch.float32)
            for i, s in enumerate(segments):
                assert s.old_logprobs is not None
                start = len(s.prompt) - 1
                old[i, start : start + len(s.response)] = s.old_logprobs.to(old.device)
        else:
            old = policy.token_logprobs(batch["ids"], batch["attention"])
        batch["old_logp"] = old
        batch["ref_logp"] = reference.token_logprobs(batch["ids"], batch["attention"])
        batch["rewards"] = torch.tensor([s.reward for s in segments], dtype=torch.float32, device=self.device)
        batch["groups"] = torch.tensor([s.group for s in segments], device=self.device)
        batch["trajectories"] = torch.tensor([s.trajectory for s in segments], device=self.device)
        mask = batch["mask"]
        if self.algorithm == "grpo":
            adv = grpo_advantages(batch["rewards"], batch["groups"])
            batch["advantages"] = adv[:, None] * mask
        else:
            kl = k3_kl(old, batch["ref_logp"])
            batch["advantages"] = reinforce_pp_advantages(batch["rewards"], mask, kl, self.kl_coef)
        return batch

    def _optimize(self, name: str, batches: dict[str, dict[str, Tensor]]) -> dict[str, float]:
        policy = self.policies[next(iter(batches))]
        reference_used = self.algorithm == "grpo" and self.kl_coef > 0

        def closure() -> Tensor:
            total = torch.zeros((), device=self.device)
            for batch in batches.values():
                logp = policy.token_logprobs(batch["ids"], batch["attention"])
                total = total + policy_loss(logp, batch["old_logp"], batch["advantages"], batch["mask"],
                                            batch["trajectories"], self.clip_eps, self.ratio, self.aggregate)
                if reference_used:
                    total = total + self.kl_coef * masked_mean(k3_kl(logp, batch["ref_logp"]), batch["mask"])
            return total

        optimizer = self.optimizers[name]
        value = float(torch.stack([b["rewards"].mean() for b in batches.values()]).mean())
        stats: dict[str, float] = {}
        for _ in range(self.n_epochs):
            loss = rlopt.closure_step(optimizer, closure, max_grad_norm=self.max_grad_norm, value=value)
        step_size = rlopt.step_stats(optimizer).step_size
        for role in batches:
            stats[f"{role}/loss"] = float(loss.detach())
            stats[f"{role}/step_size"] = step_size
        return stats

    # ------------------------------------------------------------------ evaluation and logging
    @torch.no_grad()
    def evaluate(self, tasks: Sequence[ReasoningTask], batch_size: int = 256, greedy: bool = True,
                 n_samples: int = 1, seed: int = 0) -> dict[str, float]:
        """Accuracy on ``tasks`` (greedy, or the mean over ``n_samples`` sampled episodes per question drawn
        with a generator seeded by ``seed``) and the mean generated tokens per episode.

        The trainer's sampler is untouched, so evaluation never changes the course of training.
        """
        if not tasks:
            raise ValueError("Invalid tasks: the evaluation set is empty")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        episodes = 1 if greedy else n_samples
        correct = 0.0
        tokens = 0.0
        for i in range(0, len(tasks), batch_size):
            chunk = list(tasks[i : i + batch_size])
            rollout = self.rollout(chunk, greedy=greedy, n_plans=episodes, n_answers=1, generator=generator)
            correct += rollout.stats["accuracy"] * len(chunk) * episodes
            tokens += rollout.stats["generated_tokens"]
        return {"accuracy": correct / (len(tasks) * episodes), "tokens_per_question": tokens / (len(tasks) * episodes)}

    def _record_eval(self) -> None:
        row: dict[str, float] = {"update": float(self.num_updates), "samples": float(self.num_samples),
                                 "tokens": float(self.num_generated_tokens)}
        if self.eval_tasks:
            row["accuracy"] = self.evaluate(self.eval_tasks)["accuracy"]
        if self.ood_tasks:
            row["ood_accuracy"] = self.evaluate(self.ood_tasks)["accuracy"]
        self.history.append(row)
        if self._logger is not None:
            write_scalars(self._logger, {f"eval/{key}": row[key] for key in ("accuracy", "ood_accuracy") if key in row},
                          self.num_updates)
        if self.verbose:
            print(json.dumps({k: round(v, 4) for k, v in row.items()}))

    def _log(self, stats: dict[str, float]) -> None:
        if self._logger is not None:
            tagged = {key if "/" in key else f"rollout/{key}": value for key, value in stats.items()}
            write_scalars(self._logger, tagged, self.num_updates)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint atomically (a temporary file in the same directory, then ``os.replace``)."""
        state = {
            "format": 1,
            "kwargs": self._init_kwargs,
            "policy": self._policy_spec,
            "tiny_config": asdict(self.tiny_config),
            "rewards": asdict(self.rewards),
            "prompts": asdict(self.prompts),
            "optimizer": self._optimizer_spec,
            "optimizer_kwargs": self._optimizer_kwargs,
            "tasks": [asdict(t) for t in self.tasks],
            "eval_tasks": [asdict(t) for t in self.eval_tasks],
            "ood_tasks": [asdict(t) for t in self.ood_tasks],
            "models": {n: self.policies[r[0]].state_dict() for n, r in self._model_roles().items()},
            "references": {n: p.state_dict() for n, p in self.references.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "counters": [self.num_updates, self.num_samples, self.num_generated_tokens],
            "filter_state": {"tokens": self.num_filter_tokens, "fallbacks": self.filter_fallbacks,
                             "phase_tasks": None if self._phase_tasks is None else [asdict(t) for t in
                                                                                    self._phase_tasks],
                             "phase_order": list(self._phase_order), "task_order": list(self._task_order),
                             "task_generator": self._task_generator.get_state()},
            "history": self.history,
            "task_stream": None if self._task_stream is None else self._task_stream.generator.get_state(),
            "stream_config": None if self._task_stream is None else [
                self._task_stream.min_operands, self._task_stream.max_operands, self._task_stream.modulus,
                self._task_stream.max_operand, self._task_stream.operators],
            "sampler": self.sampler.get_state(),
        }
        with atomic_write(path) as f:
            torch.save(state, f)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu",
             policy: Policy | Mapping[str, Policy] | None = None, **overrides: Any) -> ReMA:
        """A trainer restored from :meth:`save` (pass ``policy`` for checkpoints of custom policies).

        ``overrides`` replace constructor arguments, e.g. ``rewards=`` for a :class:`RewardConfig` subclass
        (only the fields of the reward settings are stored) or ``tensorboard_log=``.
        """
        try:
            # weights only: tensors and plain containers, never an object whose unpickling runs code
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(f"Invalid checkpoint: {path} holds objects other than tensors and plain data "
                             f"(a ReMA checkpoint never does), so it is refused: {error}") from None
        if not isinstance(state, dict) or state.get("format") != 1:
            raise ValueError(f"Invalid checkpoint: {path} is not a ReMA checkpoint")
        if state["policy"] != "tiny" and policy is None:
            raise ValueError("Invalid policy: this checkpoint holds custom policies, pass policy= to load")
        kwargs = dict(state["kwargs"])
        tasks: Any = [ReasoningTask(**t) for t in state["tasks"]]
        if state["stream_config"] is not None:
            low, high, modulus, max_operand, operators = state["stream_config"]
            tasks = ArithmeticTasks(low, high, modulus, max_operand, operators, seed=int(kwargs["seed"]))
        optimizer = state["optimizer"]
        if "custom" in optimizer.values():
            raise ValueError("Invalid checkpoint: optimizer classes are not stored; rebuild the trainer and load "
                             "its state instead")
        kwargs.update(tiny_config=TinyConfig(**state["tiny_config"]), optimizer=optimizer,
                      optimizer_kwargs=state["optimizer_kwargs"], rewards=RewardConfig(**state["rewards"]),
                      prompts=Prompts(**state["prompts"]),
                      eval_tasks=[ReasoningTask(**t) for t in state["eval_tasks"]],
                      ood_tasks=[ReasoningTask(**t) for t in state["ood_tasks"]], device=device)
        kwargs.update(overrides)
        agent = cls(tasks, policy if policy is not None else "tiny", **kwargs)
        for name, sd in state["models"].items():
            agent.policies[agent._model_roles()[name][0]].load_state_dict(sd)
        for name, sd in state["references"].items():
            reference = agent.policies[agent._model_roles()[name][0]].frozen_copy()
            reference.load_state_dict(sd)
            agent.references[name] = reference
        for name, sd in state["optimizers"].items():
            agent.optimizers[name].load_state_dict(sd)
        agent.num_updates, agent.num_samples, agent.num_generated_tokens = state["counters"]
        filter_state = state.get("filter_state")
        if filter_state is not None:
            agent.num_filter_tokens, agent.filter_fallbacks = filter_state["tokens"], filter_state["fallbacks"]
            phase = filter_state["phase_tasks"]
            agent._phase_tasks = None if phase is None else [ReasoningTask(**t) for t in phase]
            agent._phase_order = list(filter_state["phase_order"])
            agent._task_order = list(filter_state["task_order"])
            agent._task_generator.set_state(filter_state["task_generator"])
        agent.history = list(state["history"])
        if state["task_stream"] is not None and agent._task_stream is not None:
            agent._task_stream.generator.set_state(state["task_stream"])
        agent.sampler.set_state(state["sampler"].to("cpu") if agent.device.type == "cpu" else state["sampler"])
        return agent


def _pad_segments(prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int,
                  device: torch.device) -> dict[str, Tensor]:
    """Right-padded ``prompt + response`` ids, attention mask, and the loss mask over target positions
    ``(N, L - 1)``: 1 exactly on the response tokens."""
    length = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    n = len(prompts)
    ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention = torch.zeros((n, length), dtype=torch.long)
    mask = torch.zeros((n, length - 1), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        attention[i, : len(p) + len(r)] = 1
        mask[i, len(p) - 1 : len(p) - 1 + len(r)] = 1.0
    return {"ids": ids.to(device), "attention": attention.to(device), "mask": mask.to(device)}


def _next_run_dir(root: str, name: str) -> str:
    index = 1
    while os.path.exists(os.path.join(root, f"{name}_{index}")):
        index += 1
    return os.path.join(root, f"{name}_{index}")
