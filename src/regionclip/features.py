"""Region feature extraction for a folder of images (official ``tools/extract_region_features.py`` as a library)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from .data.images import PreparedImage, prepare_image
from .text.embedder import module_fingerprint
from .text.templates import resolve_templates
from .text.vocabulary import Vocabulary
from .utils import atomic_write, progress as progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# What decoding a bad image file raises: missing / unreadable / truncated / not an image (OSError and PIL's
# UnidentifiedImageError), unsupported content (ValueError), PIL's decompression-bomb guard.
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)
OUTPUT_SUFFIX = ".safetensors"


@dataclass
class ExtractionSummary:
    written: int
    skipped: int  # already present from an earlier run with the same settings
    failed: dict[str, str] = field(default_factory=dict)  # image path → why it could not be read


def list_images(image_dir: str | Path) -> list[Path]:
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise NotADirectoryError(f"not a directory: {image_dir}")
    return sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def output_path(out_dir: str | Path, image: str | Path) -> Path:
    """``<out_dir>/<image file name>.safetensors``: the image's extension stays in the name, so ``a.jpg`` and
    ``a.png`` get distinct files."""
    return Path(out_dir) / f"{Path(image).name}{OUTPUT_SUFFIX}"


def describe_failure(image: str | Path, error: BaseException) -> str:
    """One line naming the image and what went wrong with it."""
    message = str(error) or type(error).__name__
    return message if str(image) in message else f"{image}: {message}"


def extraction_settings(
    model: Any, vocabulary: Vocabulary | None, templates: str, num_proposals: int, rpn_nms_threshold: float
) -> dict[str, Any]:
    """Everything an output file depends on besides its image: the SHA-256 of all model weights (CLIP and RPN),
    the input resizing, the proposal settings, and the vocabulary with its prompt templates."""
    return {
        "weights_sha256": module_fingerprint(model),
        "min_size": model.config.input.min_size,
        "max_size": model.config.input.max_size,
        "num_proposals": num_proposals,
        "rpn_nms_threshold": rpn_nms_threshold,
        "vocabulary": list(vocabulary.names) if vocabulary is not None else None,
        "templates": templates if vocabulary is not None else None,
        # recorded only off fp32, so folders made before precision was a setting still resume
        **({"precision": model.precision} if getattr(model, "precision", "fp32") != "fp32" else {}),
    }


def check_existing_outputs(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume into a folder whose feature files were made with other settings (mixing them would give
    a data set whose rows are not comparable)."""
    for path in sorted(out_dir.glob(f"*{OUTPUT_SUFFIX}")):
        try:
            with safe_open(str(path), "pt") as handle:
                recorded = (handle.metadata() or {}).get("settings")
        except Exception as error:  # safetensors raises its own error types for a damaged header
            raise ValueError(f"cannot read the existing feature file {path} ({error}); delete it or use another --out folder") from None
        if recorded is None:
            raise ValueError(
                f"{path} records no extraction settings (written by an older version or another tool); "
                "use another --out folder or delete the old files"
            )
        previous = json.loads(recorded)
        differing = sorted(key for key in settings.keys() | previous.keys() if settings.get(key) != previous.get(key))
        if differing:
            details = ", ".join(
                "weights" if key == "weights_sha256" else f"{key} {previous.get(key)!r} → {settings.get(key)!r}"
                for key in differing
            )
            raise ValueError(
                f"{out_dir} holds features made with other settings ({details}; e.g. {path.name}); "
                "use another --out folder or delete those files"
            )


class PreparedImages(Dataset):
    """Image files decoded and resized for the model (`prepare_image`), as ``(path, image, None)``, or
    ``(path, None, reason)`` for a file that cannot be read, so one bad file does not stop a DataLoader."""

    def __init__(self, paths: list[Path], min_size: int, max_size: int) -> None:
        self.paths, self.min_size, self.max_size = paths, min_size, max_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Path, PreparedImage | None, str | None]:
        path = self.paths[index]
        try:
            return path, prepare_image(str(path), self.min_size, self.max_size), None
        except UNREADABLE_IMAGE_ERRORS as error:
            return path, None, describe_failure(path, error)


def prepared_image_batches(paths: list[Path], min_size: int, max_size: int, batch_size: int, num_workers: int) -> DataLoader:
    """Lists of `PreparedImages` items, ``batch_size`` images each, in the order of ``paths``: ``num_workers``
    processes decode and resize the next batches while the caller computes (0 decodes in this process; the items
    are the same for any number of workers)."""
    return DataLoader(PreparedImages(paths, min_size, max_size), batch_size=batch_size, num_workers=num_workers,
                      collate_fn=list)


