"""Bad input to the data layer: each gives its own one-line error naming the thing and the fix."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from nuscenes import NuScenes
from PIL import Image, ImageFile
from torch._utils import ExceptionWrapper
from torch.utils.data import DataLoader

from vla_autoprune.data import (
    CAMERAS,
    CollateError,
    CorruptImageError,
    DatarootNotFoundError,
    DatasetConfigError,
    EmptySplitError,
    ImageNotFoundError,
    MissingCameraError,
    NuScenesDrivingDataset,
    NuScenesFormatError,
    UnknownCameraError,
    UnknownSplitError,
    UnknownVersionError,
    VersionNotFoundError,
    collate,
)
from vla_autoprune.data.nuscenes_dataset import _decoder_reason

VERSION = "v1.0-synthetic"


def raises_one_line(error: type[Exception], *fragments: str):
    """Context manager: ``error`` is raised, on one line, and its message names every fragment."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(error)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self._ctx.__exit__(*exc)
            message = str(self.info.value)
            assert "\n" not in message, message
            for fragment in fragments:
                assert fragment in message, (fragment, message)
            return suppressed

    return _Check()


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha1 of every file under ``root`` (symlinks followed)."""
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def copy_root(src: Path, dst: Path, *, with_samples: bool = False) -> Path:
    """A copy of the tables (and maps); ``samples/`` copied or symlinked; other folders symlinked."""
    dst.mkdir(parents=True)
    for child in src.iterdir():
        if child.name == VERSION or child.name == "maps" or (child.name == "samples" and with_samples):
            shutil.copytree(child, dst / child.name)
        else:
            (dst / child.name).symlink_to(child.resolve())
    return dst


def edit_table(root: Path, table: str, edit) -> None:
    path = root / VERSION / f"{table}.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def first_val_camera_path(root: Path, channel: str = "CAM_FRONT") -> Path:
    ds = NuScenesDrivingDataset(root, VERSION, "val")
    sample = ds.nusc.get("sample", ds.sample_tokens[0])
    return Path(ds.nusc.get_sample_data_path(sample["data"][channel]))


@pytest.fixture(scope="module", autouse=True)
def root_digest(synthetic_root) -> dict[str, str]:
    """Digest of the shared generated set, taken before this module's first test."""
    return snapshot(synthetic_root)


# ---- construction-time errors ------------------------------------------------------------------


def test_missing_dataroot(tmp_path):
    missing = tmp_path / "no-such-root"
    with raises_one_line(DatarootNotFoundError, str(missing)) as info:
        NuScenesDrivingDataset(missing, VERSION, "val")
    assert isinstance(info.value, FileNotFoundError)


def test_wrong_dataroot_lists_versions(synthetic_root, tmp_path):
    # The parent of the dataroot: no version folder, none found.
    with raises_one_line(VersionNotFoundError, str(synthetic_root.parent / VERSION), "none"):
        NuScenesDrivingDataset(synthetic_root.parent, VERSION, "val")
    # The right dataroot, a version that is not there: the found one is listed.
    with raises_one_line(VersionNotFoundError, "v1.0-mini", VERSION) as info:
        NuScenesDrivingDataset(synthetic_root, "v1.0-mini", "mini_val")
    assert isinstance(info.value, FileNotFoundError)


def test_unknown_version(synthetic_root, tmp_path):
    root = copy_root(synthetic_root, tmp_path / "root")
    (root / VERSION).rename(root / "v7.0-custom")
    (root / "v7.0-custom" / "splits.json").unlink()
    with raises_one_line(UnknownVersionError, "v7.0-custom", "splits.json") as info:
        NuScenesDrivingDataset(root, "v7.0-custom", "val")
    assert isinstance(info.value, ValueError)


def test_unknown_split_lists_known(synthetic_root):
    with raises_one_line(UnknownSplitError, "'mini_val'", "'train'", "'val'"):
        NuScenesDrivingDataset(synthetic_root, VERSION, "mini_val")


def test_empty_split(synthetic_root, tmp_path):
    root = copy_root(synthetic_root, tmp_path / "root")
    splits = json.loads((root / VERSION / "splits.json").read_text())
    splits["empty"], splits["elsewhere"] = [], ["scene-that-is-not-here"]
    (root / VERSION / "splits.json").write_text(json.dumps(splits))
    for split in ("empty", "elsewhere"):
        with raises_one_line(EmptySplitError, f"'{split}'", VERSION):
            NuScenesDrivingDataset(root, VERSION, split)


