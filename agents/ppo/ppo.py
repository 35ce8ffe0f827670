"""Proximal Policy Optimization with any rlopt step size."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from rlopt.agents.common.base import OnPolicyAgent
from rlopt.agents.ppo import loss as loss_terms
from rlopt.validation import check_int, check_open, check_positive


class PPO(OnPolicyAgent):
    r"""PPO (Schulman et al., 2017, "Proximal Policy Optimization Algorithms", arXiv 1707.06347).

    Each update runs ``n_epochs`` passes over the rollout in minibatches of ``batch_size`` and minimizes

    .. math::
        L = -\mathbb{E}\big[\min(\rho_t A_t, \operatorname{clip}(\rho_t, 1-\epsilon, 1+\epsilon) A_t)\big]
            - c_{ent}\, \mathbb{E}[H(\pi(\cdot|s_t))] + c_{vf}\, \mathbb{E}[(V(s_t) - R_t)^2],

    with :math:`\rho_t = \pi(a_t|s_t)/\pi_{old}(a_t|s_t)`, GAE advantages normalized per minibatch, and
    ``R_t`` the GAE value target. The minibatch loss is a closure, so line searches (``"sls"``,
    ``"ponos"``) evaluate it at trial points; with ``"polyak"`` the clipped surrogate (with entropy bonus)
    takes the Polyak step :class:`rlopt.PolyakPG` in the return's units: the surrogate is turned into an
    estimate of the return at the current parameters, ``rollout/ep_rew_mean`` plus the mean episode length
    times the advantages' scale times the surrogate's improvement (:meth:`_polyak_closure`), and ``J*`` is
    capped at what the clipped surrogate can certify; the value loss is fitted by Adam.

    When the policy loss has an optimizer of its own (``separate_critic``) whose rule takes a lower bound
    ``f_star`` (PoNoS's Polyak first trial, SPS), each minibatch sets it to the infimum of the clipped
    surrogate over all ratios, :meth:`surrogate_infimum` (minus ``ent_coef`` times the largest entropy of a
    discrete policy), unless ``optimizer_kwargs`` fixes ``f_star``. The surrogate is 0 at the rollout's
    policy with normalized advantages, so ``f_star = 0`` would make the Polyak step 0; the infimum gives
    ``f - f_star = clip_range * mean|A|`` there.

    Args:
        policy: ``"MlpPolicy"`` or an ``ActorCriticPolicy`` subclass.
        env: env id, ``rlopt.envs.TorchVecEnv``, Gymnasium env or SB3 ``VecEnv``.
        batch_size: minibatch size.
        n_epochs: passes over each rollout.
        clip_range: surrogate clipping :math:`\epsilon`, ``0 < clip_range < 1``, or a schedule of the remaining
            progress (1 at the start of ``learn``, 0 at its end) as stable-baselines3's, e.g. the RL Zoo's
            ``lin_0.2`` (:func:`rlopt.agents.hyperparams.linear_schedule`): read once per update.
        clip_range_vf: value clipping around the old values (None: no clipping), a number or a schedule.
        target_kl: stop an update, before the minibatch step, once the approximate KL of the current policy on
            that minibatch exceeds ``1.5 * target_kl`` (stable-baselines3's meaning; :mod:`rlopt.agents.ppo.loss`).
        **kwargs: see :class:`rlopt.agents.common.base.OnPolicyAgent` (``optimizer``, ``n_envs``, ``n_steps``,
            ``gamma``, ``gae_lambda``, ``ent_coef``, ``vf_coef``, ``seed``, ``device``, ...).

    Example:
        >>> from rlopt import agents
        >>> model = agents.PPO("MlpPolicy", "CartPole-v1", n_envs=4, n_steps=32, batch_size=64, seed=0)
        >>> model = model.learn(256)
        >>> action, _ = model.predict(model.get_env().reset(), deterministic=True)
        >>> action.shape
        (4,)
    """

    algorithm_name: ClassVar[str] = "PPO"
    #: the trust region of PPO's policy line searches (KL from the rollout's policy, over the whole update). The
    #: clip zeroes the gradient of a ratio that left its range but bounds no single step, and a search that
    #: starts far (SPS's first trial aims at the surrogate's infimum) can take the policy anywhere in one step:
    #: SPS on MountainCar-v0 made the policy deterministic and ended at -200 on 2 of 3 seeds. With the bound at
    #: 0.05 (3 seeds each, final returns): SPS MountainCar -131/-108/-200, CartPole 339/414/476 (was 366
    #: median), Pendulum -273/-265/-272; SLS and PoNoS on MountainCar -100/-98/-109 and -98/-99/-102 (were
    #: -112/-110 medians), PoNoS on Pendulum -282/-219/-275 (was -309). 0.02 stopped CartPole short (SPS
    #: 328/291/338). PolyakPG keeps its Armijo check alone: with the bound it fell on Pendulum (-1250 median).
    DEFAULT_MAX_KL: ClassVar[float | None] = 0.05

    def __init__(
        self,
        policy: Any,
        env: Any,
        optimizer: Any = "adam",
        optimizer_kwargs: dict[str, Any] | None = None,
        learning_rate: float = 3e-4,
        n_envs: int | None = 8,
        n_steps: int = 128,
        batch_size: int = 256,
        n_epochs: int = 4,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Callable[[float], float] = 0.2,
        clip_range_vf: float | Callable[[float], float] | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float | None = 0.5,
        target_kl: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.n_epochs = check_int("n_epochs", n_epochs, 1)
        self.clip_range: float | Callable[[float], float] = _check_schedule(
            "clip_range", clip_range, lambda name, v: check_open(name, v, 0.0, 1.0))
        self.clip_range_vf: float | Callable[[float], float] | None = None if clip_range_vf is None else \
            _check_schedule("clip_range_vf", clip_range_vf, check_positive)
        self.target_kl = check_positive("target_kl", target_kl, allow_none=True)
        super().__init__(
            policy, env, optimizer=optimizer, optimizer_kwargs=optimizer_kwargs, learning_rate=learning_rate,
            n_envs=n_envs, n_steps=n_steps, gamma=gamma, gae_lambda=gae_lambda, ent_coef=ent_coef,
            vf_coef=vf_coef, max_grad_norm=max_grad_norm, normalize_advantage=normalize_advantage, **kwargs,
        )
        if self.batch_size % self.world_size:
            raise ValueError(f"Invalid batch_size: {self.batch_size} is split over the {self.world_size} ranks of the "
                             f"data-parallel run: use a multiple of {self.world_size}")
        rollout = self.n_steps * self.n_envs * self.world_size if self.env is not None else None
        if rollout is not None and self.batch_size > rollout:  # SB3 warns about its minibatch sizes too
            warnings.warn(f"batch_size={self.batch_size} is larger than the rollout (n_steps * n_envs = {rollout}): "
                          "every minibatch is the whole rollout", UserWarning, stacklevel=2)

    @property
    def _rank_batch_size(self) -> int:
        """This rank's share of a minibatch (``batch_size`` when training alone)."""
        return self.batch_size // self.world_size

    @staticmethod
    def surrogate_infimum(advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
        """The infimum over all ratios of the clipped-surrogate loss on a minibatch
        (:func:`rlopt.agents.ppo.loss.surrogate_infimum`)."""
        return loss_terms.surrogate_infimum(advantages, clip_range)

    def _minibatches_per_pass(self) -> int:
        n_envs = getattr(self, "n_envs", None) or 1  # this rank's copies, and its share of a minibatch
        return max(1, math.ceil(self.n_steps * n_envs / self._rank_batch_size))

    def _policy_step_loss(
        self, policy_loss: Callable[[], torch.Tensor], first: dict[str, torch.Tensor], adv: torch.Tensor,
        adv_scale: torch.Tensor | float, clip: float,
    ) -> Callable[[], torch.Tensor]:
        """The minibatch's policy closure as the policy's rule needs it: with ``f_star`` set to the surrogate's
        infimum for a rule that takes one, or in the return's units, ``J*`` capped by the clip's bound, under
        ``"polyak"`` (:meth:`_polyak_closure`); ``clip`` is this update's clip range."""
        if self._polyak:
            sup = -loss_terms.surrogate_infimum(adv, clip)
            return self._polyak_closure(policy_loss, first, adv, adv_scale, sup)
        self._set_policy_lower_bound(adv, clip)
        return policy_loss

    def _clip_now(self, value: float | Callable[[float], float]) -> float:
        """``clip_range`` (or ``clip_range_vf``) at the current progress: a schedule read as SB3 reads it, at least 0
        (past the budget's end SB3's remaining progress is negative, and a negative clip inverts the clamp)."""
        return max(float(value(self._current_progress_remaining)), 0.0) if callable(value) else float(value)

    def train(self) -> None:
        """``n_epochs`` passes of clipped-surrogate minibatch steps over the rollout."""
        batch = self.rollout_buffer.flatten()
        clip = self._clip_now(self.clip_range)
        clip_vf = None if self.clip_range_vf is None else self._clip_now(self.clip_range_vf)
        policy = self.policy
        stats: dict[str, list[float]] = {}
        tensors: dict[str, list[torch.Tensor]] = {}
        stop = False
        # At clip_range 0 (the end of a schedule such as the RL Zoo's lin_0.2) every ratio's clipped term is least
        # at rho = 1: the rollout's policy minimizes the surrogate and no step can decrease it. A policy with an
        # optimizer of its own and no entropy bonus keeps its parameters; the critic's fit goes on.
        frozen = clip == 0.0 and self.ent_coef == 0.0 and self.critic_optimizer is not None
        if self._polyak and not frozen:
            self._polyak_update_target()
        for _ in range(self.n_epochs):
            for idx in self._minibatches(batch, self._rank_batch_size):
                mb = batch.index(idx)
                adv, adv_scale = self._normalized(mb.advantages)
                # statistics of the current iterate come from the first (differentiable) evaluation;
                # a line search evaluates the closures again at trial points under no_grad
                first: dict[str, torch.Tensor] = {}

                def policy_loss(mb: Any = mb, adv: torch.Tensor = adv, first: dict = first) -> torch.Tensor:
                    log_prob, entropy = policy.log_prob_and_entropy(mb.observations, mb.actions)
                    surrogate = loss_terms.clipped_surrogate(log_prob, mb.log_probs, adv, clip)
                    ent = entropy.mean()
                    if torch.is_grad_enabled() and "pg" not in first:
                        with torch.no_grad():
                            first["pg"] = surrogate.loss.detach()
                            first["entropy"] = ent.detach()
                            first["approx_kl"] = surrogate.approx_kl()
                            first["clip_fraction"] = surrogate.clip_fraction(clip)
                    return surrogate.loss - self.ent_coef * ent

                def value_loss(mb: Any = mb, first: dict = first) -> torch.Tensor:
                    loss = loss_terms.value_loss(policy.value(mb.observations), mb.values, mb.returns, clip_vf)
                    if torch.is_grad_enabled() and "value" not in first:
                        first["value"] = loss.detach()
                    return loss

                if self.target_kl is not None:  # SB3's check: the KL before this minibatch's step
                    with torch.no_grad():
                        log_prob, _ = policy.log_prob_and_entropy(mb.observations, mb.actions)
                    kl_before = self._union_mean_of(loss_terms.approx_kl(log_prob - mb.log_probs))
                    if loss_terms.kl_stop(kl_before, self.target_kl):
                        stop = True
                        break
                if frozen:
                    loss = self._step_losses(policy_loss, value_loss, freeze_policy=True)
                else:
                    step_loss = self._policy_step_loss(policy_loss, first, adv, adv_scale, clip)
                    kl = self._kl_closure(mb.observations, mb.actions, mb.log_probs)
                    loss = self._step_losses(step_loss, value_loss, kl)
                    self._record_step_stats(stats)
                tensors.setdefault("loss", []).append(loss.detach())
                tensors.setdefault("policy_gradient_loss", []).append(first["pg"])
                tensors.setdefault("value_loss", []).append(first["value"])
                tensors.setdefault("entropy", []).append(first["entropy"])
                tensors.setdefault("approx_kl", []).append(first["approx_kl"])
                tensors.setdefault("clip_fraction", []).append(first["clip_fraction"])
            if stop:
                break
        self._log_train(stats, tensors)
        self.logger.record("train/clip_range", clip)
        if clip_vf is not None:
            self.logger.record("train/clip_range_vf", clip_vf)


def _check_schedule(name: str, value: Any, check: Callable[[str, Any], float]) -> float | Callable[[float], float]:
    """A number checked by ``check``, or a schedule (a callable of the remaining progress) whose value at the start
    passes ``check``, so that a bad schedule fails here rather than at the first update."""
    if callable(value):
        try:
            start = value(1.0)
        except Exception as exc:
            raise ValueError(f"Invalid {name}: the schedule {value!r} raised {exc!r} at progress 1.0") from exc
        check(f"{name}(1.0)", start)
        return value
    return check(name, value)
