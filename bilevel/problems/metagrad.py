r"""The RL meta-gradient problem: tune the discount, the GAE lambda or the entropy weight of an actor-critic online.

After Xu, van Hasselt & Silver, "Meta-Gradient Reinforcement Learning", NeurIPS 2018 (arXiv 1805.09801).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from gymnasium import spaces
from torch import Tensor
from torch.func import functional_call

from rlopt.bilevel._tree import Tree
from rlopt.bilevel.problems.base import BilevelProblem
from rlopt.validation import check_at_least, check_closed, check_int, check_open, check_positive

META_PARAMS = ("gamma", "lambda", "entropy")
"""The meta-parameters :class:`MetaGradientRL` can tune."""

METRIC_NAMES = {"gamma": "gamma", "lambda": "gae_lambda", "entropy": "ent_coef"}
"""Meta-parameter -> the key under which :meth:`MetaGradientRL.metrics` reports its current value."""

DEFAULT_INIT = {"gamma": 0.9, "lambda": 0.9, "entropy": 0.01}
"""Start values of the tuned meta-parameter when ``init`` is not given."""


@dataclass
class Rollout:
    """``n_steps`` transitions of ``num_envs`` copies collected with one policy (time-major, on one device).

    Attributes:
        observations: ``s_t``, shape ``(T, N, obs_dim)``.
        actions: ``a_t``, shape ``(T, N)`` (int64).
        log_probs: ``log π_b(a_t|s_t)`` of the behaviour policy that collected them, ``(T, N)``.
        values: ``V_b(s_t)`` of the behaviour critic, ``(T, N)``.
        next_values: ``V_b(s'_t)`` of the state each transition led to (the true final state on a time-limit
            truncation), ``(T, N)``.
        rewards: ``r_t``, ``(T, N)``.
        terminated: 1 where the episode terminated at ``t`` (no bootstrap), ``(T, N)`` bool.
        dones: 1 where it terminated or was truncated (cuts the GAE recursion), ``(T, N)`` bool.
        episode_returns: undiscounted returns of the episodes that ended in this rollout, 1-D.
    """

    observations: Tensor
    actions: Tensor
    log_probs: Tensor
    values: Tensor
    next_values: Tensor
    rewards: Tensor
    terminated: Tensor
    dones: Tensor
    episode_returns: Tensor

    def __len__(self) -> int:
        return int(self.actions.numel())


class MetaGradientRL(BilevelProblem):
    r"""Tune one agent hyperparameter ``η`` online by the one-step look-ahead meta-gradient (Xu et al. 2018).

    The agent is an actor-critic (separate actor and critic MLPs of
    :class:`rlopt.agents.common.ActorCriticPolicy`, categorical actions) on a tensor-batched env
    (``rlopt.envs.make``, e.g. CartPole-v1 with ``num_envs`` copies on ``device``). Upper variable ``x``: a
    scalar parametrising ``η`` (``γ = σ(x)``, ``λ = σ(x)`` or entropy weight ``c = exp(x)``). Lower variable
    ``y``: the policy and value parameters ``θ`` (a dict of tensors). A batch is a :class:`Rollout` of
    ``n_steps × num_envs`` transitions collected *with the current policy* (the samplers take ``(x, y)``).

    **Inner (lower) loss** on a rollout ``τ`` from the behaviour policy ``θ_b`` (``= θ`` when it is
    evaluated), with GAE advantages ``A^η_t`` and targets ``G^η_t = A^η_t + V_b(s_t)``
    (:func:`rlopt.agents.common.compute_gae`, differentiable in ``γ`` and ``λ``, the values ``V_b`` being constants
    of the rollout):

        L_in(τ, θ, η) = -mean_t[A^η_t ρ_t(θ)] + c_v mean_t[(G^η_t - V_θ(s_t))²] - c mean_t[H(π_θ(·|s_t))],
        ρ_t(θ) = π_θ(a_t|s_t) / π_b(a_t|s_t).

    At ``θ = θ_b`` its gradient is the paper's actor-critic update direction (``∇ρ = ∇ log π`` there); the
    ratio form (rather than ``A log π``) only changes values off the behaviour point, where it is the usual
    first-order model of the return (so line searches on it are meaningful).

    **Inner step** (the solver's lower step): ``θ' = θ - α ∇_θ L_in(τ, θ, η)``, i.e. the paper's
    ``θ' = θ + f(τ, θ, η)`` with ``f = α ∂J/∂θ`` and ``J = -L_in``.

    **Outer (upper) loss** on a *fresh* rollout ``τ'`` collected with ``θ'``, with the reference
    meta-parameters ``η̄`` held fixed (the constructor's ``gamma``, ``gae_lambda``, ``ent_coef``):

        L_out(τ', θ') = -mean_t[Ā_t ρ'_t(θ')] - c̄ mean_t[H(π_θ'(·|s'_t))],   Ā = GAE(γ̄, λ̄) on τ',

    whose ``θ'``-gradient at the behaviour point is the paper's meta-objective gradient
    ``∂J'(τ', θ', η̄)/∂θ' = (g_η̄(τ') - v(S')) ∂ log π_θ'(A'|S')/∂θ'`` (plus ``c̄ ∇H``, zero by default).

    **Meta-gradient** (algorithm ``"lookahead"`` of :class:`rlopt.bilevel.BilevelSolver`, the hypergradient
    ``"itd"`` with one step): ``dL_out(τ', θ'(η))/dη = ∂L_out/∂θ' · dθ'/dη`` with
    ``dθ'/dη = -α ∂²L_in(τ, θ, η)/∂θ∂η``, ``θ`` held constant. The paper accumulates ``dθ/dη`` over past
    updates in a decayed trace ``z' = μ z + ∂f/∂η``; this is ``μ = 0`` (only the last update's term), chained
    through ``dη/dx`` of the parametrisation. Then ``θ ← θ'`` and ``x`` takes the upper rule's step along
    the meta-gradient. The paper measures ``θ'`` on a subsequent, independent sample ("online
    cross-validation"); here ``τ'`` (collected at ``θ'``) is also reused as the next step's ``τ`` when the
    policy has not changed in between (``reuse_rollouts``, our choice): one rollout per update, every
    transition used once by each level, and ``τ'`` still independent of the step it validates.

    Differences from the paper: its networks also take ``η`` as an input (an embedding, so that values and
    policy follow the changing return); here they do not. Its agent is IMPALA on Atari; here a small
    synchronous actor-critic on batched classic-control envs.

    Args:
        env_id: a discrete-action env of :func:`rlopt.envs.make` (``"CartPole-v1"``, ``"Acrobot-v1"``,
            ``"MountainCar-v0"``).
        meta_param: the tuned hyperparameter: ``"gamma"``, ``"lambda"`` (GAE λ) or ``"entropy"``.
        init: its start value (``γ``, ``λ`` in the open interval (0, 1); entropy weight > 0); default
            :data:`DEFAULT_INIT`.
        gamma: ``γ̄``: the discount of the outer objective, and of the inner one when it is not tuned.
        gae_lambda: ``λ̄``, likewise (1: Monte-Carlo returns with bootstrapping at the rollout's end).
        ent_coef: ``c̄``, likewise.
        vf_coef: value-loss weight ``c_v`` of the inner loss.
        num_envs: env copies stepped together.
        n_steps: steps per copy in one rollout (a batch has ``n_steps * num_envs`` transitions).
        net_arch: hidden sizes of the actor and of the critic.
        eval_envs: copies run greedily, one episode each, by :meth:`metrics`.
        reuse_rollouts: reuse the upper rollout as the next lower one when the policy is unchanged.
        seed: seed of the network initialisation, the environments and the evaluation.
        device: where the envs, rollouts and networks live.
        dtype: floating dtype of networks and losses (float64 for derivative checks).

    Example:
        >>> from rlopt.bilevel import BilevelSolver
        >>> problem = MetaGradientRL("CartPole-v1", meta_param="gamma", init=0.9, num_envs=8, n_steps=16)
        >>> solver = BilevelSolver(problem, "lookahead", upper="adam", lower="sgd", lower_lr=0.01)
        >>> history = solver.run(outer_steps=3, eval_every=3)
        >>> sorted(k for k in history.final if k in ("gamma", "eval_return", "env_steps"))
        ['env_steps', 'eval_return', 'gamma']
    """

    name = "metagrad"
    algorithms = ("lookahead",)
    algorithms_note = (
        "its inner problem is one policy-gradient step on fresh on-policy data, not a minimiser y*(x) of a "
        "fixed lower loss, so the implicit-differentiation algorithms do not apply; use 'lookahead' (the "
        "one-step look-ahead meta-gradient of Xu et al. 2018)"
    )

    def __init__(
        self,
        env_id: str = "CartPole-v1",
        *,
        meta_param: str = "gamma",
        init: float | None = None,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        num_envs: int = 16,
        n_steps: int = 32,
        net_arch: Sequence[int] = (64, 64),
        eval_envs: int = 16,
        reuse_rollouts: bool = True,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if meta_param not in META_PARAMS:
            raise ValueError(f"Invalid meta_param: {meta_param!r}, expected one of {list(META_PARAMS)}")
        self.gamma = check_closed("gamma", gamma, 0.0, 1.0)
        self.gae_lambda = check_closed("gae_lambda", gae_lambda, 0.0, 1.0)
        self.ent_coef = check_at_least("ent_coef", ent_coef, 0.0)
        self.vf_coef = check_at_least("vf_coef", vf_coef, 0.0)
        start = DEFAULT_INIT[meta_param] if init is None else init
        if meta_param == "entropy":
            self.init = check_positive("init", start)
        else:
            self.init = check_open("init", start, 0.0, 1.0)
        self.num_envs = check_int("num_envs", num_envs, 1)
        self.n_steps = check_int("n_steps", n_steps, 1)
        self.eval_envs = check_int("eval_envs", eval_envs, 1)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"Invalid dtype: {dtype}, expected torch.float32 or torch.float64")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"Invalid seed: {seed!r}, expected an int")
        # envs and agents are imported here, not at module level: `import bilevel` stays free of them (and of
        # stable-baselines3) unless an RL problem is built.
        from rlopt import envs
        from rlopt.agents.common.policies import ActorCriticPolicy

        self.env_id = env_id
        self.meta_param = meta_param
        self.reuse_rollouts = bool(reuse_rollouts)
        self.seed = seed
        self.device = torch.device(device)
        self.dtype = dtype
        # Same-step autoreset: every transition is a real one, and a truncated episode's final observation
        # comes with the step (its value is the bootstrap target).
        self.env = envs.make(env_id, num_envs, device=self.device, seed=seed, autoreset_mode="same_step")
        if not isinstance(self.env.single_action_space, spaces.Discrete):
            raise ValueError(
                f"Invalid env_id: {env_id!r} has action space {self.env.single_action_space}; MetaGradientRL "
                "needs a discrete-action env (CartPole-v1, Acrobot-v1, MountainCar-v0)"
            )
        self.eval_env = envs.make(env_id, self.eval_envs, device=self.device, seed=seed + 1, autoreset_mode="same_step")
        # The module only holds the architecture and the initial weights: the losses call its actor and
        # critic functionally on y. Its constructor initialises with the global RNG, so it runs under a
        # forked RNG seeded with `seed`: reproducible, and the caller's global RNG state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            policy = ActorCriticPolicy(self.env.single_observation_space, self.env.single_action_space, net_arch)
        self.policy = policy.to(device=self.device, dtype=dtype)
        self._initial_y = {
            f"{part}.{k}": v.detach().clone()
            for part in ("actor", "critic")
            for k, v in getattr(self.policy, part).named_parameters()
        }
        self.n_lower = self.n_upper = self.num_envs * self.n_steps
        self.lower_batch_size = self.upper_batch_size = None
        self._sampler = torch.Generator(device=self.device)
        self.reset()

    # ------------------------------------------------------------------------------------------------
    # Variables and meta-parameters

    def initial_x(self) -> Tensor:
        """``x`` of the start value: ``logit(init)`` for γ and λ, ``log(init)`` for the entropy weight."""
        v = self.init
        value = math.log(v) if self.meta_param == "entropy" else math.log(v / (1.0 - v))
        return torch.tensor(value, dtype=self.dtype, device=self.device)

    def initial_y(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self._initial_y.items()}

    def meta_value(self, x: Tree) -> Tensor:
        """``η(x)``: ``σ(x)`` for γ and λ, ``exp(x)`` for the entropy weight (differentiable)."""
        assert isinstance(x, Tensor)
        return torch.exp(x) if self.meta_param == "entropy" else torch.sigmoid(x)

    def _inner_coefficients(self, x: Tree) -> tuple[Tensor | float, Tensor | float, Tensor | float]:
        eta = self.meta_value(x)
        gamma = eta if self.meta_param == "gamma" else self.gamma
        lam = eta if self.meta_param == "lambda" else self.gae_lambda
        ent = eta if self.meta_param == "entropy" else self.ent_coef
        return gamma, lam, ent

    # ------------------------------------------------------------------------------------------------
    # Networks (called functionally on y)

    def _part(self, y: Tree, part: str) -> dict[str, Tensor]:
        assert isinstance(y, dict)
        prefix = part + "."
        return {k[len(prefix) :]: v for k, v in y.items() if k.startswith(prefix)}

    def log_pi(self, y: Tree, obs: Tensor) -> Tensor:
        """``log π_y(·|obs)``, shape ``(B, n_actions)``, differentiable in ``y``."""
        # log-softmax of the actor's logits, in the problem's dtype (ActorCriticPolicy's own helpers compute
        # in float32, which would spoil float64 derivative checks).
        return torch.log_softmax(functional_call(self.policy.actor, self._part(y, "actor"), (obs,)), dim=-1)

    def _value(self, y: Tree, obs: Tensor) -> Tensor:
        return functional_call(self.policy.critic, self._part(y, "critic"), (obs,)).squeeze(-1)

    def _policy_terms(self, y: Tree, batch: Rollout) -> tuple[Tensor, Tensor]:
        """``(ρ_t, H_t)`` flattened over the rollout: probability ratios to the behaviour policy, entropies."""
        obs = batch.observations.reshape(len(batch), -1)
        log_pi = self.log_pi(y, obs)
        log_p = log_pi.gather(-1, batch.actions.reshape(-1, 1)).squeeze(-1)
        entropy = -(log_pi.exp() * log_pi).sum(-1)
        return torch.exp(log_p - batch.log_probs.reshape(-1)), entropy

    def _advantages(self, batch: Rollout, gamma: Tensor | float, lam: Tensor | float) -> tuple[Tensor, Tensor]:
        from rlopt.agents.common.buffer import compute_gae

        # compute_gae is plain tensor arithmetic: with 0-dim tensors for gamma and lambda the advantages are
        # differentiable in them (its annotations say float).
        return compute_gae(
            batch.rewards,
            batch.values,
            batch.next_values,
            batch.terminated,
            batch.dones,
            gamma,
            lam,
        )

    # ------------------------------------------------------------------------------------------------
    # Losses

    @staticmethod
    def _rollout(batch: object, level: str) -> Rollout:
        if not isinstance(batch, Rollout):
            raise ValueError(
                f"MetaGradientRL.{level}_loss needs a Rollout batch (from sample_{level}_batch(generator, x, y)), "
                f"got {type(batch).__name__}"
            )
        return batch

    def lower_loss(self, x: Tree, y: Tree, batch: Any = None) -> Tensor:
        """``L_in(τ, θ, η(x))`` (class docstring) on the rollout ``batch``."""
        rollout = self._rollout(batch, "lower")
        gamma, lam, ent = self._inner_coefficients(x)
        advantages, returns = self._advantages(rollout, gamma, lam)
        ratio, entropy = self._policy_terms(y, rollout)
        values = self._value(y, rollout.observations.reshape(len(rollout), -1))
        policy_loss = -(advantages.reshape(-1) * ratio).mean()
        value_loss = (returns.reshape(-1) - values).pow(2).mean()
        return policy_loss + self.vf_coef * value_loss - ent * entropy.mean()

    def upper_loss(self, x: Tree, y: Tree, batch: Any = None) -> Tensor:
        """``L_out(τ', θ')`` (class docstring) with the reference ``γ̄, λ̄, c̄``; does not depend on ``x``."""
        rollout = self._rollout(batch, "upper")
        advantages, _ = self._advantages(rollout, self.gamma, self.gae_lambda)
        ratio, entropy = self._policy_terms(y, rollout)
        loss = -(advantages.reshape(-1).detach() * ratio).mean()
        return loss - self.ent_coef * entropy.mean() if self.ent_coef > 0 else loss

    # ------------------------------------------------------------------------------------------------
    # Data: rollouts with the current policy

    def reset(self) -> None:
        """Reset the training envs, the rollout cache and the counters (the solver calls this at start)."""
        obs, _ = self.env.reset(seed=self.seed)
        self._obs = obs.to(self.dtype)
        self._sampler.manual_seed(self.seed)
        self._cache: tuple[dict[str, Tensor], Rollout] | None = None
        self.env_steps = 0
        self.recent_returns: deque[float] = deque(maxlen=100)

    def sample_lower_batch(self, generator: torch.Generator, x: Tree | None = None, y: Tree | None = None) -> Rollout:
        """A rollout ``τ`` with the policy ``y`` (the previous upper rollout if ``y`` has not changed since)."""
        return self._sample_rollout(generator, y, use_cache=self.reuse_rollouts)

    def sample_upper_batch(self, generator: torch.Generator, x: Tree | None = None, y: Tree | None = None) -> Rollout:
        """A fresh rollout ``τ'`` with the policy ``y``."""
        rollout = self._sample_rollout(generator, y, use_cache=False)
        if self.reuse_rollouts:
            assert isinstance(y, dict)
            self._cache = ({k: v.detach().clone() for k, v in y.items()}, rollout)
        return rollout

    def _sample_rollout(self, generator: torch.Generator, y: Tree | None, use_cache: bool) -> Rollout:
        if not isinstance(y, dict):
            raise ValueError(
                "MetaGradientRL collects its batches with the current policy: pass the lower variable y "
                f"(a dict of tensors) to sample_lower_batch/sample_upper_batch, got {type(y).__name__}"
            )
        if use_cache and self._cache is not None:
            params, rollout = self._cache
            self._cache = None
            if params.keys() == y.keys() and all(torch.equal(params[k], y[k].detach()) for k in params):
                return rollout
        # One draw from the caller's generator seeds the on-device sampler: the stream of rollouts is a
        # function of the caller's seed, and no per-step random numbers cross from host to device.
        self._sampler.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return self.collect(y, self._sampler)

    @torch.no_grad()
    def collect(self, y: Tree, generator: torch.Generator) -> Rollout:
        """Step the training envs ``n_steps`` times with the policy ``y`` (actions sampled with ``generator``)."""
        y = {k: v.detach() for k, v in y.items()} if isinstance(y, dict) else y
        T, N, dev, dt = self.n_steps, self.num_envs, self.device, self.dtype
        obs_dim = self._obs.shape[1]
        observations = torch.empty(T, N, obs_dim, dtype=dt, device=dev)
        final_obs = torch.zeros(T, N, obs_dim, dtype=dt, device=dev)
        actions = torch.empty(T, N, dtype=torch.long, device=dev)
        log_probs = torch.empty(T, N, dtype=dt, device=dev)
        rewards = torch.empty(T, N, dtype=dt, device=dev)
        terminated = torch.empty(T, N, dtype=torch.bool, device=dev)
        truncated = torch.empty(T, N, dtype=torch.bool, device=dev)
        ended_returns = []
        obs = self._obs
        for t in range(T):
            log_pi = self.log_pi(y, obs)
            # Gumbel-max: argmax(log π + Gumbel noise) is a categorical sample (as ActorCriticPolicy.sample).
            u = torch.rand(log_pi.shape, generator=generator, device=dev, dtype=dt).clamp_min(1e-20)
            a = torch.argmax(log_pi - torch.log(-torch.log(u)), dim=-1)
            observations[t] = obs
            actions[t] = a
            log_probs[t] = log_pi.gather(-1, a.unsqueeze(-1)).squeeze(-1)
            next_obs, reward, term, trunc, info = self.env.step(a)
            rewards[t] = reward
            terminated[t] = term
            truncated[t] = trunc
            if "final_obs" in info:
                final_obs[t] = info["final_obs"].to(dt)
            if "episode_stats" in info:  # on the steps where a copy ended (every step on accelerators)
                ended_returns.append(info["episode_stats"]["r"][info["_episode_stats"]])
            obs = next_obs.to(dt)
        self._obs = obs
        self.env_steps += T * N
        flat = observations.reshape(T * N, obs_dim)
        values = self._value(y, flat).reshape(T, N)
        next_values = torch.empty_like(values)
        next_values[:-1] = values[1:]
        next_values[-1] = self._value(y, obs)
        # A time limit is not a terminal state: bootstrap from the value of the true final observation.
        if bool(truncated.any()):
            next_values[truncated] = self._value(y, final_obs[truncated])
        episode_returns = torch.cat(ended_returns).to(dt) if ended_returns else torch.zeros(0, dtype=dt, device=dev)
        self.recent_returns.extend(episode_returns.tolist())
        return Rollout(
            observations, actions, log_probs, values, next_values, rewards, terminated, terminated | truncated,
            episode_returns,
        )

    # ------------------------------------------------------------------------------------------------
    # Evaluation

    @torch.no_grad()
    def evaluate(self, y: Tree) -> float:
        """Mean undiscounted return of one greedy episode on each of ``eval_envs`` copies (same starts every call)."""
        env = self.eval_env
        obs, _ = env.reset(seed=self.seed + 1)
        returns = torch.zeros(self.eval_envs, dtype=torch.float64, device=self.device)
        finished = torch.zeros(self.eval_envs, dtype=torch.bool, device=self.device)
        for _ in range(env.max_episode_steps):
            actions = torch.argmax(self.log_pi(y, obs.to(self.dtype)), dim=-1)
            obs, _, _, _, info = env.step(actions)
            if "episode_stats" not in info:
                continue
            ended = info["_episode_stats"] & ~finished
            returns[ended] = info["episode_stats"]["r"][ended].to(torch.float64)
            finished |= ended
            if bool(finished.all()):
                break
        return float(returns.mean())

    def metrics(self, x: Tree, y: Tree) -> dict[str, float]:
        """``eval_return`` (greedy, :meth:`evaluate`), ``train_return`` (mean of the last 100 training
        episodes, nan before the first ends), ``env_steps`` and the tuned meta-parameter's current value
        (key ``gamma``, ``gae_lambda`` or ``ent_coef``)."""
        recent = list(self.recent_returns)
        return {
            "eval_return": self.evaluate(y),
            "train_return": sum(recent) / len(recent) if recent else float("nan"),
            "env_steps": float(self.env_steps),
            METRIC_NAMES[self.meta_param]: float(self.meta_value(x)),
        }

    def __repr__(self) -> str:
        return (
            f"MetaGradientRL(env_id={self.env_id!r}, meta_param={self.meta_param!r}, init={self.init}, "
            f"gamma={self.gamma}, gae_lambda={self.gae_lambda}, ent_coef={self.ent_coef}, num_envs={self.num_envs}, "
            f"n_steps={self.n_steps}, device={self.device}, dtype={self.dtype})"
        )
