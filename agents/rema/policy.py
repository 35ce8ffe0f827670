"""Policies for ReMA behind one small interface, and the built-in tiny causal transformer.

A :class:`Policy` is a ``torch.nn.Module`` that

* renders a chat (``[{"role": "system"|"user"|"assistant", "content": str}, ...]``) into token ids with its
  chat template (:meth:`Policy.encode_chat`), and decodes ids back to text;
* samples continuations of a batch of prompts on its device with temperature and top-p, reusing a KV cache
  (:meth:`Policy.generate`), returning the log-probability of every sampled token;
* computes per-token log-probabilities of whole sequences in one forward (:meth:`Policy.token_logprobs`),
  which the losses use (the log-prob of token ``t+1`` given tokens ``<= t``);
* gives a frozen reference copy (:meth:`Policy.frozen_copy`) for the KL term.

Two implementations: :class:`TinyPolicy` (a small pre-LayerNorm transformer over characters, built from a
:class:`TinyConfig`, the default; no download) and :class:`rlopt.agents.rema.hf.HFPolicy` (any Hugging Face causal
LM with a chat template).

Prompts are left-padded for generation and sequences right-padded for training; both compute positions as
``cumsum(attention_mask) - 1``, so a token gets the same position, hence the same log-prob, either way.
"""

from __future__ import annotations

import copy
import math
import string
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CharTokenizer",
    "Generation",
    "Policy",
    "TinyConfig",
    "TinyPolicy",
    "TinyTransformer",
    "sample_next_token",
]

Message = dict[str, str]
Cache = Any


@dataclass
class Generation:
    """Sampled continuations of a batch of prompts.

    Attributes:
        tokens: per prompt, the generated ids (the EOS id included when the sample stopped on it).
        logprobs: per prompt, a float tensor of the log-prob of each generated token under the policy's
            distribution at the sampling temperature (before top-p truncation), on the policy device.
        stopped: per prompt, ``True`` if it ended with EOS, ``False`` if it hit ``max_new_tokens``.
    """

    tokens: list[list[int]]
    logprobs: list[Tensor]
    stopped: list[bool]


def sample_next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    greedy: bool = False,
) -> Tensor:
    """One token per row of ``logits`` (shape ``(B, V)``): argmax if ``greedy``, else nucleus sampling.

    Top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (the most likely
    token always), renormalised (Holtzman et al., 2020).
    """
    if greedy:
        return logits.argmax(dim=-1)
    return _sample_from_probs(torch.softmax(logits.float() / temperature, dim=-1), top_p, generator)


