"""Fixed decode buffers: the lean decode step, replayable as a CUDA graph.

The dynamic batch (``services.pipeline.batching``) grows its KV by one column per step with a
``torch.cat`` per layer and rebuilds masks in Python every step; on a GPU the step is then
bound by kernel launches, not by memory. Here every tensor a decode step touches is allocated
once, for ``capacity`` rows ("slots") and ``width`` KV columns:

* full-attention KV ``[capacity, heads, width, head_dim]`` per layer; all rows write their new
  token at the same column (``column``), so a row's tokens sit right-aligned before it, from
  its ``start``. The mask (``start <= col <= column``) is computed inside the step from two
  small tensors, so it needs no Python either;
* linear-attention conv and recurrent states ``[capacity, ...]``, updated in place by the
  model's own cache layers (``copy_``), as transformers does for static caches;
* the step's inputs (tokens, positions) are copied into fixed tensors before each step.

The model's language model is called with a transformers ``Cache`` whose layers are views of
the first ``b`` slots, and a 4D mask, so no mask is built and no cache tensor is reallocated:
the same kernels on the same addresses every step. On CUDA each bucket size ``b`` (1, 2, 4, ...,
capacity) is captured once as a CUDA graph and replayed; rows in the bucket past the running
ones compute garbage that nobody reads (on a GPU a decode step costs about the same for 1 or 8
rows: it reads the weights once either way).

Rows stay packed in slots ``0..n-1``: when rows leave, the others move down in order. When the
write column reaches the end, or a joining row's prompt is longer than the columns before it,
the used columns are moved (one copy of the KV, every ``width - span`` steps at most).

The width is set by the largest request a call may make (answer budgets, not answers), so most
of it is empty most of the time. A step attends only over the narrowest of a few column spans
("extents": 1024, 2048, ..., width) that holds its write column, and the used columns are
moved left whenever that lets the steps use a narrower extent: the attention reads the rows'
live span, not the buffers' width. Each (bucket, extent) pair has its own graph.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import (
    Cache,
    CacheLayerMixin,
    DummyLayer,
    DynamicLayer,
    LinearAttentionCacheLayerMixin,
    LinearAttentionLayer,
)

log = logging.getLogger(__name__)

MARGIN_COLUMNS = 256  # spare columns beyond the longest request: fewer moves of the KV
FIRST_EXTENT = 1024  # the narrowest column span a step attends over (see extents)


def width_for(longest: int, margin: int = MARGIN_COLUMNS) -> int:
    """KV columns for requests of at most ``longest`` tokens (prompt and answer), with a margin."""
    return 64 * -(-(longest + margin) // 64)


def extents(width: int) -> list[int]:
    """Column spans a step is built for: ``FIRST_EXTENT``, doubled while below ``width``, and
    ``width``."""
    span, spans = FIRST_EXTENT, []
    while span < width:
        spans.append(span)
        span *= 2
    return [*spans, width]


def buckets(capacity: int) -> list[int]:
    """Batch sizes a graph is captured for: powers of two below ``capacity``, and ``capacity``."""
    sizes, size = [], 1
    while size < capacity:
        sizes.append(size)
        size *= 2
    return [*sizes, capacity]


class _SlotKV(CacheLayerMixin):
    """A full-attention layer over views of the shared KV: writes at ``column``, returns all columns."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, column: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values, self.column = keys, values, column
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("slot KV is allocated up front")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.keys is not None and self.values is not None
        self.keys.index_copy_(2, self.column, key_states)
        self.values.index_copy_(2, self.column, value_states)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        assert self.keys is not None
        return int(self.keys.shape[2]), 0

    def get_seq_length(self) -> int:
        return 0  # never asked: positions and the mask are always given

    def get_max_length(self) -> int:
        assert self.keys is not None
        return int(self.keys.shape[2])


@dataclass
class _Linear:
    """One linear-attention layer's states, per state index."""

    conv: dict[int, torch.Tensor]
    recurrent: dict[int, torch.Tensor]


