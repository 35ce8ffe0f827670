"""Where a PPO update's time goes on CartPole-v1 at the tuned defaults (agents/hyperparams.yaml).

Prints, after a warm-up of two updates:
- rollout and update milliseconds of `rlopt.agents.PPO` (min and median over ``--reps`` updates);
- the rollout's per-step split: sampling actions (``policy.act``), the env step (through the agent's
  stepper) and the buffer writes, in microseconds, with the ATen calls each makes (torch.profiler);
- the kernels of one 2,048-sample minibatch step timed alone, one by one (GEMMs, tanh and its backward,
  bias-gradient sums), and their sum against the step as a whole;
- the same update written as a bare single-file PyTorch loop (two 64x64 tanh MLPs, fused Adam, gradient
  clipping, clipped surrogate and value loss on 2,048-sample minibatches), timed interleaved with the
  library's: the library's overhead over plain PyTorch is their difference.

Usage:
    python benchmarks/profile_agents.py [--threads 2] [--reps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from rlopt import agents
from rlopt.agents.hyperparams import hyperparams


class _Continue(BaseCallback):
    def _on_step(self) -> bool:
        return True


def _ms(samples: list[float]) -> str:
    return f"{min(samples) * 1e3:.1f} ms (median {statistics.median(samples) * 1e3:.1f})"


def _aten_calls(fn: Callable[[], object]) -> int:
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def _us(fn: Callable[[], object], n: int = 300) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e6


def kernel_times(batch: int) -> dict[str, tuple[float, int]]:
    """(microseconds, count per minibatch step) of the main kernels of the two MLPs' forward and backward."""
    x, y = torch.randn(batch, 64), torch.randn(batch, 64)
    w, b = torch.randn(64, 64), torch.randn(64)
    obs, w_in = torch.randn(batch, 4), torch.randn(4, 64)
    head_grad, w_head = torch.randn(batch, 2), torch.randn(2, 64)
    return {
        "64x64 layer forward (addmm)": (_us(lambda: torch.addmm(b, x, w)), 2),
        "64x64 input gradient (mm)": (_us(lambda: x @ w), 2),
        "64x64 weight gradient (mm)": (_us(lambda: x.t() @ y), 2),
        "input layer forward (addmm, k=4)": (_us(lambda: torch.addmm(b, obs, w_in)), 2),
        "input layer weight gradient": (_us(lambda: x.t() @ obs), 2),
        "head input gradient (k=2)": (_us(lambda: head_grad @ w_head), 2),
        "tanh": (_us(lambda: torch.tanh(x)), 4),
        "tanh backward": (_us(lambda: torch.ops.aten.tanh_backward(x, y)), 4),
        "bias gradient (sum over the batch)": (_us(lambda: x.sum(0)), 4),
    }


