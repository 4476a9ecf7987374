"""Per-image pipeline time on the tiny model: shared image prefix vs separate single-turn calls.

Both ways run in the same process on the same images, so the ratio is a fair comparison.
The separate way is what the reference app does: every phase is a fresh chat that encodes
the image again. Usage:

    python bench/pipeline_cpu.py --model var/models/tiny [--images 3] [--size 1024x768] [--small-budgets]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table
from transformers.utils import logging as hf_logging

from services.ingest import decode_image
from services.models.loader import load_model, source_from_dir
from services.pipeline.engine import Engine
from services.pipeline.profile import PROFILES_DIR, load_profile
from services.pipeline.runner import Pipeline

SMALL_BUDGETS = {"interpret": 320, "classify": 32, "detect": 120, "keypoints": 120, "segment": 160}


def _png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    # A smooth gradient plus speckle: closer to an ultrasound frame than pure noise.
    yy, xx = np.mgrid[0:height, 0:width]
    base = ((xx + yy) % 256).astype(np.uint8)
    pixels = np.clip(base[..., None] + rng.normal(0, 20, (height, width, 1)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.repeat(pixels, 3, axis=2)).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--profile", default="fada-skd")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--small-budgets", action="store_true", help="the test suite's token budgets")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")

    profile = load_profile(args.profile)
    if args.small_budgets:
        data = json.loads((PROFILES_DIR / "fada-skd.json").read_text()) if args.profile == "fada-skd" else None
        if data is None:
            raise SystemExit("--small-budgets applies to the bundled profile only")
        data["max_new_tokens"] = SMALL_BUDGETS
        profile = profile.model_validate(data)
    loaded = load_model(source_from_dir(args.model), profile_name=profile.name, profile_version=profile.version)
    engine = Engine(loaded, max_side=profile.image.max_side)
    shared = Pipeline(engine, profile, loaded.provenance, share_prefix=True)
    separate = Pipeline(engine, profile, loaded.provenance, share_prefix=False)

    width, height = (int(v) for v in args.size.split("x"))
    images = [decode_image(_png(width, height, seed)) for seed in range(args.images)]
    shared.analyze(images[0])  # warm-up: first-call allocations and grammar compilation

    times: dict[str, list[float]] = {"shared prefix": [], "separate calls": []}
    tokens: list[int] = []
    for decoded in images:
        for name, pipeline in (("shared prefix", shared), ("separate calls", separate)):
            started = time.perf_counter()
            doc = pipeline.analyze(decoded)
            times[name].append(time.perf_counter() - started)
        tokens.append(sum(len(r.raw or "") for r in doc.phases.values()))
        model_calls = sum(1 for r in doc.phases.values() if r.raw is not None)

    console = Console()
    table = Table(title=f"tiny model, {args.images} images of {args.size}, {model_calls} model phases each")
    table.add_column("way")
    table.add_column("median s/image", justify="right")
    table.add_column("min", justify="right")
    table.add_column("max", justify="right")
    for name, values in times.items():
        table.add_row(name, f"{statistics.median(values):.3f}", f"{min(values):.3f}", f"{max(values):.3f}")
    console.print(table)
    ratio = statistics.median(times["separate calls"]) / statistics.median(times["shared prefix"])
    console.print(f"answer length: median {statistics.median(tokens):.0f} characters per image")
    console.print(f"ratio separate / shared: {ratio:.2f}x")


if __name__ == "__main__":
    main()
