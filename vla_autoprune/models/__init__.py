"""Driving models: the DrivingVLA, the LLaVA adapter, and ``load``."""

from vla_autoprune.models.base import DecoderInputs, DrivingModel
from vla_autoprune.models.driving_vla import DrivingVLA, DrivingVLAConfig
from vla_autoprune.models.layout import TokenLayout, build_layout
from vla_autoprune.models.llava_adapter import LlavaDrivingAdapter, WaypointGeneration
from vla_autoprune.models.loading import BUNDLED_MODELS, UnknownModelError, UnsupportedModelError, load
from vla_autoprune.models.prompt import PromptTokenizer
from vla_autoprune.models.waypoint_text import ParseStats, format_waypoints, parse_waypoints

__all__ = [
    "BUNDLED_MODELS",
    "DecoderInputs",
    "DrivingModel",
    "DrivingVLA",
    "DrivingVLAConfig",
    "LlavaDrivingAdapter",
    "ParseStats",
    "PromptTokenizer",
    "TokenLayout",
    "UnknownModelError",
    "UnsupportedModelError",
    "WaypointGeneration",
    "build_layout",
    "format_waypoints",
    "load",
    "parse_waypoints",
]
