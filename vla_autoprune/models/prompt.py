"""The DrivingVLA prompt: a tiny word-level tokenizer built in code and the prompt templates.

The tokenizer needs no download: its vocabulary is the closed set of words the templates use,
the nuScenes camera markers, and single characters for numbers (digits, ``.`` and ``-``), so
``vocab`` is fully determined by this module and a saved model only records its size.

Prompt of one sample (left to right; the model adds the non-text pieces)::

    <bos> instruction ... | per camera: <CAM_X> + that camera's visual tokens |
    command : turn left . speed 1 2 . 3 accel - 0 . 4 yaw 0 . 0 5 <ego> | action queries

``<ego>`` marks where the model inserts its learned projection of ``ego_state`` (of the fields
the model is configured to see); those numbers are also spelled out as text so the prompt reads like a language-prompted VLA's. Numbers are
spelled character by character, so prompts differ in length across a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vla_autoprune.data.schema import CAMERAS, COMMANDS
from vla_autoprune.data.schema import EGO_STATE_FIELDS as EGO_STATE_FIELDS  # re-export (compatibility)
from vla_autoprune.errors import ConfigError, DataError

PAD, BOS, EOS, UNK, EGO = "<pad>", "<bos>", "<eos>", "<unk>", "<ego>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, EGO)

INSTRUCTION = "you are driving . predict the next six ego waypoints from the six cameras ."

#: Command index (``schema.COMMANDS``) -> phrase.
COMMAND_PHRASES: dict[str, str] = {"left": "turn left", "straight": "go straight", "right": "turn right"}

#: Per field: the prompt word and the decimals it is spelled with. 0.1 m/s and 0.1 m/s^2 resolve
#: speed/accel well below the waypoint errors that matter; yaw rates are small (|w| < ~0.5 rad/s).
EGO_FIELD_TEXT: dict[str, tuple[str, int]] = {
    "speed": ("speed", 1),
    "accel": ("accel", 1),
    "yaw_rate": ("yaw", 2),
}

_NUMBER_CHARS: tuple[str, ...] = tuple("0123456789.-")
_TEMPLATE_WORDS = ("command", ":", "speed", "accel", "yaw", *"turn left go straight right".split())


def camera_marker(camera: str) -> str:
    """The marker token that opens ``camera``'s block of visual tokens, e.g. ``<CAM_FRONT>``."""
    return f"<{camera}>"


def _build_vocab() -> tuple[str, ...]:
    words: list[str] = list(SPECIAL_TOKENS)
    for word in (*INSTRUCTION.split(), *_TEMPLATE_WORDS, *(camera_marker(c) for c in CAMERAS)):
        if word not in words:
            words.append(word)
    words.extend(ch for ch in _NUMBER_CHARS if ch not in words)
    return tuple(words)


class PromptTokenizer:
    """Whitespace word-level tokenizer over the fixed vocabulary :func:`_build_vocab`.

    Unknown words map to ``<unk>``; numbers must be spelled with :func:`spell_number` first.
    """

    def __init__(self) -> None:
        self.vocab: tuple[str, ...] = _build_vocab()
        self._ids = {word: i for i, word in enumerate(self.vocab)}
        self.pad_id = self._ids[PAD]
        self.bos_id = self._ids[BOS]
        self.eos_id = self._ids[EOS]
        self.unk_id = self._ids[UNK]
        self.ego_id = self._ids[EGO]

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of whitespace-separated ``text``."""
        return [self._ids.get(word, self.unk_id) for word in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (inverse of :meth:`encode` for in-vocabulary words)."""
        return " ".join(self.vocab[i] for i in ids)

    def token_id(self, word: str) -> int:
        """Id of one vocabulary word; raises ``KeyError`` naming the word if it is unknown."""
        if word not in self._ids:
            raise KeyError(f"{word!r} is not in the DrivingVLA prompt vocabulary")
        return self._ids[word]


def spell_number(value: float, decimals: int) -> str:
    """``value`` rounded to ``decimals`` and spelled one character per token: ``-1.25`` -> ``- 1 . 2 5``."""
    text = f"{value:.{decimals}f}"
    if float(text) == 0.0:
        text = text.lstrip("-")  # "-0.0" carries no information; keep one spelling of zero
    return " ".join(text)


def command_text(command: int) -> str:
    """Prompt text of a command index into ``schema.COMMANDS``."""
    if not 0 <= command < len(COMMANDS):
        raise DataError(
            f"command index {command} out of range; expected 0..{len(COMMANDS) - 1} (schema.COMMANDS)"
        )
    return f"command : {COMMAND_PHRASES[COMMANDS[command]]} ."


def check_ego_fields(fields: Sequence[str]) -> None:
    """Raise a one-line ``ConfigError`` unless ``fields`` is a non-empty list of ``EGO_STATE_FIELDS``."""
    unknown = [f for f in fields if f not in EGO_STATE_FIELDS]
    if unknown or not fields:
        raise ConfigError(
            f"ego_state_fields {list(fields)} invalid; pick a non-empty subset of {list(EGO_STATE_FIELDS)}"
        )


def ego_text(ego_state: Sequence[float], fields: Sequence[str] = EGO_STATE_FIELDS) -> str:
    """Prompt text of the ``fields`` of one ``ego_state`` (speed m/s, accel m/s^2, yaw rate rad/s), ending in ``<ego>``."""
    check_ego_fields(fields)
    words = []
    for name in fields:
        word, decimals = EGO_FIELD_TEXT[name]
        words.append(f"{word} {spell_number(float(ego_state[EGO_STATE_FIELDS.index(name)]), decimals)}")
    return " ".join([*words, EGO])


@dataclass(frozen=True)
class PromptIds:
    """Token ids of the text pieces of a batch of prompts.

    Attributes:
        prefix: ids before the first camera (``<bos>`` + instruction), shared by all samples.
        camera_markers: one marker id per camera, in batch camera order.
        suffixes: per sample, the command + ego-state ids (ending in ``<ego>``); lengths differ.
    """

    prefix: list[int]
    camera_markers: list[int]
    suffixes: list[list[int]]


def build_prompt_ids(
    tokenizer: PromptTokenizer,
    cameras: Sequence[str],
    command: torch.Tensor,
    ego_state: torch.Tensor,
    ego_fields: Sequence[str] = EGO_STATE_FIELDS,
) -> PromptIds:
    """Token ids of the prompts of a batch (``command`` int64 ``[B]``, ``ego_state`` float ``[B, 3]``).

    Only the ``ego_fields`` of ``ego_state`` are spelled out.
    """
    unknown = [c for c in cameras if c not in CAMERAS]
    if unknown:
        raise DataError(
            f"unknown cameras {unknown} in the batch: DrivingVLA has markers for {list(CAMERAS)} only; "
            "load the data with cameras among them"
        )
    prefix = [tokenizer.bos_id, *tokenizer.encode(INSTRUCTION)]
    markers = [tokenizer.token_id(camera_marker(c)) for c in cameras]
    suffixes = [
        tokenizer.encode(f"{command_text(int(cmd))} {ego_text(ego.tolist(), ego_fields)}")
        for cmd, ego in zip(command.cpu(), ego_state.detach().float().cpu(), strict=True)
    ]
    return PromptIds(prefix=prefix, camera_markers=markers, suffixes=suffixes)
