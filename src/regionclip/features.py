"""Region feature extraction for a folder of images (official ``tools/extract_region_features.py`` as a library)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .text.vocabulary import Vocabulary
from .utils import atomic_write

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class ExtractionSummary:
    written: int
    skipped: int  # already present from an earlier run


def list_images(image_dir: str | Path) -> list[Path]:
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise NotADirectoryError(f"not a directory: {image_dir}")
    return sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


@torch.inference_mode()
def extract_region_features(
    model: Any,
    image_dir: str | Path,
    out_dir: str | Path,
    vocabulary: Vocabulary | str | None = None,
    num_proposals: int = 100,
    rpn_nms_threshold: float = 0.9,
    batch_size: int = 4,
    progress: bool = True,
) -> ExtractionSummary:
    """Write ``<out_dir>/<image stem>.safetensors`` per image: ``boxes`` [R, 4] (xyxy, original pixels),
    ``features`` [R, D] (un-normalised attention-pool outputs), ``objectness_logits`` [R]; with a vocabulary also
    ``probabilities`` [R, K + 1] (softmax over the names and background, background last, before any RPN fusion).
    Images whose file already exists are skipped, so an interrupted run resumes."""
    if model.rpn is None:
        raise ValueError("feature extraction needs an RPN attached to the model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = list_images(image_dir)
    todo = [p for p in images if not (out_dir / f"{p.stem}.safetensors").is_file()]
    vocab = Vocabulary.parse(vocabulary) if vocabulary is not None else None
    weights = model.embed_vocabulary(vocab).to(model.device) if vocab is not None else None
    model.rpn.eval()
    for start in tqdm(range(0, len(todo), batch_size), disable=not progress, desc="extracting", unit="batch"):
        chunk = todo[start : start + batch_size]
        prepared = model.prepare([str(p) for p in chunk])
        proposals = model.rpn([p.pixels for p in prepared], nms_thresh=rpn_nms_threshold, post_nms_topk=num_proposals)
        input_boxes = [p.boxes.to(model.device) for p in proposals]
        features = model.encode_boxes(prepared, input_boxes)
        for path, image, props, boxes, feats in zip(chunk, prepared, proposals, input_boxes, features):
            tensors = {
                "boxes": image.to_original_boxes(boxes).cpu().contiguous(),
                "features": feats.cpu().contiguous(),
                "objectness_logits": props.objectness_logits.float().cpu().contiguous(),
            }
            metadata = {"image": str(path), "height": str(image.original_size[0]), "width": str(image.original_size[1])}
            if weights is not None:
                tensors["probabilities"] = model.classifier(feats, weights).softmax(dim=-1).cpu().contiguous()
                metadata["vocabulary"] = json.dumps(list(vocab.names))
            target = out_dir / f"{path.stem}.safetensors"
            atomic_write(target, lambda tmp, t=tensors, m=metadata: save_file(t, str(tmp), metadata=m))
    return ExtractionSummary(written=len(todo), skipped=len(images) - len(todo))
