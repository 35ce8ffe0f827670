"""Agents: bad input, determinism, save/load/resume, SB3 callbacks, TensorBoard scalars, truncation handling."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv

import rlopt
from rlopt import agents

ALGOS: dict[str, tuple[type, dict[str, Any]]] = {
    "PPO": (agents.PPO, {"n_envs": 4, "n_steps": 16, "batch_size": 32, "n_epochs": 2}),
    "A2C": (agents.A2C, {"n_envs": 4, "n_steps": 8}),
    "REINFORCE": (agents.REINFORCE, {"n_envs": 4, "n_steps": 64}),
}


def _make(algo: str, env: Any = "CartPole-v1", **kwargs: Any) -> Any:
    cls, defaults = ALGOS[algo]
    return cls("MlpPolicy", env, seed=0, **{**defaults, **kwargs})


def _params(model: Any) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.policy.parameters()]


# ------------------------------------------------------------------------------------------------ bad input
def test_unknown_optimizer_is_rejected_before_building() -> None:
    with pytest.raises(ValueError, match="Invalid optimizer: 'adamw'"):
        agents.PPO("MlpPolicy", "CartPole-v1", optimizer="adamw")
    with pytest.raises(TypeError, match="Invalid optimizer"):
        agents.PPO("MlpPolicy", "CartPole-v1", optimizer=3)


def test_unknown_env_id() -> None:
    with pytest.raises(ValueError, match="Unknown env id: 'NoSuchEnv-v0'"):
        agents.PPO("MlpPolicy", "NoSuchEnv-v0")


def test_unsupported_spaces() -> None:
    class MultiBinaryEnv(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (2,))
        action_space = gym.spaces.MultiBinary(3)

    with pytest.raises(TypeError, match="action spaces"):
        agents.A2C("MlpPolicy", MultiBinaryEnv())
    with pytest.raises(TypeError, match="observation spaces"):
        agents.PPO("MlpPolicy", gym.make("FrozenLake-v1"))


@pytest.mark.parametrize("steps", [0, -5, 1.5])
def test_non_positive_timesteps(steps: Any) -> None:
    model = _make("PPO")
    with pytest.raises(ValueError, match="total_timesteps"):
        model.learn(steps)
    assert model.num_timesteps == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_steps": 0}, "n_steps"), ({"gamma": 1.5}, "gamma"), ({"batch_size": -1}, "batch_size"),
     ({"clip_range": 0.0}, "clip_range"), ({"seed": "x"}, "seed"), ({"policy_kwargs": None, "n_envs": 0}, "n_envs")],
)
def test_bad_hyperparameters(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        agents.PPO("MlpPolicy", "CartPole-v1", **kwargs)


def test_bad_estimator() -> None:
    with pytest.raises(ValueError, match="estimator"):
        agents.REINFORCE("MlpPolicy", "CartPole-v1", estimator="vanilla")


def test_load_with_mismatched_env_raises(tmp_path: Path) -> None:
    model = _make("PPO")
    model.save(tmp_path / "m.zip")
    with pytest.raises(ValueError, match="spaces do not match"):
        agents.PPO.load(tmp_path / "m.zip", env=gym.make("Acrobot-v1"))


# -------------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("optimizer", ["adam", "sls", "sps", "polyak"])
def test_two_runs_with_one_seed_are_identical(algo: str, optimizer: str) -> None:
    runs = []
    for _ in range(2):
        model = _make(algo, optimizer=optimizer)
        model.learn(256)
        runs.append(_params(model))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_global_rng_is_untouched() -> None:
    state = torch.random.get_rng_state()
    _make("PPO").learn(64)
    assert torch.equal(state, torch.random.get_rng_state())


# ------------------------------------------------------------------------------------- save / load / resume
@pytest.mark.parametrize(("algo", "optimizer"), [("PPO", "adam"), ("PPO", "sls"), ("REINFORCE", "polyak")])
def test_load_then_learn_continues_exactly(tmp_path: Path, algo: str, optimizer: str) -> None:
    per_update = ALGOS[algo][1]["n_envs"] * ALGOS[algo][1]["n_steps"]
    straight = _make(algo, optimizer=optimizer)
    straight.learn(4 * per_update)

    first = _make(algo, optimizer=optimizer)
    first.learn(2 * per_update)
    first.save(tmp_path / "ckpt")
    resumed = type(first).load(tmp_path / "ckpt.zip", env=first.get_env(), force_reset=False)
    resumed.learn(2 * per_update, reset_num_timesteps=False)

    assert resumed.num_timesteps == straight.num_timesteps
    for a, b in zip(_params(straight), _params(resumed), strict=True):
        assert torch.equal(a, b)
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _make("PPO")
    model.save(tmp_path / "m.zip")
    before = (tmp_path / "m.zip").read_bytes()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("stable_baselines3.common.base_class.save_to_zip_file", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "m.zip")
    assert (tmp_path / "m.zip").read_bytes() == before  # the old checkpoint survives intact
    assert os.listdir(tmp_path) == ["m.zip"]  # and no temporary file is left behind


def test_loaded_model_predicts_like_the_original(tmp_path: Path) -> None:
    model = _make("A2C")
    model.learn(64)
    model.save(tmp_path / "a2c.zip")
    loaded = agents.A2C.load(tmp_path / "a2c.zip")
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


# ------------------------------------------------------------------------------------------ SB3 interop
def test_sb3_callbacks_and_evaluate_policy(tmp_path: Path) -> None:
    model = _make("PPO")
    eval_env = agents.make_eval_env("CartPole-v1", seed=1)
    eval_cb = EvalCallback(eval_env, n_eval_episodes=2, eval_freq=32, log_path=str(tmp_path), verbose=0,
                           best_model_save_path=str(tmp_path / "best"))
    ckpt_cb = CheckpointCallback(save_freq=64, save_path=str(tmp_path / "ckpt"), name_prefix="ppo")
    model.learn(512, callback=CallbackList([eval_cb, ckpt_cb]))
    assert np.load(tmp_path / "evaluations.npz")["results"].shape == (512 // (32 * 4), 2)
    assert (tmp_path / "best" / "best_model.zip").exists()
    assert sorted(os.listdir(tmp_path / "ckpt")) == sorted(f"ppo_{n}_steps.zip" for n in (256, 512))
    mean, std = evaluate_policy(model, gym.make("CartPole-v1"), n_eval_episodes=3, warn=False)
    assert mean > 0 and std >= 0
    mean_vec, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=2, warn=False)
    assert mean_vec > 0


def test_callback_can_stop_training() -> None:
    class StopAfter(BaseCallback):
        def _on_step(self) -> bool:
            return self.n_calls < 3

    model = _make("PPO")
    model.learn(10_000, callback=StopAfter())
    assert model.num_timesteps == 3 * 4


@pytest.mark.parametrize("env_kind", ["gym_env", "sb3_vec_env", "vector_env"])
def test_env_kinds(env_kind: str) -> None:
    env: Any
    if env_kind == "gym_env":
        env = gym.make("CartPole-v1")
    elif env_kind == "sb3_vec_env":
        env = DummyVecEnv([lambda: gym.make("CartPole-v1")] * 3)
    else:
        env = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    model = agents.PPO("MlpPolicy", env, n_steps=16, batch_size=16, seed=0)
    model.learn(64)
    assert model.num_timesteps >= 64


def test_tensorboard_event_file_holds_the_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = _make("PPO", optimizer="sls", tensorboard_log=str(tmp_path))
    model.learn(256, tb_log_name="run")
    runs = os.listdir(tmp_path)
    assert runs == ["run_1"]
    acc = EventAccumulator(str(tmp_path / runs[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"rollout/ep_rew_mean", "train/loss", "train/step_size", "train/backtracks", "train/forward_calls",
                "train/entropy", "train/approx_kl", "train/clip_fraction", "train/explained_variance", "time/fps",
                "train/policy_gradient_loss", "train/value_loss"}
    assert expected <= tags
    assert len(acc.Scalars("train/step_size")) == 256 // 64
    assert all(e.value > 0 for e in acc.Scalars("train/forward_calls"))


def test_polyak_logs_its_return_target(tmp_path: Path) -> None:
    import csv

    from stable_baselines3.common.logger import configure

    model = _make("REINFORCE", optimizer="polyak")
    assert isinstance(model.optimizer, rlopt.PolyakPG)
    logger = configure(str(tmp_path), ["csv"])
    model.set_logger(logger)
    model.learn(64 * 4 * 3)
    logger.close()
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    logged = [row for row in rows if row["train/return_target"]]
    assert logged and len(logged) >= len(rows) - 1, rows  # from the first update with a finished episode on
    for row in logged:
        assert float(row["train/return_target"]) > float(row["train/return_estimate"])
        assert float(row["train/step_size"]) > 0


@pytest.mark.parametrize("optimizer", ["adam", "sls"])
def test_a2c_logs_the_kl_its_update_moved_the_policy_by(tmp_path: Path, optimizer: str) -> None:
    """train/approx_kl is the approximate KL of the updated policy from the rollout's, on the rollout (it used to
    be taken at the rollout's own policy, where it is 0 by construction)."""
    import csv

    from stable_baselines3.common.logger import configure

    from rlopt.agents.common.policy_loss import approx_kl

    model = _make("A2C", optimizer=optimizer)
    logger = configure(str(tmp_path), ["csv"])
    model.set_logger(logger)
    model.learn(4 * 8)  # one update
    logger.close()
    with open(tmp_path / "progress.csv") as f:
        (row,) = list(csv.DictReader(f))
    batch = model.rollout_buffer.flatten()
    with torch.no_grad():
        log_prob, _ = model.policy.log_prob_and_entropy(batch.observations, batch.actions)
    expected = float(approx_kl(log_prob - batch.log_probs))
    assert expected > 0
    assert float(row["train/approx_kl"]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("verbose", [0, 1])
@pytest.mark.parametrize("kind", ["A2C", "sb3.PPO"])
def test_learn_leaves_no_log_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], verbose: int, kind: str
) -> None:
    """Without tensorboard_log nothing is written to files, so no (empty) SB3-<date> folder is created; verbose=1
    still prints SB3's table, and a logger given by set_logger is kept."""
    import tempfile

    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import configure

    from rlopt.agents import sb3

    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if kind == "A2C":
        model = _make("A2C", verbose=verbose)
    else:
        env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
        model = sb3.PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, verbose=verbose)
    model.learn(64)
    assert [name for name in os.listdir(tmp_path) if name.startswith("SB3-")] == []
    assert ("total_timesteps" in capsys.readouterr().out) == bool(verbose)
    assert model.logger.get_dir() is None
    mine = configure(str(tmp_path / "mine"), ["csv"])
    model.set_logger(mine)
    model.learn(64)
    mine.close()
    assert model.logger is mine and (tmp_path / "mine" / "progress.csv").stat().st_size > 0


