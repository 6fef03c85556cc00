"""Fig. 1-style pictures: every box with its top-k labels and percentages; panels side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import supervision as sv
import torch
from PIL import Image, ImageDraw, ImageFont

from ..data.images import ImageInput, load_image_file, rgb_pixels, to_rgb8
from ..results import RegionPredictions


def format_percent(probability: float) -> str:
    """0.995 → '99.5%', 0.0043 → '0.43%', 0.0002 → '0.02%' (the appendix's style)."""
    value = probability * 100
    return f"{value:.1f}%" if value >= 1 else f"{value:.2g}%"


def _as_pil(image: ImageInput) -> Image.Image:
    """The image as the model saw it (same decoding rules), as 8-bit RGB."""
    if isinstance(image, (str, Path)):
        return load_image_file(image)
    if isinstance(image, Image.Image):
        return to_rgb8(image)
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] == 3 and image.shape[2] != 3:
        image = image.transpose(1, 2, 0)  # a CHW array, as tensors are laid out
    pixels = rgb_pixels(image)
    return Image.fromarray(pixels.float().round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())


def draw_predictions(
    image: ImageInput,
    predictions: RegionPredictions,
    title: str | None = None,
    top_k: int | None = None,
    min_side: int = 640,
) -> Image.Image:
    """The image with each box and its top-k ``label, percent`` lines. Small images are enlarged to ``min_side``
    so labels stay legible."""
    canvas = _as_pil(image)
    predictions = predictions.subset(predictions.valid)  # boxes empty inside the image have no labels to show
    scale = max(1.0, min_side / min(canvas.size))
    if scale > 1:
        canvas = canvas.resize((round(canvas.width * scale), round(canvas.height * scale)), Image.BICUBIC)
    frame = np.array(canvas)[:, :, ::-1].copy()  # supervision draws on BGR arrays
    if len(predictions):
        detections = predictions.to_supervision()
        detections.xyxy = detections.xyxy * scale
        k = predictions.labels.shape[1] if top_k is None else min(top_k, predictions.labels.shape[1])
        labels = [
            "\n".join(f"{name}, {format_percent(score)}" for name, score in zip(names[:k], scores[:k]))
            for names, scores in zip(predictions.class_names, predictions.scores.tolist())
        ]
        detections.class_id = np.arange(len(detections))  # one colour per box
        frame = sv.BoxAnnotator(thickness=2, color_lookup=sv.ColorLookup.INDEX).annotate(frame, detections)
        frame = sv.LabelAnnotator(
            text_scale=0.45, text_padding=4, color_lookup=sv.ColorLookup.INDEX, smart_position=True
        ).annotate(frame, detections, labels=labels)
    drawn = Image.fromarray(frame[:, :, ::-1])
    return _with_title(drawn, title) if title else drawn


def _with_title(image: Image.Image, title: str) -> Image.Image:
    font = ImageFont.load_default(size=22)
    band = 36
    out = Image.new("RGB", (image.width, image.height + band), "white")
    out.paste(image, (0, band))
    ImageDraw.Draw(out).text((8, 6), title, fill="black", font=font)
    return out


def side_by_side(panels: list[Image.Image], gap: int = 12) -> Image.Image:
    """Panels left to right on a white background (e.g. teacher vs student)."""
    if not panels:
        raise ValueError("no panels to place")
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    out = Image.new("RGB", (width, max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        out.paste(panel, (x, 0))
        x += panel.width + gap
    return out
