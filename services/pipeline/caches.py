"""Row-wise operations on transformers caches of qwen3_5 (full-attention KV, linear-attention
states): stacking the rows of several caches with left padding, cutting padding off, and
taking one row out as a cache of its own.

Full-attention layers hold per-token keys and values ``[batch, heads, tokens, dim]``; rows of
different lengths are left-padded to one length and an attention mask hides the padding.
Linear-attention layers hold fixed-size conv and recurrent states per row, which are simply
concatenated: they never see padding. Since transformers 5.25 a linear layer also counts the
tokens it has seen (``cumulative_length_linear``), and ``Cache.get_seq_length()`` reads layer
0's count, a linear layer in qwen3_5: the positions of a later forward come from it, so every
operation here keeps that count equal to the row's real (unpadded) length, or to the padded
width for stacked rows.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DummyLayer, DynamicLayer, LinearAttentionCacheLayerMixin


def kv_layer(layer: Any) -> bool:
    """Whether the cache layer holds per-token keys and values (full attention)."""
    if isinstance(layer, DynamicLayer):
        if layer.is_sliding:  # a window would drop real tokens before padding: not supported
            raise NotImplementedError("batched decoding does not support sliding-window cache layers")
        return bool(layer.is_initialized)
    if not isinstance(layer, (LinearAttentionCacheLayerMixin, DummyLayer)):
        raise NotImplementedError(f"batched decoding does not support {type(layer).__name__} cache layers")
    return False


_COUNT = "cumulative_length_linear"  # absent before transformers 5.25


def _shift_count(target: Any, source: Any, delta: int) -> None:
    """``target``'s token count becomes ``source``'s plus ``delta``, as a tensor of its own
    (transformers adds to it in place). Nothing where the layer keeps no count."""
    if hasattr(source, _COUNT):
        setattr(target, _COUNT, getattr(source, _COUNT) + delta)


def stack_caches(caches: Sequence[Any], extra_pads: Sequence[int]) -> Any:
    """Stack the caches' rows into the first one (its tensors are replaced, not written):
    KV left-padded by ``extra_pads``, states concatenated."""
    target = caches[0]
    for index, layer in enumerate(target.layers):
        layers = [cache.layers[index] for cache in caches]
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            _shift_count(layer, layers[0], extra_pads[0])  # the padded width: any cache's count plus its padding
            for state in range(layer.number_of_states):
                if layer.is_conv_states_initialized[state]:
                    layer.conv_states[state] = torch.cat([each.conv_states[state] for each in layers])
                if layer.is_recurrent_states_initialized[state]:
                    layer.recurrent_states[state] = torch.cat([each.recurrent_states[state] for each in layers])
        if kv_layer(layer):
            padded = list(zip(layers, extra_pads, strict=True))
            layer.keys = torch.cat([F.pad(each.keys, (0, 0, pad, 0)) for each, pad in padded])
            layer.values = torch.cat([F.pad(each.values, (0, 0, pad, 0)) for each, pad in padded])
    return target


def cut_left(cache: Any, count: int) -> None:
    """Drop the first ``count`` (padding) positions of every full-attention layer."""
    for layer in cache.layers:
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            _shift_count(layer, layer, -count)
        if kv_layer(layer):
            layer.keys = layer.keys[:, :, count:, :]
            layer.values = layer.values[:, :, count:, :]


def row_of(cache: Any, row: int, pad: int) -> Any:
    """Row ``row`` of a batch cache as a cache of its own: its first ``pad`` (padding) columns
    cut off, its tensors copied so the batch's can be freed."""
    single = copy.copy(cache)
    single.layers = []
    for layer in cache.layers:
        part = copy.copy(layer)
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            part.conv_states = {s: None if t is None else t[row:row + 1].clone() for s, t in layer.conv_states.items()}
            part.recurrent_states = {s: None if t is None else t[row:row + 1].clone()
                                     for s, t in layer.recurrent_states.items()}
            _shift_count(part, layer, -pad)  # the row's own length, without the padding
            for flags in ("is_conv_states_initialized", "is_recurrent_states_initialized", "has_previous_state",
                          "conv_kernel_size"):
                setattr(part, flags, dict(getattr(layer, flags)))
        if kv_layer(layer):
            part.keys = layer.keys[row:row + 1, :, pad:].clone()
            part.values = layer.values[row:row + 1, :, pad:].clone()
        single.layers.append(part)
    return single
