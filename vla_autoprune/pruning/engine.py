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
``prune()`` entry (text width, whether every row has it) and, after the last layer, the copies the
record is worked out from. A merge that gives no ``count_host`` costs one sync. Host ints go to the device with
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

import numpy as np
import torch
from torch import nn

from vla_autoprune import compat
from vla_autoprune.devices import device_ints
from vla_autoprune.indexing import gather_rows, scatter_rows_, true_indices
from vla_autoprune.models.base import DecoderInputs
from vla_autoprune.models.deepstack import add_at_visual, check_deepstack
from vla_autoprune.profiling import stage
from vla_autoprune.pruning.cameras import camera_choice, camera_counts, rank_order
from vla_autoprune.pruning.flops import decoder_flops_from_config
from vla_autoprune.pruning.kept_tokens import MemberTracker, MergeEvent, packed_kept
from vla_autoprune.pruning.positions import first_real_position, sequence_positions
from vla_autoprune.pruning.preselection import check_layout, preselect_inputs
from vla_autoprune.pruning.pruner import LayerView, Merge, Pruner, SlotIndex

logger = logging.getLogger(__name__)

# Rows of a ragged batch are padded with dropped tokens; this index marks "no slot" while sorting.
_NO_SLOT = torch.iinfo(torch.int64).max


@dataclass
class PruningRecord:
    """What a pruned forward actually processed (the last prefill inside the ``prune`` block).

    Attributes:
        inputs: the decoder inputs to run (shorter than the given ones after pre-selection).
        num_layers: ``L``.
        num_visual: ``V``, visual tokens of the inputs given to :func:`prune`.
        accounting: the budget accounting the pruner used (``actual`` or ``reference``).
        position_ids: ``original`` or ``contiguous``, the position ids survivors were given.
        preselected: int64 ``[B, n0]`` visual indices kept before the decoder, or None.
        visual_tokens: int64 ``[B, L]``, valid visual tokens (merged ones included) entering each layer.
        merged_tokens: int64 ``[B, L]``, how many of those were made by merging.
        tokens: int64 ``[B, L]``, valid non-padding tokens entering each layer (per-sample cost).
        seq_len: int64 ``[L]``, sequence length each layer ran on (padding and fillers included).
        kept_visual: per layer, int64 ``[B, Kv]`` indices (into the given inputs' ``V`` visual
            tokens, ascending, -1 padded) of the original visual tokens entering the layer.
        merged_into: per layer, int64 ``[B, V]``: the merged token (numbered ``0..`` in sequence
            order among the layer's merged tokens) that holds original visual token ``v``, -1 for
            none; filled when the pruner's merges name their members (:class:`Merge` ``members``).
        schedule: int64 ``[B, L]``, the pruner's last schedule (counts handed on), or None.
        stats: per-sample numbers the pruner reported, name -> ``[B]`` (AutoPrune: ``mi``, the
            mutual information, and ``k``, the logistic slope).
        flops: int64 ``[B]``, decoder-layer MACs per sample from ``tokens`` (flops.py, the
            ``gqa`` count; the paper's "FLOPs").
        scoring_flops: int64 ``[B]``, MACs of the extra work spent choosing tokens (re-scored
            attention rows, rater selection), kept apart from ``flops``.
        camera_tokens: int64 ``[B, L, C]``, original visual tokens of each camera entering each
            layer (merged tokens not counted).
    """

    inputs: DecoderInputs
    num_layers: int
    num_visual: int
    accounting: str
    position_ids: str = "original"
    preselected: torch.Tensor | None = None
    visual_tokens: torch.Tensor | None = None
    merged_tokens: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    seq_len: torch.Tensor | None = None
    kept_visual: list[torch.Tensor | None] = field(default_factory=list)
    merged_into: list[torch.Tensor | None] = field(default_factory=list)
    schedule: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    flops: torch.Tensor | None = None
    scoring_flops: torch.Tensor | None = None
    camera_tokens: torch.Tensor | None = None

    def mean_visual_tokens(self) -> torch.Tensor:
        """float ``[B]``: visual tokens per layer, averaged over the ``L`` layers (the budget measure)."""
        if self.visual_tokens is None:
            raise RuntimeError("nothing recorded yet: run the decoder inside the prune() block")
        return self.visual_tokens.double().mean(dim=1)


