"""The viewer: kept-token files (crash-safe, resumable), pixel-exact mosaics, the Hydra app, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_overrides
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from data_tools.embedded import SYNTHETIC_VERSION
from planners.vla import VLAPlanner
from vla_autoprune.data import NuScenesDrivingDataset
from vla_autoprune.errors import DataNotFoundError
from vla_autoprune.models import load
from vla_autoprune.pipeline.app import evaluate
from vla_autoprune.pipeline.loop import run_split
from vla_autoprune.pruning import FastVPruner
from vla_autoprune.run_files import RECORDS_FILE, read_records
from vla_autoprune.visualize import visualize
from vla_autoprune.viz.mosaic import (
    DIM,
    KEPT,
    LABEL_PX,
    MERGED,
    base_panel,
    draw_layer,
    geometry_for,
    layer_stack,
)
from vla_autoprune.viz.persistence import KEPT_DIR, KeptStore, SampleTrace, chunk_arrays, write_chunk

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
BUDGET = 64
#: Where the test expects each nuScenes camera in the mosaic, written out independently of mosaic.py.
EXPECTED_SLOT = {
    "CAM_FRONT_LEFT": (0, 0),
    "CAM_FRONT": (0, 1),
    "CAM_FRONT_RIGHT": (0, 2),
    "CAM_BACK_LEFT": (1, 0),
    "CAM_BACK": (1, 1),
    "CAM_BACK_RIGHT": (1, 2),
}


def _cfg(name: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=["device=cpu", *overrides])


@pytest.fixture(scope="module")
def runs(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two finished evaluation runs of the val split: FastV (drop only) and AutoPrune (recycles)."""
    out = {}
    for pruner in ("fastv", "autoprune"):
        folder = tmp_path_factory.mktemp(pruner)
        evaluate(
            _cfg(
                "evaluate",
                *synthetic_overrides(synthetic_root),
                "data.dataset.full_future_only=false",
                f"pruner={pruner}",
                f"budget={BUDGET}",
            ),
            folder,
        )
        out[pruner] = folder
    return out


# -- pixels --------------------------------------------------------------------------------------


def _marker_at(image: np.ndarray, x: int, y: int, colour: tuple[int, int, int]) -> bool:
    return tuple(int(c) for c in image[y, x]) == colour


