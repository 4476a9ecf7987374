"""Decoding many phase requests together: one model forward per step for all running rows.

Each request is prefilled alone (a private copy of its image prefix continued with its phase
suffix, batch of one, exactly what a single request does), then its row joins the running
batch. Two ways to hold the running rows, chosen by ``Engine.decode_loop``:

``dynamic`` (the CPU default): one ``DynamicCache`` grown by a column per step:

* full-attention KV are left-padded to a common length and a 2D attention mask zeroes the
  padding. Left padding puts every row's new token in the same (last) cache slot;
* linear-attention conv and recurrent states have a fixed size per row and are just stacked.
  For a one-token step qwen3_5 gives those layers no mask at all
  (``create_recurrent_attention_mask`` returns None when the input is one token long), which is
  right: they only see the new token and their own state, never the padded KV;
* positions are passed explicitly, ``[3, B, 1]``: each row's real length plus its own
  multimodal ``rope_delta``. Without them the model would take the padded cache length (or
  ``attention_mask.cumsum``) plus the single ``rope_deltas`` kept on the model object, which is
  right for one row at most.

A row leaves the batch as soon as it is done (stop token, grammar terminated, budget spent)
or abandoned (its ``GenRequest.abandoned`` says so: the worker lost the job's lease):
its slice is dropped from every cache tensor and the padding no row needs any more is cut.
Waiting requests join at every step while fewer than ``max_batch`` rows run (continuous
batching), so at most ``max_batch`` rows are decoded at once and a long answer does not hold a
slot that a finished one could use.

``static`` and ``graphs`` (the CUDA default): fixed buffers allocated once, the same tensors
every step, replayed as CUDA graphs under ``graphs`` (``services.pipeline.slots``). Rows join,
leave and refill the same way; only where their states live differs.

With greedy decoding every row gets the tokens it would get alone, up to float rounding:
batched matrix products and the masked attention kernel add in another order (about 1e-6 on
the tiny float32 model), so only a near-exact tie between the two best logits could differ.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import xgrammar as xgr
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from services.pipeline.caches import cut_left, stack_caches
from services.pipeline.profile import Decoding
from services.pipeline.slots import SlotStore, width_for

if TYPE_CHECKING:
    from services.pipeline.engine import Engine, ImagePrefix


@dataclass(frozen=True)
class GenRequest:
    """One phase answer to decode from an encoded image."""

    prefix: ImagePrefix
    prompt: str
    grammar: xgr.CompiledGrammar | None
    max_new_tokens: int
    decoding: Decoding
    seed: int
    min_new_tokens: int = 0  # stop tokens are suppressed until this many tokens exist
    # True once nobody wants the answer any more (the worker lost the job): the row leaves the
    # batch at its next step with what it has, and a request not yet prefilled never starts.
    abandoned: Callable[[], bool] | None = None

    @property
    def gone(self) -> bool:
        return self.abandoned is not None and self.abandoned()


@dataclass
class Decoded:
    """One request's answer before detokenisation."""

    token_ids: list[int]
    finished: bool  # False when max_new_tokens ran out before a stop token
    latency_ms: float  # from its prefill to its last token
    prefill_tokens: int
    input_ids: list[int]  # the whole prompt: image prefix and phase suffix


class Sampler:
    """Greedy by default (deterministic, auditable); temperature + top-p when asked."""

    def __init__(self, decoding: Decoding, seed: int) -> None:
        self.greedy = decoding.strategy == "greedy"
        self.warpers = [TemperatureLogitsWarper(decoding.temperature), TopPLogitsWarper(decoding.top_p)]
        self.generator = torch.Generator().manual_seed(seed)

    def pick(self, scores: torch.Tensor) -> int:
        """One token from ``scores`` of shape [1, vocab]."""
        if self.greedy:
            return int(scores.argmax(dim=-1)[0])
        for warp in self.warpers:
            scores = warp(None, scores)  # the warpers ignore input_ids
        probs = torch.softmax(scores, dim=-1).cpu()
        return int(torch.multinomial(probs, 1, generator=self.generator)[0, 0])


