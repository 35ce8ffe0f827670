"""The NumPy step of small CPU batches (``backend="numpy"``) agrees with the torch step, keeps the contract,
and is chosen by default only where it applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlopt import envs


def _actions(env: envs.TorchVecEnv, gen: torch.Generator) -> torch.Tensor:
    space = env.single_action_space
    if space.shape == ():
        return torch.randint(0, int(space.n), (env.num_envs,), generator=gen)  # type: ignore[attr-defined]
    return 6 * torch.rand((env.num_envs, 1), generator=gen) - 3  # beyond the bounds too


@pytest.mark.parametrize("env_id", envs.registered_ids())
@pytest.mark.parametrize("mode", ["next_step", "same_step", "disabled"])
def test_numpy_step_agrees_with_the_torch_step(env_id: str, mode: str) -> None:
    # A short time limit: most copies reset several times, through the reset table, on both paths.
    kwargs = {"num_envs": 16, "seed": 5, "autoreset_mode": mode, "max_episode_steps": 9}
    on_numpy, on_torch = envs.make(env_id, backend="numpy", **kwargs), envs.make(env_id, backend="torch", **kwargs)
    assert (on_numpy.backend, on_torch.backend) == ("numpy", "torch")
    gen = torch.Generator().manual_seed(0)
    outs = [env.reset(seed=5)[0] for env in (on_numpy, on_torch)]
    assert torch.equal(outs[0], outs[1])
    for t in range(120):
        if mode == "disabled" and t % 9 == 8:
            mask = torch.ones(16, dtype=torch.bool)
            outs = [env.reset(options={"reset_mask": mask})[0] for env in (on_numpy, on_torch)]
            assert torch.equal(outs[0], outs[1])
            continue
        a = _actions(on_numpy, gen)
        (obs, rew, term, trunc, info), (obs_t, rew_t, term_t, trunc_t, info_t) = on_numpy.step(a), on_torch.step(a)
        # the sines and cosines may round differently by an ulp; everything else is the same IEEE arithmetic
        torch.testing.assert_close(obs, obs_t, rtol=1e-6, atol=1e-9, msg=f"obs at step {t}")
        torch.testing.assert_close(rew, rew_t, rtol=1e-6, atol=1e-9, msg=f"reward at step {t}")
        dtypes = [x.dtype for x in (obs, rew, term, trunc, obs_t, rew_t, term_t, trunc_t)]
        assert dtypes[:4] == dtypes[4:], f"step {t}"
        assert torch.equal(term, term_t) and torch.equal(trunc, trunc_t), f"step {t}"
        assert info.keys() == info_t.keys(), f"step {t}"
        if info:
            done = info["_episode_stats"]
            assert torch.equal(done, info_t["_episode_stats"])
            assert torch.equal(info["episode_stats"]["l"][done], info_t["episode_stats"]["l"][done])
            torch.testing.assert_close(info["episode_stats"]["r"][done], info_t["episode_stats"]["r"][done])
            if "final_obs" in info:
                torch.testing.assert_close(info["final_obs"][done], info_t["final_obs"][done], rtol=1e-6, atol=1e-9)
    assert torch.equal(on_numpy._reset_count, on_torch._reset_count)
    assert int(on_numpy._reset_count.min()) > 5
    torch.testing.assert_close(on_numpy.state, on_torch.state, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("backend", envs.BACKENDS)
@pytest.mark.parametrize("env_id", envs.registered_ids())
def test_observations_never_share_the_state_buffer(env_id: str, backend: str) -> None:
    # One copy of a float32 env was the case where the reset observation was a view of the state.
    env = envs.make(env_id, num_envs=1, seed=0, dtype="float32", backend=backend)
    first, _ = env.reset()
    kept = first.clone()
    obs, *_ = env.step(_actions(env, torch.Generator().manual_seed(0)))
    kept_step = obs.clone()
    env.step(_actions(env, torch.Generator().manual_seed(1)))
    assert torch.equal(first, kept) and torch.equal(obs, kept_step)


@pytest.mark.parametrize("backend", envs.BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int32, torch.int64])
def test_discrete_actions_out_of_range_are_refused_in_every_integer_dtype(backend: str, dtype: torch.dtype) -> None:
    env = envs.make("Acrobot-v1", num_envs=4, seed=0, backend=backend)
    env.reset()
    state = env.state
    bad = [[0, 1, 3, 2]] + ([] if dtype == torch.uint8 else [[0, -1, 2, 1]])
    for actions in bad:
        with pytest.raises(ValueError, match=r"actions must lie in \[0, 2\]"):
            env.step(torch.tensor(actions, dtype=dtype))
        assert torch.equal(env.state, state)  # refused before anything moved
    env.step(torch.tensor([0, 1, 2, 2], dtype=dtype))
    env.step(np.array([2, 1, 0, 0], dtype=np.int64))


def test_the_default_backend_is_numpy_for_small_eager_cpu_batches_only() -> None:
    assert envs.make("CartPole-v1", num_envs=8).backend == "numpy"
    assert envs.make("CartPole-v1", num_envs=2048).backend == "numpy"
    assert envs.make("CartPole-v1", num_envs=2049).backend == "torch"
    assert envs.make("CartPole-v1", num_envs=8, backend="torch").backend == "torch"
    assert envs.make("CartPole-v1", num_envs=8, threads=2).backend == "torch"  # torch's intra-op threads
    assert envs.make("CartPole-v1", num_envs=8192, backend="numpy").backend == "numpy"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "jax"}, r"Invalid backend: 'jax', expected None or one of \['torch', 'numpy'\]"),
        ({"backend": "numpy", "device": "meta"}, r"Invalid backend: 'numpy' steps an eager CPU env"),
        ({"backend": "numpy", "compile": True}, r"Invalid backend: 'numpy' steps an eager CPU env"),
        ({"backend": "numpy", "threads": 2}, r"Invalid backend: 'numpy' steps an eager CPU env on one thread"),
    ],
)
def test_a_bad_backend_is_refused_with_the_allowed_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        envs.make("CartPole-v1", num_envs=4, **kwargs)


def test_numpy_step_is_deterministic() -> None:
    def run() -> list[torch.Tensor]:
        env = envs.make("Pendulum-v1", num_envs=8, seed=11, max_episode_steps=7, backend="numpy")
        env.reset()
        gen = torch.Generator().manual_seed(3)
        return [env.step(_actions(env, gen))[0] for _ in range(40)]

    assert all(torch.equal(a, b) for a, b in zip(run(), run(), strict=True))


@pytest.mark.parametrize("backend", envs.BACKENDS)
def test_an_overflowing_state_steps_silently_on_both_backends(backend: str) -> None:
    # A state past float64's range (a user-set state, a copy stepped long after it fell) gives inf/nan as
    # torch's step does, without NumPy's floating-point warnings (errors under this suite's settings).
    env = envs.make("CartPole-v1", num_envs=2, seed=0, autoreset_mode="disabled", backend=backend)
    env.reset()
    env.state = torch.full((2, 4), 1e200, dtype=torch.float64)
    obs, *_ = env.step(torch.ones(2, dtype=torch.int64))
    assert not bool(torch.isfinite(obs).all())
