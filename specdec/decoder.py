"""A causal LM bound to its own KV cache: the unit the engine drives (one for the target, one for a draft model).

:class:`Decoder` is the interface; :class:`HFDecoder` is the generic path, which runs any ``transformers`` causal LM
through its own forward with a preallocated :class:`~specdec.kv_cache.KVCache`.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch

from specdec.kv_cache import KVCache
from specdec.loading import LoadedModel


class Decoder(Protocol):
    """A model plus KV cache. ``forward`` appends its tokens at ``cache_length``; ``rollback`` forgets a suffix."""

    name: str
    path: str  # which implementation runs: "generic" (transformers' own modules) or a fast path's name
    device: torch.device
    dtype: torch.dtype
    vocab_size: int  # logits are cut to this width (the vocabulary shared with the other model)
    forwards: int  # forward calls since the last `prepare`

    @property
    def cache_length(self) -> int: ...

    def prepare(self, batch_size: int, max_length: int) -> None:
        """Make the cache ready for a new batch of sequences of up to ``max_length`` tokens, and empty it."""

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Score ``input_ids`` [B, S] at positions ``position_ids`` [B, S] and append them to the cache.

        attention_mask: [B, max_length] with 0 on padding, or None when no row is padded.
        Returns logits [B, S, vocab_size] (float32), or [B, 1, vocab_size] with ``last_only``.
        """
        ...

    def rollback(self, length: int) -> None:
        """Drop cached positions ``>= length`` in O(1)."""


class HFDecoder:
    """The generic path: a ``transformers`` model's own forward over a :class:`KVCache`."""

    path = "generic"

    def __init__(self, loaded: LoadedModel, vocab_size: int | None = None) -> None:
        self.name = loaded.name
        self.model = loaded.model
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.vocab_size = vocab_size or loaded.vocab_size
        self.forwards = 0
        self.cache: KVCache | None = None
        self._takes_logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    @property
    def cache_length(self) -> int:
        return self.cache.length if self.cache is not None else 0

    def prepare(self, batch_size: int, max_length: int) -> None:
        if self.cache is None or not self.cache.fits(batch_size, max_length):
            self.cache = None  # release the old tensors before allocating new ones
            self.cache = KVCache(self.model, batch_size, max_length)
        self.cache.reset()
        self.forwards = 0

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        last_only: bool = False,
    ) -> torch.Tensor:
        assert self.cache is not None, "prepare() must be called before forward()"
        extra = {"logits_to_keep": 1} if last_only and self._takes_logits_to_keep else {}
        output = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            past_key_values=self.cache.hf_cache,
            use_cache=True,
            **extra,
        )
        self.cache.advance(input_ids.shape[1])
        self.forwards += 1
        logits = output.logits  # [B, S or 1, V_model]
        if last_only:
            logits = logits[:, -1:]
        return logits[..., : self.vocab_size].float()

    def rollback(self, length: int) -> None:
        assert self.cache is not None
        self.cache.rollback(length)