# ------------------------------------------------------------------------------------ truncation handling
def test_truncated_steps_bootstrap_from_the_true_final_observation() -> None:
    """Same-step autoreset (an SB3 VecEnv): next_values at a truncation is V(terminal_observation)."""
    env = DummyVecEnv([lambda: gym.wrappers.TimeLimit(gym.make("CartPole-v1").unwrapped, max_episode_steps=5)])
    seen: list[tuple[int, torch.Tensor]] = []

    class Grab(BaseCallback):
        def _on_step(self) -> bool:
            out = self.locals["out"]
            if out.final_mask is not None and bool(out.truncated.any()):
                seen.append((self.locals["step"], out.final_obs.clone()))
            return True

    model = agents.PPO("MlpPolicy", env, n_steps=12, batch_size=12, n_epochs=1, seed=0, learning_rate=1e-12)
    model.learn(12, callback=Grab())
    buf = model.rollout_buffer
    assert [s for s, _ in seen] == [4, 9]
    for step, final in seen:
        assert bool(buf.dones[step, 0]) and not bool(buf.terminated[step, 0])
        with torch.no_grad():
            expected = model.policy.value(final)
        torch.testing.assert_close(buf.next_values[step], expected, rtol=1e-5, atol=1e-6)
        # the observation stored next is the new episode's first one, not the final one
        assert not torch.equal(buf.observations[step + 1], final)


