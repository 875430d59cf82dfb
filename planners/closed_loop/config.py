"""Constants of the closed-loop-style PDM score, as typed dataclasses (see ``docs/CLOSED-LOOP.md``).

Every number is NAVSIM v1.1's published default unless its comment says otherwise; the comment
names the file it comes from (``navsim`` tag ``v1.1``, commit 0811876).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

from vla_autoprune.errors import ConfigError


class State(IntEnum):
    """Columns of a simulated ego state array ``[..., len(State)]`` (rear axle, ego frame at t = 0)."""

    X = 0  # [m]
    Y = 1  # [m]
    HEADING = 2  # [rad]
    SPEED = 3  # [m/s] longitudinal; the kinematic bicycle has no lateral velocity
    ACCEL = 4  # [m/s^2] longitudinal
    YAW_RATE = 5  # [rad/s]
    STEERING = 6  # [rad] front wheel angle


@dataclass(frozen=True)
class EgoGeometry:
    """The nuScenes ego (Renault Zoe); its pose is the rear-axle centre."""

    length_m: float = 4.084  # [m] as docs/METRICS.md
    width_m: float = 1.85  # [m] as docs/METRICS.md
    wheel_base_m: float = 2.588  # [m] Renault Zoe datasheet
    # [m] rear axle -> box centre; half the wheel base (equal overhangs assumed, not measured)
    rear_axle_to_centre_m: float = 1.294


@dataclass(frozen=True)
class TrackerConfig:
    """Rollout: kinematic bicycle (as navsim ``batch_kinematic_bicycle.py``) tracking the plan."""

    dt_s: float = 0.1  # [s] simulation step (navsim proposal_sampling interval_length 0.1)
    max_steering_rad: float = math.pi / 3  # [rad] batch_kinematic_bicycle.py max_steering_angle
    accel_time_constant_s: float = 0.2  # [s] batch_kinematic_bicycle.py low-pass on acceleration
    steering_time_constant_s: float = 0.05  # [s] batch_kinematic_bicycle.py low-pass on steering
    # Longitudinal law = navsim batch_lqr.py's one-step LQR on the speed 1 s ahead:
    speed_lookahead_s: float = 1.0  # [s] tracking_horizon 10 x discretization_time 0.1
    q_longitudinal: float = 10.0  # batch_lqr.py q_longitudinal
    r_longitudinal: float = 1.0  # batch_lqr.py r_longitudinal
    stopping_speed_mps: float = 0.2  # [m/s] batch_lqr.py stopping_velocity
    stopping_gain: float = 0.5  # [1/s] batch_lqr.py stopping_proportional_gain
    station_gain: float = 1.0  # [1/s] ours: reference speed + gain x (planned - actual station)
    # Lateral law: pure pursuit (ours; navsim uses a lateral LQR), lookahead = max(min, time x speed)
    min_lookahead_m: float = 3.0  # [m] ours
    lookahead_time_s: float = 0.6  # [s] ours

    def __post_init__(self) -> None:
        if self.dt_s <= 0 or self.min_lookahead_m <= 0 or self.speed_lookahead_s <= 0:
            raise ConfigError("tracker dt_s, min_lookahead_m and speed_lookahead_s must be positive")


@dataclass(frozen=True)
class ComfortBounds:
    """nuPlan comfort bounds, navsim ``pdm_comfort_metrics.py`` (all strict: value must lie inside)."""

    min_lon_accel: float = -4.05  # [m/s^2]
    max_lon_accel: float = 2.40  # [m/s^2]
    max_abs_lat_accel: float = 4.89  # [m/s^2]
    max_abs_jerk: float = 8.37  # [m/s^3] magnitude of the (lon, lat) acceleration's derivative
    max_abs_lon_jerk: float = 4.13  # [m/s^3]
    max_abs_yaw_accel: float = 1.93  # [rad/s^2]
    max_abs_yaw_rate: float = 0.95  # [rad/s]
    # Savitzky-Golay windows in 10 Hz samples: nuPlan's defaults (``_extract_ego_acceleration`` 8,
    # ``_extract_ego_jerk`` 15, ``_approximate_derivatives`` 5). navsim passes the whole 41-pose
    # horizon instead for acceleration and jerk, which on our 31 poses would hide any jerk spike.
    accel_window: int = 8
    jerk_window: int = 15
    yaw_window: int = 5


@dataclass(frozen=True)
class ReferenceConfig:
    """The rule-based reference for ego progress: IDM along the lane centreline (PDM-Closed's policy).

    navsim ``metric_cache_processor.py`` BatchIDMPolicy arguments; nuScenes maps carry no speed
    limits, so the target speed is always navsim's ``fallback_target_velocity``.
    """

    target_speed_mps: float = 15.0  # [m/s] fallback_target_velocity
    min_gap_m: float = 1.0  # [m] min_gap_to_lead_agent
    headway_s: float = 1.5  # [s] headway_time
    accel_max: float = 1.5  # [m/s^2] accel_max
    decel_max: float = 3.0  # [m/s^2] decel_max
    exponent: float = 10.0  # batch_idm_policy.py acceleration_exponent


@dataclass(frozen=True)
class PDMConfig:
    """Thresholds and weights of the score (navsim v1.1 ``pdm_scorer.py`` ``PDMScorerConfig``)."""

    progress_weight: float = 5.0
    ttc_weight: float = 5.0
    comfort_weight: float = 2.0
    driving_direction_weight: float = 0.0  # reported, not in the score (navsim v1.1)
    progress_distance_threshold_m: float = 5.0  # [m] below this reference progress, EP = 1
    ttc_stopped_speed_mps: float = 5e-3  # [m/s] pdm_scorer.py stopped_speed_threshold (ttc)
    collision_stopped_speed_mps: float = 5e-2  # [m/s] pdm_scorer_utils.py / nuPlan is_track_stopped
    ttc_projections_s: tuple[float, ...] = (0.0, 0.3, 0.6, 0.9)  # [s] np.arange(0, 10, 3) x 0.1 s
    ahead_angle_deg: float = 30.0  # nuPlan idm utils is_agent_ahead angle_tolerance
    behind_angle_deg: float = 150.0  # nuPlan idm utils is_agent_behind angle_tolerance
    static_object_penalty: float = 0.5  # NC for an at-fault hit of a non-agent (cone, barrier, ...)
    driving_direction_horizon_s: float = 1.0  # [s]
    driving_direction_compliance_m: float = 2.0  # [m] oncoming progress below: 1
    driving_direction_violation_m: float = 6.0  # [m] oncoming progress below: 0.5, else 0
    horizon_s: float = 3.0  # [s] ours: the planners' 6 waypoints at 2 Hz (navsim: 4 s)
    ego: EgoGeometry = field(default_factory=EgoGeometry)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    comfort: ComfortBounds = field(default_factory=ComfortBounds)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)

    def __post_init__(self) -> None:
        weights = (self.progress_weight, self.ttc_weight, self.comfort_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(f"PDM weights {weights} must be >= 0 with a positive sum")

    @property
    def num_steps(self) -> int:
        """Simulated states including t = 0 (31 for 3 s at 10 Hz)."""
        return round(self.horizon_s / self.tracker.dt_s) + 1


DEFAULT_CONFIG = PDMConfig()
