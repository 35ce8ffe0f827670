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
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

import rlopt
from rlopt.agents.common.distributed import resolve_data_parallel, with_process_group
from rlopt.agents.rema.config import ALGORITHMS, MODES, PAPER_FILTER, ReMAConfig
from rlopt.agents.rema.losses import grpo_advantages, k3_kl, masked_mean, policy_loss, reinforce_pp_advantages
from rlopt.agents.rema.policy import Policy, TinyConfig, TinyPolicy
from rlopt.agents.rema.rollout import (
    PAPER_PROMPTS,
    ROLES,
    TINY_PROMPTS,
    Prompts,
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

__all__ = ["ALGORITHMS", "MODES", "PAPER_FILTER", "ReMA", "ReMAConfig"]

Callback = Callable[[dict[str, float]], bool | None]


def _per_role(name: str, value: Any, roles: Sequence[str]) -> dict[str, Any]:
    """``value`` for every role: a mapping keyed by role (checked) or one value for all."""
    if isinstance(value, Mapping):
        unknown = set(value) - set(ROLES)
        if unknown:
            raise ValueError(f"Invalid {name}: unknown role(s) {sorted(unknown)}, expected keys in {list(ROLES)}")
        return {role: value.get(role) for role in roles}
    return dict.fromkeys(roles, value)


class ReMA:
    """The ReMA trainer with ``learn``/``evaluate``/``save``/``load`` in the style of the other agents.

    Args:
        tasks: ``"arithmetic"`` (the built-in task stream of :mod:`rlopt.envs.reasoning`, 2-4 operands), an
            :class:`rlopt.envs.reasoning.ArithmeticTasks` stream, or a non-empty sequence of
            :class:`rlopt.envs.reasoning.ReasoningTask` (e.g. from ``load_jsonl``).
        policy: ``"tiny"`` (built-in character transformers from ``tiny_config``), a :class:`Policy` (copied
            for the second agent when weights are separate) or a mapping ``{"meta": ..., "reasoner": ...}``.
        config: the run's hyperparameters, a :class:`ReMAConfig` (default: its defaults). Its fields may also be
            given as keywords, ``ReMA(n_plans=4, algorithm="grpo")``, which replace those of ``config``.
        optimizer: a name of :data:`rlopt.OPTIMIZERS` or an optimizer class, or a mapping per role.
        optimizer_kwargs: keyword arguments of the optimizer, or a mapping per role.
        prompts: system prompts (default: short ones for tiny models, the
            paper's for Hugging Face models).
        tiny_config: size of the built-in models.
        eval_tasks: in-distribution evaluation tasks (default for ``"arithmetic"``: 128 test-split tasks).
        ood_tasks: out-of-distribution evaluation tasks (default for ``"arithmetic"``: 128 OOD tasks).
        device: torch device of the policies and the sampler.
        tensorboard_log: directory of TensorBoard runs (``None``: no logging).
        verbose: 1 prints a line per evaluation.
        process_group: data parallelism over torch.distributed (``torchrun``), as the other agents take it:
            ``"world"`` (the default) over all processes when a process group is initialized with more than one,
            None to train alone, or a process group. Every rank draws the same ``batch_questions`` questions and
            rolls out its share of them (``batch_questions`` must be a multiple of the ranks), so each question's
            group of samples stays on one rank and group baselines are exact; REINFORCE++'s whitening, the prompt
            filter's success rates, the statistics, the sample and token counts and evaluation are over all
            ranks; gradients are averaged in buckets (as DDP's) and the rlopt rules decide from the ranks' mean.
            The ranks keep identical weights; only rank 0 logs, prints and writes checkpoints.

    Raises:
        TypeError: for a keyword that is neither an argument nor a :class:`ReMAConfig` field.

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
        config: ReMAConfig | None = None,
        *,
        optimizer: Any = "adam",
        optimizer_kwargs: Mapping[str, Any] | None = None,
        prompts: Prompts | None = None,
        tiny_config: TinyConfig | None = None,
        eval_tasks: Sequence[ReasoningTask] | None = None,
        ood_tasks: Sequence[ReasoningTask] | None = None,
        device: str | torch.device = "cpu",
        tensorboard_log: str | None = None,
        verbose: int = 0,
        process_group: Any = "world",
        **overrides: Any,
    ) -> None:
        c = self.config = ReMAConfig.of(config, overrides)
        self.device = torch.device(device)
        self._dp = resolve_data_parallel(process_group, self.device)
        if self._dp is not None:
            if c.batch_questions % self._dp.world_size:
                raise ValueError(f"Invalid batch_questions: {c.batch_questions} questions are split over the "
                                 f"{self._dp.world_size} ranks of the data-parallel run: use a multiple of "
                                 f"{self._dp.world_size}")
            if self._dp.rank != 0:  # one logger and printer: rank 0's
                tensorboard_log, verbose = None, 0
        self.seed = c.seed
        self.mode = c.mode
        self.algorithm = c.algorithm
        self.roles: tuple[str, ...] = ROLES if c.mode == "rema" else ("reasoner",)
        self.shared_weights = bool(c.shared_weights)
        self.schedule = str(c.schedule)
        self.prompt_filter = c.filter_range
        self.filter_k = c.filter_k
        self.filter_pool = int(c.filter_pool or 0)
        self.switch_every = c.switch_every
        self.start_role = c.start_role
        self.multi_turn = c.multi_turn
        self.max_turns = c.max_turns
        self.batch_questions = c.batch_questions
        self.n_plans = c.n_plans
        self.n_answers = c.n_answers
        self.temperature = c.temperature
        self.sampling = Sampling(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p)
        self.clip_eps = c.clip_eps
        self.kl_coef = float(c.kl_coef or 0.0)
        self.ratio = str(c.ratio)
        self.aggregate = str(c.aggregate)
        self.n_epochs = c.n_epochs
        self.max_grad_norm = c.max_grad_norm
        self.rewards = c.rewards
        self.modulus = modulus = c.modulus
        self.verbose = verbose
        self.tensorboard_log = tensorboard_log
        max_new_tokens = c.max_new_tokens

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
        self.max_prompt_length = (c.max_prompt_length if c.max_prompt_length is not None
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
            kwargs = with_process_group(opt_names[roles[0]] or "adam", opt_kwargs[roles[0]], self._dp)
            self.optimizers[name] = rlopt.build_optimizer(opt_names[roles[0]] or "adam",
                                                          self.policies[roles[0]].parameters(), **kwargs)
        self._optimizer_spec = {r: opt_names[r] if isinstance(opt_names[r], str) else "custom" for r in self.roles}
        self._optimizer_kwargs = {r: dict(opt_kwargs[r] or {}) for r in self.roles}

        self.references: dict[str, Policy] = {}
        # each rank its own stream of samples; rank 0's is that of a run alone
        sampler_seed = self.seed + 2 if self.rank == 0 else int(
            np.random.SeedSequence([self.seed + 2, self.rank]).generate_state(1)[0])
        self.sampler = torch.Generator(device=self.device).manual_seed(sampler_seed)
        self._broadcast_weights()
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
        self._init_kwargs = {**c.stored(), "verbose": verbose, "tensorboard_log": tensorboard_log}

    # ------------------------------------------------------------------ data parallelism
    @property
    def rank(self) -> int:
        """This process's rank in the data-parallel run (0 when training alone)."""
        return 0 if self._dp is None else self._dp.rank

    @property
    def world_size(self) -> int:
        """Processes in the data-parallel run (1 when training alone)."""
        return 1 if self._dp is None else self._dp.world_size

    def _broadcast_weights(self) -> None:
        """Rank 0's weights on every rank (after construction and a warm start)."""
        if self._dp is not None:
            for roles in self._model_roles().values():
                self._dp.broadcast_module(self.policies[roles[0]])

    def _share(self, items: Sequence[Any]) -> list[Any]:
        """This rank's share of ``items`` (every ``world_size``-th from its rank; all of them alone)."""
        return list(items) if self._dp is None else list(items[self._dp.rank :: self._dp.world_size])

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
        rates, tokens = success_rates(self.policies["meta"], self.policies["reasoner"], self._share(tasks), role,
                                      self.filter_k, self.sampling.max_new_tokens, self.sampler, self.prompts,
                                      self.rewards)
        if self._dp is not None:  # every rank measured its share: the rates in the order of tasks, on every rank
            local = torch.cat((rates.double().cpu(), torch.tensor([float(tokens)], dtype=torch.float64)))
            parts = self._dp.gather(local)
            full = torch.empty(len(tasks), dtype=torch.float64)
            tokens = 0
            for r, part in enumerate(parts):
                full[r :: self._dp.world_size] = part[:-1].cpu()
                tokens += int(part[-1])
            rates = full.to(rates.device)
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
        self._broadcast_weights()  # every rank ran the same steps; rank 0's weights make sure on any device
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
            stop = callback is not None and callback(stats) is False
            if self._dp is not None:  # the ranks stop together
                stop = bool(self._dp.max(torch.tensor([float(stop)]))[0])
            if stop:
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
        tasks = self._share(self._next_tasks())  # the same questions drawn on every rank; this rank's share
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
        samples = len(rollout.role("reasoner"))
        if self._dp is not None:  # statistics of all ranks (means), counts of all ranks (sums)
            keys = sorted(stats)
            totals = self._dp.sum(torch.tensor([samples, stats["generated_tokens"], *(stats[k] for k in keys)],
                                               dtype=torch.float64)).tolist()
            samples, generated = int(totals[0]), totals[1]
            stats = {k: v / self._dp.world_size for k, v in zip(keys, totals[2:], strict=True)}
            stats["generated_tokens"] = generated
        self.num_samples += samples
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
            batch["advantages"] = reinforce_pp_advantages(batch["rewards"], mask, kl, self.kl_coef,
                                                          None if self._dp is None else self._dp.sum)
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
        hook = None if self._dp is None else self._dp.average_gradients
        for _ in range(self.n_epochs):
            loss = rlopt.closure_step(optimizer, closure, max_grad_norm=self.max_grad_norm, value=value,
                                      grad_hook=hook)
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
        generator = torch.Generator(device=self.device).manual_seed(seed + 7919 * self.rank)
        episodes = 1 if greedy else n_samples
        correct = 0.0
        tokens = 0.0
        share = self._share(tasks)  # each rank evaluates its share; the counts are summed over the ranks
        for i in range(0, len(share), batch_size):
            chunk = share[i : i + batch_size]
            rollout = self.rollout(chunk, greedy=greedy, n_plans=episodes, n_answers=1, generator=generator)
            correct += rollout.stats["accuracy"] * len(chunk) * episodes
            tokens += rollout.stats["generated_tokens"]
        if self._dp is not None:
            correct, tokens = self._dp.sum(torch.tensor([correct, tokens], dtype=torch.float64)).tolist()
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
        """Write a checkpoint atomically (:func:`rlopt.agents.rema.checkpoint.save`)."""
        from rlopt.agents.rema import checkpoint

        if self.rank == 0:  # the ranks hold the same weights: one checkpoint, written by rank 0
            checkpoint.save(self, path)
        if self._dp is not None:
            import torch.distributed as dist

            dist.barrier(group=self._dp.group)  # written before any rank goes on (and, say, reads it)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu",
             policy: Policy | Mapping[str, Policy] | None = None, **overrides: Any) -> ReMA:
        """A trainer restored from :meth:`save` (pass ``policy`` for checkpoints of custom policies).

        ``overrides`` replace constructor arguments, e.g. ``rewards=`` for a :class:`RewardConfig` subclass
        (only the fields of the reward settings are stored) or ``tensorboard_log=``. The trainer trains alone unless
        ``process_group=`` says otherwise (every rank then loads). See :func:`rlopt.agents.rema.checkpoint.load`.
        """
        from rlopt.agents.rema import checkpoint

        overrides.setdefault("process_group", None)  # one rank may load alone; pass "world" to resume data-parallel
        return checkpoint.load(cls, path, device=device, policy=policy, **overrides)


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