def bare_update(n_samples: int, batch_size: int, n_epochs: int, clip: float, seed: int = 0) -> Callable[[], None]:
    """A plain-PyTorch PPO update of the same shapes as the library's CartPole default."""
    gen = torch.Generator().manual_seed(seed)

    def mlp(out: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, out))

    actor, critic = mlp(2), mlp(1)
    params = [*actor.parameters(), *critic.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-5, fused=True)
    obs = torch.randn(n_samples, 4, generator=gen)
    actions = torch.randint(0, 2, (n_samples,), generator=gen)
    old_log_probs = torch.full((n_samples,), -0.69)
    advantages = torch.randn(n_samples, generator=gen)
    returns = torch.randn(n_samples, generator=gen)

    def step(idx: torch.Tensor) -> None:
        adv = advantages[idx]
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        log_probs = actor(obs[idx]).log_softmax(-1).gather(1, actions[idx, None]).squeeze(1)
        ratio = (log_probs - old_log_probs[idx]).exp()
        policy_loss = -torch.min(adv * ratio, adv * ratio.clamp(1 - clip, 1 + clip)).mean()
        value_loss = (returns[idx] - critic(obs[idx]).squeeze(-1)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        (policy_loss + 0.5 * value_loss).backward()
        nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()

    def update() -> None:
        for _ in range(n_epochs):
            perm = torch.randperm(n_samples, generator=gen)
            for start in range(0, n_samples, batch_size):
                step(perm[start:start + batch_size])

    return update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--reps", type=int, default=20, help="timed updates")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    kwargs = hyperparams("PPO", "CartPole-v1")
    kwargs.pop("total_timesteps", None)
    model = agents.PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **kwargs)
    n_samples = model.n_envs * model.n_steps
    model.learn(2 * n_samples)
    callback = _Continue()
    callback.init_callback(model)
    bare = bare_update(n_samples, model.batch_size, model.n_epochs, model.clip_range)
    bare()

    rollout, update, plain = [], [], []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        model.collect_rollouts(callback)
        t1 = time.perf_counter()
        model.policy.set_training_mode(True)
        model._apply_lr_schedule()
        model.train()
        t2 = time.perf_counter()
        bare()
        t3 = time.perf_counter()
        rollout.append(t1 - t0)
        update.append(t2 - t1)
        plain.append(t3 - t2)
    print(f"PPO CartPole-v1, {model.n_envs} copies x {model.n_steps} steps, {model.n_epochs} epochs of "
          f"{model.batch_size}-sample minibatches, {args.threads} thread(s)")
    print(f"rollout:                {_ms(rollout)}")
    print(f"update (agents.PPO):    {_ms(update)}")
    print(f"update (bare PyTorch):  {_ms(plain)}")

    kernels = kernel_times(model.batch_size)
    total = sum(us * count for us, count in kernels.values())
    per_step = min(update) / (model.n_epochs * -(-n_samples // model.batch_size)) * 1e6
    print(f"kernels of one {model.batch_size}-sample minibatch step, timed alone: "
          + ", ".join(f"{name} {us:.0f} us x{count}" for name, (us, count) in kernels.items()))
    print(f"  sum {total / 1e3:.2f} ms, against {per_step / 1e3:.2f} ms per minibatch step in agents.PPO's update")

    # the rollout loop's three parts, step by step (as in OnPolicyAgent.collect_rollouts)
    policy, stepper, buf = model.policy, model._stepper, model.rollout_buffer
    assert stepper is not None
    policy.set_training_mode(False)
    obs = model._last_obs
    assert isinstance(obs, torch.Tensor)
    parts = {"act": 0.0, "env": 0.0, "buffer": 0.0}
    steps = 0
    for _ in range(max(args.reps // 2, 1)):
        for step in range(model.n_steps):
            t0 = time.perf_counter()
            with torch.no_grad():
                actions, log_probs = policy.act(obs, model._generator)
            t1 = time.perf_counter()
            out = stepper.step(policy.env_actions(actions))
            t2 = time.perf_counter()
            dones = out.terminated | out.truncated
            buf.add(step, obs, actions, log_probs, out.reward, out.terminated, dones, out.valid)
            if out.final_mask is not None and out.final_obs is not None:
                buf.add_final_observations(step, out.final_mask & out.truncated, out.final_obs)
            obs = out.obs
            t3 = time.perf_counter()
            parts["act"] += t1 - t0
            parts["env"] += t2 - t1
            parts["buffer"] += t3 - t2
            steps += 1
    with torch.no_grad():
        calls = {
            "act": _aten_calls(lambda: policy.act(obs, model._generator)),
            "env": _aten_calls(lambda: stepper.step(policy.env_actions(actions))),
            "buffer": _aten_calls(
                lambda: buf.add(0, obs, actions, log_probs, out.reward, out.terminated, dones, out.valid)
            ),
        }
    print(f"per rollout step ({model.n_envs} copies): "
          + ", ".join(f"{k} {v / steps * 1e6:.0f} us ({calls[k]} ATen calls)" for k, v in parts.items()))


if __name__ == "__main__":
    main()