def _sample_from_probs(probs: Tensor, top_p: float, generator: torch.Generator | None) -> Tensor:
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a token when the mass strictly before it already reaches top_p
        drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Policy(nn.Module):
    """The interface ReMA's rollout and losses use; subclasses implement the five abstract members.

    Subclasses set ``eos_id``, ``pad_id`` and ``max_length`` (the context length) and implement
    :meth:`encode_chat`, :meth:`decode` and :meth:`forward_logits`.
    """

    eos_id: int
    pad_id: int
    max_length: int

    def encode_chat(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of ``messages`` under the chat template (with the assistant header when asked)."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` without special tokens."""
        raise NotImplementedError

    def forward_logits(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Cache = None
    ) -> tuple[Tensor, Cache]:
        """Logits ``(B, T, V)`` for ``input_ids`` given the cache of the earlier tokens, and the new cache.

        ``attention_mask`` covers the cached and the new tokens, ``(B, T_cache + T)``.
        """
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """The device of the parameters."""
        return next(self.parameters()).device

    def check_length(self, length: int, what: str = "prompt") -> None:
        """Raise ``ValueError`` if ``length`` tokens exceed the context length."""
        if length > self.max_length:
            raise ValueError(f"Invalid {what}: {length} tokens exceed the context length max_length="
                             f"{self.max_length}")

    def token_logprobs(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``log pi(x_{t+1} | x_{<=t})`` for every position, shape ``(B, T - 1)`` (one full forward).

        Positions where ``attention_mask`` is 0 get arbitrary finite values; mask them.
        """
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        logits, _ = self.forward_logits(input_ids, attention_mask, position_ids, None)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        greedy: bool = False,
    ) -> Generation:
        """Sample a continuation of every prompt in one batch with a KV cache.

        Args:
            prompts: token ids of each prompt (non-empty).
            max_new_tokens: largest number of generated tokens per prompt.
            temperature: softmax temperature (> 0).
            top_p: nucleus mass in (0, 1].
            generator: the random generator (on the policy device) of the sampling.
            greedy: take the most likely token instead of sampling.

        Raises:
            ValueError: on an empty prompt, a bad argument, or prompt + ``max_new_tokens`` over the context
                length.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("Invalid prompts: expected a non-empty list of non-empty token id lists")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"Invalid max_new_tokens: {max_new_tokens!r}, expected an integer >= 1")
        if not temperature > 0:
            raise ValueError(f"Invalid temperature: {temperature!r}, expected > 0")
        if not 0 < top_p <= 1:
            raise ValueError(f"Invalid top_p: {top_p!r}, expected 0 < top_p <= 1")
        longest = max(len(p) for p in prompts)
        self.check_length(longest + max_new_tokens, "prompt (+ max_new_tokens)")
        device = self.device
        batch = len(prompts)
        ids = torch.full((batch, longest), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((batch, longest), dtype=torch.long, device=device)
        for i, prompt in enumerate(prompts):
            ids[i, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long, device=device)
            mask[i, longest - len(prompt) :] = 1
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        was_training = self.training
        self.eval()
        try:
            logits, cache = self.forward_logits(ids, mask, position, None)
            next_logits = logits[:, -1]
            last_position = position[:, -1:]
            finished = torch.zeros(batch, dtype=torch.bool, device=device)
            out_tokens = []
            out_logp = []
            alive = []
            for _ in range(max_new_tokens):
                # one log-softmax serves both the sampling distribution and the returned log-probs
                logp = torch.log_softmax(next_logits.float() / temperature, dim=-1)
                token = next_logits.argmax(dim=-1) if greedy else _sample_from_probs(logp.exp(), top_p, generator)
                token = torch.where(finished, torch.full_like(token, self.pad_id), token)
                out_logp.append(logp.gather(-1, token.unsqueeze(-1)).squeeze(-1))
                out_tokens.append(token)
                alive.append(~finished)
                finished = finished | (token == self.eos_id)
                if bool(finished.all()):
                    break
                # finished rows feed a masked pad, so they never influence the others
                mask = torch.cat([mask, (~finished).long().unsqueeze(-1)], dim=-1)
                last_position = last_position + 1
                logits, cache = self.forward_logits(token.unsqueeze(-1), mask, last_position, cache)
                next_logits = logits[:, -1]
        finally:
            self.train(was_training)
        tokens_t = torch.stack(out_tokens, dim=1).tolist()
        logp_t = torch.stack(out_logp, dim=1)
        alive_t = torch.stack(alive, dim=1).sum(dim=1).tolist()
        tokens = [row[:n] for row, n in zip(tokens_t, alive_t, strict=True)]
        logprobs = [logp_t[i, :n] for i, n in enumerate(alive_t)]
        stopped = [len(t) > 0 and t[-1] == self.eos_id for t in tokens]
        return Generation(tokens=tokens, logprobs=logprobs, stopped=stopped)

    def frozen_copy(self) -> Policy:
        """A deep copy in eval mode with ``requires_grad=False``: the reference policy of the KL term."""
        reference = copy.deepcopy(self)
        reference.requires_grad_(False)
        reference.eval()
        return reference


class CharTokenizer:
    """Characters of printable ASCII plus five special tokens, with a minimal chat template.

    The template writes each message as its role token followed by its characters, and ends assistant
    messages with ``<eos>``; the generation prompt is the ``<assistant>`` token. Example:
    ``<system>solve<user>3+4<assistant>7<eos>``.

    Example:
        >>> tok = CharTokenizer()
        >>> tok.decode(tok.encode_chat([{"role": "user", "content": "3+4"}]))
        '3+4'
    """

    SPECIALS = ("<pad>", "<eos>", "<system>", "<user>", "<assistant>")

    def __init__(self) -> None:
        chars = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
        self.itos: list[str] = list(self.SPECIALS) + chars
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.eos_id = 0, 1
        self.role_ids = {"system": 2, "user": 3, "assistant": 4}

    @property
    def vocab_size(self) -> int:
        """Number of tokens."""
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text``.

        Raises:
            ValueError: on a character outside printable ASCII.
        """
        try:
            return [self.stoi[c] for c in text]
        except KeyError as error:
            raise ValueError(f"Invalid text: character {error.args[0]!r} is not in the character vocabulary "
                             "(printable ASCII)") from None

    def encode_chat(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        """Ids of ``messages`` under the template of the class docstring."""
        ids: list[int] = []
        for message in messages:
            role = message.get("role")
            if role not in self.role_ids:
                raise ValueError(f"Invalid role: {role!r}, expected one of {sorted(self.role_ids)}")
            ids.append(self.role_ids[role])
            ids.extend(self.encode(message["content"]))
            if role == "assistant":
                ids.append(self.eos_id)
        if add_generation_prompt:
            ids.append(self.role_ids["assistant"])
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` with special tokens dropped."""
        return "".join(self.itos[i] for i in ids if i >= len(self.SPECIALS))


@dataclass
class TinyConfig:
    """Size of the built-in transformer (defaults: about 0.1M parameters).

    Attributes:
        d_model: width of the residual stream.
        n_layers: number of transformer blocks.
        n_heads: number of attention heads (must divide ``d_model``).
        d_ff: width of the MLP.
        max_length: context length in tokens.
        vocab_size: set from the tokenizer when ``None``.
    """

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    max_length: int = 192
    vocab_size: int | None = field(default=None)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r}, expected a positive integer")
        if self.d_model % self.n_heads:
            raise ValueError(f"Invalid n_heads: {self.n_heads}, expected a divisor of d_model={self.d_model}")


class _Block(nn.Module):
    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.ln1 = nn.LayerNorm(config.d_model)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, config.d_ff), nn.GELU(),
                                 nn.Linear(config.d_ff, config.d_model))

    def forward(
        self, x: Tensor, attn_mask: Tensor, cache: tuple[Tensor, Tensor] | None, start: int
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(width, dim=-1)
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            # preallocated buffers written in place: no copy of the whole cache per generated token
            cache[0][:, :, start : start + length] = k
            cache[1][:, :, start : start + length] = v
            k, v = cache[0][:, :, : start + length], cache[1][:, :, : start + length]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        x = x + self.mlp(self.ln2(x))
        return x, cache


class TinyTransformer(nn.Module):
    """A pre-LayerNorm causal transformer with learned positions and a KV cache."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("Invalid config: vocab_size is None, expected the tokenizer's vocabulary size")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.max_length, config.d_model)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:  # GPT-2's scaling of residual projections
            assert isinstance(block, _Block)
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * config.n_layers))

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: list[Any] | None = None
    ) -> tuple[Tensor, list[Any] | None]:
        """Logits and the per-layer key/value cache (see :meth:`Policy.forward_logits`).

        Without a cache (a full forward, e.g. for training) none is built when gradients are enabled;
        under ``torch.no_grad`` the first call allocates per-layer buffers for the whole context, which
        later calls fill in place.
        """
        length = input_ids.shape[1]
        total = attention_mask.shape[1]
        device = input_ids.device
        start = total - length
        if cache is None and not torch.is_grad_enabled():
            heads, width = self.config.n_heads, self.config.d_model
            shape = (input_ids.shape[0], heads, self.config.max_length, width // heads)
            dtype = self.embed.weight.dtype
            cache = [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
                     for _ in self.blocks]
        query_index = torch.arange(total - length, total, device=device)
        key_index = torch.arange(total, device=device)
        causal = key_index[None, :] <= query_index[:, None]
        valid = attention_mask.bool()[:, None, None, :]
        # a padded query attends to itself so its row is never empty (an all-masked row gives NaN)
        attn_mask = (causal[None, None] & valid) | (key_index[None, :] == query_index[:, None])[None, None]
        x = self.embed(input_ids) + self.position(position_ids.clamp(max=self.config.max_length - 1))
        for i, block in enumerate(self.blocks):
            x, _ = block(x, attn_mask, None if cache is None else cache[i], start)
        return self.head(self.ln_f(x)), cache


class TinyPolicy(Policy):
    """The default policy: :class:`TinyTransformer` over :class:`CharTokenizer`, built from a config.

    Args:
        config: model size; ``vocab_size`` is filled in from the tokenizer.
        seed: seed of the weight initialisation (a local generator; the global RNG is untouched).

    Example:
        >>> policy = TinyPolicy(TinyConfig(d_model=32, n_layers=1), seed=0)
        >>> out = policy.generate([policy.encode_chat([{"role": "user", "content": "1+1"}])], max_new_tokens=4,
        ...                       generator=torch.Generator().manual_seed(0))
        >>> len(out.tokens[0]) <= 4
        True
    """

    def __init__(self, config: TinyConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        self.tokenizer = CharTokenizer()
        config = copy.copy(config) if config is not None else TinyConfig()
        config.vocab_size = self.tokenizer.vocab_size
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))  # inside a fork: seeds only this initialisation
            self.model = TinyTransformer(config)
        self.eos_id = self.tokenizer.eos_id
        self.pad_id = self.tokenizer.pad_id
        self.max_length = config.max_length

    def encode_chat(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        """See :meth:`CharTokenizer.encode_chat`."""
        return self.tokenizer.encode_chat(messages, add_generation_prompt)

    def decode(self, ids: list[int]) -> str:
        """See :meth:`CharTokenizer.decode`."""
        return self.tokenizer.decode(ids)

    def forward_logits(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Cache = None
    ) -> tuple[Tensor, Cache]:
        """See :meth:`Policy.forward_logits`."""
        return self.model(input_ids, attention_mask, position_ids, cache)

    def config_dict(self) -> dict[str, Any]:
        """The config as a plain dict (for checkpoints)."""
        return asdict(self.config)
