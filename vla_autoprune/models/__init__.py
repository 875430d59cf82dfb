"""Driving models: the DrivingVLA, the LLaVA, Qwen2.5-VL and Qwen3-VL adapters, and ``load``."""

from vla_autoprune.models.base import DecoderInputs, DrivingModel
from vla_autoprune.models.chat_adapter import ChatDrivingAdapter
from vla_autoprune.models.driving_vla import DrivingVLA, DrivingVLAConfig
from vla_autoprune.models.layout import TokenLayout, build_layout
from vla_autoprune.models.llava_adapter import LlavaDrivingAdapter, WaypointGeneration
from vla_autoprune.models.loading import BUNDLED_MODELS, UnknownModelError, UnsupportedModelError, load
from vla_autoprune.models.prompt import PromptTokenizer
from vla_autoprune.models.qwen3_adapter import Qwen3VLDrivingAdapter
from vla_autoprune.models.qwen_adapter import QwenVLDrivingAdapter
from vla_autoprune.models.waypoint_text import ParseStats, format_waypoints, parse_waypoints

__all__ = [
    "BUNDLED_MODELS",
    "ChatDrivingAdapter",
    "DecoderInputs",
    "DrivingModel",
    "DrivingVLA",
    "DrivingVLAConfig",
    "LlavaDrivingAdapter",
    "ParseStats",
    "PromptTokenizer",
    "Qwen3VLDrivingAdapter",
    "QwenVLDrivingAdapter",
    "TokenLayout",
    "UnknownModelError",
    "UnsupportedModelError",
    "WaypointGeneration",
    "build_layout",
    "format_waypoints",
    "load",
    "parse_waypoints",
]
