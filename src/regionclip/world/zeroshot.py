"""Zero-shot detection AP50 of a model on a world split, through the same evaluator users run on COCO files.

The world's validation instances are a COCO json whose categories carry the OV-COCO ``split`` (base / novel), so
`evaluate_zeroshot` reports generalized AP50 over all, base and novel categories (docs/embedded-world.md). The
world's categories also carry LVIS ``frequency`` groups; they are dropped here so that the OV-COCO metrics apply.
"""

from __future__ import annotations

from typing import Any

from ..evaluation.zeroshot import evaluate_zeroshot
from ..modeling.roi_heads import DetectionConfig
from ..synthetic import World
from ..text.vocabulary import Vocabulary

GROUPS = ("all", "base", "novel")


def zero_shot_ap50(
    model: Any,
    world: World,
    split: str = "val",
    boxes: tuple[str, ...] = ("gt", "rpn"),
    templates: str = "ensemble",
    config: DetectionConfig | None = None,
    max_images: int | None = None,
) -> dict[str, dict[str, float]]:
    """``{"gt" | "rpn": {"all" | "base" | "novel": AP50 in percent}}`` of ``model`` (a `RegionCLIP`) on ``split``.

    ``"gt"`` classifies the ground-truth boxes (the official GT mode), ``"rpn"`` detects on the model's RPN
    proposals; ``config`` (default: the official COCO zero-shot settings) sets fusion, NMS, proposals and precision-
    independent knobs; class embeddings come from ``templates`` over the split's category names."""
    annotations = world.load_instances(split)
    annotations["categories"] = [{k: v for k, v in c.items() if k != "frequency"} for c in annotations["categories"]]
    vocabulary = Vocabulary.from_coco_categories(annotations["categories"], source="synthetic-world")
    embeddings = model.embed_vocabulary(vocabulary, templates, use_cache=False)
    results = {}
    for mode in boxes:
        metrics, _ = evaluate_zeroshot(
            model, annotations, world.images_dir(split), boxes=mode, vocabulary=vocabulary, config=config,
            class_embeddings=embeddings, max_images=max_images, progress=False,
        )
        results[mode] = {group: metrics[f"AP50_{group}"] for group in GROUPS}
    return results
