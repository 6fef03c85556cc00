"""Region–text pretraining of the embedded world's student (`regionclip.pretrain` on the world, cached).

The student starts from a trained CLIP teacher and learns from the world's ``pretrain`` captions with the
world's RPN for regions, on images at their own size (no 800-px resize). Its concept pool is parsed from those
captions (``concepts: captions``, `world_concept_pool`, the paper's recipe) or is the world's true category names
(``concepts: names``). The run is cached like the teacher and the RPN (`cached_training`), keyed by this config, the
teacher's and the RPN's run keys and the world's hash. `pseudo_label_accuracy` measures how often a model's top-1
concept on a proposal names the object under it; a parsed concept names a category when the parser makes it from one
of the world's words for that category (`concept_categories`, docs/embedded-world.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.nn import functional as F
from torchvision.ops import box_iou

from ..api import RegionCLIP
from ..engine.caching import CachedRun, cached_training
from ..engine.loop import TrainingRun
from ..config import ConfigBase
from ..pretrain import STUDENT_FILE, PretrainConfig, pretrain
from ..synthetic import World
from ..text.concepts import build_concept_pool, count_concepts, load_spacy_pipeline, read_captions, write_concept_pool
from ..text.vocabulary import Vocabulary
from .data import SplitData
from .rpn import TrainedRPN, propose
from .teacher import TrainedTeacher

CONCEPT_SOURCES = ("captions", "names")
CONCEPT_POOL_FILE = "concepts.txt"
PSEUDO_LABEL_PROPOSALS = 100  # top RPN proposals per image scored for pseudo-label accuracy
PRETRAINER_VERSION = "1"  # bump when the recipe changes what a given config produces (part of the cache key)


@dataclass(frozen=True)
class StudentPretrainConfig(ConfigBase):
    """The demo's pretraining run (the `PretrainConfig` fields it sets; the rest keep their defaults)."""

    config_label = "student pretraining"

    steps: int = 200
    batch_size: int = 16
    lr: float = 0.002
    warmup_steps: int = 20
    milestones: tuple[int, ...] = ()
    regions_per_image: int = 32
    rpn_top_k: int = 300
    seed: int = 0
    checkpoint_every: int = 100
    # "captions": nouns parsed from the pretrain captions (spaCy), kept when seen >= concept_min_count times;
    # "names": the world's 52 true category names (an oracle pool no caption corpus gives)
    concepts: str = "captions"
    concept_min_count: int = 5
    global_box: str = "padded"
    losses: dict[str, float] = field(default_factory=dict)  # RegionTextLossConfig overrides (e.g. a weight of 0)
    precision: str = "fp32"  # "bf16": forward passes under autocast (CPU AMX / AVX-512-BF16, GPUs), weights fp32

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if self.concepts not in CONCEPT_SOURCES:
            raise ValueError(f"concepts must be one of {CONCEPT_SOURCES}, got {self.concepts!r}")
        if self.concept_min_count < 1:
            raise ValueError(f"concept_min_count must be >= 1, got {self.concept_min_count}")
        self.pretrain_config("init", "pool", {}, "out")  # validates the values through PretrainConfig

    def pretrain_config(
        self, weights: str, concepts: str, world: dict[str, Any], output_dir: str, cache_dir: str | None = None
    ) -> PretrainConfig:
        """The full `PretrainConfig`: world-sized images, the world's ``pretrain`` split, ``concepts`` (a pool file,
        or ``"world"`` for the category names)."""
        return PretrainConfig(
            weights=weights, concepts=concepts, output_dir=output_dir, world=world, world_split="pretrain",
            cache_dir=cache_dir, min_size=None, regions_per_image=self.regions_per_image, rpn_top_k=self.rpn_top_k,
            steps=self.steps, batch_size=self.batch_size, lr=self.lr, milestones=list(self.milestones),
            warmup_steps=min(self.warmup_steps, self.steps), seed=self.seed, checkpoint_every=self.checkpoint_every,
            global_box=self.global_box, losses=dict(self.losses), precision=self.precision,
        )

    def cache_key(self, teacher_run: str, rpn_run: str, world_hash: str) -> str:
        """16 hex digits over this config (``checkpoint_every`` aside), the teacher and RPN runs and the world.
        Fields left at the values of the first (category-names) recipe stay out, so its cached runs keep their key."""
        first_recipe = {"concepts": "names", "global_box": "padded", "losses": {}, "precision": "fp32"}
        training = {k: v for k, v in self.to_dict().items() if k != "checkpoint_every"}
        training = {k: v for k, v in training.items() if k not in first_recipe or v != first_recipe[k]}
        if self.concepts == "names":
            training.pop("concept_min_count")
        payload = {"pretrainer": PRETRAINER_VERSION, "training": training, "teacher": teacher_run, "rpn": rpn_run,
                   "world": world_hash}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainedStudent(CachedRun):
    """A finished, cached student: ``weights`` (with the RPN) loads with ``RegionCLIP.from_pretrained``."""

    config: StudentPretrainConfig

    def load(self, device: str | None = "cpu") -> RegionCLIP:
        return RegionCLIP.from_pretrained(self.weights, device=device)