class _Row:
    """One request while it decodes."""

    def __init__(self, index: int, request: GenRequest, *, started: float, suffix: list[int]) -> None:
        self.index = index  # where its answer goes in the result list
        self.request = request
        self.started = started
        self.input_ids = request.prefix.input_ids[0].tolist() + suffix
        self.prefill_tokens = len(suffix)
        self.length = len(self.input_ids)  # tokens in its cache, padding excluded
        self.rope_delta = int(request.prefix.rope_deltas.reshape(-1)[0])
        self.matcher = xgr.GrammarMatcher(request.grammar) if request.grammar is not None else None
        self.sampler = Sampler(request.decoding, request.seed)
        self.tokens: list[int] = []
        self.finished = False

    @property
    def holds_stop(self) -> bool:
        return len(self.tokens) < self.request.min_new_tokens

    def accept(self, token: int, stop_ids: set[int]) -> bool:
        """Take the picked token; True when the row is done."""
        if token in stop_ids:
            self.finished = True
            return True
        self.tokens.append(token)
        if self.matcher is not None:
            if not self.matcher.accept_token(token):  # cannot happen under the mask; be explicit
                return True
            if self.matcher.is_terminated():
                self.finished = True
                return True
        return len(self.tokens) >= self.request.max_new_tokens

    def result(self) -> Decoded:
        return Decoded(token_ids=self.tokens, finished=self.finished,
                       latency_ms=(time.perf_counter() - self.started) * 1000,
                       prefill_tokens=self.prefill_tokens, input_ids=self.input_ids)


@dataclass
class _Prefilled:
    """Requests prefilled together: their rows, one cache of those rows (full-attention KV
    left-padded by ``pads``) and each row's first-token logits."""

    rows: list[_Row]
    cache: Any
    pads: list[int]
    logits: torch.Tensor  # [len(rows), vocab]

    @property
    def width(self) -> int:
        return self.pads[0] + self.rows[0].length