class SlotStore:
    """Decode buffers for up to ``capacity`` rows of at most ``width`` cached tokens each.

    Built from a prefilled batch-of-one cache (the layer kinds and state shapes); reused across
    calls while its size fits. Not thread-safe, like the engine that owns it.
    """

    def __init__(self, core: Any, template: Any, *, capacity: int, width: int, graphs: bool) -> None:
        self.text_model = core.model.language_model
        self.lm_head = core.lm_head
        self.capacity, self.width = capacity, width
        param = next(self.lm_head.parameters())
        self.device = param.device
        long = {"dtype": torch.long, "device": self.device}
        self.column = torch.zeros(1, **long)  # where every row's next KV goes
        self.starts = torch.zeros(capacity, **long)  # each slot's first real column
        self.tokens = torch.zeros(capacity, 1, **long)
        self.positions = torch.zeros(3, capacity, 1, **long)
        self.columns = torch.arange(width, **long)
        self.extents = extents(width)
        self.sizes = buckets(capacity)
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.linear: dict[int, _Linear] = {}
        self.kinds: list[str] = []
        for index, layer in enumerate(template.layers):
            self.kinds.append(self._allocate(index, layer))
        self.pos = 0  # host copy of ``column``
        self.used = 0  # rows in slots 0..used-1
        self.start_of = [0] * capacity  # host copy of ``starts``
        self.moves = 0  # times the used columns were moved (see _make_room)
        self._caches: dict[tuple[int, int], Cache] = {}
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.graphs = graphs
        self.capture_error: str | None = None
        if graphs:
            try:
                self._capture()
            except Exception as exc:  # e.g. a kernel that synchronises: the eager step still works
                log.warning("CUDA graph capture failed, decoding without graphs: %r", exc)
                self.capture_error, self.graphs = repr(exc), False
                self._graphs.clear()
                torch.cuda.synchronize(self.device)
            self._zero()

    def _allocate(self, index: int, cached: Any) -> str:
        layer: Any = cached  # the transformers layer classes type their tensors as optional
        if isinstance(cached, LinearAttentionCacheLayerMixin):
            conv = {s: torch.zeros((self.capacity, *t.shape[1:]), dtype=t.dtype, device=self.device)
                    for s, t in layer.conv_states.items() if layer.is_conv_states_initialized[s]}
            recurrent = {s: torch.zeros((self.capacity, *t.shape[1:]), dtype=t.dtype, device=self.device)
                         for s, t in layer.recurrent_states.items() if layer.is_recurrent_states_initialized[s]}
            self.linear[index] = _Linear(conv, recurrent)
            return "linear"
        if isinstance(cached, DynamicLayer) and layer.is_initialized and not layer.is_sliding:
            heads, dim_k, dim_v = layer.keys.shape[1], layer.keys.shape[3], layer.values.shape[3]
            self.kv[index] = (
                torch.zeros((self.capacity, heads, self.width, dim_k), dtype=layer.keys.dtype, device=self.device),
                torch.zeros((self.capacity, heads, self.width, dim_v), dtype=layer.values.dtype, device=self.device))
            return "kv"
        if isinstance(cached, DummyLayer):
            return "none"
        raise NotImplementedError(f"slot decoding does not support {type(layer).__name__} cache layers")

    def fits(self, capacity: int, width: int) -> bool:
        return self.used == 0 and capacity <= self.capacity and width <= self.width

    # -- rows in and out ------------------------------------------------------------------

    def admit(self, cache: Any, pads: Sequence[int], lengths: Sequence[int]) -> None:
        """Place the rows of a prefilled cache (row i: ``pads[i]`` columns of left padding, then
        ``lengths[i]`` tokens) in the next free slots."""
        if self.used + len(lengths) > self.capacity:
            raise RuntimeError("more rows than slots")
        self._make_room(max(lengths, default=0))
        for row, (pad, length) in enumerate(zip(pads, lengths, strict=True)):
            self._place(self.used, cache, row, pad, length)
            self.used += 1

    def _place(self, slot: int, cache: Any, row: int, pad: int, length: int) -> None:
        start = self.pos - length
        for index, (keys, values) in self.kv.items():
            layer = cache.layers[index]
            if layer.keys.shape[2] != pad + length:
                raise RuntimeError(f"layer {index} holds {layer.keys.shape[2]} columns, not {pad} + {length}")
            keys[slot, :, start:self.pos].copy_(layer.keys[row, :, pad:])
            values[slot, :, start:self.pos].copy_(layer.values[row, :, pad:])
        for index, states in self.linear.items():
            layer = cache.layers[index]
            for s, tensor in states.conv.items():
                tensor[slot].copy_(layer.conv_states[s][row])
            for s, tensor in states.recurrent.items():
                tensor[slot].copy_(layer.recurrent_states[s][row])
        self.starts[slot] = start
        self.start_of[slot] = start

    def keep(self, indices: Sequence[int]) -> None:
        """Only the rows now in these slots (ascending) stay; they move down to slots 0..k-1."""
        for new, old in enumerate(indices):
            if new != old:
                self._move(old, new)
        self.used = len(indices)

    def _move(self, old: int, new: int) -> None:
        for tensor in self._row_tensors():
            tensor[new].copy_(tensor[old])
        self.starts[new] = self.start_of[old]
        self.start_of[new] = self.start_of[old]

    def clear(self) -> None:
        self.used = 0

    def _extent(self, columns: int) -> int:
        """The narrowest extent holding ``columns`` columns."""
        return next(extent for extent in self.extents if extent >= columns)

    def _make_room(self, needed: int) -> None:
        """Columns so that rows of ``needed`` tokens fit before ``pos`` and one more can be
        written; the used columns also move left when that narrows the steps' extent."""
        first = min(self.start_of[: self.used], default=self.pos)
        target = max(needed, self.pos - first)  # the used columns moved to start at 0 (or later)
        if needed <= self.pos < self.width and self._extent(target + 1) >= self._extent(self.pos + 1):
            return
        if target >= self.width:
            raise RuntimeError(f"a request needs more than {self.width} cached tokens")
        shift = target - self.pos
        end = max(self.pos, target)  # the columns that hold the rows' tokens, before and after
        for keys, values in self.kv.values():  # columns outside a row's span are masked: wrapping is fine
            keys[: self.used, :, :end].copy_(torch.roll(keys[: self.used, :, :end], shift, dims=2))
            values[: self.used, :, :end].copy_(torch.roll(values[: self.used, :, :end], shift, dims=2))
        self.start_of[: self.used] = [start + shift for start in self.start_of[: self.used]]
        self.starts[: self.used] += shift
        self.pos = target
        self.moves += 1

    # -- the step -------------------------------------------------------------------------

    def step(self, tokens: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """Feed each running row (slots 0..n-1) its token at its position: logits [n, vocab]."""
        rows = len(tokens)
        if rows != self.used:
            raise RuntimeError(f"{rows} tokens for {self.used} rows")
        self._make_room(0)
        self.tokens[:rows, 0].copy_(torch.tensor(tokens, dtype=torch.long))
        self.positions[:, :rows, 0].copy_(torch.tensor(positions, dtype=torch.long).expand(3, -1))
        self.column.fill_(self.pos)
        extent = self._extent(self.pos + 1)
        if self.graphs:
            graph, out = self._graphs[(next(b for b in self.sizes if b >= rows), extent)]
            graph.replay()
            logits = out[:rows].clone()
        else:
            logits = self._forward(rows, extent)
        self.pos += 1
        return logits

    def _forward(self, rows: int, extent: int) -> torch.Tensor:
        """One decode step of slots 0..rows-1 over KV columns 0..extent-1; only fixed tensors
        in, no host synchronisation."""
        starts, columns = self.starts[:rows, None], self.columns[:extent]
        attend = ((columns >= starts) & (columns <= self.column)) | (columns == self.column)
        out = self.text_model(
            input_ids=self.tokens[:rows], position_ids=self.positions[:, :rows],
            attention_mask={"full_attention": attend[:, None, None, :], "linear_attention": None},
            cache=self._cache(rows, extent), use_cache=True)
        logits: torch.Tensor = self.lm_head(out.last_hidden_state[:, -1, :])
        return logits

    def _cache(self, rows: int, extent: int) -> Cache:
        """A transformers cache over slots 0..rows-1 and KV columns 0..extent-1 (views: updates
        land in the shared tensors)."""
        if (rows, extent) not in self._caches:
            layers: list[Any] = []
            for index, kind in enumerate(self.kinds):
                if kind == "kv":
                    keys, values = self.kv[index]
                    layers.append(_SlotKV(keys[:rows, :, :extent], values[:rows, :, :extent], self.column))
                elif kind == "linear":
                    layers.append(self._linear_view(self.linear[index], rows))
                else:
                    layers.append(DummyLayer())
            self._caches[(rows, extent)] = Cache(layers=layers)
        return self._caches[(rows, extent)]

    @staticmethod
    def _linear_view(states: _Linear, rows: int) -> LinearAttentionLayer:
        layer: Any = LinearAttentionLayer(number_of_states=max([*states.conv, *states.recurrent], default=0) + 1)
        for s, tensor in states.conv.items():
            layer.conv_states[s] = tensor[:rows]
            layer.conv_kernel_size[s] = int(tensor.shape[-1])
            layer.is_conv_states_initialized[s] = True
            layer.has_previous_state[s] = True
            layer.dtype, layer.device = tensor.dtype, tensor.device
        for s, tensor in states.recurrent.items():
            layer.recurrent_states[s] = tensor[:rows]
            layer.is_recurrent_states_initialized[s] = True
            layer.has_previous_state[s] = True
        return layer

    def _capture(self) -> None:
        """One CUDA graph per bucket and extent, captured while every slot is empty (the
        warm-up runs write garbage into the states, zeroed after by the caller)."""
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):  # largest first: the pool fits all
            for extent in reversed(self.extents):
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        self._forward(size, extent)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    out = self._forward(size, extent)
                self._graphs[(size, extent)] = (graph, out)

    def _zero(self) -> None:
        for tensor in self._row_tensors():
            tensor.zero_()
        self.column.zero_()

    def _row_tensors(self) -> Iterator[torch.Tensor]:
        """Every per-row state tensor: full-attention keys and values, linear-attention states."""
        for keys, values in self.kv.values():
            yield keys
            yield values
        for states in self.linear.values():
            yield from states.conv.values()
            yield from states.recurrent.values()
