"""GAE against closed forms (termination vs truncation), and the rollout buffer's shapes and masking."""

from __future__ import annotations

import pytest
import torch

from rlopt.agents.common.buffer import RolloutBuffer, compute_gae


def _lambda_returns_bruteforce(r, v, nv, term, done, gamma, lam):  # type: ignore[no-untyped-def]
    """A_t = sum_k (gamma lam)^k delta_{t+k}, summed until the episode ends (definition, O(T^2))."""
    T, N = r.shape
    adv = torch.zeros(T, N, dtype=torch.float64)
    for n in range(N):
        for t in range(T):
            total, scale = 0.0, 1.0
            for k in range(t, T):
                delta = r[k, n] + gamma * (1 - term[k, n]) * nv[k, n] - v[k, n]
                total += scale * delta
                if done[k, n]:
                    break
                scale *= gamma * lam
            adv[t, n] = total
    return adv


def test_gae_closed_form_with_truncation_and_termination() -> None:
    gamma, lam = 0.9, 0.8
    a, b, c, f, last = 0.3, -0.2, 0.5, 2.0, 7.0
    buf = RolloutBuffer(3, 1, (1,), (), torch.long)
    obs, act, zero = torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), torch.zeros(1)
    one, t, n = torch.ones(1), torch.tensor([True]), torch.tensor([False])
    buf.add(0, obs, act, zero, one, n, n, None)
    buf.add(1, obs, act, zero, one, n, t, None)  # truncated: bootstraps from V(final) = f
    buf.add_final_observations(1, t, torch.tensor([[f]]))
    buf.add(2, obs, act, zero, one, t, t, None)  # terminated: no bootstrap
    buf.values.copy_(torch.tensor([[a], [b], [c]]))
    buf.compute_returns_and_advantages(torch.tensor([last]), gamma, lam, value_fn=lambda x: x[:, 0])
    a1 = 1 + gamma * f - b
    a0 = (1 + gamma * b - a) + gamma * lam * a1
    a2 = 1 - c
    expected = torch.tensor([[a0], [a1], [a2]])
    torch.testing.assert_close(buf.advantages, expected)
    torch.testing.assert_close(buf.returns, expected + torch.tensor([[a], [b], [c]]))


def test_gae_bootstraps_last_value_of_unfinished_episode() -> None:
    buf = RolloutBuffer(2, 1, (1,), (), torch.long)
    obs, act, zero, n = torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), torch.zeros(1), torch.tensor([False])
    for step in range(2):
        buf.add(step, obs, act, zero, torch.ones(1), n, n, None)
    buf.compute_returns_and_advantages(torch.tensor([10.0]), gamma=0.5, gae_lambda=1.0)
    # discounted return with a bootstrap: 1 + 0.5 * (1 + 0.5 * 10)
    assert buf.returns[0, 0].item() == pytest.approx(4.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_definition_on_random_rollouts(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    T, N = 17, 4
    r, v, nv = (torch.randn(T, N, generator=g, dtype=torch.float64) for _ in range(3))
    term = torch.rand(T, N, generator=g) < 0.1
    trunc = torch.rand(T, N, generator=g) < 0.1
    done = term | trunc
    adv, ret = compute_gae(r, v, nv, term, done, 0.97, 0.9)
    expected = _lambda_returns_bruteforce(r, v, nv, term.double(), done, 0.97, 0.9)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + v)


def test_gae_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="share a shape"):
        compute_gae(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2, 2), torch.zeros(3, 2), torch.zeros(3, 2),
                    0.9, 0.9)


def test_buffer_shapes_and_device(device: torch.device) -> None:
    buf = RolloutBuffer(5, 3, (4,), (2,), torch.float32, device=device)
    assert buf.observations.shape == (5, 3, 4) and buf.actions.shape == (5, 3, 2)
    for name in ("observations", "actions", "log_probs", "values", "rewards", "dones", "valid", "advantages"):
        assert getattr(buf, name).device.type == device.type, name
    assert buf.rewards.shape == buf.values.shape == buf.dones.shape == (5, 3)


def test_invalid_transitions_cut_gae_and_leave_the_batch() -> None:
    # next-step autoreset: env 0 ends at step 0, step 1 is its reset step (action ignored)
    buf = RolloutBuffer(3, 2, (1,), (), torch.long)
    act, zero = torch.zeros(2, dtype=torch.long), torch.zeros(2)
    ended, none = torch.tensor([True, False]), torch.tensor([False, False])
    for step in range(3):
        obs = torch.full((2, 1), float(step))
        valid = torch.tensor([step != 1, True])
        buf.add(step, obs, act, zero, torch.ones(2), ended if step == 0 else none,
                ended if step == 0 else none, valid)
    buf.compute_returns_and_advantages(torch.zeros(2), gamma=1.0, gae_lambda=1.0)
    assert buf.advantages[0, 0].item() == 1.0  # terminated: the reset step's reward does not leak in
    batch = buf.flatten()
    assert len(batch) == 5
    # the dropped row is env 0 at step 1 (time-major flattening: index 2)
    assert batch.observations[:, 0].tolist() == [0.0, 0.0, 1.0, 2.0, 2.0]


def test_buffer_rejects_non_positive_sizes() -> None:
    with pytest.raises(ValueError, match="n_steps"):
        RolloutBuffer(0, 1, (1,), (), torch.long)