class _DynamicBatch:
    """Running rows in one ``DynamicCache``: KV left-padded to a common width, grown per step."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.pads: list[int] = []  # left padding of each row's full-attention KV
        self.logits: torch.Tensor | None = None  # [len(rows), vocab]

    @property
    def width(self) -> int:
        """Padded KV length, the same for every row."""
        return self.pads[0] + self.rows[0].length

    def admit(self, joining: Sequence[_Prefilled]) -> None:
        """The joining rows go after the running ones (the first cache object is reused)."""
        if not joining:
            return
        groups = ([(self.cache, self.pads, self.width)] if self.rows else []) + [
            (part.cache, part.pads, part.width) for part in joining]
        width = max(group_width for _, _, group_width in groups)
        extra = [width - group_width for _, _, group_width in groups]
        caches = [cache for cache, _, _ in groups]
        self.cache = stack_caches(caches, extra) if len(caches) > 1 else caches[0]
        self.pads = [pad + more for (_, pads, _), more in zip(groups, extra, strict=True) for pad in pads]
        self.rows += [row for part in joining for row in part.rows]
        self.logits = _with_logits(self.logits, joining)

    def keep(self, indices: list[int]) -> None:
        """Only these rows stay."""
        if not indices:
            self.rows, self.cache, self.pads, self.logits = [], None, [], None
            return
        assert self.logits is not None
        if len(indices) < len(self.rows):
            self.cache.reorder_cache(torch.tensor(indices, device=self.logits.device))
            self.rows = [self.rows[i] for i in indices]
            self.pads = [self.pads[i] for i in indices]
            self.logits = self.logits[indices]
        cut = min(self.pads)
        if cut:  # padding that every remaining row has: attention work for nothing
            cut_left(self.cache, cut)
            self.pads = [pad - cut for pad in self.pads]

    def step(self, tokens: list[int]) -> None:
        """Feed every row its new token; keeps the logits for the next pick."""
        assert self.logits is not None
        device = self.logits.device
        positions = torch.tensor([row.length + row.rope_delta for row in self.rows], device=device)
        out = self.model(input_ids=torch.tensor(tokens, device=device).view(-1, 1), cache=self.cache, use_cache=True,
                         attention_mask=self._attention_mask(device),
                         position_ids=positions.view(1, -1, 1).expand(3, -1, -1))
        self.logits = out.logits[:, -1, :]
        for row in self.rows:
            row.length += 1

    def close(self) -> None:
        self.keep([])

    def _attention_mask(self, device: torch.device) -> torch.Tensor | None:
        """[B, width + 1], zero on each row's left padding; None without padding, so an unpadded
        batch (a single request in particular) runs exactly the unmasked kernels."""
        if not any(self.pads):
            return None
        pads = torch.tensor(self.pads, device=device)
        return (torch.arange(self.width + 1, device=device)[None, :] >= pads[:, None]).long()


class _SlotBatch:
    """Running rows in the engine's fixed slot buffers (``services.pipeline.slots``)."""

    def __init__(self, engine: Engine, *, capacity: int, width: int) -> None:
        self.engine, self.capacity, self.width = engine, capacity, width
        self.store: SlotStore | None = None
        self.rows: list[_Row] = []
        self.logits: torch.Tensor | None = None

    def admit(self, joining: Sequence[_Prefilled]) -> None:
        if not joining:
            return
        if self.store is None:  # the first prefilled cache tells the layer kinds and state shapes
            self.store = self.engine.slot_store(joining[0].cache, capacity=self.capacity, width=self.width)
        for part in joining:
            self.store.admit(part.cache, part.pads, [row.length for row in part.rows])
            self.rows += part.rows
        self.logits = _with_logits(self.logits, joining)

    def keep(self, indices: list[int]) -> None:
        assert self.store is not None and self.logits is not None
        self.store.keep(indices)
        self.rows = [self.rows[i] for i in indices]
        self.logits = self.logits[indices] if indices else None

    def step(self, tokens: list[int]) -> None:
        assert self.store is not None
        self.logits = self.store.step(tokens, [row.length + row.rope_delta for row in self.rows])
        for row in self.rows:
            row.length += 1

    def close(self) -> None:
        """Free the slots, also after an error, so the next call can reuse the buffers."""
        if self.store is not None:
            self.store.clear()
        self.rows, self.logits = [], None


def _with_logits(logits: torch.Tensor | None, joining: Sequence[_Prefilled]) -> torch.Tensor:
    """The running rows' logits followed by the joining rows' first-token logits."""
    return torch.cat(([logits] if logits is not None else []) + [part.logits for part in joining])


def pick_tokens(engine: Engine, rows: Sequence[_Row], logits: torch.Tensor) -> list[int]:
    """The next token of every row: grammar mask, stop suppression, then its sampler."""
    scores = logits.float()
    constrained = [i for i, row in enumerate(rows) if row.matcher is not None]
    if constrained:
        bitmask = xgr.allocate_token_bitmask(len(rows), engine.vocab_size)
        for i in constrained:
            rows[i].matcher.fill_next_token_bitmask(bitmask, i)  # type: ignore[union-attr]
        xgr.apply_token_bitmask_inplace(scores, bitmask.to(scores.device), indices=constrained)
    holding = [i for i, row in enumerate(rows) if row.holds_stop]
    if holding:
        suppress_stops(scores, holding, sorted(engine.stop_ids))
    greedy = scores.argmax(dim=-1).tolist()
    return [greedy[i] if row.sampler.greedy else row.sampler.pick(scores[i:i + 1]) for i, row in enumerate(rows)]


