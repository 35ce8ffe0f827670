"""rlopt step sizes inside unmodified stable-baselines3 algorithms.

SB3's ``PPO.train`` calls ``optimizer.step()`` without a closure, so a line search (which re-evaluates the
minibatch loss at trial steps) cannot run there. :class:`PPO` below is ``stable_baselines3.PPO`` with one
change: ``train`` builds the minibatch loss as a closure and steps the optimizer through
:func:`rlopt.closure_step`. Everything else (rollouts, buffers, policies, callbacks, save/load) is SB3's
own code, so an existing SB3 script switches by changing one import and adding ``optimizer="sls"``.

With ``optimizer="adam"`` the update is SB3's own, step for step (the tests check parameter equality with
``stable_baselines3.PPO``, ``target_kl`` included: the loss terms and the KL stop are
:mod:`rlopt.agents.ppo.loss`, which :class:`rlopt.agents.PPO` uses too).

Example:
    >>> from rlopt.agents.sb3 import PPO
    >>> model = PPO("MlpPolicy", "CartPole-v1", optimizer="sls", n_steps=64, batch_size=32, n_epochs=1, seed=0)
    >>> model = model.learn(64)
    >>> type(model.policy.optimizer).__name__
    'SLS'
"""

from __future__ import annotations

from typing import Any

import numpy as np
import stable_baselines3
import torch
from gymnasium import spaces
from stable_baselines3.common.utils import explained_variance

import rlopt
from rlopt.agents.common.base import FolderlessLoggerMixin
from rlopt.agents.common.optim import build_optimizer, check_optimizer
from rlopt.agents.common.serialization import safe_custom_objects
from rlopt.agents.ppo import loss as loss_terms

__all__ = ["PPO"]


class PPO(FolderlessLoggerMixin, stable_baselines3.PPO):
    """``stable_baselines3.PPO`` stepping any optimizer (rlopt's included) with a minibatch closure.

    Args:
        policy: as in SB3.
        env: as in SB3.
        optimizer: ``"adam"`` (SB3's default: Adam with ``eps=1e-5`` at ``learning_rate``), ``"sgd"``,
            ``"sls"``, ``"sps"``, ``"ponos"``, ``"adasls"`` or a ``torch.optim.Optimizer`` subclass.
        optimizer_kwargs: keyword arguments of the optimizer.
        **kwargs: every other ``stable_baselines3.PPO`` argument.
    """

    def __init__(
        self,
        policy: Any,
        env: Any,
        optimizer: str | type[torch.optim.Optimizer] = "adam",
        optimizer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.optimizer_name = check_optimizer(optimizer)
        if self.optimizer_name == "polyak":
            raise ValueError(
                "Invalid optimizer: 'polyak' needs the return estimate and a policy-only loss; use agents.PPO"
            )
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        super().__init__(policy, env, **kwargs)

    def _setup_model(self) -> None:
        self._saved_by = "rlopt.agents.sb3.PPO"  # saved with the model: load() refuses other algorithms' files
        super()._setup_model()
        # replace the optimizer SB3's policy built (same parameters, same Adam settings by default, down
        # to SB3's unfused Adam kernel, so that "adam" is SB3's PPO step for step)
        self.policy.optimizer = build_optimizer(
            self.optimizer_name, self.policy.parameters(), self.optimizer_kwargs, self.lr_schedule(1), fused=False
        )

    @classmethod
    def load(
        cls,
        path: Any,
        env: Any = None,
        device: torch.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        trusted: bool = False,
        **kwargs: Any,
    ) -> PPO:
        """SB3's ``load`` without running code from the file (see :meth:`rlopt.agents.PPO.load`); checkpoints
        written by ``stable_baselines3.PPO`` load too when they hold only the types SB3 saves by default."""
        custom_objects = safe_custom_objects(path, "rlopt.agents.sb3.PPO.load", custom_objects, trusted,
                                             expected="rlopt.agents.sb3.PPO")
        model = super().load(path, env=env, device=device, custom_objects=custom_objects,
                             print_system_info=print_system_info, force_reset=force_reset, **kwargs)
        return model

    def _is_torch_optimizer(self) -> bool:
        return not hasattr(self.policy.optimizer, "requires_closure")

    def train(self) -> None:
        """SB3's PPO update with the optimizer stepped through a closure over each minibatch."""

        self.policy.set_training_mode(True)
        if self._is_torch_optimizer():
            self._update_learning_rate(self.policy.optimizer)  # a learning-rate schedule applies to torch's
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = (
            self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
            if self.clip_range_vf is not None else None
        )
        logs: dict[str, list[float]] = {}
        continue_training = True
        loss = torch.zeros(())
        for _ in range(self.n_epochs):
            for data in self.rollout_buffer.get(self.batch_size):
                actions = data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    actions = data.actions.long().flatten()
                advantages = data.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                if self.target_kl is not None:  # SB3's check: the KL before this minibatch's step
                    with torch.no_grad():
                        _, log_prob, _ = self.policy.evaluate_actions(data.observations, actions)
                    if loss_terms.kl_stop(loss_terms.approx_kl(log_prob - data.old_log_prob), self.target_kl):
                        continue_training = False
                        break
                first: dict[str, float] = {}

                def closure(data: Any = data, actions: torch.Tensor = actions, advantages: torch.Tensor = advantages,
                            first: dict[str, float] = first) -> torch.Tensor:
                    values, log_prob, entropy = self.policy.evaluate_actions(data.observations, actions)
                    surrogate = loss_terms.clipped_surrogate(log_prob, data.old_log_prob, advantages, clip_range)
                    value_loss = loss_terms.value_loss(values.flatten(), data.old_values, data.returns, clip_range_vf)
                    entropy_loss = -torch.mean(-log_prob) if entropy is None else -torch.mean(entropy)
                    total = surrogate.loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                    if torch.is_grad_enabled() and not first:
                        with torch.no_grad():
                            first.update(
                                policy_gradient_loss=surrogate.loss.item(), value_loss=value_loss.item(),
                                entropy_loss=entropy_loss.item(),
                                clip_fraction=surrogate.clip_fraction(clip_range).item(),
                                approx_kl=surrogate.approx_kl().item(),
                            )
                    return total

                loss = rlopt.closure_step(self.policy.optimizer, closure, max_grad_norm=self.max_grad_norm)
                step_size, backtracks, forward_calls = rlopt.step_stats(self.policy.optimizer)
                for key, value in {**first, "step_size": step_size, "backtracks": backtracks,
                                   "forward_calls": forward_calls}.items():
                    logs.setdefault(key, []).append(value)
            self._n_updates += 1
            if not continue_training:
                break
        for key, values in logs.items():
            self.logger.record(f"train/{key}", float(np.mean(values)))
        self.logger.record("train/loss", loss.item())
        self.logger.record(
            "train/explained_variance",
            explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()),
        )
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", torch.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
