"""Reference planners and the open-loop planning metrics (see METRICS.md)."""

from planners.base import Planner
from planners.constant_velocity import ConstantVelocityPlanner
from planners.ground_truth import GroundTruthPlanner
from planners.metrics import (
    CLASS_FILTERS,
    COLLISION_CONVENTIONS,
    CONVENTIONS,
    HORIZONS_S,
    aggregate_at,
    boxes_overlap,
    collision_at,
    collision_flags,
    ego_boxes,
    l2_at,
    l2_errors,
    travel_headings,
)
from planners.raster import DEFAULT_GEOMETRY, CollisionGeometry, rasterize_agents

__all__ = [
    "CLASS_FILTERS",
    "COLLISION_CONVENTIONS",
    "CONVENTIONS",
    "DEFAULT_GEOMETRY",
    "HORIZONS_S",
    "CollisionGeometry",
    "ConstantVelocityPlanner",
    "GroundTruthPlanner",
    "Planner",
    "aggregate_at",
    "boxes_overlap",
    "collision_at",
    "collision_flags",
    "ego_boxes",
    "l2_at",
    "l2_errors",
    "rasterize_agents",
    "travel_headings",
]
