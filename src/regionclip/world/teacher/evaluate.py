"""Image- and region-level figures of a teacher on a world split: retrieval R@1, zero-shot classification of
whole images and of ground-truth boxes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch.nn import functional as F

from ...api import RegionCLIP
from ...evaluation.retrieval import retrieval_chance, retrieval_recall_at_1, topk_accuracy
from ...text.vocabulary import Vocabulary
from ..data import SplitData
from .augment import resize_images

@torch.inference_mode()
def image_embeddings(model: RegionCLIP, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised whole-image embeddings as CLIP computes them: resize to the CLIP input size, then the
    region path on the full-image box (which equals CLIP's image encoder exactly)."""
    size = model.config.vision.image_size
    out = []
    for start in range(0, len(images), batch_size):
        batch = model.normalize(resize_images(images[start : start + batch_size], size))
        boxes = [batch.new_tensor([[0.0, 0.0, size, size]])] * len(batch)
        features = model.head(model.pooler(model.trunk(batch), boxes).contiguous(memory_format=torch.channels_last))
        out.append(F.normalize(features.float(), dim=-1))
    return torch.cat(out).cpu()


def majority_baseline(targets: Sequence[int]) -> float:
    """Accuracy of always answering the most common target (a stronger reference than uniform chance)."""
    targets = list(targets)
    return max(targets.count(t) for t in set(targets)) / len(targets) if targets else float("nan")


@dataclass
class TeacherReport:
    """Image- and region-level figures of a teacher on a split (accuracies are fractions)."""

    num_images: int
    num_captions: int
    num_regions: int
    num_classes: int
    retrieval: dict[str, float]
    retrieval_chance: dict[str, float]
    image_top1: float
    image_top5: float
    image_majority: float
    image_present_top1: float  # top-1 class is one of the image's annotated categories
    image_present_chance: float  # the same for a uniformly random class: mean of (#present classes / #classes)
    region_top1: float
    region_top3: float
    region_majority: float
    region_top1_by_split: dict[str, float] = field(default_factory=dict)
    templates: str = "single"

    @property
    def chance(self) -> float:
        return 1.0 / self.num_classes

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "chance": self.chance}


@torch.inference_mode()
def evaluate_teacher(
    model: RegionCLIP,
    data: SplitData,
    templates: str | Sequence[str] = "single",
    batch_size: int = 64,
    progress: bool = False,
) -> TeacherReport:
    """Retrieval R@1 (images vs all their captions), zero-shot classification of each image's largest object
    from the whole image (and whether its top-1 class is any object in the image: images hold 2-6 objects),
    and zero-shot classification of every ground-truth box (`classify_regions`)."""
    if data.images is None:
        raise ValueError("evaluation needs decoded images")
    vocabulary = Vocabulary.from_coco_categories(data.categories, source="synthetic-world")
    class_embeddings = model.embed_vocabulary(vocabulary, templates, use_cache=False)
    class_weights = F.normalize(class_embeddings.float(), dim=-1)
    image_features = image_embeddings(model, data.images, batch_size)

    texts = [c for caps in data.captions for c in caps]
    owners = [i for i, caps in enumerate(data.captions) for _ in caps]
    text_features = F.normalize(model.text_embedder.encode_texts(texts).float(), dim=-1)
    similarity = image_features @ text_features.T
    retrieval = retrieval_recall_at_1(similarity, owners)

    index = data.category_index()
    largest = data.largest_object()
    with_object = [i for i, c in enumerate(largest) if c is not None]
    targets = [index[largest[i]] for i in with_object]
    image_logits = image_features[with_object] @ class_weights.T
    present = [{index[int(c)] for c in data.labels[i]} for i in with_object]
    predicted_image = image_logits.argmax(dim=1).tolist()
    present_top1 = sum(p in s for p, s in zip(predicted_image, present)) / max(1, len(present))
    present_chance = sum(len(s) for s in present) / max(1, len(present)) / len(vocabulary)

    with_boxes = [i for i, b in enumerate(data.boxes) if len(b)]
    predictions = model.classify_regions(
        [data.images[i] for i in with_boxes],
        [data.boxes[i] for i in with_boxes],
        vocabulary,
        top_k=min(3, len(vocabulary)),
        class_embeddings=class_embeddings,
        batch_size=16,
        progress=progress,
    )
    region_targets = torch.tensor([index[int(c)] for i in with_boxes for c in data.labels[i]])
    predicted = torch.cat([torch.from_numpy(p.labels) for p in predictions]) if predictions else torch.zeros(0, 3)
    correct_top1 = predicted[:, 0] == region_targets
    correct_top3 = (predicted == region_targets[:, None]).any(dim=1)
    is_novel = torch.tensor([data.categories[int(t)]["split"] == "novel" for t in region_targets], dtype=torch.bool)
    by_split = {
        name: correct_top1[mask].float().mean().item() if mask.any() else float("nan")
        for name, mask in (("base", ~is_novel), ("novel", is_novel))
    }
    return TeacherReport(
        num_images=len(data),
        num_captions=len(texts),
        num_regions=len(region_targets),
        num_classes=len(vocabulary),
        retrieval=retrieval,
        retrieval_chance=retrieval_chance(owners, len(data)),
        image_top1=topk_accuracy(image_logits, targets, 1),
        image_top5=topk_accuracy(image_logits, targets, 5),
        image_majority=majority_baseline(targets),
        image_present_top1=present_top1,
        image_present_chance=present_chance,
        region_top1=correct_top1.float().mean().item(),
        region_top3=correct_top3.float().mean().item(),
        region_majority=majority_baseline(region_targets.tolist()),
        region_top1_by_split=by_split,
        templates=templates if isinstance(templates, str) else "custom",
    )
