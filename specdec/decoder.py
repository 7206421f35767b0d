"""A causal LM bound to its own KV cache: the unit the engine drives (one for the target, one for a draft model).

:class:`Decoder` is the interface; :class:`HFDecoder` is the generic path, which runs any ``transformers`` causal LM
through its own forward with a preallocated :class:`~specdec.kv_cache.KVCache`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol

import torch

from specdec.drafters.base import FeatureRequest
from specdec.kv_cache import KVCache, cache_keyword
from specdec.loading import LoadedModel
from specdec.tree import TreeAttention


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
    feature_request: FeatureRequest | None  # set by the engine: every forward then computes these features ...
    features: torch.Tensor | None  # ... [B, S, F] for the forward's S input tokens (a tree's: per node)

    @property
    def cache_length(self) -> int: ...

    def prepare(
        self, pad_lengths: torch.Tensor, attention_mask: torch.Tensor | None, max_length: int, columns: int = 0
    ) -> None:
        """Get ready for a new batch and empty the cache.

        pad_lengths: [B] left padding per row; attention_mask: [B, <= max_length] (0 on padding) or None if no row
        is padded; max_length: the longest sequence (prompt + new tokens) this batch will reach; columns: the cache
        columns to hold, if more than ``max_length`` (per-row acceptance leaves holes: ``docs/batching.md``).
        """

    def set_rows(self, positions: torch.Tensor, key_valid: torch.Tensor) -> None:
        """The rows' layout changed (holes, a compaction): positions [B, C] int64, the position of each cache column
        in its row, and key_valid [B, C] bool, False where a column is hidden from attention. Copies them (C is at
        most the columns prepared); later forwards take positions and the key mask from them."""

    def compact(self, source: torch.Tensor) -> None:
        """Row b's cache columns [0, n) become its columns ``source[b]`` ([B, n] int64; -1: anything, the column
        will be hidden), and the cache holds n columns. Copies every layer once; for the rare compaction of holes
        (``SequenceBatch.compact``); call ``set_rows`` after."""

    def forward(
        self, input_ids: torch.Tensor, last_only: bool = False, tree: TreeAttention | None = None
    ) -> torch.Tensor:
        """Score ``input_ids`` [B, S], appended at ``cache_length``. Returns float32 logits [B, S, vocab_size],
        or [B, 1, vocab_size] for the last position only with ``last_only``.

        ``tree``: the S tokens are a token tree, root first (:mod:`specdec.tree`): token s sits at the root's
        position + ``tree.depths[s]`` and sees the committed cache, its ancestors and itself."""
        ...

    def forward_then(
        self,
        input_ids: torch.Tensor,
        inputs: tuple[torch.Tensor, ...],
        then: Callable[..., tuple[torch.Tensor, ...]],
        key: tuple[object, ...],
    ) -> tuple[torch.Tensor, ...]:
        """``then(logits, *inputs)`` on the logits [B, S, vocab_size] of ``forward(input_ids)``: device work only,
        the same for the same ``key``, so that a fast path can replay both as one CUDA graph (a sampled
        autoregressive step: the forward, the sampling distribution and the draw from given noise). Returns
        ``then``'s tensors (a graph's own: valid until the next call)."""
        ...

    def keep_path(self, start: int, columns: torch.Tensor) -> None:
        """Move the cached entries at ``columns`` [n] int64 (increasing) to columns [start, start + n): after a tree
        step, the kept path next to the root. Costs O(n) per layer; the length is unchanged (roll back after)."""

    def greedy_chain(self, input_ids: torch.Tensor, k: int) -> torch.Tensor:
        """Greedy drafting: read ``input_ids`` [B, S], then ``k - 1`` more tokens, each the argmax after the last.
        Returns the ``k`` argmax tokens [B, k]; the cache grows by ``S + k - 1``."""
        ...

    def sampled_chain(
        self,
        input_ids: torch.Tensor,
        exponentials: torch.Tensor,
        draw: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        key: tuple[object, ...],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled drafting from given noise: read ``input_ids`` [B, S], then draw ``k`` tokens, each by
        ``draw(logits, noise)`` (logits [B, V] and the step's ``exponentials[:, i]`` [B, V] of Exp(1) -> q [B, V] and
        its exponential race's token ``argmax_v q(v) / E(v)`` [B], which has probability q(v); device work only, the
        same for the same ``key``: :func:`specdec.sampling.race`). Returns the tokens [B, k] and their distributions
        [B, k, V]; the cache grows by ``S + k - 1``. A fast path replays the whole chain as one graph (one per
        ``key``, width and k)."""
        ...

    def rollback(self, length: int) -> None:
        """Drop cached columns ``>= length`` in O(1)."""