def test_next_step_autoreset_drops_the_reset_transition() -> None:
    env = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="vector_entry_point", max_episode_steps=5)
    model = agents.PPO("MlpPolicy", env, n_steps=12, batch_size=12, n_epochs=1, seed=0, learning_rate=1e-12)
    model.learn(24)
    buf = model.rollout_buffer
    # an episode of 5 steps then one reset step: rows 5 and 11 of the second rollout are reset steps
    ended = buf.dones & buf.valid
    assert int((~buf.valid).sum()) == int(ended.sum())
    assert len(buf.flatten()) == 24 - int((~buf.valid).sum())
    # truncated at t: advantage uses V(obs at t+1), the true final observation, and stops there
    truncated = (ended[:, 0] & ~buf.terminated[:, 0]).nonzero()
    assert len(truncated) > 0  # 5-step episodes of CartPole end by truncation
    t = int(truncated[0])
    assert not bool(buf.valid[t + 1, 0])  # the row after it is the reset step, dropped from the batch
    expected = buf.rewards[t, 0] + model.gamma * buf.values[t + 1, 0] - buf.values[t, 0]
    torch.testing.assert_close(buf.advantages[t, 0], expected)


@pytest.mark.parametrize(("seed", "steps"), [(0, 40), (1, 40), (2, 23)])
def test_episode_bookkeeping_matches_running_sums(seed: int, steps: int) -> None:
    """The rollout's after-the-fact episode statistics equal running sums updated at every step (over the
    whole rollout, or its first rows when a callback stops training mid-rollout)."""
    model = agents.PPO("MlpPolicy", "CartPole-v1", n_envs=5, n_steps=40, batch_size=40, seed=0)
    model._reset_env()
    buf = model.rollout_buffer
    g = torch.Generator().manual_seed(seed)
    buf.rewards.copy_(torch.randint(-3, 4, buf.rewards.shape, generator=g).float() / 4)
    buf.dones.copy_(torch.rand(buf.dones.shape, generator=g) < 0.15)
    buf.valid.copy_(torch.rand(buf.valid.shape, generator=g) < 0.9)
    model._ep_return = torch.tensor([0.0, 1.5, 7.25, 0.0, 3.0])
    model._ep_length = torch.tensor([0, 2, 9, 0, 4])
    ret, length = model._ep_return.clone(), model._ep_length.clone()
    expected_steps, expected_ret, expected_len = [], [], []
    for t in range(steps):
        expected_steps.append(length.clone())
        ret = ret + buf.rewards[t]
        length = length + buf.valid[t].long()
        expected_ret.append(ret.clone())
        expected_len.append(length.float())
        ret = ret.masked_fill(buf.dones[t], 0.0)
        length = length.masked_fill(buf.dones[t], 0)
    returns, lengths = model._track_episodes(buf, steps)
    assert torch.equal(buf.episode_steps[:steps], torch.stack(expected_steps))
    assert torch.equal(returns, torch.stack(expected_ret))
    assert torch.equal(lengths, torch.stack(expected_len))
    assert torch.equal(model._ep_return, ret) and torch.equal(model._ep_length, length)


def test_surrogate_infimum_is_the_clipped_loss_infimum() -> None:
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(64, generator=g)
    clip = 0.2

    def loss(ratio: torch.Tensor) -> torch.Tensor:
        return -torch.min(adv * ratio, adv * ratio.clamp(1 - clip, 1 + clip)).mean()

    bound = agents.PPO.surrogate_infimum(adv, clip)
    for _ in range(50):
        ratio = torch.rand(64, generator=g) * 3
        assert loss(ratio) >= bound - 1e-6
    # reached: ratio >= 1 + clip where A > 0, ratio <= 1 - clip where A <= 0
    torch.testing.assert_close(loss(torch.where(adv > 0, 1.5, 0.5)), bound)
    # at the rollout's policy (ratio 1) the gap is clip * mean|A|
    torch.testing.assert_close(loss(torch.ones(64)) - bound, clip * adv.abs().mean())


