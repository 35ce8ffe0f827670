"""``OnPolicyAgent``: the stable-baselines3 ``BaseAlgorithm`` subclass every agent here builds on.

It owns what the algorithms share: env resolution, the device-resident rollout loop with truncation
bootstrapping, the optimizers (any rlopt step size, or any ``torch.optim`` class), minibatch stepping with a
closure, logging, seeding and the saved RNG state. An algorithm subclass implements its minibatch losses and
its ``train`` loop, and little else.

Because the class is an SB3 ``BaseAlgorithm``, SB3's ``evaluate_policy``, callbacks (``EvalCallback``,
``CheckpointCallback``, ``CallbackList``), logger (``configure``, ``tensorboard_log``) and zip ``save``/
``load`` work unchanged.
"""

from __future__ import annotations

import inspect
import math
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HumanOutputFormat, Logger
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback
from stable_baselines3.common.utils import explained_variance, get_device, safe_mean
from stable_baselines3.common.vec_env import VecEnv

import rlopt
from rlopt._atomic import atomic_write
from rlopt.agents.common.buffer import RolloutBatch, RolloutBuffer
from rlopt.agents.common.distributed import DataParallel, resolve_data_parallel, with_process_group
from rlopt.agents.common.env_util import Stepper, check_env_kwargs, resolve_env, to_sb3
from rlopt.agents.common.optim import (
    build_optimizer,
    check_optimizer,
)
from rlopt.agents.common.policies import ActorCriticPolicy, check_spaces
from rlopt.agents.common.policy_loss import approx_kl, surrogate_infimum
from rlopt.agents.common.serialization import safe_custom_objects
from rlopt.rules.policy_polyak import return_target
from rlopt.validation import check_at_least, check_closed, check_int, check_positive

SelfOnPolicyAgent = TypeVar("SelfOnPolicyAgent", bound="OnPolicyAgent")


