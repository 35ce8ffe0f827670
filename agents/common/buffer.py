"""Rollout storage on the training device and generalized advantage estimation.

Everything here is a torch tensor of shape ``(n_steps, n_envs, ...)`` on one device: with a tensor-batched
env the rollout never leaves the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    dones: torch.Tensor,
    gamma: float | torch.Tensor,
    gae_lambda: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Generalized advantage estimation with separate termination and truncation.

    For every transition ``t`` (arrays of shape ``(T, N)``)

    .. math::
        \delta_t = r_t + \gamma (1 - \mathrm{term}_t) V(s'_t) - V(s_t), \qquad
        A_t = \delta_t + \gamma \lambda (1 - \mathrm{done}_t) A_{t+1},

    and the value target is ``R_t = A_t + V(s_t)`` (Schulman et al., 2016, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation", arXiv 1506.02438). ``s'_t`` is the observation the
    transition led to: on a truncated step it is the true final observation, so a time limit bootstraps
    from its value, while a termination does not (``term_t = 1`` zeroes the bootstrap). ``done_t =
    term_t or trunc_t`` cuts the recursion at episode boundaries.

    Args:
        rewards: ``r_t``, shape ``(T, N)``.
        values: ``V(s_t)``, shape ``(T, N)``.
        next_values: ``V(s'_t)``, shape ``(T, N)``; for the last step the value of the observation the
            next rollout starts from.
        terminated: 1 where the episode terminated at ``t`` (bool or float), shape ``(T, N)``.
        dones: 1 where the episode ended at ``t`` by termination or truncation, shape ``(T, N)``.
        gamma: discount factor in ``[0, 1]``; a 0-d tensor keeps the result differentiable in it (the
            meta-gradient problem of :mod:`rlopt.bilevel.problems.metagrad` tunes it that way).
        gae_lambda: GAE parameter in ``[0, 1]``; 1 gives discounted returns minus the baseline; may be a
            0-d tensor, as ``gamma``.

    Returns:
        ``(advantages, returns)``, each of shape ``(T, N)``.

    Example:
        >>> r = torch.ones(3, 1); v = torch.zeros(3, 1); nv = torch.zeros(3, 1)
        >>> z = torch.zeros(3, 1)
        >>> adv, ret = compute_gae(r, v, nv, z, z, gamma=0.5, gae_lambda=1.0)
        >>> adv.squeeze(1).tolist()
        [1.75, 1.5, 1.0]
    """
    if rewards.shape != values.shape or rewards.shape != next_values.shape:
        raise ValueError(
            f"rewards, values and next_values must share a shape, got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)} and {tuple(next_values.shape)}"
        )
    not_terminated = 1.0 - terminated.to(values.dtype)
    not_done = 1.0 - dones.to(values.dtype)
    deltas = rewards + gamma * not_terminated * next_values - values
    discount = gamma * gae_lambda * not_done
    advantages = torch.empty_like(values)
    running = torch.zeros_like(values[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + discount[t] * running
        advantages[t] = running
    return advantages, advantages + values


@dataclass
class RolloutBatch:
    """A flat view of a rollout (only valid transitions), ready to be cut into minibatches."""

    observations: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    def index(self, idx: torch.Tensor) -> RolloutBatch:
        """Rows ``idx`` of every field (a minibatch)."""
        return RolloutBatch(
            self.observations[idx],
            self.actions[idx],
            self.log_probs[idx],
            self.values[idx],
            self.advantages[idx],
            self.returns[idx],
        )


class RolloutBuffer:
    """Fixed-size storage of ``n_steps`` transitions of ``n_envs`` envs, preallocated on ``device``.

    Besides the usual fields it keeps ``next_values`` (the value of the observation each transition led to,
    the true final observation on truncation) and ``valid``: with Gymnasium's next-step autoreset the step
    after an episode end only resets the env (its action is ignored); such transitions are stored, cut the
    GAE recursion, and are dropped from the training batch.

    Example:
        >>> buf = RolloutBuffer(n_steps=4, n_envs=2, obs_shape=(3,), action_shape=(), action_dtype=torch.long)
        >>> buf.observations.shape
        torch.Size([4, 2, 3])
    """

    def __init__(
        self,
        n_steps: int,
        n_envs: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...],
        action_dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        if n_steps <= 0 or n_envs <= 0:
            raise ValueError(f"n_steps and n_envs must be positive, got n_steps={n_steps}, n_envs={n_envs}")
        self.n_steps = n_steps
        self.n_envs = n_envs
        self.device = torch.device(device)
        shape = (n_steps, n_envs)
        f32: dict[str, Any] = {"dtype": torch.float32, "device": self.device}
        self.observations = torch.zeros((*shape, *obs_shape), **f32)
        self.actions = torch.zeros((*shape, *action_shape), dtype=action_dtype, device=self.device)
        self.log_probs = torch.zeros(shape, **f32)
        self.values = torch.zeros(shape, **f32)
        self.next_values = torch.zeros(shape, **f32)
        self.rewards = torch.zeros(shape, **f32)
        self.terminated = torch.zeros(shape, dtype=torch.bool, device=self.device)
        self.dones = torch.zeros(shape, dtype=torch.bool, device=self.device)
        self.valid = torch.ones(shape, dtype=torch.bool, device=self.device)
        self.advantages = torch.zeros(shape, **f32)
        self.returns = torch.zeros(shape, **f32)
        # index of each transition within its episode (0 at an episode's first step)
        self.episode_steps = torch.zeros(shape, dtype=torch.long, device=self.device)
        # true final observations of truncated episodes (same-step autoreset) and where they are
        self.final_observations = torch.zeros((*shape, *obs_shape), **f32)
        self.truncated_final = torch.zeros(shape, dtype=torch.bool, device=self.device)

    def add(
        self,
        step: int,
        obs: torch.Tensor,
        actions: torch.Tensor,
        log_probs: torch.Tensor,
        rewards: torch.Tensor,
        terminated: torch.Tensor,
        dones: torch.Tensor,
        valid: torch.Tensor | None,
    ) -> None:
        """Store the transitions of all envs at rollout step ``step`` (in-place copies, no allocation).

        ``values`` are not stored per step: the rollout loop evaluates the critic on all observations at
        once after the last step and writes ``values`` then.
        """
        self.observations[step].copy_(obs)
        self.actions[step].copy_(actions)
        self.log_probs[step].copy_(log_probs)
        self.rewards[step].copy_(rewards)
        self.terminated[step].copy_(terminated)
        self.dones[step].copy_(dones)
        if valid is None:
            self.valid[step].fill_(True)
        else:
            self.valid[step].copy_(valid)
        self.truncated_final[step].fill_(False)  # set again by add_final_observations when it applies

    def add_final_observations(self, step: int, mask: torch.Tensor, final_obs: torch.Tensor) -> None:
        """Keep the true final observations of the envs ``mask`` whose episode was truncated at ``step``.

        Used with same-step autoreset, where the observation the env returns is already the next episode's
        first one. Their values are computed in one batch by :meth:`compute_returns_and_advantages`.
        """
        self.final_observations[step].copy_(final_obs)
        self.truncated_final[step].copy_(mask)

    def compute_returns_and_advantages(
        self,
        last_values: torch.Tensor,
        gamma: float,
        gae_lambda: float,
        value_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Fill ``next_values``, ``advantages`` and ``returns`` (:func:`compute_gae`).

        ``next_values[t]`` is ``values[t + 1]`` (``last_values`` for the last step), except at truncations
        recorded by :meth:`add_final_observations`, where it is ``value_fn(true final observation)``.
        """
        self.next_values[:-1] = self.values[1:]
        self.next_values[-1] = last_values
        if value_fn is not None and bool(self.truncated_final.any()):
            final_values = value_fn(self.final_observations[self.truncated_final])
            self.next_values[self.truncated_final] = final_values.to(self.next_values.dtype)
        self.truncated_final.fill_(False)
        self.advantages, self.returns = compute_gae(
            self.rewards, self.values, self.next_values, self.terminated, self.dones, gamma, gae_lambda
        )

    def flatten(self) -> RolloutBatch:
        """All valid transitions as one flat batch (time-major order)."""
        n = self.n_steps * self.n_envs

        def flat(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(n, *x.shape[2:])

        batch = RolloutBatch(
            flat(self.observations),
            flat(self.actions),
            flat(self.log_probs),
            flat(self.values),
            flat(self.advantages),
            flat(self.returns),
        )
        valid = self.valid.reshape(n)
        if bool(valid.all()):
            return batch
        return batch.index(valid.nonzero().squeeze(1))