def test_ponos_policy_step_uses_the_surrogate_infimum() -> None:
    model = _make("PPO", optimizer="ponos", ent_coef=0.01)
    model.learn(64)
    assert model.critic_optimizer is not None
    f_star = model.optimizer.param_groups[0]["f_star"]
    # the last minibatch's bound: normalized advantages have mean|A| <= 1, so it lies in
    # [-(1 + clip) - ent_coef * log(2), 0)
    assert -1.2 - 0.01 * np.log(2) <= f_star < 0
    assert model.critic_optimizer.param_groups[0]["f_star"] == 0.0  # the value loss keeps its bound 0
    fixed = _make("PPO", optimizer="ponos", optimizer_kwargs={"f_star": -5.0})
    fixed.learn(64)
    assert fixed.optimizer.param_groups[0]["f_star"] == -5.0


# --------------------------------------------------------------------------------------------- on device
@pytest.mark.parametrize("algo", list(ALGOS))
def test_training_stays_on_the_device(algo: str, device: torch.device) -> None:
    from rlopt import envs

    env = envs.make("CartPole-v1", num_envs=4, device=device, seed=0, autoreset_mode="same_step")
    model = _make(algo, env=env, device=device)
    model.learn(2 * 4 * ALGOS[algo][1]["n_steps"])
    buf = model.rollout_buffer
    for name in ("observations", "actions", "rewards", "values", "advantages", "valid"):
        assert getattr(buf, name).device.type == device.type, name
    assert isinstance(model._last_obs, torch.Tensor) and model._last_obs.device.type == device.type
    assert all(p.device.type == device.type for p in model.policy.parameters())


