"""Pruner constants measured for one model, kept next to its weights: ``pruning_calibration.json``.

Some pruner constants depend on the model's attention statistics, not on the method: AutoPrune's
``k0`` and ``gamma`` map the mutual information between text and visual tokens to a slope, and the
paper's values (0.4, 0.2) were set on LLaVA-1.5. On a model whose MI is larger, every slope clamps
at 0 and the "adaptive" curve is the same flat curve for every scene. A calibration file holds, per
pruner name, the constants measured on that model's training data (``python -m
data_tools.calibrate_autoprune``); :func:`calibrate_pruner` hands a pruner its entry
(:meth:`~vla_autoprune.pruning.pruner.Pruner.calibrate`), and a pruner keeps constants set
explicitly in its config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vla_autoprune.errors import ModelLoadError
from vla_autoprune.models.loading import resolve_model_path
from vla_autoprune.pruning.pruner import Pruner
from vla_autoprune.run_files import atomic_write_json

CALIBRATION_FILE = "pruning_calibration.json"


def read_calibration(name_or_path: str | Path) -> dict[str, dict[str, Any]]:
    """Pruner name -> its measured constants, from the model folder (``{}`` when it has no file)."""
    path = resolve_model_path(name_or_path) / CALIBRATION_FILE
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path} is not valid JSON ({err}); delete it or recalibrate") from None
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise ModelLoadError(
            f"{path} must map pruner names to objects of constants; delete it or recalibrate"
        )
    return entries


def write_calibration(folder: str | Path, pruner: str, entry: dict[str, Any]) -> Path:
    """Set ``pruner``'s entry of ``folder``'s calibration file (other pruners' entries stay); atomic."""
    path = Path(folder) / CALIBRATION_FILE
    entries = read_calibration(folder) if path.is_file() else {}
    atomic_write_json(path, {**entries, pruner: entry})
    return path


def calibrate_pruner(pruner: Pruner, name_or_path: str | Path) -> None:
    """Give ``pruner`` the model's entry for its name (None when the model has none)."""
    pruner.calibrate(read_calibration(name_or_path).get(pruner.name), model=Path(str(name_or_path)).name)
