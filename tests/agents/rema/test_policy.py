"""Policies: KV-cache sampling equals a full forward, sampling rules, chat templates, the HF adapter."""

from __future__ import annotations

import doctest

import pytest
import torch

from rlopt.agents import rema
from rlopt.agents.rema import policy as policy_module
from rlopt.agents.rema.policy import CharTokenizer, TinyConfig, TinyPolicy, sample_next_token

from .helpers import tiny_hf_model


def _prompts(policy: TinyPolicy) -> list[list[int]]:
    return [policy.encode_chat([{"role": "system", "content": "solve"}, {"role": "user", "content": "3+4*2" * k}])
            for k in range(1, 5)]


def _check_generation_matches_full_forward(policy: rema.Policy, prompts: list[list[int]]) -> None:
    out = policy.generate(prompts, 12, generator=torch.Generator(device=policy.device).manual_seed(0))
    for prompt, tokens, logp in zip(prompts, out.tokens, out.logprobs, strict=True):
        ids = torch.tensor([prompt + tokens], device=policy.device)
        full = policy.token_logprobs(ids, torch.ones_like(ids))[0, len(prompt) - 1 :]
        torch.testing.assert_close(logp, full, atol=1e-5, rtol=0)


def test_kv_cache_sampling_logprobs_equal_a_full_forward(device: torch.device) -> None:
    policy = TinyPolicy(TinyConfig(d_model=32, n_layers=2), seed=1).to(device)
    _check_generation_matches_full_forward(policy, _prompts(policy))


def test_right_padded_batch_logprobs_equal_unpadded() -> None:
    policy = TinyPolicy(TinyConfig(d_model=32, n_layers=2), seed=2)
    seqs = _prompts(policy)
    length = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (length - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in seqs])
    batched = policy.token_logprobs(ids, mask)
    for i, s in enumerate(seqs):
        alone = policy.token_logprobs(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0]
        torch.testing.assert_close(batched[i, : len(s) - 1], alone, atol=1e-5, rtol=0)


def test_generation_is_deterministic_given_the_generator_and_stops_at_eos() -> None:
    policy = TinyPolicy(TinyConfig(d_model=32, n_layers=1), seed=3)
    a = policy.generate(_prompts(policy), 20, generator=torch.Generator().manual_seed(5))
    b = policy.generate(_prompts(policy), 20, generator=torch.Generator().manual_seed(5))
    assert a.tokens == b.tokens
    for tokens, stopped in zip(a.tokens, a.stopped, strict=True):
        assert policy.eos_id not in tokens[:-1]
        assert stopped == (tokens[-1] == policy.eos_id)
        assert stopped or len(tokens) == 20


def test_top_p_keeps_the_nucleus_and_greedy_takes_the_argmax() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    draws = sample_next_token(logits, top_p=0.7, generator=g)
    # mass before token 2 is 0.8 >= 0.7: only tokens 0 and 1 remain, renormalised to 5/8 and 3/8
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).float().mean().item() - 0.625) < 0.03
    assert sample_next_token(logits[:1], greedy=True).item() == 0
    assert set(sample_next_token(logits, top_p=1e-6, generator=g).tolist()) == {0}


def test_chat_template_and_bad_input() -> None:
    tok = CharTokenizer()
    ids = tok.encode_chat([{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                           {"role": "assistant", "content": "a"}], add_generation_prompt=True)
    assert [tok.itos[i] for i in ids] == ["<system>", "s", "<user>", "q", "<assistant>", "a", "<eos>",
                                           "<assistant>"]
    with pytest.raises(ValueError, match="character"):
        tok.encode("é")
    with pytest.raises(ValueError, match="role"):
        tok.encode_chat([{"role": "tool", "content": "x"}])
    policy = TinyPolicy(TinyConfig(d_model=16, n_layers=1, max_length=16))
    with pytest.raises(ValueError, match="context length"):
        policy.generate([[2] * 10], max_new_tokens=8)
    with pytest.raises(ValueError, match="top_p"):
        policy.generate([[2]], 2, top_p=0.0)
    with pytest.raises(ValueError, match="prompts"):
        policy.generate([], 2)
    with pytest.raises(ValueError, match="n_heads"):
        TinyConfig(d_model=30, n_heads=4)


def test_frozen_copy_is_detached_and_equal() -> None:
    policy = TinyPolicy(TinyConfig(d_model=16, n_layers=1))
    reference = policy.frozen_copy()
    assert all(not p.requires_grad for p in reference.parameters())
    for a, b in zip(policy.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_hf_adapter_logprobs_equal_a_direct_forward() -> None:
    pytest.importorskip("transformers")
    from rlopt.agents.rema.hf import HFPolicy

    model, tokenizer = tiny_hf_model()
    policy = HFPolicy(model, tokenizer)
    prompts = [policy.encode_chat([{"role": "system", "content": "s"}, {"role": "user", "content": "3+4" * k}])
               for k in range(1, 4)]
    assert policy.decode(prompts[0]) == "s3+4"
    out = policy.generate(prompts, 10, generator=torch.Generator().manual_seed(0))
    for prompt, tokens, logp in zip(prompts, out.tokens, out.logprobs, strict=True):
        ids = torch.tensor([prompt + tokens])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].float()
        direct = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0][len(prompt) - 1 :]
        torch.testing.assert_close(logp, direct, atol=1e-5, rtol=0)
        full = policy.token_logprobs(ids, torch.ones_like(ids))[0, len(prompt) - 1 :]
        torch.testing.assert_close(full, direct, atol=1e-5, rtol=0)


def test_hf_adapter_rejects_a_tokenizer_without_chat_template() -> None:
    pytest.importorskip("transformers")
    from rlopt.agents.rema.hf import HFPolicy

    model, tokenizer = tiny_hf_model(chat_template=False)
    with pytest.raises(ValueError, match="chat template"):
        HFPolicy(model, tokenizer)


def test_docstring_examples() -> None:
    result = doctest.testmod(policy_module, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


def test_hf_adapter_without_transformers_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from rlopt.agents.rema.hf import require_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match=r"torch-rlopt\[hf\]"):
        require_transformers()