def _check_pixels(
    mosaic: np.ndarray, panel: np.ndarray, trace: SampleTrace, layers: list[int], cell: tuple[int, int]
) -> None:
    """Every token's patch, found from the layout and the expected surround slot, shows its state."""
    rows, cols = trace.patch_grid
    panel_h = panel.shape[0]
    for i, layer in enumerate(layers):
        top = i * (panel_h + LABEL_PX) + LABEL_PX
        members = trace.merged_members(layer)
        merged = np.zeros(trace.num_visual, dtype=bool)
        for m in members.values():
            merged[m] = True
        for v in range(trace.num_visual):
            r, c = EXPECTED_SLOT[trace.cameras[trace.camera_index[v]]]
            pr, pc = divmod(int(trace.patch_index[v]), cols)
            x0 = c * cell[0] + pc * cell[0] // cols
            y0 = r * (cell[1] + LABEL_PX) + LABEL_PX + pr * cell[1] // rows
            y1 = r * (cell[1] + LABEL_PX) + LABEL_PX + (pr + 1) * cell[1] // rows
            x1 = c * cell[0] + (pc + 1) * cell[0] // cols
            edge = (x0, (y0 + y1) // 2)  # on the patch's inner left border
            centre = ((x0 + x1) // 2, (y0 + y1) // 2)
            kept = bool(trace.kept[layer, v])
            assert _marker_at(mosaic, edge[0], top + edge[1], KEPT) == kept, (layer, v)
            assert _marker_at(mosaic, edge[0], top + edge[1], MERGED) == bool(merged[v]), (layer, v)
            if not kept and not merged[v]:
                base = panel[centre[1], centre[0]].astype(float)
                assert np.all(mosaic[top + centre[1], centre[0]] <= DIM * base + 1), (layer, v)


@pytest.mark.parametrize("pruner", ["fastv", "autoprune"])
def test_png_highlights_exactly_the_kept_patches(runs: dict[str, Path], tmp_path: Path, pruner: str) -> None:
    cfg = _cfg("visualize", f"runs=[{runs[pruner]}]", "scene=0", "layers=[0,2,7]")
    visualize(cfg, tmp_path)
    records = read_records(runs[pruner] / RECORDS_FILE)
    store = KeptStore(runs[pruner])
    token = records[0]["sample_token"]
    trace = store.get(token)
    assert trace.kept[0].all() and trace.kept[2].sum() < trace.kept[0].sum()  # something was dropped
    assert trace.image_region == (0.0, 0.0, 1.0, 1.0)  # DrivingVLA resizes whole images (as _check_pixels)
    folder = next((tmp_path / "png").glob(f"*/00_{token[:8]}"))
    mosaic = np.asarray(Image.open(next(folder.glob("mosaic_*.png"))).convert("RGB"))
    item_images = _images(runs[pruner], records[0]["index"], trace.cameras)
    h, w = item_images[0].shape[:2]
    geometry = geometry_for(trace, (w, h))
    panel = np.asarray(base_panel(item_images, geometry))
    _check_pixels(mosaic, panel, trace, [0, 2, 7], geometry.cell)


def _images(run: Path, index: int, cameras: tuple[str, ...]) -> list[np.ndarray]:
    """The run's camera images of dataset sample ``index``, in ``cameras`` order."""
    data = json.loads((run / "run.json").read_text())["data"]
    dataset = NuScenesDrivingDataset(data["dataroot"], version=SYNTHETIC_VERSION, split=data["split"])
    item = dataset[index]
    by_name = dict(zip(item["cameras"], item["images"].numpy().transpose(0, 2, 3, 1), strict=True))
    return [by_name[c] for c in cameras]


def test_merged_members_are_drawn_as_the_union_of_their_patches(tmp_path: Path) -> None:
    """A known case: 2 cameras of 2 x 3 patches; layer 1 keeps 3 tokens and merges 4 into 2 tokens."""
    cameras = ("CAM_BACK", "CAM_FRONT")  # out of surround order: the slot comes from the name
    v = 12
    kept = np.ones((1, 2, v), dtype=bool)
    kept[0, 1] = False
    kept[0, 1, [0, 7, 11]] = True
    merged_into = np.full((1, 2, v), -1, dtype=np.int16)
    merged_into[0, 1, [1, 2]] = 0
    merged_into[0, 1, [8, 9]] = 1
    write_chunk(
        tmp_path,
        chunk_arrays(
            indices=[5],
            sample_tokens=["s5"],
            scene_tokens=["scene"],
            cameras=cameras,
            patch_grid=(2, 3),
            camera_index=np.repeat([[0, 1]], 6, axis=1),
            patch_index=np.tile(np.arange(6), 2)[None],
            kept=kept,
            visual_tokens=np.array([[12, 5]]),
            merged_tokens=np.array([[0, 2]]),
            merged_into=merged_into,
        ),
    )
    trace = KeptStore(tmp_path).get("s5")
    assert {g: m.tolist() for g, m in trace.merged_members(1).items()} == {0: [1, 2], 1: [8, 9]}
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (30, 60, 3), dtype=np.uint8) for _ in cameras]
    geometry = geometry_for(trace, (60, 30), cell_width=120)
    base = base_panel(images, geometry)
    mosaic = np.asarray(layer_stack([draw_layer(base, geometry, trace, i) for i in (0, 1)], ["0", "1"]))
    _check_pixels(mosaic, np.asarray(base), trace, [0, 1], geometry.cell)


# -- files: crash-safe and resumable ------------------------------------------------------------------


