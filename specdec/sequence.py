"""The token state of a batch of sequences being generated."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SequenceBatch:
    """Prompts (left-padded to one length) followed by the tokens committed so far, in preallocated buffers.

    Every row has the same ``length``: padding counts as a position in the buffers but not in a row's positions.
    """

    tokens: torch.Tensor  # [B, max_length] int64: committed tokens in [:, :length]
    attention_mask: torch.Tensor | None  # [B, max_length]: 0 on left padding, 1 elsewhere; None if nothing is padded
    pad_lengths: torch.Tensor  # [B] int64: left padding of each row
    prompt_length: int  # padded prompt length
    length: int  # committed positions (prompt included)

    @classmethod
    def from_prompts(
        cls, prompts: list[list[int]], max_new_tokens: int, pad_id: int, device: torch.device
    ) -> SequenceBatch:
        prompt_length = max(len(p) for p in prompts)
        max_length = prompt_length + max_new_tokens
        tokens = torch.full((len(prompts), max_length), pad_id, dtype=torch.long)
        pad_lengths = torch.tensor([prompt_length - len(p) for p in prompts], dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens[row, prompt_length - len(prompt) : prompt_length] = torch.tensor(prompt, dtype=torch.long)
        attention_mask = None
        if bool(pad_lengths.any()):
            attention_mask = (torch.arange(max_length)[None, :] >= pad_lengths[:, None]).long().to(device)
        return cls(
            tokens=tokens.to(device),
            attention_mask=attention_mask,
            pad_lengths=pad_lengths.to(device),
            prompt_length=prompt_length,
            length=prompt_length,
        )

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def max_length(self) -> int:
        return self.tokens.shape[1]

    @property
    def new_tokens(self) -> int:
        return self.length - self.prompt_length