def decode_many(engine: Engine, requests: Sequence[GenRequest], *, max_batch: int,
                reserve_tokens: int = 0) -> list[Decoded]:
    """Every request's answer, in request order; at most ``max_batch`` rows decode at once.

    ``reserve_tokens``: fixed buffers (static and graphs loops) wide enough for requests of this
    many tokens too, prompt and answer, so that later calls with such requests reuse them."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, not {max_batch}")
    suffixes = [engine.suffix_ids(request.prompt)[0].tolist() for request in requests]
    batch: _DynamicBatch | _SlotBatch
    if engine.decode_loop == "dynamic":
        batch = _DynamicBatch(engine.model)
    else:
        longest = max([reserve_tokens] + [int(r.prefix.input_ids.shape[1]) + len(s) + r.max_new_tokens
                                          for r, s in zip(requests, suffixes, strict=True)])
        batch = _SlotBatch(engine, capacity=max_batch, width=width_for(longest, engine.slot_margin))
    results: list[Decoded | None] = [None] * len(requests)
    waiting = deque(range(len(requests)))
    try:
        while waiting or batch.rows:
            batch.admit(_prefill_waiting(engine, requests, suffixes, waiting, max_batch - len(batch.rows), results))
            if not batch.rows:
                continue
            assert batch.logits is not None
            tokens = pick_tokens(engine, batch.rows, batch.logits)
            running: list[int] = []
            for i, (row, token) in enumerate(zip(batch.rows, tokens, strict=True)):
                if row.request.gone or row.accept(token, engine.stop_ids):
                    results[row.index] = row.result()
                else:
                    running.append(i)
            batch.keep(running)
            if batch.rows:
                batch.step([tokens[i] for i in running])
    finally:
        batch.close()
    done = [result for result in results if result is not None]
    if len(done) != len(requests):  # every request leaves through accept() or a zero budget
        raise RuntimeError("batched decoding lost a request")
    return done


def _prefill_waiting(engine: Engine, requests: Sequence[GenRequest], suffixes: Sequence[list[int]],
                     waiting: deque[int], room: int, results: list[Decoded | None]) -> list[_Prefilled]:
    """Prefill waiting requests into the free rows: those with suffixes of one length together,
    up to ``engine.prefill_rows`` per forward (a forward costs about as much for 1 row as for
    16 on a GPU, and the suffixes of one phase prompt are alike)."""
    taken: list[int] = []
    while waiting and len(taken) < room:
        index = waiting.popleft()
        if requests[index].max_new_tokens <= 0 or requests[index].gone:  # nothing to decode: nor to prefill
            results[index] = _Row(index, requests[index], started=time.perf_counter(), suffix=suffixes[index]).result()
        else:
            taken.append(index)
    by_length: dict[int, list[int]] = {}
    for index in taken:
        by_length.setdefault(len(suffixes[index]), []).append(index)
    joining: list[_Prefilled] = []
    step = max(1, engine.prefill_rows)
    for group in by_length.values():
        for chunk in (group[i:i + step] for i in range(0, len(group), step)):
            started = time.perf_counter()
            cache, pads, logits = engine.prefill_many([requests[i].prefix for i in chunk],
                                                      torch.tensor([suffixes[i] for i in chunk], dtype=torch.long))
            rows = [_Row(i, requests[i], started=started, suffix=suffixes[i]) for i in chunk]
            joining.append(_Prefilled(rows, cache, pads, logits))
    return joining


def suppress_stops(scores: torch.Tensor, rows: list[int], stop_ids: list[int]) -> None:
    """No stop token in these rows of ``scores`` [batch, vocab], except in a row where nothing
    else is allowed (a grammar that must end). Tensor ops only, all rows at once: a check per
    row on the host would be a GPU synchronisation per row and step."""
    index = torch.tensor(rows, device=scores.device)[:, None]
    stops = torch.tensor(stop_ids, device=scores.device)[None, :]
    kept = scores[index, stops]
    scores[index, stops] = float("-inf")
    stuck = torch.isneginf(scores[index[:, 0]]).all(dim=-1, keepdim=True)
    scores[index, stops] = torch.where(stuck, kept, float("-inf"))