def sampled_chain_loop(
    forward: Callable[[torch.Tensor, bool], torch.Tensor],
    input_ids: torch.Tensor,
    exponentials: torch.Tensor,
    draw: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`Decoder.sampled_chain` as a loop over ``forward(input_ids, last_only)``. -> tokens [B, k], probs
    [B, k, V]."""
    k = exponentials.shape[1]
    logits = forward(input_ids, True)[:, -1]  # [B, V]
    tokens, probs = [], []
    for i in range(k):
        q, token = draw(logits, exponentials[:, i])  # [B, V], [B]
        tokens.append(token)
        probs.append(q)
        if i + 1 < k:
            logits = forward(token[:, None], True)[:, -1]
    return torch.stack(tokens, dim=1), torch.stack(probs, dim=1)


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
        self.positions = torch.zeros((1, 0), dtype=torch.long)  # [B, M]: each cache column's position in its row
        self.attention_mask: torch.Tensor | None = None  # [B, M] int64, 0 on hidden columns; None: none hidden
        self._takes_logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._cache_keyword = cache_keyword(self.model)
        self.feature_request: FeatureRequest | None = None
        self.features: torch.Tensor | None = None

    @property
    def cache_length(self) -> int:
        return self.cache.length if self.cache is not None else 0

    def prepare(
        self, pad_lengths: torch.Tensor, attention_mask: torch.Tensor | None, max_length: int, columns: int = 0
    ) -> None:
        batch_size = pad_lengths.shape[0]
        columns = max(columns, max_length)
        if self.cache is None or not self.cache.fits(batch_size, columns):
            self.cache = None  # release the old tensors before allocating new ones
            self.cache = KVCache(self.model, batch_size, columns)
        self.cache.reset()
        capacity = self.cache.max_length
        steps = torch.arange(capacity, device=pad_lengths.device)
        self.positions = (steps[None, :] - pad_lengths[:, None]).clamp_min(0)  # [B, M]
        if attention_mask is not None:  # room beyond the batch (a tree, a reused longer cache) is not hidden
            attention_mask = torch.nn.functional.pad(attention_mask, (0, capacity - attention_mask.shape[1]), value=1)
        self.attention_mask = attention_mask
        self.forwards = 0

    def set_rows(self, positions: torch.Tensor, key_valid: torch.Tensor) -> None:
        width = positions.shape[1]
        self.positions[:, :width] = positions
        if self.attention_mask is None:
            self.attention_mask = torch.ones_like(self.positions)
        self.attention_mask[:, :width] = key_valid.long()

    def compact(self, source: torch.Tensor) -> None:
        assert self.cache is not None
        self.cache.compact(source)

    def forward_then(
        self,
        input_ids: torch.Tensor,
        inputs: tuple[torch.Tensor, ...],
        then: Callable[..., tuple[torch.Tensor, ...]],
        key: tuple[object, ...],
    ) -> tuple[torch.Tensor, ...]:
        return then(self.forward(input_ids), *inputs)

    def sampled_chain(
        self,
        input_ids: torch.Tensor,
        exponentials: torch.Tensor,
        draw: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        key: tuple[object, ...],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return sampled_chain_loop(self.forward, input_ids, exponentials, draw)

    @torch.inference_mode()
    def forward(
        self, input_ids: torch.Tensor, last_only: bool = False, tree: TreeAttention | None = None
    ) -> torch.Tensor:
        assert self.cache is not None, "prepare() must be called before forward()"
        start = self.cache.length
        seq = input_ids.shape[1]
        if tree is None:
            position_ids = self.positions[:, start : start + seq]  # [B, S]
        else:  # the root's position plus each node's depth
            position_ids = self.positions[:, start : start + 1] + tree.depths[None, :]
        attention_mask = self.attention_mask if tree is None else self._tree_mask(start, tree)
        request = self.feature_request
        keep_all = request is not None or not last_only
        extra = {"logits_to_keep": 1} if not keep_all and self._takes_logits_to_keep else {}
        with capture_features(self.model, request) as captured:
            output = self.model(
                input_ids=input_ids,
                position_ids=position_ids,
                attention_mask=attention_mask,
                use_cache=True,
                **{self._cache_keyword: self.cache.hf_cache},
                **extra,
            )
        self.features = captured.features() if request is not None else None
        self.cache.advance(seq)
        self.forwards += 1
        logits = output.logits  # [B, S or 1, V_model]
        if last_only:
            logits = logits[:, -1:]
        return logits[..., : self.vocab_size].float()

    def _tree_mask(self, start: int, tree: TreeAttention) -> torch.Tensor:
        """The 4-D additive mask of a tree forward at cache column ``start``: [B, 1, S, M] in the model's dtype
        (0 where visible, the dtype's minimum elsewhere), M the cache's capacity. Transformers hands a 4-D mask to
        the attention as it is (``masking_utils._preprocess_mask_arguments``), for SDPA and eager attention alike."""
        assert self.cache is not None
        capacity, size = self.cache.max_length, tree.size
        device = tree.visible.device
        visible = torch.zeros((size, capacity), dtype=torch.bool, device=device)  # [S, M]
        visible[:, :start] = True
        visible[:, start : start + size] = tree.visible
        visible = visible[None].repeat(self.positions.shape[0], 1, 1)  # [B, S, M]
        if self.attention_mask is not None:  # left padding (the mask covers the whole cache)
            visible &= self.attention_mask[:, None, :capacity].bool()
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=device)
        return mask.masked_fill(~visible, torch.finfo(self.dtype).min)[:, None]  # [B, 1, S, M]

    def keep_path(self, start: int, columns: torch.Tensor) -> None:
        assert self.cache is not None
        self.cache.keep_path(start, columns)

    def greedy_chain(self, input_ids: torch.Tensor, k: int) -> torch.Tensor:
        return greedy_chain_loop(self.forward, input_ids, k)

    def rollback(self, length: int) -> None:
        assert self.cache is not None
        self.cache.rollback(length)


class _Captured:
    """Hidden states caught by forward hooks during one forward (see :class:`capture_features`)."""

    def __init__(self, request: FeatureRequest | None) -> None:
        self.request = request
        self.layer_outputs: dict[int, torch.Tensor] = {}
        self.head_input: torch.Tensor | None = None

    def features(self) -> torch.Tensor:
        """[B, S, F] as ``FeatureRequest`` defines them."""
        assert self.request is not None
        if not self.request.layers:
            assert self.head_input is not None
            return self.head_input
        return torch.cat([self.layer_outputs[i] for i in self.request.layers], dim=-1)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM (``model.model.layers`` for Llama/Qwen2, ``model.transformer.h`` for
    GPT-2, ...): the first module list as long as the config's layer count."""
    count = model.config.num_hidden_layers  # type: ignore[union-attr]
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} decoder layers of {type(model).__name__}")


class capture_features:
    """Catch the hidden states a :class:`FeatureRequest` asks for with forward hooks, whatever transformers'
    ``output_hidden_states`` puts last in its tuple (the normed state in some releases, the last layer's output in
    others): the input of the output head for ``layers=()``, else the outputs of the decoder layers. Without a
    request nothing is hooked."""

    def __init__(self, model: torch.nn.Module, request: FeatureRequest | None) -> None:
        self.model = model
        self.captured = _Captured(request)
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _Captured:
        request, captured = self.captured.request, self.captured
        if request is None:
            return captured
        if not request.layers:
            head = self.model.get_output_embeddings()  # type: ignore[operator]

            def read_head(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                captured.head_input = args[0]

            self.handles.append(head.register_forward_pre_hook(read_head))
        else:
            layers = decoder_layers(self.model)
            for index in request.layers:

                def read_layer(module: torch.nn.Module, args: object, output: object, index: int = index) -> None:
                    captured.layer_outputs[index] = output[0] if isinstance(output, tuple) else output  # type: ignore[assignment]

                self.handles.append(layers[index].register_forward_hook(read_layer))
        return captured

    def __exit__(self, *exc_info: object) -> None:
        for handle in self.handles:
            handle.remove()
