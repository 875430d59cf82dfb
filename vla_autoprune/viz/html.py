"""One self-contained HTML page per scene: mosaic with a layer slider, sample stepper, run selector.

Everything is inlined (images as data URIs, the data as JSON, plain JavaScript), so the page opens
from disk with no network. Each sample's camera panel is one JPEG; the page draws each layer's
marks on a canvas from the kept bitmask, with the colours of :mod:`vla_autoprune.viz.mosaic`.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vla_autoprune.run_files import atomic_write_text
from vla_autoprune.viz.mosaic import DIM, KEPT, MERGE_TINT, MERGED, OUTLINE_PX
from vla_autoprune.viz.persistence import SampleTrace


@dataclass(frozen=True)
class PageSample:
    """One sample of the page: its panel, token boxes and plots (the same for every run).

    Attributes:
        token: sample token; title: text above the mosaic.
        panel: the undecorated camera panel; boxes: int ``[V, 4]`` patch boxes in it.
        curve_png, bev_png: the retention-curve and bird's-eye-view PNG bytes.
    """

    token: str
    title: str
    panel: Image.Image
    boxes: np.ndarray
    curve_png: bytes
    bev_png: bytes


def data_uri(data: bytes, mime: str) -> str:
    """``data:`` URI of ``data``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def jpeg_bytes(image: Image.Image, quality: int = 85) -> bytes:
    """``image`` encoded as JPEG."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def trace_payload(trace: SampleTrace) -> dict[str, Any]:
    """A run's per-layer marks for one sample: packed kept bits and int16 merge ids, base64."""
    kept = [_b64(np.packbits(row)) for row in trace.kept]
    merged = None if trace.merged_into is None else [_b64(row.astype("<i2")) for row in trace.merged_into]
    return {"kept": kept, "merged": merged, "layers": trace.num_layers}


def page_data(
    title: str, samples: Sequence[PageSample], runs: Sequence[tuple[str, dict[str, SampleTrace]]]
) -> dict[str, Any]:
    """The page's JSON: samples (panel, boxes, plots) and runs (label, marks per sample token)."""
    return {
        "title": title,
        "samples": [
            {
                "token": s.token,
                "title": s.title,
                "panel": data_uri(jpeg_bytes(s.panel), "image/jpeg"),
                "width": s.panel.width,
                "height": s.panel.height,
                "boxes": _b64(np.asarray(s.boxes, dtype="<i2").reshape(-1)),
                "curve": data_uri(s.curve_png, "image/png"),
                "bev": data_uri(s.bev_png, "image/png"),
            }
            for s in samples
        ],
        "runs": [
            {"label": label, "traces": {token: trace_payload(t) for token, t in traces.items()}}
            for label, traces in runs
        ],
        "style": {
            "kept": list(KEPT),
            "merged": list(MERGED),
            "dim": DIM,
            "tint": MERGE_TINT,
            "outline": OUTLINE_PX,
        },
    }


def render_page(data: dict[str, Any]) -> str:
    """The HTML text of the page for :func:`page_data`'s ``data``."""
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    title = str(data["title"]).replace("&", "&amp;").replace("<", "&lt;")
    return _TEMPLATE.replace("__TITLE__", title).replace("__DATA__", text)