@dataclass
class _Slots:
    """The token slots of a batch at one layer.

    ``src`` int64 ``[B, K]``: index into the run inputs' sequence (merged tokens: their
    representative's); ``valid`` bool ``[B, K]`` (False for fillers); ``merged`` bool ``[B, K]``;
    ``identity``: nothing has been dropped (the slots are the input sequence itself). Known on the
    host, so the hooks need no sync for them: ``visual_width``, the visual slots per row (every row
    has as many), ``alive``, each row's valid visual tokens, ``ragged``, whether some slot is a
    filler, and ``has_merged``, whether some slot may be a merged token.
    """

    src: torch.Tensor
    valid: torch.Tensor
    merged: torch.Tensor
    identity: bool
    visual_width: int
    alive: list[int]  # on the host: valid visual tokens per row
    ragged: bool = False
    has_merged: bool = False
    # The merge that made these slots, when it named its members: (the slots it ran on, their
    # visual slots [B, Kv], Merge.members, Merge.representative); replayed on the host afterwards.
    joined: tuple[_Slots, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # What every layer that runs on these slots gets (computed at the first, reused until a drop).
    tokens: list[int] | None = None  # on the host: valid real tokens per row
    tokens_tensor: torch.Tensor | None = None  # the same as a tensor (LayerView.tokens)
    layer_kwargs: dict[str, Any] | None = None  # position ids, (cos, sin) and mask
    index: SlotIndex | None = None  # where the visual and text tokens sit (on first use, or from the drop)

    @property
    def length(self) -> int:
        return int(self.src.shape[1])


@dataclass
class _Forward:
    """State of one prefill, anchored on what layer 0 received."""

    slots: _Slots
    layer_slots: list[_Slots | None]
    cos: torch.Tensor  # [B, N, rd]
    sin: torch.Tensor  # [B, N, rd]
    position_ids: torch.Tensor  # [B, N]
    first_position: torch.Tensor  # [B, 1]: position id of each row's first real token
    mask_template: torch.Tensor | None  # layer 0's mask: None (SDPA causal) or its encoding
    schedule: torch.Tensor | None = None
    schedule_host: list[list[int]] | None = None  # the same, on the host (copied once per change)
    scratch: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Block:
    """The visual tokens a pruning layer hands on, ``[B, W]`` each, with their sequence sort keys."""

    src: torch.Tensor
    valid: torch.Tensor
    merged: torch.Tensor
    rows: torch.Tensor  # where each entry's hidden state is: a slot of the layer output, or K + merged index
    keys: torch.Tensor
    merged_hidden: torch.Tensor | None = None  # [B, R, D] in the output's dtype, when some row merges
    merge: Merge | None = None  # the merge, for the record (its members and representatives)


def num_cameras(inputs: DecoderInputs) -> int:
    """``C``: cameras are numbered ``0..C-1`` in ``layout.camera_index``."""
    camera = inputs.layout.camera_index
    return int(camera.max()) + 1 if camera.numel() else 0


def _host(x: torch.Tensor) -> np.ndarray:
    """``x`` as a numpy array (a view when it is already on the CPU)."""
    return (x if x.device.type == "cpu" else x.cpu()).numpy()


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
        self.text = layout.text_mask.bool()
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
                self.text.sum(dim=1),
                (self.real & ~self.visual).sum(dim=1),
                (self.visual & ~self.real).sum(dim=1),
            ]
        ).tolist()
        self.text_counts, self.fixed_tokens, padded_visual = per_row
        self.text_width = max(self.text_counts, default=0)
        self.text_full = min(self.text_counts, default=0) == self.text_width
        self.visual_real = not any(padded_visual)  # then a row's real tokens are fixed + alive visual
        self.scoring_host: list[int] = []  # scoring MACs counted on the host (added to the record once)
        self.camera = layout.camera_index
        self.camera_ratios = pruner.camera_ratios(num_cameras(inputs))
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
            slots=_Slots(
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

    def _tokens(self, slots: _Slots) -> list[int]:
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
        self._fill_kept(layers)
        if any(self.scoring_host) and rec.scoring_flops is not None:
            rec.scoring_flops += device_ints(self.scoring_host, rec.scoring_flops.device)

    def _fill_kept(self, layers: list[_Slots]) -> None:
        """The record's ``kept_visual``, ``merged_tokens``, ``merged_into`` and ``camera_tokens``, on the host.

        Worked out once per distinct set of slots from the slots and the merges that made them
        (:mod:`vla_autoprune.pruning.kept_tokens`), after the last layer: no op in the hooks.
        """
        rec = self.record
        visual, origin = _host(self.visual), _host(self.visual_origin)
        cameras = _host(self.given_cameras)
        count_cameras = int(cameras.max()) + 1 if cameras.size else 0
        b, n = visual.shape
        tracker: MemberTracker | None = None
        # per distinct set of slots: its src, valid and merged flags on the host
        host: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        done: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]] = {}
        for slots in layers:
            if id(slots) in done:
                continue
            if slots.joined is not None:
                parent, visual_slots, members, representative = slots.joined
                parent_src, _, parent_merged = host[id(parent)]  # the parent ran on an earlier layer
                vs = _host(visual_slots)
                event = MergeEvent(
                    slot_src=np.take_along_axis(parent_src, vs, axis=1),
                    slot_merged=np.take_along_axis(parent_merged, vs, axis=1),
                    members=_host(members),
                    representative=_host(representative),
                )
                tracker = tracker or MemberTracker(b, rec.num_visual, n)
                tracker.join(event, origin)
            arrays = host[id(slots)] = (_host(slots.src), _host(slots.valid), _host(slots.merged))
            kept, count = packed_kept(*arrays, visual, origin)
            into = None if tracker is None else torch.from_numpy(tracker.merged_into(*arrays, visual))
            per_camera = torch.from_numpy(camera_counts(kept, cameras, count_cameras))
            done[id(slots)] = (torch.from_numpy(kept), torch.from_numpy(count), into, per_camera)
        per_layer = [done[id(s)] for s in layers]
        rec.kept_visual = [kept for kept, _, _, _ in per_layer]
        rec.merged_tokens = torch.stack([count for _, count, _, _ in per_layer], 1)
        rec.merged_into = [into for _, _, into, _ in per_layer]
        rec.camera_tokens = torch.stack([per_camera for _, _, _, per_camera in per_layer], 1)

    def _positions(self, state: _Forward, slots: _Slots, hidden: torch.Tensor) -> dict[str, Any]:
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
        slots: _Slots,
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
                return compat.with_output_hidden(output, self._restore(state.slots, hidden_out))
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
        merges = any(c > 0 for c in clusters_host)
        view.merge_host = ([a - k for a, k in zip(alive, kept_host, strict=True)], clusters_host)
        with stage("score"):
            scores = self.pruner.score(view)
        with stage("select"):
            state.slots, new_hidden = self._drop(view, state.slots, scores, kept, clusters, merges, kept_host)
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
            slot_index=partial(self._slot_index, state.slots),
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

    def _slot_index(self, slots: _Slots) -> SlotIndex:
        """Where the visual and text tokens sit among ``slots`` (computed only when a pruner asks, once)."""
        if slots.index is not None:
            return slots.index
        src = slots.src
        # Every row has visual_width visual slots (check_layout, and each drop keeps rows equal).
        visual_slots, _ = true_indices(self.visual.gather(1, src), slots.visual_width)
        text_slots, text_ok = true_indices(self.text.gather(1, src) & slots.valid, self.text_width)
        slots.index = SlotIndex(
            visual_slots=visual_slots,
            visual_valid=slots.valid.gather(1, visual_slots),
            visual_index=self.visual_rank.gather(1, src.gather(1, visual_slots)),
            text_slots=text_slots,
            text_valid=text_ok,
        )
        return slots.index

    def _moved_index(self, old: SlotIndex, perm: torch.Tensor, block: _Block, k: int) -> SlotIndex | None:
        """The new slots' :class:`SlotIndex` from the drop's sort ``perm`` ``[B, K + W]`` (no index sorts).

        Block entry ``j`` (sort input ``K + j``) lands at ``inv[K + j]``, ascending in ``j`` (distinct
        keys, ties in entry order), so those are the new visual slots in order; text slots keep their
        order and only move. Padded text entries (rows with fewer text tokens) could point at a dropped
        slot, so with them (not ``text_full``) this returns None and the index is recomputed.
        """
        if not self.text_full:
            return None
        b = perm.shape[0]
        inv = torch.empty_like(perm).scatter_(
            1, perm, torch.arange(perm.shape[1], device=perm.device).expand(b, -1)
        )
        return SlotIndex(
            visual_slots=inv[:, k:].contiguous(),
            visual_valid=block.valid,
            visual_index=self.visual_rank.gather(1, block.src),
            text_slots=inv.gather(1, old.text_slots),
            text_valid=old.text_valid,
        )

    def _drop(
        self,
        view: LayerView,
        slots: _Slots,
        scores: torch.Tensor,
        kept: torch.Tensor,
        clusters: torch.Tensor,
        merges: bool,
        kept_host: list[int],
    ) -> tuple[_Slots, torch.Tensor]:
        """New slots and hidden states after keeping ``kept`` [B] top-scored visual tokens per row.

        Kept visual tokens (and a row's fillers) stay where they were, merged tokens go right after
        the last visual slot; non-visual tokens keep their order. ``merges``: whether any row
        merges; ``kept_host``: ``kept`` on the host.
        """
        block, alive = self._visual_block(view, slots, scores, kept, clusters, merges, kept_host)
        b, k = slots.src.shape
        visual = self.visual.gather(1, slots.src)
        # Sort keys: 2 * slot index; merged tokens 2 * (last visual slot) + 1; old visual slots last.
        old_keys = torch.where(visual, _NO_SLOT, 2 * torch.arange(k, device=visual.device))
        keys = torch.cat([old_keys, block.keys], dim=1)
        length = k - view.visual_slots.shape[1] + block.keys.shape[1]
        perm = torch.argsort(keys, dim=1, stable=True)
        order = perm[:, :length]

        def arrange(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            return torch.cat([old, new], dim=1).gather(1, order)

        new_slots = _Slots(
            src=arrange(slots.src, block.src),
            valid=arrange(slots.valid, block.valid),
            merged=arrange(slots.merged, block.merged),
            identity=False,
            visual_width=int(block.keys.shape[1]),
            alive=alive,
            ragged=min(alive) < block.keys.shape[1],
            has_merged=slots.has_merged or block.merged_hidden is not None,
        )
        members = None if block.merge is None else block.merge.members
        if block.merge is not None and members is not None:
            new_slots.joined = (slots, view.visual_slots, members, block.merge.representative)
        if slots.index is not None:
            new_slots.index = self._moved_index(slots.index, perm, block, k)
        # One gather of the hidden states: each new slot's row of the output (or of the merged ones).
        rows = arrange(torch.arange(k, device=visual.device).expand(b, k), block.rows)
        source = (
            view.output if block.merged_hidden is None else torch.cat([view.output, block.merged_hidden], 1)
        )
        return new_slots, gather_rows(source, rows)

    def _visual_block(
        self,
        view: LayerView,
        slots: _Slots,
        scores: torch.Tensor,
        kept: torch.Tensor,
        clusters: torch.Tensor,
        merges: bool,
        kept_host: list[int],
    ) -> tuple[_Block, list[int]]:
        """The visual tokens handed on: each row's top slots (kept, then fillers), then merged ones.

        Also each row's valid tokens in the block, on the host (``merges``, ``kept_host``: as in
        :meth:`_drop`).
        """
        vs, vv = view.visual_slots, view.visual_valid
        b, kv = vs.shape
        # Rank: valid before fillers, then each camera's share (per_camera), then by score.
        preferred = None
        if self.camera_ratios is not None:
            camera = self.camera.gather(1, view.visual_index)
            preferred = camera_choice(scores, vv, camera, kept, self.camera_ratios)
        order = rank_order(scores, vv if slots.ragged else None, preferred)  # not ragged: all valid
        slot_range = torch.arange(kv, device=vs.device)
        rank = torch.empty_like(order).scatter_(1, order, slot_range.expand(b, kv))
        is_kept = rank < kept.unsqueeze(1)
        merge = None
        if merges:  # a range only where a merge runs (a FastV trace shows no merge stage)
            with stage("merge"):
                merge = self.pruner.merge(view, scores, vv & ~is_kept, clusters)
        if merge is None:
            return self._kept_block(vs, slots, rank, is_kept, slot_range, max(kept_host)), kept_host
        r = merge.valid.sum(1)
        # a row's block: kept + r real entries, the first r merged ones, each valid or a filler
        if merge.count_host is not None:  # the first r are the valid ones, r known on the host
            entries = alive = [k + m for k, m in zip(kept_host, merge.count_host, strict=True)]
        else:  # one host sync
            first_r = torch.arange(merge.valid.shape[1], device=r.device) < r.unsqueeze(1)
            entries, alive = torch.stack([kept + r, kept + (first_r & merge.valid).sum(1)]).tolist()
        width = max(entries)
        real = (width - r).unsqueeze(1)  # real (kept + filler) entries per row
        chosen = torch.where(rank < real, slot_range, _NO_SLOT)
        pos = chosen.sort(dim=1).values[:, :width]  # index into the visual slots, in sequence order
        entry = torch.arange(width, device=vs.device)
        is_real = entry.expand(b, -1) < real
        pos = torch.where(is_real, pos, 0)
        at = vs.gather(1, pos)  # the block's slots (in this layer's sequence)
        m = (entry - real).clamp(min=0, max=merge.hidden.shape[1] - 1)
        rep_src = slots.src.gather(1, vs.gather(1, merge.representative.gather(1, m)))
        block = _Block(
            src=torch.where(is_real, slots.src.gather(1, at), rep_src),
            valid=(is_real & is_kept.gather(1, pos)) | (~is_real & merge.valid.gather(1, m)),
            merged=~is_real | slots.merged.gather(1, at),  # merged earlier stay merged
            rows=torch.where(is_real, at, view.output.shape[1] + m),
            keys=torch.where(is_real, 2 * at, 2 * vs[:, -1:] + 1),
            merged_hidden=merge.hidden.to(view.output.dtype),
            merge=merge,
        )
        return block, alive

    @staticmethod
    def _kept_block(
        vs: torch.Tensor,
        slots: _Slots,
        rank: torch.Tensor,
        is_kept: torch.Tensor,
        slot_range: torch.Tensor,
        width: int,
    ) -> _Block:
        """:meth:`_visual_block` without merged tokens: each row's ``width`` top-ranked visual slots.

        ``vs`` ``[B, Kv]`` visual slots, ``rank`` / ``is_kept`` ``[B, Kv]`` their rank and whether
        they are kept, ``slot_range`` ``0..Kv-1``; every entry is real (a kept token or a filler).
        """
        chosen = torch.where(rank < width, slot_range, _NO_SLOT)
        pos = chosen.sort(dim=1).values[:, :width]  # index into the visual slots, in sequence order
        at = vs.gather(1, pos)  # the block's slots (in this layer's sequence)
        return _Block(
            src=slots.src.gather(1, at),
            valid=is_kept.gather(1, pos),
            merged=slots.merged.gather(1, at),  # merged earlier stay merged
            rows=at,
            keys=2 * at,
        )

    def _restore(self, slots: _Slots, hidden: torch.Tensor) -> torch.Tensor:
        """Scatter the last layer's output back to the input length (dropped positions stay zero)."""
        b, _, d = hidden.shape
        n = self.real.shape[1]
        keep = slots.valid & ~slots.merged
        target = torch.where(keep, slots.src, n)  # dropped rows go to a spare column, cut below
        full = scatter_rows_(hidden.new_zeros(b, n + 1, d), target, hidden)
        return full[:, :n]


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
        _finish(record, compat.decoder_config(decoder))


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


def _finish(record: PruningRecord, config: Any) -> None:
    """Move the counts to the host and add FLOPs (once, after the block)."""
    if record.tokens is None or record.seq_len is None:
        logger.warning("prune(): the decoder did not run inside the block; the record is empty")
        return
    for name in ("visual_tokens", "merged_tokens", "tokens", "seq_len", "schedule", "scoring_flops"):
        value = getattr(record, name)
        if value is not None:
            setattr(record, name, value.cpu())
    record.stats = {key: value.detach().cpu() for key, value in record.stats.items()}
    record.flops = decoder_flops_from_config(record.tokens, config)