def student_run_dir(cache_root: str | Path, world: World, config: StudentPretrainConfig, teacher: TrainedTeacher,
                    rpn: TrainedRPN) -> Path:
    """``<cache_root>/student-<key>``: one directory per (pretraining config, teacher run, RPN run, world)."""
    key = config.cache_key(teacher.run_dir.name, rpn.run_dir.name, world.config.hash())
    return Path(cache_root).expanduser() / f"student-{key}"


def world_concept_pool(world: World, min_count: int, path: Path) -> Path:
    """The concept pool of the world's ``pretrain`` captions (`regionclip.text.concepts`, cut at ``min_count``)
    as a ``name,count`` file at ``path``; an existing file is reused (the parse is deterministic)."""
    if not path.is_file():
        captions = read_captions([world.captions_json("pretrain")])
        write_concept_pool(path, build_concept_pool(captions, min_count=min_count))
    return path


def concept_categories(concepts: Sequence[str], categories: list[dict[str, Any]], nlp=None) -> torch.Tensor:
    """``[K]`` category id named by each concept, -1 for none (``"image"``, ``"background"``, a colour...).

    A concept names a category when it is the category's name or the concept the caption parser makes of one of the
    world's words for it (name, synonyms, plural: "scissors" → ``scissor``, "automobile" → ``automobile``), or, failing
    that, when its root (last word) does: the parser reads some colour and pattern words as compounds ("orange tree",
    "dot car"). So a parsed pool is scored with the words the world's captions use, no more."""
    terms: dict[str, int] = {}
    for category in categories:
        terms.setdefault(category["name"], int(category["id"]))
    if any(name not in terms for name in concepts):
        nlp = nlp if nlp is not None else load_spacy_pipeline()  # once: loading it costs ~0.5 s
        for category in categories:
            words = dict.fromkeys([category["name"], *category.get("synonyms", ()), category.get("plural", "")])
            for concept in count_concepts([w for w in words if w], nlp=nlp):
                terms.setdefault(concept, int(category["id"]))
    return torch.tensor([terms.get(name, terms.get(name.split()[-1], -1)) for name in concepts], dtype=torch.long)


def get_or_pretrain_student(
    world: World,
    config: StudentPretrainConfig,
    teacher: TrainedTeacher,
    rpn: TrainedRPN,
    cache_root: str | Path,
    progress: bool = True,
) -> TrainedStudent:
    """The student of (config, teacher, RPN, world) from the cache, pretraining (or resuming) it first if needed.
    With ``concepts: captions`` the parsed pool is cached in the run directory (``concepts.txt``)."""
    run_dir = student_run_dir(cache_root, world, config, teacher, rpn)
    output = run_dir / "pretrain"
    weights = output / STUDENT_FILE
    pool = run_dir / CONCEPT_POOL_FILE
    # the worlds folder beside the models cache, where `run_demo` generated this world
    pretrain_config = config.pretrain_config(
        str(run_dir / "init"), str(pool) if config.concepts == "captions" else "world", world.config.to_dict(),
        str(output), str(world.root.parent.parent)
    )

    def train(checkpoint_dir: Path) -> TrainingRun:
        if config.concepts == "captions":
            world_concept_pool(world, config.concept_min_count, pool)
        initial = teacher.load()  # the teacher with the world's RPN: the student's (and frozen teacher's) start
        initial.rpn = rpn.load()
        initial.save_pretrained(run_dir / "init")
        return pretrain(pretrain_config, progress=progress)

    def save(run: TrainingRun) -> dict[str, Any]:
        shutil.rmtree(output / "checkpoints", ignore_errors=True)  # `pretrain` wrote the weights already
        return {}

    description = {"training": config.to_dict(), "teacher": teacher.run_dir.name, "rpn": rpn.run_dir.name,
                   "world": world.config.hash()}
    return cached_training(run_dir, weights, description, train, save, TrainedStudent, config=config)


