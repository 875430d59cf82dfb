"""The embedded default dataset: a synthetic nuScenes-format world, generated once and cached.

The Hydra config ``conf/data/synthetic.yaml`` targets :func:`synthetic_dataset`, so the library
(``vla_autoprune``) never imports its tools: the generator is wired in by configuration. This
module decides where the set lives and makes concurrent first use safe (several Hydra multirun jobs
may ask for the same set at once): each job generates into a private temporary folder and renames
it into place atomically; a job that loses the race discards its copy.

Only the cache is ever generated into. An explicitly given dataroot must already hold a synthetic
set, generated with the requested arguments (checked against the set's ``generator.json``): a typo
in a path never creates a 255 MiB set, and a run never evaluates one set while its record names
another's arguments.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from data_tools.synthetic.scenario import WORLD_VERSION
from data_tools.synthetic_nuscenes import (
    CLI_FIXES,
    DEFAULT_VERSION,
    MANIFEST_FILE,
    cli_command,
    generate,
    manifest,
    read_manifest,
    scene_counts,
)
from vla_autoprune.data.errors import NuScenesDataError
from vla_autoprune.data.nuscenes_dataset import NuScenesDrivingDataset
from vla_autoprune.data.schema import CAMERAS
from vla_autoprune.errors import ConfigError, DataNotFoundError

logger = logging.getLogger(__name__)

SYNTHETIC_VERSION = DEFAULT_VERSION
#: The setting a dataroot comes from in the one-line errors (the Hydra key; a CLI passes its flag).
DATAROOT_KEY = "data.dataset.dataroot"
#: How a bad generator argument given in the Hydra config (``conf/data/synthetic.yaml``) is fixed.
HYDRA_FIXES: Mapping[str, str] = {
    "scenes": "set data.dataset.scenes.val=1 or more",
    "samples_per_scene": "set data.dataset.samples_per_scene=2 or more",
    "image_size": "set e.g. data.dataset.image_size=[1600,900]",
}


def unset_dataroot(setting: str = DATAROOT_KEY) -> str:
    """How the one-line errors say "use the cache instead", for the setting the dataroot came from."""
    return f"leave {setting} unset{' (null)' if setting == DATAROOT_KEY else ''} to use the cached set for these arguments"


def as_it_is(root: Path | str) -> str:
    """How the errors name "evaluate that folder as it is": the plain nuScenes-format loader."""
    return f"data=nuscenes data.dataset.dataroot={root} data.dataset.version={SYNTHETIC_VERSION} data.dataset.split=val"


class SyntheticSetNotFoundError(NuScenesDataError, DataNotFoundError):
    """An explicitly given dataroot holds no synthetic set (it is never generated into)."""


class SyntheticSetMismatchError(NuScenesDataError, ConfigError):
    """An explicitly given dataroot holds a synthetic set generated with other arguments."""


def default_cache_dir() -> Path:
    """Root for generated datasets: ``$VLA_AUTOPRUNE_CACHE`` or ``~/.cache/vla-autoprune``."""
    env = os.environ.get("VLA_AUTOPRUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vla-autoprune"


def synthetic_dataroot(
    scenes: int | Mapping[str, int], samples_per_scene: int, image_size: tuple[int, int], seed: int
) -> Path:
    """Cache folder for one set of generation arguments (different arguments never collide)."""
    w, h = image_size
    counts = "-".join(f"{split}{n}" for split, n in scene_counts(scenes).items())
    name = f"{WORLD_VERSION}-seed{seed}-{counts}-{samples_per_scene}kf-{w}x{h}"
    return default_cache_dir() / "synthetic" / name


def ensure_synthetic(
    dataroot: str | Path | None = None,
    *,
    scenes: int | Mapping[str, int] = 8,
    samples_per_scene: int = 16,
    image_size: Sequence[int] = (1600, 900),
    seed: int = 0,
    setting: str = DATAROOT_KEY,
    fixes: Mapping[str, str] = CLI_FIXES,
) -> Path:
    """Return a dataroot holding the synthetic set for these arguments.

    Args:
        dataroot: a folder that already holds the set (checked, never generated into); None (or
            "") picks :func:`synthetic_dataroot` in the cache, generating the set there on first use.
        scenes, samples_per_scene, image_size, seed: generator arguments (image_size is (W, H));
            see :func:`data_tools.synthetic_nuscenes.generate`.
        setting: what the errors call the dataroot (the Hydra key, or a CLI's ``--dataroot``).
        fixes: how a bad generator argument's error says to fix it (the generator's
            :data:`~data_tools.synthetic_nuscenes.CLI_FIXES` by default, :data:`HYDRA_FIXES` for
            the Hydra config).

    Raises:
        SyntheticSetNotFoundError: ``dataroot`` holds no synthetic set.
        SyntheticSetMismatchError: ``dataroot`` holds one generated with other arguments.
    """
    size = (int(image_size[0]), int(image_size[1]))
    counts = scene_counts(scenes)
    if dataroot:
        root = Path(dataroot)
        check_synthetic(root, counts, int(samples_per_scene), size, int(seed), setting)
        return root
    root = synthetic_dataroot(counts, samples_per_scene, size, seed)
    if (root / SYNTHETIC_VERSION / "sample.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(root)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(root)}{os.getpid()}-", dir=root.parent))
    try:
        logger.info("Generating the synthetic nuScenes set into %s (first use only)", root)
        generate(
            tmp,
            scenes=scenes,  # as given: an error names what the user set
            samples_per_scene=samples_per_scene,
            image_size=size,
            seed=seed,
            overwrite=True,
            fixes=fixes,
        )
        try:
            tmp.rename(root)
            logger.info("The synthetic set is ready in %s (the folder above was its staging copy)", root)
        except OSError:
            if not (root / SYNTHETIC_VERSION / "sample.json").is_file():
                raise
            logger.info("Another job generated %s first; using it", root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _staging_prefix(root: Path) -> str:
    """Name start of ``root``'s staging copies: ``.<name>.tmp-<pid of the generating process>-``."""
    return f".{root.name}.tmp-"