def readable_positions(batch: list[tuple[Path, PreparedImage | None, str | None]], on_error: str,
                       failed: dict[str, str]) -> list[int]:
    """Positions of the decoded images of a `prepared_image_batches` batch; an unreadable one is recorded in
    ``failed`` (``on_error="skip"``) or stops the run with a ValueError naming it (``"fail"``)."""
    positions = []
    for position, (path, image, reason) in enumerate(batch):
        if image is not None:
            positions.append(position)
        elif on_error == "fail":
            raise ValueError(f"cannot read image {reason}")
        else:
            failed[str(path)] = reason
    return positions


@torch.inference_mode()
def extract_region_features(
    model: Any,
    image_dir: str | Path,
    out_dir: str | Path,
    vocabulary: Vocabulary | str | None = None,
    num_proposals: int = 100,
    rpn_nms_threshold: float = 0.9,
    batch_size: int = 4,
    templates: str = "ensemble",
    on_error: str = "skip",
    progress: bool = True,
    num_workers: int = 0,
) -> ExtractionSummary:
    """Write ``<out_dir>/<image file name>.safetensors`` per image (``a.jpg`` → ``a.jpg.safetensors``): ``boxes``
    [R, 4] (xyxy, original pixels), ``features`` [R, D] (un-normalised attention-pool outputs),
    ``objectness_logits`` [R]; with a vocabulary also ``probabilities`` [R, K + 1] (softmax over the names and
    background, background last, before any RPN fusion). The metadata holds ``image``, ``height``, ``width`` and
    ``settings`` (JSON of :func:`extraction_settings`).

    Images whose file already exists are skipped, so an interrupted run resumes; a folder holding files made with
    other settings is refused (``ValueError``). An image that cannot be read is recorded in ``failed`` and the
    others are written (``on_error="skip"``), or stops the run (``on_error="fail"``). ``num_workers`` processes
    decode and resize the next images while the model runs (a torch DataLoader; 0 decodes in this process); the
    outputs are the same for any number of workers."""
    if num_proposals < 1:
        raise ValueError(f"num_proposals must be at least 1, got {num_proposals}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not 0 < rpn_nms_threshold <= 1:
        raise ValueError(f"rpn_nms_threshold must be in (0, 1], got {rpn_nms_threshold}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if model.rpn is None:
        raise ValueError("feature extraction needs an RPN attached to the model")
    resolve_templates(templates)  # an unknown template set fails here, before any work
    images = list_images(image_dir)
    vocab = Vocabulary.parse(vocabulary) if vocabulary is not None else None
    out_dir = Path(out_dir)
    settings = extraction_settings(model, vocab, templates, num_proposals, rpn_nms_threshold)
    if out_dir.is_dir():
        check_existing_outputs(out_dir, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [p for p in images if not output_path(out_dir, p).is_file()]
    weights = model.embed_vocabulary(vocab, templates).to(model.device) if vocab is not None and todo else None
    settings_json = json.dumps(settings, sort_keys=True)
    failed: dict[str, str] = {}
    loader = prepared_image_batches(todo, model.config.input.min_size, model.config.input.max_size, batch_size, num_workers)
    for batch in progress_bar(loader, disable=not progress, desc="extracting", unit="batch"):
        positions = readable_positions(batch, on_error, failed)
        chunk, prepared = [batch[k][0] for k in positions], [batch[k][1] for k in positions]
        if not chunk:
            continue
        proposals = model.propose(prepared, rpn_nms_threshold, num_proposals)
        input_boxes = [p.boxes for p in proposals]
        features = model.encode_boxes(prepared, input_boxes)
        for path, image, props, boxes, feats in zip(chunk, prepared, proposals, input_boxes, features):
            tensors = {
                "boxes": image.to_original_boxes(boxes).cpu().contiguous(),
                "features": feats.cpu().contiguous(),
                "objectness_logits": props.objectness_logits.float().cpu().contiguous(),
            }
            metadata = {
                "image": str(path),
                "height": str(image.original_size[0]),
                "width": str(image.original_size[1]),
                "settings": settings_json,
            }
            if weights is not None:
                tensors["probabilities"] = model.classifier(feats, weights).softmax(dim=-1).cpu().contiguous()
                metadata["vocabulary"] = json.dumps(list(vocab.names))
            atomic_write(output_path(out_dir, path), lambda tmp, t=tensors, m=metadata: save_file(t, str(tmp), metadata=m))
    return ExtractionSummary(written=len(todo) - len(failed), skipped=len(images) - len(todo), failed=failed)
