"""The demo's outputs beyond numbers: the markdown report, the Fig. 1-style picture and the loss curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..api import RegionCLIP
from ..modeling.roi_heads import DetectionConfig
from ..synthetic import World
from ..text.vocabulary import Vocabulary
from .data import SplitData
from .rpn import TrainedRPN, rpn_loss_total
from .student import TrainedStudent
from .teacher import TeacherReport, TrainedTeacher
from .transfer import transfer_section

if TYPE_CHECKING:
    from .demo import DemoPreset, StageTimer


def percent(value: float) -> str:
    """A fraction as ``12.3%`` (``n/a`` for NaN)."""
    return "n/a" if value != value else f"{100 * value:.1f}%"


def tail_mean(values: list[float], n: int = 10) -> float:
    """Mean of the last ``n`` values (NaN when there are none): a training run's final loss, less noisy."""
    tail = values[-n:]
    return sum(tail) / len(tail) if tail else float("nan")


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
    from ..viz import draw_predictions, side_by_side

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


def draw_loss_curves(
    teachers: list[TrainedTeacher], rpn: TrainedRPN, path: Path, student: TrainedStudent | None = None
) -> None:
    """Training-loss curves (raw and a moving average) of every teacher, of the RPN and of the student's three
    pretraining losses."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    def smooth(values: list[float], window: int = 10) -> list[float]:
        out, total = [], 0.0
        for i, v in enumerate(values):
            total += v - (values[i - window] if i >= window else 0.0)
            out.append(total / min(i + 1, window))
        return out

    fig, axes = plt.subplots(1, 3 if student is not None else 2, figsize=(16.5 if student is not None else 11, 4))
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
    if student is not None:
        for name in student.losses[0]:
            values = [entry[name] for entry in student.losses]
            line, = axes[2].plot(values, alpha=0.3)
            axes[2].plot(smooth(values), color=line.get_color(), label=name)
        axes[2].set(title="Student region–text pretraining losses (weighted)", xlabel="step", ylabel="loss")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def student_section(config: DemoPreset, summary: dict[str, Any], timer: StageTimer) -> list[str]:
    """Teacher vs pretrained student on validation: whole-image and GT-box top-1, AP50 (GT boxes, RPN proposals;
    all / base / novel) and pseudo-label accuracy."""
    student, first = summary["student"], summary["student"]["initialised_from"]
    teacher, pseudo, ap50 = summary["teachers"][first], summary["pseudo_labels"], summary["ap50"]
    s = config.student
    pool = (f"{student['concepts']} concepts parsed from the pretraining captions (spaCy noun chunks, seen ≥ "
            f"{s.concept_min_count} times)" if s.concepts == "captions" else "the world's category names")
    losses = ", ".join(f"{name} {value:.3f}" for name, value in student["final_losses"].items())
    matched = pseudo[first]["names"]
    lines = [
        "",
        "## Region–text pretraining (student)",
        "",
        f"Student initialised from teacher `{first}`, pretrained on the pretraining captions with this RPN "
        f"(top {s.rpn_top_k} proposals, {s.regions_per_image} sampled per image) and {pool} as the concept pool, "
        f"images at their own size: {s.steps} steps × {s.batch_size} images, "
        f"{student['train_seconds'] / 60:.1f} min ({timer.notes.get('student', '')}), final losses {losses}.",
        "",
        "Validation, teacher vs student. Image top-1: the largest object's category from the whole image; GT boxes "
        f"top-1: zero-shot over the {teacher['num_classes']} category names; AP50: COCO AP at IoU 0.5 on the "
        f"GT boxes and on the top {config.ap50_proposals} RPN proposals. Pseudo-label accuracy: the model's top-1 "
        f"concept on the top {int(matched['proposals'] / max(1, student['num_images']))} RPN proposals of each image "
        "against the category of the GT box it overlaps most, over the proposals with IoU ≥ 0.5 "
        f"({matched['matched']} of {matched['proposals']}); *pool*: top-1 over the training concept pool, a concept "
        "counting as the category whose caption word it parses from (none: a miss); *names*: over the category names.",
        "",
        "| model | image top-1 | GT boxes top-1 (base / novel) | AP50 GT boxes all / base / novel | "
        "AP50 RPN all / base / novel | pseudo-labels pool / names |",
        "|---|---|---|---|---|---|",
    ]

    def ap(entry: dict[str, float]) -> str:
        return " / ".join(f"{entry[group]:.1f}" for group in ("all", "base", "novel"))

    for label, key, entry in ((f"teacher {first}", first, teacher), ("student", "student", student)):
        split = entry["region_top1_by_split"]
        lines.append(
            f"| {label} | {percent(entry['image_top1'])} | {percent(entry['region_top1'])} "
            f"({percent(split.get('base', float('nan')))} / {percent(split.get('novel', float('nan')))}) | "
            f"{ap(ap50[key]['gt'])} | {ap(ap50[key]['rpn'])} | "
            f"{percent(pseudo[key]['pool']['accuracy'])} / {percent(pseudo[key]['names']['accuracy'])} |"
        )
    return lines


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
            f"{tail_mean(t.losses):.3f} ({math.log(t.config.batch_size):.3f}) |"
        )
    lines += [
        "",
        f"Validation ({first.num_images} images, {first.num_captions} captions, {first.num_regions} GT boxes; "
        f"{first.num_classes} category names, prompt `{config.templates}`). Uniform chance for classification is "
        f"{percent(first.chance)}; *majority* is always answering the most common class.",
        "",
        "| teacher | R@1 image→text | R@1 text→image | whole image: largest object top-1 / top-5 | "
        "whole image: top-1 is in the image | GT boxes: top-1 / top-3 | GT boxes top-1 base / novel |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in reports.items():
        lines.append(
            f"| {name} | {percent(r.retrieval['image_to_text'])} | {percent(r.retrieval['text_to_image'])} | "
            f"{percent(r.image_top1)} / {percent(r.image_top5)} | {percent(r.image_present_top1)} | "
            f"{percent(r.region_top1)} / "
            f"{percent(r.region_top3)} | {percent(r.region_top1_by_split.get('base', float('nan')))} / "
            f"{percent(r.region_top1_by_split.get('novel', float('nan')))} |"
        )
    lines.append(
        f"| *chance* | {percent(first.retrieval_chance['image_to_text'])} | "
        f"{percent(first.retrieval_chance['text_to_image'])} | {percent(first.chance)} / {percent(5 * first.chance)} "
        f"(majority {percent(first.image_majority)}) | {percent(first.image_present_chance)} | "
        f"{percent(first.chance)} / {percent(3 * first.chance)} "
        f"(majority {percent(first.region_majority)}) | |"
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
            + " | ".join(percent(recall[group][n]) for n in tops) + " |"
        )
    lines += student_section(config, summary, timer)
    lines += transfer_section(summary["transfer"])
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
