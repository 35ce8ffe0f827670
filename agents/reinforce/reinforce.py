"""REINFORCE and GPOMDP policy gradients (no critic) with any rlopt step size, the Polyak step included."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from stable_baselines3.common.callbacks import BaseCallback

import rlopt
from rlopt.agents.common.base import OnPolicyAgent
from rlopt.agents.common.buffer import compute_gae
from rlopt.agents.common.optim import check_optimizer
from rlopt.rules.policy_polyak import return_target

ESTIMATORS = ("reinforce", "gpomdp")


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
#: relative margin of the online return target used as SPS's lower bound (PolyakPG's default)
SPS_MARGIN = 0.1


class REINFORCE(OnPolicyAgent):
    r"""Monte-Carlo policy gradient of the discounted return :math:`J(\theta) = \mathbb{E}[\sum_k \gamma^k r_k]`.

    Per rollout, over the :math:`M` episodes that end in it, the gradient estimate is

    .. math::
        \hat g = \frac{1}{M} \sum_{\text{episodes}} \sum_t \nabla_\theta \log \pi_\theta(a_t|s_t)\,(W_t - b),

    with ``estimator="reinforce"`` (Williams, 1992): :math:`W_t = G_0 = \sum_k \gamma^k r_k`, the whole
    episode's discounted return; ``estimator="gpomdp"`` (Baxter & Bartlett, 2001; the estimator of the
    Polyak policy-gradient paper, Li et al., arXiv 2404.07525): :math:`W_t = \sum_{k \ge t} \gamma^k r_k`,
    which drops the rewards earned before :math:`a_t` (they do not depend on it) and has lower variance.
    ``b`` is the batch mean of :math:`W` when ``baseline=True``. One optimizer step per rollout, on the loss

    .. math::
        L(\theta') = -\hat J - \frac{1}{M} \sum \Big(\frac{\pi_{\theta'}(a_t|s_t)}{\pi_\theta(a_t|s_t)} - 1\Big)
        (W_t - b) - c_{ent} \bar H,

    the first-order (importance-ratio) estimate of :math:`-J(\theta')` around the rollout's policy
    :math:`\theta` (the surrogate of TRPO, Schulman et al., 2015), with :math:`\hat J` the mean discounted
    return of the rollout's episodes. At :math:`\theta' = \theta` its gradient is exactly :math:`-\hat g`
    (the classic :math:`-\frac{1}{M}\sum \log\pi\,(W_t - b)` surrogate's), so Adam and SGD take the same
    steps; its *value* is what the step-size rules need: :math:`-\hat J` at the iterate, and at a trial
    point of a line search (``"sls"``, ``"ponos"``) an estimate of the return there, bounded below for
    discrete actions (:math:`\pi'/\pi \le 1/\pi`). The log-likelihood surrogate is unbounded below (a
    negative-advantage action's :math:`\log\pi' \to -\infty`), so an Armijo search on it accepts steps
    that make the policy deterministic, and its value at the iterate is about 0, which gives SPS no gap.
    With ``"sps"`` the lower bound is :math:`f^* = -J^*_k`, the return target of :class:`rlopt.PolyakPG`
    (running best :math:`\hat J` plus 10 %), unless ``optimizer_kwargs`` sets ``f_star`` (e.g. 0 when every
    reward is non-positive).

    Only transitions whose episode ends inside the rollout are used (their future rewards are known);
    a truncated episode counts its rewards up to the time limit. Choose ``n_steps`` at least as long as
    typical episodes.

    With ``optimizer="polyak"`` the step is :class:`rlopt.PolyakPG` with
    ``value = J_hat``, the mean discounted return :math:`G_0` of the episodes that ended in this rollout
    (the same trajectories as the gradient, in the units of :math:`J`), and :math:`J^*` estimated online by
    rlopt as the running best :math:`J_hat` plus a margin (pass ``optimizer_kwargs={"j_star": ...}`` when
    the optimal return is known). Keep ``normalize_advantage=False`` with the Polyak step: it needs the
    gradient of :math:`J` itself, not of a rescaled surrogate.

    ``twin=True`` (with ``"polyak"``) estimates :math:`J^*` by a twin model, as the Polyak policy-gradient paper
    does (Li et al., arXiv 2404.07525): a second policy, initialised and sampled independently, is trained
    beside the first on its own copies of the env. After each pair of rollouts the twin whose :math:`\hat J` is
    lower takes the Polyak step with :math:`J^*` = the other's :math:`\hat J`, a return that a policy of this
    family reached on this rollout's data, and the better twin does not move (the rule of the public twin-Polyak
    code). ``twin="both"`` also steps the better twin, on the online target (its running best plus the margin).
    ``model.policy`` is the twin that measured better (the two swap roles). Both twins' env steps count in
    ``num_timesteps``. Of the paper, its abstract and summaries of it could be read ("twin-model" estimation of
    :math:`V^*`, GPOMDP, an entropy-regularised loss against explosive updates: ``ent_coef``), not its text.
    Measured by ``benchmarks/bench_polyak_pg.py`` (GPOMDP at the yaml's rollout shape and budget, 5 seeds, median
    final return over 20 episodes, seeds at the reward threshold): CartPole-v1 twin 131 (1/5), ``"both"`` 180
    (1/5), the online target 494 (3/5), tuned Adam 500 (3/5); Acrobot-v1 twin -435 (0/5), ``"both"`` -89 (4/5),
    the online target -500 (1/5), Adam -500 (1/5). No variant wins on both envs; returns vary widely across seeds.

    Example:
        >>> from rlopt import agents
        >>> model = agents.REINFORCE("MlpPolicy", "CartPole-v1", n_envs=4, n_steps=64, seed=0,
        ...                          estimator="gpomdp", optimizer="polyak")
        >>> model = model.learn(512)
        >>> model.num_timesteps
        512
    """

    algorithm_name: ClassVar[str] = "REINFORCE"
    #: one step per rollout and no clip: the policy's line searches keep TRPO's trust region, as A2C's
    DEFAULT_MAX_KL: ClassVar[float | None] = 0.01
    uses_critic: ClassVar[bool] = False

    def __init__(
        self,
        policy: Any,
        env: Any,
        optimizer: Any = "adam",
        optimizer_kwargs: dict[str, Any] | None = None,
        learning_rate: float = 1e-2,
        n_envs: int | None = 16,
        n_steps: int = 512,
        gamma: float = 0.99,
        estimator: str = "gpomdp",
        baseline: bool = True,
        normalize_advantage: bool = False,
        ent_coef: float = 0.0,
        max_grad_norm: float | None = None,
        twin: bool | str = False,
        **kwargs: Any,
    ) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"Invalid estimator: {estimator!r}, expected one of {list(ESTIMATORS)}")
        self.estimator = estimator
        self.baseline = bool(baseline)
        if twin not in (False, True, "worse", "both"):
            raise ValueError(f"Invalid twin: {twin!r}, expected False, True (the same as 'worse') or 'both'")
        self.twin: bool | str = "worse" if twin is True else twin
        self._past_return: torch.Tensor | None = None
        self._best_return = float("-inf")
        self._rollout: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._twin_agent: REINFORCE | None = None
        self._twin_target: float | None = None
        self._twin_callback: BaseCallback | None = None
        if self.twin:
            if check_optimizer(optimizer) != "polyak":
                raise ValueError(f"Invalid twin=True with optimizer={optimizer!r}: the twin model estimates the "
                                 "return target J* of the Polyak step, use optimizer='polyak'")
            if not isinstance(env, str):
                raise ValueError("Invalid twin=True with an env object: the twin builds its own copies of the env, "
                                 "pass an env id")
            if kwargs.get("process_group", "world") is not None and _distributed():
                raise ValueError("Invalid twin=True in a data-parallel run: pass process_group=None")
        if kwargs.get("normalize_reward"):
            raise ValueError("Invalid normalize_reward=True for REINFORCE: its Monte-Carlo returns set the Polyak "
                             "and SPS targets in the env's units; use normalize_advantage=True to scale its steps")
        self._twin_spec: dict[str, Any] = {}
        super().__init__(
            policy, env, optimizer=optimizer, optimizer_kwargs=optimizer_kwargs, learning_rate=learning_rate,
            n_envs=n_envs, n_steps=n_steps, gamma=gamma, gae_lambda=1.0, ent_coef=ent_coef, vf_coef=0.0,
            max_grad_norm=max_grad_norm, normalize_advantage=normalize_advantage, **kwargs,
        )
        if self.twin:
            self._twin_spec = dict(
                policy=policy, env=env, optimizer_kwargs=optimizer_kwargs, learning_rate=learning_rate,
                n_steps=n_steps, gamma=gamma, estimator=estimator, baseline=baseline,
                normalize_advantage=normalize_advantage, ent_coef=ent_coef, max_grad_norm=max_grad_norm,
                **{k: v for k, v in kwargs.items() if k in ("policy_kwargs", "device", "env_kwargs",
                                                              "stats_window_size")})

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_twin_agent", "_rollout", "_twin_callback"]

    def _make_twin(self) -> REINFORCE:
        """The twin: the same agent on its own env copies (seeded after this one's) from its own initialisation."""
        if not self._twin_spec:
            raise ValueError("this REINFORCE model was loaded without its twin: build it again with twin=True to "
                             "train with the twin-model target")
        n = self.n_envs
        seed = None if self.seed is None else int(self.seed) + n
        twin = REINFORCE(optimizer="polyak", n_envs=n, seed=seed, process_group=None, **self._twin_spec)
        _, twin._twin_callback = twin._setup_learn(1, None, True, "twin", False)  # a callback that never stops
        twin._reset_env()
        return twin

    def collect_rollouts(self, callback: Any) -> bool:
        """The rollout (and, with ``twin=True``, the twin's, on its own env copies; both count in
        ``num_timesteps``); the Monte-Carlo weights of each are computed once, here."""
        if not super().collect_rollouts(callback):
            return False
        self._rollout = self._weights()
        if self.twin:
            if self._twin_agent is None:
                self._twin_agent = self._make_twin()
            twin = self._twin_agent
            before = twin.num_timesteps
            twin.collect_rollouts(twin._twin_callback)
            self.num_timesteps += twin.num_timesteps - before
        return True

    def _on_env_reset(self) -> None:
        assert self._stepper is not None
        # discounted return earned so far by each env's current episode, carried across rollouts
        self._past_return = torch.zeros(self._stepper.num_envs, device=self.device)

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W, usable mask, G_0 of the episodes ending here)``, all from the rollout buffer."""
        assert self._past_return is not None
        buf = self.rollout_buffer
        zeros = torch.zeros_like(buf.rewards)
        # sum_{k >= t} gamma^(k - t) r_k within the episode: GAE with V = 0, lambda = 1, no bootstrap
        to_go, _ = compute_gae(buf.rewards, zeros, zeros, buf.dones, buf.dones, self.gamma, 1.0)
        discount = torch.pow(torch.full_like(buf.rewards, self.gamma), buf.episode_steps.float())
        future = discount * to_go  # sum_{k >= t} gamma^k r_k, k counted from the episode's start
        past = torch.empty_like(buf.rewards)
        carry = self._past_return
        for t in range(buf.n_steps):
            past[t] = carry
            carry = (carry + discount[t] * buf.rewards[t] * buf.valid[t]) * (~buf.dones[t])
        self._past_return = carry
        episode_return = past + future  # G_0, constant along an episode
        ended = buf.dones & buf.valid
        # usable: the episode ends at or after t inside this rollout (a reverse running "any")
        usable = torch.flip(torch.cummax(torch.flip(ended.long(), [0]), 0).values, [0]).bool() & buf.valid
        weights = future if self.estimator == "gpomdp" else episode_return
        return weights, usable, episode_return[ended]

    def _set_sps_lower_bound(self, j_hat: float) -> None:
        """Under ``"sps"`` without a user ``f_star``: ``f* = -J*_k``, the return target of :class:`rlopt.PolyakPG`.

        The loss value is ``-J_hat``, so SPS's ``f*`` is minus the best achievable return. Its library default
        0 is right only when rewards are non-positive (and then loose); instead the running best return
        plus a margin (``rlopt.rules.policy_polyak.return_target``, margin 0.1) is used, which keeps the
        numerator ``J*_k - J_hat_k`` positive on every env.
        """
        opt = self.optimizer
        if not isinstance(opt, rlopt.SPS) or "f_star" in self.optimizer_kwargs:
            return
        self._best_return = max(self._best_return, j_hat)
        for group in opt.param_groups:
            group["f_star"] = -return_target({"margin": SPS_MARGIN}, self._best_return)

    def train(self) -> None:
        """One step on the Monte-Carlo policy-gradient loss of the complete episodes in the rollout (with
        ``twin=True``: of each twin on its own rollout, the worse one aiming at the better one's return)."""
        twin = self._twin_agent
        if not self.twin or twin is None or twin._rollout is None or self._rollout is None:
            self._train_step()
            return
        mine, theirs = self._rollout[2], twin._rollout[2]
        if mine.numel() == 0 or theirs.numel() == 0:  # a twin without an episode cannot be compared
            self._train_step()
            twin._train_step()
            return
        j_mine, j_theirs = float(mine.mean()), float(theirs.mean())
        worse, better = (self, twin) if j_mine < j_theirs else (twin, self)
        worse._twin_target = max(j_mine, j_theirs)
        worse._train_step()
        if self.twin == "both":
            better._train_step()
        else:  # its rollout measured the target; the worse twin alone moves
            better._rollout = None
        self.logger.record("train/twin_return", j_theirs)
        if j_theirs > j_mine:  # model.policy is the twin that measured better
            self.policy, twin.policy = twin.policy, self.policy
            self.optimizer, twin.optimizer = twin.optimizer, self.optimizer
            self._best_return, twin._best_return = twin._best_return, self._best_return

    def _train_step(self) -> None:
        buf, policy = self.rollout_buffer, self.policy
        weights, usable, returns = self._rollout if self._rollout is not None else self._weights()
        self._rollout = None
        n_episodes = int(returns.numel())
        n_usable = local_usable = int(usable.sum())
        j_hat = float(returns.mean()) if n_episodes else 0.0
        if self._dp is not None:  # the episodes and samples of every rank
            totals = self._dp.sum(torch.tensor([n_episodes, float(returns.sum()), n_usable], dtype=torch.float64))
            n_episodes, n_usable = int(totals[0]), int(totals[2])
            j_hat = float(totals[1]) / max(n_episodes, 1)
        if n_episodes == 0:
            warnings.warn(
                f"no episode ended within the rollout of n_steps={self.n_steps}; skipping the update "
                "(increase n_steps)",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        idx = usable.reshape(-1).nonzero().squeeze(1)
        obs = buf.observations.reshape(-1, *buf.observations.shape[2:])[idx]
        actions = buf.actions.reshape(-1, *buf.actions.shape[2:])[idx]
        w = weights.reshape(-1)[idx]
        if self.baseline:
            w = w - self._union_mean(w)
        if self.normalize_advantage and n_usable > 1:
            w = w / ((w.std() if self._dp is None else self._dp.moments(w.unsqueeze(1))[1][0]) + 1e-8)
        self._return_estimate = j_hat
        # the ranks' mean of world_size * (this rank's sum) / (the union's count) is the union's mean: a rank's
        # losses are scaled so (the optimizers average them, and the gradients, over the ranks)
        share = float(self.world_size)
        # this rank's weight in a mean over the union's samples (1 when training alone)
        weight = share * local_usable / max(n_usable, 1)
        self._set_sps_lower_bound(j_hat)
        first: dict[str, torch.Tensor] = {}

        def policy_loss() -> torch.Tensor:
            log_prob, entropy = policy.log_prob_and_entropy(obs, actions)
            if "log_prob" not in first:  # the first evaluation is at the current iterate theta
                first["log_prob"] = log_prob.detach()
            # -J_hat(theta') to first order (importance ratio, as in TRPO's surrogate): -J_hat at theta,
            # gradient exactly the GPOMDP/REINFORCE estimate there (d ratio = d log pi at ratio 1)
            ratio = torch.exp(log_prob - first["log_prob"])
            pg_loss = -j_hat - share * ((ratio - 1.0) * w).sum() / n_episodes
            # the mean entropy over the union's samples, in the ranks' mean (a rank may hold none)
            ent = entropy.mean() if self._dp is None else entropy.sum() * (share / n_usable)
            if torch.is_grad_enabled() and "pg" not in first:
                first["pg"], first["entropy"] = pg_loss.detach(), ent.detach()
            return pg_loss - self.ent_coef * ent

        local_kl = self._kl_closure(obs, actions, buf.log_probs.reshape(-1)[idx])  # the rollout's policy

        def kl() -> torch.Tensor:
            if self._dp is None:
                return local_kl()
            return local_kl() * weight if local_usable else torch.zeros((), device=self.device)

        target, self._twin_target = self._twin_target, None
        if target is not None:  # the twin's measured return as J* (above this twin's own J_hat)
            for group in self.optimizer.param_groups:
                group["j_star"] = target
        loss = self._step_losses(policy_loss, None, kl, value=j_hat if self._polyak else None)
        if target is not None:
            for group in self.optimizer.param_groups:
                group["j_star"] = self.optimizer_kwargs.get("j_star")
        stats: dict[str, list[float]] = {}
        self._record_step_stats(stats)
        self.logger.record("train/discounted_return", self._return_estimate)
        self._log_train(
            stats,
            {"loss": [loss.detach()], "policy_gradient_loss": [first["pg"]], "entropy": [first["entropy"]]},
        )
