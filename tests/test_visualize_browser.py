"""The scene page in a real headless Chromium: move the layer slider with the keyboard, read pixels.

Talks the DevTools protocol over ``--remote-debugging-pipe`` (fds 3 and 4, NUL-framed JSON), so no
driver package is needed. Skips only where no Chromium executable exists (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import synthetic_overrides
from hydra import compose, initialize_config_dir
from PIL import Image

from vla_autoprune.pipeline.app import evaluate
from vla_autoprune.visualize import visualize
from vla_autoprune.viz.mosaic import KEPT
from vla_autoprune.viz.persistence import KeptStore

CONF = Path(__file__).resolve().parents[1] / "conf"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--force-device-scale-factor=1",
    "--window-size=1400,900",
    "--remote-debugging-pipe",
)
TIMEOUT_S = 30.0

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium executable (apt-get install -y chromium)"
)


class DevTools:
    """A headless Chromium driven over the DevTools pipe (one page, flattened session)."""

    def __init__(self, url: str, profile: Path) -> None:
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()

        def fds() -> None:  # the browser reads commands on fd 3 and writes replies on fd 4
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        assert CHROMIUM is not None
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", url],
            preexec_fn=fds,
            close_fds=False,  # os.pipe fds are not inheritable; only the dup2'd 3 and 4 reach the child
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._next_id, self._buffer = 0, b""
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)[
            "sessionId"
        ]

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its reply (events in between are ignored)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer {method} in {TIMEOUT_S} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        """A command to the page's session."""
        return self.call(method, session=self.session, **params)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        return self.page("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def screenshot(self) -> np.ndarray:
        """uint8 ``[H, W, 3]`` of the viewport."""
        data = base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def press(self, key: str, code: int) -> None:
        """One key stroke into the focused element."""
        for kind in ("keyDown", "keyUp"):
            self.page("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._write)
        os.close(self._read)


def _highlighted(shot: np.ndarray, origin: tuple[int, int], boxes: np.ndarray) -> int:
    """How many patch boxes show the kept colour on their inner left border."""
    x, y = origin
    return sum(
        tuple(int(c) for c in shot[y + (y0 + y1) // 2, x + x0]) == KEPT for x0, y0, _, y1 in boxes.tolist()
    )


def test_layer_slider_shows_fewer_highlighted_patches_at_a_later_layer(
    synthetic_root: Path, tmp_path: Path
) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        run_cfg = compose(
            "evaluate",
            overrides=[
                *synthetic_overrides(synthetic_root),
                "device=cpu",
                "pruner=fastv",
                "budget=64",
                "limit=2",
            ],
        )
        view_cfg = compose("visualize", overrides=[f"runs=[{tmp_path / 'run'}]", "layers=[0]"])
    evaluate(run_cfg, tmp_path / "run")
    page = visualize(view_cfg, tmp_path / "viz")[0]
    browser = DevTools(page.resolve().as_uri(), tmp_path / "profile")
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while browser.evaluate("document.body && document.body.dataset.ready") != "1":
            assert time.monotonic() < deadline, "the page never finished drawing"
            time.sleep(0.1)
        rect = browser.evaluate(
            "(() => { const r = document.getElementById('mosaic').getBoundingClientRect(); return [r.x, r.y]; })()"
        )
        origin = (round(rect[0]), round(rect[1]))
        data = json.loads(browser.evaluate("document.getElementById('data').textContent"))
        boxes = np.frombuffer(base64.b64decode(data["samples"][0]["boxes"]), dtype="<i2").reshape(-1, 4)
        before = _highlighted(browser.screenshot(), origin, boxes)
        browser.evaluate("document.getElementById('layer').focus()")
        browser.press("End", 35)  # a range input jumps to its last value
        last = int(browser.evaluate("document.getElementById('layer').value"))
        after = _highlighted(browser.screenshot(), origin, boxes)
    finally:
        browser.close()
    trace = KeptStore(tmp_path / "run").get(data["samples"][0]["token"])
    assert last == trace.num_layers - 1
    assert before == trace.kept[0].sum() == len(boxes)
    assert after == trace.kept[last].sum() < before
