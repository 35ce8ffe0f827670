"""A :class:`rlopt.agents.rema.policy.Policy` over any Hugging Face ``transformers`` causal LM with a chat template.

Needs the optional extra ``hf`` (``pip install "torch-rlopt[hf]"``); ``transformers`` is imported lazily, so the
rest of ReMA works without it.

Generation runs the model's own forward with its KV cache in the shared sampling loop
of :meth:`Policy.generate`, with left-padded prompts and explicit ``position_ids`` so each token has the
position it has in an unpadded forward; log-probs are one forward over the right-padded sequence.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from rlopt.agents.rema.policy import Cache, Message, Policy

__all__ = ["HFPolicy", "require_transformers"]


def require_transformers() -> Any:
    """The ``transformers`` module, or an ``ImportError`` telling how to install it."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError("The Hugging Face adapter needs transformers: pip install 'torch-rlopt[hf]' "
                          "(or pip install transformers)") from error
    return transformers


class HFPolicy(Policy):
    """A causal LM and its tokenizer as a ReMA policy.

    Args:
        model: a ``transformers`` causal LM (``AutoModelForCausalLM``), or a name/path for ``from_pretrained``.
        tokenizer: its tokenizer (with a chat template), or ``None`` to load it from the same name/path.
        max_length: context length; default ``model.config.max_position_embeddings``.

    Raises:
        ValueError: if the tokenizer has no chat template, or has neither a pad nor an EOS token.

    Example:
        >>> from rlopt.agents.rema.hf import HFPolicy  # doctest: +SKIP
        >>> policy = HFPolicy("Qwen/Qwen2.5-0.5B-Instruct")  # doctest: +SKIP
    """

    def __init__(self, model: Any, tokenizer: Any = None, max_length: int | None = None) -> None:
        super().__init__()
        transformers = require_transformers()
        if isinstance(model, str):
            name = model
            model = transformers.AutoModelForCausalLM.from_pretrained(name)
            tokenizer = tokenizer or transformers.AutoTokenizer.from_pretrained(name)
        if not isinstance(model, nn.Module):
            raise TypeError(f"Invalid model: expected a transformers causal LM, got {type(model).__name__}")
        if tokenizer is None:
            raise ValueError("Invalid tokenizer: None, expected the model's tokenizer")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("Invalid tokenizer: it has no chat template (tokenizer.chat_template is empty); ReMA "
                             "renders each agent's chat with it. Set tokenizer.chat_template to a Jinja template.")
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        if eos is None or pad is None:
            raise ValueError("Invalid tokenizer: it needs an EOS token (eos_token_id is None)")
        self.model = model
        self.tokenizer = tokenizer
        self.eos_id = int(eos)
        self.pad_id = int(pad)
        # transformers 5.x names the KV cache argument and output field ``cache`` (``past_key_values`` warns);
        # 4.x knows only ``past_key_values``
        self._cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        context: Any = max_length or getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_length = int(context)

    def encode_chat(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        """Ids of ``tokenizer.apply_chat_template(messages)`` (rendered to text, then tokenized without
        extra special tokens, so the template alone decides them)."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` without special tokens."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def forward_logits(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Cache = None
    ) -> tuple[Tensor, Cache]:
        """See :meth:`Policy.forward_logits` (the model's forward with ``use_cache=True``)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{self._cache_name: cache})
        return out.logits, out[self._cache_name]