@pytest.mark.gpu
@pytest.mark.parametrize("algo", ["PPO", "A2C"])
def test_cuda_rollout_takes_no_host_sync_per_step(algo: str) -> None:
    """The host waits for the device a fixed number of times per rollout and update, whatever the rollout's
    length: a run of 32 steps per rollout synchronises as often as one of 8 (torch's sync debug mode counts)."""
    import warnings

    from rlopt import agents

    def syncs(n_steps: int) -> int:
        kwargs = {"batch_size": 16 * n_steps, "n_epochs": 1} if algo == "PPO" else {}
        model = getattr(agents, algo)("MlpPolicy", "CartPole-v1", n_envs=16, n_steps=n_steps, device="cuda", seed=0,
                                      **kwargs)
        model.learn(16 * n_steps)  # warm-up: lazy initialisations are not the rollout's
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.learn(16 * n_steps, reset_num_timesteps=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(32) == syncs(8)


@pytest.mark.parametrize(("optimizer", "separate"), [("adam", False), ("sps", True), ("sls", True), ("ponos", True)])
def test_line_searches_step_policy_and_critic_separately(optimizer: str, separate: bool, tmp_path: Path) -> None:
    model = _make("PPO", optimizer=optimizer)
    assert model.separate_critic is separate
    assert (model.critic_optimizer is not None) is separate
    if optimizer == "sps":  # both Polyak steps are checked by Armijo: the critic's regression does not interpolate
        assert model.optimizer.rule.needs_closure and model.critic_optimizer.rule.needs_closure
        assert model.critic_optimizer.param_groups[0].get("max_kl") is None  # the trust region is the policy's
        unchecked = _make("PPO", optimizer="sps", optimizer_kwargs={"search": False})
        assert not unchecked.optimizer.rule.needs_closure and not unchecked.critic_optimizer.rule.needs_closure
    if separate:
        assert type(model.critic_optimizer) is type(model.optimizer)
        actor = {id(p) for g in model.optimizer.param_groups for p in g["params"]}
        critic = {id(p) for g in model.critic_optimizer.param_groups for p in g["params"]}
        assert actor.isdisjoint(critic)
        assert critic == {id(p) for p in model.policy.critic.parameters()}
    model.learn(128)
    model.save(tmp_path / "m.zip")
    loaded = agents.PPO.load(tmp_path / "m.zip")
    assert loaded.separate_critic is separate


def test_learning_rate_schedule_applies_to_torch_optimizers() -> None:
    from rlopt.agents.hyperparams import linear_schedule

    model = _make("A2C", learning_rate=linear_schedule(1e-3))
    seen: list[float] = []
    train = model.train

    def spy() -> None:
        seen.append(model.optimizer.param_groups[0]["lr"])
        train()

    model.train = spy  # type: ignore[method-assign]
    model.learn(4 * 8 * 4)
    # as in SB3, the progress is updated after each rollout, so update k of 4 runs at 1 - k / 4
    assert seen == pytest.approx([1e-3 * (1 - k / 4) for k in range(1, 5)])
    # a budget that ends inside the last rollout: SB3's remaining progress is negative there; the rate stays 0
    seen.clear()
    model.learn(4 * 8 * 4 - 1)
    assert seen[-1] == 0.0 and min(seen) >= 0.0


@pytest.mark.parametrize("optimizer", ["adam", "sps", "polyak"])
# a critic's search on the clipped value loss may stall at its rounding on this tiny run: not what is tested here
@pytest.mark.filterwarnings("ignore:.*the search stopped.*:RuntimeWarning")
def test_clip_range_schedules_are_read_once_per_update(optimizer: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """SB3's clip_range and clip_range_vf schedules (the RL Zoo's lin_0.2): update k of 4 clips the surrogate, sets
    SPS's f_star and caps the Polyak target at the schedule's value at progress 1 - k / 4; the schedule is saved."""
    from rlopt.agents.common import base as base_module
    from rlopt.agents.hyperparams import linear_schedule
    from rlopt.agents.ppo import ppo as ppo_module

    clips: list[float] = []
    vf_clips: list[float | None] = []
    bounds: list[float] = []
    surrogate, value_loss, infimum = (ppo_module.loss_terms.clipped_surrogate, ppo_module.loss_terms.value_loss,
                                      ppo_module.loss_terms.surrogate_infimum)
    monkeypatch.setattr(ppo_module.loss_terms, "clipped_surrogate",
                        lambda lp, old, adv, clip: clips.append(clip) or surrogate(lp, old, adv, clip))
    monkeypatch.setattr(ppo_module.loss_terms, "value_loss",
                        lambda v, old, ret, clip: vf_clips.append(clip) or value_loss(v, old, ret, clip))
    for module in (ppo_module.loss_terms, base_module):
        monkeypatch.setattr(module, "surrogate_infimum", lambda adv, clip: bounds.append(clip) or infimum(adv, clip))
    model = _make("PPO", optimizer=optimizer, clip_range=linear_schedule(0.2),
                  clip_range_vf=linear_schedule(0.5), n_epochs=1, batch_size=64)
    model.learn(4 * 16 * 4)
    per_update = [0.2 * (1 - k / 4) for k in range(1, 5)]
    assert sorted(set(clips), reverse=True) == pytest.approx(per_update)
    assert sorted({c for c in vf_clips if c is not None}, reverse=True) == pytest.approx([0.5 / 0.2 * c for c in
                                                                                         per_update])
    if optimizer != "adam":  # SPS's f_star and the Polyak target's cap come from the scheduled clip too (at 0
        # the policy keeps its parameters: test_at_clip_range_zero_the_policy_keeps_its_parameters...)
        assert sorted(set(bounds), reverse=True) == pytest.approx(per_update[:-1])
    model.save(tmp_path / "m.zip")
    loaded = agents.PPO.load(tmp_path / "m.zip")
    assert loaded.clip_range == linear_schedule(0.2) and loaded.clip_range_vf == linear_schedule(0.5)


@pytest.mark.parametrize("optimizer", ["sls", "sps", "polyak"])
def test_at_clip_range_zero_the_policy_keeps_its_parameters_and_the_critic_trains(optimizer: str) -> None:
    """The last update of a schedule that ends at 0 (the RL Zoo's lin_0.2): the rollout's policy minimizes the
    clipped surrogate, so a policy rule has nothing to search for. It keeps its parameters (no failed searches,
    no warning); the critic still fits."""
    from rlopt.agents.hyperparams import linear_schedule

    model = _make("PPO", optimizer=optimizer, clip_range=linear_schedule(0.2), n_epochs=2, batch_size=32)
    snapshots: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    train = model.train

    def spy() -> None:
        before = ([p.detach().clone() for p in model.policy.actor_parameters()],
                  [p.detach().clone() for p in model.policy.critic_parameters()])
        train()
        after = ([p.detach().clone() for p in model.policy.actor_parameters()],
                 [p.detach().clone() for p in model.policy.critic_parameters()])
        snapshots.append((before, after))

    model.train = spy  # type: ignore[method-assign]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.learn(4 * 16 * 3)  # 3 updates: the last at progress 0
    for k, ((actor0, critic0), (actor1, critic1)) in enumerate(snapshots):
        actor_moved = any(not torch.equal(a, b) for a, b in zip(actor0, actor1, strict=True))
        assert actor_moved == (k < 2), k
        assert any(not torch.equal(a, b) for a, b in zip(critic0, critic1, strict=True)), k


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"clip_range": lambda p: 1.5}, r"clip_range\(1.0\)"), ({"clip_range": lambda p: 1 / 0}, "raised"),
    ({"clip_range_vf": lambda p: -1.0}, r"clip_range_vf\(1.0\)"), ({"clip_range": "lin_0.2"}, "clip_range")])
