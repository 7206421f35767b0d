"""The fast decoder: a lean model forward (Llama family or GPT-2) over its own static KV cache, replayed from CUDA
graphs.

Each forward shape (number of new tokens S, all logits or the last only) is captured once in a CUDA graph, the
first time it runs, and replayed after that: the draft's one-token step and the target's (K + 1)-token verification
become one launch each. The cache length lives on the device (the graphs read it) and on the host (the engine
reads it); a rollback sets both, copying nothing.

A prefill of more than ``GRAPH_MAX_TOKENS`` tokens runs padded on the right to a multiple of ``PREFILL_BUCKET``
tokens, from a graph per padded width: launched one by one its few hundred kernels cost the host several times the
GPU's time (13 ms against 2 for a 128-token prompt of the 1B shape on an H100). The padding's keys and values land
in columns past the cache's length, which no query sees and later tokens overwrite, so the result is the unpadded
prefill's up to the products' rounding for another row count. Past ``PREFILL_GRAPH_MAX_TOKENS`` tokens in all rows a
prefill runs eagerly: the GPU bounds it there, and a graph would keep its activations' memory.

A forward that also returns the target's features (``feature_request``) is captured like any other (the features
are a second output). A token tree's forward is captured per tree size, its visibility mask and depths being static
inputs copied in before each replay, so a drafter with a fixed node budget replays one graph per step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from specdec.decoder import greedy_chain_loop, sampled_chain_loop
from specdec.drafters.base import FeatureRequest
from specdec.errors import ConfigError, UnsupportedModelError
from specdec.fast.graphs import CapturedGraphs, Outputs
from specdec.fast.models import FastModel, build_fast_model, unsupported_reason
from specdec.kernels import Kernels, kernels_for
from specdec.loading import LoadedModel
from specdec.tree import TreeAttention

GRAPH_MAX_TOKENS = 16  # forwards of more new tokens (prefill) run eagerly, or padded (below)
PREFILL_BUCKET = 64  # a longer prefill's width is padded to a multiple of this ...
PREFILL_GRAPH_MAX_TOKENS = 1024  # ... up to this many tokens in all rows, and replayed from a graph per width
TREE_GRAPH_MAX_TOKENS = 128  # token-tree forwards are captured up to this many tokens (root included)


class FastDecoder:
    def __init__(
        self,
        loaded: LoadedModel,
        vocab_size: int | None = None,
        use_graphs: bool | None = None,
        model: FastModel | None = None,
    ) -> None:
        """``model``: a lean module to run instead of building one from ``loaded`` (a view of fewer layers)."""
        reason = unsupported_reason(loaded.model, loaded.device)
        if reason is not None:
            raise UnsupportedModelError(f"no fast path for {loaded.name!r}: {reason}; use --decoder generic")
        self.name = loaded.name
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.vocab_size = vocab_size or loaded.vocab_size
        self.kernels: Kernels = kernels_for(loaded.device)
        self.loaded = loaded
        self.model = model if model is not None else build_fast_model(loaded.model, self.kernels)
        self.sliding_window = _sliding_window(loaded)
        self.path = f"fast-{self.model.family}"
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        self.chain_graph = True  # the greedy draft of K tokens as one graph (False: one graph per forward)
        self.forwards = 0
        self._length = 0
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._device_length = torch.zeros((), dtype=torch.long, device=self.device)
        self._steps = torch.arange(TREE_GRAPH_MAX_TOKENS, device=self.device)
        self._positions = torch.zeros((0, 0), dtype=torch.long, device=self.device)  # [B, M]: each column's position
        self._key_valid = torch.zeros(0, dtype=torch.bool, device=self.device)
        self._graphs = CapturedGraphs(self.device, self.use_graphs)
        self._prefill_graphs = CapturedGraphs(self.device, self.use_graphs, shared_pool=True)
        self.pad_prefill = self.use_graphs  # long prefills padded to PREFILL_BUCKET (on CPU: for tests only)
        self._position_limit = 0  # prepare's max_length: no column at or past it may be written
        self.feature_request: FeatureRequest | None = None  # set by the engine when its drafter reads features
        self.features: torch.Tensor | None = None  # [B, S, F]: the last forward's features (with a feature_request)

    @property
    def cache_length(self) -> int:
        return self._length

    def first_layers(self, count: int) -> FastDecoder:
        """A decoder over this model's first ``count`` layers, final norm and output head: the same weights (nothing
        is copied), its own KV cache (``count`` layers) and graphs."""
        view = copy.copy(self.model)
        view.layers = self.model.layers[:count]
        return FastDecoder(self.loaded, self.vocab_size, self.use_graphs, model=view)

    def prepare(
        self, pad_lengths: torch.Tensor, attention_mask: torch.Tensor | None, max_length: int, columns: int = 0
    ) -> None:
        """See ``Decoder.prepare``: ``max_length`` bounds the positions, ``columns`` (if more) the cache."""
        batch = pad_lengths.shape[0]
        if self.sliding_window is not None and self.sliding_window < max_length:
            raise UnsupportedModelError(
                f"{self.name!r} attends over a sliding window of {self.sliding_window} tokens, shorter than the "
                f"{max_length} tokens this run needs; ask for fewer tokens (prompt + max_new_tokens <= "
                f"{self.sliding_window})"
            )
        limit = self.model.max_positions
        if limit is not None and max_length > limit:
            raise ConfigError(
                f"{self.name!r} has {limit} learned positions, fewer than the {max_length} this run needs "
                "(prompt + max_new_tokens + K): shorten the prompt or lower max_new_tokens"
            )
        cache = self._cache
        needed = max(columns, max_length)
        if cache is None or cache[0].shape[1] != batch or cache[0].shape[3] < needed:
            self._cache = None
            self._graphs.clear()  # graphs hold the old buffers' addresses
            self._prefill_graphs.clear()
            # A longer run of the same batch size doubles the capacity (a few growths cover any run); a new batch
            # size starts from what this run needs, so that alternating batch sizes never compound the growth.
            same_batch = cache is not None and cache[0].shape[1] == batch
            capacity = max(needed, 2 * cache[0].shape[3]) if same_batch and cache is not None else needed
            self._cache = self.model.new_cache(batch, capacity)
            self._positions = torch.zeros((batch, capacity), dtype=torch.long, device=self.device)
            self._key_valid = torch.ones((batch, capacity), dtype=torch.bool, device=self.device)
            self.model.position_tables(capacity)
        assert self._cache is not None
        capacity = self._cache[0].shape[3]
        steps = torch.arange(capacity, device=self.device)
        self._positions.copy_((steps[None, :] - pad_lengths.to(self.device)[:, None]).clamp_min(0))
        if attention_mask is None:
            self._key_valid.fill_(True)
        else:
            self._key_valid.zero_()
            self._key_valid[:, : attention_mask.shape[1]].copy_(attention_mask.bool())
        self._key_valid[:, max_length:capacity] = True
        self._position_limit = max_length
        self.rollback(0)
        self.forwards = 0

    def set_rows(self, positions: torch.Tensor, key_valid: torch.Tensor) -> None:
        """See ``Decoder.set_rows``: copied into the buffers the graphs read."""
        width = positions.shape[1]
        self._positions[:, :width].copy_(positions)
        self._key_valid[:, :width].copy_(key_valid)

    @torch.inference_mode()
    def compact(self, source: torch.Tensor) -> None:
        """See ``Decoder.compact``."""
        assert self._cache is not None
        index = source.clamp_min(0).to(self.device)
        n = index.shape[1]
        for tensor in self._cache:  # [L, B, Hkv, M, Dh]
            layers, _, heads, _, head_dim = tensor.shape
            gather = index[None, :, None, :, None].expand(layers, -1, heads, -1, head_dim)
            tensor[:, :, :, :n] = tensor.gather(3, gather)
        self.rollback(min(n, self._length))

    def _forward(
        self,
        input_ids: torch.Tensor,
        last_only: bool,
        visible: torch.Tensor | None = None,
        depths: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The whole forward as device work only (so that it can be captured): logits [B, S or 1, vocab] and, with a
        ``feature_request``, the features [B, S, F]. ``visible`` [S, S] and ``depths`` [S]: a token tree (root
        first; positions from the depths, the mask in the attention). ``logits_at`` [1]: only that token's logits."""
        assert self._cache is not None, "prepare() must be called before forward()"
        batch, seq = input_ids.shape
        request = self.feature_request
        if self.model.persistent is not None and batch == seq == 1 and depths is None and request is None:
            # One kernel: it reads the token's column and position on the device and advances the length itself.
            logits = self.model.persistent_run(input_ids, self._device_length, self._positions, self._key_valid,
                                               self._cache)  # fmt: skip
            return logits[..., : self.vocab_size], None  # float32 already
        steps = self._steps[:seq] if seq <= self._steps.shape[0] else torch.arange(seq, device=self.device)
        columns = self._device_length + steps  # [S]
        if depths is None:
            positions = self._positions.index_select(1, columns)  # [B, S]
        else:  # a tree: the root's position plus each node's depth
            positions = self._positions.index_select(1, columns[:1]) + depths[None, :]
        logits, features = self.model.run(
            input_ids, columns, positions, self._key_valid, self._cache, last_only, visible,
            request.layers if request is not None else None, logits_at,
        )  # fmt: skip
        self._device_length.add_(seq)
        return logits[..., : self.vocab_size].float(), features

    def _logits(self, input_ids: torch.Tensor, last_only: bool) -> torch.Tensor:
        return self._forward(input_ids, last_only)[0]

    @torch.inference_mode()
    def forward(
        self, input_ids: torch.Tensor, last_only: bool = False, tree: TreeAttention | None = None
    ) -> torch.Tensor:
        """``tree``: the new tokens form a token tree (root first), see :mod:`specdec.tree`."""
        seq = input_ids.shape[1]
        layers = self.feature_request.layers if self.feature_request is not None else None
        if tree is None and last_only and layers is None and self.pad_prefill and seq > GRAPH_MAX_TOKENS:
            width = self._prefill_width(input_ids.shape[0], seq)
            if width is not None:
                return self._padded_prefill(input_ids, width)
        if tree is None:
            logits, self.features = self._graphed(
                (seq, last_only, layers), (input_ids,), lambda ids: self._forward(ids, last_only), GRAPH_MAX_TOKENS
            )
        else:
            logits, self.features = self._graphed(
                ("tree", seq, last_only, layers),
                (input_ids, tree.visible, tree.depths),
                lambda ids, visible, depths: self._forward(ids, last_only, visible, depths),
                TREE_GRAPH_MAX_TOKENS,
            )
        assert logits is not None
        self._length += seq
        self.forwards += 1
        return logits

    def _prefill_width(self, batch: int, seq: int) -> int | None:
        """The padded width of a ``seq``-token prefill of ``batch`` rows, or None where it runs unpadded and eagerly
        (too many tokens to be worth a graph)."""
        room = self._position_limit - self._length  # pad only into columns this run may write
        width = min(-(-seq // PREFILL_BUCKET) * PREFILL_BUCKET, max(room, seq))
        return width if batch * width <= PREFILL_GRAPH_MAX_TOKENS else None

    def _padded_prefill(self, input_ids: torch.Tensor, width: int) -> torch.Tensor:
        """input_ids [B, S] -> the last token's logits [B, 1, V]: the forward of the ids padded with zeros to
        ``width`` on the right, from the graph of that width; the cache's length then rolls back over the padding."""
        batch, seq = input_ids.shape
        padded = torch.zeros((batch, width), dtype=input_ids.dtype, device=self.device)
        padded[:, :seq] = input_ids
        last = torch.full((1,), seq - 1, dtype=torch.long, device=self.device)
        start = self._length
        (logits,) = self._prefill_graphs.run(
            ("prefill", width), (padded, last), lambda ids, at: (self._forward(ids, True, logits_at=at)[0],)
        )
        assert logits is not None
        self._length = start + width
        self.rollback(start + seq)
        self.forwards += 1
        return logits

    @torch.inference_mode()
    def forward_then(
        self,
        input_ids: torch.Tensor,
        inputs: tuple[torch.Tensor, ...],
        then: Callable[..., tuple[torch.Tensor, ...]],
        key: tuple[object, ...],
    ) -> tuple[torch.Tensor, ...]:
        """See ``Decoder.forward_then``: the forward and ``then`` replay one graph (one per ``key`` and width)."""
        seq = input_ids.shape[1]
        assert self.feature_request is None, "forward_then computes no features"
        outputs = self._graphed(
            ("then", seq, *key),
            (input_ids, *inputs),
            lambda ids, *rest: then(self._forward(ids, False)[0], *rest),
            GRAPH_MAX_TOKENS,
        )
        self._length += seq
        self.forwards += 1
        return tuple(x for x in outputs if x is not None)

    @torch.inference_mode()
    def keep_path(self, start: int, columns: torch.Tensor) -> None:
        """Move the cached keys and values at ``columns`` [n] int64 (increasing cache columns) to the consecutive
        columns [start, start + n), every layer at once; the cache's length is unchanged (roll back after)."""
        assert self._cache is not None
        n = columns.shape[0]
        target = torch.arange(start, start + n, device=self.device)
        for tensor in self._cache:  # [L, B, Hkv, M, Dh]
            tensor.index_copy_(3, target, tensor.index_select(3, columns.to(self.device)))

    @torch.inference_mode()
    def greedy_chain(self, input_ids: torch.Tensor, k: int) -> torch.Tensor:
        """The whole greedy draft of ``k`` tokens as one graph: forwards and argmaxes never wait for the host."""
        if not self.chain_graph:
            return greedy_chain_loop(self.forward, input_ids, k)
        seq = input_ids.shape[1]
        (tokens,) = self._graphed(
            ("chain", seq, k), (input_ids,), lambda ids: (greedy_chain_loop(self._logits, ids, k),), GRAPH_MAX_TOKENS
        )
        assert tokens is not None
        self._length += seq + k - 1
        self.forwards += k
        return tokens

    @torch.inference_mode()
    def sampled_chain(
        self,
        input_ids: torch.Tensor,
        exponentials: torch.Tensor,
        draw: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        key: tuple[object, ...],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampled draft of ``k`` tokens from given noise as one graph (see ``Decoder.sampled_chain``)."""
        seq, k = input_ids.shape[1], exponentials.shape[1]
        if not self.chain_graph:
            return sampled_chain_loop(self.forward, input_ids, exponentials, draw)
        tokens, probs = self._graphed(
            ("sampled-chain", seq, k, *key),
            (input_ids, exponentials),
            lambda ids, noise: sampled_chain_loop(self._logits, ids, noise, draw),
            GRAPH_MAX_TOKENS,
        )
        assert tokens is not None and probs is not None
        self._length += seq + k - 1
        self.forwards += k
        return tokens, probs

    def _graphed(
        self,
        key: tuple[object, ...],
        inputs: tuple[torch.Tensor, ...],
        run: Callable[..., Outputs],
        max_tokens: int,
    ) -> Outputs:
        """``run(*inputs)`` from a CUDA graph captured for ``key`` when ``inputs[0]`` (the token ids) is at most
        ``max_tokens`` wide, else eagerly. The outputs are valid until the next call."""
        if inputs[0].shape[1] > max_tokens:
            return run(*inputs)
        return self._graphs.run(key, inputs, run)

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot roll back to {length}: the cache holds {self._length} positions")
        if length != self._length:
            self._device_length.fill_(length)
        self._length = length

    def rollback_on_device(self, length: torch.Tensor) -> None:
        """Roll back to ``length`` [] int64, a device value the host has not read (a draft chain queued ahead of the
        verdict that decides where it starts): forwards after it write from there. The host's count of cached
        positions is wrong until :meth:`settle` gives the true one."""
        self._device_length.copy_(length)

    def settle(self, length: int) -> None:
        """The host's count of cached positions, once the device value of :meth:`rollback_on_device` (plus what was
        fed after it) is known: ``length``. Nothing on the device changes."""
        self._length = length


def _sliding_window(loaded: LoadedModel) -> int | None:
    """The attention window of a model that uses one (Mistral, Qwen2 with ``use_sliding_window``), else None."""
    config = loaded.model.config
    window = getattr(config, "sliding_window", None)
    if window is None or not getattr(config, "use_sliding_window", True):
        return None
    return int(window)
