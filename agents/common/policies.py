"""Actor-critic MLP policies for discrete and Box action spaces.

The distributions are written out (log-softmax, diagonal Gaussian, gSDE's state-dependent Gaussian) rather than
built from
``torch.distributions`` objects: a rollout step and a minibatch loss then cost a few fused tensor ops, and
sampling takes an explicit ``torch.Generator`` so a run is reproducible without touching the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from torch import nn

SUPPORTED_ACTION_SPACES = (spaces.Discrete, spaces.Box)
SUPPORTED_OBSERVATION_SPACES = (spaces.Box,)


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space, algorithm: str) -> None:
    """Raise ``TypeError`` if ``algorithm``'s MLP policy cannot handle the spaces."""
    if not isinstance(observation_space, SUPPORTED_OBSERVATION_SPACES):
        raise TypeError(
            f"{algorithm} supports observation spaces {[s.__name__ for s in SUPPORTED_OBSERVATION_SPACES]}, "
            f"got {observation_space}"
        )
    if not isinstance(action_space, SUPPORTED_ACTION_SPACES):
        raise TypeError(
            f"{algorithm} supports action spaces {[s.__name__ for s in SUPPORTED_ACTION_SPACES]}, "
            f"got {action_space}"
        )
    if isinstance(action_space, spaces.Box) and not (
        np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))
    ):
        raise TypeError(f"{algorithm} needs a Box action space with finite bounds, got {action_space}")