def test_sample_missing_a_camera(synthetic_root, tmp_path):
    root = copy_root(synthetic_root, tmp_path / "root")
    nusc = NuScenes(VERSION, str(root), verbose=False)
    ds = NuScenesDrivingDataset(root, VERSION, "val", nusc=nusc)
    victim = ds.sample_tokens[3]
    dropped = nusc.get("sample", victim)["data"]["CAM_BACK"]
    edit_table(root, "sample_data", lambda rows: [r for r in rows if r["token"] != dropped])
    with raises_one_line(MissingCameraError, victim, "CAM_BACK"):
        NuScenesDrivingDataset(root, VERSION, "val")
    # Without CAM_BACK among the cameras the same tables are fine.
    cams = tuple(c for c in CAMERAS if c != "CAM_BACK")
    assert len(NuScenesDrivingDataset(root, VERSION, "val", cameras=cams)) == len(ds)


def test_unknown_camera(synthetic_root):
    with raises_one_line(UnknownCameraError, "CAM_ROOF", "CAM_FRONT"):
        NuScenesDrivingDataset(synthetic_root, VERSION, "val", cameras=("CAM_FRONT", "CAM_ROOF"))
    with raises_one_line(UnknownCameraError, "LIDAR_TOP"):  # a sensor, but not a camera
        NuScenesDrivingDataset(synthetic_root, VERSION, "val", cameras=("LIDAR_TOP",))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"image_size": (0, 10)}, "image_size"),
        ({"image_size": (10,)}, "image_size"),
        ({"max_boxes": -1}, "max_boxes"),
        ({"cameras": ("CAM_FRONT", "CAM_FRONT")}, "cameras"),
        ({"cameras": ()}, "cameras"),
    ],
)
def test_bad_arguments(synthetic_root, kwargs, name):
    with raises_one_line(DatasetConfigError, name):
        NuScenesDrivingDataset(synthetic_root, VERSION, "val", **kwargs)


def test_mismatched_nusc(synthetic_root, tmp_path):
    nusc = NuScenes(VERSION, str(synthetic_root), verbose=False)
    other = copy_root(synthetic_root, tmp_path / "root")
    with raises_one_line(DatasetConfigError, str(other)):
        NuScenesDrivingDataset(other, VERSION, "val", nusc=nusc)


def test_devkit_assertion_is_wrapped(synthetic_root, tmp_path):
    # A map record whose mask file is gone: the devkit asserts; we report a format error.
    root = copy_root(synthetic_root, tmp_path / "root")
    edit_table(root, "map", lambda rows: [dict(r, filename="maps/missing.png") for r in rows])
    with raises_one_line(NuScenesFormatError, "maps/missing.png", VERSION):
        NuScenesDrivingDataset(root, VERSION, "val")
    # A dangling calibrated_sensor token: the devkit's reverse index raises KeyError.
    root = copy_root(synthetic_root, tmp_path / "root2")
    edit_table(root, "calibrated_sensor", lambda rows: rows[1:])
    with raises_one_line(NuScenesFormatError, VERSION):
        NuScenesDrivingDataset(root, VERSION, "val")


# ---- item-time errors (image files) -----------------------------------------------------------


def test_missing_jpeg(synthetic_root, tmp_path):
    root = copy_root(synthetic_root, tmp_path / "root", with_samples=True)
    path = first_val_camera_path(root)
    path.unlink()
    ds = NuScenesDrivingDataset(root, VERSION, "val")  # construction scans records, not files
    with raises_one_line(ImageNotFoundError, str(path)) as info:
        ds[0]
    assert isinstance(info.value, FileNotFoundError)


