"""The main job (`regionclip demo`, `make demo`): the embedded world end to end, without downloads.

Stages: generate the synthetic world (cached) → train the CLIP teacher(s) and the class-agnostic RPN (cached by
config + world hash + seed, resumable) → evaluate (retrieval R@1, zero-shot accuracy of whole images and of
ground-truth boxes, proposal recall) → bundle teacher + RPN into one ``model.safetensors`` that
``RegionCLIP.from_pretrained`` loads → draw a Fig. 1-style picture and the loss curves → ``report.md``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from .api import RegionCLIP
from .detection import DetectionConfig
from .synthetic import World, WorldConfig, generate_world
from .text.embedder import default_cache_dir
from .text.vocabulary import Vocabulary
from .training.data import SplitData, load_split
from .training.rpn import RPNTrainConfig, TrainedRPN, evaluate_rpn, get_or_train_rpn, rpn_loss_total
from .training.teacher import TeacherReport, TeacherTrainConfig, TrainedTeacher, evaluate_teacher, get_or_train_teacher
from .utils import atomic_write_text

PRESETS = ("tiny", "default", "full")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"  # the repo's configs/ (absent in a wheel)


# ------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoPreset:
    """What `run_demo` builds: the world, the teachers, the RPN and the evaluation settings."""

    name: str
    world: WorldConfig
    teachers: tuple[TeacherTrainConfig, ...]
    rpn: RPNTrainConfig
    templates: str = "ensemble"  # prompts for zero-shot names: "ensemble" (official 81) or "single" ('a photo of a {}.')
    figure_images: int = 4
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
        DetectionConfig(**self.detection)  # validates the keys and values

    @classmethod
    def tiny(cls) -> DemoPreset:
        """Seconds-long end-to-end run for tests: tens of images, tiny models, a few steps."""
        return cls(
            name="tiny",
            world=WorldConfig.tiny(),
            teachers=(TeacherTrainConfig(model="tiny", steps=3, batch_size=16, warmup_steps=1, checkpoint_every=2),),
            rpn=RPNTrainConfig(steps=3, batch_size=8, warmup_steps=1, width=8, checkpoint_every=2),
            figure_images=2,
        )

    @classmethod
    def default(cls) -> DemoPreset:
        """``make demo``: 6.4 minutes measured on 2 idle CPU cores (more when the machine is slow or busy).

        The teacher is the ``tiny`` CLIP (64-px input): on 2 cores a 64-image step costs ~0.1 s for ``tiny`` and
        ~0.3 s for ``small`` at the same input size; 3000 steps take ``tiny`` above the majority-class baseline.
        The pretraining split has 12,000 images (with 3,000 the teacher memorises them), half of them iconic
        single-object close-ups; without those, CLIP trained from scratch learns colours long before shapes and
        stays at chance on categories within this budget (see docs/embedded-world.md)."""
        return cls(
            name="default",
            world=WorldConfig.default(num_pretrain=12_000),
            teachers=(TeacherTrainConfig(model="tiny", steps=3000, batch_size=64, warmup_steps=50),),
            rpn=RPNTrainConfig(steps=300, batch_size=16),
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

    # ---- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "world": self.world.to_dict(),
            "teachers": [t.to_dict() for t in self.teachers],
            "rpn": self.rpn.to_dict(),
            "templates": self.templates,
            "figure_images": self.figure_images,
            "detection": dict(self.detection),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoPreset:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown demo preset keys {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        world = data.pop("world", {})
        world_cfg = WorldConfig.preset(world.pop("preset"), **world) if "preset" in world else WorldConfig.from_dict(world)
        return cls(
            world=world_cfg,
            teachers=tuple(TeacherTrainConfig.from_dict(t) for t in data.pop("teachers")),
            rpn=RPNTrainConfig.from_dict(data.pop("rpn", {})),
            **data,
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> DemoPreset:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping")
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path


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


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}%"


def figure_image_indices(val: SplitData, count: int) -> list[int]:
    """Validation images for the picture: the first ones with 2-4 boxes, preferring some with a novel object."""
    novel = val.category_ids_of("novel")
    candidates = [i for i, b in enumerate(val.boxes) if 2 <= len(b) <= 4]
    with_novel = [i for i in candidates if any(int(c) in novel for c in val.labels[i])]
    chosen = with_novel[: (count + 1) // 2]
    chosen += [i for i in candidates if i not in chosen][: count - len(chosen)]
    return sorted(chosen)[:count] or list(range(min(count, len(val))))


def _stack_rows(rows: list[Any], gap: int = 12) -> Any:
    from PIL import Image

    width = max(r.width for r in rows)
    out = Image.new("RGB", (width, sum(r.height for r in rows) + gap * (len(rows) - 1)), "white")
    y = 0
    for row in rows:
        out.paste(row, (0, y))
        y += row.height + gap
    return out


def draw_figure(
    model: RegionCLIP,
    val: SplitData,
    indices: list[int],
    vocabulary: Vocabulary,
    class_embeddings: torch.Tensor,
    detection: DetectionConfig,
    path: Path,
) -> list[dict[str, Any]]:
    """Fig. 1-style PNG: per image, the teacher's top-3 labels on the ground-truth boxes next to its zero-shot
    detections on RPN proposals. Returns the drawn predictions as json records."""
    from .viz import draw_predictions, side_by_side

    assert val.images is not None
    names = {c["id"]: c["name"] for c in val.categories}
    images = [val.images[i] for i in indices]
    on_boxes = model.classify_regions(
        images, [val.boxes[i] for i in indices], vocabulary, top_k=3, class_embeddings=class_embeddings,
        image_ids=[val.image_ids[i] for i in indices],
    )
    detections = model.detect(
        images, vocabulary, config=detection, class_embeddings=class_embeddings,
        image_ids=[val.image_ids[i] for i in indices],
    )
    rows, records = [], []
    for index, image, gt_pred, det_pred in zip(indices, images, on_boxes, detections):
        truth = ", ".join(names[int(c)] for c in val.labels[index])
        title = f"GT boxes, top-3 (truth: {truth})"
        if len(title) > 50:  # what fits across a 480-px panel
            title = title[:48] + "…)"
        left = draw_predictions(image, gt_pred, title=title, min_side=480)
        right = draw_predictions(image, det_pred, title="RPN proposals, zero-shot detection", min_side=480)
        rows.append(side_by_side([left, right]))
        records.append({"image_id": val.image_ids[index], "truth": truth, "gt_boxes": gt_pred.to_json(),
                        "detections": det_pred.to_json()})
    _stack_rows(rows).save(path)
    return records


def draw_loss_curves(teachers: list[TrainedTeacher], rpn: TrainedRPN, path: Path) -> None:
    """Training-loss curves (raw and a moving average) of every teacher and of the RPN."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    def smooth(values: list[float], window: int = 10) -> list[float]:
        out, total = [], 0.0
        for i, v in enumerate(values):
            total += v - (values[i - window] if i >= window else 0.0)
            out.append(total / min(i + 1, window))
        return out

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for teacher in teachers:
        line, = axes[0].plot(teacher.losses, alpha=0.3)
        axes[0].plot(smooth(teacher.losses), color=line.get_color(), label=f"teacher {teacher.config.label}")
        axes[0].axhline(math.log(teacher.config.batch_size), color=line.get_color(), linestyle=":", linewidth=1)
    axes[0].set(title="CLIP teacher: contrastive loss (dotted: ln batch = chance)", xlabel="step", ylabel="loss")
    axes[0].legend()
    cls = [entry["loss_rpn_cls"] for entry in rpn.losses]
    loc = [entry["loss_rpn_loc"] for entry in rpn.losses]
    total = rpn_loss_total(rpn.losses)
    for values, label in ((total, "total"), (cls, "objectness (BCE)"), (loc, "box (L1)")):
        line, = axes[1].plot(values, alpha=0.3)
        axes[1].plot(smooth(values), color=line.get_color(), label=label)
    axes[1].set(title="RPN losses", xlabel="step", ylabel="loss")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
        progress: tqdm progress bars.
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
        with timer.stage("figures"):
            draw_loss_curves(teachers, trained_rpn, out_dir / "training_curves.png")
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
                   "train_seconds": t.seconds, "final_loss": _tail_mean(t.losses)}
            for name, t in zip((t.config.label for t in teachers), teachers)
        },
        "rpn": {**rpn_figures, "weights": str(trained_rpn.weights), "train_seconds": trained_rpn.seconds,
                "network": trained_rpn.rpn_config.to_dict()},
        "stages": timer.seconds,
        "stage_notes": timer.notes,
        "wall_seconds": timer.total,
        "figure": figure_records,
    }
    atomic_write_text(out_dir / "report.json", json.dumps(summary, indent=1, default=str))
    report = out_dir / "report.md"
    atomic_write_text(report, render_report(config, world, teachers, reports, trained_rpn, rpn_figures, timer, summary))
    return report


