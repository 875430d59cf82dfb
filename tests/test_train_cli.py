"""``python -m data_tools.train_tiny_vla``'s command line: bad input is one line, exit 2, found
before minutes of data generation; Ctrl-C is one line, exit 130 (nothing here trains)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from data_tools import train_tiny_vla


def _refused(argv: list[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> str:
    """The one error line ``main(argv)`` ends with (exit 2), nothing trained or generated."""

    def never(*_args: object) -> None:
        raise AssertionError("it started work")

    monkeypatch.setattr(train_tiny_vla, "train", never)
    monkeypatch.setattr(train_tiny_vla, "evaluate_folder", never)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        train_tiny_vla.main(argv)
    assert exit_info.value.code == 2
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].message
    return caplog.records[0].message


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--threads", "0"], "--threads must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--steps", "-1"], "--steps must be at least 1"),
        (["--train-scenes", "0"], "--train-scenes must be at least 1"),
        (["--samples-per-scene", "2"], "--samples-per-scene must be at least 7"),
        (["--patch-size", "0"], "--patch-size must be at least 1"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--vision-from-layer", "99"], "vision_from_layer=99 is outside the decoder's 8 layers"),
        (["--patch-size", "12", "--spatial-merge", "5"], "spatial_merge_size=5 must be an int >= 1"),
    ],
)
def test_bad_recipe_flags_are_one_line_before_any_work(
    flags: list[str],
    named: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _refused(["--out", str(tmp_path / "model"), *flags], caplog, monkeypatch)
    assert message.startswith(f"error: {named}") and "--help" in message
    assert not any(tmp_path.iterdir())


def test_an_out_that_cannot_be_written_or_evaluated_is_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    message = _refused(["--out", str(blocker)], caplog, monkeypatch)
    assert message.startswith("error: --out") and "is a file" in message
    caplog.clear()
    message = _refused(["--out", str(blocker / "model")], caplog, monkeypatch)
    assert message.startswith("error: --out") and "cannot write the output folder" in message
    caplog.clear()
    message = _refused(["--out", str(tmp_path / "none"), "--evaluate-only"], caplog, monkeypatch)
    assert message.startswith("error: --evaluate-only") and "training.json" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no probe left behind


def test_ctrl_c_is_one_line_exit_130(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train_tiny_vla, "train", interrupted)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        train_tiny_vla.main(["--out", str(tmp_path / "model")])
    assert exit_info.value.code == 130
    assert len(caplog.records) == 1 and caplog.records[0].message.startswith("interrupted: ")