def test_bad_clip_range_schedules_are_refused_early(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _make("PPO", **kwargs)


@pytest.mark.parametrize("algo", list(ALGOS))
def test_box_actions(algo: str) -> None:
    n_steps = 256 if algo == "REINFORCE" else ALGOS[algo][1]["n_steps"]  # episodes of 200 steps end inside
    model = _make(algo, env="Pendulum-v1", n_steps=n_steps)
    model.learn(2 * 4 * n_steps)
    assert model.rollout_buffer.actions.shape[-1] == 1 and model.rollout_buffer.actions.dtype == torch.float32
    obs = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    actions, _ = model.predict(obs, deterministic=False)
    assert actions.shape == (16, 1) and np.all(np.abs(actions) <= 2.0)
    assert model.policy.log_std.requires_grad


def test_set_env_switches_the_training_env() -> None:
    from rlopt import envs

    model = _make("PPO")
    model.learn(64)
    model.set_env(envs.make("CartPole-v1", num_envs=4, seed=5, autoreset_mode="same_step"))
    model.learn(64, reset_num_timesteps=False)
    assert model.num_timesteps == 128
    with pytest.raises(ValueError, match="spaces do not match"):
        model.set_env(envs.make("Pendulum-v1", num_envs=4, autoreset_mode="same_step"))
    model.learn(64, reset_num_timesteps=False)  # the failed switch left the model training on CartPole
    assert model.num_timesteps == 192


def test_env_kwargs_reach_the_batched_env_and_set_the_task() -> None:
    # max_episode_steps changes the task: episodes end (truncated) after 20 steps, and the buffer sees it
    model = agents.PPO("MlpPolicy", "Pendulum-v1", n_envs=4, n_steps=25, batch_size=100, seed=0,
                       env_kwargs={"max_episode_steps": 20, "g": 5.0})
    inner = model._stepper.env  # type: ignore[union-attr]
    assert inner.max_episode_steps == 20 and inner.g == 5.0
    model.learn(100)
    buf = model.rollout_buffer
    assert buf.dones[19].all() and not buf.dones[:19].any() and not buf.dones[20:].any()
    assert [ep["l"] for ep in model.ep_info_buffer] == [20] * 4
    # the evaluation env takes the task's keywords, not the runtime ones
    eval_env = agents.make_eval_env("Pendulum-v1", n_envs=2, env_kwargs={"max_episode_steps": 20, "g": 5.0,
                                                                         "validate_actions": False})
    from rlopt.agents.common.env_util import unwrap_torch_env

    inner_eval = unwrap_torch_env(eval_env)
    assert inner_eval is not None
    assert inner_eval.max_episode_steps == 20 and inner_eval.g == 5.0 and inner_eval.validate_actions
    # saved with the model
    assert model.env_kwargs == {"max_episode_steps": 20, "g": 5.0}


def test_env_kwargs_reach_gymnasium_envs() -> None:
    # an id without a batched implementation goes to gymnasium.make_vec, which hands the keywords to the env
    env_id = "rlopt-test/GymPendulum-v1"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point="gymnasium.envs.classic_control.pendulum:PendulumEnv", max_episode_steps=200)
    model = agents.A2C("MlpPolicy", env_id, n_envs=2, n_steps=8, seed=0, env_kwargs={"g": 5.0, "max_episode_steps": 5})
    assert all(e.unwrapped.g == 5.0 for e in model._stepper.env.envs)  # type: ignore[union-attr]
    model.learn(32)
    assert [ep["l"] for ep in model.ep_info_buffer] == [5] * 6


@pytest.mark.parametrize(
    ("env", "env_kwargs", "error", "match"),
    [
        ("CartPole-v1", {"no_such_keyword": 1}, TypeError, "no_such_keyword"),
        ("CartPole-v1", {"num_envs": 4}, ValueError, "num_envs"),
        ("CartPole-v1", ["compile"], TypeError, "env_kwargs"),
        ("vector_env", {"compile": True}, ValueError, "needs an env id"),
    ],
)
def test_bad_env_kwargs(env: Any, env_kwargs: Any, error: type[Exception], match: str) -> None:
    if env == "vector_env":
        env = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    with pytest.raises(error, match=match):
        agents.PPO("MlpPolicy", env, n_envs=2, env_kwargs=env_kwargs)


def test_an_optimizer_registered_with_rlopt_is_accepted_by_name() -> None:
    spec = rlopt.OptimizerSpec("rmsprop-agents", torch.optim.RMSprop, torch.optim.RMSprop, default_lr=1e-2)
    rlopt.register_optimizer(spec)
    try:
        model = agents.PPO("MlpPolicy", "CartPole-v1", optimizer="rmsprop-agents", learning_rate=3e-3, n_envs=2,
                           n_steps=8, batch_size=16, n_epochs=1, seed=0)
        assert type(model.optimizer) is torch.optim.RMSprop
        assert model.optimizer.param_groups[0]["lr"] == 3e-3  # a learning-rate optimizer: the agent's rate
        model.learn(16)
    finally:
        del rlopt.OPTIMIZERS["rmsprop-agents"]


@pytest.mark.parametrize(("target_kl", "steps"), [(None, 12), (1e-12, 1), (1e6, 12)])
def test_target_kl_stops_an_update_before_the_step_on_the_first_minibatch_over_it(
    target_kl: float | None, steps: int
) -> None:
    """SB3's meaning: the first minibatch sees the rollout's own policy (KL 0, so it steps); after that step
    every KL is positive, so a target of 1e-12 stops before the second minibatch."""
    model = agents.PPO("MlpPolicy", "CartPole-v1", n_envs=4, n_steps=16, batch_size=16, n_epochs=3, seed=0,
                       target_kl=target_kl)
    calls = []
    step_losses = model._step_losses
    model._step_losses = lambda *a, **k: calls.append(1) or step_losses(*a, **k)  # type: ignore[method-assign]
    model.learn(64)
    assert len(calls) == steps  # 64 samples in minibatches of 16, 3 epochs: 12 minibatch steps in full


def test_a_minibatch_larger_than_the_rollout_is_warned_about() -> None:
    with pytest.warns(UserWarning, match=r"batch_size=64 is larger than the rollout \(n_steps \* n_envs = 32\)"):
        agents.PPO("MlpPolicy", "CartPole-v1", n_envs=2, n_steps=16, batch_size=64, seed=0)


