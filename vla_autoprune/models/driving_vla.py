"""DrivingVLA: 6 cameras + command + ego state -> 6 waypoints, LLaVA-style.

Architecture (all transformers modules unmodified):

- vision tower: ``SiglipVisionModel`` (default) or ``CLIPVisionModel``, shared by the cameras;
- optional spatial merge (``spatial_merge_size`` m > 1, as Qwen2-VL's patch merger): each m x m
  block of neighbouring patches becomes one visual token, its features concatenated, so the tower
  sees fine patches while the decoder gets m^2 times fewer tokens;
- projector: 2-layer MLP with GELU from the vision (x m^2) to the LM hidden size (LLaVA-1.5);
- decoder: ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` built from the nested text config;
- prompt (see :mod:`vla_autoprune.models.prompt`): instruction tokens, then per camera a marker
  token and that camera's visual tokens, then command + ego-state text tokens closed by one
  learned projection of the ego state (``<ego>``), then ``K`` learned action-query embeddings;
- head: an MLP regresses the 6 waypoints from the final hidden states of ``<ego>`` and the
  action queries, as a correction to a constant-speed rollout (``kinematic_prior``) or to a
  learned linear map of speed x command (``command_prior``, :mod:`~vla_autoprune.models.waypoint_prior`).

Batches are left padded so ``<ego>`` and the action queries are always the last ``K + 1``
positions, which is how :meth:`DrivingVLA.decode` finds them in whatever (possibly pruned)
inputs it gets. The camera markers are not visual tokens (pruning never drops them), so the
visual positions are ``C`` runs of ``P`` tokens separated by one marker each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN

from vla_autoprune import compat
from vla_autoprune.compat import SubConfigSpec
from vla_autoprune.compat import weight_init as init
from vla_autoprune.data.schema import COMMANDS, EGO_STATE_FIELDS, NUM_FUTURE_STEPS
from vla_autoprune.errors import ConfigError, DataError
from vla_autoprune.models.base import DecoderInputs, DrivingModel
from vla_autoprune.models.fusion import vision_from_layer
from vla_autoprune.models.layout import build_layout
from vla_autoprune.models.prompt import (
    PromptIds,
    PromptTokenizer,
    build_prompt_ids,
    check_ego_fields,
)
from vla_autoprune.models.waypoint_prior import (
    SpeedCommandPrior,
    constant_speed_rollout,
    constant_speed_weight,
)

logger = logging.getLogger(__name__)

WAYPOINT_DIMS = 2  # (x, y) in metres, ego frame
PIXEL_MAX = 255.0  # images arrive as uint8

#: The bundled tiny architecture (what ``DrivingVLAConfig()`` builds). 96 px / 16 px patches
#: gives a 6 x 6 grid: 36 tokens per camera, 216 for six cameras, cheap enough to train on CPU.
TINY_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 96,
    "patch_size": 16,
}
#: 8 layers so that pruning over depth is meaningful; GQA (2 KV heads) as in current LMs.
#: 64 >= the prompt vocabulary (checked at model init).
TINY_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 64,
    "max_position_embeddings": 512,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}


class DrivingVLAConfig(PreTrainedConfig):
    """Config of :class:`DrivingVLA`; nests the vision (``vision_config``) and LM (``text_config``) configs.

    Attributes:
        num_action_queries: ``K`` learned query embeddings appended to the prompt.
        head_hidden_size: hidden width of the waypoint MLP head.
        waypoint_scale_m: the head predicts waypoints in units of this many metres (keeps the
            regression targets O(1): 3 s at urban speeds is a few tens of metres).
        kinematic_prior: the head predicts a correction to a constant-speed rollout of the ego
            speed instead of the whole trajectory (see :meth:`DrivingVLA.decode`).
        command_prior: with ``kinematic_prior``, the rollout the head corrects is a learned linear
            map of speed x one-hot command (:class:`SpeedCommandPrior`, initialised to the
            constant-speed rollout): the model starts from what the prompt alone predicts and its
            decoder learns what the cameras change.
        vision_from_layer: the non-visual tokens (prompt, ``<ego>``, action queries) attend to the
            visual tokens only from this decoder layer on (:mod:`~vla_autoprune.models.fusion`,
            deep fusion); 0 (the default) is plain LLaVA-style early fusion.
        ego_state_fields: which ``ego_state`` columns the model sees (``speed``, ``accel``,
            ``yaw_rate``), as text and through the ego projection. The bundled model sees the speed
            only: with the yaw rate and acceleration a kinematic extrapolation alone is already
            accurate on the synthetic set, and the model would learn to ignore its cameras.
        ego_state_scale: divisors of (speed m/s, accel m/s^2, yaw rate rad/s) before the ego
            projection: typical magnitudes in urban driving, so the inputs are O(1).
        image_mean / image_std: per-channel normalisation of [0, 1] pixels (SigLIP uses 0.5).
        spatial_merge_size: ``m``; each ``m x m`` block of the vision tower's patches becomes one
            visual token (features concatenated in row-major order within the block, then the
            projector), as Qwen2-VL merges 2 x 2 patches. 1 (the default) merges nothing. The patch
            grid's rows and columns must be multiples of ``m``.
    """

    model_type = "driving_vla"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="siglip_vision_model", init_kwargs=TINY_VISION_CONFIG
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="llama", init_kwargs=TINY_TEXT_CONFIG
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_action_queries: int = NUM_FUTURE_STEPS
    projector_hidden_act: str = "gelu"
    head_hidden_size: int = 256
    waypoint_scale_m: float = 10.0
    kinematic_prior: bool = True
    command_prior: bool = False
    vision_from_layer: int = 0
    ego_state_fields: list[str] | tuple[str, ...] = ("speed",)
    ego_state_scale: list[float] | tuple[float, ...] = (10.0, 2.0, 0.5)
    image_mean: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5)
    initializer_range: float = 0.02
    spatial_merge_size: int = 1


def sub_config(config: PreTrainedConfig, name: str) -> PreTrainedConfig:
    """The nested config ``config.<name>`` (``vision_config`` / ``text_config``), typed."""
    sub = getattr(config, name)
    if not isinstance(sub, PreTrainedConfig):
        raise TypeError(
            f"{type(config).__name__}.{name} is {type(sub).__name__}, expected a PreTrainedConfig"
        )
    return sub


class VisionProjector(nn.Module):
    """LLaVA-1.5 projector: Linear -> GELU -> Linear, vision width -> LM width."""

    def __init__(self, vision_size: int, text_size: int, act: str) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_size, text_size)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(text_size, text_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[..., vision_size]`` -> ``[..., text_size]``."""
        return self.linear_2(self.act(self.linear_1(features)))


