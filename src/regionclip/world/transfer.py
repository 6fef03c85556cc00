"""Transfer to open-vocabulary detection in the embedded world (`regionclip.finetune` on the world, cached).

An `OpenVocabularyDetector` is fine-tuned on the world's ``det_train`` split, whose boxes are of BASE categories only
(training embeddings: the base names), from (a) the region–text student and/or (b) the CLIP teacher, each with the
world's frozen RPN, with focal scaling (γ 0.5, the OV-COCO recipe) and/or without it (the weighted-mean cross-
entropy). It is then evaluated on validation with the names of ALL categories: OV-COCO generalized AP50 over novel,
base and all categories (`zero_shot_ap50`, i.e. `evaluate_zeroshot`, with the official transfer test settings).
Each run is cached like the teacher (`cached_training`), keyed by the run's settings, the initialisation run, the
RPN run and the world's hash; the evaluation is part of the cached record (docs/transfer.md, "Embedded world").
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import ConfigBase
from ..engine.caching import CachedRun, cached_training
from ..engine.loop import TrainingRun
from ..finetune import FinetuneConfig, finetune
from ..modeling.meta_arch.fast_rcnn import OpenVocabularyDetector, transfer_detection_config
from ..modeling.roi_heads import RoIHeadConfig
from ..synthetic import World
from ..text.vocabulary import Vocabulary
from .data import SplitData
from .rpn import TrainedRPN
from .zeroshot import zero_shot_ap50

TRANSFER_VERSION = "1"  # bump when the recipe changes what a given config produces (part of the cache key)
INITIALISATIONS = ("student", "teacher")
COCO_FOCAL_GAMMA = 0.5


@dataclass(frozen=True)
class TransferConfig(ConfigBase):
    """The demo's transfer runs: every ``initialisations`` × ``focal_gammas`` pair (``None``: focal scaling off,
    the weighted-mean cross-entropy) is one cached fine-tuning run with these settings, evaluated on validation."""

    config_label = "transfer"

    initialisations: tuple[str, ...] = ("student",)  # "student" (RegionCLIP) and/or "teacher" (CLIP)
    focal_gammas: tuple[float | None, ...] = (COCO_FOCAL_GAMMA,)
    steps: int = 100
    batch_size: int = 8
    lr: float = 0.006  # 3x the official rate (which is for 90k steps at batch 16); 0.02 diverges
    warmup_steps: int = 20
    milestones: tuple[int, ...] = ()
    rois_per_image: int = 128  # of the official 512: the world's 160-px images hold a few objects each
    background_weight: float = 0.2
    train_min_sizes: tuple[int, ...] = (128,)  # the tiny model's test-time short side
    train_max_size: int = 256
    flip: bool = True
    eval_proposals: int = 100  # RPN proposals per validation image (the official test uses 1000 on COCO)
    eval_soft_nms: bool = False  # official: soft-NMS; hard NMS gives the same AP50 here at a quarter of the time
    precision: str = "fp32"  # "bf16": fine-tuning forward passes under autocast, weights fp32 (evaluation stays fp32)
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "initialisations", tuple(self.initialisations))
        object.__setattr__(self, "focal_gammas", tuple(None if g is None else float(g) for g in self.focal_gammas))
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        object.__setattr__(self, "train_min_sizes", tuple(int(s) for s in self.train_min_sizes))
        unknown = set(self.initialisations) - set(INITIALISATIONS)
        if unknown or not self.initialisations:
            raise ValueError(
                f"initialisations must be a non-empty subset of {INITIALISATIONS}, got {self.initialisations}"
            )
        if not self.focal_gammas:
            raise ValueError("focal_gammas needs at least one entry (null: focal scaling off)")
        if self.eval_proposals < 1:
            raise ValueError(f"eval_proposals must be >= 1, got {self.eval_proposals}")
        self.finetune_config("init", "annotations", "images", "out", self.focal_gammas[0])  # validates the rest

    def runs(self) -> list[tuple[str, float | None]]:
        """The (initialisation, focal γ) pairs, initialisation-major."""
        return [(init, gamma) for init in self.initialisations for gamma in self.focal_gammas]

    def finetune_config(
        self, weights: str, annotations: str, images: str, output_dir: str, focal_gamma: float | None
    ) -> FinetuneConfig:
        """The full `FinetuneConfig` of one run (base categories: the world's ``split: base`` ones)."""
        return FinetuneConfig(
            weights=weights, train_annotations=annotations, train_images=images, output_dir=output_dir,
            steps=self.steps, batch_size=self.batch_size, lr=self.lr, milestones=list(self.milestones),
            warmup_steps=min(self.warmup_steps, self.steps), train_min_sizes=list(self.train_min_sizes),
            train_max_size=self.train_max_size, flip=self.flip, seed=self.seed,
            checkpoint_every=self.checkpoint_every, precision=self.precision,
            roi_heads=RoIHeadConfig(batch_size_per_image=self.rois_per_image, background_weight=self.background_weight,
                                    focal_gamma=focal_gamma),
        )

    def cache_key(self, initialisation: str, focal_gamma: float | None, init_run: str, rpn_run: str,
                  world_hash: str) -> str:
        """16 hex digits over one run's settings (``checkpoint_every`` aside), its init and RPN runs and the world."""
        training = {k: v for k, v in self.to_dict().items()
                    if k not in ("checkpoint_every", "initialisations", "focal_gammas")}
        if training["precision"] == "fp32":  # runs from before the field keep their keys
            del training["precision"]
        payload = {"transfer": TRANSFER_VERSION, "training": training, "initialisation": initialisation,
                   "focal_gamma": focal_gamma, "init_run": init_run, "rpn": rpn_run, "world": world_hash}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TransferRun(CachedRun):
    """A finished, cached transfer run: ``weights`` loads with ``OpenVocabularyDetector.from_pretrained``;
    ``record["ap50"]`` holds the validation AP50 (percent) over ``all`` / ``base`` / ``novel`` categories."""

    config: TransferConfig
    initialisation: str
    focal_gamma: float | None

    @property
    def ap50(self) -> dict[str, float]:
        return self.record["ap50"]

    @property
    def label(self) -> str:
        # "gamma", not γ: the picture's title font has no Greek letters
        focal = "off" if self.focal_gamma is None else f"gamma {self.focal_gamma:g}"
        return f"{self.initialisation} init, focal {focal}"

    def load(self, device: str | None = "cpu") -> OpenVocabularyDetector:
        return OpenVocabularyDetector.from_pretrained(self.weights, device=device)

    def to_dict(self) -> dict[str, Any]:
        """The report's entry: settings, AP50, wall times, the final loss and the cache directory."""
        return {"initialisation": self.initialisation, "focal_gamma": self.focal_gamma, "ap50": self.ap50,
                "train_seconds": self.seconds, "eval_seconds": self.record["eval_seconds"],
                "final_losses": self.record["final_losses"], "weights": str(self.weights), "cache": str(self.run_dir),
                "trained_now": self.trained_now}


def evaluate_transfer(detector: OpenVocabularyDetector, world: World, config: TransferConfig,
                      templates: str = "ensemble", split: str = "val") -> dict[str, float]:
    """OV-COCO generalized AP50 (percent; ``all`` / ``base`` / ``novel``) of ``detector`` on ``split`` with the
    embeddings of all category names and the official COCO transfer test settings (class probabilities as scores,
    threshold 0.001, 100 detections), with ``config``'s proposal count and NMS."""
    detection = transfer_detection_config(num_proposals=config.eval_proposals, soft_nms=config.eval_soft_nms)
    return zero_shot_ap50(detector, world, split, boxes=("rpn",), templates=templates, config=detection)["rpn"]


def get_or_train_transfer(
    world: World,
    config: TransferConfig,
    initialisation: str,
    focal_gamma: float | None,
    init_run: CachedRun,
    rpn: TrainedRPN,
    cache_root: str | Path,
    templates: str = "ensemble",
    progress: bool = True,
) -> TransferRun:
    """The fine-tuned, evaluated detector of (config, initialisation, γ, init run, RPN, world) from the cache,
    training (or resuming) and evaluating it first if needed. ``init_run``: the cached student or teacher (its
    ``load()`` gives a `RegionCLIP`); the world's RPN is attached to it before fine-tuning."""
    if initialisation not in INITIALISATIONS:
        raise ValueError(f"initialisation must be one of {INITIALISATIONS}, got {initialisation!r}")
    key = config.cache_key(initialisation, focal_gamma, init_run.run_dir.name, rpn.run_dir.name, world.config.hash())
    run_dir = Path(cache_root).expanduser() / f"transfer-{initialisation}-{key}"
    output = run_dir / "finetune"
    finetune_config = config.finetune_config(
        str(run_dir / "init"), str(world.instances_json("det_train")), str(world.images_dir("det_train")),
        str(output), focal_gamma,
    )

    def train(checkpoint_dir: Path) -> TrainingRun:
        initial = init_run.load()
        initial.rpn = rpn.load()  # the teacher has none; the student's is this same network
        initial.save_pretrained(run_dir / "init")
        return finetune(finetune_config, progress=progress)

    def save(run: TrainingRun) -> dict[str, Any]:
        shutil.rmtree(output / "checkpoints", ignore_errors=True)  # `finetune` wrote the weights already
        started = time.perf_counter()
        ap50 = evaluate_transfer(OpenVocabularyDetector.from_pretrained(output / "model.safetensors", device="cpu"),
                                 world, config, templates)
        tail = run.losses[-10:]
        final = {name: sum(step[name] for step in tail) / len(tail) for name in tail[0]} if tail else {}
        return {"ap50": ap50, "eval_seconds": time.perf_counter() - started, "final_losses": final}

    description = {"training": config.to_dict(), "initialisation": initialisation, "focal_gamma": focal_gamma,
                   "init_run": init_run.run_dir.name, "rpn": rpn.run_dir.name, "world": world.config.hash(),
                   "templates": templates}
    return cached_training(run_dir, output / "model.safetensors", description, train, save, TransferRun,
                           config=config, initialisation=initialisation, focal_gamma=focal_gamma)


def novel_image_indices(val: SplitData, count: int) -> list[int]:
    """The first ``count`` validation images holding a novel-category object (the most novel objects first)."""
    novel = {int(c["id"]) for c in val.categories if c.get("split") == "novel"}
    counts = [sum(int(label) in novel for label in labels) for labels in val.labels]
    ranked = sorted((i for i, n in enumerate(counts) if n), key=lambda i: -counts[i])
    return ranked[:count]


@torch.inference_mode()
def draw_novel_detections(
    runs: Sequence[TransferRun], val: SplitData, count: int, templates: str, path: Path, max_detections: int = 5
) -> list[dict[str, Any]]:
    """PNG: per validation image with novel objects, one panel per run (its top detections with all category
    names; novel names are marked ``*``). Returns the drawn detections as json records."""
    from ..viz import draw_predictions, side_by_side
    from .report import _stack_rows

    if val.images is None:
        raise ValueError("drawing needs decoded images")
    indices = novel_image_indices(val, count)
    if not indices:
        raise ValueError("no validation image holds a novel-category object")
    categories = [{**c, "name": c["name"] + ("*" if c.get("split") == "novel" else "")} for c in val.categories]
    vocabulary = Vocabulary.from_coco_categories(categories, source="synthetic-world")
    plain = Vocabulary.from_coco_categories(val.categories, source="synthetic-world")
    detection = transfer_detection_config(max_detections=max_detections, score_threshold=0.05)
    images = [val.images[i] for i in indices]
    panels: list[list[Any]] = [[] for _ in indices]
    records: list[dict[str, Any]] = [{"image_id": val.image_ids[i], "detections": {}} for i in indices]
    for run in runs:
        detector = run.load()
        embeddings = detector.embed_vocabulary(plain, templates, use_cache=False)
        predictions = detector.detect(images, vocabulary, config=detection, class_embeddings=embeddings,
                                      image_ids=[val.image_ids[i] for i in indices])
        for row, record, prediction, image in zip(panels, records, predictions, images):
            row.append(draw_predictions(image, prediction, title=run.label, min_side=480))
            record["detections"][run.label] = prediction.to_json()
    _stack_rows([side_by_side(row) for row in panels]).save(path)
    return records


def transfer_section(entries: list[dict[str, Any]]) -> list[str]:
    """The report's transfer table (`TransferRun.to_dict` entries) and picture."""
    if not entries:
        return []
    lines = [
        "",
        "## Transfer to open-vocabulary detection",
        "",
        "Fast R-CNN (`OpenVocabularyDetector`) fine-tuned on the detection-training images, whose boxes are of base "
        "categories only (classifier: the base names' embeddings), with the world's frozen RPN; evaluated on "
        "validation with the names of all categories: OV-COCO generalized AP50 (%).",
        "",
        "| initialisation | focal scaling | AP50 novel | AP50 base | AP50 all | train time | final loss cls / box |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        losses = e["final_losses"]
        focal = "off" if e["focal_gamma"] is None else f"γ = {e['focal_gamma']:g}"
        lines.append(
            f"| {e['initialisation']} | {focal} | {e['ap50']['novel']:.2f} | {e['ap50']['base']:.2f} | "
            f"{e['ap50']['all']:.2f} | {e['train_seconds']:.0f} s{'' if e['trained_now'] else ' (cached)'} | "
            f"{losses.get('loss_cls', float('nan')):.3f} / {losses.get('loss_box_reg', float('nan')):.3f} |"
        )
    lines += ["", "Detections of novel objects (novel names marked `*`):", "", "![transfer](transfer_novel.png)"]
    return lines
