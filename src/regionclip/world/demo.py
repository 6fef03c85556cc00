"""The main job (`regionclip demo`, `make demo`): the embedded world end to end, without downloads.

Stages: generate the synthetic world (cached) → train the CLIP teacher(s) and the class-agnostic RPN (cached by
config + world hash + seed, resumable) → pretrain a region–text student from the first teacher (cached) → fine-tune
open-vocabulary detectors on the base boxes from the student (and, in the full preset, the teacher; cached) → evaluate
(retrieval R@1, zero-shot accuracy of whole images and of ground-truth boxes, proposal recall; teacher vs student
on images, GT boxes, AP50 on GT boxes and RPN proposals, pseudo-labels) → bundle teacher + RPN into one
``model.safetensors`` that ``RegionCLIP.from_pretrained`` loads → draw a Fig. 1-style picture and the loss curves → ``report.md``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..api import RegionCLIP
from ..config import ConfigBase
from ..modeling.roi_heads import DetectionConfig
from ..precision import check_precision
from ..synthetic import World, WorldConfig, generate_world
from ..text.embedder import default_cache_dir
from ..text.vocabulary import Vocabulary
from ..utils import atomic_write_text
from .data import SplitData, load_split
from .report import draw_figure, draw_loss_curves, render_report, tail_mean
from .rpn import RPNTrainConfig, evaluate_rpn, get_or_train_rpn, propose
from .student import (
    PSEUDO_LABEL_PROPOSALS, StudentPretrainConfig, TrainedStudent, get_or_pretrain_student,
    proposal_pseudo_label_accuracies, student_concepts,
)
from .zeroshot import zero_shot_ap50
from .teacher import TeacherReport, TeacherTrainConfig, TrainedTeacher, evaluate_teacher, get_or_train_teacher
from .transfer import TransferConfig, TransferRun, draw_novel_detections, get_or_train_transfer

PRESETS = ("tiny", "default", "full")


# ------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoPreset(ConfigBase):
    """What `run_demo` builds: the world, the teachers, the RPN, the student and the evaluation settings."""

    config_label = "demo preset"

    name: str
    world: WorldConfig
    teachers: tuple[TeacherTrainConfig, ...]
    rpn: RPNTrainConfig
    student: StudentPretrainConfig = field(default_factory=StudentPretrainConfig)  # starts from teacher 0
    transfer: TransferConfig = field(default_factory=TransferConfig)  # detectors from the student / teacher 0
    templates: str = "ensemble"  # prompts for zero-shot names: "ensemble" (official 81) or "single" ('a photo of a {}.')
    figure_images: int = 4
    # teacher-vs-student AP50 with RPN proposals: the top 300 per image (recall@300 > 90 % on 160-px world images;
    # the official 1000 cost 3x the time for the same boxes)
    ap50_proposals: int = 300
    # teacher-vs-student evaluation (pseudo-labels, AP50) under bf16 autocast: ~1.3x faster on CPUs with AMX /
    # AVX-512-BF16, AP50 within 0.06 of fp32 on this world (docs/embedded-world.md); "fp32" is the exact path
    evaluation_precision: str = "fp32"
    # Picture only: the sigmoid fusion keeps proposals with a negative objectness logit (the official one drops them)
    detection: dict[str, Any] = field(
        default_factory=lambda: {"score_fusion": "sigmoid", "max_detections": 5, "num_proposals": 100}
    )

    def __post_init__(self) -> None:
        if not self.teachers:
            raise ValueError("a demo preset needs at least one teacher")
        if len({t.label for t in self.teachers}) != len(self.teachers):
            raise ValueError("teacher model sizes must be distinct")
        if self.figure_images < 1:
            raise ValueError(f"figure_images must be >= 1, got {self.figure_images}")
        if self.ap50_proposals < 1:
            raise ValueError(f"ap50_proposals must be >= 1, got {self.ap50_proposals}")
        check_precision(self.evaluation_precision)
        DetectionConfig.from_dict(self.detection)  # validates the keys (unknown ones named) and values

    @classmethod
    def tiny(cls) -> DemoPreset:
        """Seconds-long end-to-end run for tests: tens of images, tiny models, a few steps."""
        return cls(
            name="tiny",
            world=WorldConfig.tiny(),
            teachers=(TeacherTrainConfig(model="tiny", steps=3, batch_size=16, warmup_steps=1, checkpoint_every=2),),
            rpn=RPNTrainConfig(steps=3, batch_size=8, warmup_steps=1, width=8, checkpoint_every=2),
            student=StudentPretrainConfig(steps=3, batch_size=4, warmup_steps=1, regions_per_image=8, rpn_top_k=50,
                                          checkpoint_every=2, precision="bf16"),
            transfer=TransferConfig(steps=3, batch_size=2, warmup_steps=1, rois_per_image=32, eval_proposals=50,
                                    checkpoint_every=2, precision="bf16"),
            figure_images=2,
            evaluation_precision="bf16",  # the default's precisions, so the tests run its code paths
        )

    @classmethod
    def default(cls) -> DemoPreset:
        """``make demo``: 11.4 minutes measured from an empty cache on 2 idle CPU cores (teacher 4.3 min, student 2.3,
        transfer 1.3, teacher-vs-student evaluation 1.4; more when the machine is slow or busy).

        The teacher is the ``tiny`` CLIP (64-px input): on 2 cores a 64-image step costs ~0.12 s for ``tiny`` and
        ~0.3 s for ``small`` at the same input size. 2000 bf16 steps fit the 12-minute budget; 3000 fp32 steps give a
        stronger teacher and student but take 17 minutes end to end (docs/embedded-world.md). Student, transfer and
        evaluation run under bf16 autocast (1.4x, 1.2x, ~1.3x; same figures within noise, docs/pretraining.md).
        The pretraining split has 12,000 images (with 3,000 the teacher memorises them), half of them iconic
        single-object close-ups; without those, CLIP trained from scratch learns colours long before shapes and
        stays at chance on categories within this budget (see docs/embedded-world.md)."""
        return cls(
            name="default",
            world=WorldConfig.default(num_pretrain=12_000),
            teachers=(
                TeacherTrainConfig(model="tiny", steps=2000, batch_size=64, warmup_steps=50, precision="bf16"),
            ),
            rpn=RPNTrainConfig(steps=300, batch_size=16),
            student=StudentPretrainConfig(steps=200, batch_size=16, warmup_steps=20, precision="bf16"),
            transfer=TransferConfig(precision="bf16"),
            evaluation_precision="bf16",
        )

    @classmethod
    def full(cls) -> DemoPreset:
        """About 50 minutes on 2 idle cores: a larger world (30,000 pretraining images), the two teacher sizes
        of appendix Table 2 (``tiny`` and ``small``, both at 64 px, trained longer; ``small`` needs twice the steps
        of ``tiny`` to become the better image model) and a longer RPN run."""
        return cls(
            name="full",
            world=WorldConfig.full(num_pretrain=30_000),
            teachers=(
                TeacherTrainConfig(model="tiny", steps=4000, batch_size=64, warmup_steps=100),
                TeacherTrainConfig(model="small", image_size=64, steps=8000, batch_size=64, warmup_steps=100),
            ),
            rpn=RPNTrainConfig(steps=600, batch_size=16, warmup_steps=30),
            student=StudentPretrainConfig(steps=600, batch_size=16, warmup_steps=50),
            transfer=TransferConfig(initialisations=("student", "teacher"), focal_gammas=(0.5, None), steps=200),
        )

    @classmethod
    def load(cls, name_or_path: str | Path) -> DemoPreset:
        """A named preset (``tiny``, ``default``, ``full``) or a YAML file (see ``configs/demo_default.yaml``)."""
        if str(name_or_path) in PRESETS:
            return getattr(cls, str(name_or_path))()
        path = Path(name_or_path)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            return cls.from_yaml(path)
        raise ValueError(f"unknown demo preset {name_or_path!r}: use one of {PRESETS} or a YAML file")

    # ---- (de)serialisation: ConfigBase --------------------------------------------------------------
    @classmethod
    def expand_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A preset without ``world``, ``rpn``, ``student`` or ``transfer`` uses the default ones."""
        return {"world": {}, "rpn": {}, "student": {}, "transfer": {}, **data}


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def choose_threads(requested: int | None = None) -> int:
    """Intra-op threads for torch: ``requested``, else the cores not already busy (1-minute load average).

    Two threads on a core that another job keeps busy make every small op wait at OpenMP barriers; measured
    here, that is 2-5x slower than one thread, while on an idle machine two threads are ~1.4x faster than one.
    """
    cores = os.cpu_count() or 1
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1, got {requested}")
        return requested
    try:
        busy = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return cores
    # the 1-minute average decays slowly, so a job that just ended still shows; only ≥ 1.5 busy cores count as one
    return max(1, min(cores, cores - int(max(0.0, busy - 0.5))))