def pseudo_label_accuracy(
    proposals: Sequence[torch.Tensor],
    predicted: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    iou_threshold: float = 0.5,
) -> dict[str, float | int]:
    """How often the predicted concept of a proposal is the category of the ground-truth object it overlaps most.

    Per image: ``proposals [P, 4]`` (xyxy), ``predicted [P]`` (a category id per proposal), ``gt_boxes [G, 4]``,
    ``gt_labels [G]`` (category ids). A proposal counts when its best IoU with a ground-truth box is at least
    ``iou_threshold``; ``accuracy`` is the fraction of counted proposals whose prediction equals that box's label
    (NaN when none counts). Returns ``accuracy``, ``matched`` (counted proposals) and ``proposals`` (all)."""
    hits = matched = total = 0
    for boxes, labels, gts, gt_classes in zip(proposals, predicted, gt_boxes, gt_labels, strict=True):
        total += len(boxes)
        if not len(boxes) or not len(gts):
            continue
        best_iou, best_gt = box_iou(boxes.float(), gts.float()).max(dim=1)
        counted = best_iou >= iou_threshold
        matched += int(counted.sum())
        hits += int((labels[counted] == gt_classes[best_gt[counted]]).sum())
    return {"accuracy": hits / matched if matched else float("nan"), "matched": matched, "proposals": total}


def student_concepts(student: TrainedStudent, categories: list[dict[str, Any]]) -> list[str]:
    """The names of the concept pool ``student`` was pretrained with (its cached pool file, or the category names)."""
    if student.config.concepts == "names":
        return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    return list(Vocabulary.from_file(student.run_dir / CONCEPT_POOL_FILE).names)


@torch.inference_mode()
def proposal_pseudo_label_accuracies(
    model: RegionCLIP,
    data: SplitData,
    pools: dict[str, Sequence[str] | None],
    rpn_model: RegionCLIP | None = None,
    templates: str = "ensemble",
    num_proposals: int = PSEUDO_LABEL_PROPOSALS,
    iou_threshold: float = 0.5,
    proposals: Sequence[torch.Tensor] | None = None,
) -> dict[str, dict[str, float | int]]:
    """`pseudo_label_accuracy` of ``model``'s top-1 concept on the top ``num_proposals`` RPN proposals of each image,
    for each named pool of ``pools`` (None: the split's category names); a concept counts as the category
    `concept_categories` maps it to (none: a miss). The RPN is ``rpn_model``'s (default ``model``'s); ``proposals``
    (per image, e.g. from an earlier call's `propose`) replace it. Proposals and region embeddings are computed
    once for all pools; top-1 is the highest cosine with the pool's text embeddings (what
    `RegionCLIP.classify_regions` ranks by)."""
    if data.images is None:
        raise ValueError("evaluation needs decoded images")
    if proposals is None:
        rpn = (rpn_model or model).rpn
        if rpn is None:
            raise ValueError("pseudo-label accuracy needs a model with an RPN")
        proposals = propose(rpn, data.images, num_proposals)
    with_proposals = [i for i, p in enumerate(proposals) if len(p)]
    regions = model.embed_regions(
        [data.images[i] for i in with_proposals], [proposals[i] for i in with_proposals], batch_size=16
    )
    labels = [torch.as_tensor(l, dtype=torch.long) for l in data.labels]
    boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in data.boxes]
    results = {}
    for name, concepts in pools.items():
        if concepts is None:
            vocabulary = Vocabulary.from_coco_categories(data.categories, source="synthetic-world")
        else:
            vocabulary = Vocabulary.from_names(list(concepts), source="concept-pool")
        concept_ids = concept_categories(vocabulary.names, data.categories)
        text = F.normalize(model.embed_vocabulary(vocabulary, templates, use_cache=False).float(), dim=-1)
        predicted = [torch.zeros(0, dtype=torch.long) for _ in proposals]
        for i, features in zip(with_proposals, regions):
            predicted[i] = concept_ids[(features.float() @ text.T).argmax(dim=1)]
        results[name] = pseudo_label_accuracy(proposals, predicted, boxes, labels, iou_threshold)
    return results


def proposal_pseudo_label_accuracy(
    model: RegionCLIP,
    data: SplitData,
    rpn_model: RegionCLIP | None = None,
    templates: str = "ensemble",
    num_proposals: int = PSEUDO_LABEL_PROPOSALS,
    iou_threshold: float = 0.5,
    concepts: Sequence[str] | None = None,
) -> dict[str, float | int]:
    """`proposal_pseudo_label_accuracies` for one pool, ``concepts`` (default: the split's category names)."""
    pools = {"pool": concepts}
    return proposal_pseudo_label_accuracies(model, data, pools, rpn_model, templates, num_proposals, iou_threshold)["pool"]
