"""The torch.compile'd step agrees with the eager one; every env runs on every available device."""

from __future__ import annotations

import pytest
import torch

from rlopt import envs


def random_actions(env: envs.TorchVecEnv, gen: torch.Generator) -> torch.Tensor:
    """Uniform discrete actions, or continuous ones in [-2, 2] (clipped by the envs that need it)."""
    space = env.single_action_space
    if space.shape == ():
        return torch.randint(0, int(space.n), (env.num_envs,), generator=gen)  # type: ignore[attr-defined]
    return 4 * torch.rand((env.num_envs, 1), generator=gen) - 2


def record_step_threads(env: envs.TorchVecEnv) -> list[int]:
    """Wrap the env's dynamics so that each step appends torch's thread count at that moment to the list."""
    seen: list[int] = []
    dynamics = env._dynamics

    def spy(state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, ...]:
        seen.append(torch.get_num_threads())
        return dynamics(state, action)

    env._dynamics = spy  # type: ignore[method-assign]
    return seen


def rollout(env: envs.TorchVecEnv, steps: int, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    obs, _ = env.reset(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        obs, rew, term, trunc, _ = env.step(random_actions(env, gen).to(env.device))
        out.append((obs.cpu(), rew.cpu(), term.cpu(), trunc.cpu(), env._episode_length.cpu().clone()))
    return out


@pytest.mark.slow
# Inductor's own imports touch a deprecated torch.jit API; not ours to fix.
@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
@pytest.mark.parametrize("mode", ["next_step", "same_step"])
def test_compiled_step_matches_eager(mode: str) -> None:
    # a short time limit: more resets per copy (about 40) than the eager step's table of next resets holds
    kwargs = {"num_envs": 64, "seed": 0, "autoreset_mode": mode, "max_episode_steps": 3}
    eager_env = envs.make("CartPole-v1", **kwargs)
    eager = rollout(eager_env, 150)
    compiled_env = envs.make("CartPole-v1", compile=True, **kwargs)
    compiled = rollout(compiled_env, 150)
    for t, (a, b) in enumerate(zip(eager, compiled, strict=True)):
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5, msg=f"obs at step {t}")
        for x, y in zip(a[1:], b[1:], strict=True):
            assert torch.equal(x, y), f"step {t}"
    # an explicit reset after the compiled steps (it indexed a table the compiled kernel never advanced)
    torch.testing.assert_close(compiled_env.reset()[0], eager_env.reset()[0], rtol=1e-5, atol=1e-5)
    envs.check_env(compiled_env)


@pytest.mark.parametrize("env_id", envs.registered_ids())
@pytest.mark.parametrize("mode", ["next_step", "same_step"])
def test_eager_reset_table_gives_the_inline_initial_states(env_id: str, mode: str) -> None:
    # The eager step looks initial states up in a table of the next resets of every copy; with one row the
    # table is the inline formula. Many resets (short time limit, explicit partial resets, a reseed) must
    # give the same trajectories either way.
    kwargs = {"num_envs": 16, "seed": 3, "autoreset_mode": mode, "max_episode_steps": 5}
    table, inline = envs.make(env_id, **kwargs), envs.make(env_id, **kwargs)
    assert table._fresh_rows > 4
    inline._fresh_rows, table._fresh_rows = 1, 4  # a small table: rebuilt many times in this test
    gen = torch.Generator().manual_seed(0)
    for env in (table, inline):
        env.reset(seed=3)
    for t in range(150):
        if t == 90:
            for env in (table, inline):
                env.reset(seed=4)
        if t % 7 == 0:
            mask = torch.rand(16, generator=gen) < 0.5
            mask[0] = True
            for _ in range(3):  # several resets of the same copies between two steps
                outs = [env.reset(options={"reset_mask": mask})[0] for env in (table, inline)]
                assert torch.equal(outs[0], outs[1]), f"reset before step {t}"
        a = random_actions(table, gen)
        outs = [env.step(a) for env in (table, inline)]
        for x, y in zip(outs[0][:4], outs[1][:4], strict=True):
            assert torch.equal(x, y), f"step {t}"
    assert torch.equal(table._reset_count, inline._reset_count)
    assert int(table._reset_count.min()) > 2 * table._fresh_rows  # the table was rebuilt many times
    assert envs.make(env_id, num_envs=1 << 15)._fresh_rows == 0  # large batches hash inline, no table


@pytest.mark.parametrize("env_id", envs.registered_ids())
def test_every_env_on_device(env_id: str, device: torch.device) -> None:
    """On CUDA: the contract holds, and one step from the same states agrees with the CPU env."""
    env = envs.make(env_id, num_envs=32, device=device, seed=0, max_episode_steps=60)
    envs.check_env(env)
    cpu = envs.make(env_id, num_envs=32, seed=0, autoreset_mode="disabled")
    dev = envs.make(env_id, num_envs=32, device=device, seed=0, autoreset_mode="disabled")
    cpu.reset()
    dev.reset()
    # Counter-based reset noise: the same seed gives the same initial states on every device.
    torch.testing.assert_close(dev.state.cpu(), cpu.state, rtol=1e-12, atol=1e-12)
    a = rollout(cpu, 20)
    b = rollout(dev, 20)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x[0], y[0], rtol=1e-4, atol=1e-4)
        assert torch.equal(x[2], y[2])


def test_small_cpu_batches_step_on_one_thread_and_restore_the_setting() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        env = envs.make("Pendulum-v1", num_envs=8, seed=0, backend="torch")
        env.reset()
        seen = record_step_threads(env)
        env.step(torch.zeros(8, 1))
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_threads_option_sets_the_step_threads_and_gives_the_same_rollout() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = envs.make("CartPole-v1", num_envs=4096, seed=0, threads=2, max_episode_steps=30)
        seen = record_step_threads(env)
        parallel = rollout(env, 40)
        assert set(seen) == {2}
        assert torch.get_num_threads() == 1
        serial = rollout(envs.make("CartPole-v1", num_envs=4096, seed=0, max_episode_steps=30), 40)
        for a, b in zip(serial, parallel, strict=True):  # elementwise work: the split changes no bit
            for x, y in zip(a, b, strict=True):
                assert torch.equal(x, y)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_threads_option_is_validated(threads: object) -> None:
    with pytest.raises(ValueError, match="threads"):
        envs.make("CartPole-v1", num_envs=2, threads=threads)
