"""What drawing a result costs a gateway: ``GET /v1/jobs/{id}/overlay.png`` decodes the stored
PNG, draws the shapes and encodes a new PNG, on the gateway's CPU. The baseline, timed in the
same run on the same image, is a decode and re-encode at PIL's default zlib level (6), which
the overlay first used; then the same at the level the overlay uses now, then the overlay.
(``/image`` sends the stored bytes as they are.)

The image: an ultrasound-sized frame (default 1024 x 768) of smooth noise, so that PNG encodes
it as it would a scan, not a flat colour. The shapes: as many boxes, masks (64-point polygons)
and keypoint items as a busy result has.

Usage:

    .venv/bin/python bench/overlay_render.py [--size 1024x768] [--boxes 20] [--masks 6] [--repeats 20]
    .venv/bin/python bench/overlay_render.py --real-scan   # a real obstetric frame, mostly black
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from services.export.overlay import PNG_COMPRESS_LEVEL, result_overlay
from services.pipeline.profile import load_profile
from shared.schemas.results import (
    Detection,
    ImageInfo,
    Keypoints,
    ModelInfo,
    PhaseReport,
    ResultDocument,
    Segmentation,
)


def scan_like_png(width: int, height: int, seed: int = 0) -> bytes:
    """Grey speckle over a smooth gradient: compresses like an ultrasound frame, not like a flat image."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(20, 160, width)[None, :] * np.linspace(0.4, 1.0, height)[:, None]
    speckle = rng.gamma(2.0, 12.0, size=(height, width))
    grey = np.clip(gradient + speckle, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(out, format="PNG")
    return out.getvalue()


def real_scan_png() -> bytes:
    """pydicom's obstetric ultrasound, decoded and stored as ingest stores every upload."""
    from pydicom.data import get_testdata_file

    from services.ingest import decode_image
    from services.jobs import encode_png

    path = get_testdata_file("examples_palette.dcm")
    assert path is not None
    with open(path, "rb") as f:
        return encode_png(decode_image(f.read()))


def busy_result(width: int, height: int, *, boxes: int, masks: int, classes: list[str]) -> ResultDocument:
    def box(i: int) -> tuple[float, float, float, float]:
        x, y = (i * 97) % (width - 120), (i * 61) % (height - 120)
        return float(x), float(y), 100.0, 80.0

    def polygon(i: int) -> list[float]:
        cx, cy, r = 150 + (i * 131) % (width - 300), 150 + (i * 89) % (height - 300), 120
        angles = [k * math.tau / 64 for k in range(64)]
        return [v for a in angles for v in (cx + r * math.cos(a), cy + r * math.sin(a))]

    label = [c for c in classes if c not in ("CRL_KP", "NTKpoints", "ScaleBarKpoints")]
    return ResultDocument(
        status="succeeded",
        model=ModelInfo(base="bench", adapter=None, revision="bench", profile="fada-skd", untrained=True),
        image=ImageInfo(width=width, height=height, sha256="0" * 64, format="png"),
        detections=[Detection(id=i + 1, label=label[i % len(label)], category_id=1, bbox=box(i), score=0.5)
                    for i in range(boxes)],
        segmentations=[Segmentation(id=i + 1, label=label[(i + 3) % len(label)], category_id=1, bbox=box(i),
                                    segmentation=[polygon(i)], area=1.0) for i in range(masks)],
        keypoints=[Keypoints(id=1, label="CRL_KP", category_id=1, bbox=(100, 100, 300, 200),
                             keypoints=[100, 100, 2, 400, 300, 2, 250, 200, 1], num_keypoints=3)],
        phases={"detect": PhaseReport(status="ok")},
    )


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls, after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the image")
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--masks", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--real-scan", action="store_true",
                        help="use pydicom's obstetric ultrasound (examples_palette.dcm, 800x350) as ingest stores it")
    args = parser.parse_args(argv)
    if args.real_scan:
        png = real_scan_png()
        width, height = Image.open(io.BytesIO(png)).size
    else:
        width, height = (int(v) for v in args.size.lower().split("x"))
        png = scan_like_png(width, height)
    classes = load_profile("fada-skd").classes
    document = busy_result(width, height, boxes=args.boxes, masks=args.masks, classes=classes)

    def reencode(level: int) -> Callable[[], bytes]:
        def run() -> bytes:
            out = io.BytesIO()
            with Image.open(io.BytesIO(png)) as stored:
                stored.convert("RGB").save(out, format="PNG", compress_level=level)
            return out.getvalue()
        return run

    def draw() -> bytes:
        return result_overlay(png, document, job_id="bench", classes=classes)

    rows = [("decode + encode, zlib level 6 (PIL's default; baseline)", reencode(6)),
            (f"decode + encode, zlib level {PNG_COMPRESS_LEVEL}", reencode(PNG_COMPRESS_LEVEL)),
            (f"overlay: decode, draw, encode at level {PNG_COMPRESS_LEVEL}", draw)]
    table = Table(title=f"overlay of {args.boxes} boxes, {args.masks} masks, 1 keypoint item on {width}x{height} "
                        f"({len(png) / 1024:.0f} KiB stored PNG), median of {args.repeats}")
    for column in ("what", "ms", "× baseline", "PNG KiB"):
        table.add_column(column, justify="right" if column != "what" else "left")
    baseline = None
    for name, fn in rows:
        ms = timed(fn, args.repeats)
        baseline = baseline or ms
        table.add_row(name, f"{ms:.1f}", f"{ms / baseline:.2f}", f"{len(fn()) / 1024:.0f}")
    Console(width=140).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