def test_loading_weights_never_rewrites_an_envs_action_bounds(tmp_path: Path) -> None:
    """The policy's action-bound buffers are copies: SB3's set_parameters copies into them in place."""
    from rlopt import envs

    model = agents.PPO("MlpPolicy", "Pendulum-v1", n_envs=2, n_steps=16, batch_size=32, seed=0)
    params = model.get_parameters()
    params["policy"]["action_low"] = torch.full((1,), 7.0)
    params["policy"]["action_high"] = torch.full((1,), 9.0)
    model.set_parameters(params)
    assert float(model.policy.action_low) == 7.0
    fresh = envs.make("Pendulum-v1", num_envs=1)  # raised "Box all low values must be <= high" before
    assert fresh.single_action_space.low.tolist() == [-2.0] and fresh.single_action_space.high.tolist() == [2.0]
    assert model.action_space.low.tolist() == [-2.0]


def test_tuned_builds_the_agent_with_the_yaml_settings_for_the_env_and_optimizer() -> None:
    from rlopt.agents.hyperparams import hyperparams

    model = agents.PPO.tuned("CartPole-v1", optimizer="sls", seed=0, n_envs=64)
    expected = hyperparams("PPO", "CartPole-v1", "sls")
    assert model.tuned_timesteps == expected["total_timesteps"]
    assert (model.n_steps, model.batch_size, model.n_epochs) == (expected["n_steps"], expected["batch_size"],
                                                                 expected["n_epochs"])
    assert model.n_envs == 64 and isinstance(model.optimizer, rlopt.SLS)  # overrides on top
    env_id = "RloptTest/UntunedPendulum-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point="gymnasium.envs.classic_control.pendulum:PendulumEnv", max_episode_steps=20)
    untuned = agents.PPO.tuned(env_id, n_envs=2, n_steps=16, batch_size=32)  # no entry: the constructor's defaults
    assert untuned.tuned_timesteps is None and untuned.n_epochs == 4


@pytest.mark.filterwarnings("ignore:(SLS|PolyakPG|SPS).*max_kl:RuntimeWarning")  # at the region's edge no step is taken
@pytest.mark.parametrize(("algo", "rule"), [("PPO", "sls"), ("A2C", "sls"), ("PPO", "polyak"), ("A2C", "polyak"),
                                           ("REINFORCE", "sls"), ("A2C", "sps")])
def test_a_line_search_with_max_kl_keeps_every_policy_step_in_the_trust_region(algo: str, rule: str) -> None:
    """With optimizer_kwargs={"max_kl": d} each accepted policy step has approx KL(rollout || new) <= d on its
    minibatch, checked after the step by evaluating the KL the optimizer was given."""
    bound = 2e-3
    large = {"lr": 10.0} if rule == "sls" else {"max_lr": 10.0}  # steps that would leave the region
    if algo == "PPO":
        model: Any = agents.PPO("MlpPolicy", "CartPole-v1", optimizer=rule,
                                optimizer_kwargs={"max_kl": bound, **large}, n_envs=4, n_steps=64, batch_size=64,
                                n_epochs=4, seed=0)
    elif algo == "A2C":
        model = agents.A2C("MlpPolicy", "CartPole-v1", optimizer=rule, optimizer_kwargs={"max_kl": bound, **large},
                           n_envs=4, n_steps=8, seed=0)
    else:
        model = agents.REINFORCE("MlpPolicy", "CartPole-v1", optimizer=rule,
                                 optimizer_kwargs={"max_kl": bound, **large}, n_envs=4, n_steps=64, seed=0)
    seen: list[tuple[float, float]] = []
    step = model.optimizer.step

    def checked(closure: Any = None, **kwargs: Any) -> Any:
        out = step(closure, **kwargs)
        with torch.no_grad():
            seen.append((model.optimizer.stats["step_size"], float(kwargs["kl"]())))
        return out

    model.optimizer.step = checked
    model.learn(512)
    taken = [kl for eta, kl in seen if eta > 0]
    # PPO: 2 updates x 4 epochs x 4 minibatches; A2C: 16 updates; REINFORCE: 2 updates
    assert len(seen) == {"PPO": 2 * 4 * 4, "A2C": 16, "REINFORCE": 2}[algo] and taken
    assert max(taken) <= bound * (1 + 1e-6)
    assert any(kl > bound / 4 for kl in taken)  # the bound was active, not trivially met


@pytest.mark.parametrize("wrapper", ["VecNormalize", "VecMonitor", "VecFrameStack"])
def test_an_sb3_wrapper_around_the_batched_env_is_honoured(wrapper: str) -> None:
    """The agent steps the wrapper, not the tensor env behind it (wrappers forward attribute lookups)."""
    from stable_baselines3.common import vec_env as sb3_vec

    from rlopt import envs

    inner = envs.SB3VecEnv(envs.make("CartPole-v1", num_envs=4, seed=0, autoreset_mode="same_step"))
    with warnings.catch_warnings():  # VecMonitor warns that the adapter already reports Monitor's statistics
        warnings.simplefilter("ignore", UserWarning)
        venv = {"VecNormalize": lambda: sb3_vec.VecNormalize(inner), "VecMonitor": lambda: sb3_vec.VecMonitor(inner),
                "VecFrameStack": lambda: sb3_vec.VecFrameStack(inner, n_stack=2)}[wrapper]()
    model = agents.PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0)
    model.learn(256)
    if wrapper == "VecNormalize":
        assert venv.obs_rms.count > 100  # its statistics were updated by the rollouts
    elif wrapper == "VecMonitor":
        assert venv.episode_count > 0
    else:
        assert model.observation_space.shape == (8,)  # two stacked CartPole observations