def _tail_mean(values: list[float], n: int = 10) -> float:
    tail = values[-n:]
    return sum(tail) / len(tail) if tail else float("nan")


def render_report(
    config: DemoPreset,
    world: World,
    teachers: list[TrainedTeacher],
    reports: dict[str, TeacherReport],
    rpn: TrainedRPN,
    rpn_figures: dict[str, Any],
    timer: StageTimer,
    summary: dict[str, Any],
) -> str:
    """The markdown report."""
    import math

    machine = summary["machine"]
    w = world.config
    first = next(iter(reports.values()))
    lines = [
        f"# regionclip demo — the embedded world (preset `{config.name}`)",
        "",
        f"Started {summary['started']}; total wall time **{timer.total / 60:.1f} min** "
        f"({machine['cpus']} CPUs, {machine['threads']} torch threads; 1-min load average "
        f"{machine['load_before'][0]:.2f} before, {machine['load_after'][0]:.2f} after; concurrent jobs slow every stage, "
        "and the thread count changes the trained weights in the last bits, so figures vary slightly between machines).",
        "",
        "## World",
        "",
        f"Synthetic world `{world.root.name}` (seed {w.seed}, {w.image_size}-px images): {w.num_pretrain} pretraining "
        f"image–caption images, {w.num_det_train} detection-training images (base boxes only), {w.num_val} validation "
        f"images ({first.num_regions} boxes of all {first.num_classes} categories). Cache: `{world.root}`.",
        "",
        "## CLIP teacher (image-level contrastive training only)",
        "",
        "| teacher | steps × batch | train time | final loss (ln batch) |",
        "|---|---|---|---|",
    ]
    for t in teachers:
        note = timer.notes.get(f"teacher {t.config.label}", "")
        lines.append(
            f"| {t.config.label} | {t.config.steps} × {t.config.batch_size} | {t.seconds / 60:.1f} min ({note}) | "
            f"{_tail_mean(t.losses):.3f} ({math.log(t.config.batch_size):.3f}) |"
        )
    lines += [
        "",
        f"Validation ({first.num_images} images, {first.num_captions} captions, {first.num_regions} GT boxes; "
        f"{first.num_classes} category names, prompt `{config.templates}`). Uniform chance for classification is "
        f"{_percent(first.chance)}; *majority* is always answering the most common class.",
        "",
        "| teacher | R@1 image→text | R@1 text→image | whole image: largest object top-1 / top-5 | "
        "whole image: top-1 is in the image | GT boxes: top-1 / top-3 | GT boxes top-1 base / novel |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in reports.items():
        lines.append(
            f"| {name} | {_percent(r.retrieval['image_to_text'])} | {_percent(r.retrieval['text_to_image'])} | "
            f"{_percent(r.image_top1)} / {_percent(r.image_top5)} | {_percent(r.image_present_top1)} | "
            f"{_percent(r.region_top1)} / "
            f"{_percent(r.region_top3)} | {_percent(r.region_top1_by_split.get('base', float('nan')))} / "
            f"{_percent(r.region_top1_by_split.get('novel', float('nan')))} |"
        )
    lines.append(
        f"| *chance* | {_percent(first.retrieval_chance['image_to_text'])} | "
        f"{_percent(first.retrieval_chance['text_to_image'])} | {_percent(first.chance)} / {_percent(5 * first.chance)} "
        f"(majority {_percent(first.image_majority)}) | {_percent(first.image_present_chance)} | "
        f"{_percent(first.chance)} / {_percent(3 * first.chance)} "
        f"(majority {_percent(first.region_majority)}) | |"
    )
    recall = rpn_figures["recall"]
    tops = sorted(recall["all"])
    lines += [
        "",
        "## Class-agnostic RPN (trained on base-category boxes)",
        "",
        f"Network `{rpn.rpn_config.name}` (anchors {', '.join(str(int(s[0])) for s in rpn.rpn_config.anchor_sizes)} px "
        f"on P2–P6), {rpn.config.steps} steps × {rpn.config.batch_size} images, "
        f"{rpn.seconds / 60:.1f} min ({timer.notes.get('rpn', '')}). Proposal recall on validation "
        f"(IoU ≥ {rpn_figures['iou_threshold']}, RPN NMS {rpn_figures['nms_thresh']}, "
        f"{rpn_figures['mean_proposals']:.0f} proposals per image on average):",
        "",
        "| boxes | " + " | ".join(f"recall@{n}" for n in tops) + " |",
        "|---|" + "---|" * len(tops),
    ]
    for group in ("base", "novel", "all"):
        lines.append(
            f"| {group} ({rpn_figures['num_boxes'][group]}) | "
            + " | ".join(_percent(recall[group][n]) for n in tops) + " |"
        )
    lines += [
        "",
        "## Pictures",
        "",
        "Top-3 labels of the first teacher on validation GT boxes (left) and its zero-shot detections on RPN "
        "proposals (right, score √(p·σ(objectness)), top detections):",
        "",
        "![regions](regions_top3.png)",
        "",
        "![training curves](training_curves.png)",
        "",
        "## Wall time per stage",
        "",
        "| stage | seconds | |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {sec:.1f} | {timer.notes.get(name, '')} |" for name, sec in timer.seconds.items()]
    lines += [f"| **total** | **{timer.total:.1f}** | |", "", "## Use the trained weights", "", "```python",
              "from regionclip import RegionCLIP"]
    for name, entry in summary["teachers"].items():
        lines.append(f"model = RegionCLIP.from_pretrained({entry['weights']!r})  # teacher {name} + RPN")
    lines += ["```", ""]
    return "\n".join(lines)
