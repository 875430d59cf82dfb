"""Waypoints as text: the ``[(x1, y1), ..., (x6, y6)]`` format language-output VLAs answer in.

The parser is strict: the whole answer (surrounding whitespace aside) must be exactly six
``(x, y)`` pairs of finite decimal numbers in one bracketed list. Anything else is *malformed*:
it yields NaN waypoints and ``ok = False``, so a bad generation is counted, never crashes a run
and never silently becomes a plausible trajectory.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from vla_autoprune.data.schema import NUM_FUTURE_STEPS

#: A decimal number: optional sign, digits, optional fraction. No exponents, no nan/inf.
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_PAIR = rf"\(\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\)"
_LIST = re.compile(rf"\[\s*{_PAIR}(?:\s*,\s*{_PAIR}){{{NUM_FUTURE_STEPS - 1}}}\s*\]")
_NUMBERS = re.compile(_NUMBER)

#: Decimals when writing waypoints: centimetres are far below any planning error that matters.
FORMAT_DECIMALS = 2


@dataclass(frozen=True)
class ParsedWaypoints:
    """One parsed answer: ``waypoints`` float32 ``[6, 2]`` (NaN when malformed) and ``ok``."""

    waypoints: torch.Tensor
    ok: bool


@dataclass
class ParseStats:
    """Running count of parsed answers and of malformed ones among them."""

    total: int = 0
    malformed: int = 0

    def update(self, ok: torch.Tensor) -> None:
        """Count a batch of parse flags (bool ``[B]``, True = well formed)."""
        self.total += int(ok.numel())
        self.malformed += int((~ok).sum())

    @property
    def malformed_rate(self) -> float:
        """Fraction of malformed answers (0 when nothing was parsed yet)."""
        return self.malformed / self.total if self.total else 0.0


def parse_waypoints(text: str) -> ParsedWaypoints:
    """Parse ``"[(x1, y1), ..., (x6, y6)]"``; malformed text gives NaN waypoints and ``ok=False``."""
    text = text.strip()
    if _LIST.fullmatch(text) is None:
        return _malformed()
    values = [float(v) for v in _NUMBERS.findall(text)]
    if not all(math.isfinite(v) for v in values):  # e.g. digits overflowing float
        return _malformed()
    return ParsedWaypoints(torch.tensor(values, dtype=torch.float32).view(NUM_FUTURE_STEPS, 2), True)


def parse_waypoint_batch(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse a batch of answers: waypoints float32 ``[B, 6, 2]`` and ``ok`` bool ``[B]``."""
    parsed = [parse_waypoints(t) for t in texts]
    if not parsed:
        return torch.empty(0, NUM_FUTURE_STEPS, 2), torch.empty(0, dtype=torch.bool)
    return torch.stack([p.waypoints for p in parsed]), torch.tensor([p.ok for p in parsed])


def format_waypoints(waypoints: torch.Tensor) -> str:
    """Inverse of :func:`parse_waypoints` for float ``[6, 2]`` waypoints (e.g. training targets)."""
    if tuple(waypoints.shape) != (NUM_FUTURE_STEPS, 2):
        raise ValueError(f"waypoints must have shape [{NUM_FUTURE_STEPS}, 2], got {tuple(waypoints.shape)}")
    pairs = ", ".join(f"({x:.{FORMAT_DECIMALS}f}, {y:.{FORMAT_DECIMALS}f})" for x, y in waypoints.tolist())
    return f"[{pairs}]"


def _malformed() -> ParsedWaypoints:
    return ParsedWaypoints(torch.full((NUM_FUTURE_STEPS, 2), float("nan")), False)
