"""The main job (`regionclip demo`, `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .api import RegionCLIP
from .config import ModelConfig
from .utils import atomic_write_text
from .viz import draw_predictions, side_by_side


def _shapes_image(seed: int, size: int = 256) -> tuple[Image.Image, list[list[float]]]:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(150, 255, 3)))
    draw = ImageDraw.Draw(image)
    boxes = []
    for _ in range(3):
        w, h = rng.integers(size // 5, size // 2, 2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        colour = tuple(int(v) for v in rng.integers(0, 150, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + w, y + h], fill=colour)
        boxes.append([float(x), float(y), float(x + w), float(y + h)])
    return image, boxes


def run_demo(out_dir: str | Path) -> Path:
    """Zero-shot classification of given boxes with two generated tiny models, drawn side by side."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocabulary = "circle,square,rectangle,ellipse,triangle"
    panels, records = [], []
    for seed, title in ((0, "model A (random tiny)"), (1, "model B (random tiny)")):
        torch.manual_seed(seed)
        model = RegionCLIP.from_config(ModelConfig.tiny())
        image, boxes = _shapes_image(seed=7)
        predictions = model.classify_regions(image, boxes, vocabulary, top_k=3, templates="single")[0]
        panels.append(draw_predictions(image, predictions, title=title))
        records.append({"model": title, **predictions.to_json()})
    picture = out_dir / "regions_top3.png"
    side_by_side(panels).save(picture)
    atomic_write_text(out_dir / "predictions.json", json.dumps(records, indent=1))
    report = out_dir / "report.md"
    atomic_write_text(
        report,
        "# regionclip demo\n\nZero-shot top-3 labels of given boxes from two generated tiny models "
        "(random weights, so the labels are arbitrary).\n\n![regions](regions_top3.png)\n",
    )
    return report
