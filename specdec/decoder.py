"""A causal LM bound to its own KV cache: the unit the engine drives (one for the target, one for a draft model).

:class:`Decoder` is the interface; :class:`HFDecoder` is the generic path, which runs any ``transformers`` causal LM
through its own forward with a preallocated :class:`~specdec.kv_cache.KVCache`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol

import torch

from specdec.kv_cache import KVCache, cache_keyword
from specdec.loading import LoadedModel


class Decoder(Protocol):
    """A model plus KV cache for one batch of left-padded sequences.

    ``forward`` appends its tokens at ``cache_length`` (their positions follow from that and the row's padding);
    ``rollback`` forgets a suffix in O(1).
    """

    name: str
    path: str  # which implementation runs: "generic" (transformers' own modules) or a fast path's name
    device: torch.device
    dtype: torch.dtype
    vocab_size: int  # logits are cut to this width (the vocabulary shared with the other model)
    forwards: int  # forward calls since the last `prepare`

    @property
    def cache_length(self) -> int: ...

    def prepare(self, pad_lengths: torch.Tensor, attention_mask: torch.Tensor | None, max_length: int) -> None:
        """Get ready for a new batch and empty the cache.

        pad_lengths: [B] left padding per row; attention_mask: [B, max_length] (0 on padding) or None if no row is
        padded; max_length: the longest sequence (prompt + new tokens) this batch will reach.
        """

    def forward(self, input_ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Score ``input_ids`` [B, S], appended at ``cache_length``. Returns float32 logits [B, S, vocab_size],
        or [B, 1, vocab_size] for the last position only with ``last_only``."""
        ...

    def greedy_chain(self, input_ids: torch.Tensor, k: int) -> torch.Tensor:
        """Greedy drafting: read ``input_ids`` [B, S], then ``k - 1`` more tokens, each the argmax after the last.
        Returns the ``k`` argmax tokens [B, k]; the cache grows by ``S + k - 1``."""
        ...

    def rollback(self, length: int) -> None:
        """Drop cached positions ``>= length`` in O(1)."""


def greedy_chain_loop(
    forward: Callable[[torch.Tensor, bool], torch.Tensor], input_ids: torch.Tensor, k: int
) -> torch.Tensor:
    """:meth:`Decoder.greedy_chain` as a loop over ``forward(input_ids, last_only)``. Returns [B, k]."""
    token = forward(input_ids, True)[:, -1].argmax(dim=-1)  # [B]
    tokens = [token]
    for _ in range(k - 1):
        token = forward(token[:, None], True)[:, -1].argmax(dim=-1)
        tokens.append(token)
    return torch.stack(tokens, dim=1)


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
        self.pad_lengths = torch.zeros(1, dtype=torch.long)
        self.attention_mask: torch.Tensor | None = None
        self._takes_logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._cache_keyword = cache_keyword(self.model)

    @property
    def cache_length(self) -> int:
        return self.cache.length if self.cache is not None else 0

    def prepare(self, pad_lengths: torch.Tensor, attention_mask: torch.Tensor | None, max_length: int) -> None:
        batch_size = pad_lengths.shape[0]
        if self.cache is None or not self.cache.fits(batch_size, max_length):
            self.cache = None  # release the old tensors before allocating new ones
            self.cache = KVCache(self.model, batch_size, max_length)
        self.cache.reset()
        self.pad_lengths = pad_lengths
        self.attention_mask = attention_mask
        self.forwards = 0

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        assert self.cache is not None, "prepare() must be called before forward()"
        start = self.cache.length
        columns = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        position_ids = (columns[None, :] - self.pad_lengths[:, None]).clamp_min(0)  # [B, S]
        extra = {"logits_to_keep": 1} if last_only and self._takes_logits_to_keep else {}
        output = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=self.attention_mask,
            use_cache=True,
            **{self._cache_keyword: self.cache.hf_cache},
            **extra,
        )
        self.cache.advance(input_ids.shape[1])
        self.forwards += 1
        logits = output.logits  # [B, S or 1, V_model]
        if last_only:
            logits = logits[:, -1:]
        return logits[..., : self.vocab_size].float()

    def greedy_chain(self, input_ids: torch.Tensor, k: int) -> torch.Tensor:
        return greedy_chain_loop(self.forward, input_ids, k)

    def rollback(self, length: int) -> None:
        assert self.cache is not None
        self.cache.rollback(length)
