"""The key/value cache of a one-layer draft head: preallocated buffers and a length pointer.

Rollback is O(1): :meth:`HeadCache.truncate` moves the pointer back. A drafter appends the committed positions
(with the target's real features), then appends drafted nodes depth by depth (a chain, or the nodes of a tree with
a tree mask), and truncates back to the committed length once the target has verified them.
"""

from __future__ import annotations

import torch

from specdec.heads.layer import KeyValues


class HeadCache:
    def __init__(
        self, batch: int, kv_heads: int, head_dim: int, capacity: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.keys = torch.zeros(batch, kv_heads, capacity, head_dim, device=device, dtype=dtype)  # [B, H_kv, C, hd]
        self.values = torch.zeros_like(self.keys)
        self.length = 0

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[2])

    def past(self) -> KeyValues | None:
        """The cached entries [B, H_kv, length, hd] (views), or None when empty."""
        if self.length == 0:
            return None
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def append(self, kv: KeyValues) -> None:
        """Store new entries ([B, H_kv, S, hd] each) after the current ones."""
        s = kv[0].shape[2]
        if self.length + s > self.capacity:
            raise ValueError(f"head cache full: {self.length} + {s} entries > capacity {self.capacity}")
        self.keys[:, :, self.length : self.length + s] = kv[0]
        self.values[:, :, self.length : self.length + s] = kv[1]
        self.length += s

    def truncate(self, length: int) -> None:
        """Forget every entry from ``length`` on (O(1))."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a head cache of {self.length} entries to {length}")
        self.length = length
