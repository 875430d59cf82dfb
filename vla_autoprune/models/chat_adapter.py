"""The shared base of language-output VLA adapters (LLaVA, Qwen2.5-VL): text in, waypoints as text out.

A subclass wraps an unmodified transformers image-text-to-text model: its :meth:`prepare` builds
the prompts (one image per camera, introduced by its camera name, then the command and the ego
speed) and merges the image features into ``inputs_embeds``. This base runs greedy ``generate()``
on those inputs and parses each answer strictly (:mod:`vla_autoprune.models.waypoint_text`);
malformed answers become NaN waypoints and are counted in :attr:`ChatDrivingAdapter.parse_stats`.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Any

import torch

from vla_autoprune.data.schema import COMMANDS, EGO_STATE_FIELDS
from vla_autoprune.errors import ConfigError
from vla_autoprune.models.base import DecoderInputs, DrivingModel
from vla_autoprune.models.prompt import COMMAND_PHRASES
from vla_autoprune.models.waypoint_text import ParseStats, parse_waypoint_batch

logger = logging.getLogger(__name__)

#: Enough tokens for six pairs like "(-12.34, 5.67)" even with a character-level tokenizer
#: (6 * 16 characters + separators ~ 110); generation stops earlier at EOS.
DEFAULT_MAX_NEW_TOKENS = 128

PROMPT_TASK = (
    "Predict the next 6 waypoints (x forward, y left, metres, 0.5 s apart) as [(x1, y1), ..., (x6, y6)]."
)


@dataclass(frozen=True)
class WaypointGeneration:
    """Result of one greedy generation: ``waypoints`` float32 ``[B, 6, 2]`` (NaN where
    malformed), ``ok`` bool ``[B]`` and the generated ``texts``."""

    waypoints: torch.Tensor
    ok: torch.Tensor
    texts: list[str]


def instruction_text(command: int, speed: float) -> str:
    """The text after the images: command, ego speed and the answer format asked for."""
    phrase = COMMAND_PHRASES[COMMANDS[command]]
    return f"Command: {phrase}. Speed: {speed:.1f} m/s. {PROMPT_TASK}"


def check_max_new_tokens(max_new_tokens: object) -> int:
    """``max_new_tokens`` as an int, or a one-line :class:`ConfigError` unless it is a positive integer."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(
            f"max_new_tokens={max_new_tokens!r} must be a positive integer (the answer's token budget); "
            f"set model.max_new_tokens={DEFAULT_MAX_NEW_TOKENS} (the default) or another count >= 1"
        )
    return max_new_tokens


def batch_instructions(batch: dict[str, Any]) -> list[str]:
    """:func:`instruction_text` of every sample of a collated batch."""
    speeds = batch["ego_state"][:, EGO_STATE_FIELDS.index("speed")].float().cpu()
    return [
        instruction_text(int(cmd), float(speed))
        for cmd, speed in zip(batch["command"].cpu(), speeds, strict=True)
    ]


class ChatDrivingAdapter(DrivingModel, abc.ABC):
    """A driving model that asks a chat VLM for the waypoints as text.

    ``decode`` counts malformed answers in :attr:`parse_stats` (its one deliberate side effect:
    the :class:`DrivingModel` contract returns only waypoints); use :meth:`generate_waypoints`
    for the per-sample flags and texts.
    """

    def __init__(self, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> None:
        super().__init__()
        self.max_new_tokens = check_max_new_tokens(max_new_tokens)
        self.parse_stats = ParseStats()

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """The tokenizer that decodes generated ids (``batch_decode``, ``pad_token_id``)."""

    @property
    def device(self) -> torch.device:
        """Device of the wrapped model."""
        return next(self.decoder.parameters()).device

    def generate_kwargs(self, inputs: DecoderInputs) -> dict[str, Any]:
        """Extra ``generate()`` keywords for ``inputs`` (default: their ``position_ids`` if any)."""
        return {} if inputs.position_ids is None else {"position_ids": inputs.position_ids}

    @torch.no_grad()
    def generate_waypoints(self, inputs: DecoderInputs) -> WaypointGeneration:
        """Greedy ``generate()`` on ``inputs``; parse each answer strictly."""
        tokenizer = self.tokenizer
        generate: Any = self.decoder.generate  # GenerationMixin, typed loosely by transformers
        new_tokens = generate(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            **self.generate_kwargs(inputs),
        )
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        waypoints, ok = parse_waypoint_batch(texts)
        bad = [t for t, good in zip(texts, ok.tolist(), strict=True) if not good]
        if bad:
            logger.warning("%d/%d malformed waypoint answers, e.g. %r", len(bad), len(texts), bad[0][:80])
        return WaypointGeneration(waypoints=waypoints, ok=ok, texts=texts)

    def decode(self, inputs: DecoderInputs) -> torch.Tensor:
        """Waypoints float32 ``[B, 6, 2]``; NaN rows for malformed answers, counted in ``parse_stats``."""
        result = self.generate_waypoints(inputs)
        self.parse_stats.update(result.ok)
        return result.waypoints