def test_truncated_jpeg(synthetic_root, tmp_path, monkeypatch):
    root = copy_root(synthetic_root, tmp_path / "root", with_samples=True)
    path = first_val_camera_path(root, "CAM_FRONT_LEFT")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    ds = NuScenesDrivingDataset(root, VERSION, "val")
    with raises_one_line(CorruptImageError, str(path)):
        ds[0]
    # Even when someone enabled PIL's lenient mode (which pads truncated images), no silent zeros.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with raises_one_line(CorruptImageError, str(path)):
        ds[0]
    assert path.read_bytes() == data[: len(data) * 2 // 3]  # the dataset never rewrites files


def test_garbage_and_wrong_size_jpeg(synthetic_root, tmp_path):
    root = copy_root(synthetic_root, tmp_path / "root", with_samples=True)
    path = first_val_camera_path(root, "CAM_BACK_RIGHT")
    ds = NuScenesDrivingDataset(root, VERSION, "val")
    path.write_bytes(b"not a jpeg at all")
    with raises_one_line(CorruptImageError, str(path), "not an image file") as info:
        ds[0]
    assert " at 0x" not in str(info.value) and "BytesIO" not in str(info.value)  # no object reprs
    Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8)).save(path, format="JPEG")
    with raises_one_line(CorruptImageError, str(path), "20x10"):
        ds[0]


def test_decoder_reason_drops_object_reprs():
    reason = _decoder_reason(OSError("cannot identify image file <_io.BytesIO object at 0x7fa4c1d2e3f0>"))
    assert reason == "cannot identify image file"
    assert _decoder_reason(OSError("image file is truncated (3 bytes not processed)")) == (
        "image file is truncated (3 bytes not processed)"
    )
    assert _decoder_reason(OSError("<object object at 0xdeadbeef>")) == "OSError"


def test_corrupt_jpeg_in_a_dataloader_worker_reports_the_original_line(synthetic_root, tmp_path):
    """torch re-raises a worker's error as "Caught ... Original Traceback ..."; the user sees the
    worker's own one-line message instead."""
    root = copy_root(synthetic_root, tmp_path / "root", with_samples=True)
    path = first_val_camera_path(root, "CAM_BACK")
    path.write_bytes(b"not a jpeg at all")
    ds = NuScenesDrivingDataset(root, VERSION, "val")
    with raises_one_line(CorruptImageError, str(path)) as direct:
        ds[0]
    loader = DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate)
    with raises_one_line(CorruptImageError, str(path)) as info:
        next(iter(loader))
    assert str(info.value) == str(direct.value)
    assert "Caught" not in str(info.value) and "Traceback" not in str(info.value)


def _reraised(error: Exception) -> Exception:
    """``error`` after a round trip through torch's ExceptionWrapper (what a DataLoader worker does)."""
    try:
        try:
            raise ValueError("decoder detail")
        except ValueError as cause:
            raise error from cause
    except Exception:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(type(error)) as info:
        wrapper.reraise()
    return info.value


@pytest.mark.parametrize("error", [CorruptImageError, ImageNotFoundError, MissingCameraError])
def test_worker_wrapped_data_errors_keep_their_message(error):
    message = (
        "camera image /data/samples/CAM_FRONT/x.jpg cannot be decoded (bad huffman code); replace the file."
    )
    assert str(_reraised(error(message))) == message
    # Any other text that starts like a wrapped one is left whole.
    assert (
        str(error("Caught CorruptImageError somewhere; fix it."))
        == "Caught CorruptImageError somewhere; fix it."
    )


# ---- collate -----------------------------------------------------------------------------------


def test_collate_rejects_bad_batches(synthetic_root):
    ds = NuScenesDrivingDataset(synthetic_root, VERSION, "val", cameras=CAMERAS[:2])
    item = ds[0]
    with raises_one_line(CollateError, "no items"):
        collate([])
    with raises_one_line(CollateError, "camera"):
        collate([item, dict(item, cameras=CAMERAS[1::-1])])
    with raises_one_line(CollateError, "command"):
        collate([item, {k: v for k, v in item.items() if k != "command"}])
    assert collate([item])["images"].shape[:2] == torch.Size([1, 2])


# ---- nothing on disk is modified ---------------------------------------------------------------


def test_dataset_modifies_nothing_on_disk(synthetic_root, root_digest):
    ds = NuScenesDrivingDataset(synthetic_root, VERSION, "val", image_size=(64, 36), max_boxes=3)
    collate([ds[i] for i in range(len(ds))])
    NuScenesDrivingDataset(synthetic_root, VERSION, "train")[0]
    assert snapshot(synthetic_root) == root_digest
