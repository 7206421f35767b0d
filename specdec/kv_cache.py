"""A preallocated KV cache whose rollback costs O(1).

Keys and values of every layer live in tensors allocated once for ``(batch, max_length)``: transformers'
``StaticCache``, so the model's own attention reads and writes them for every architecture that ``transformers``
generates with. A forward of ``S`` tokens writes positions ``[length, length + S)`` in place. Rolling back rejected
draft tokens only moves the length pointer back: the stale entries stay where they are, are masked out by the causal
mask (which starts from the pointer) and are overwritten by the next forward. Nothing is copied or allocated,
whatever the number of rejected tokens.
"""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel, StaticCache
from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer

from specdec.errors import UnsupportedModelError


def cache_keyword(model: PreTrainedModel) -> str:
    """``cache`` where ``model.forward`` takes it (transformers >= 5.24 deprecates ``past_key_values``, to be removed
    in 5.40), else ``past_key_values`` (earlier releases)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class KVCache:
    """The KV cache of one model for one batch shape, with an explicit length pointer."""

    def __init__(self, model: PreTrainedModel, batch_size: int, max_length: int) -> None:
        self.batch_size = batch_size
        self.max_length = max_length
        self.hf_cache = StaticCache(config=model.config, max_cache_len=max_length)
        self._length = 0
        self._layers: list[StaticLayer] = []
        for index, layer in enumerate(self.hf_cache.layers):
            if type(layer) is StaticSlidingWindowLayer:
                if layer.max_cache_len < max_length:
                    raise UnsupportedModelError(
                        f"{type(model).__name__} layer {index} uses a sliding window of {layer.max_cache_len} tokens, "
                        f"shorter than the {max_length} tokens this run needs; a sliding window overwrites old "
                        "entries, so rejected tokens could not be rolled back. Ask for fewer tokens (prompt + "
                        f"max_new_tokens <= {layer.max_cache_len})."
                    )
            elif type(layer) is not StaticLayer:
                raise UnsupportedModelError(
                    f"{type(model).__name__} needs a {type(layer).__name__} cache layer, which specdec cannot roll "
                    "back; only attention layers with a static KV cache are supported."
                )
            self._layers.append(layer)

    @property
    def length(self) -> int:
        """Number of positions that hold valid keys and values."""
        return self._length

    @property
    def is_allocated(self) -> bool:
        return all(layer.is_initialized for layer in self._layers)

    def fits(self, batch_size: int, length: int) -> bool:
        return batch_size == self.batch_size and length <= self.max_length

    def advance(self, num_tokens: int) -> None:
        """Record that a forward wrote ``num_tokens`` more positions (the layers moved their own pointers)."""
        self._length += num_tokens

    @torch.inference_mode()
    def rollback(self, length: int) -> None:
        """Forget every position from ``length`` on. O(1): moves the pointers, copies and allocates nothing."""
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot roll back to {length}: the cache holds {self._length} positions")
        for layer in self._layers:
            if isinstance(layer.cumulative_length, torch.Tensor):
                layer.cumulative_length.fill_(length)
            else:
                layer.cumulative_length = length
            if hasattr(layer, "cumulative_length_int"):
                layer.cumulative_length_int = length
        self._length = length

    @torch.inference_mode()
    def keep_path(self, start: int, columns: torch.Tensor) -> None:
        """Move the entries at ``columns`` [n] int64 (increasing, all below ``length``) to columns [start, start + n)
        in every layer: after a tree step, the kept path next to its root. Copies n columns per layer (the source is
        read whole before writing, so overlapping ranges are safe), allocates no cache; roll back after."""
        for layer in self._layers:
            keys, values = layer.keys, layer.values  # [B, Hkv, M, Dh]
            if keys is None or values is None:
                continue
            index = columns.to(keys.device)
            target = torch.arange(start, start + index.shape[0], device=keys.device)
            keys.index_copy_(2, target, keys.index_select(2, index))
            values.index_copy_(2, target, values.index_select(2, index))

    @torch.inference_mode()
    def compact(self, source: torch.Tensor) -> None:
        """Row b's columns [0, n) become its columns ``source[b]`` ([B, n] int64, -1: any column) in every layer,
        and the cache holds n columns. Reads each layer's first columns once into a new tensor and copies it back."""
        index = source.clamp_min(0)
        n = index.shape[1]
        for layer in self._layers:
            keys, values = layer.keys, layer.values  # [B, Hkv, M, Dh]
            if keys is None or values is None:
                continue
            gather = index.to(keys.device)[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
            keys[:, :, :n] = keys.gather(2, gather)
            values[:, :, :n] = values.gather(2, gather)
        self.rollback(min(n, self._length))

    def reset(self) -> None:
        """Empty the cache for a new sequence (same storage)."""
        self.rollback(0)

    def tensors(self) -> list[torch.Tensor]:
        """The key and value tensors of every layer (allocated on the first forward)."""
        pairs = [(layer.keys, layer.values) for layer in self._layers if layer.is_initialized]
        return [t for pair in pairs for t in pair if t is not None]