def _mlp(sizes: Sequence[int], activation: type[nn.Module], out_gain: float, ortho_init: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        if ortho_init:
            # orthogonal init with gain sqrt(2) for hidden layers (Engstrom et al., 2020, "Implementation
            # Matters in Deep RL"); a small output gain keeps the initial policy close to uniform
            nn.init.orthogonal_(linear.weight, gain=out_gain if last else math.sqrt(2))
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(activation())
    return nn.Sequential(*layers)


class ActorCriticPolicy(BasePolicy):
    """Separate actor and critic MLPs; categorical actions for ``Discrete``, diagonal Gaussian for ``Box``.

    For a ``Box`` action space the Gaussian has a state-independent learned ``log_std``; sampled actions are
    stored unclipped (their log-probability is exact) and clipped to the bounds only when sent to the env.

    With ``use_sde=True`` the exploration is generalized state-dependent (gSDE; Raffin, Kober & Stulp, 2022,
    "Smooth Exploration for Robotic Reinforcement Learning", CoRL 2021), as stable-baselines3's
    ``StateDependentNoiseDistribution`` with its PPO/A2C defaults (``full_std``, no ``expln``, features not
    learned through the noise): the actor's last hidden features ``z(s)`` (detached) and a noise matrix ``E``
    with entries drawn from ``N(0, exp(log_std)^2)``, ``log_std`` of shape ``(features, actions)``, give the
    action ``mu(s) + z(s) E``. ``E`` is drawn per env copy by :meth:`reset_noise` (at the start of each
    rollout and every ``sde_sample_freq`` steps), so exploration is a smooth function of the state between
    draws. Log-probabilities and entropies are those of ``N(mu(s), z(s)^2 exp(2 log_std) + 1e-6)`` per action.

    Args:
        observation_space: a ``Box`` observation space (flattened).
        action_space: ``Discrete`` or ``Box`` with finite bounds.
        net_arch: hidden layer sizes, shared by the actor and critic shapes (not weights).
        activation_fn: activation class between hidden layers.
        ortho_init: orthogonal initialization (policy head gain 0.01, value head gain 1).
        log_std_init: initial log standard deviation of the Gaussian.
        normalize_obs: feed the networks ``clip((obs - mean) / sqrt(var + 1e-8), -clip_obs, clip_obs)`` with the
            running mean and variance of the observations seen in training (see :meth:`update_obs_stats`), as
            the RL Zoo's ``normalize: true`` does for some envs (MountainCar).
        clip_obs: bound of the normalised observations.
        use_sde: gSDE exploration (``Box`` actions only), see above. The agents' ``use_sde=True`` sets it.

    Example:
        >>> import gymnasium as gym
        >>> pi = ActorCriticPolicy(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2))
        >>> actions, log_probs, values = pi.sample(torch.zeros(3, 4), torch.Generator().manual_seed(0))
        >>> actions.shape, log_probs.shape, values.shape
        (torch.Size([3]), torch.Size([3]), torch.Size([3]))
    """

    obs_mean: torch.Tensor
    obs_var: torch.Tensor
    obs_count: torch.Tensor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        net_arch: Sequence[int] = (64, 64),
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        log_std_init: float = 0.0,
        normalize_obs: bool = False,
        clip_obs: float = 10.0,
        use_sde: bool = False,
    ) -> None:
        check_spaces(observation_space, action_space, "ActorCriticPolicy")
        if not float(clip_obs) > 0:
            raise ValueError(f"Invalid clip_obs: {clip_obs!r}, expected a positive number")
        if use_sde and not isinstance(action_space, spaces.Box):
            raise ValueError(f"Invalid use_sde: gSDE needs a Box action space, got {action_space}")
        super().__init__(observation_space, action_space)
        self.net_arch = [int(h) for h in net_arch]
        self.activation_fn = activation_fn
        self.ortho_init = ortho_init
        self.log_std_init = log_std_init
        self.normalize_obs = bool(normalize_obs)
        self.clip_obs = float(clip_obs)
        self.use_sde = bool(use_sde)
        obs_dim = int(np.prod(observation_space.shape or ()))
        # Running mean and variance of the observations (used when normalize_obs): buffers, so they are saved
        # with the policy and moved with it; float64 so that long runs do not lose precision.
        self.register_buffer("obs_mean", torch.zeros(obs_dim, dtype=torch.float64))
        self.register_buffer("obs_var", torch.ones(obs_dim, dtype=torch.float64))
        self.register_buffer("obs_count", torch.tensor(1e-4, dtype=torch.float64))
        self.discrete = isinstance(action_space, spaces.Discrete)
        if isinstance(action_space, spaces.Discrete):
            out_dim = int(action_space.n)
        else:
            out_dim = int(np.prod(action_space.shape or ()))
        self.actor = _mlp([obs_dim, *self.net_arch, out_dim], activation_fn, 0.01, ortho_init)
        self.critic = _mlp([obs_dim, *self.net_arch, 1], activation_fn, 1.0, ortho_init)
        # gSDE's noise acts on the actor's last hidden features (the observation when there is no hidden layer)
        self.sde_features = self.net_arch[-1] if self.net_arch else obs_dim
        std_shape = (self.sde_features, out_dim) if self.use_sde else (out_dim,)
        self.log_std = nn.Parameter(torch.full(std_shape, float(log_std_init)), requires_grad=not self.discrete)
        # gSDE's noise matrices, one per env copy (drawn by reset_noise; not saved: a fresh draw after loading)
        self.exploration_matrices: torch.Tensor | None = None
        if isinstance(action_space, spaces.Box):
            # copies: as_tensor would share memory with the space, so loading weights would rewrite its bounds
            self.register_buffer("action_low", torch.tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("action_high", torch.tensor(action_space.high, dtype=torch.float32))

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {
            "observation_space": self.observation_space,
            "action_space": self.action_space,
            "net_arch": self.net_arch,
            "activation_fn": self.activation_fn,
            "ortho_init": self.ortho_init,
            "log_std_init": self.log_std_init,
            "normalize_obs": self.normalize_obs,
            "clip_obs": self.clip_obs,
            "use_sde": self.use_sde,
        }

    def actor_parameters(self) -> list[nn.Parameter]:
        """Parameters of the policy (actor and, for Box actions, ``log_std``)."""
        params = list(self.actor.parameters())
        if not self.discrete:
            params.append(self.log_std)
        return params

    def critic_parameters(self) -> list[nn.Parameter]:
        """Parameters of the value function."""
        return list(self.critic.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Actor and critic parameters (``log_std`` is frozen for discrete actions)."""
        return self.actor_parameters() + self.critic_parameters()

    def _flat(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.reshape(obs.shape[0], -1).float()
        if self.normalize_obs:
            std = (self.obs_var + 1e-8).sqrt()
            x = ((x - self.obs_mean.float()) / std.float()).clamp(-self.clip_obs, self.clip_obs)
        return x

    @torch.no_grad()
    def update_obs_stats(self, obs: torch.Tensor) -> None:
        """Merge a batch of observations into the running mean and variance (Chan et al.'s parallel update).

        The agents call it after each update with the rollout's valid observations, so a rollout and the
        update that learns from it see the same normalisation (as stable-baselines3's ``VecNormalize`` with
        ``norm_obs=True`` and ``clip_obs=10``, but inside the policy, so ``predict`` and saved models carry it).
        """
        x = obs.reshape(obs.shape[0], -1).to(self.obs_mean.dtype)
        if x.shape[0] == 0:
            return
        self.merge_obs_stats(x.mean(0), x.var(0, unbiased=False), x.shape[0])

    @torch.no_grad()
    def merge_obs_stats(self, batch_mean: torch.Tensor, batch_var: torch.Tensor, n: int) -> None:
        """Merge the mean and (biased) variance of ``n`` observations into the running statistics."""
        if n <= 0:
            return
        batch_mean = batch_mean.to(self.obs_mean.dtype)
        batch_var = batch_var.to(self.obs_var.dtype)
        count = self.obs_count.clone()
        total = count + n
        delta = batch_mean - self.obs_mean
        self.obs_mean += delta * (n / total)
        self.obs_var.mul_(count).add_(batch_var * n + delta.square() * (count * n / total)).div_(total)
        self.obs_count.copy_(total)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``V(obs)``, shape ``(B,)``."""
        return self.critic(self._flat(obs)).squeeze(-1)

    def act(self, obs: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample actions with ``generator``; returns ``(actions, log_probs)`` (the actor alone).

        The rollout loop acts with this and evaluates the critic on the whole rollout in one batch
        afterwards: the parameters do not change during a rollout, so the values are the same.
        """
        if self.use_sde:
            return self._act_sde(self._flat(obs), generator)
        out = self.actor(self._flat(obs))
        if self.discrete:
            logits = torch.log_softmax(out, dim=-1)
            # Gumbel-max: argmax(logits + Gumbel noise) is a categorical sample, one fused op on any device
            u = torch.rand(out.shape, generator=generator, device=out.device, dtype=out.dtype)
            actions = torch.argmax(logits - torch.log(-torch.log(u.clamp_min(1e-20))), dim=-1)
            return actions, logits.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        std = self.log_std.exp()
        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        actions = out + std * noise
        return actions, self._gaussian_log_prob(out, actions)

    def sample(
        self, obs: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample actions with ``generator``; returns ``(actions, log_probs, values)``."""
        actions, log_probs = self.act(obs, generator)
        return actions, log_probs, self.value(obs)

    def _gaussian_log_prob(self, mean: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - mean) / self.log_std.exp()
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    # ------------------------------------------------------------------------------------------------ gSDE
    def _sde_std(self) -> torch.Tensor:
        """Standard deviations of the entries of gSDE's noise matrix, ``(features, actions)``."""
        return self.log_std.exp()

    def _features_and_mean(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor's last hidden features and its output (the mean action) for flattened observations."""
        features = self.actor[:-1](x)
        return features, self.actor[-1](features)

    def _sde_log_std(self, features: torch.Tensor) -> torch.Tensor:
        """Per-action log standard deviation of gSDE's Gaussian: ``0.5 log(z^2 std^2 + 1e-6)``."""
        variance = features.detach().square() @ self._sde_std().square()
        return 0.5 * torch.log(variance + 1e-6)

    def _sde_log_prob_and_entropy(
        self, features: torch.Tensor, mean: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        log_std = self._sde_log_std(features)
        z = (actions - mean) * torch.exp(-log_std)
        half_log_2pi = 0.5 * math.log(2 * math.pi)
        log_prob = (-0.5 * z.square() - log_std - half_log_2pi).sum(-1)
        return log_prob, (0.5 + half_log_2pi + log_std).sum(-1)

    @torch.no_grad()
    def _draw_matrices(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """``n`` noise matrices ``(n, features, actions)`` with entries from ``N(0, exp(log_std)^2)``."""
        std = self._sde_std()
        return std * torch.randn((int(n), *std.shape), generator=generator, device=std.device, dtype=std.dtype)

    @torch.no_grad()
    def reset_noise(self, n_envs: int = 1, generator: torch.Generator | None = None) -> None:
        """Draw gSDE's noise matrices for ``n_envs`` copies with ``generator`` (the global RNG if None).

        A no-op without ``use_sde`` (stable-baselines3's ``reset_noise`` raises there; the agents call it only
        under gSDE).
        """
        if self.use_sde:
            self.exploration_matrices = self._draw_matrices(n_envs, generator)

    def _sde_actions(self, features: torch.Tensor, mean: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
        """``mu(s) + z(s) E`` with one matrix ``E`` per row."""
        return mean + torch.bmm(features.detach().unsqueeze(1), matrices).squeeze(1)

    def _act_sde(self, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        features, mean = self._features_and_mean(x)
        matrices = self.exploration_matrices
        if matrices is None or matrices.shape[0] != x.shape[0] or matrices.shape[1:] != self.log_std.shape:
            self.reset_noise(x.shape[0], generator)  # a batch the current draw does not cover
            matrices = self.exploration_matrices
        assert matrices is not None
        actions = self._sde_actions(features, mean, matrices)
        return actions, self._sde_log_prob_and_entropy(features, mean, actions)[0]

    def evaluate_actions(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log pi(a|s), entropy of pi(.|s), V(s))`` for a batch, differentiable."""
        x = self._flat(obs)
        if self.use_sde:
            features, mean = self._features_and_mean(x)
            return (*self._sde_log_prob_and_entropy(features, mean, actions), self.critic(x).squeeze(-1))
        out = self.actor(x)
        if self.discrete:
            logits = torch.log_softmax(out, dim=-1)
            log_probs = logits.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(logits.exp() * logits).sum(-1)
        else:
            log_probs = self._gaussian_log_prob(out, actions)
            entropy = (0.5 + 0.5 * math.log(2 * math.pi) + self.log_std).sum().expand(x.shape[0])
        return log_probs, entropy, self.critic(x).squeeze(-1)

    def log_prob_and_entropy(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actor-only part of :meth:`evaluate_actions` (no critic forward)."""
        x = self._flat(obs)
        if self.use_sde:
            return self._sde_log_prob_and_entropy(*self._features_and_mean(x), actions)
        out = self.actor(x)
        if self.discrete:
            logits = torch.log_softmax(out, dim=-1)
            return logits.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1), -(logits.exp() * logits).sum(-1)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + self.log_std).sum().expand(x.shape[0])
        return self._gaussian_log_prob(out, actions), entropy

    def env_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions as the env takes them: clipped to the Box bounds (discrete actions unchanged)."""
        if self.discrete:
            return actions
        low, high = self.action_low, self.action_high
        assert isinstance(low, torch.Tensor) and isinstance(high, torch.Tensor)
        return torch.maximum(torch.minimum(actions, high), low)

    def _predict(self, observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:  # type: ignore[override]
        # used by SB3's predict (evaluate_policy, EvalCallback); stochastic prediction uses the global RNG
        # like SB3 does, so it never disturbs the training generator
        x = self._flat(observation)
        if self.use_sde and not deterministic:
            # a noise matrix per observation from the global RNG; the rollout's matrices are left alone
            features, mean = self._features_and_mean(x)
            return self.env_actions(self._sde_actions(features, mean, self._draw_matrices(x.shape[0], None)))
        out = self.actor(x)
        if self.discrete:
            if deterministic:
                return out.argmax(-1)
            return torch.multinomial(torch.softmax(out, dim=-1), 1).squeeze(-1)
        actions = out if deterministic else out + self.log_std.exp() * torch.randn_like(out)
        return self.env_actions(actions)

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions for ``obs`` (as :meth:`_predict`)."""
        return self._predict(obs, deterministic)