def write_page(path: str | Path, data: dict[str, Any]) -> Path:
    """Write the page to ``path`` atomically (readers never see half a page)."""
    path = Path(path)
    atomic_write_text(path, render_page(data))
    return path


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:13px sans-serif;margin:8px;background:#fafafa;color:#222}
#bar{display:flex;gap:14px;align-items:center;flex-wrap:wrap;margin-bottom:6px}
#main{display:flex;gap:10px;align-items:flex-start}
#plots{display:flex;flex-direction:column;gap:6px;align-items:flex-start}
#curve{width:420px;height:auto}
canvas{display:block;image-rendering:pixelated}
.note{color:#a00}
</style></head><body>
<h3 id="title"></h3>
<div id="bar">
 <label id="runbox">run <select id="run"></select></label>
 <span><button id="prev">&#9664;</button> sample <span id="sampleno"></span>
 <button id="next">&#9654;</button></span>
 <label>layer <input id="layer" type="range" min="0" max="0" value="0" step="1">
 <span id="layerno"></span></label>
 <span id="counts"></span>
</div>
<div id="sampletitle"></div><div id="note" class="note"></div>
<div id="main"><canvas id="mosaic"></canvas>
<div id="plots"><img id="curve" alt="retention curve"><img id="bev" alt="bird's-eye view"></div></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const S = D.style;
const $ = (id) => document.getElementById(id);
const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const int16 = (b64) => new Int16Array(bytes(b64).buffer);
const images = D.samples.map((s) => { const i = new Image(); i.src = s.panel; return i; });
const boxes = D.samples.map((s) => int16(s.boxes));
let si = 0, ri = 0;
const rgb = (c, a) => "rgba(" + c[0] + "," + c[1] + "," + c[2] + "," + a + ")";

function outline(ctx, b, colour) {
  const t = S.outline, w = b[2] - b[0], h = b[3] - b[1];
  ctx.fillStyle = rgb(colour, 1);
  ctx.fillRect(b[0], b[1], w, t); ctx.fillRect(b[0], b[3] - t, w, t);
  ctx.fillRect(b[0], b[1], t, h); ctx.fillRect(b[2] - t, b[1], t, h);
}

function trace() { return D.runs[ri].traces[D.samples[si].token]; }

function draw() {
  const s = D.samples[si], t = trace();
  const canvas = $("mosaic"), ctx = canvas.getContext("2d");
  canvas.width = s.width; canvas.height = s.height;
  ctx.drawImage(images[si], 0, 0);
  $("sampleno").textContent = (si + 1) + " / " + D.samples.length;
  $("sampletitle").textContent = s.title;
  $("curve").src = s.curve; $("bev").src = s.bev;
  if (!t) { $("note").textContent = "this run did not evaluate this sample"; return; }
  $("note").textContent = "";
  $("layer").max = t.layers - 1;  // a range input clamps its value to the new max
  const layer = Number($("layer").value);
  $("layerno").textContent = layer + " / " + (t.layers - 1);
  const kept = bytes(t.kept[layer]), merged = t.merged ? int16(t.merged[layer]) : null;
  const bx = boxes[si], n = bx.length / 4;
  let nk = 0, nm = 0;
  const groups = new Set();
  for (let v = 0; v < n; v++) {
    const b = bx.subarray(4 * v, 4 * v + 4);
    if ((kept[v >> 3] >> (7 - (v & 7))) & 1) { outline(ctx, b, S.kept); nk++; continue; }
    if (merged && merged[v] >= 0) {
      ctx.fillStyle = rgb(S.merged, S.tint); ctx.fillRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
      outline(ctx, b, S.merged); nm++; groups.add(merged[v]); continue;
    }
    ctx.fillStyle = rgb([0, 0, 0], 1 - S.dim); ctx.fillRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
  }
  $("counts").textContent = nk + " of " + n + " tokens kept" +
    (groups.size ? ", " + groups.size + " merged from " + nm + " patches" : "");
}

function init() {
  $("title").textContent = D.title;
  D.runs.forEach((r, i) => { const o = document.createElement("option"); o.value = i; o.textContent = r.label; $("run").appendChild(o); });
  if (D.runs.length < 2) $("runbox").style.display = "none";
  // an initial state from the address, e.g. page.html#run=1&sample=3&layer=2
  const at = new URLSearchParams(location.hash.slice(1));
  ri = Math.min(Number(at.get("run")) || 0, D.runs.length - 1); $("run").value = ri;
  si = Math.min(Number(at.get("sample")) || 0, D.samples.length - 1);
  $("layer").max = 64; $("layer").value = Number(at.get("layer")) || 0;
  $("run").addEventListener("change", () => { ri = Number($("run").value); draw(); });
  $("layer").addEventListener("input", draw);
  $("prev").addEventListener("click", () => { si = (si + D.samples.length - 1) % D.samples.length; draw(); });
  $("next").addEventListener("click", () => { si = (si + 1) % D.samples.length; draw(); });
  // data-URI images decode asynchronously: draw (and tell a test the page is ready) once all are in
  Promise.all(images.map((i) => i.decode())).then(() => { draw(); document.body.dataset.ready = "1"; });
}
init();
</script></body></html>
"""
