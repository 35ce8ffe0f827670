"""Test helpers: a scripted policy with fixed responses, and a tiny Hugging Face model built from a config."""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

import torch

from rlopt.agents.rema.policy import Generation, TinyConfig, TinyPolicy


class ScriptedPolicy(TinyPolicy):
    """A policy whose response is ``script(prompt)``, with ``prompt`` rendered with its special tokens.

    Responses longer than ``max_new_tokens`` are cut there (not stopped), like a real sampler.
    """

    def __init__(self, script: Callable[[str], str]) -> None:
        super().__init__(TinyConfig(d_model=8, n_layers=1, n_heads=1, d_ff=8, max_length=512))
        self.script = script
        self.seen: list[str] = []

    def render(self, ids: list[int]) -> str:
        return "".join(self.tokenizer.itos[i] for i in ids)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, generator: torch.Generator | None = None, greedy: bool = False) -> Generation:
        tokens, stopped = [], []
        for prompt in prompts:
            rendered = self.render(prompt)
            self.seen.append(rendered)
            ids = [*self.tokenizer.encode(self.script(rendered)), self.eos_id]
            stopped.append(len(ids) <= max_new_tokens)
            tokens.append(ids[:max_new_tokens])
        return Generation(tokens=tokens, logprobs=[torch.zeros(len(t)) for t in tokens], stopped=stopped)


def tiny_hf_model(seed: int = 0, chat_template: bool = True) -> tuple[Any, Any]:
    """A randomly initialised ``LlamaForCausalLM`` and a character tokenizer with a chat template (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
    specials = ["<pad>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>",
                                        unk_token="<unk>", additional_special_tokens=specials[3:])
    if chat_template:
        tokenizer.chat_template = (
            "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% if m['role'] == 'assistant' %}<eos>"
            "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    return model, tokenizer