@dataclass
class StageTimer:
    """Wall time of each named stage, in order."""

    seconds: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def figure_image_indices(val: SplitData, count: int) -> list[int]:
    """Validation images for the picture: the first ones with 2-4 boxes, preferring some with a novel object."""
    novel = val.category_ids_of("novel")
    candidates = [i for i, b in enumerate(val.boxes) if 2 <= len(b) <= 4]
    with_novel = [i for i in candidates if any(int(c) in novel for c in val.labels[i])]
    chosen = with_novel[: (count + 1) // 2]
    chosen += [i for i in candidates if i not in chosen][: count - len(chosen)]
    return sorted(chosen)[:count] or list(range(min(count, len(val))))


COMPARISON_VERSION = "2"  # bump when `cached_comparison` measures differently (part of its cache key)


def cached_comparison(
    world: World, val: SplitData, config: DemoPreset, student: TrainedStudent, first: str, teacher_model: RegionCLIP,
    progress: bool,
) -> dict[str, Any]:
    """Teacher vs student on validation: the student's `evaluate_teacher` figures, pseudo-label accuracy over the
    student's pool and over the category names, and AP50 on GT boxes and RPN proposals, for both models.

    The figures are a deterministic function of the two cached models and the evaluation settings, so they are
    kept beside the student (``evaluation-<key>.json``) and a second run reads them instead of re-running the
    ~1.5 minutes of evaluation. ``cached`` in the result says which happened."""
    settings = {"version": COMPARISON_VERSION, "teacher": first, "templates": config.templates,
                "ap50_proposals": config.ap50_proposals, "world": world.config.hash()}
    if config.evaluation_precision != "fp32":  # fp32 figures cached before the field keep their key
        settings["precision"] = config.evaluation_precision
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = student.run_dir / f"evaluation-{key}.json"
    if path.is_file():
        return {**json.loads(path.read_text(encoding="utf-8")), "cached": True}
    student_model = student.load()
    pool = student_concepts(student, val.categories)
    pseudo_labels, ap50 = {}, {}
    proposals = propose(teacher_model.rpn, val.images, PSEUDO_LABEL_PROPOSALS)  # both models share the world's RPN
    for name, model in ((first, teacher_model), ("student", student_model)):
        model.precision = config.evaluation_precision
        # top-1 over the pool the student trained with (what the losses saw) and over the category names
        pools = {"names": None, "pool": None if config.student.concepts == "names" else pool}
        pseudo_labels[name] = proposal_pseudo_label_accuracies(model, val, pools, templates=config.templates,
                                                               proposals=proposals)
        ap50[name] = zero_shot_ap50(model, world, "val", templates=config.templates,
                                    config=DetectionConfig(num_proposals=config.ap50_proposals))
    student_model.precision = "fp32"  # image and GT-box top-1 as the teacher's were measured
    figures = {
        "student": evaluate_teacher(student_model, val, templates=config.templates, progress=progress).to_dict(),
        "concepts": len(pool), "pseudo_labels": pseudo_labels, "ap50": ap50, "settings": settings,
    }
    atomic_write_text(path, json.dumps(figures, indent=1))
    return {**figures, "cached": False}


# ------------------------------------------------------------------------------------------------
# The job
# ------------------------------------------------------------------------------------------------


def run_demo(
    out_dir: str | Path,
    preset: str | Path | DemoPreset = "default",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> Path:
    """Run the embedded-world demo and write ``out_dir/report.md`` (returned) with its figures.

    Args:
        out_dir: report folder (``report.md``, ``report.json``, ``regions_top3.png``, ``training_curves.png``,
            ``models/teacher-<size>/model.safetensors`` - teacher + RPN, loadable by ``RegionCLIP.from_pretrained``).
        preset: ``"default"`` (``make demo``), ``"full"``, ``"tiny"`` (tests), a YAML file or a `DemoPreset`.
        cache_dir: where worlds and trained models are cached (default ``$REGIONCLIP_CACHE`` or
            ``~/.cache/regionclip``); a second run with the same preset reuses everything.
        progress: progress bars (whole lines every few seconds when stderr is not a terminal).
        threads: torch intra-op threads (default: the idle cores, see `choose_threads`).
    """
    started_at = datetime.datetime.now().astimezone()
    config = preset if isinstance(preset, DemoPreset) else DemoPreset.load(preset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(choose_threads(threads))
    timer = StageTimer()
    try:
        with timer.stage("world"):
            world = generate_world(config.world, cache / "worlds", progress=progress)
        with timer.stage("load images"):
            val = load_split(world, "val", progress=progress)
        teachers: list[TrainedTeacher] = []
        for teacher_config in config.teachers:
            with timer.stage(f"teacher {teacher_config.label}"):
                teachers.append(get_or_train_teacher(world, teacher_config, cache / "models", progress=progress))
            timer.notes[f"teacher {teacher_config.label}"] = "trained" if teachers[-1].trained_now else "cached"
        with timer.stage("rpn"):
            trained_rpn = get_or_train_rpn(world, config.rpn, cache / "models", progress=progress)
        timer.notes["rpn"] = "trained" if trained_rpn.trained_now else "cached"
        with timer.stage("student"):
            student = get_or_pretrain_student(
                world, config.student, teachers[0], trained_rpn, cache / "models", progress=progress
            )
        timer.notes["student"] = "trained" if student.trained_now else "cached"
        with timer.stage("transfer"):
            init_runs = {"student": student, "teacher": teachers[0]}
            transfer_runs: list[TransferRun] = [
                get_or_train_transfer(world, config.transfer, init, gamma, init_runs[init], trained_rpn,
                                      cache / "models", config.templates, progress=progress)
                for init, gamma in config.transfer.runs()
            ]
        timer.notes["transfer"] = ", ".join(sorted({"trained" if r.trained_now else "cached" for r in transfer_runs}))
        with timer.stage("rpn evaluation"):
            rpn = trained_rpn.load()
            rpn_figures = evaluate_rpn(rpn, val)
        reports: dict[str, TeacherReport] = {}
        bundles: dict[str, Path] = {}
        figure_records: list[dict[str, Any]] = []
        for index, teacher in enumerate(teachers):
            name = teacher.config.label
            with timer.stage(f"bundle {name}"):
                model = teacher.load()
                model.rpn = rpn
                bundles[name] = model.save_pretrained(out_dir / "models" / f"teacher-{name}")
                model = RegionCLIP.from_pretrained(bundles[name], device="cpu")  # the path users take
            with timer.stage(f"evaluate {name}"):
                reports[name] = evaluate_teacher(model, val, templates=config.templates, progress=progress)
            if index == 0:
                with timer.stage("figures"):
                    vocabulary = Vocabulary.from_coco_categories(val.categories, source="synthetic-world")
                    embeddings = model.embed_vocabulary(vocabulary, config.templates, use_cache=False)
                    figure_records = draw_figure(
                        model, val, figure_image_indices(val, config.figure_images), vocabulary, embeddings,
                        DetectionConfig(**config.detection), out_dir / "regions_top3.png",
                    )
        with timer.stage("evaluate student"):
            first = teachers[0].config.label
            teacher_model = RegionCLIP.from_pretrained(bundles[first], device="cpu")
            comparison = cached_comparison(world, val, config, student, first, teacher_model, progress)
        timer.notes["evaluate student"] = "cached" if comparison.pop("cached") else "computed"
        with timer.stage("figures"):
            draw_loss_curves(teachers, trained_rpn, out_dir / "training_curves.png", student)
            shown: dict[str, TransferRun] = {}  # one panel per initialisation: its first focal setting
            for run in transfer_runs:
                shown.setdefault(run.initialisation, run)
            transfer_figure = draw_novel_detections(list(shown.values()), val, config.figure_images, config.templates,
                                                    out_dir / "transfer_novel.png")
    finally:
        used_threads = torch.get_num_threads()
        torch.set_num_threads(previous_threads)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    summary = {
        "preset": config.to_dict(),
        "started": started_at.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "threads": used_threads, "load_before": list(load_before),
                    "load_after": list(load_after), "python": platform.python_version(), "torch": torch.__version__},
        "world": {"root": str(world.root), "hash": world.config.hash()},
        "teachers": {
            name: {**reports[name].to_dict(), "weights": str(bundles[name]), "cache": str(t.run_dir),
                   "train_seconds": t.seconds, "final_loss": tail_mean(t.losses)}
            for name, t in zip((t.config.label for t in teachers), teachers)
        },
        "student": {**comparison["student"], "weights": str(student.weights), "cache": str(student.run_dir),
                    "train_seconds": student.seconds, "initialised_from": first,
                    "final_loss": tail_mean([sum(step.values()) for step in student.losses]),
                    "final_losses": {k: tail_mean([step[k] for step in student.losses]) for k in student.losses[0]},
                    "concepts": comparison["concepts"]},
        "pseudo_labels": comparison["pseudo_labels"],
        "ap50": comparison["ap50"],
        "rpn": {**rpn_figures, "weights": str(trained_rpn.weights), "train_seconds": trained_rpn.seconds,
                "network": trained_rpn.rpn_config.to_dict()},
        "transfer": [r.to_dict() for r in transfer_runs],
        "transfer_figure": transfer_figure,
        "stages": timer.seconds,
        "stage_notes": timer.notes,
        "wall_seconds": timer.total,
        "figure": figure_records,
    }
    atomic_write_text(out_dir / "report.json", json.dumps(summary, indent=1, default=str))
    report = out_dir / "report.md"
    atomic_write_text(report, render_report(config, world, teachers, reports, trained_rpn, rpn_figures, timer, summary))
    return report