def remove_abandoned_staging(root: Path) -> None:
    """Remove staging copies of ``root`` whose generating process is gone (killed with SIGTERM or
    SIGKILL, which skip its own clean-up): each holds up to a whole set. Copies of live processes
    (a concurrent job generating the same set) are left alone."""
    prefix = _staging_prefix(root)
    for path in root.parent.glob(f"{prefix}*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            logger.info("removing %s, left by an interrupted generation", path)
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_synthetic(
    root: Path,
    counts: Mapping[str, int],
    samples_per_scene: int,
    image_size: tuple[int, int],
    seed: int,
    setting: str = DATAROOT_KEY,
) -> None:
    """Refuse a dataroot that holds no synthetic set, or one generated with other arguments.

    A set without ``generator.json`` (generated before the generator wrote one) cannot be checked:
    it is accepted with a warning. ``setting``: what the errors call the dataroot.
    """
    command = cli_command(root, counts, samples_per_scene, image_size, seed)
    if not (root / SYNTHETIC_VERSION / "sample.json").is_file():
        if root.is_dir() and any(root.iterdir()):
            elsewhere = cli_command("NEW_DIR", counts, samples_per_scene, image_size, seed)
            fix = f"generate one into a new, empty folder ({elsewhere})"
            where = (
                f"dataroot {root} is not empty but holds no synthetic set ({SYNTHETIC_VERSION}/sample.json)"
            )
        else:
            fix = f"generate one there ({command})"
            state = "does not exist" if not root.exists() else "is empty"
            where = (
                f"dataroot {root} {state}, so it holds no synthetic set (only the cache is generated into)"
            )
        raise SyntheticSetNotFoundError(f"{where}; {fix}, or {unset_dataroot(setting)}.")
    recorded = read_manifest(root, SYNTHETIC_VERSION)
    if recorded is None:
        logger.warning(
            "dataroot %s has no readable %s/%s (a set from an older generator): cannot check that it was "
            "generated with the requested arguments, so the run's record may not describe it; regenerate it "
            "(%s --overwrite) to make it checkable",
            root, SYNTHETIC_VERSION, MANIFEST_FILE, command,
        )  # fmt: skip
        return
    wanted = manifest(counts, samples_per_scene, image_size, seed)
    differ = [
        f"{key} {_show(recorded.get(key))} (requested {_show(value)})"
        for key, value in wanted.items()
        if recorded.get(key) != value
    ]
    if differ:
        # evaluating a folder as it is: the Hydra apps' plain loader (a CLI has no such choice)
        as_is = f"evaluate it as it is ({as_it_is(root)}), " if setting == DATAROOT_KEY else ""
        raise SyntheticSetMismatchError(
            f"dataroot {root} holds a synthetic set generated with other arguments: {', '.join(differ)}; "
            f"{as_is}request its arguments, regenerate it with the requested ones ({command} --overwrite), "
            f"or {unset_dataroot(setting)}."
        )


def _show(value: object) -> str:
    """A manifest value as the error shows it: ``192x108`` for a size, ``train=2,val=1`` for scenes."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, list) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return "unrecorded" if value is None else str(value)


def synthetic_dataset(
    split: str = "val",
    *,
    dataroot: str | Path | None = None,
    scenes: int | Mapping[str, int] = 8,
    samples_per_scene: int = 16,
    image_size: Sequence[int] = (1600, 900),
    seed: int = 0,
    cameras: Sequence[str] = CAMERAS,
    resize: Sequence[int] | None = None,
    full_future_only: bool = False,
) -> NuScenesDrivingDataset:
    """The synthetic nuScenes-format split as a :class:`NuScenesDrivingDataset` (generated into the
    cache on first use; an explicit ``dataroot`` must hold the set already, see :func:`ensure_synthetic`).

    Args:
        split: ``train``, ``val`` or ``test`` (the synthetic set's own, disjoint scene streams).
        scenes: scene count per split (``{"val": 32}``), or a total split into train/val.
        resize: optional (W, H) the dataset decodes images at (JPEG draft decoding + resize).
        full_future_only: keep only samples with a full 3 s future in their scene.
    """
    root = ensure_synthetic(
        dataroot,
        scenes=scenes,
        samples_per_scene=samples_per_scene,
        image_size=image_size,
        seed=seed,
        fixes=HYDRA_FIXES,
    )
    return NuScenesDrivingDataset(
        root,
        version=SYNTHETIC_VERSION,
        split=split,
        cameras=tuple(cameras),
        image_size=(int(resize[0]), int(resize[1])) if resize else None,
        full_future_only=full_future_only,
    )
