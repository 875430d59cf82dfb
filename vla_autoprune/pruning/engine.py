"""The pruning engine: hooks on unmodified transformers decoder layers, and what they measured.

``with prune(decoder, pruner, inputs) as record: decoder(... record.inputs ...)`` installs, on every
decoder layer, a forward pre-hook and a forward hook (``with_kwargs=True``) and removes them on exit,
also when the block raises. Then, during each prefill (layer ``l``'s KV cache is empty):

- after layer ``l`` runs (never the last), the pruner's schedule says how many visual tokens it
  hands on; if fewer than it received, the pruner scores the visual tokens (at layer ``l``, from
  that layer's own projections), the top ones are kept (in sequence order), optionally some dropped
  ones are merged into new tokens placed right after the kept visual tokens (each takes the
  position id of its best-scored member), and the hidden states the layer returns shrink
  accordingly. The first layer that can see fewer tokens is therefore layer 1.
- every later layer's pre-hook re-applies the same gather to what the model loop hands to all layers
  alike: ``position_embeddings`` (cos, sin), ``position_ids`` and the attention mask. Survivors keep
  their original position ids (``position_ids="original"``) or are renumbered in sequence order
  (``"contiguous"``, recomputing cos/sin with the model's rotary module).
- samples of a batch may keep different numbers of tokens: each row is padded to the batch maximum
  with some of its dropped tokens, marked invalid. Layers then get an explicit 4D mask (also when
  the model had one for padding): causal over the kept order, AND valid, non-padding key columns,
  OR the diagonal so no row is empty. Without padding or fillers the mask stays None (SDPA's
  ``is_causal`` fast path).
- after the last layer, the output is scattered back to the input length (dropped positions are
  zero), so heads that read the output by input position keep working.
- per-layer additive visual inputs (``inputs.deepstack``, Qwen3-VL): after layer ``i`` runs, and
  before it prunes, its output gets ``deepstack[i]`` at the visual slots it ran on (survivors only;
  a merged token gets its representative's feature). ``record.inputs`` carry None: the engine adds
  them, so nothing adds them twice (:mod:`vla_autoprune.models.deepstack`).

KV cache: a token dropped after layer ``l`` never reaches layers ``> l``, so it never enters their
caches. The pruning layer ``l`` itself processed it and keeps it in its own cache entry, which is
what "masked from layer l+1 on" means; later decode steps at layer ``l`` attend to it, as an
unpruned model would. Decode steps (cache not empty) change nothing where nothing was dropped; for
layers with pruned caches they gather the key columns of the model's mask (sized from layer 0) at
the kept tokens plus the new ones, and mask fillers.

Pre-decoder pruning (:meth:`Pruner.preselect`) builds shorter inputs (``record.inputs``,
:mod:`vla_autoprune.pruning.preselection`): run the decoder on ``record.inputs``.

This module holds the hooks and the per-forward state; the token slots and how a drop rebuilds
them are :mod:`vla_autoprune.pruning.slots`, the record :mod:`vla_autoprune.pruning.record`.
Everything in the record is counted from the tensors the layers received: the hooks keep each
layer's slots (and each merge's members), and after the last layer the host works out which
original tokens each layer kept and which merged token holds which (numpy,
:mod:`vla_autoprune.pruning.kept_tokens`), so none of that bookkeeping runs as ops in the hooks.

Cost (issue 14): scoring reuses the layer's own ``q_proj`` and ``k_proj`` outputs (captured by
hooks on those submodules: no projection is recomputed, and the queries are the very ones the
layer attended with); positions, masks and record counts are built once per set
of slots and reused until the next drop. Host syncs: none in a decoder layer, pruning or not (the
schedule, each row's live count, the pruner's kept / merged split (:meth:`Pruner.split` answers in
host ints) and a merge's valid count (:attr:`Merge.count_host`) are on the host), except one copy of
each new schedule to the host (AutoPrune: two per forward, stage 0's and the solved curve), one at
``prune()`` entry (text width, whether every row has it) and, after the last layer, one packed copy
of what the record is worked out from and one of its counts (:func:`vla_autoprune.devices.to_host`). A merge that gives no ``count_host`` costs one sync. Host ints go to the device with
:func:`vla_autoprune.devices.device_ints`: on CUDA a non-blocking copy from pinned memory, where
``torch.tensor(values, device="cuda")`` would wait for every queued kernel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from vla_autoprune import compat
from vla_autoprune.devices import device_ints
from vla_autoprune.indexing import gather_rows
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.models.deepstack import add_at_visual, check_deepstack
from vla_autoprune.profiling import stage
from vla_autoprune.pruning.positions import first_real_position, sequence_positions
from vla_autoprune.pruning.preselection import check_layout, preselect_inputs
from vla_autoprune.pruning.pruner import LayerView, Pruner
from vla_autoprune.pruning.record import PruningRecord, fill_kept, finish_record
from vla_autoprune.pruning.slots import DropCounts, Dropper, Slots

logger = logging.getLogger(__name__)


@dataclass
class _Forward:
    """State of one prefill, anchored on what layer 0 received."""

    slots: Slots
    layer_slots: list[Slots | None]
    cos: torch.Tensor  # [B, N, rd]
    sin: torch.Tensor  # [B, N, rd]
    position_ids: torch.Tensor  # [B, N]
    first_position: torch.Tensor  # [B, 1]: position id of each row's first real token
    mask_template: torch.Tensor | None  # layer 0's mask: None (SDPA causal) or its encoding
    schedule: torch.Tensor | None = None
    schedule_host: list[list[int]] | None = None  # the same, on the host (copied once per change)
    scratch: dict[str, Any] = field(default_factory=dict)


def num_cameras(inputs: DecoderInputs) -> int:
    """``C``: cameras are numbered ``0..C-1`` in ``layout.camera_index``."""
    camera = inputs.layout.camera_index
    return int(camera.max()) + 1 if camera.numel() else 0


def _batched(x: torch.Tensor, b: int) -> torch.Tensor:
    """``x`` ``[1 or B, N, d]`` as ``[B, N, d]`` (itself when it already has ``B`` rows)."""
    return x if x.shape[0] == b else x.expand(b, -1, -1)


def _projected(
    captured: dict[str, torch.Tensor], hidden: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The layer's captured ``(query_proj, key_proj)``, if both were seen on ``hidden``'s ``[B, K]`` tokens."""
    query_proj, key_proj = captured.get("query_proj"), captured.get("key_proj")
    if query_proj is None or key_proj is None:
        return None
    if query_proj.shape[:2] != hidden.shape[:2] or key_proj.shape[:2] != hidden.shape[:2]:
        return None
    return query_proj, key_proj