class NumpyView:
    """A tensor that becomes a numpy array when read (``np.asarray``, indexing, ``len``, iteration)."""

    __slots__ = ("_tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor = tensor

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self._tensor.detach().cpu().numpy()
        return array if dtype is None else array.astype(dtype)

    def __len__(self) -> int:
        return int(self._tensor.shape[0])

    def __getitem__(self, index: Any) -> Any:
        return np.asarray(self)[index]

    def __iter__(self) -> Any:
        return iter(np.asarray(self))


class StepInfos(Sequence[dict[str, Any]]):
    """SB3's per-env ``infos`` of one batched step, built when a callback reads them: for every copy
    ``TimeLimit.truncated`` (truncated and not terminated, as SB3's ``DummyVecEnv`` reports it)."""

    def __init__(self, terminated: torch.Tensor, truncated: torch.Tensor) -> None:
        self._terminated, self._truncated = terminated, truncated
        self._built: list[dict[str, Any]] | None = None

    def _infos(self) -> list[dict[str, Any]]:
        if self._built is None:
            time_limit = (self._truncated & ~self._terminated).detach().cpu().numpy()
            self._built = [{"TimeLimit.truncated": bool(t)} for t in time_limit]
        return self._built

    def __len__(self) -> int:
        return int(self._terminated.shape[0])

    def __getitem__(self, index: Any) -> Any:
        return self._infos()[index]


def _check_flags(use_sde: Any, sde_sample_freq: Any, normalize_reward: Any) -> None:
    for name, flag in (("use_sde", use_sde), ("normalize_reward", normalize_reward)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"Invalid {name}: {flag!r}, expected True or False")
    if isinstance(sde_sample_freq, bool) or not isinstance(sde_sample_freq, (int, np.integer)) or (
        sde_sample_freq < 1 and sde_sample_freq != -1
    ):
        raise ValueError(f"Invalid sde_sample_freq: {sde_sample_freq!r}, expected -1 (once per rollout) or an int >= 1")


class FolderlessLoggerMixin(BaseAlgorithm):
    """SB3's ``_setup_learn`` without an empty log directory per ``learn`` call.

    SB3's default logger creates ``<tempdir>/SB3-<date>`` on every ``learn`` even when it writes no file
    (``verbose`` 0 or 1 without ``tensorboard_log``). Here that logger (stdout at ``verbose >= 1``, else silent)
    is built without a folder; a logger from ``set_logger`` or a TensorBoard run is SB3's as before. Mixed into
    every agent here and into :class:`rlopt.agents.sb3.PPO`.
    """

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        custom = self._custom_logger
        if not custom and self.tensorboard_log is None:
            self._logger = Logger(folder=None, output_formats=[HumanOutputFormat(sys.stdout)] if self.verbose else [])
            self._custom_logger = True
        try:
            return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        finally:
            self._custom_logger = custom


class OnPolicyAgent(FolderlessLoggerMixin):
    """Base of :class:`rlopt.agents.PPO`, :class:`rlopt.agents.A2C` and :class:`rlopt.agents.REINFORCE`.

    Args:
        policy: ``"MlpPolicy"`` or an :class:`~agents.common.policies.ActorCriticPolicy` subclass.
        env: an env id, a ``gymnasium.vector.VectorEnv`` (``rlopt.envs.TorchVecEnv`` included), a Gymnasium env
            or an SB3 ``VecEnv``; None only when loading a model for prediction.
        optimizer: ``"adam"``, ``"sgd"``, ``"sls"``, ``"sps"``, ``"ponos"``, ``"polyak"``, ``"adasls"`` or
            a ``torch.optim.Optimizer`` subclass. With ``"polyak"`` (:class:`rlopt.PolyakPG`) the policy
            loss takes the Polyak step and the critic (if any) is fitted by Adam at ``learning_rate``.
        optimizer_kwargs: keyword arguments of the optimizer (e.g. ``{"lr": 1e-3}`` for Adam, ``{"c": 0.5}``
            for SPS).
        learning_rate: ``lr`` of ``"adam"``/``"sgd"`` (and of the critic's Adam under ``"polyak"``): a float or
            an SB3 schedule, a callable of the remaining progress (1 at the start, 0 at the end). The rlopt
            rules pick their own step sizes and ignore it.
        n_envs: number of envs when ``env`` is an id (ignored otherwise).
        n_steps: rollout length per env.
        gamma: discount factor.
        gae_lambda: GAE parameter.
        ent_coef: entropy bonus coefficient.
        vf_coef: value loss coefficient.
        max_grad_norm: gradient clipping for torch optimizers (rlopt rules adapt to the norm themselves).
        normalize_advantage: normalize advantages (per minibatch for PPO, per batch for A2C/REINFORCE).
        separate_critic: step the policy loss and the value loss with two optimizers of the same kind
            (two step sizes) instead of one optimizer on ``policy_loss + vf_coef * value_loss``. With a
            line search on the joint loss the value term, whose scale follows the returns, sets the step
            size and the policy barely moves; separate steps decouple the two scales. Default (None): separate
            for the tuning-free rules (``"sls"``, ``"adasls"``, ``"ponos"``, ``"sps"``; ``"polyak"`` fits the
            critic by Adam), joint for ``"adam"``/``"sgd"``. SPS on the joint loss took its step from the
            value loss's gap to 0 (PPO on CartPole-v1 ended at 336/275/354 on 3 seeds).
        use_sde: generalized state-dependent exploration (gSDE, ``Box`` actions only): the policy's noise is a
            linear function of its last hidden features, drawn anew at the start of each rollout and every
            ``sde_sample_freq`` steps (see :class:`rlopt.agents.common.policies.ActorCriticPolicy`), as
            stable-baselines3's ``use_sde``. The RL Zoo uses it for PPO and A2C on MountainCarContinuous-v0
            and Pendulum-v1.
        sde_sample_freq: with ``use_sde``, draw new noise every this many env steps of a rollout (-1: only at
            the start of each rollout).
        normalize_reward: train on rewards divided by the running standard deviation of each env copy's
            discounted return and clipped to ``[-clip_reward, clip_reward]``, as stable-baselines3's
            ``VecNormalize(norm_reward=True)`` (the reward half of the RL Zoo's ``normalize: true``; the
            observation half is ``policy_kwargs={"normalize_obs": True}``). The statistics are updated step by
            step as ``VecNormalize`` does, and saved with the model; episode returns, logs and evaluations stay in
            the env's units. Not with REINFORCE.
        clip_reward: bound of the normalised rewards.
        policy_kwargs: keyword arguments of the policy (``net_arch``, ``activation_fn``, ...).
        stats_window_size: episodes averaged in ``rollout/ep_rew_mean``.
        tensorboard_log: TensorBoard log folder (SB3's convention: ``{folder}/{tb_log_name}_{i}``).
        verbose: 0 silent, 1 SB3's stdout table.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... where the policy, buffers and (for an env id) the
            batched env live.
        seed: seed of the network initialization, the sampling/minibatch generator and the env's first
            reset. The global RNGs are never reseeded. In a data-parallel run rank 0's seed (or, with None, its
            drawn seed) is used on every rank: the network starts the same everywhere, and rank ``r`` seeds its
            env copies ``seed + r * n``, ..., as one process would seed all of them (``n`` copies per rank),
            and its sampling generator from ``(seed, r)``.
        env_kwargs: keyword arguments of the env when ``env`` is an id, as the RL Zoo's ``env_kwargs``: for a
            batched env those of ``rlopt.envs.make`` (``max_episode_steps``, ``compile=True`` for one fused kernel
            per step, ``dtype``, ``threads``, Pendulum's ``g``), else the Gymnasium env's constructor keywords.
        process_group: data parallelism over torch.distributed (``torchrun``). ``"world"`` (the default): over
            all processes when a process group is initialized with more than one, else none; None: this process
            trains alone; or a process group. Each rank steps its own share of the env copies (for an env id,
            ``n_envs`` and PPO's ``batch_size`` are totals over the ranks, split evenly; an env object is this
            rank's share), gradients and every statistic a decision is taken from are averaged over the ranks
            (:mod:`rlopt.agents.common.distributed`), and the ranks keep identical parameters. Only rank 0 logs
            (``tensorboard_log``, ``verbose``); ``num_timesteps`` counts the steps of all ranks.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"MlpPolicy": ActorCriticPolicy}
    policy: ActorCriticPolicy
    rollout_buffer: RolloutBuffer
    #: whether the algorithm fits a critic (REINFORCE does not)
    uses_critic: ClassVar[bool] = True
    #: the algorithm's name in error messages
    algorithm_name: ClassVar[str] = "OnPolicyAgent"
    #: ``max_kl`` of the policy's line searches unless ``optimizer_kwargs`` sets one (see
    #: :meth:`_policy_optimizer_kwargs`); None: no trust region
    DEFAULT_MAX_KL: ClassVar[float | None] = None
    #: ``max_kl`` of :class:`rlopt.PolyakPG` on the policy unless ``optimizer_kwargs`` sets one; None: its Armijo
    #: check alone
    POLYAK_MAX_KL: ClassVar[float | None] = None

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str | Any | None,
        optimizer: str | type[torch.optim.Optimizer] = "adam",
        optimizer_kwargs: dict[str, Any] | None = None,
        learning_rate: float | Callable[[float], float] = 3e-4,
        n_envs: int | None = None,
        n_steps: int = 128,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float | None = 0.5,
        normalize_advantage: bool = True,
        separate_critic: bool | None = None,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        normalize_reward: bool = False,
        clip_reward: float = 10.0,
        policy_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        device: torch.device | str = "auto",
        seed: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        process_group: Any = "world",
        _init_setup_model: bool = True,
    ) -> None:
        # validate everything before building anything
        self.optimizer_name = check_optimizer(optimizer)
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        if not (callable(learning_rate) or float(learning_rate) > 0):
            raise ValueError(f"Invalid learning_rate: {learning_rate!r}, expected a positive number or a schedule")
        self.n_steps = check_int("n_steps", n_steps, 1)
        if n_envs is not None:
            check_int("n_envs", n_envs, 1)
        self.gamma = check_closed("gamma", gamma, 0.0, 1.0)
        self.gae_lambda = check_closed("gae_lambda", gae_lambda, 0.0, 1.0)
        check_at_least("ent_coef", ent_coef, 0.0)
        check_at_least("vf_coef", vf_coef, 0.0)
        check_at_least("max_grad_norm", max_grad_norm, 0.0, allow_none=True)
        self.ent_coef = float(ent_coef)
        self.vf_coef = float(vf_coef)
        self.max_grad_norm = max_grad_norm
        self.normalize_advantage = normalize_advantage
        if separate_critic is None:
            separate_critic = rlopt.optimizer_spec(self.optimizer_name).tuning_free
        self.separate_critic = bool(separate_critic)
        if isinstance(policy, str) and policy not in self.policy_aliases:
            raise ValueError(f"Invalid policy: {policy!r}, expected one of {list(self.policy_aliases)}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"Invalid seed: {seed!r}, expected an int or None")
        self.env_kwargs = check_env_kwargs(env_kwargs)
        _check_flags(use_sde, sde_sample_freq, normalize_reward)
        self.normalize_reward = bool(normalize_reward)
        self.clip_reward = check_positive("clip_reward", clip_reward)
        if use_sde:
            policy_kwargs = {**(policy_kwargs or {}), "use_sde": True}
        # SB3's load() builds the model with _init_setup_model=False: a loaded model trains alone, so that one rank
        # may load and evaluate a checkpoint without the others (a data-parallel build talks to every rank)
        self._dp = resolve_data_parallel(process_group if _init_setup_model else None, get_device(device))
        if self._dp is not None:
            if seed is None:
                seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
            seed = self._dp.broadcast_int(int(seed))
            if self.rank != 0:  # one logger: rank 0's
                tensorboard_log, verbose = None, 0
        self._stepper: Stepper | None = None
        vec_env: VecEnv | None = None
        if env is not None:
            local_envs = n_envs
            if isinstance(env, str) and self._dp is not None:
                total = n_envs or 1
                if total % self.world_size:
                    raise ValueError(f"Invalid n_envs: {total} env copies cannot be split evenly over the "
                                     f"{self.world_size} ranks of the data-parallel run: use a multiple of "
                                     f"{self.world_size}")
                local_envs = total // self.world_size
            env_seed = None if seed is None else int(seed) + self.rank * (local_envs or 1)
            vec_env, self._stepper = resolve_env(env, local_envs, get_device(device), env_seed, self.env_kwargs)
            check_spaces(vec_env.observation_space, vec_env.action_space, self.algorithm_name)
            if self._dp is not None:
                self._dp.check_same("the number of env copies per rank", self._stepper.num_envs)
        super().__init__(
            policy=policy,
            env=vec_env,
            learning_rate=learning_rate,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            support_multi_env=True,
            seed=seed,
            use_sde=bool(use_sde),
            sde_sample_freq=int(sde_sample_freq),
            supported_action_spaces=(spaces.Discrete, spaces.Box),
        )
        self._polyak = rlopt.optimizer_spec(self.optimizer_name).needs_value
        self._generator_state: torch.Tensor | None = None
        self._ep_return: torch.Tensor | None = None
        self._ep_length: torch.Tensor | None = None
        self._env_seeded = False
        self._return_estimate = float("nan")
        # normalize_reward: (count, mean, var) of the discounted returns from SB3's RunningMeanStd start (here, not
        # in _setup_model: SB3's load sets the saved attributes before it calls _setup_model)
        self._reward_stats = torch.tensor([1e-4, 0.0, 1.0], dtype=torch.float64, device=self.device)
        if _init_setup_model:
            self._setup_model()

    @property
    def rank(self) -> int:
        """This process's rank in the data-parallel run (0 when training alone)."""
        dp: DataParallel | None = getattr(self, "_dp", None)
        return 0 if dp is None else dp.rank

    @property
    def world_size(self) -> int:
        """Processes in the data-parallel run (1 when training alone)."""
        dp: DataParallel | None = getattr(self, "_dp", None)
        return 1 if dp is None else dp.world_size

    @classmethod
    def tuned(
        cls: type[SelfOnPolicyAgent],
        env: str,
        optimizer: str | type[torch.optim.Optimizer] = "adam",
        policy: str | type[ActorCriticPolicy] = "MlpPolicy",
        **overrides: Any,
    ) -> SelfOnPolicyAgent:
        """The agent with the tuned settings of ``agents/hyperparams.yaml`` for ``env`` and ``optimizer`` (what
        ``rlopt train`` uses), ``overrides`` on top; ``model.tuned_timesteps`` is the recorded training budget.

        With no entry for the pair the constructor's defaults apply and ``tuned_timesteps`` is None.

        Example:
            >>> from rlopt import agents
            >>> model = agents.PPO.tuned("CartPole-v1", optimizer="sls", seed=0)
            >>> model.n_envs, model.tuned_timesteps
            (8, 100000)
        """
        from rlopt.agents.hyperparams import hyperparams

        params = hyperparams(cls.algorithm_name, env, optimizer)
        total = params.pop("total_timesteps", None)
        params.update(overrides)
        model = cls(policy, env, optimizer=optimizer, **params)
        model.tuned_timesteps = None if total is None else int(total)
        return model

    # ----------------------------------------------------------------------------------------------- setup
    def _setup_model(self) -> None:
        # saved with the model (plain JSON), so that load() refuses a checkpoint of another algorithm
        self._saved_by = f"rlopt.agents.{self.algorithm_name}"
        self.tuned_timesteps: int | None = getattr(self, "tuned_timesteps", None)
        self._polyak = rlopt.optimizer_spec(self.optimizer_name).needs_value
        self._setup_lr_schedule()
        if self.seed is not None:
            self._init_seed = int(self.seed)
        else:
            self._init_seed = int(np.random.SeedSequence().generate_state(1)[0])
        # the network initialization draws from the global RNG: fork it so user code is unaffected
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._init_seed)
            self.policy = self.policy_class(  # type: ignore[assignment]
                self.observation_space, self.action_space, **self.policy_kwargs
            )
        self.policy = self.policy.to(self.device)
        dp = getattr(self, "_dp", None)
        if dp is not None:
            dp.broadcast_module(self.policy)  # identical from the first step, whatever each rank's seed
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(self._init_seed if dp is None or dp.rank == 0 else
                                    int(np.random.SeedSequence([self._init_seed, dp.rank]).generate_state(1)[0]))
        actor_params = self.policy.actor_parameters()
        critic_params = self.policy.critic_parameters() if self.uses_critic else []
        self.critic_optimizer: torch.optim.Optimizer | None = None
        if self._polyak or self.separate_critic or not self.uses_critic:
            self.optimizer = self._build_optimizer(self.optimizer_name, actor_params, self._policy_optimizer_kwargs())
            if critic_params:
                # the Polyak policy-gradient step is a rule for the return, not for a regression loss
                critic_rule = "adam" if self._polyak else self.optimizer_name
                critic_kwargs = None if self._polyak else self._critic_optimizer_kwargs()
                self.critic_optimizer = self._build_optimizer(critic_rule, critic_params, critic_kwargs)
        else:
            self.optimizer = self._build_optimizer(
                self.optimizer_name, actor_params + critic_params, self._rule_kwargs(self.optimizer_kwargs))
        if self.env is not None:
            self._build_buffer()

    def _build_optimizer(self, name: Any, params: list[torch.nn.Parameter], kwargs: dict[str, Any] | None
                         ) -> torch.optim.Optimizer:
        """:func:`build_optimizer` at the agent's learning rate; an rlopt rule decides over the agent's process
        group (its ranks' mean of the losses), or alone when the agent trains alone, unless ``kwargs`` says."""
        kwargs = with_process_group(name, kwargs, getattr(self, "_dp", None))
        return build_optimizer(name, params, kwargs, self.lr_schedule(1.0))

    def _minibatches_per_pass(self) -> int | None:
        """Optimizer steps per pass over one rollout (PPO: its minibatches; A2C: 1), or None to leave SLS its own
        default (REINFORCE)."""
        return None

    def _rule_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` plus ``n_batches_per_epoch`` = the steps of one pass over a rollout, for a rule that takes it
        (SLS and AdaSLS's ``reset="increase"``: the step may grow by ``gamma`` per epoch) and is not given one,
        in an agent whose update passes over the rollout several times (PPO).

        SLS's default (500) counts the minibatches of a supervised epoch. On PPO's 8 minibatches per pass it let
        the step grow by 1.1x per update while backtracks shrank it: PPO on Pendulum-v1 ended at -1038/-1029 on
        seeds 0-1 (random -1070), against -347/-251 with the rollout's own count.
        """
        kwargs = dict(kwargs)
        cls = rlopt.optimizer_spec(self.optimizer_name).cls
        passes = self._minibatches_per_pass()
        if passes is not None and isinstance(cls, type) and "n_batches_per_epoch" in inspect.signature(cls).parameters:
            kwargs.setdefault("n_batches_per_epoch", passes)
        return kwargs

    def _policy_optimizer_kwargs(self) -> dict[str, Any]:
        """``optimizer_kwargs`` with the agents' default for the Polyak-type steps on the policy (PolyakPG, and
        SPS_max with the surrogate's infimum as ``f_star``): ``search=True``.

        A policy surrogate is a model of the return that holds only near the rollout's policy, and the
        Polyak step extrapolates it linearly to the return target: on PPO's clipped surrogate it exceeded
        the cap on every minibatch of a CartPole run (so the rule was SGD at ``max_lr``), and that run
        collapsed from 125 to 9. The Armijo test on the same surrogate keeps the step where the model
        still improves (:class:`rlopt.PolyakPG` with ``search=True``). SPS aims at the surrogate's infimum,
        which no step inside the surrogate's region of validity reaches: with a separate critic and no search
        PPO on CartPole-v1 ended at 9/25/14 (3 seeds), with the search at 500/500/498.
        ``optimizer_kwargs={"search": False}`` restores the evaluation-free rules.

        The agents also give their policy's searches (SLS, AdaSLS, PoNoS, SPS's search) the trust region
        ``max_kl=DEFAULT_MAX_KL`` (A2C and REINFORCE 0.01, PPO 0.05) unless ``optimizer_kwargs`` sets ``max_kl``
        (``None`` turns it off): a trial is accepted only if the policy's KL from the rollout's stays within it.
        """
        kwargs = self._rule_kwargs(self.optimizer_kwargs)
        spec = rlopt.optimizer_spec(self.optimizer_name)
        cls = spec.cls if isinstance(spec.cls, type) else type(None)
        if (issubclass(cls, rlopt.PolyakPG) or issubclass(cls, rlopt.SPS)) and kwargs.get("mode", "max") == "max":
            kwargs.setdefault("search", True)
        # the agent's trust region for its policy's searches (PolyakPG's only where POLYAK_MAX_KL says so)
        searches = spec.line_search or (issubclass(cls, rlopt.SPS) and bool(kwargs.get("search")))
        bound = self.POLYAK_MAX_KL if issubclass(cls, rlopt.PolyakPG) else self.DEFAULT_MAX_KL if searches else None
        if bound is not None and "max_kl" in inspect.signature(cls).parameters:
            kwargs.setdefault("max_kl", bound)
        return kwargs

    def _critic_optimizer_kwargs(self) -> dict[str, Any]:
        """``optimizer_kwargs`` for the critic's own optimizer (the policy's rule): without ``max_kl``, which bounds
        the policy's move (the critic's regression has no such region), and with ``search=True`` for SPS_max.

        SPS_max's step ``(f - f_star) / (c ||g||^2)`` aims at the value loss's ``f_star = 0``, which a regression
        on sampled returns never reaches: it assumes interpolation, and a fitted critic's loss is its noise. Its
        steps then overshoot, the more so the better the critic fits, and the advantages the policy learns from
        become noise. The Armijo test on the same batch keeps each step where the loss decreases. A2C on
        CartPole-v1 (5 seeds, 300k steps, the policy's SPS unchanged) ended at 30/238/25/29/21 with the critic's
        SPS unchecked and at 500 on every seed with the search (benchmarks/notes/RESULTS.md, "SPS's critic").
        ``optimizer_kwargs={"search": False}`` restores the evaluation-free rule for both.
        """
        kwargs = self._rule_kwargs({k: v for k, v in self.optimizer_kwargs.items() if k != "max_kl"})
        cls = rlopt.optimizer_spec(self.optimizer_name).cls
        if isinstance(cls, type) and issubclass(cls, rlopt.SPS) and kwargs.get("mode", "max") == "max":
            kwargs.setdefault("search", True)
        return kwargs

    def _build_buffer(self) -> None:
        assert self.env is not None
        if isinstance(self.action_space, spaces.Discrete):
            action_shape: tuple[int, ...] = ()
            action_dtype = torch.long
        else:
            action_shape = tuple(self.action_space.shape or ())
            action_dtype = torch.float32
        self.rollout_buffer = RolloutBuffer(
            self.n_steps,
            self.env.num_envs,
            tuple(self.observation_space.shape or ()),
            action_shape,
            action_dtype,
            self.device,
        )

    @staticmethod
    def _wrap_env(env: GymEnv, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        # SB3's load wraps the env before checking its spaces: give Gymnasium vector envs their SB3 face
        if isinstance(env, gym.vector.VectorEnv):
            return to_sb3(env)
        return BaseAlgorithm._wrap_env(env, verbose, monitor_wrapper)

    def set_env(self, env: GymEnv | Any, force_reset: bool = True) -> None:
        """Use ``env`` from now on (same spaces and number of envs, as in SB3)."""
        vec_env, stepper = resolve_env(env, None, self.device, None)
        super().set_env(vec_env, force_reset=force_reset)
        self._stepper = stepper
        self._build_buffer()

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "_stepper",
            "_generator",
            "_dp",
            "optimizer",
            "critic_optimizer",
        ]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        names = ["policy", "optimizer"]
        if self.critic_optimizer is not None:
            names.append("critic_optimizer")
        return names, []

    # ----------------------------------------------------------------------------------------- save / load
    def save(self, path: str | pathlib.Path | Any, exclude: Any = None, include: Any = None) -> None:
        """SB3's zip save, with the sampling RNG state, written atomically.

        A file path is written to a temporary file in the same directory and moved into place with
        ``os.replace``, so an interrupted save never leaves a truncated checkpoint.
        """
        self._generator_state = self._generator.get_state()
        if not isinstance(path, (str, pathlib.Path)):
            super().save(path, exclude=exclude, include=include)
            return
        target = pathlib.Path(path)
        if target.suffix != ".zip":
            target = target.with_suffix(".zip")  # SB3 appends .zip to a path without it
        with atomic_write(target) as f:
            super().save(f, exclude=exclude, include=include)

    @classmethod
    def load(
        cls: type[SelfOnPolicyAgent],
        path: str | pathlib.Path | Any,
        env: GymEnv | Any | None = None,
        device: torch.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        trusted: bool = False,
        **kwargs: Any,
    ) -> SelfOnPolicyAgent:
        """SB3's ``load``, without running code from the file; also restores the sampling RNG, so ``learn``
        continues a run exactly.

        The zip's pickled entries are read by an allow-list unpickler
        (:mod:`rlopt.agents.common.serialization`): this project's models load as they are, and an entry that
        would need anything else is refused with a ``ValueError`` naming it; ``trusted=True`` lets SB3 unpickle
        such entries (its own behaviour, for files you trust). A file that is not a model zip, or a model of
        another algorithm, is a ``ValueError`` naming the file.

        Pass ``force_reset=False`` (and ``reset_num_timesteps=False`` to ``learn``) with the env the run was
        using to continue it; a env whose spaces differ from the saved ones raises ``ValueError``.

        A loaded model trains alone (``process_group=None``), also under torchrun: any one rank may load a
        checkpoint, e.g. rank 0 to evaluate it, without the others.
        """
        custom_objects = safe_custom_objects(path, f"rlopt.agents.{cls.algorithm_name}.load", custom_objects,
                                             trusted, expected=f"rlopt.agents.{cls.algorithm_name}")
        model = super().load(path, env=env, device=device, custom_objects=custom_objects,
                             print_system_info=print_system_info, force_reset=force_reset, **kwargs)
        if model._generator_state is not None:
            model._generator.set_state(model._generator_state)
        if model._last_obs is not None and isinstance(model._last_obs, torch.Tensor):
            model._last_obs = model._last_obs.to(model.device)
        return model

    # -------------------------------------------------------------------------------------------- rollouts
    def _reset_env(self) -> None:
        assert self._stepper is not None
        seed = None if self._env_seeded or self.seed is None else int(self.seed) + self.rank * self._stepper.num_envs
        self._last_obs = self._stepper.reset(seed)  # type: ignore[assignment]
        self._env_seeded = True
        n = self._stepper.num_envs
        self._ep_return = torch.zeros(n, device=self.device)
        self._ep_length = torch.zeros(n, dtype=torch.long, device=self.device)
        self._last_episode_starts = torch.zeros(n, dtype=torch.bool, device=self.device)  # type: ignore[assignment]
        # normalize_reward: each copy's discounted return so far (VecNormalize's ``returns``, zeroed on reset)
        self._reward_return = torch.zeros(n, dtype=torch.float64, device=self.device)
        self._on_env_reset()

    def _on_env_reset(self) -> None:
        """Hook for algorithms that carry per-env state across rollouts (called after every env reset)."""

    def collect_rollouts(self, callback: BaseCallback) -> bool:
        """Fill the rollout buffer with ``n_steps`` steps of every env; False if a callback stopped training.

        Truncated episodes bootstrap from ``V(true final observation)``; terminated ones do not (see
        :func:`rlopt.agents.common.buffer.compute_gae`).
        """
        assert self._stepper is not None and self._last_obs is not None
        assert self._ep_return is not None and self._ep_length is not None
        stepper, buf, policy = self._stepper, self.rollout_buffer, self.policy
        policy.set_training_mode(False)
        if hasattr(stepper, "_prev_done") and isinstance(self._last_episode_starts, torch.Tensor):
            stepper._prev_done = self._last_episode_starts.clone()
        obs: torch.Tensor = self._last_obs  # type: ignore[assignment]
        callback.on_rollout_start()
        stop_requested = False
        for step in range(self.n_steps):
            # gSDE: new noise at the rollout's start and every sde_sample_freq steps
            if self.use_sde and (step == 0 or (self.sde_sample_freq > 0 and step % self.sde_sample_freq == 0)):
                policy.reset_noise(stepper.num_envs, self._generator)
            with torch.no_grad():
                actions, log_probs = policy.act(obs, self._generator)
            out = stepper.step(policy.env_actions(actions))
            dones = out.terminated | out.truncated
            buf.add(step, obs, actions, log_probs, out.reward, out.terminated, dones, out.valid)
            if out.final_mask is not None and out.final_obs is not None:
                buf.add_final_observations(step, out.final_mask & out.truncated, out.final_obs)
            obs = out.obs
            self.num_timesteps += stepper.num_envs * self.world_size
            # SB3's callbacks read these locals as numpy arrays and a list of infos: views that convert (and
            # synchronise with the device) only when a callback reads them
            callback.update_locals({**locals(), "dones": NumpyView(dones), "rewards": NumpyView(out.reward),
                                    "new_obs": NumpyView(obs), "infos": StepInfos(out.terminated, out.truncated)})
            if not callback.on_step():
                if self._dp is not None:
                    # the ranks stop together: this one finishes the rollout, and all stop at its end
                    stop_requested = True
                    continue
                self._last_obs = obs  # type: ignore[assignment]
                self._save_prev_done()
                self._track_episodes(buf, step + 1)
                return False
        self._last_obs = obs  # type: ignore[assignment]
        self._save_prev_done()
        ended_return, ended_length = self._track_episodes(buf, self.n_steps)
        if self.normalize_reward:
            self._normalize_rewards(buf)
        with torch.no_grad():
            # the critic on the whole rollout in one batch (the parameters did not change during it)
            buf.values.copy_(policy.value(buf.observations.flatten(0, 1)).view_as(buf.values))
            last_values = policy.value(obs)
            buf.compute_returns_and_advantages(last_values, self.gamma, self.gae_lambda, policy.value)
        ended = buf.dones & buf.valid
        if self._dp is not None:  # every rank's episodes, in rank order: the same buffer on every rank
            rets, lens, stop_requested = self._dp.gather_episodes(ended_return[ended], ended_length[ended],
                                                                  stop_requested)
        else:
            rets, lens = ended_return[ended].tolist(), ended_length[ended].tolist()
        if self.ep_info_buffer is not None:
            self.ep_info_buffer.extend({"r": r, "l": int(n)} for r, n in zip(rets, lens, strict=False))
        self._return_estimate = self._estimate_return(buf)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return not stop_requested

    @torch.no_grad()
    def _track_episodes(self, buf: RolloutBuffer, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Episode bookkeeping for the first ``steps`` rows of the rollout, after the fact.

        Fills ``buf.episode_steps`` (each transition's index within its episode), carries the running
        return and length of unfinished episodes in ``_ep_return`` / ``_ep_length``, and returns the return
        and length of the episode each transition belongs to, up to and including it (read where an
        episode ends). The same values as updating running sums at every step (returns are summed in
        float64 and rounded once), in some twenty tensor ops per rollout instead of a dozen per step.
        """
        assert self._ep_return is not None and self._ep_length is not None
        rewards, valid, dones = buf.rewards[:steps], buf.valid[:steps], buf.dones[:steps]
        n = rewards.shape[1]
        counts = valid.to(torch.long)
        cum_return = torch.cat((rewards.new_zeros(1, n, dtype=torch.float64), rewards.double().cumsum(0)))
        cum_length = torch.cat((counts.new_zeros(1, n), counts.cumsum(0)))
        rows = torch.arange(steps, device=rewards.device).unsqueeze(1)
        last_end = torch.where(dones, rows, -1).cummax(0).values
        # first row of the episode each transition belongs to (0: the episode began before this rollout)
        start = torch.cat((last_end.new_full((1, n), -1), last_end[:-1])) + 1
        carried = start == 0
        returns = cum_return[1:] - cum_return.gather(0, start) + torch.where(carried, self._ep_return.double(), 0.0)
        lengths = cum_length[1:] - cum_length.gather(0, start) + torch.where(carried, self._ep_length, 0)
        buf.episode_steps[:steps] = lengths - counts
        returns = returns.to(self._ep_return.dtype)
        self._ep_return = returns[-1].masked_fill(dones[-1], 0.0)
        self._ep_length = lengths[-1].masked_fill(dones[-1], 0)
        return returns, lengths.to(returns.dtype)

    @torch.no_grad()
    def _normalize_rewards(self, buf: RolloutBuffer) -> None:
        """Scale the rollout's rewards in place as ``VecNormalize(norm_reward=True)`` would have, step by step.

        At each step every copy's discounted return ``R <- gamma R + r`` is merged into the running mean and
        variance (``count``, ``mean``, ``var``, started at ``(1e-4, 0, 1)`` as SB3's ``RunningMeanStd``), the
        step's rewards are divided by ``sqrt(var + 1e-8)`` and clipped, and ``R`` is zeroed where an episode
        ended. The running statistics after ``t`` steps are those of the pooled samples (the prior counted as
        ``count`` samples of that mean and variance), so the per-step merges are cumulative sums in float64;
        a data-parallel run sums them over the ranks. Transitions that only reset a copy (next-step
        autoreset) are left out. The episode statistics were read before, from the raw rewards.
        """
        rewards, valid, dones = buf.rewards, buf.valid, buf.dones
        returns = torch.empty(rewards.shape, dtype=torch.float64, device=rewards.device)
        running = self._reward_return
        for t in range(rewards.shape[0]):
            running = running * self.gamma + rewards[t].double() * valid[t]
            returns[t] = running
            running = running.masked_fill(dones[t], 0.0)
        self._reward_return = running
        w = valid.double()
        sums = torch.stack((w.sum(1), (w * returns).sum(1), (w * returns.square()).sum(1)), 1)
        if self._dp is not None:
            sums = self._dp.sum(sums)
        count0, mean0, var0 = self._reward_stats.unbind()
        count = count0 + sums[:, 0].cumsum(0)
        mean = (count0 * mean0 + sums[:, 1].cumsum(0)) / count
        var = ((count0 * (var0 + mean0.square()) + sums[:, 2].cumsum(0)) / count - mean.square()).clamp_min(0.0)
        self._reward_stats = torch.stack((count[-1], mean[-1], var[-1]))
        scale = torch.rsqrt(var + 1e-8).to(rewards.dtype).unsqueeze(1)
        rewards.copy_((rewards * scale).clamp(-self.clip_reward, self.clip_reward))

    @property
    def reward_scale(self) -> float:
        """The current divisor of the rewards under ``normalize_reward`` (``sqrt(var + 1e-8)`` of the discounted
        returns; 1 without it): the factor from the critic's and the advantages' units back to the env's."""
        return math.sqrt(float(self._reward_stats[2]) + 1e-8) if self.normalize_reward else 1.0

    def _save_prev_done(self) -> None:
        prev = getattr(self._stepper, "_prev_done", None)
        if isinstance(prev, torch.Tensor):
            self._last_episode_starts = prev.clone()  # type: ignore[assignment]

    def _estimate_return(self, buf: RolloutBuffer) -> float:
        """``J_hat`` for the Polyak policy-gradient step.

        The mean undiscounted return of the last ``stats_window_size`` completed episodes (the
        ``rollout/ep_rew_mean`` that is logged); before any episode has ended, the mean discounted return
        target of the rollout (GAE's ``R_t``) as a stand-in.
        """
        if self.ep_info_buffer:
            return float(safe_mean([ep["r"] for ep in self.ep_info_buffer]))
        return float(self._union_mean(buf.returns[buf.valid])) * self.reward_scale

    # ------------------------------------------------------------------------------------------- updating
    def _minibatches(self, batch: RolloutBatch, batch_size: int) -> list[torch.Tensor]:
        perm = torch.randperm(len(batch), generator=self._generator, device=self.device)
        return list(perm.split(batch_size))

    def _step_losses(
        self,
        policy_loss: Callable[[], torch.Tensor],
        value_loss: Callable[[], torch.Tensor] | None,
        kl: Callable[[], torch.Tensor] | None = None,
        value: float | None = None,
        freeze_policy: bool = False,
    ) -> torch.Tensor:
        """Take one optimizer step on the current minibatch and return the loss at the current iterate.

        ``policy_loss`` (entropy bonus included) and ``value_loss`` are closures over the minibatch: they
        may be evaluated again at trial points by a line search. Normally one optimizer minimizes
        ``policy_loss + vf_coef * value_loss``; under the Polyak policy-gradient step the policy takes the
        Polyak step on ``policy_loss`` with ``value = J_hat`` (``None``: ``policy_loss`` is ``-J_hat``, see
        :meth:`_polyak_closure`) and the critic takes an Adam step. ``kl`` (the policy's divergence from the
        rollout's on the minibatch) reaches a line search built with ``max_kl``. With ``freeze_policy`` (a policy with
        an optimizer of its own) only the critic steps; ``policy_loss`` is evaluated once, for its statistics.
        """
        hook = None if self._dp is None else self._dp.average_gradients
        if value_loss is None:
            return rlopt.closure_step(self.optimizer, policy_loss, max_grad_norm=self.max_grad_norm,
                                      value=value, kl=kl, grad_hook=hook)
        if self.critic_optimizer is None:
            vf_coef = self.vf_coef

            def closure() -> torch.Tensor:
                return policy_loss() + vf_coef * value_loss()

            return rlopt.closure_step(self.optimizer, closure, max_grad_norm=self.max_grad_norm, kl=kl,
                                      grad_hook=hook)
        if freeze_policy:
            with torch.enable_grad():
                loss = policy_loss()
        else:
            loss = rlopt.closure_step(self.optimizer, policy_loss, max_grad_norm=self.max_grad_norm, value=value,
                                      kl=kl, grad_hook=hook)
        vloss = rlopt.closure_step(self.critic_optimizer, value_loss, max_grad_norm=self.max_grad_norm,
                                   grad_hook=hook)
        return loss.detach() + self.vf_coef * vloss.detach()

    def _apply_lr_schedule(self) -> None:
        """Set the scheduled learning rate on the torch optimizers (rlopt's rules choose their own steps)."""
        torch_optimizers = [
            opt for opt in (self.optimizer, self.critic_optimizer)
            if opt is not None and not isinstance(opt, rlopt.StepSizeOptimizer)
        ]
        if torch_optimizers:
            self._update_learning_rate(torch_optimizers)

    def _kl_closure(
        self, observations: torch.Tensor, actions: torch.Tensor, old_log_probs: torch.Tensor
    ) -> Callable[[], torch.Tensor]:
        """TRPO's constraint for a line search built with ``max_kl``: the approximate KL of the policy at the
        current parameters from the one whose log-probabilities ``old_log_probs`` are, on these samples."""
        policy = self.policy

        def kl() -> torch.Tensor:
            log_prob, _ = policy.log_prob_and_entropy(observations, actions)
            return approx_kl(log_prob - old_log_probs)

        return kl

    # ------------------------------------------------------------------------- statistics over the ranks' data
    def _union_mean_of(self, means: torch.Tensor) -> torch.Tensor:
        """Per-rank means of equal-sized samples as the mean over their union (the ranks' mean; one collective
        in a data-parallel run, ``means`` itself otherwise)."""
        return means if self._dp is None else self._dp.mean(means).to(means.dtype)

    def _union_mean(self, x: torch.Tensor) -> torch.Tensor:
        """``x.mean()`` over the union of the ranks' samples (of any sizes)."""
        if self._dp is None:
            return x.mean()
        total = self._dp.sum(torch.stack((x.detach().double().sum(), x.new_tensor(x.numel(), dtype=torch.float64))))
        return (total[0] / total[1]).to(x.dtype)

    def _normalized(self, adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """``((adv - mean) / scale, scale)``, ``scale = std + 1e-8``, over the union of the ranks' samples, when
        ``normalize_advantage`` and there is more than one sample; else ``(adv, 1.0)``."""
        if not self.normalize_advantage:
            return adv, 1.0
        if self._dp is None:
            if len(adv) <= 1:
                return adv, 1.0
            scale = adv.std() + 1e-8
            return (adv - adv.mean()) / scale, scale
        mean, std, n = self._dp.moments(adv.unsqueeze(1))
        if n <= 1:
            return adv, 1.0
        scale = std[0] + 1e-8
        return (adv - mean[0]) / scale, scale

    def _update_obs_stats(self) -> None:
        """Merge the rollout's valid observations (of every rank) into the policy's running statistics."""
        buf = self.rollout_buffer
        obs = buf.observations[buf.valid]
        if self._dp is None:
            self.policy.update_obs_stats(obs)
            return
        mean, std, n = self._dp.moments(obs.to(torch.float64))
        var = std.square() * ((n - 1) / n) if n > 0 else std
        self.policy.merge_obs_stats(mean.reshape(-1), var.reshape(-1), n)

    def _set_policy_lower_bound(self, advantages: torch.Tensor, clip_range: float) -> None:
        """Set ``f_star`` of the policy's own optimizer (when its rule takes one and ``optimizer_kwargs`` does
        not fix it) to the infimum of the clipped ratio surrogate over all ratios on these advantages
        (:func:`rlopt.agents.common.policy_loss.surrogate_infimum`), minus ``ent_coef`` times the largest entropy of a
        discrete policy. For an unclipped ratio surrogate (A2C's) it is the least loss a step that moves each
        ratio by at most ``clip_range`` reaches. A Gaussian's entropy is unbounded: no bound then.
        """
        if self.critic_optimizer is None or self._polyak or "f_star" in self.optimizer_kwargs:
            return
        if "f_star" not in self.optimizer.param_groups[0]:
            return
        bound = self._union_mean_of(surrogate_infimum(advantages, clip_range))
        if self.ent_coef > 0:
            if not isinstance(self.action_space, spaces.Discrete):
                return
            bound = bound - self.ent_coef * math.log(int(self.action_space.n))
        for group in self.optimizer.param_groups:
            group["f_star"] = float(bound)

    def _polyak_update_target(self) -> None:
        """Once per update under ``"polyak"``: the return target ``J*`` and the mean episode length.

        ``J*`` is ``optimizer_kwargs["j_star"]`` if given, else :class:`rlopt.PolyakPG`'s online estimate (the
        best ``J_hat`` of the updates so far plus its margin), from the measured returns only: before the first
        episode ends, ``J_hat`` is the rollout's mean discounted return-to-go, a stand-in in other units (-40
        on Pendulum, whose episodes return -1200), and a running best that kept it held ``J*`` above every
        return the policy could reach for the whole run (PPO on Pendulum-v1 ended at -987, 5-seed median).
        """
        best = getattr(self, "_polyak_best", float("-inf"))
        if self.ep_info_buffer:  # a measured return: the running best follows it
            best = self._polyak_best = max(best, self._return_estimate)
        elif not math.isfinite(best):  # nothing measured yet: the rollout's stand-in, for this update only
            best = self._return_estimate
        if self.optimizer_kwargs.get("j_star") is not None:
            self._polyak_target = float(self.optimizer_kwargs["j_star"])
        else:
            margin = self.optimizer.param_groups[0]["margin"]
            self._polyak_target = return_target({"margin": margin}, best)
        lengths = [ep["l"] for ep in self.ep_info_buffer or ()]
        # before any episode ended: the rollout's length, at most the discount's horizon
        horizon = float(self.n_steps) if self.gamma >= 1.0 else min(float(self.n_steps), 1.0 / (1.0 - self.gamma))
        self._polyak_horizon = float(np.mean(lengths)) if lengths else horizon

    def _polyak_closure(
        self,
        policy_loss: Callable[[], torch.Tensor],
        first: dict[str, torch.Tensor],
        advantages: torch.Tensor,
        advantage_scale: torch.Tensor | float,
        supremum: torch.Tensor | None = None,
    ) -> Callable[[], torch.Tensor]:
        r"""The policy loss of an actor-critic update as :class:`rlopt.PolyakPG` needs it: ``-J_hat``.

        ``policy_loss`` is a ratio surrogate :math:`-\frac1n\sum_t f(\rho_t) A_t` (PPO's clipped one, A2C's
        :math:`\rho_t A_t`) minus ``ent_coef`` times the entropy, with advantages ``A`` that are GAE's divided
        by ``advantage_scale`` (their standard deviation when normalised, else 1). By the performance-difference
        lemma the return of the policy :math:`\theta'` is, to first order,

        .. math::
            \hat J(\theta') = \hat J + T \sigma \big(L(\theta_{old}) - L(\theta')\big),

        with :math:`\hat J` the measured return (``rollout/ep_rew_mean``), :math:`T` the mean episode length
        (one episode's sum over steps from the per-step mean) and :math:`\sigma` = ``advantage_scale`` (back
        to the return's units). The returned closure is :math:`-\hat J(\theta') / (T \sigma)` and the
        optimizer's ``j_star`` is :math:`J^* / (T \sigma)`: minus the return estimate in the surrogate's own
        units (so ``max_lr`` still caps steps on the surrogate; the entropy term enters the gradient, not the
        value at the iterate). The Polyak step ``(J* - J_hat) / (c ||grad J_hat||^2)`` then compares
        quantities in one unit, and ``J_hat`` follows the iterate through the epochs of an update:
        the gap shrinks as the surrogate improves, instead of every minibatch step aiming at the whole gap.
        ``supremum`` (the surrogate objective's largest value, PPO's clip bound) caps ``J*`` at the return the
        surrogate can certify, ``J_hat + T sigma (sup - (-L(theta_old)))``.
        """
        # read from the device only under "polyak"; reward_scale: normalised rewards back to the env's units
        scale = self._polyak_horizon * float(advantage_scale) * self.reward_scale
        # the ratio surrogate's loss at rho = 1 and its supremum, over the union of the ranks' minibatches
        if supremum is None:
            at_rollout = -float(self._union_mean_of(advantages.mean()))
        else:
            at_rollout, sup = (float(v) for v in self._union_mean_of(torch.stack((-advantages.mean(), supremum))))
        j_hat, target = self._return_estimate, self._polyak_target
        if supremum is not None:
            target = min(target, j_hat + scale * (sup + at_rollout))
        for group in self.optimizer.param_groups:
            group["j_star"] = target / scale
        ent_coef = self.ent_coef

        def closure() -> torch.Tensor:
            loss = policy_loss()  # records first["entropy"], the entropy at the iterate, on its first call
            return -j_hat / scale + (loss + ent_coef * first["entropy"] - at_rollout)

        return closure

    def _record_step_stats(self, stats: dict[str, list[float]]) -> None:
        step_size, backtracks, forward_calls = rlopt.step_stats(self.optimizer)
        stats.setdefault("step_size", []).append(step_size)
        stats.setdefault("backtracks", []).append(backtracks)
        stats.setdefault("forward_calls", []).append(forward_calls)

    def _log_train(self, stats: dict[str, list[float]], tensors: dict[str, list[torch.Tensor]]) -> None:
        """Record the means of per-minibatch statistics (tensors are synced once, here)."""
        for key, values in tensors.items():
            if values:
                self.logger.record(f"train/{key}", float(torch.stack([v.detach().float() for v in values]).mean()))
        for key, vals in stats.items():
            if vals:
                self.logger.record(f"train/{key}", float(np.mean(vals)))
        buf = self.rollout_buffer
        if self.uses_critic:
            valid = buf.valid
            ev = explained_variance(buf.values[valid].cpu().numpy(), buf.returns[valid].cpu().numpy())
            self.logger.record("train/explained_variance", float(ev))
        if self.normalize_reward:
            self.logger.record("train/reward_scale", self.reward_scale)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if self._polyak:
            self.logger.record("train/return_estimate", self._return_estimate)
            target = getattr(self, "_polyak_target", getattr(self.optimizer, "stats", {}).get("target"))
            if target is not None:
                self.logger.record("train/return_target", float(target))

    def train(self) -> None:
        """One update from the rollout buffer (implemented by each algorithm)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- learning
    def learn(
        self: SelfOnPolicyAgent,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfOnPolicyAgent:
        """Train for at least ``total_timesteps`` env steps (whole rollouts, as SB3).

        Args:
            total_timesteps: env steps to collect (summed over envs), a positive integer.
            callback: SB3 callback(s), called after every batched env step.
            log_interval: dump logs every this many updates.
            tb_log_name: TensorBoard run name (default: the algorithm name).
            reset_num_timesteps: False continues the step counter, the env and the logs of a previous
                ``learn`` (or of a loaded run).
            progress_bar: show SB3's progress bar (tqdm/rich).
        """
        total_timesteps = check_int("total_timesteps", total_timesteps, 1)
        log_interval = check_int("log_interval", log_interval, 1)
        if self._stepper is None or self.env is None:
            raise ValueError("this model has no env: pass env= to the constructor or to load(), or call set_env()")
        if isinstance(self._last_obs, torch.Tensor) and self._last_obs.shape[0] != self._stepper.num_envs:
            raise ValueError(
                f"the saved run used {self._last_obs.shape[0]} envs but env has {self._stepper.num_envs}; "
                "pass force_reset=True to load() or an env with the same number of copies"
            )
        fresh = reset_num_timesteps or self._last_obs is None or self._ep_return is None
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name or self.algorithm_name, progress_bar
        )
        if fresh:
            # SB3's _setup_learn reset the env through its VecEnv face (numpy); start from our own reset
            self._reset_env()
        callback.on_training_start(locals(), globals())
        iteration = 0
        while self.num_timesteps < total_timesteps:
            if not self.collect_rollouts(callback):
                break
            iteration += 1
            self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
            self.policy.set_training_mode(True)
            self._apply_lr_schedule()
            self.train()
            if getattr(self.policy, "normalize_obs", False):
                self._update_obs_stats()
            self._n_updates += 1
            if iteration % log_interval == 0:
                self._dump_logs_at(iteration)
        callback.on_training_end()
        return self

    def dump_logs(self, iteration: int = 0) -> None:
        """Write the rollout and time statistics to the logger now (SB3's ``dump_logs``; ``LogEveryNTimesteps``
        calls it)."""
        self._dump_logs_at(iteration)

    def _dump_logs_at(self, iteration: int) -> None:
        elapsed = max((time.time_ns() - self.start_time) / 1e9, sys.float_info.epsilon)
        fps = int((self.num_timesteps - self._num_timesteps_at_start) / elapsed)
        self.logger.record("time/iterations", iteration, exclude="tensorboard")
        if self.ep_info_buffer:
            self.logger.record("rollout/ep_rew_mean", safe_mean([ep["r"] for ep in self.ep_info_buffer]))
            self.logger.record("rollout/ep_len_mean", safe_mean([ep["l"] for ep in self.ep_info_buffer]))
        self.logger.record("time/fps", fps)
        self.logger.record("time/time_elapsed", int(elapsed), exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(step=self.num_timesteps)
