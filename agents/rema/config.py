"""Every hyperparameter of a ReMA run in one validated, frozen dataclass: :class:`ReMAConfig`.

:class:`rlopt.agents.rema.ReMA` takes a config (or its fields as keywords); the defaults that depend on other
fields (``shared_weights``, ``schedule``, ``kl_coef``, ``ratio``, ``aggregate``, ``filter_pool``, the prompt
filter's range) are resolved on construction, so a config says exactly what a run does and is what a
checkpoint stores.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlopt.agents.rema.rollout import ROLES, RewardConfig
from rlopt.validation import check_choice, check_int, check_open, check_positive

__all__ = ["ALGORITHMS", "MODES", "PAPER_FILTER", "SCHEDULES", "ReMAConfig"]

ALGORITHMS = ("reinforce++", "grpo")
MODES = ("rema", "vrp", "mrp")
SCHEDULES = ("alternate", "simultaneous")
#: the success-rate range of Algorithm 1's prompt filter in the paper's MATH runs (App. D.1)
PAPER_FILTER = (0.2, 0.8)


def _filter_range(prompt_filter: object) -> tuple[float, float] | None:
    """``(eps_min, eps_max)`` of a ``prompt_filter`` value, or ``None`` (off)."""
    if prompt_filter is None or prompt_filter is False or prompt_filter == "off":
        return None
    if prompt_filter is True or prompt_filter == "on":
        return PAPER_FILTER
    if (isinstance(prompt_filter, (str, bytes)) or not isinstance(prompt_filter, Sequence)
            or len(prompt_filter) != 2
            or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in prompt_filter)):
        raise ValueError(f"Invalid prompt_filter: {prompt_filter!r}, expected None/'off', True/'on' "
                         f"(= {PAPER_FILTER}) or a pair (eps_min, eps_max) of numbers")
    eps_min, eps_max = float(prompt_filter[0]), float(prompt_filter[1])
    if not (math.isfinite(eps_min) and math.isfinite(eps_max) and 0.0 <= eps_min <= eps_max <= 1.0):
        raise ValueError(f"Invalid prompt_filter: {prompt_filter!r}, expected 0 <= eps_min <= eps_max <= 1")
    return eps_min, eps_max


@dataclass(frozen=True)
class ReMAConfig:
    """The hyperparameters of a ReMA run (see :class:`rlopt.agents.rema.ReMA` for what each does).

    Attributes:
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
        max_grad_norm: gradient clipping for torch optimizers (rlopt's rules are not clipped).
        rewards: the reward settings (:class:`rlopt.agents.rema.RewardConfig`).
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
        modulus: modulus of the built-in tasks (``None``: integers).
        seed: seed of the task stream, the initial weights and the sampler.

    Raises:
        ValueError: naming the field, for a value out of its range or a combination that cannot run.

    Example:
        >>> config = ReMAConfig(algorithm="grpo", n_plans=4)
        >>> config.shared_weights, config.schedule, config.ratio, config.kl_coef
        (True, 'simultaneous', 'turn', 0.0)
    """

    mode: str = "rema"
    algorithm: str = "reinforce++"
    shared_weights: bool | None = None
    schedule: str | None = None
    switch_every: int = 10
    start_role: str = "meta"
    multi_turn: bool = False
    max_turns: int = 8
    batch_questions: int = 16
    n_plans: int = 2
    n_answers: int = 4
    max_new_tokens: int = 72
    max_prompt_length: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    clip_eps: float = 0.2
    kl_coef: float | None = None
    ratio: str | None = None
    aggregate: str | None = None
    n_epochs: int = 1
    max_grad_norm: float | None = 1.0
    rewards: RewardConfig = field(default_factory=RewardConfig)
    prompt_filter: tuple[float, float] | bool | str | None = None
    filter_k: int = 4
    filter_pool: int | None = None
    modulus: int | None = 10
    seed: int = 0
    #: the fields as given, before the dependent defaults were resolved (what ``of`` rebuilds from)
    requested: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "requested", {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                               if f.init})
        check_choice("mode", self.mode, MODES)
        check_choice("algorithm", self.algorithm, ALGORITHMS)
        check_choice("start_role", self.start_role, ROLES)
        if self.schedule is not None:
            check_choice("schedule", self.schedule, SCHEDULES)
        if self.ratio is not None:
            check_choice("ratio", self.ratio, ("turn", "token"))
        if self.aggregate is not None:
            check_choice("aggregate", self.aggregate, ("trajectory", "token"))
        for name in ("switch_every", "max_turns", "batch_questions", "n_plans", "n_answers", "max_new_tokens",
                     "n_epochs", "filter_k"):
            check_int(name, getattr(self, name), 1)
        check_int("filter_pool", self.filter_pool, 1, allow_none=True)
        check_int("max_prompt_length", self.max_prompt_length, 1, allow_none=True)
        check_int("seed", self.seed, 0)
        check_positive("temperature", self.temperature)
        check_open("top_p", self.top_p, 0.0, 1.0 + 1e-12)
        check_open("clip_eps", self.clip_eps, 0.0, 1.0)
        check_positive("max_grad_norm", self.max_grad_norm, allow_none=True)
        if self.kl_coef is not None and not (isinstance(self.kl_coef, (int, float)) and self.kl_coef >= 0):
            raise ValueError(f"Invalid kl_coef: {self.kl_coef!r}, expected a number >= 0 or None")
        if self.modulus is not None:
            check_int("modulus", self.modulus, 2, allow_none=True)
        if not isinstance(self.rewards, RewardConfig):
            raise TypeError(f"Invalid rewards: expected a RewardConfig, got {type(self.rewards).__name__}")
        if self.multi_turn and self.mode != "rema":
            raise ValueError(f"Invalid multi_turn: True needs mode='rema', got mode={self.mode!r}")
        if self.multi_turn and self.n_answers != 1:
            raise ValueError(f"Invalid n_answers: {self.n_answers}, expected 1 with multi_turn=True (one reasoner "
                             "per episode)")
        if self.multi_turn and self.rewards.meta_reward != "correctness":
            raise ValueError(f"Invalid rewards: meta_reward={self.rewards.meta_reward!r} needs several reasoner "
                             "answers per plan; multi-turn episodes use the outcome reward (meta_reward='correctness')")
        if self.algorithm == "grpo" and self.n_plans * (1 if self.mode == "rema" else self.n_answers) < 2:
            raise ValueError("Invalid n_plans: GRPO needs groups of at least 2 samples per question")
        grpo = self.algorithm == "grpo"
        shared = True if self.mode != "rema" else (grpo if self.shared_weights is None else bool(self.shared_weights))
        schedule = self.schedule or ("simultaneous" if shared else "alternate")
        prompt_filter = _filter_range(self.prompt_filter)
        if prompt_filter is not None and (self.mode != "rema" or schedule != "alternate" or self.multi_turn):
            raise ValueError(f"Invalid prompt_filter: Algorithm 1's filter is for single-turn ReMA with the "
                             f"alternating schedule, got mode={self.mode!r}, schedule={schedule!r}, "
                             f"multi_turn={self.multi_turn}")
        resolved = {
            "shared_weights": shared,
            "schedule": schedule,
            "kl_coef": float(self.kl_coef if self.kl_coef is not None else (0.0 if grpo else 0.01)),
            "ratio": self.ratio or ("turn" if grpo else "token"),
            "aggregate": self.aggregate or ("trajectory" if grpo else "token"),
            "prompt_filter": prompt_filter,
            "filter_pool": self.filter_pool or self.batch_questions * self.switch_every,
            "temperature": float(self.temperature),
        }
        for name, value in resolved.items():
            object.__setattr__(self, name, value)

    @property
    def filter_range(self) -> tuple[float, float] | None:
        """The prompt filter's success-rate range ``(eps_min, eps_max)``, or ``None`` when it is off."""
        return _filter_range(self.prompt_filter)

    @classmethod
    def of(cls, config: ReMAConfig | None = None, overrides: Mapping[str, Any] | None = None) -> ReMAConfig:
        """``config`` (default: the defaults) with the fields in ``overrides`` replaced.

        Raises:
            TypeError: naming an override that is not a field.
        """
        base = cls() if config is None else config
        if not isinstance(base, cls):
            raise TypeError(f"Invalid config: expected a ReMAConfig, got {type(base).__name__}")
        overrides = dict(overrides or {})
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"Invalid argument(s) {unknown}: expected ReMA's own arguments or ReMAConfig fields "
                            f"({', '.join(sorted(names))})")
        if config is not None and not overrides:
            return base
        # rebuilt from what was asked for, so an override also moves the defaults that depend on it
        return cls(**{**base.requested, **overrides})

    def stored(self) -> dict[str, Any]:
        """The fields as plain data (the rewards as a dict), as a checkpoint keeps them."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        data["rewards"] = dataclasses.asdict(self.rewards)
        return data
