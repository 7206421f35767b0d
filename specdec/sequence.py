"""The token state of a batch of sequences being generated: each row's own history, and the cache columns rows share.

Two views of the same tokens:

- **columns** (``tokens``, ``length``, ``key_valid``, ``positions``): what the KV caches hold. Every row writes the
  same cache columns, ``length`` of them so far, the prompt left-padded to one length. A column that is not part
  of a row's sequence is *invalid* in that row (``key_valid`` False: hidden from attention): left padding, and,
  with per-row acceptance, a **hole**, the column of a draft that row rejected while another row accepted it.
  ``positions`` gives each column's position in its row (padding and holes do not count).
- **rows** (``history``, ``lengths``): each row's committed tokens, compacted (no holes): its left-padded prompt,
  then its new tokens, ``lengths[b]`` in all. Outputs, end-of-sequence checks and drafters that search the text
  (``ngram``, ``suffix``) read this view.

In lockstep (every row keeps the same number of tokens per step) there are no holes and the two views hold the same
tokens in the same places. See ``docs/batching.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SequenceBatch:
    """Prompts (left-padded to one length) followed by the tokens committed so far, in preallocated buffers."""

    tokens: torch.Tensor  # [B, C] int64: the token at each cache column (committed in [:, :length])
    attention_mask: torch.Tensor | None  # [B, P + max_new]: 0 on left padding, 1 elsewhere; None if nothing is padded
    pad_lengths: torch.Tensor  # [B] int64: left padding of each row
    prompt_length: int  # padded prompt length P
    length: int  # committed cache columns, shared by all rows (prompt included; holes included)
    history: torch.Tensor  # [B, P + max_new + 1] int64: each row's committed tokens, compacted ([b, :lengths[b]])
    lengths: list[int]  # [B] on the host: committed tokens per row in ``history`` (prompt padding included)
    device_lengths: torch.Tensor  # [B] int64: ``lengths`` on the device (kept in step there: no copy per step)
    key_valid: torch.Tensor  # [B, C] bool: False on left padding and holes
    positions: torch.Tensor  # [B, C] int64: each column's position in its row (beyond ``length``: extrapolated)
    active: list[bool]  # [B] on the host: rows still generating (a finished row's new columns are all holes)
    layout_version: int = 0  # bumped whenever key_valid or positions change below ``length`` (holes, compaction)

    @classmethod
    def from_prompts(
        cls,
        prompts: list[list[int]],
        max_new_tokens: int,
        pad_id: int,
        device: torch.device,
        columns: int | None = None,
    ) -> SequenceBatch:
        """``columns``: cache columns to allocate (default prompt + max_new_tokens; more leave room for holes)."""
        prompt_length = max(len(p) for p in prompts)
        max_length = prompt_length + max_new_tokens
        width = max(columns or max_length, max_length)
        tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        history = torch.full((len(prompts), max_length + 1), pad_id, dtype=torch.long)  # + 1: a write-off column
        pad_lengths = torch.tensor([prompt_length - len(p) for p in prompts], dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens[row, prompt_length - len(prompt) : prompt_length] = torch.tensor(prompt, dtype=torch.long)
            history[row, prompt_length - len(prompt) : prompt_length] = torch.tensor(prompt, dtype=torch.long)
        attention_mask = None
        if bool(pad_lengths.any()):
            attention_mask = (torch.arange(max_length)[None, :] >= pad_lengths[:, None]).long().to(device)
        key_valid = torch.arange(width)[None, :] >= pad_lengths[:, None]  # [B, C]
        positions = (torch.arange(width)[None, :] - pad_lengths[:, None]).clamp(0, max_length - 1)  # [B, C]
        return cls(
            tokens=tokens.to(device),
            attention_mask=attention_mask,
            pad_lengths=pad_lengths.to(device),
            prompt_length=prompt_length,
            length=prompt_length,
            history=history.to(device),
            lengths=[prompt_length] * len(prompts),
            device_lengths=torch.full((len(prompts),), prompt_length, dtype=torch.long, device=device),
            key_valid=key_valid.to(device),
            positions=positions.to(device),
            active=[True] * len(prompts),
        )

    @classmethod
    def slots(
        cls, batch_size: int, prompt_room: int, max_new_tokens: int, pad_id: int, device: torch.device, columns: int
    ) -> SequenceBatch:
        """``batch_size`` empty rows (none active) for requests to join (:meth:`open_columns`): prompts of up to
        ``prompt_room`` tokens, each row left-padded to it in ``history``. One column, hidden in every row, stands
        for the newest token (the cache holds none)."""
        history = torch.full((batch_size, prompt_room + max_new_tokens + 1), pad_id, dtype=torch.long, device=device)
        return cls(
            tokens=torch.full((batch_size, columns), pad_id, dtype=torch.long, device=device),
            attention_mask=None,
            pad_lengths=torch.full((batch_size,), prompt_room, dtype=torch.long, device=device),
            prompt_length=prompt_room,
            length=1,
            history=history,
            lengths=[prompt_room] * batch_size,
            device_lengths=torch.full((batch_size,), prompt_room, dtype=torch.long, device=device),
            key_valid=torch.ones((batch_size, columns), dtype=torch.bool, device=device),  # beyond length: True
            positions=torch.zeros((batch_size, columns), dtype=torch.long, device=device),
            active=[False] * batch_size,
        )

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def max_length(self) -> int:
        """Cache columns allocated (``C``)."""
        return self.tokens.shape[1]

    @property
    def max_row_length(self) -> int:
        """The longest a row's sequence grows (prompt + max_new_tokens): it bounds every position."""
        return self.history.shape[1] - 1

    @property
    def new_counts(self) -> list[int]:
        """New tokens committed per row."""
        return [length - self.prompt_length for length in self.lengths]

    # ------------------------------------------------------------------------------------------------ holes
    def hide(self, start: int, kept: torch.Tensor, shared: int, active: torch.Tensor) -> None:
        """After a step that wrote columns ``[start, start + shared + 1)`` and moved every row's newest token to
        column ``start + shared``: row b keeps its first ``kept[b]`` drafts (columns ``start .. start + kept[b] -
        1``) and the newest token; the columns between are holes. A row that is not ``active`` keeps nothing
        (every column of the step is a hole). Positions from column ``start + shared`` on are extrapolated again
        from each row's newest token.

        kept: [B] int64 (device); active: [B] bool (device).
        """
        offsets = torch.arange(shared + 1, device=kept.device)  # [N + 1]
        hole = ((offsets[None, :] >= kept[:, None]) & (offsets[None, :] < shared)) | ~active[:, None]  # [B, N + 1]
        self.key_valid[:, start : start + shared + 1] &= ~hole
        newest = torch.where(active, start + kept, start - 1)  # [B]: the column whose position the newest token takes
        last = self.positions.gather(1, newest[:, None])  # [B, 1]
        end = start + shared
        ahead = last + torch.arange(self.max_length - end, device=kept.device)[None, :]
        self.positions[:, end:] = ahead.clamp_max(self.max_row_length - 1)  # beyond it only never-kept drafts
        self.layout_version += 1

    def packed_columns(self, length: int, keep: int) -> torch.Tensor:
        """Each row's valid columns among ``[0, length)``, in order and right-aligned in ``keep`` slots, -1 to the
        left of them (the row's new left padding); a row with more than ``keep`` keeps its last ``keep``.
        Returns [B, keep] int64."""
        columns = torch.arange(length, device=self.tokens.device)
        keys = torch.where(self.key_valid[:, :length], columns[None, :], -1)  # [B, length]
        return keys.sort(dim=1).values[:, length - keep :]

    def compact(self, keep: int) -> torch.Tensor:
        """Move each row's valid columns left, right-aligned so that every row's newest token lands in the last
        of ``keep`` columns; holes become left padding. Returns the source columns [B, keep] (-1: padding) for the
        KV caches to do the same (see ``Decoder.compact``)."""
        source = self.packed_columns(self.length, keep)  # [B, keep]
        index = source.clamp_min(0)
        valid = source >= 0
        self.tokens[:, :keep] = self.tokens.gather(1, index)
        self.positions[:, :keep] = torch.where(valid, self.positions.gather(1, index), 0)
        self.key_valid[:, :keep] = valid
        self.key_valid[:, keep:] = True
        last = self.positions[:, keep - 1 : keep]  # [B, 1]
        ahead = last + torch.arange(1, self.max_length - keep + 1, device=source.device)[None, :]
        self.positions[:, keep:] = ahead.clamp_max(self.max_row_length - 1)
        self.length = keep
        self.layout_version += 1
        return source

    # ------------------------------------------------------------------------------------------- joining rows
    def open_columns(self, rows: list[int], prompts: list[list[int]]) -> int:
        """Make room for new requests in free rows before the forward that reads their prompts: ``width`` (the
        longest prompt) new columns at ``[n - 1, n - 1 + width)``, ``n = length``. Row ``rows[i]`` gets
        ``prompts[i]`` right-aligned in them (its positions 0..; every earlier column of the row hidden, its history
        the prompt); in every other row they are holes, and its newest token moves from column ``n - 1`` to
        ``n - 1 + width``, where the new rows' first tokens will go (:meth:`place_first`). Returns ``width``.
        """
        start, width = self.length - 1, max(len(p) for p in prompts)
        device = self.tokens.device
        self.tokens[:, start + width] = self.tokens[:, start]
        newest = self.positions[:, start : start + 1].clone()  # [B, 1]
        self.key_valid[:, start + width] = self.key_valid[:, start]
        self.key_valid[:, start : start + width] = False
        room = self.prompt_length
        for row, prompt in zip(rows, prompts, strict=True):
            ids = torch.tensor(prompt, dtype=torch.long, device=device)
            size = len(prompt)
            first = start + width - size  # the prompt's first column
            self.tokens[row, first : start + width] = ids
            self.key_valid[row, :first] = False
            self.key_valid[row, first:] = True
            self.positions[row, first : start + width] = torch.arange(size, device=device)
            newest[row] = size
            self.history[row, room - size : room] = ids
            self.pad_lengths[row] = room - size
            self.lengths[row] = room
            self.device_lengths[row] = room
        ahead = newest + torch.arange(self.max_length - start - width, device=device)[None, :]
        self.positions[:, start + width :] = ahead.clamp_max(self.max_row_length - 1)
        self.layout_version += 1
        return width

    def place_first(self, rows: list[int], width: int, first: torch.Tensor) -> None:
        """After the forward over the ``width`` columns :meth:`open_columns` opened: the new rows' first tokens
        (``first`` [B], read at ``rows``) take the newest column, and the batch's length takes in the opened
        columns."""
        index = torch.tensor(rows, dtype=torch.long, device=self.tokens.device)
        end, room = self.length - 1 + width, self.prompt_length
        self.tokens[index, end] = first[index]
        self.history[index, room] = first[index]
        self.device_lengths[index] = room + 1
        for row in rows:
            self.lengths[row] = room + 1
        self.length = end + 1
