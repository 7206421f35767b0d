"""EAGLE drafting: the head continues the target's features, token by token, as a chain or a dynamic tree.

Entry ``t`` of the head's cache reads ``(f_t, x_{t+1})``. With committed tokens ``x_0..x_{n-1}`` and the target's
features up to ``f_{n-2}`` (the newest token is the target's own, its feature comes with the next step), the head
feeds the entries not yet in its cache; the last one's output scores ``x_n`` (depth 1). Deeper nodes read their
parent's output in place of a target feature, at rotary position ``n - 2 + depth``.

- ``tree="chain"``: ``min(k, depth)`` tokens, each the head's top choice (greedy) or a sample from its
  distribution (then the proposal carries those distributions).
- ``tree="dynamic"`` (EAGLE-2): the root's ``top_k`` children; at each further depth the ``top_k`` frontier nodes
  of highest cumulative draft log-probability are expanded (one head forward per depth, tree attention over their
  ancestors), each into its ``top_k`` children, down to depth ``min(k, depth)``; the ``budget`` best candidates form
  the tree. Rows share one shape in rank space (scores averaged over rows). Tree tokens are chosen, not sampled: no
  probabilities (deterministic drafts of distinct siblings, lossless at any temperature).

The head's cache is rolled back to the committed entries (O(1)) before every proposal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.config import GenerationConfig
from specdec.drafters.base import DraftProposal, empty_proposal
from specdec.drafters.features import FeatureBuffer, FeatureRequest
from specdec.drafters.medusa import proposal
from specdec.drafters.tree import expand_top, select_nodes
from specdec.errors import ConfigError
from specdec.heads.cache import HeadCache
from specdec.heads.checkpoints import load_heads
from specdec.heads.eagle import Eagle3Head, EagleHead
from specdec.loading import LoadedModel
from specdec.sampling import logits_to_probs, sample
from specdec.sequence import SequenceBatch


@dataclass(frozen=True)
class EagleOptions:
    heads: str = "zoo:tiny-code-eagle"  # a zoo name or a folder in EAGLE's layout (EAGLE-1/2 or EAGLE-3)
    tree: str = "dynamic"  # "dynamic" (EAGLE-2) or "chain"
    depth: int = 4  # drafting depth
    top_k: int = 4  # children per expanded node, and nodes expanded per depth
    budget: int = 16  # drafted nodes per step (the engine's K caps the depth)

    def __post_init__(self) -> None:
        if self.tree not in ("dynamic", "chain"):
            raise ConfigError(f"eagle option tree must be dynamic or chain, got {self.tree!r}")
        if min(self.depth, self.top_k, self.budget) < 1:
            raise ConfigError("eagle options depth, top_k and budget must be >= 1")


class EagleDrafter:
    method = "eagle"

    def __init__(self, options: EagleOptions, target: LoadedModel) -> None:
        head = load_heads(options.heads, target)
        if not isinstance(head, EagleHead | Eagle3Head):
            raise ConfigError(f"{options.heads!r} holds {type(head).__name__}, not an EAGLE head")
        self.head = head
        self.options = options
        self.name = f"eagle({options.heads}, {options.tree})"
        self.features = FeatureRequest(layers=head.config.feature_layers)
        self.buffer = FeatureBuffer()
        self.cache: HeadCache | None = None
        self.fed = 0  # committed entries in the head's cache
        self.root_hidden: torch.Tensor | None = None  # [B, 1, D] output of the last committed entry
        self.pad: torch.Tensor | None = None  # [B] left padding
        self._forwards = 0
        self._max_length = 0

    @property
    def forwards(self) -> int:
        return self._forwards

    def max_width(self, k: int) -> int:
        """Nodes a proposal at K = ``k`` holds at most: a chain's ``min(k, depth)``, a tree's ``budget``."""
        return min(k, self.options.depth) if self.options.tree == "chain" else self.options.budget

    def start(self, batch: SequenceBatch) -> None:
        shape = self.head.config.layer
        spare = self.options.depth * self.options.top_k + self.options.depth + 1  # drafted entries per step
        weight = self.head.fc.weight
        self.cache = HeadCache(
            batch.batch_size, shape.num_kv_heads, shape.head_dim, batch.max_length + spare, weight.device, weight.dtype
        )
        self.buffer.reset()
        self.fed, self.root_hidden, self.pad = 0, None, batch.pad_lengths
        self._max_length = batch.max_length

    def read_features(self, features: torch.Tensor, length: int) -> None:
        start = self.buffer.read(features, length, self._max_length)
        if start < self.fed:  # entries from ``start`` on are recomputed from the features just read
            self.fed = start

    def _key_mask(self, queries: int, extra: torch.Tensor | None) -> torch.Tensor:
        """[B, S, fed + extra] bool: committed entries (not left padding), then ``extra`` [S, E] for drafted ones."""
        assert self.pad is not None
        keys = torch.arange(self.fed, device=self.pad.device)
        committed = (keys[None, :] >= self.pad[:, None])[:, None, :].expand(-1, queries, -1)  # [B, S, fed]
        if extra is None:
            return committed
        return torch.cat([committed, extra[None].expand(committed.shape[0], -1, -1)], dim=-1)

    def _positions(self, entries: torch.Tensor) -> torch.Tensor:
        """Entry indices [S] -> rotary positions [B, S] (left padding does not count)."""
        assert self.pad is not None
        return (entries[None, :] - self.pad[:, None]).clamp(min=0)

    def _feed(self, batch: SequenceBatch) -> bool:
        """Put every complete committed entry into the cache; False when the features do not reach the root."""
        assert self.cache is not None and self.buffer.features is not None
        end = batch.length - 1  # entries 0..end-1 read (f_t, x_{t+1}) with x_{t+1} committed
        if self.buffer.known < end or end < 1:
            return False
        self.cache.truncate(min(self.fed, self.cache.length))
        if self.fed < end:
            entries = torch.arange(self.fed, end, device=batch.tokens.device)  # [S]
            s = entries.numel()
            causal = torch.ones(s, s, dtype=torch.bool, device=entries.device).tril()
            pad_ok = (entries[None, :] >= self.pad[:, None])[:, None, :] | torch.eye(s, dtype=torch.bool)  # type: ignore[index]
            mask = self._key_mask(s, None)
            mask = torch.cat([mask, causal[None] & pad_ok], dim=-1)  # [B, S, fed + S]
            out, kv = self.head(
                batch.tokens[:, self.fed + 1 : end + 1],
                self.buffer.features[:, self.fed : end],
                self._positions(entries),
                self.cache.past(),
                mask,
            )
            self._forwards += 1
            self.cache.append(kv)
            self.fed = end
            self.root_hidden = out[:, -1:]
        return self.root_hidden is not None

    @torch.no_grad()
    def propose(
        self, batch: SequenceBatch, k: int, generation: GenerationConfig, generator: torch.Generator | None
    ) -> DraftProposal:
        if k <= 0 or self.cache is None or self.buffer.features is None or not self._feed(batch):
            return empty_proposal(batch)
        if self.options.tree == "chain":
            return self._chain(min(k, self.options.depth), generation, generator)
        return self._tree(min(k, self.options.depth), self.options.budget)

    def _step(self, tokens: torch.Tensor, hidden: torch.Tensor, depths: torch.Tensor, extra: torch.Tensor):
        """One head forward over drafted nodes: tokens [B, S], their parents' outputs [B, S, D], depths [S] (1 for
        the root's children), extra [S, E] mask over drafted entries already cached (then themselves)."""
        assert self.cache is not None
        entries = self.fed - 1 + depths  # [S] entry index = root entry + depth
        out, kv = self.head(
            tokens, hidden, self._positions(entries), self.cache.past(), self._key_mask(len(depths), extra)
        )
        self.cache.append(kv)
        self._forwards += 1
        return out  # [B, S, D]

    def _chain(self, width: int, generation: GenerationConfig, generator: torch.Generator | None) -> DraftProposal:
        assert self.root_hidden is not None
        device = self.root_hidden.device
        hidden, tokens, probs = self.root_hidden, [], []
        for depth in range(1, width + 1):
            logits = self.head.logits(hidden[:, -1]).float()  # [B, V]
            if generation.greedy:
                token = logits.argmax(-1)
            else:
                q = logits_to_probs(logits, generation)
                token = sample(q, generator)
                probs.append(q)
            tokens.append(token)
            if depth < width:
                extra = torch.ones(1, depth, dtype=torch.bool, device=device)  # every earlier chain node, and itself
                hidden = self._step(token[:, None], hidden[:, -1:], torch.tensor([depth], device=device), extra)
        stacked = torch.stack(tokens, dim=1)  # [B, W]
        return proposal(stacked, torch.stack(probs, dim=1) if probs else None, None)

    def _tree(self, max_depth: int, budget: int) -> DraftProposal:
        assert self.root_hidden is not None
        opts, device = self.options, self.root_hidden.device
        logp = torch.log_softmax(self.head.logits(self.root_hidden[:, -1]).float(), -1)  # [B, V]
        top = logp.topk(opts.top_k, dim=-1)  # [B, k]
        tokens, scores = [top.indices], [top.values]  # per candidate: [B, n]
        parents = [-1] * opts.top_k
        depth_of = [1] * opts.top_k
        slot: dict[int, int] = {}  # candidate -> its drafted entry in the cache (once expanded)
        hidden_of: dict[int, torch.Tensor] = {}  # candidate -> its output [B, D]
        frontier = list(range(opts.top_k))
        for depth in range(2, max_depth + 1):
            all_scores = torch.cat(scores, dim=1)  # [B, N]
            chosen = [frontier[i] for i in expand_top(all_scores[:, frontier].mean(0), opts.top_k).tolist()]
            all_tokens = torch.cat(tokens, dim=1)
            inputs = torch.stack(
                [self.root_hidden[:, -1] if parents[c] < 0 else hidden_of[parents[c]] for c in chosen], dim=1
            )  # [B, S, D]
            drafted = len(slot)
            extra = torch.zeros(len(chosen), drafted + len(chosen), dtype=torch.bool, device=device)
            for row, c in enumerate(chosen):
                node = parents[c]
                while node >= 0:  # the ancestors' entries
                    extra[row, slot[node]] = True
                    node = parents[node]
                extra[row, drafted + row] = True
            out = self._step(
                all_tokens[:, chosen], inputs, torch.tensor([depth - 1] * len(chosen), device=device), extra
            )
            frontier = []
            children = torch.log_softmax(self.head.logits(out).float(), -1).topk(opts.top_k, dim=-1)  # [B, S, k]
            for row, c in enumerate(chosen):
                slot[c] = drafted + row
                hidden_of[c] = out[:, row]
                tokens.append(children.indices[:, row])
                scores.append(all_scores[:, c : c + 1] + children.values[:, row])
                first = len(parents)
                parents += [c] * opts.top_k
                depth_of += [depth] * opts.top_k
                frontier += range(first, first + opts.top_k)
        kept, new_parents = select_nodes(torch.cat(scores, dim=1).mean(0), torch.tensor(parents), budget)
        return proposal(torch.cat(tokens, dim=1)[:, kept.to(device)], None, new_parents)

    def observe(self, batch: SequenceBatch, num_accepted: int) -> None:
        """Nothing here: the next proposal rolls the cache back to the committed entries and reads new features."""