class WaypointHead(nn.Module):
    """MLP from the final states of the ``<ego>`` token and the action queries to 6 (x, y) waypoints."""

    def __init__(self, num_states: int, text_size: int, hidden_size: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(num_states * text_size, hidden_size)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(hidden_size, NUM_FUTURE_STEPS * WAYPOINT_DIMS)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """``[B, num_states, D]`` -> ``[B, 6, 2]`` (in units of ``waypoint_scale_m``)."""
        out = self.fc_out(self.act(self.fc_in(states.flatten(1))))
        return out.view(-1, NUM_FUTURE_STEPS, WAYPOINT_DIMS)


class DrivingVLA(PreTrainedModel, DrivingModel):
    """LLaVA-style VLA driving model; see the module docstring for the prompt and layout.

    Build with ``DrivingVLA(DrivingVLAConfig(...))`` (random init) or load trained weights with
    ``DrivingVLA.from_pretrained(folder)`` / :func:`vla_autoprune.models.load`.
    """

    config_class = DrivingVLAConfig
    config: DrivingVLAConfig
    base_model_prefix = ""
    main_input_name = "images"
    _supports_sdpa = True

    def __init__(self, config: DrivingVLAConfig) -> None:
        super().__init__(config)
        vision_config, text_config = sub_config(config, "vision_config"), sub_config(config, "text_config")
        text_size = text_config.hidden_size
        self.tokenizer = PromptTokenizer()
        if text_config.vocab_size < len(self.tokenizer):
            raise ConfigError(
                f"text_config.vocab_size={text_config.vocab_size} is smaller than the prompt vocabulary "
                f"({len(self.tokenizer)} tokens); raise it to at least {len(self.tokenizer)}"
            )
        self.vision_tower = AutoModel.from_config(vision_config)
        visual_grid(config)  # refuses a spatial merge that does not divide the patch grid
        merge = int(config.spatial_merge_size)
        self.projector = VisionProjector(
            vision_config.hidden_size * merge * merge, text_size, config.projector_hidden_act
        )
        self.language_model = AutoModelForCausalLM.from_config(text_config)
        check_ego_fields(config.ego_state_fields)
        if not 0 <= config.vision_from_layer < text_config.num_hidden_layers:
            raise ConfigError(
                f"vision_from_layer={config.vision_from_layer} is outside the decoder's "
                f"{text_config.num_hidden_layers} layers; use 0 (early fusion) up to {text_config.num_hidden_layers - 1}"
            )
        self.ego_projector = nn.Linear(len(config.ego_state_fields) + len(COMMANDS), text_size)
        self.action_queries = nn.Parameter(torch.empty(config.num_action_queries, text_size))
        self.waypoint_head = WaypointHead(config.num_action_queries + 1, text_size, config.head_hidden_size)
        self.command_prior = (
            SpeedCommandPrior(len(COMMANDS)) if config.kinematic_prior and config.command_prior else None
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            init.normal_(self.action_queries, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, SpeedCommandPrior):
            init.copy_(module.weight, constant_speed_weight(module.num_commands))

    # ------------------------------------------------------------------ DrivingModel API

    @property
    def decoder(self) -> nn.Module:
        """The unmodified causal LM (``LlamaForCausalLM`` / ``Qwen2ForCausalLM``)."""
        return self.language_model

    @property
    def patch_grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of visual tokens per camera: the vision tower's patch grid after the
        spatial merge."""
        return visual_grid(self.config)

    def prepare(self, batch: dict[str, Any]) -> DecoderInputs:
        """Encode a collated batch (``images`` uint8 ``[B, C, 3, H, W]``, ``command``, ``ego_state``).

        Returns left-padded decoder inputs of length ``N = max_b N_b`` with explicit position ids
        (``cumsum(attention_mask) - 1``) and ``extras = {"ego_speed": [B], "command": [B]}`` (what
        the waypoint prior reads in :meth:`decode`).
        """
        images = batch["images"]
        if images.dim() != 5 or images.shape[2] != 3:
            raise DataError(
                f"batch['images'] must be uint8 [B, C, 3, H, W], got shape {tuple(images.shape)}; "
                "collate samples with vla_autoprune.data"
            )
        cameras = list(batch["cameras"])
        if len(cameras) != images.shape[1]:
            raise DataError(
                f"batch['cameras'] names {len(cameras)} cameras but images hold {images.shape[1]}; "
                "give one camera name per image, in image order"
            )
        visual, saliency = self.encode_images(images)
        fields = self.config.ego_state_fields
        prompt = build_prompt_ids(self.tokenizer, cameras, batch["command"], batch["ego_state"], fields)
        ego = self.ego_projector(self.ego_features(batch["ego_state"], batch["command"]))
        ego_speed = batch["ego_state"][:, EGO_STATE_FIELDS.index("speed")].to(self.device, torch.float32)
        extras = {"ego_speed": ego_speed, "command": batch["command"].to(self.device)}
        inputs = self._assemble(prompt, visual, ego, saliency, extras)
        return inputs.with_(sample_ids=tuple(batch["sample_token"]) if "sample_token" in batch else None)

    def decode(self, inputs: DecoderInputs) -> torch.Tensor:
        """Run the decoder and regress waypoints float32 ``[B, 6, 2]``.

        The head reads the final hidden states of the last ``K + 1`` positions (``<ego>`` and the
        ``K`` action queries; left padding keeps them last, also when a pruner shortened the
        sequence). With ``kinematic_prior`` its output is a correction added to a constant-speed
        rollout of ``extras["ego_speed"]`` (with ``command_prior``: to the learned speed x command
        map of ``extras["ego_speed"]`` and ``extras["command"]``), so the decoder only has to learn
        what the command and the cameras change (turns, braking); a tiny model trained from scratch
        learns that far faster than the whole trajectory.
        """
        readout = self.config.num_action_queries + 1
        position_ids = inputs.position_ids
        if position_ids is None:
            position_ids = (inputs.attention_mask.cumsum(-1) - 1).clamp(min=0)
        first = self.config.vision_from_layer
        fusion: AbstractContextManager[None] = nullcontext()
        if first:
            if inputs.layout is None:
                raise ConfigError(
                    f"this model reads its cameras from decoder layer {first} on (vision_from_layer) and "
                    "needs inputs.layout to find the visual tokens; pass the inputs prepare() returned"
                )
            layers = compat.decoder_layers(self.language_model)
            fusion = vision_from_layer(layers, first, inputs.layout.visual_mask)
        with fusion:
            out = self.language_model.model(
                inputs_embeds=inputs.inputs_embeds,
                attention_mask=inputs.attention_mask,
                position_ids=position_ids,
                use_cache=False,
            )
        waypoints = (
            self.waypoint_head(out.last_hidden_state[:, -readout:]).float() * self.config.waypoint_scale_m
        )
        if self.command_prior is not None:
            waypoints = waypoints + self.command_prior(_extra(inputs, "ego_speed"), _extra(inputs, "command"))
        elif self.config.kinematic_prior:
            waypoints = waypoints + constant_speed_rollout(_extra(inputs, "ego_speed"))
        return waypoints

    # ------------------------------------------------------------------ encoding pieces

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` the vision tower takes."""
        return _pair(sub_config(self.config, "vision_config").image_size)

    def preprocess_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, 3, H, W]`` -> normalised pixels ``[B * C, 3, *image_size]`` in the model dtype."""
        pixels = self._resized(images.to(self.device).flatten(0, 1).float())
        mean = torch.tensor(self.config.image_mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.image_std, device=pixels.device).view(1, 3, 1, 1)
        return ((pixels / PIXEL_MAX - mean) / std).to(self.dtype)

    def resize_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., 3, H, W]`` -> uint8 ``[..., 3, *image_size]``, resized as :meth:`prepare` does.

        Lets a caller cache a dataset at the tower's input size (rounding to uint8 moves a pixel by
        at most half a level).
        """
        lead = images.shape[:-3]
        pixels = self._resized(images.reshape(-1, *images.shape[-3:]).float())
        return pixels.round().clamp(0, PIXEL_MAX).to(torch.uint8).reshape(*lead, *pixels.shape[-3:])

    def _resized(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float ``[N, 3, H, W]`` resized (bilinear, antialiased) to ``image_size`` unless already there."""
        if tuple(pixels.shape[-2:]) == self.image_size:
            return pixels
        return F.interpolate(
            pixels, size=self.image_size, mode="bilinear", antialias=True, align_corners=False
        )

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projected visual tokens ``[B, C * P, D]`` and vision saliency ``[B, C * P]`` (or None)."""
        b, c = images.shape[:2]
        pixels = self.preprocess_images(images)
        with vision_saliency_hook(self.vision_tower) as saliency:
            out = self.vision_tower(pixel_values=pixels)
        features = out.last_hidden_state
        merge = int(self.config.spatial_merge_size)
        if features.shape[1] == self.num_patches * merge * merge + 1:  # CLIP prepends [CLS]
            features = features[:, 1:]
        grid = patch_grid(sub_config(self.config, "vision_config"))
        visual = self.projector(merge_patches(features, grid, merge)).reshape(b, c * self.num_patches, -1)
        sal = saliency.value
        if sal is not None and merge > 1:  # a merged token's saliency: its patches' (same total)
            sal = merge_patches(sal.unsqueeze(-1), grid, merge).sum(-1)
        return visual, None if sal is None else sal.reshape(b, c * self.num_patches)

    @property
    def num_patches(self) -> int:
        """Visual tokens per camera, ``P = rows * cols``."""
        rows, cols = self.patch_grid
        return rows * cols

    def ego_features(self, ego_state: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        """Input of the ``<ego>`` projection: scaled ego fields and the one-hot command, ``[B, F + 3]``.

        The command is spelled in the prompt too; repeating it here puts it into the ``<ego>``
        token's own residual stream, which the head reads, so the model needs no attention to
        use it and training spends its steps on what only the cameras tell.
        """
        onehot = F.one_hot(command.to(self.device), len(COMMANDS)).to(self.dtype)
        return torch.cat([self._scaled_ego_state(ego_state), onehot], dim=1)

    def _scaled_ego_state(self, ego_state: torch.Tensor) -> torch.Tensor:
        """The configured fields of ``ego_state`` ``[B, 3]``, each divided by its scale: ``[B, F]``."""
        if ego_state.dim() != 2 or ego_state.shape[1] != len(EGO_STATE_FIELDS):
            raise DataError(
                f"batch['ego_state'] must be [B, {len(EGO_STATE_FIELDS)}] with columns "
                f"{list(EGO_STATE_FIELDS)}, got {tuple(ego_state.shape)}"
            )
        columns = [EGO_STATE_FIELDS.index(f) for f in self.config.ego_state_fields]
        scale = torch.tensor(self.config.ego_state_scale, device=self.device)[columns]
        return (ego_state.to(self.device).float()[:, columns] / scale).to(self.dtype)

    def _assemble(
        self,
        prompt: PromptIds,
        visual: torch.Tensor,
        ego: torch.Tensor,
        saliency: torch.Tensor | None,
        extras: dict[str, torch.Tensor],
    ) -> DecoderInputs:
        """Lay out ``prompt`` + visual tokens ``[B, V, D]`` + ego ``[B, D]`` + action queries, left padded."""
        ids, kinds = _sequence_ids(
            prompt, self.num_patches, self.tokenizer.ego_id, self.config.num_action_queries
        )
        ids, kinds = ids.to(self.device), kinds.to(self.device)
        embeds = self.language_model.get_input_embeddings()(ids)
        b, n, d = embeds.shape
        visual_mask = kinds == _VISUAL
        embeds = embeds.masked_scatter(visual_mask.unsqueeze(-1), visual.to(embeds.dtype))
        embeds = embeds.masked_scatter((kinds == _EGO).unsqueeze(-1), ego.to(embeds.dtype))
        queries = self.action_queries.to(embeds.dtype).expand(b, -1, -1)
        embeds = embeds.masked_scatter((kinds == _QUERY).unsqueeze(-1), queries)
        attention_mask = (kinds != _PAD).long()
        layout = build_layout(visual_mask, attention_mask, len(prompt.camera_markers), self.patch_grid)
        return DecoderInputs(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
            layout=layout,
            vision_saliency=saliency,
            extras=extras,
            readout_tokens=self.config.num_action_queries,
            text_sees_visual_from=self.config.vision_from_layer,
        )


# ---------------------------------------------------------------------- vision saliency


@dataclass
class CapturedSaliency:
    """Filled by :func:`vision_saliency_hook`: float32 ``[N_images, P]`` or None."""

    value: torch.Tensor | None = None


@contextmanager
def vision_saliency_hook(vision_tower: nn.Module, clip_layer: int | None = -1) -> Iterator[CapturedSaliency]:
    """While active, each vision-tower forward records per-patch saliency ``[N_images, P]``.

    SigLIP: the pooling head's probe attention over the patches; CLIP: the [CLS] row of the
    attention of encoder layer ``clip_layer`` (None: no saliency). Both are recomputed from the module inputs a
    forward pre-hook sees (head-averaged, fp32), so any attention implementation works.
    Towers with neither leave ``value`` None.
    """
    captured = CapturedSaliency()
    head = getattr(vision_tower, "head", None)
    if isinstance(head, nn.Module) and hasattr(head, "probe"):

        def siglip_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured.value = probe_attention(module, args[0])

        handle = head.register_forward_pre_hook(siglip_hook)
    elif clip_layer is not None and hasattr(getattr(vision_tower, "embeddings", None), "class_embedding"):

        def clip_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            captured.value = cls_attention(module, hidden)[:, 1:]  # drop [CLS] -> [CLS] itself

        attn = vision_tower.encoder.layers[clip_layer].self_attn  # type: ignore[union-attr,index]
        handle = attn.register_forward_pre_hook(clip_hook, with_kwargs=True)
    else:
        yield captured
        return
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def probe_attention(head: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention ``[N, P]`` of a SigLIP pooling head's probe over ``hidden`` ``[N, P, D]``.

    Recomputes ``head.attention`` (an ``nn.MultiheadAttention`` with packed in-projection) for
    the single probe query.
    """
    mha = head.attention
    heads, head_dim = mha.num_heads, mha.head_dim
    w_q, w_k, _ = mha.in_proj_weight.chunk(3)
    b_q, b_k, _ = mha.in_proj_bias.chunk(3)
    q = F.linear(head.probe[0, 0], w_q, b_q).view(heads, head_dim).float()  # (h, hd)
    k = F.linear(hidden, w_k, b_k).view(*hidden.shape[:2], heads, head_dim).float()  # (N, P, h, hd)
    logits = torch.einsum("hd,nphd->nhp", q, k) * head_dim**-0.5
    return logits.softmax(dim=-1).mean(dim=1)


@torch.no_grad()
def cls_attention(attn: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention ``[N, T]`` of token 0 ([CLS]) over all ``T`` tokens of ``hidden`` ``[N, T, D]``.

    ``attn`` is a CLIP-style attention module (``q_proj``, ``k_proj``, ``num_heads``, ``scale``);
    vision towers attend bidirectionally, so there is no mask.
    """
    n, t, _ = hidden.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q = attn.q_proj(hidden[:, :1]).view(n, heads, head_dim).float()  # (N, h, hd)
    k = attn.k_proj(hidden).view(n, t, heads, head_dim).float()  # (N, T, h, hd)
    logits = torch.einsum("nhd,nthd->nht", q, k) * attn.scale
    return logits.softmax(dim=-1).mean(dim=1)


def _extra(inputs: DecoderInputs, name: str) -> torch.Tensor:
    extras = inputs.extras or {}
    if name not in extras:
        raise ValueError(
            f"DecoderInputs.extras has no {name!r} (the waypoint prior needs it); keep the extras of "
            "DrivingVLA.prepare when building new inputs (DecoderInputs.with_ does)"
        )
    return extras[name]


def patch_grid(vision_config: PreTrainedConfig) -> tuple[int, int]:
    """``(rows, cols)`` patch grid of a vision config (``image_size`` / ``patch_size``, int or pair)."""
    rows, cols = _pair(vision_config.image_size)
    patch_rows, patch_cols = _pair(vision_config.patch_size)
    return rows // patch_rows, cols // patch_cols


def visual_grid(config: DrivingVLAConfig) -> tuple[int, int]:
    """``(rows, cols)`` of visual tokens per camera: the patch grid divided by ``spatial_merge_size``.

    Raises ConfigError (naming the fix) when the merge is below 1 or does not divide the grid.
    """
    rows, cols = patch_grid(sub_config(config, "vision_config"))
    merge = config.spatial_merge_size
    if not isinstance(merge, int) or merge < 1 or rows % merge or cols % merge:
        raise ConfigError(
            f"spatial_merge_size={merge!r} must be an int >= 1 dividing the {rows} x {cols} patch grid "
            "(image_size / patch_size); use 1 (no merge) or a common divisor of both"
        )
    return rows // merge, cols // merge


def merge_patches(features: torch.Tensor, grid: tuple[int, int], merge: int) -> torch.Tensor:
    """``[N, R * C, D]`` patch features (row-major ``grid = (R, C)``) -> ``[N, R/m * C/m, m * m * D]``:
    each ``m x m`` block one row, its patches' features concatenated row-major; ``m = 1`` returns
    ``features`` itself."""
    if merge == 1:
        return features
    n, _, d = features.shape
    rows, cols = grid
    blocks = features.reshape(n, rows // merge, merge, cols // merge, merge, d).permute(0, 1, 3, 2, 4, 5)
    return blocks.reshape(n, (rows // merge) * (cols // merge), merge * merge * d)


def _pair(value: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


# ---------------------------------------------------------------------- sequence assembly

# Token kinds of the assembled sequence.
_PAD, _TEXT, _VISUAL, _EGO, _QUERY = range(5)


def _sequence_ids(
    prompt: PromptIds, num_patches: int, ego_id: int, num_queries: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded token ids and token kinds, both int64 ``[B, N]`` (ids are 0 at non-text slots)."""
    rows: list[tuple[list[int], list[int]]] = []
    for suffix in prompt.suffixes:
        ids = list(prompt.prefix)
        kinds = [_TEXT] * len(ids)
        for marker in prompt.camera_markers:
            ids += [marker] + [0] * num_patches
            kinds += [_TEXT] + [_VISUAL] * num_patches
        ids += suffix + [0] * num_queries
        kinds += [_EGO if t == ego_id else _TEXT for t in suffix] + [_QUERY] * num_queries
        rows.append((ids, kinds))
    n = max(len(ids) for ids, _ in rows)
    ids_t = torch.zeros(len(rows), n, dtype=torch.long)
    kinds_t = torch.full((len(rows), n), _PAD, dtype=torch.long)
    for i, (ids, kinds) in enumerate(rows):
        ids_t[i, n - len(ids) :] = torch.tensor(ids)
        kinds_t[i, n - len(kinds) :] = torch.tensor(kinds)
    return ids_t, kinds_t
