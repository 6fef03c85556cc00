"""Per-image predictions and their conversions to the formats users expect (docs/official-semantics.md,
"Output formats").

All conversions come from one pass over the whole vocabulary: a RegionCLIP softmax over K names is never
re-run per label as the HF pipeline does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .text.vocabulary import Vocabulary


@dataclass
class RegionPredictions:
    """Predictions for the boxes of one image.

    ``boxes`` are xyxy in original-image pixels; ``labels[i, j]`` / ``scores[i, j]`` are the j-th best vocabulary
    index and score of box i (scores descending along j). Classification gives k labels per box; detection gives
    one label per detection (k = 1). Boxes and scores must be finite (``ValueError`` otherwise), so every
    conversion below is plain JSON.

    ``valid[i]`` is False for a given box that is empty once clipped to the image (zero width or height, or wholly
    outside): it has no scores (its ``labels`` row is -1, its ``scores`` row 0). Such boxes are kept in the per-box
    records (``to_json`` with ``"valid": false`` and empty label lists, ``to_processor_dict`` with a ``"valid"``
    tensor) and left out of the detection lists (``to_coco``, ``to_hf``, ``to_supervision``), which have no entry
    without a label and score.
    """

    boxes: np.ndarray  # [N, 4] float32
    scores: np.ndarray  # [N, k] float32
    labels: np.ndarray  # [N, k] int64
    vocabulary: Vocabulary
    image_size: tuple[int, int]  # (H, W) of the original image
    image_id: int | None = None
    source: str | None = None  # file path, when the image came from one
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "objectness", "features"
    valid: np.ndarray | None = None  # [N] bool; None means every box was scored

    def __post_init__(self) -> None:
        n = len(self.boxes)
        if self.scores.shape[0] != n or self.labels.shape != self.scores.shape:
            raise ValueError("boxes, scores and labels disagree in length")
        if not (np.isfinite(self.boxes).all() and np.isfinite(self.scores).all()):
            # JSON has no NaN / Infinity, and a non-finite score ranks nowhere: such predictions come from broken
            # weights or inputs and are refused rather than written as numbers no reader can trust.
            raise ValueError(f"non-finite boxes or scores in the predictions for {self.source or 'an image'}")
        self.valid = np.ones(n, dtype=bool) if self.valid is None else np.asarray(self.valid, dtype=bool)
        if self.valid.shape != (n,):
            raise ValueError("valid must hold one flag per box")

    @classmethod
    def from_tensors(
        cls,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
        vocabulary: Vocabulary,
        image_size: tuple[int, int],
        image: object = None,
        image_id: int | None = None,
        extras: dict[str, torch.Tensor] | None = None,
        valid: torch.Tensor | None = None,
    ) -> RegionPredictions:
        """Predictions from a model's tensors (any device); ``image`` (the input as given) names the ``source``
        when it is a file path."""
        return cls(
            boxes=boxes.cpu().numpy(),
            scores=scores.cpu().numpy(),
            labels=labels.cpu().numpy(),
            vocabulary=vocabulary,
            image_size=image_size,
            image_id=image_id,
            source=str(image) if isinstance(image, (str, Path)) else None,
            extras={k: v.cpu().numpy() for k, v in (extras or {}).items()},
            valid=valid.cpu().numpy() if valid is not None else None,
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def subset(self, keep: np.ndarray) -> RegionPredictions:
        """The predictions selected by a boolean mask or index array over boxes."""
        return RegionPredictions(
            boxes=self.boxes[keep],
            scores=self.scores[keep],
            labels=self.labels[keep],
            vocabulary=self.vocabulary,
            image_size=self.image_size,
            image_id=self.image_id,
            source=self.source,
            extras={k: v[keep] for k, v in self.extras.items()},
            valid=self.valid[keep],
        )

    @property
    def class_names(self) -> list[list[str]]:
        """Names of ``labels``; an empty list for a box without scores (``valid`` False)."""
        return [
            [self.vocabulary.names[j] for j in row] if ok else []
            for row, ok in zip(self.labels.tolist(), self.valid.tolist())
        ]

    def to_supervision(self):
        """``supervision.Detections`` with the top-1 label per box; all top-k in ``data``. Boxes without scores are
        left out."""
        import supervision as sv

        if not self.valid.all():
            return self.subset(self.valid).to_supervision()
        names = np.array([row[0] for row in self.class_names] if len(self) else [], dtype=object)
        return sv.Detections(
            xyxy=self.boxes.astype(np.float32).reshape(-1, 4),
            confidence=self.scores[:, 0].astype(np.float32) if len(self) else np.zeros(0, np.float32),
            class_id=self.labels[:, 0].astype(int) if len(self) else np.zeros(0, int),
            data={
                "class_name": names,
                "topk_class_id": self.labels.astype(int),
                "topk_confidence": self.scores.astype(np.float32),
            },
        )

    def to_coco(self, image_id: int | None = None) -> list[dict[str, Any]]:
        """COCO results entries: xywh boxes, the dataset's original category ids, one entry per (box, label)."""
        image_id = self.image_id if image_id is None else image_id
        if image_id is None:
            raise ValueError("COCO results need an image_id")
        out = []
        scored = self.subset(self.valid)
        for box, row_labels, row_scores in zip(scored.boxes.tolist(), scored.labels.tolist(), scored.scores.tolist()):
            x1, y1, x2, y2 = box
            for label, score in zip(row_labels, row_scores):
                out.append(
                    {
                        "image_id": int(image_id),
                        "category_id": int(self.vocabulary.category_ids[label]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": float(score),
                    }
                )
        return out

    def to_hf(self, threshold: float = 0.0) -> list[dict[str, Any]]:
        """The ``zero-shot-object-detection`` pipeline's list of dicts, sorted by score, int corner boxes."""
        out = []
        scored = self.subset(self.valid)
        for box, row_labels, row_scores in zip(scored.boxes.tolist(), scored.labels.tolist(), scored.scores.tolist()):
            xmin, ymin, xmax, ymax = (int(round(v)) for v in box)
            for label, score in zip(row_labels, row_scores):
                if score >= threshold:
                    out.append(
                        {
                            "score": float(score),
                            "label": self.vocabulary.names[label],
                            "box": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax},
                        }
                    )
        return sorted(out, key=lambda d: d["score"], reverse=True)

    def to_processor_dict(self) -> dict[str, Any]:
        """``post_process_grounded_object_detection``-style dict (top-1 label per box), with a ``"valid"`` flag per
        box (a box without scores has score 0, label -1 and text label None)."""
        return {
            "scores": torch.from_numpy(self.scores[:, 0].copy()) if len(self) else torch.zeros(0),
            "labels": torch.from_numpy(self.labels[:, 0].copy()) if len(self) else torch.zeros(0, dtype=torch.long),
            "boxes": torch.from_numpy(self.boxes.copy()).reshape(-1, 4),
            "text_labels": [row[0] if row else None for row in self.class_names],
            "valid": torch.from_numpy(self.valid.copy()),
        }

    def to_json(self) -> dict[str, Any]:
        """A plain-JSON record of this image's predictions (what the CLI writes)."""
        return {
            "image": self.source,
            "image_id": self.image_id,
            "height": self.image_size[0],
            "width": self.image_size[1],
            "regions": [
                {
                    "box": [round(v, 2) for v in box],
                    "valid": ok,
                    "labels": names,
                    "category_ids": [int(self.vocabulary.category_ids[j]) for j in row_labels] if ok else [],
                    "scores": [float(s) for s in row_scores] if ok else [],
                }
                for box, ok, names, row_labels, row_scores in zip(
                    self.boxes.tolist(), self.valid.tolist(), self.class_names, self.labels.tolist(), self.scores.tolist()
                )
            ],
        }