class _Engine:
    """Holds per-forward state and implements the hooks (see the module docstring)."""

    def __init__(
        self,
        decoder: nn.Module,
        pruner: Pruner,
        inputs: DecoderInputs,
        record: PruningRecord,
        visual_origin: torch.Tensor,
        given_cameras: torch.Tensor,
    ) -> None:
        self.layers = compat.decoder_layers(decoder)
        self.num_layers = len(self.layers)
        self.pruner = pruner
        self.inputs = inputs
        self.record = record
        self.rotary = compat.rotary_embedding(decoder) if pruner.position_ids == "contiguous" else None
        layout = inputs.layout
        self.visual = layout.visual_mask.bool()
        text = layout.text_mask.bool()
        self.real = inputs.attention_mask.bool()
        self.num_visual = layout.num_visual
        # Fixed per forward, computed once (and the text width synced here, not in the hooks).
        self.visual_rank = self.visual.long().cumsum(dim=1) - 1  # index among the visual tokens
        rank = self.visual_rank.clamp(min=0, max=visual_origin.shape[1] - 1)
        self.visual_origin = visual_origin.gather(1, rank)  # ... mapped to the given inputs' indices
        self.given_cameras = given_cameras  # [B, V]: camera of each of the given inputs' visual tokens
        # Never dropped, so known per row for the whole forward (one sync, here): text tokens, real
        # non-visual tokens, and visual tokens that are padding (normally none).
        per_row = torch.stack(
            [
                text.sum(dim=1),
                (self.real & ~self.visual).sum(dim=1),
                (self.visual & ~self.real).sum(dim=1),
            ]
        ).tolist()
        self.text_counts, self.fixed_tokens, padded_visual = per_row
        text_width = max(self.text_counts, default=0)
        self.text_full = min(self.text_counts, default=0) == text_width
        self.visual_real = not any(padded_visual)  # then a row's real tokens are fixed + alive visual
        self.scoring_host: list[int] = []  # scoring MACs counted on the host (added to the record once)
        self.dropper = Dropper(
            visual=self.visual,
            text=text,
            real=self.real,
            visual_rank=self.visual_rank,
            text_width=text_width,
            text_full=self.text_full,
            camera=layout.camera_index,
            camera_ratios=pruner.camera_ratios(num_cameras(inputs)),
            merge=pruner.merge,
        )
        self.deepstack = inputs.deepstack or ()  # per-layer [B, V, D], added in _add_deepstack
        self.state: _Forward | None = None
        self.prefill = False
        self.captured: dict[str, torch.Tensor] = {}  # this layer's q_proj and k_proj outputs

    # -- installation ----------------------------------------------------------------------------

    def install(self) -> list[torch.utils.hooks.RemovableHandle]:
        for i, layer in enumerate(self.layers):
            compat.check_layer(layer, i)  # all checked before any hook exists: nothing leaks on error
        handles = []
        for i, layer in enumerate(self.layers):
            handles.append(layer.register_forward_pre_hook(partial(self._pre, i), with_kwargs=True))
            if i < len(self.deepstack):  # before _post: the pruner sees what layer i + 1 would get
                handles.append(layer.register_forward_hook(partial(self._add_deepstack, i), with_kwargs=True))
            handles.append(layer.register_forward_hook(partial(self._post, i), with_kwargs=True))
            # Scoring reuses the layer's own query and key projections instead of recomputing them.
            for name, path in (("query_proj", "self_attn.q_proj"), ("key_proj", "self_attn.k_proj")):
                hook = partial(self._capture, name)
                handles.append(layer.get_submodule(path).register_forward_hook(hook))
        return handles

    def _capture(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        """Keep a prefill layer's ``q_proj`` / ``k_proj`` output until its forward hook."""
        if self.prefill and isinstance(output, torch.Tensor):
            self.captured[name] = output

    def _add_deepstack(
        self, i: int, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> Any:
        """Prefill: add ``deepstack[i]`` to layer ``i``'s output at the visual slots it ran on.

        Each slot gets the feature of the token its ``src`` names: a kept token its own, a merged
        token its representative's, a filler the dropped token's (masked anyway).
        """
        state = self.state
        if not self.prefill or state is None:
            return None
        src = state.slots.src
        hidden = add_at_visual(
            compat.output_hidden(output),
            self.deepstack[i],
            self.visual.gather(1, src),
            self.visual_rank.gather(1, src),
        )
        return compat.with_output_hidden(output, hidden)

    # -- pre-hook ----------------------------------------------------------------------------------

    def _pre(
        self, i: int, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        hidden = compat.layer_hidden(args, kwargs)
        cache = compat.layer_cache(kwargs)
        self.prefill = compat.cache_length(cache, i) == 0
        self.captured = {}
        if not self.prefill:
            return self._decode_step(i, args, hidden, kwargs, cache)
        if i == 0:
            self._start(hidden, kwargs)
        state = self.state
        if state is None:
            raise RuntimeError(f"decoder layer {i} started a prefill that layer 0 did not see")
        if hidden.shape[1] != state.slots.length:
            raise RuntimeError(
                f"decoder layer {i} got {hidden.shape[1]} tokens, the engine expected "
                f"{state.slots.length}: is another hook changing the hidden states?"
            )
        state.layer_slots[i] = state.slots
        if state.slots.identity:
            return None
        with stage("layer_inputs"):
            return args, self._prefill_kwargs(state, hidden, kwargs)

    def _start(self, hidden: torch.Tensor, kwargs: dict[str, Any]) -> None:
        b, n = hidden.shape[:2]
        if (b, n) != tuple(self.real.shape):
            raise ValueError(
                f"the decoder ran on [B={b}, N={n}] tokens but prune() was given inputs of shape "
                f"{list(self.real.shape)}; run the decoder on record.inputs"
            )
        for i, layer in enumerate(self.layers):
            compat.check_window(layer, i, n)
        cos, sin = kwargs[compat.KW_POS_EMB]
        pos = kwargs.get(compat.KW_POS_IDS)
        if pos is None:
            pos = sequence_positions(self.inputs.position_ids, n, hidden.device)
        src = torch.arange(n, device=hidden.device).expand(b, n)
        flags = torch.zeros(b, n, dtype=torch.bool, device=hidden.device)
        self.state = _Forward(
            slots=Slots(
                src=src,
                valid=~flags,
                merged=flags,
                identity=True,
                visual_width=self.num_visual,
                alive=[self.num_visual] * b,
            ),
            layer_slots=[None] * self.num_layers,
            cos=cos.expand(b, -1, -1),
            sin=sin.expand(b, -1, -1),
            position_ids=pos.expand(b, -1),
            first_position=first_real_position(pos.expand(b, -1), self.real),
            mask_template=compat.check_mask(kwargs.get(compat.KW_MASK), 0),
        )
        # The per-layer counts are filled after the last layer (_fill_record), from each layer's slots.
        rec = self.record
        rec.visual_tokens = rec.merged_tokens = rec.tokens = rec.seq_len = None
        rec.scoring_flops = torch.zeros(b, dtype=torch.long, device=hidden.device)
        self.scoring_host = [0] * b
        rec.kept_visual = [None] * self.num_layers
        rec.merged_into = [None] * self.num_layers
        rec.schedule = None
        rec.stats = {}

    def _tokens(self, slots: Slots) -> list[int]:
        """Valid real tokens per row on the host: the fixed ones plus the live visual ones."""
        if slots.tokens is None:
            if self.visual_real:
                slots.tokens = [f + a for f, a in zip(self.fixed_tokens, slots.alive, strict=True)]
            else:  # some visual token is padding (unusual inputs): count them, one sync
                slots.tokens = (self.real.gather(1, slots.src) & slots.valid).sum(1).tolist()
        return slots.tokens

    # Host bookkeeping (lists, numpy): torch.compile of a hooked layer runs it eagerly instead of
    # tracing it (dynamo's numpy tracing failed its own guards on it under inference_mode).
    @torch.compiler.disable
    def _fill_record(self, state: _Forward) -> None:
        """The record's per-layer counts from the slots each layer ran on (after the last layer)."""
        rec = self.record
        layers = [s for s in state.layer_slots if s is not None]
        if len(layers) != self.num_layers:
            raise RuntimeError("the prefill skipped a decoder layer the engine hooked")
        b, num = len(state.slots.alive), self.num_layers

        def per_row(values: list[list[int]]) -> torch.Tensor:  # [L][B] host ints -> int64 [B, L]
            return torch.tensor([v[r] for r in range(b) for v in values], dtype=torch.long).view(b, num)

        rec.seq_len = torch.tensor([s.length for s in layers], dtype=torch.long)
        rec.visual_tokens = per_row([s.alive for s in layers])
        rec.tokens = per_row([self._tokens(s) for s in layers])
        fill_kept(rec, layers, self.visual, self.visual_origin, self.given_cameras)
        if any(self.scoring_host) and rec.scoring_flops is not None:
            rec.scoring_flops += device_ints(self.scoring_host, rec.scoring_flops.device)

    def _positions(self, state: _Forward, slots: Slots, hidden: torch.Tensor) -> dict[str, Any]:
        """position_ids and (cos, sin) for the slots of a prefill."""
        if self.rotary is None:
            pos = state.position_ids.gather(1, slots.src)
            return {
                compat.KW_POS_IDS: pos,
                compat.KW_POS_EMB: (gather_rows(state.cos, slots.src), gather_rows(state.sin, slots.src)),
            }
        # Contiguous: the row's first real position, plus the real valid slots before each slot.
        counted = (slots.valid & self.real.gather(1, slots.src)).long()
        pos = state.first_position + counted.cumsum(dim=1) - counted
        return {compat.KW_POS_IDS: pos, compat.KW_POS_EMB: self.rotary(hidden, pos)}

    def _prefill_kwargs(
        self, state: _Forward, hidden: torch.Tensor, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        slots = state.slots
        if slots.layer_kwargs is None:
            slots.layer_kwargs = self._layer_kwargs(state, hidden)
        return {**kwargs, **slots.layer_kwargs}

    def _layer_kwargs(self, state: _Forward, hidden: torch.Tensor) -> dict[str, Any]:
        """Position ids, (cos, sin) and mask for the current slots (fixed until the next drop)."""
        slots = state.slots
        new = self._positions(state, slots, hidden)
        if state.mask_template is None and not slots.ragged:
            new[compat.KW_MASK] = None  # still plain causal over the kept order: SDPA's fast path
            return new
        k = slots.length
        causal = torch.ones(k, k, dtype=torch.bool, device=hidden.device).tril()
        keys = self.real.gather(1, slots.src) & slots.valid
        allowed = causal & keys[:, None, None, :]  # [B, 1, K, K], a new tensor: ...
        allowed.diagonal(dim1=-2, dim2=-1).fill_(True)  # ... OR the diagonal in place (no eye, no OR pass)
        new[compat.KW_MASK] = compat.bool_to_mask_like(allowed, state.mask_template, hidden.dtype)
        return new

    # -- decode steps --------------------------------------------------------------------------------

    def _decode_step(
        self, i: int, args: tuple[Any, ...], hidden: torch.Tensor, kwargs: dict[str, Any], cache: Any
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        state = self.state
        slots = None if state is None else state.layer_slots[i]
        if state is None or slots is None or slots.identity:
            return None
        b, q = hidden.shape[:2]
        n = state.cos.shape[1]
        past_new = compat.cache_length(cache, i) - slots.length
        if past_new < 0:
            raise RuntimeError(f"decoder layer {i}: its cache is shorter than its pruned prefill")
        new: dict[str, Any] = dict(kwargs)
        mask = compat.check_mask(kwargs.get(compat.KW_MASK), i)
        if mask is not None or slots.ragged:
            new[compat.KW_MASK] = self._decode_mask(mask, state, slots, b, q, n + past_new)
        if self.rotary is not None:
            counted = slots.valid & self.real.gather(1, slots.src)
            start = state.first_position + counted.sum(1, keepdim=True) + past_new
            pos = start + torch.arange(q, device=hidden.device)
            new[compat.KW_POS_IDS] = pos
            new[compat.KW_POS_EMB] = self.rotary(hidden, pos)
        return args, new

    def _decode_mask(
        self,
        mask: torch.Tensor | None,
        state: _Forward,
        slots: Slots,
        b: int,
        q: int,
        first_new: int,
    ) -> torch.Tensor:
        """The model's decode mask (columns sized from layer 0) gathered at this layer's cached tokens."""
        kv0 = first_new + q
        device = slots.src.device
        if mask is None:
            rows = first_new + torch.arange(q, device=device)
            allowed0 = (torch.arange(kv0, device=device).view(1, -1) <= rows.view(-1, 1)).expand(b, 1, q, kv0)
        else:
            if mask.shape[-1] != kv0:
                raise RuntimeError(f"decode mask has {mask.shape[-1]} key columns, expected {kv0}")
            allowed0 = compat.mask_to_bool(mask).expand(b, 1, q, kv0)
        n = state.cos.shape[1]
        new_cols = torch.arange(n, kv0, device=device).expand(b, -1)
        cols = torch.cat([slots.src, new_cols], dim=1)
        allowed = allowed0.gather(-1, cols.view(b, 1, 1, -1).expand(b, 1, q, -1))
        valid = torch.cat([slots.valid, torch.ones_like(new_cols, dtype=torch.bool)], dim=1)
        allowed = allowed & valid.view(b, 1, 1, -1)
        template = mask if mask is not None else state.mask_template
        return compat.bool_to_mask_like(allowed, template, state.cos.dtype)

    # -- forward hook: pruning after a layer ran -------------------------------------------------

    def _post(
        self, i: int, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> Any:
        state = self.state
        captured, self.captured = self.captured, {}
        if not self.prefill or state is None:
            return None
        hidden_out = compat.output_hidden(output)
        if i == self.num_layers - 1:
            with stage("record"):
                self._fill_record(state)
            if state.slots.identity:
                return None
            with stage("restore"):
                return compat.with_output_hidden(output, self.dropper.restore(state.slots, hidden_out))
        hidden = compat.layer_hidden(args, kwargs)
        view = self._view(i, module, hidden, hidden_out, kwargs, state)
        view.projected = _projected(captured, hidden)
        with stage("schedule"):
            schedule = self.pruner.schedule(view)
        if schedule.shape != (view.batch_size, self.num_layers):
            raise ValueError(
                f"{self.pruner.name}.schedule returned shape {tuple(schedule.shape)}, "
                f"expected [B={view.batch_size}, L={self.num_layers}]"
            )
        if schedule is not state.schedule:  # a new answer: one copy to the host (once per forward)
            state.schedule, state.schedule_host = schedule, schedule.detach().cpu().tolist()
            self.record.schedule = schedule.detach()
        assert state.schedule_host is not None
        alive = state.slots.alive
        # At least one visual token survives: scoring and the visual block need one. Host ints: a
        # layer that keeps all issues no tensor op.
        hand_on = [min(max(row[i], 1), a) for row, a in zip(state.schedule_host, alive, strict=True)]
        if all(h >= a for h, a in zip(hand_on, alive, strict=True)):
            return None
        with stage("split"):
            # host ints: the block's shape and the merge sizes are known without a device sync
            kept_host, clusters_host = self._split(view, hand_on, alive)
            kept, clusters = device_ints([kept_host, clusters_host], view.hidden.device)
        counts = DropCounts(kept, clusters, kept_host, clusters_host)
        view.merge_host = ([a - k for a, k in zip(alive, kept_host, strict=True)], clusters_host)
        with stage("score"):
            scores = self.pruner.score(view)
        with stage("select"):
            state.slots, new_hidden = self.dropper.drop(view, state.slots, scores, counts)
        return compat.with_output_hidden(output, new_hidden)

    def _split(self, view: LayerView, hand_on: list[int], alive: list[int]) -> tuple[list[int], list[int]]:
        """The pruner's ``(kept, merged)`` host counts per row, checked against ``hand_on`` and ``alive``."""
        kept, merged = self.pruner.split(view, hand_on)
        rows = zip(kept, merged, hand_on, alive, strict=False)
        same_rows = len(kept) == len(merged) == len(hand_on)
        if not same_rows or not all(0 <= k <= a and 0 <= m and k + m == n for k, m, n, a in rows):
            raise ValueError(
                f"{self.pruner.name}.split returned kept {kept} + merged {merged} for hand-on {hand_on} "
                f"of {alive} tokens; each row's counts must be >= 0 and sum to its hand-on count"
            )
        return [int(k) for k in kept], [int(m) for m in merged]

    def _view(
        self,
        i: int,
        module: nn.Module,
        hidden: torch.Tensor,
        hidden_out: torch.Tensor,
        kwargs: dict[str, Any],
        state: _Forward,
    ) -> LayerView:
        cos, sin = kwargs[compat.KW_POS_EMB]
        b = hidden.shape[0]
        slots = state.slots
        if slots.tokens_tensor is None:
            slots.tokens_tensor = device_ints(self._tokens(slots), hidden.device)
        return LayerView(
            layer_idx=i,
            num_layers=self.num_layers,
            num_visual=self.num_visual,
            layer=module,
            hidden=hidden,
            output=hidden_out,
            position_embeddings=(_batched(cos, b), _batched(sin, b)),
            attention_mask=kwargs.get(compat.KW_MASK),
            slot_index=partial(self.dropper.index, state.slots),
            inputs=self.inputs,
            schedule=state.schedule,
            scratch=state.scratch,
            stats=self.record.stats,
            next_layer=self.layers[i + 1] if i + 1 < self.num_layers else None,
            tokens=slots.tokens_tensor,
            scoring_macs=self.record.scoring_flops,
            text_full=self.text_full,
            tokens_host=slots.tokens,
            text_host=self.text_counts,
            scoring_host=self.scoring_host,
            alive_host=slots.alive,
            who=self.pruner.label,
        )


# ------------------------------------------------------------------------------------------------
# Public entry point.


@contextmanager
def prune(decoder: nn.Module, pruner: Pruner, inputs: DecoderInputs) -> Iterator[PruningRecord]:
    """Prune visual tokens inside ``decoder`` while the block runs it on ``record.inputs``.

    Args:
        decoder: an unmodified transformers causal LM (or its base model).
        pruner: what to keep where (budget, schedule, scores).
        inputs: the decoder inputs (embeddings, masks, layout) the block will run.

    Yields:
        The :class:`PruningRecord`, filled while the decoder runs; FLOPs are added on exit.
    """
    with stage("setup"):
        record, handles = _setup(decoder, pruner, inputs)
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()
    with stage("record"):
        finish_record(record, compat.decoder_config(decoder))


def _setup(
    decoder: nn.Module, pruner: Pruner, inputs: DecoderInputs
) -> tuple[PruningRecord, list[torch.utils.hooks.RemovableHandle]]:
    """Check the inputs, run the pruner's setup and pre-decoder selection, install the hooks."""
    layers = compat.decoder_layers(decoder)
    check_layout(inputs)
    num_visual = inputs.layout.num_visual
    pruner.check_budget(len(layers), num_visual)
    pruner.camera_ratios(num_cameras(inputs))  # a ratio list for the wrong camera count fails here
    if inputs.deepstack is not None:
        check_deepstack(inputs.deepstack, inputs.layout.visual_mask.bool(), len(layers))
    pruner.setup(decoder)
    run_inputs, kept = preselect_inputs(pruner, inputs, len(layers))
    b = inputs.inputs_embeds.shape[0]
    origin = (
        kept
        if kept is not None
        else torch.arange(num_visual, device=inputs.inputs_embeds.device).expand(b, -1)
    )
    record = PruningRecord(
        inputs=run_inputs.with_(deepstack=None),  # the engine adds them (_add_deepstack)
        num_layers=len(layers),
        num_visual=num_visual,
        accounting=pruner.accounting,
        position_ids=pruner.position_ids,
        preselected=None if kept is None else kept.cpu(),
    )
    engine = _Engine(decoder, pruner, run_inputs, record, origin, inputs.layout.camera_index)
    return record, engine.install()