class _CrashingPlanner(VLAPlanner):
    """Dies on its ``crash_at``-th batch, like a killed job (before that batch writes anything)."""

    def __init__(self, crash_at: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.crash_at, self.calls = crash_at, 0

    def plan_with_stats(self, batch):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("killed")
        return super().plan_with_stats(batch)


def test_killed_run_resumes_without_losing_or_duplicating_tokens(
    synthetic_root: Path, tmp_path: Path
) -> None:
    dataset = NuScenesDrivingDataset(synthetic_root, version=SYNTHETIC_VERSION, split="val")
    indices = list(range(6))
    model = load("tiny-drive-vla")
    with pytest.raises(KeyboardInterrupt):
        run_split(
            _CrashingPlanner(2, model=model, pruner=FastVPruner(budget=BUDGET)),
            dataset,
            indices,
            tmp_path,
            batch_size=2,
        )
    assert len(read_records(tmp_path / RECORDS_FILE)) == 2 and len(KeptStore(tmp_path)) == 2
    # Killed after a chunk was written but before its records: drop the last record line.
    run_split(VLAPlanner(model, FastVPruner(budget=BUDGET)), dataset, indices[:4], tmp_path, batch_size=2)
    lines = (tmp_path / RECORDS_FILE).read_text().splitlines(keepends=True)
    (tmp_path / RECORDS_FILE).write_text("".join(lines[:3]))
    # Resumed with another batch size: the re-evaluated sample lands in a new chunk.
    run_split(VLAPlanner(model, FastVPruner(budget=BUDGET)), dataset, indices, tmp_path, batch_size=3)
    records = read_records(tmp_path / RECORDS_FILE)
    store = KeptStore(tmp_path)
    assert sorted(r["index"] for r in records) == indices  # nothing lost or evaluated twice
    assert store.tokens() == [dataset.sample_tokens[i] for i in indices]
    for record in records:
        trace = store.get(record["sample_token"])
        assert trace.index == record["index"]
        assert trace.kept.sum(axis=1).tolist() == record["visual_tokens_per_layer"]  # FastV merges nothing
    assert not list((tmp_path / KEPT_DIR).glob(".*"))  # no temporary file left behind
    run_split(VLAPlanner(model, FastVPruner(budget=BUDGET)), dataset, indices[:2], tmp_path, resume=False)
    assert len(KeptStore(tmp_path)) == 2 and list(tmp_path.glob(f"{KEPT_DIR}.*.bak"))


# -- the app --------------------------------------------------------------------------------------


def test_a_run_named_twice_is_drawn_once(runs: dict[str, Path], tmp_path: Path) -> None:
    """The same run twice (or a sweep and one of its runs) got two labels for one run, one mosaic
    file written twice and a duplicate in the page's run selector."""
    from vla_autoprune.viz.runs import expand_runs

    fastv, autoprune = runs["fastv"], runs["autoprune"]
    named = [fastv, autoprune, Path(f"{fastv}/../{fastv.name}"), autoprune]
    assert expand_runs(named) == [fastv, autoprune]


def test_page_compares_runs_and_live_mode_draws_a_sample(
    synthetic_root: Path, runs: dict[str, Path], tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"  # a sweep folder: its runs, less one without token files
    for name, run in (("fastv", runs["fastv"]), ("autoprune", runs["autoprune"])):
        (sweep / name).mkdir(parents=True)
        for path in run.glob("*.*"):
            (sweep / name / path.name).write_bytes(path.read_bytes())
        (sweep / name / KEPT_DIR).symlink_to(run / KEPT_DIR)
    (sweep / "constant_velocity").mkdir()
    (sweep / "constant_velocity" / RECORDS_FILE).write_text("")
    pages = visualize(_cfg("visualize", f"runs=[{sweep}]"), tmp_path / "two")
    assert len(pages) == 1
    text = pages[0].read_text()
    assert '"label":"fastv[matched] b64"' in text and '"label":"autoprune b64"' in text
    assert "http://" not in text and "https://" not in text and 'src="http' not in text  # nothing fetched
    token = read_records(runs["fastv"] / RECORDS_FILE)[3]["sample_token"]
    live = visualize(
        _cfg(
            "visualize",
            *synthetic_overrides(synthetic_root),
            "data.dataset.full_future_only=false",
            "pruner=fastv",
            f"budget={BUDGET}",
            f"sample={token}",
        ),
        tmp_path / "live",
    )
    assert token in live[0].read_text()
    assert KeptStore(tmp_path / "live" / "live").tokens() == [token]


def test_run_without_token_files_is_a_one_line_error(runs: dict[str, Path], tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for name in ("run.json", "config.yaml", RECORDS_FILE):
        (old / name).write_bytes((runs["fastv"] / name).read_bytes())
    with pytest.raises(DataNotFoundError, match=r"no kept/ token files.*evaluate it again") as err:
        visualize(_cfg("visualize", f"runs=[{old}]"), tmp_path / "out")
    assert "\n" not in str(err.value)


def test_cli_unknown_sample_is_one_line(runs: dict[str, Path], tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vla_autoprune.visualize",
            f"runs=[{runs['fastv']}]",
            "sample=nope",
            f"out_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "sample 'nope' is not in run" in errors[0] and "sample=" in errors[0]
    assert "Traceback" not in proc.stderr


def test_grid_covers_the_processors_centre_crop(llava_folder: Path) -> None:
    """LLaVA's processor resizes the short side and centre-crops: the grid covers the crop only."""
    import torch

    from vla_autoprune.viz.collect import image_region

    model = load(llava_folder)
    w, h = 192, 108
    ramp = np.broadcast_to(np.linspace(0, 255, w, dtype=np.float64)[None, :, None], (h, w, 3))
    pixels = model.processor.image_processor(
        images=[torch.from_numpy(ramp.round().astype(np.uint8)).permute(2, 0, 1)], return_tensors="pt"
    )["pixel_values"][0, 0]
    processor = model.processor.image_processor
    seen = (pixels.numpy() * processor.image_std[0] + processor.image_mean[0]) * 255  # back to 0..255
    x0, y0, x1, y1 = image_region(model, (w, h))
    assert (y0, y1) == (0.0, 1.0) and x1 - x0 == pytest.approx(h / w)
    # the crop's first and last columns show the ramp at x0 and x1 (within a resampled pixel)
    assert seen[:, 0].mean() / 255 == pytest.approx(x0, abs=2 / 28)
    assert seen[:, -1].mean() / 255 == pytest.approx(x1, abs=2 / 28)
    assert image_region(load("tiny-drive-vla"), (w, h)) == (0.0, 0.0, 1.0, 1.0)
    trace = SampleTrace(
        index=0,
        sample_token="s",
        scene_token="scene",
        cameras=("CAM_FRONT",),
        patch_grid=(2, 2),
        image_region=(0.25, 0.0, 0.75, 1.0),
        camera_index=np.zeros(4, dtype=int),
        patch_index=np.arange(4),
        kept=np.ones((1, 4), dtype=bool),
        merged_into=None,
        visual_tokens=np.array([4]),
        merged_tokens=np.array([0]),
        schedule=None,
        mi=None,
        k=None,
    )
    geometry = geometry_for(trace, (200, 100), cell_width=120)
    # CAM_FRONT is the top middle cell (x from 120); the crop is its middle half (x 30..90 within it)
    assert geometry.token_boxes(trace).tolist() == [
        [150, 14, 180, 44],
        [180, 14, 210, 44],
        [150, 44, 180, 74],
        [180, 44, 210, 74],
    ]


def test_damaged_token_file_is_a_one_line_error(runs: dict[str, Path], tmp_path: Path) -> None:
    from vla_autoprune.errors import DataError

    (tmp_path / KEPT_DIR).mkdir()
    chunk = next((runs["fastv"] / KEPT_DIR).glob("*.npz"))
    (tmp_path / KEPT_DIR / chunk.name).write_bytes(chunk.read_bytes()[:200])  # truncated copy
    with pytest.raises(DataError, match=r"is unreadable .*delete it and evaluate the run again") as err:
        KeptStore(tmp_path)
    assert "\n" not in str(err.value)


def test_compared_runs_are_labelled_by_what_tells_them_apart(tmp_path: Path) -> None:
    from vla_autoprune.viz.runs import RunData, distinct_labels

    data = "data.dataset.scenes.val=2 limit=8"

    def run(name: str, pruner: str | None, budget: float | None, variant: str) -> RunData:
        meta = {"planner": "vla", "pruner": pruner, "budget": budget, "variant": variant}
        return RunData(tmp_path / name, meta, {}, kept=None)  # type: ignore[arg-type]  # labels read run.json only

    runs = [
        run("a", "none", None, data),
        run("b", "fastv", 64, f"{data} pruner.layer=3"),
        run("c", "fastv", 64, data),
        run("d", "fastv", 64, data),
    ]
    distinct_labels(runs)
    # the shared data selection names no difference; the two identical fastv runs get their folder
    assert [r.label for r in runs] == ["none", "fastv b64 pruner.layer=3", "fastv b64 (c)", "fastv b64 (d)"]
    single = [run("e", "fastv", 64, data)]
    distinct_labels(single)
    assert single[0].label == f"fastv b64 {data}"  # alone, a run keeps its whole variant


def test_retention_figure_keeps_its_plot_and_every_label_with_long_run_names() -> None:
    import warnings

    from vla_autoprune.viz.curves import Curve, retention_figure
    from vla_autoprune.viz.render import png_bytes

    long = "fastv b64 data.dataset.samples_per_scene=8 data.dataset.scenes.val=2 cameras=black"
    curves = [
        Curve(f"{long} {i}", np.array([384, 200, 100, 50]), np.zeros(4, int), 96.0, None, None)
        for i in range(4)
    ]
    fig = retention_figure(curves, 384)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when the legend squeezes the axes to nothing
        assert png_bytes(fig)[:4] == b"\x89PNG"
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [c.label for c in curves]
    assert fig.axes[0].get_position().width > 0.5  # the plot keeps most of the width


# -- bad input, interruptions, what the pictures show (audit) ---------------------------------------


def _cli(args: list[str], cwd: Path, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m vla_autoprune.visualize args`` (or ``python -c code args``), device cpu."""
    head = ["-c", code] if code is not None else ["-m", "vla_autoprune.visualize"]
    return subprocess.run(
        [sys.executable, *head, "device=cpu", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pruner=nope", "scene=0"], "pruner=nope: there is no pruner config nope.yaml"),
        (["pruner=fastv", "budget=10", "scene=0"], "budget 10 is not reachable"),
        (["pruner=fastv", f"budget={BUDGET}", "scene=0", "layers=[9]"], "layers=[9] are out of range"),
        (["runs=[{run}]", "out_dir={file}"], "cannot write the output folder"),
    ],
)
def test_cli_bad_input_is_one_line_before_the_model_loads(
    synthetic_root: Path, runs: dict[str, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "a_file").write_text("")
    args = [a.format(run=runs["fastv"], file=tmp_path / "a_file") for a in args]
    hydra_dir = tmp_path / "hydra"
    proc = _cli([*synthetic_overrides(synthetic_root), *args, f"hydra.run.dir={hydra_dir}"], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], out
    assert "Traceback" not in out and "loading driving_vla model" not in out and "eval vla" not in out
    assert not hydra_dir.exists()  # a refused command leaves no empty output folder behind


def test_cli_with_out_dir_leaves_no_hydra_folder(runs: dict[str, Path], tmp_path: Path) -> None:
    """out_dir= holds the drawings; the timestamped outputs/viz/<time>/ (a log alone) is not left."""
    out = tmp_path / "out"
    proc = _cli([f"runs=[{runs['fastv']}]", "scene=0", "layers=[0]", f"out_dir={out}"], tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert list(out.rglob("*.html")) and list(out.rglob("*.png"))
    assert not (tmp_path / "outputs").exists()


def test_cli_ctrl_c_is_one_line(runs: dict[str, Path], tmp_path: Path) -> None:
    code = (
        "import sys\nimport vla_autoprune.visualize as v\n"
        "def stop(*args, **kwargs):\n    raise KeyboardInterrupt\n"
        "v.render_scenes = stop\nsys.argv = ['vla-autoprune-visualize', *sys.argv[1:]]\nv.main()\n"
    )
    proc = _cli([f"runs=[{runs['fastv']}]", "scene=0", f"out_dir={tmp_path / 'out'}"], tmp_path, code)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    assert [line for line in out.splitlines() if "interrupted:" in line and "run the command again" in line]


def test_live_run_is_the_run_evaluate_makes(
    synthetic_root: Path, runs: dict[str, Path], tmp_path: Path
) -> None:
    """Live mode runs the pruner evaluate runs: the model's calibration, the same label and numbers."""
    record = read_records(runs["autoprune"] / RECORDS_FILE)[0]
    token = record["sample_token"]
    visualize(
        _cfg(
            "visualize",
            *synthetic_overrides(synthetic_root),
            "data.dataset.full_future_only=false",
            "pruner=autoprune",
            f"budget={BUDGET}",
            f"sample={token}",
        ),
        tmp_path,
    )
    (live,) = read_records(tmp_path / "live" / RECORDS_FILE)
    assert live["k"] == pytest.approx(record["k"]) and live["mi"] == pytest.approx(record["mi"])
    assert live["visual_tokens_per_layer"] == record["visual_tokens_per_layer"]
    evaluated = json.loads((runs["autoprune"] / "run.json").read_text())
    assert (
        json.loads((tmp_path / "live" / "run.json").read_text())["pruner_label"] == evaluated["pruner_label"]
    )


def test_run_whose_data_moved_is_a_one_line_error(runs: dict[str, Path], tmp_path: Path) -> None:
    from vla_autoprune.pipeline.app import USER_ERRORS

    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("config.yaml", RECORDS_FILE):
        (moved / name).write_bytes((runs["fastv"] / name).read_bytes())
    (moved / KEPT_DIR).symlink_to(runs["fastv"] / KEPT_DIR)
    meta = json.loads((runs["fastv"] / "run.json").read_text())
    meta["data"]["dataroot"] = str(tmp_path / "gone")
    (moved / "run.json").write_text(json.dumps(meta))
    with pytest.raises(USER_ERRORS) as err:
        visualize(_cfg("visualize", f"runs=[{moved}]"), tmp_path / "out")
    assert str(tmp_path / "gone") in str(err.value) and "\n" not in str(err.value)


def test_drawing_again_says_what_it_replaces_and_a_kill_leaves_whole_files(
    runs: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = _cfg("visualize", f"runs=[{runs['fastv']}]", "scene=0", "layers=[0,1]", "cell_width=150")
    visualize(cfg, tmp_path)
    assert "draw:" in capfd.readouterr().err  # long work shows progress
    mosaic = next((tmp_path / "png").glob("*/00_*/mosaic_*.png"))
    before = mosaic.read_bytes()
    with caplog.at_level("INFO"):
        visualize(cfg, tmp_path)
    page = next(tmp_path.glob("*.html"))
    assert f"replacing {page} and {mosaic.parents[1]}/ (drawn earlier)" in caplog.text
    assert "(scene 1 of 1:" in caplog.text
    save_png = Image.SAVE["PNG"]

    def killed(image: Image.Image, fp, filename, *args, **kwargs) -> None:  # noqa: ANN001
        if image.width != 3 * 150:  # the plots; the mosaics are three 150 px cells wide
            return save_png(image, fp, filename, *args, **kwargs)
        fp.write(b"\x89PNG half")
        raise KeyboardInterrupt  # killed while encoding a mosaic

    monkeypatch.setitem(Image.SAVE, "PNG", killed)
    with pytest.raises(KeyboardInterrupt):
        visualize(cfg, tmp_path)
    assert mosaic.read_bytes() == before  # the earlier picture is whole
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temporary file left


def test_drawing_again_leaves_no_picture_of_the_earlier_drawing(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """A scene drawn for two runs, then for one, then for one sample: only what was drawn last is left."""
    both = f"runs=[{runs['fastv']},{runs['autoprune']}]"
    visualize(_cfg("visualize", both, "scene=0", "layers=[0]", "cell_width=100"), tmp_path)
    assert {p.name.split("_")[1] for p in (tmp_path / "png").glob("*/00_*/mosaic_*.png")} == {
        "fastv",
        "autoprune",
    }
    folders = sorted((tmp_path / "png").glob("*/*"))
    assert len(folders) > 1
    visualize(
        _cfg("visualize", f"runs=[{runs['fastv']}]", "scene=0", "layers=[0]", "cell_width=100"), tmp_path
    )
    assert {p.name.split("_")[1] for p in (tmp_path / "png").glob("*/*/mosaic_*.png")} == {"fastv"}
    token = json.loads((runs["fastv"] / RECORDS_FILE).read_text().splitlines()[0])["sample_token"]
    visualize(
        _cfg("visualize", f"runs=[{runs['fastv']}]", f"sample={token}", "layers=[0]", "cell_width=100"),
        tmp_path,
    )
    (left,) = sorted((tmp_path / "png").glob("*/*"))
    names = sorted(p.name for p in left.iterdir())
    assert left.name.endswith(token[:8]) and len(names) == 3 and names[0] == "bev.png"
    assert names[1].startswith("mosaic_fastv") and names[2] == "retention.png"


def test_bev_map_holds_the_records_the_devkit_finds_around_the_sample(synthetic_root: Path) -> None:
    """The map drawn is the devkit's get_records_in_patch answer (queried through the map's index)."""
    from vla_autoprune.data import NuScenesDrivingDataset
    from vla_autoprune.viz.bev import MAP_RADIUS_M, _nuscenes_map, map_layers

    dataset = NuScenesDrivingDataset(synthetic_root, split="val", version="v1.0-synthetic")
    nusc = dataset.nusc
    token = dataset.sample_tokens[0]
    layers = map_layers(nusc, token)
    assert layers is not None and layers.drivable and layers.lanes
    sample = nusc.get("sample", token)
    location = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]
    pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
    x, y = pose["translation"][:2]
    nmap = _nuscenes_map(str(nusc.dataroot), location)
    patch = (x - MAP_RADIUS_M, y - MAP_RADIUS_M, x + MAP_RADIUS_M, y + MAP_RADIUS_M)
    found = nmap.get_records_in_patch(patch, ["drivable_area", "lane", "lane_connector"], mode="intersect")
    polygons = sum(len(nmap.get("drivable_area", t)["polygon_tokens"]) for t in found["drivable_area"])
    assert len(layers.drivable) == polygons
    assert len(layers.lanes) == len(found["lane"]) + len(found["lane_connector"])


def test_bev_legend_covers_no_data() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vla_autoprune.viz.bev import Trajectory, bev_figure

    gt = np.column_stack([np.linspace(1, 12, 6), np.zeros(6)])
    trajectories = [Trajectory("ground truth", gt)] + [
        Trajectory(f"run {i} b64", gt + [0, 0.3 * i], np.zeros(6, bool)) for i in range(3)
    ]
    boxes = np.zeros((6, 1, 5))
    boxes[:, 0] = [-1.0, -10.0, 2.0, 4.0, 0.0]  # an agent right of and behind the ego
    fig = bev_figure(trajectories, boxes, np.zeros((6, 1), int), title="s")
    FigureCanvasAgg(fig).draw()
    (ax,) = fig.axes
    legends = [*fig.legends, *([ax.get_legend()] if ax.get_legend() is not None else [])]
    assert [t.get_text() for t in legends[0].get_texts()] == [t.label for t in trajectories]
    for legend in legends:
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())


def test_retention_legend_names_merged_tokens_only_when_a_run_merged() -> None:
    from vla_autoprune.viz.curves import Curve, retention_figure

    kept = np.array([384, 200, 100, 50])
    plain = Curve("fastv b64", kept, np.zeros(4, int), 64.0)
    merging = Curve("autoprune b64", kept, np.array([0, 4, 6, 6]), 64.0, 0.3, 0.2)
    (legend,) = retention_figure([plain], 384).legends
    assert legend.get_title().get_text() == ""  # nothing dotted is drawn, nothing dotted is named
    (legend,) = retention_figure([plain, merging], 384).legends
    assert legend.get_title().get_text() == "dotted: merged"


def test_runs_on_different_data_are_refused_not_drawn_on_the_first_ones_images(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    import json
    import shutil

    from vla_autoprune.errors import ConfigError
    from vla_autoprune.viz.runs import check_same_data, load_run

    def copy_with(name: str, **data: object) -> Path:
        folder = Path(shutil.copytree(runs["fastv"], tmp_path / name))
        meta = json.loads((folder / "run.json").read_text())
        meta["data"] = {**meta["data"], **data}
        (folder / "run.json").write_text(json.dumps(meta))
        return folder

    fastv, autoprune = load_run(runs["fastv"]), load_run(runs["autoprune"])
    check_same_data([fastv, autoprune])  # one dataset: fine
    check_same_data([fastv, load_run(copy_with("selection", full_future_only=True))])  # same images
    other = load_run(copy_with("other", image_size=[96, 96]))
    with pytest.raises(ConfigError) as err:
        check_same_data([fastv, autoprune, other])
    message = str(err.value)
    size = json.loads((runs["fastv"] / "run.json").read_text())["data"]["image_size"]
    assert "\n" not in message and f"image_size {size} vs [96, 96]" in message
    assert str(other.run_dir) in message and message.endswith("draw them on separate pages")
