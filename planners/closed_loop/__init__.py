"""Closed-loop-style scoring: a non-reactive pseudo-simulation of each plan, scored as NAVSIM's PDM
score (``docs/CLOSED-LOOP.md``)."""

from planners.closed_loop.agents import AgentTracks, interpolate_agents
from planners.closed_loop.areas import EgoAreas, Lane, SceneGeometry, ego_areas
from planners.closed_loop.config import (
    DEFAULT_CONFIG,
    ComfortBounds,
    EgoGeometry,
    PDMConfig,
    ReferenceConfig,
    State,
    TrackerConfig,
)
from planners.closed_loop.metrics import (
    COMFORT_CHECKS,
    combine,
    comfort,
    comfort_checks,
    drivable_area_compliance,
    driving_direction_compliance,
    ego_progress,
    no_at_fault_collision,
    time_to_collision,
)
from planners.closed_loop.reference import progress_along, reference_progress
from planners.closed_loop.rollout import rollout
from planners.closed_loop.score import SCORE_KEYS, pdm_score, sub_scores

__all__ = [
    "COMFORT_CHECKS",
    "DEFAULT_CONFIG",
    "SCORE_KEYS",
    "AgentTracks",
    "ComfortBounds",
    "EgoAreas",
    "EgoGeometry",
    "Lane",
    "PDMConfig",
    "ReferenceConfig",
    "SceneGeometry",
    "State",
    "TrackerConfig",
    "combine",
    "comfort",
    "comfort_checks",
    "drivable_area_compliance",
    "driving_direction_compliance",
    "ego_areas",
    "ego_progress",
    "interpolate_agents",
    "no_at_fault_collision",
    "pdm_score",
    "progress_along",
    "reference_progress",
    "rollout",
    "sub_scores",
    "time_to_collision",
]
