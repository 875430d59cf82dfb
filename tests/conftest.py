"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Small enough to generate in a few seconds on 2 shared cores, big enough for train and val
#: (3 scenes at val_fraction 0.25 -> 1 val scene) and a full 4-past / 6-future window (8 keyframes).
SYNTHETIC_SCENES = 3
SYNTHETIC_SAMPLES_PER_SCENE = 8
SYNTHETIC_IMAGE_SIZE = (192, 108)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic nuScenes-format dataroot (``v1.0-synthetic``), generated once per session.

    Treat it as read-only: tests that damage data must work on a copy.
    """
    from data_tools.synthetic_nuscenes import generate

    return generate(
        tmp_path_factory.mktemp("synthetic_nuscenes"),
        scenes=SYNTHETIC_SCENES,
        samples_per_scene=SYNTHETIC_SAMPLES_PER_SCENE,
        image_size=SYNTHETIC_IMAGE_SIZE,
        seed=0,
    )
