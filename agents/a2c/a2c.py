"""Advantage actor-critic (synchronous, one step per rollout) with any rlopt step size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from rlopt.agents.common.base import OnPolicyAgent


class A2C(OnPolicyAgent):
    r"""A2C (Mnih et al., 2016, "Asynchronous Methods for Deep Reinforcement Learning", arXiv 1602.01783),
    the synchronous batched variant: one step per rollout on the whole batch of ``n_envs * n_steps``
    transitions, minimizing

    .. math::
        L = -\mathbb{E}[\rho_t A_t] - c_{ent}\, \mathbb{E}[H(\pi(\cdot|s_t))]
            + c_{vf}\, \mathbb{E}[(V(s_t) - R_t)^2],
        \qquad \rho_t = \pi(a_t|s_t) / \pi_{old}(a_t|s_t),

    with GAE advantages (``gae_lambda=1`` gives n-step returns). At the rollout's policy (``rho = 1``) the
    gradient is the classic :math:`-\mathbb{E}[A_t \nabla \log \pi(a_t|s_t)]`, so Adam and SGD take A2C's
    steps; the importance-ratio form is for the rules that read the loss's *value*. A line search
    (``"sls"``, ``"ponos"``) re-evaluates the closure at trial steps, and the log-likelihood loss
    :math:`-\mathbb{E}[A_t \log\pi]` is unbounded below (a negative-advantage action's
    :math:`\log\pi \to -\infty`): its Armijo test accepts steps that make the policy deterministic, which
    collapsed every line search on CartPole. The ratio surrogate is the first-order estimate of the change
    of the return (TRPO's), bounded below for discrete actions. With ``"polyak"`` the policy loss takes the
    Polyak step in the return's units (:meth:`_polyak_closure`) and the critic an Adam step.

    Example:
        >>> from rlopt import agents
        >>> model = agents.A2C("MlpPolicy", "CartPole-v1", n_envs=4, n_steps=8, seed=0, optimizer="sls")
        >>> model = model.learn(128)
        >>> model.num_timesteps
        128
    """

    algorithm_name: ClassVar[str] = "A2C"
    #: the trust region of A2C's policy line searches (TRPO's default radius). A2C's one step per rollout has no
    #: clip to keep the policy near the one that collected the batch, and an Armijo test on the ratio surrogate
    #: accepts any step along which the surrogate keeps decreasing: on CartPole-v1 (3 seeds, 300k steps) SLS
    #: ended at 126/110/428 and PoNoS at 9/9/172 after reaching up to 500; with the bound at 500/490/493 and
    #: 500/500/500. PolyakPG keeps its Armijo check alone (with the bound 500/129/226, without 500/228/499).
    DEFAULT_MAX_KL: ClassVar[float | None] = 0.01
    #: ``f_star`` of the policy's rule: the least surrogate loss with every ratio moved by at most this much
    BOUND_RATIO_CHANGE: ClassVar[float] = 0.2
    #: Polyak's steps on A2C's unclipped surrogate sat at the cap and raised the Pendulum policy's entropy from
    #: 0.25 to 1.1 while the return stayed near -1100; with TRPO's bound 0.01 (5 seeds, see the README)
    POLYAK_MAX_KL: ClassVar[float | None] = 0.01

    def __init__(
        self,
        policy: Any,
        env: Any,
        optimizer: Any = "adam",
        optimizer_kwargs: dict[str, Any] | None = None,
        learning_rate: float = 7e-4,
        n_envs: int | None = 8,
        n_steps: int = 5,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        normalize_advantage: bool = False,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float | None = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            policy, env, optimizer=optimizer, optimizer_kwargs=optimizer_kwargs, learning_rate=learning_rate,
            n_envs=n_envs, n_steps=n_steps, gamma=gamma, gae_lambda=gae_lambda, ent_coef=ent_coef,
            vf_coef=vf_coef, max_grad_norm=max_grad_norm, normalize_advantage=normalize_advantage, **kwargs,
        )

    def _minibatches_per_pass(self) -> int:
        """One step is one pass over the rollout: SLS's ``reset="increase"`` may double the step at every update.

        With SLS's supervised default (500 minibatches per epoch) the step grew by 0.14% per update: on
        Pendulum-v1 the first step backtracked from 1 to 0.009, and 350 updates later it was still 0.014, with
        a KL of 2e-4 against the trust region's 0.01; the run ended at -940/-1044 (seeds 0-1, random -1200).
        With 1: -233/-208.
        """
        return 1

    def train(self) -> None:
        """One step on the policy-gradient, value and entropy losses of the whole rollout."""
        batch = self.rollout_buffer.flatten()
        policy = self.policy
        adv, adv_scale = self._normalized(batch.advantages)
        first: dict[str, torch.Tensor] = {}

        def policy_loss() -> torch.Tensor:
            log_prob, entropy = policy.log_prob_and_entropy(batch.observations, batch.actions)
            log_ratio = log_prob - batch.log_probs
            pg_loss = -(adv * torch.exp(log_ratio)).mean()
            ent = entropy.mean()
            if torch.is_grad_enabled() and "pg" not in first:
                first["pg"], first["entropy"] = pg_loss.detach(), ent.detach()
            return pg_loss - self.ent_coef * ent

        def value_loss() -> torch.Tensor:
            loss = (batch.returns - policy.value(batch.observations)).pow(2).mean()
            if torch.is_grad_enabled() and "value" not in first:
                first["value"] = loss.detach()
            return loss

        step_loss: Callable[[], torch.Tensor] = policy_loss
        self._set_policy_lower_bound(adv, self.BOUND_RATIO_CHANGE)  # SPS/PoNoS's f_star
        if self._polyak:
            self._polyak_update_target()
            step_loss = self._polyak_closure(policy_loss, first, adv, adv_scale)

        kl = self._kl_closure(batch.observations, batch.actions, batch.log_probs)
        loss = self._step_losses(step_loss, value_loss, kl)
        with torch.no_grad():
            step_kl = kl()  # what the update moved the policy by, on the rollout (at its start this is 0)
        stats: dict[str, list[float]] = {}
        self._record_step_stats(stats)
        self._log_train(
            stats,
            {
                "loss": [loss.detach()],
                "policy_gradient_loss": [first["pg"]],
                "value_loss": [first["value"]],
                "entropy": [first["entropy"]],
                "approx_kl": [step_kl],
            },
        )
