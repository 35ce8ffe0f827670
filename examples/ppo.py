"""PPO in one file, on tensor-batched environments (after cleanrl's ppo.py).

The whole algorithm on one page: a rollout of ``num_steps`` steps of ``num_envs`` copies that never leaves
the device, GAE that bootstraps truncated episodes from their true final observation, and ``update_epochs``
passes of clipped-surrogate minibatch steps. ``rlopt.agents.PPO`` computes exactly this (the tests check the two
agree parameter for parameter on the same seed); read this file to see what it does.

Run:
    python examples/ppo.py --env-id CartPole-v1 --num-envs 128 --num-steps 32 --total-timesteps 100000
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from rlopt import envs


@dataclass
class Args:
    env_id: str = "CartPole-v1"
    seed: int = 0
    device: str = "cpu"
    total_timesteps: int = 100_000
    num_envs: int = 128
    num_steps: int = 32  # rollout length per env
    learning_rate: float = 2.5e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 4
    minibatch_size: int = 2048
    clip_coef: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5


def layer(n_in: int, n_out: int, gain: float) -> nn.Linear:
    linear = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(linear.weight, gain=gain)
    nn.init.zeros_(linear.bias)
    return linear


class Agent(nn.Module):
    """Separate actor and critic MLPs (64, 64, tanh); categorical actions."""

    def __init__(self, obs_dim: int, n_actions: int) -> None:
        super().__init__()
        h = math.sqrt(2)
        self.actor = nn.Sequential(layer(obs_dim, 64, h), nn.Tanh(), layer(64, 64, h), nn.Tanh(),
                                   layer(64, n_actions, 0.01))
        self.critic = nn.Sequential(layer(obs_dim, 64, h), nn.Tanh(), layer(64, 64, h), nn.Tanh(), layer(64, 1, 1.0))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def act(self, obs: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.log_softmax(self.actor(obs), dim=-1)
        # Gumbel-max trick: argmax(logits + Gumbel noise) is a sample of the categorical distribution
        u = torch.rand(logits.shape, generator=gen, device=obs.device, dtype=logits.dtype)
        action = torch.argmax(logits - torch.log(-torch.log(u.clamp_min(1e-20))), dim=-1)
        return action, logits.gather(-1, action.unsqueeze(-1)).squeeze(-1)

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.log_softmax(self.actor(obs), dim=-1)
        return logits.gather(-1, action.unsqueeze(-1)).squeeze(-1), -(logits.exp() * logits).sum(-1)


def train(args: Args) -> Agent:
    device = torch.device(args.device)
    env = envs.make(args.env_id, num_envs=args.num_envs, device=device, seed=args.seed, autoreset_mode="same_step")
    obs_dim, n_actions = env.single_observation_space.shape[0], int(env.single_action_space.n)
    with torch.random.fork_rng(devices=[]):  # seed the initialization without touching the caller's RNG
        torch.manual_seed(args.seed)
        agent = Agent(obs_dim, n_actions)
    agent = agent.to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed)  # actions and minibatches
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)

    T, N = args.num_steps, args.num_envs
    obs_buf = torch.zeros(T, N, obs_dim, device=device)
    final_obs_buf = torch.zeros(T, N, obs_dim, device=device)
    act_buf = torch.zeros(T, N, dtype=torch.long, device=device)
    logp_buf, rew_buf = (torch.zeros(T, N, device=device) for _ in range(2))
    term_buf, done_buf, trunc_buf = (torch.zeros(T, N, dtype=torch.bool, device=device) for _ in range(3))

    next_obs = env.reset(seed=args.seed)[0].float()
    num_updates = math.ceil(args.total_timesteps / (T * N))
    start = time.time()
    for update in range(1, num_updates + 1):
        # ---- rollout: everything stays a tensor on the device
        for t in range(T):
            with torch.no_grad():
                action, logp = agent.act(next_obs, gen)
            obs_buf[t], act_buf[t], logp_buf[t] = next_obs, action, logp
            next_obs, reward, terminated, truncated, info = env.step(action)
            next_obs = next_obs.float()
            rew_buf[t], term_buf[t], done_buf[t] = reward, terminated, terminated | truncated
            trunc_buf[t] = truncated  # same-step autoreset: the true final observation is in info,
            if "final_obs" in info:  # on the steps where a copy ended
                final_obs_buf[t] = info["final_obs"]

        # ---- GAE: a truncated episode bootstraps from V(final observation); a terminated one does not
        with torch.no_grad():
            val_buf = agent.value(obs_buf.reshape(T * N, obs_dim)).reshape(T, N)  # the critic in one batch
            next_values = torch.cat([val_buf[1:], agent.value(next_obs).unsqueeze(0)])
            if bool(trunc_buf.any()):
                next_values[trunc_buf] = agent.value(final_obs_buf[trunc_buf])
            deltas = rew_buf + args.gamma * (~term_buf) * next_values - val_buf
            advantages = torch.empty_like(val_buf)
            running = torch.zeros(N, device=device)
            for t in reversed(range(T)):
                running = deltas[t] + args.gamma * args.gae_lambda * (~done_buf[t]) * running
                advantages[t] = running
            returns = advantages + val_buf

        # ---- update: clipped surrogate + value loss, minibatches of the flattened rollout
        b_obs, b_act, b_logp = obs_buf.reshape(T * N, obs_dim), act_buf.reshape(-1), logp_buf.reshape(-1)
        b_adv, b_ret = advantages.reshape(-1), returns.reshape(-1)
        for _ in range(args.update_epochs):
            for mb in torch.randperm(T * N, generator=gen, device=device).split(args.minibatch_size):
                adv = b_adv[mb]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                new_logp, entropy = agent.log_prob_entropy(b_obs[mb], b_act[mb])
                ratio = (new_logp - b_logp[mb]).exp()
                pg_loss = -torch.min(adv * ratio, adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
                v_loss = (b_ret[mb] - agent.value(b_obs[mb])).pow(2).mean()
                loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
        sps = int(update * T * N / (time.time() - start))
        print(f"update {update}/{num_updates}  loss {loss.item():.3f}  steps/s {sps}", flush=True)
    return agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in vars(Args()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    train(Args(**vars(parser.parse_args())))


if __name__ == "__main__":
    main()