def test_sb3_callbacks_that_read_the_step_locals_and_dump_logs_work() -> None:
    from stable_baselines3.common.callbacks import CallbackList, LogEveryNTimesteps, StopTrainingOnMaxEpisodes

    seen: dict[str, Any] = {}

    class Reads(BaseCallback):
        def _on_step(self) -> bool:
            seen.update(dones=np.asarray(self.locals["dones"]), rewards=np.asarray(self.locals["rewards"]),
                        new_obs=np.asarray(self.locals["new_obs"]), infos=list(self.locals["infos"]))
            return True

    model = agents.PPO("MlpPolicy", "CartPole-v1", n_envs=4, n_steps=64, batch_size=128, n_epochs=1, seed=0)
    stop = StopTrainingOnMaxEpisodes(max_episodes=3)  # crashed: np.sum(axis=) on a torch tensor
    model.learn(10_000, callback=CallbackList([Reads(), stop, LogEveryNTimesteps(n_steps=64)]))
    assert model.num_timesteps < 10_000  # stopped by the episode count
    assert seen["dones"].dtype == np.bool_ and seen["dones"].shape == (4,)
    assert seen["rewards"].shape == (4,) and seen["new_obs"].shape == (4, 4)
    assert len(seen["infos"]) == 4 and all("TimeLimit.truncated" in info for info in seen["infos"])


@pytest.mark.parametrize("algo", ["A2C", "REINFORCE", "PPO"])
@pytest.mark.parametrize("rule", ["sls", "ponos", "polyak", "sps", "adam"])
def test_policy_line_searches_keep_a_trust_region_by_default(algo: str, rule: str) -> None:
    cls = getattr(agents, algo)
    model = cls("MlpPolicy", "CartPole-v1", optimizer=rule, n_envs=2, n_steps=4, seed=0,
                **({"batch_size": 8} if algo == "PPO" else {}))
    searches = rule in ("sls", "ponos", "sps")  # sps: the agents search by default
    # polyak: A2C's bound (its surrogate is unclipped), else its Armijo check alone
    expected = cls.DEFAULT_MAX_KL if searches else cls.POLYAK_MAX_KL if rule == "polyak" else None
    assert model.optimizer.param_groups[0].get("max_kl") == expected
    assert (rule == "polyak" and algo == "A2C") == (rule == "polyak" and expected is not None)
    if expected is not None:  # the critic's regression has no such region, and None turns the policy's off
        assert model.critic_optimizer is None or model.critic_optimizer.param_groups[0].get("max_kl") is None
        off = cls("MlpPolicy", "CartPole-v1", optimizer=rule, optimizer_kwargs={"max_kl": None}, n_envs=2,
                  n_steps=4, seed=0, **({"batch_size": 8} if algo == "PPO" else {}))
        assert off.optimizer.param_groups[0]["max_kl"] is None


@pytest.mark.parametrize(("algo", "kwargs", "passes"), [
    ("PPO", {"n_envs": 4, "n_steps": 32, "batch_size": 32}, 4),
    ("PPO", {"n_envs": 4, "n_steps": 30, "batch_size": 64}, 2),  # 120 samples: a minibatch of 64 and one of 56
    ("A2C", {"n_envs": 4, "n_steps": 8}, 1), ("REINFORCE", {"n_envs": 4, "n_steps": 64}, 500)])  # SLS's own
def test_sls_counts_an_epoch_as_one_pass_over_the_rollout(algo: str, kwargs: dict, passes: int) -> None:
    model = getattr(agents, algo)("MlpPolicy", "CartPole-v1", optimizer="sls", seed=0, **kwargs)
    assert model.optimizer.param_groups[0]["n_batches_per_epoch"] == passes
    if model.critic_optimizer is not None:
        assert model.critic_optimizer.param_groups[0]["n_batches_per_epoch"] == passes
    mine = getattr(agents, algo)("MlpPolicy", "CartPole-v1", optimizer="sls", seed=0,
                                 optimizer_kwargs={"n_batches_per_epoch": 500}, **kwargs)
    assert mine.optimizer.param_groups[0]["n_batches_per_epoch"] == 500  # the caller's choice stands


@pytest.mark.parametrize("algo", ["PPO", "A2C"])
def test_the_critics_sps_step_decreases_the_value_loss_on_its_batch(algo: str) -> None:
    """SPS's critic step is accepted only where the Armijo test holds on the batch it was taken on: every step
    the critic took lowered that batch's value loss by at least search_c * eta * ||g||^2."""
    model = _make(algo, optimizer="sps")
    critic = model.critic_optimizer
    assert critic is not None
    steps: list[tuple[float, float, float, float]] = []
    original = critic.step

    def step(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        s = critic.stats
        steps.append((s["loss"], s["accepted_loss"], s["step_size"], s["grad_norm"] ** 2))
        return out

    critic.step = step  # type: ignore[method-assign]
    with warnings.catch_warnings():  # the policy's searches may meet their trust region's edge: not tested here
        warnings.simplefilter("ignore", RuntimeWarning)
        model.learn(2048)
    taken = [t for t in steps if t[2] > 0]
    assert len(taken) >= len(steps) // 2 > 0
    c = critic.param_groups[0]["search_c"]
    for loss, accepted, eta, grad_sq in taken:
        assert accepted <= loss - c * eta * grad_sq + 1e-6 * abs(loss)
