"""The key/value cache of a one-layer draft head: preallocated buffers written at explicit columns.

A head forward writes its new entries at the columns it is given (:meth:`HeadCache.at`) and attends over the whole
buffer through a mask, so every forward over the cache has one shape whatever the cache holds: the drafting loop can
be captured in a CUDA graph. Rollback costs nothing: columns past the committed ones are masked out until a later
forward overwrites them.
"""

from __future__ import annotations

import torch

from specdec.heads.layer import CacheWrite


class HeadCache:
    def __init__(
        self, batch: int, kv_heads: int, head_dim: int, capacity: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.keys = torch.zeros(batch, kv_heads, capacity, head_dim, device=device, dtype=dtype)  # [B, H_kv, C, hd]
        self.values = torch.zeros_like(self.keys)

    @property
    def batch_size(self) -> int:
        return int(self.keys.shape[0])

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[2])

    def at(self, columns: torch.Tensor) -> CacheWrite:
        """Where a forward's S new entries go: ``columns`` [S] int64, on the cache's device."""
        return CacheWrite(self.keys, self.values, columns)
