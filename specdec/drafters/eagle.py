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

The head's cache (:class:`specdec.heads.cache.HeadCache`) is preallocated and written at explicit columns: the
committed entries in columns ``0..fed-1``, a step's drafted nodes after them (chain node at depth ``d`` in column
``fed - 1 + d``, tree nodes in the order they are expanded). Every forward attends over the whole cache through a
mask, so rolling back costs nothing (drafted columns are masked out, then overwritten) and the forwards of a chain
have fixed shapes: on a CUDA GPU, feeding the committed entries (one graph per number of new entries) and the
greedy chain (one graph per width) replay CUDA graphs (:mod:`specdec.fast.graphs`), with the committed length on
the device. Sampled chains and dynamic trees run the same forwards eagerly (a tree's shape depends on its scores).

**Drafting ahead** (greedy chains, :meth:`EagleDrafter.draft_ahead`): the generation calls it after a verification
and before it reads the verdict on the host. The head then feeds all ``W + 1`` verified positions at once (their
tokens and the target's features are on the device already), takes as the root the output at the accepted count
(a device value) and drafts the next chain, so the GPU drafts while the host waits for and books the verdict. Entries
past the accepted ones are written too and are overwritten before anything reads them (the next chain writes its
nodes from the new root on, and the next feed starts there). The next :meth:`propose` returns that chain.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from specdec.config import GenerationConfig
from specdec.drafters.base import DraftProposal, empty_proposal
from specdec.drafters.features import FeatureBuffer, FeatureRequest
from specdec.drafters.medusa import proposal
from specdec.drafters.tree import best_subtree
from specdec.errors import ConfigError
from specdec.fast.graphs import CapturedGraphs, Outputs
from specdec.heads.cache import HeadCache
from specdec.heads.checkpoints import load_heads
from specdec.heads.eagle import Eagle3Head, EagleHead
from specdec.heads.fused import FusedEagle
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


@dataclass(frozen=True)
class _TreeShape:
    """What a dynamic tree's shape fixes in advance (see ``EagleDrafter._tree_run``): for ``max_depth`` and k."""

    first: tuple[int, ...]  # [d]: the first candidate of depth d (index 0 unused)
    depths: torch.Tensor  # [N] int64: each candidate's depth
    depth1_parents: torch.Tensor  # [k] int64: -1 (children of the root)
    first_chosen: torch.Tensor  # [k] int64: the nodes expanded at depth 2 (all of depth 1)
    slots: torch.Tensor  # [slots] int64: 0..slots-1
    slot_of: torch.Tensor  # [max_depth - 1, k, slots] bool: one-hot of each expanded node's own slot
    repeat: torch.Tensor  # [k k] int64: i // k, each child's parent among the k expanded nodes


@functools.cache
def _tree_shape(max_depth: int, k: int, device: torch.device) -> _TreeShape:
    first = (0, 0, *(k + (d - 2) * k * k for d in range(2, max_depth + 1)))
    count = k + (max_depth - 1) * k * k
    depths = torch.ones(count, dtype=torch.long)
    for d in range(2, max_depth + 1):
        depths[first[d] : first[d] + k * k] = d
    slots = max(max_depth - 1, 1) * k
    slot_of = torch.eye(slots, dtype=torch.bool).view(max(max_depth - 1, 1), k, slots)
    return _TreeShape(
        first=first,
        depths=depths.to(device),
        depth1_parents=torch.full((k,), -1, dtype=torch.long, device=device),
        first_chosen=torch.arange(k, device=device),
        slots=torch.arange(slots, device=device),
        slot_of=slot_of.to(device),
        repeat=torch.arange(k, device=device).repeat_interleave(k),
    )


class EagleDrafter:
    method = "eagle"

    def __init__(self, options: EagleOptions, target: LoadedModel) -> None:
        head = load_heads(options.heads, target)
        if not isinstance(head, EagleHead | Eagle3Head):
            raise ConfigError(f"{options.heads!r} holds {type(head).__name__}, not an EAGLE head")
        self.head = head
        self.fused = FusedEagle(head)  # drafting's forward (the head's modules are for training)
        self.options = options
        self.name = f"eagle({options.heads}, {options.tree})"
        self.features = FeatureRequest(layers=head.config.feature_layers)
        self.buffer = FeatureBuffer()
        self.cache: HeadCache | None = None
        self.fed = 0  # committed entries in the head's cache
        self.has_root = False  # whether the root's output (the last committed entry's) is known
        self._forwards = 0
        self._max_length = 0
        weight = head.fc.weight
        self._graphs = CapturedGraphs(weight.device, enabled=True)
        # fixed buffers the graphs read (allocated with the cache, see `start`)
        self._fed_at = torch.zeros((), dtype=torch.long, device=weight.device)  # [] fed, on the device
        self._root = torch.zeros(0, device=weight.device, dtype=weight.dtype)  # [B, 1, D] the root's output
        self._pad = torch.zeros(0, dtype=torch.long, device=weight.device)  # [B] left padding
        self._columns = torch.zeros(0, dtype=torch.long, device=weight.device)  # [C] 0..C-1
        self._ahead: tuple[int, torch.Tensor] | None = None  # (batch length it follows, chain [B, W]): draft_ahead's
        # whether to draft ahead: where the GPU's drafting overlaps the host's reading of the verdict (on a CPU the
        # ahead feed's extra entries are only extra work; tests turn it on there to check it)
        self.ahead = weight.device.type == "cuda"

    @property
    def forwards(self) -> int:
        return self._forwards

    def max_width(self, k: int) -> int:
        """Nodes a proposal at K = ``k`` holds at most: a chain's ``min(k, depth)``, a tree's ``budget``."""
        return min(k, self.options.depth) if self.options.tree == "chain" else self.options.budget

    def start(self, batch: SequenceBatch) -> None:
        opts = self.options
        spare = opts.depth * opts.top_k + opts.depth + 1  # drafted entries per step
        needed = batch.max_length + spare
        cache = self.cache
        if cache is None or cache.batch_size != batch.batch_size or cache.capacity < needed:
            # a longer run of the same batch size doubles the capacity, so that a few growths cover any run
            same_batch = cache is not None and cache.batch_size == batch.batch_size
            capacity = max(needed, 2 * cache.capacity) if same_batch and cache is not None else needed
            shape, weight = self.head.config.layer, self.head.fc.weight
            self.cache = HeadCache(
                batch.batch_size, shape.num_kv_heads, shape.head_dim, capacity, weight.device, weight.dtype
            )
            self._graphs.clear()  # they hold the old buffers' addresses
            self._root = weight.new_zeros(batch.batch_size, 1, shape.hidden_size)
            self._pad = torch.zeros(batch.batch_size, dtype=torch.long, device=weight.device)
            self._columns = torch.arange(capacity, device=weight.device)
            self.fused.position_tables(capacity)  # rotary positions stay below the cache's columns
        self._pad.copy_(batch.pad_lengths)
        self.buffer.reset()
        self.fed, self.has_root = 0, False
        self._ahead = None
        self._max_length = batch.max_length

    def read_features(self, features: torch.Tensor, length: int) -> None:
        start = self.buffer.read(features, length, self._max_length)
        if start < self.fed:  # entries from ``start`` on are recomputed from the features just read
            self.fed = start

    def _visible(self, columns: torch.Tensor) -> torch.Tensor:
        """[B, S, C] bool for queries at ``columns`` [S] of a chain: every column up to their own, left padding
        excluded (a padding query sees itself, so that no row of the mask is empty)."""
        keys = self._columns[None, None, :]  # [1, 1, C]
        own = keys == columns[None, :, None]  # [1, S, C]
        return ((keys >= self._pad[:, None, None]) & (keys <= columns[None, :, None])) | own

    def _run(
        self,
        tokens: torch.Tensor,
        hidden: torch.Tensor,
        columns: torch.Tensor,
        entries: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """One head forward: tokens [B, S] with their input features or parents' outputs [B, S, *], written at cache
        ``columns`` [S], at entries [S] (rotary position = entry - left padding), attending through ``mask``
        [B, S, C] -> outputs [B, S, D]."""
        assert self.cache is not None
        positions = (entries[None, :] - self._pad[:, None]).clamp_min(0)  # [B, S]
        return self.fused.forward(tokens, hidden, positions, mask, self.cache, columns)

    def _feed_run(self, tokens: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Device work only: the entries ``fed..fed+S-1`` from tokens [B, S] and the target's features [B, S, F];
        their last output becomes the root's, and ``fed`` (on the device) moves past them."""
        columns = self._fed_at + self._columns[: tokens.shape[1]]  # [S]
        out = self._run(tokens, features, columns, columns, self._visible(columns))
        self._root.copy_(out[:, -1:])
        self._fed_at.add_(tokens.shape[1])
        return ()

    def _feed(self, batch: SequenceBatch) -> bool:
        """Put every complete committed entry into the cache; False when the features do not reach the root."""
        assert self.buffer.features is not None
        end = batch.length - 1  # entries 0..end-1 read (f_t, x_{t+1}) with x_{t+1} committed
        if self.buffer.known < end or end < 1:
            return False
        self._fed_at.fill_(self.fed)
        new = end - self.fed
        if new > 0:
            tokens = batch.tokens[:, self.fed + 1 : end + 1]  # [B, S]
            features = self.buffer.features[:, self.fed : end]  # [B, S, F]
            self._graphs.run(("feed", new), (tokens, features), self._feed_run)
            self._forwards += 1
            self.fed, self.has_root = end, True
        return self.has_root

    @torch.no_grad()
    def draft_ahead(
        self,
        batch: SequenceBatch,
        length: int,
        accepted: torch.Tensor,
        features: torch.Tensor | None,
        k: int,
        generation: GenerationConfig,
        generator: torch.Generator | None = None,
    ) -> bool:
        """Feed this step's verified positions and draft the next chain before the verdict is read (see the module
        docstring); False where it does not apply (trees, sampling, a head not fed up to this step, the batch's
        end). ``length``: the batch's length when the step began; accepted: [] the drafts every row keeps (device);
        features: [B, W + 1, F] the verification's; ``k``: the next step's K. Greedy chains draw no noise, so
        ``generator`` is not used."""
        self._ahead = None
        if features is None:
            return False
        width_in = features.shape[1]  # W + 1: the verified positions
        if (
            not self.ahead
            or self.options.tree != "chain"
            or not generation.greedy
            or self.cache is None
            or not self.has_root
            or self.fed != length - 1
            or length + width_in > batch.tokens.shape[1]
        ):
            return False
        tokens = batch.tokens[:, length : length + width_in]  # [B, W + 1]: kept drafts, the next token, stale drafts
        self._graphs.run(("feed-ahead", width_in), (tokens, features, accepted.reshape(1)), self._feed_ahead_run)
        width = min(k, self.options.depth)
        (chain,) = self._graphs.run(("chain", width), (), lambda: (self._chain_run(width, None, None),))
        assert chain is not None
        self._ahead = (length, chain.clone())
        self._forwards += width
        return True

    def _feed_ahead_run(self, tokens: torch.Tensor, features: torch.Tensor, accepted: torch.Tensor) -> Outputs:
        """Device work only: entries ``fed..fed+S-1`` from tokens [B, S] and features [B, S, F]; the root is the
        output at ``accepted`` [1] (the last kept entry's), and ``fed`` (on the device) moves past the kept ones."""
        columns = self._fed_at + self._columns[: tokens.shape[1]]  # [S]
        out = self._run(tokens, features, columns, columns, self._visible(columns))  # [B, S, D]
        self._root.copy_(out.index_select(1, accepted))
        self._fed_at.add_(accepted[0] + 1)
        return ()

    def _take_ahead(self, batch: SequenceBatch, k: int) -> DraftProposal | None:
        """The chain :meth:`draft_ahead` drafted for this step, cut to ``k`` (a prefix of a greedy chain is the
        shorter chain), or None when there is none for this step."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] != self.fed + 1 or self.buffer.known < batch.length - 1:
            return None
        self.fed, self.has_root = batch.length - 1, True  # the ahead feed covered every kept entry
        return proposal(ahead[1][:, : min(k, ahead[1].shape[1])], None, None)

    @torch.no_grad()
    def propose(
        self, batch: SequenceBatch, k: int, generation: GenerationConfig, generator: torch.Generator | None
    ) -> DraftProposal:
        if k > 0 and self._ahead is not None:
            drafted = self._take_ahead(batch, k)
            if drafted is not None:
                return drafted
        if k <= 0 or self.cache is None or self.buffer.features is None or not self._feed(batch):
            return empty_proposal(batch)
        if self.options.tree == "dynamic":
            return self._tree(min(k, self.options.depth), self.options.budget)
        width = min(k, self.options.depth)
        self._forwards += width - 1
        if generation.greedy:
            (tokens,) = self._graphs.run(("chain", width), (), lambda: (self._chain_run(width, None, None),))
            assert tokens is not None
            return proposal(tokens, None, None)
        probs: list[torch.Tensor] = []
        tokens = self._chain_run(width, lambda logits: self._sample(logits, generation, generator, probs), probs)
        return proposal(tokens, torch.stack(probs, dim=1), None)

    @staticmethod
    def _sample(
        logits: torch.Tensor, generation: GenerationConfig, generator: torch.Generator | None, probs: list[torch.Tensor]
    ) -> torch.Tensor:
        q = logits_to_probs(logits, generation)  # [B, V]
        probs.append(q)
        return sample(q, generator)

    def _chain_run(
        self,
        width: int,
        pick: Callable[[torch.Tensor], torch.Tensor] | None,
        probs: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        """The chain of ``width`` tokens from the root ([B, W]): each the head's top choice (``pick`` None, device
        work only) or ``pick(logits)``; node at depth d is written at column ``fed - 1 + d``."""
        hidden, tokens = self._root, []
        for depth in range(1, width + 1):
            logits = self.head.logits(hidden[:, -1]).float()  # [B, V]
            token = logits.argmax(-1) if pick is None else pick(logits)  # [B]
            tokens.append(token)
            if depth < width:
                column = (self._fed_at + (depth - 1)).view(1)  # [1]
                hidden = self._run(token[:, None], hidden, column, column, self._visible(column))
        return torch.stack(tokens, dim=1)

    def _tree(self, max_depth: int, budget: int) -> DraftProposal:
        self._forwards += max_depth - 1
        tokens, parents = self._graphs.run(
            ("tree", max_depth, budget), (), lambda: self._tree_run(max_depth, budget)
        )  # fmt: skip
        assert tokens is not None and parents is not None
        return proposal(tokens, None, parents)  # the parents' copy to the host is the step's one sync

    def _tree_run(self, max_depth: int, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        """EAGLE-2's dynamic tree as device work only (fixed shapes, so that it can be captured): the root's top k
        children; at each further depth the k frontier nodes of highest cumulative log-probability (mean over rows)
        are expanded in one head forward, each into its top k children; the ``budget`` best candidates form the
        tree. Candidates are numbered depth by depth (k at depth 1, then k x k per depth, children of one expanded
        node together); the node expanded at depth d + 1 in place ``i`` of its depth holds cache column
        ``fed + d k + i`` (its "slot"). -> tokens [B, W], parents [W] (re-indexed into the kept nodes)."""
        k, root = self.options.top_k, self._root  # root [B, 1, D]
        shape = _tree_shape(max_depth, k, root.device)
        logp = self.fused.log_probs(root[:, 0]).topk(k, dim=-1)  # [B, k]
        tokens, scores, parents = [logp.indices], [logp.values], [shape.depth1_parents]  # per depth: [B, n], [n]
        assert self.cache is not None
        keys = self._columns[None, :]  # [1, C]
        committed = ((keys >= self._pad[:, None]) & (keys < self._fed_at))[:, None, :]  # [B, 1, C]
        slot_columns = self._fed_at + shape.slots  # [slots] the expanded nodes' cache columns
        position = (self._fed_at - self._pad)[:, None]  # [B, 1] the root's rotary position (before clamping)
        previous = root.expand(-1, k, -1)  # [B, k, D] the outputs of the nodes expanded at the depth before
        inputs = previous  # [B, k, D] what the expanded nodes read: their parents' outputs
        own = shape.slot_of[0]  # [k, slots] each expanded node's ancestors among the slots, itself included
        chosen = shape.first_chosen  # [k] the expanded nodes among the candidates of the depth before
        for depth in range(2, max_depth + 1):
            if depth > 2:  # the k best of the k x k candidates of the depth before; their parents' slots and outputs
                local = torch.sort(scores[-1].mean(0).topk(k).indices).values  # [k] into the depth before
                parent = local // k  # [k] which node expanded at the depth before is each one's parent
                chosen = shape.first[depth - 1] + local
                own = own[parent] | shape.slot_of[depth - 2]
                inputs = previous[:, parent]
                local_tokens, local_scores = tokens[-1][:, local], scores[-1][:, local]  # [B, k]
            else:
                local_tokens, local_scores = tokens[0], scores[0]
            placed = torch.zeros(k, keys.shape[1], dtype=torch.bool, device=root.device)
            placed.index_copy_(1, slot_columns, own)  # [k, C]
            columns = slot_columns[(depth - 2) * k : (depth - 1) * k]  # [k]
            positions = (position + (depth - 2)).clamp_min(0).expand(-1, k)  # [B, k]
            out = self.fused.forward(local_tokens, inputs, positions, committed | placed, self.cache, columns)
            previous = out  # [B, k, D]
            children = self.fused.log_probs(out).topk(k, dim=-1)  # [B, k, k]
            tokens.append(children.indices.flatten(1))
            scores.append((local_scores[:, :, None] + children.values).flatten(1))  # [B, k k] cumulative
            parents.append(chosen[shape.repeat])  # [k k]
        kept, kept_parents = best_subtree(
            torch.cat(scores, 1).mean(0), torch.cat(parents), shape.depths, budget
        )  # fmt: skip
        return torch.cat(tokens, 1)[:, kept], kept_parents

    def observe(self, batch: SequenceBatch, num_accepted: int) -> None:
        """Nothing here: the next proposal rolls the cache back to the committed entries and reads new features."""
