"""What the viewer draws, persisted per run: the kept visual tokens of every layer, per sample.

An evaluation run writes, next to ``records.jsonl``, one small compressed ``.npz`` per batch into
``kept/`` (written atomically, before the batch's records are appended, so every recorded sample
has its tokens on disk). A chunk's name is derived from the dataset indices it holds: a batch
evaluated again after a crash (its records never written) replaces its own chunk; when a resumed
run batches differently, the newest chunk holding a sample wins in :class:`KeptStore`.

Chunk arrays (``B`` samples, ``L`` layers, ``V`` visual tokens, ``C`` cameras):

=============== ====================== ==============================================================
key             dtype / shape          meaning
=============== ====================== ==============================================================
version         int64 scalar           :data:`FORMAT_VERSION`
index           int64 [B]              dataset index (the records' ``index``)
sample_token    str [B]                nuScenes sample token
scene_token     str [B]                nuScenes scene token
cameras         str [C]                camera channels (the batch's ``cameras``)
patch_grid      int64 [2]              (rows, cols) of the vision tower's patch grid per camera
image_region    float64 [4]            (x0, y0, x1, y1): fraction of each image the grid covers;
                                       optional, the whole image when absent
camera_index    int16 [B, V]           camera of each visual token (``TokenLayout.camera_index``)
patch_index     int32 [B, V]           row-major patch of each visual token (``TokenLayout.patch_index``)
kept_bits       uint8 [B, L, ceil(V/8)] ``np.packbits`` of "original token v enters layer l"
merged_into     int16 [B, L, V]        merged token (per layer id) holding v, -1 = none; optional
visual_tokens   int32 [B, L]           visual tokens entering each layer (merged ones included)
merged_tokens   int32 [B, L]           merged tokens among them
schedule        int32 [B, L]           the pruner's last schedule (-1 everywhere when it had none)
mi, k           float64 [B]            AutoPrune's MI and slope (NaN for other pruners)
=============== ====================== ==============================================================
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla_autoprune.errors import DataError, DataNotFoundError
from vla_autoprune.run_files import atomic_write_bytes

logger = logging.getLogger(__name__)

KEPT_DIR = "kept"
FORMAT_VERSION = 1
_NO_MERGE = -1
FULL_IMAGE = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class SampleTrace:
    """The kept visual tokens of one sample, layer by layer (one row of a chunk).

    Attributes:
        index: dataset index; sample_token, scene_token: the nuScenes tokens.
        cameras: camera channels, ``camera_index`` indexes into them.
        patch_grid: ``(rows, cols)`` of patches per camera image.
        image_region: ``(x0, y0, x1, y1)``, the fraction of each camera image the grid covers
            (the whole image, or a processor's centre crop).
        camera_index: int ``[V]``; patch_index: int ``[V]`` (the model's ``TokenLayout``).
        kept: bool ``[L, V]``, original visual token ``v`` enters layer ``l``.
        merged_into: int ``[L, V]``, id of the merged token holding ``v`` at layer ``l`` (-1: none),
            or None when the run recorded no merge members.
        visual_tokens, merged_tokens: int ``[L]``; schedule: int ``[L]`` or None.
        mi, k: AutoPrune's mutual information and slope, None for other pruners.
    """

    index: int
    sample_token: str
    scene_token: str
    cameras: tuple[str, ...]
    patch_grid: tuple[int, int]
    image_region: tuple[float, float, float, float]
    camera_index: np.ndarray
    patch_index: np.ndarray
    kept: np.ndarray
    merged_into: np.ndarray | None
    visual_tokens: np.ndarray
    merged_tokens: np.ndarray
    schedule: np.ndarray | None
    mi: float | None
    k: float | None

    @property
    def num_layers(self) -> int:
        """``L``."""
        return int(self.kept.shape[0])

    @property
    def num_visual(self) -> int:
        """``V``."""
        return int(self.kept.shape[1])

    def merged_members(self, layer: int) -> dict[int, np.ndarray]:
        """Merged token id -> int ``[M]`` visual indices of its members, at ``layer``."""
        if self.merged_into is None:
            return {}
        row = self.merged_into[layer]
        return {int(g): np.flatnonzero(row == g) for g in np.unique(row[row != _NO_MERGE])}


def kept_mask(kept_visual: Sequence[Any], num_visual: int) -> np.ndarray:
    """bool ``[B, L, V]`` from the engine's ``PruningRecord.kept_visual``.

    Args:
        kept_visual: per layer, int ``[B, Kv]`` visual indices (ascending, -1 padded), or None
            for a layer that did not run (nothing kept).
        num_visual: ``V``.
    """
    layers = [None if k is None else np.asarray(k) for k in kept_visual]
    b = next(k.shape[0] for k in layers if k is not None)
    mask = np.zeros((b, len(layers), num_visual), dtype=bool)
    for layer, idx in enumerate(layers):
        if idx is None:
            continue
        rows, cols = np.nonzero(idx >= 0)
        mask[rows, layer, idx[rows, cols]] = True
    return mask


def chunk_arrays(
    *,
    indices: Sequence[int],
    sample_tokens: Sequence[str],
    scene_tokens: Sequence[str],
    cameras: Sequence[str],
    patch_grid: tuple[int, int],
    camera_index: np.ndarray,
    patch_index: np.ndarray,
    kept: np.ndarray,
    visual_tokens: np.ndarray,
    merged_tokens: np.ndarray,
    schedule: np.ndarray | None = None,
    merged_into: np.ndarray | None = None,
    mi: Sequence[float | None] | None = None,
    k: Sequence[float | None] | None = None,
    image_region: Sequence[float] = FULL_IMAGE,
) -> dict[str, np.ndarray]:
    """The arrays of one chunk (see the module docstring); ``kept`` is bool ``[B, L, V]``."""
    b, num_layers, _ = kept.shape

    def floats(values: Sequence[float | None] | None) -> np.ndarray:
        values = values if values is not None else [None] * b
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)

    arrays = {
        "version": np.array(FORMAT_VERSION, dtype=np.int64),
        "index": np.asarray(indices, dtype=np.int64),
        "sample_token": np.asarray(sample_tokens, dtype=str),
        "scene_token": np.asarray(scene_tokens, dtype=str),
        "cameras": np.asarray(cameras, dtype=str),
        "patch_grid": np.asarray(patch_grid, dtype=np.int64),
        "image_region": np.asarray(image_region, dtype=np.float64),
        "camera_index": np.asarray(camera_index, dtype=np.int16),
        "patch_index": np.asarray(patch_index, dtype=np.int32),
        "kept_bits": np.packbits(kept.astype(bool), axis=-1),
        "visual_tokens": np.asarray(visual_tokens, dtype=np.int32),
        "merged_tokens": np.asarray(merged_tokens, dtype=np.int32),
        "schedule": (
            np.full((b, num_layers), -1, dtype=np.int32)
            if schedule is None
            else np.asarray(schedule, dtype=np.int32)
        ),
        "mi": floats(mi),
        "k": floats(k),
    }
    if merged_into is not None:
        arrays["merged_into"] = np.asarray(merged_into, dtype=np.int16)
    return arrays


def chunk_name(indices: Sequence[int]) -> str:
    """File name of the chunk holding ``indices``: the same batch always gets the same name."""
    digest = hashlib.sha1(",".join(str(int(i)) for i in indices).encode()).hexdigest()[:10]
    return f"{int(min(indices)):08d}-{digest}.npz"


def write_chunk(run_dir: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Atomically write one chunk into ``run_dir/kept/`` (readers never see half a file)."""
    folder = Path(run_dir) / KEPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / chunk_name(arrays["index"].tolist())
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def _row(chunk: dict[str, np.ndarray], b: int) -> SampleTrace:
    """Sample ``b`` of a loaded chunk."""
    num_visual = chunk["camera_index"].shape[1]
    kept = np.unpackbits(chunk["kept_bits"][b], axis=-1, count=num_visual).astype(bool)
    schedule = chunk["schedule"][b]
    mi, k = float(chunk["mi"][b]), float(chunk["k"][b])
    return SampleTrace(
        index=int(chunk["index"][b]),
        sample_token=str(chunk["sample_token"][b]),
        scene_token=str(chunk["scene_token"][b]),
        cameras=tuple(str(c) for c in chunk["cameras"]),
        patch_grid=(int(chunk["patch_grid"][0]), int(chunk["patch_grid"][1])),
        image_region=tuple(float(v) for v in chunk.get("image_region", FULL_IMAGE)),  # type: ignore[arg-type]
        camera_index=chunk["camera_index"][b].astype(np.int64),
        patch_index=chunk["patch_index"][b].astype(np.int64),
        kept=kept,
        merged_into=chunk["merged_into"][b].astype(np.int64) if "merged_into" in chunk else None,
        visual_tokens=chunk["visual_tokens"][b].astype(np.int64),
        merged_tokens=chunk["merged_tokens"][b].astype(np.int64),
        schedule=None if bool((schedule < 0).all()) else schedule.astype(np.int64),
        mi=None if np.isnan(mi) else mi,
        k=None if np.isnan(k) else k,
    )


class KeptStore:
    """The kept tokens of one run, by sample token (``run_dir/kept/``).

    Opening reads only each chunk's tokens and indices; :meth:`get` loads a chunk when asked
    (the last few stay cached), so a long run's files need not fit in memory at once.

    Raises:
        DataNotFoundError: the run has no ``kept/`` chunks (written before the viewer existed, or
            by a planner without visual tokens).
        DataError: a chunk is unreadable or of an unknown format version.
    """

    CACHED_CHUNKS = 8

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        folder = self.run_dir / KEPT_DIR
        paths = sorted(folder.glob("*.npz"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        if not paths:
            raise DataNotFoundError(
                f"{self.run_dir} has no {KEPT_DIR}/ token files (a run written before the viewer "
                "existed, or a planner without visual tokens); evaluate it again into a new folder "
                "(hydra.run.dir=<new dir>) to record them"
            )
        self._rows: dict[str, tuple[Path, int, int]] = {}  # token -> (chunk, row, dataset index)
        for path in paths:  # oldest first: a sample evaluated again keeps its newest chunk
            head = self._load(path, ("sample_token", "index"))
            for b, (token, index) in enumerate(zip(head["sample_token"], head["index"], strict=True)):
                self._rows[str(token)] = (path, b, int(index))
        self._cache: dict[Path, dict[str, np.ndarray]] = {}

    @staticmethod
    def _load(path: Path, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays ``keys`` (all when None) of one chunk, after checking its format version."""
        try:
            with np.load(path, allow_pickle=False) as data:
                version = int(data["version"]) if "version" in data.files else -1
                chunk = {key: data[key] for key in (data.files if keys is None else keys)}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            raise DataError(f"{path} is unreadable ({err}); delete it and evaluate the run again") from err
        if version != FORMAT_VERSION:
            raise DataError(
                f"{path} has token-file format {version}, this viewer reads {FORMAT_VERSION}; "
                "evaluate the run again with this version"
            )
        return chunk

    def __contains__(self, sample_token: object) -> bool:
        return sample_token in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def tokens(self) -> list[str]:
        """Sample tokens held, in dataset-index order."""
        return sorted(self._rows, key=lambda t: self._rows[t][2])

    def get(self, sample_token: str) -> SampleTrace:
        """The trace of ``sample_token``.

        Raises:
            DataNotFoundError: the run did not evaluate this sample.
        """
        if sample_token not in self._rows:
            example = next(iter(self.tokens()), "")
            raise DataNotFoundError(
                f"sample {sample_token!r} is not in run {self.run_dir} ({len(self)} samples); pick "
                f"one of its samples, e.g. sample={example}, or select by scene=<scene name>"
            )
        path, b, _ = self._rows[sample_token]
        if path not in self._cache:
            if len(self._cache) >= self.CACHED_CHUNKS:
                self._cache.pop(next(iter(self._cache)))
            self._cache[path] = self._load(path)
        return _row(self._cache[path], b)
