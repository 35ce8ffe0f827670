"""Advantage actor-critic (synchronous, one step per rollout) with any rlopt step size."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from rlopt.agents.common.base import OnPolicyAgent


class A2C(OnPolicyAgent):
    r"""A2C (Mnih et al., 2016, "Asynchronous Methods for Deep Reinforcement Learning", arXiv 1602.01783),
    the synchronous batched variant: one step per rollout on the whole batch of ``n_envs * n_steps``
    transitions, minimizing

    .. math::
        L = -\mathbb{E}[A_t \log \pi(a_t|s_t)] - c_{ent}\, \mathbb{E}[H(\pi(\cdot|s_t))]
            + c_{vf}\, \mathbb{E}[(V(s_t) - R_t)^2]

    with GAE advantages (``gae_lambda=1`` gives n-step returns). The loss is a closure over the batch, so a
    line search (``"sls"``, ``"ponos"``) re-evaluates it at trial steps; with ``"polyak"`` the policy loss
    takes the Polyak step (``J_hat`` = ``rollout/ep_rew_mean``) and the critic an Adam step.

    Example:
        >>> from rlopt import agents
        >>> model = agents.A2C("MlpPolicy", "CartPole-v1", n_envs=4, n_steps=8, seed=0, optimizer="sls")
        >>> model = model.learn(128)
        >>> model.num_timesteps
        128
    """

    algorithm_name: ClassVar[str] = "A2C"

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

    def train(self) -> None:
        """One step on the policy-gradient, value and entropy losses of the whole rollout."""
        batch = self.rollout_buffer.flatten()
        policy = self.policy
        adv = batch.advantages
        if self.normalize_advantage and len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        first: dict[str, torch.Tensor] = {}

        def policy_loss() -> torch.Tensor:
            log_prob, entropy = policy.log_prob_and_entropy(batch.observations, batch.actions)
            pg_loss = -(adv * log_prob).mean()
            ent = entropy.mean()
            if torch.is_grad_enabled() and "pg" not in first:
                first["pg"], first["entropy"] = pg_loss.detach(), ent.detach()
                with torch.no_grad():
                    log_ratio = batch.log_probs - log_prob
                    first["approx_kl"] = ((log_ratio.exp() - 1.0) - log_ratio).mean()
            return pg_loss - self.ent_coef * ent

        def value_loss() -> torch.Tensor:
            loss = (batch.returns - policy.value(batch.observations)).pow(2).mean()
            if torch.is_grad_enabled() and "value" not in first:
                first["value"] = loss.detach()
            return loss

        loss = self._step_losses(policy_loss, value_loss)
        stats: dict[str, list[float]] = {}
        self._record_step_stats(stats)
        self._log_train(
            stats,
            {
                "loss": [loss.detach()],
                "policy_gradient_loss": [first["pg"]],
                "value_loss": [first["value"]],
                "entropy": [first["entropy"]],
                "approx_kl": [first["approx_kl"]],
            },
        )
