"""Does the student beat its teacher in the embedded world, and why not? Teacher strength, loss ablation, global box.

    PYTHONPATH=src nice -n 10 python benchmarks/pretraining_world.py [--threads 1] [--teacher-steps 3000 1000]
        [--out benchmarks/results/pretraining_world.json]

On the default demo world (`DemoPreset.default`), with its cached RPN and teachers (`get_or_train_teacher` trains a
missing one) and the demo's student recipe (`StudentPretrainConfig`, concept pool parsed from the captions):

* ``teachers``: per teacher checkpoint, teacher and student on validation (image top-1, GT-box top-1, AP50 on GT
  boxes and on the top 300 RPN proposals, all / base / novel; pseudo-label accuracy over the training pool and over
  the category names) and the student's gain (student minus teacher);
* ``ablation``: the default teacher's student with each loss weight set to 0 in turn, and with the category names
  as the pool (the previous recipe);
* ``global_box``: whether ``"padded"`` and ``"image"`` differ on this world (same-size images: a batch's padded
  extent is every image's own extent, so the two give the same boxes and the same run);
* ``rpn``: proposal recall of the world RPN at IoU 0.5.

Students are cached in ``<cache>/models/student-<key>`` like the demo's; the json is rewritten after every run with
the 1-minute load average, so a partial study is readable, and a rerun keeps the entries it already holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from regionclip import RegionCLIP
from regionclip.data.captions import CocoCaptionPairs, StepPlan, caption_loader
from regionclip.modeling.roi_heads import DetectionConfig
from regionclip.modeling.region_text_losses import LOSS_NAMES
from regionclip.synthetic import generate_world
from regionclip.text.embedder import default_cache_dir
from regionclip.utils import write_json
from regionclip.world.data import load_split
from regionclip.world.demo import DemoPreset
from regionclip.world.rpn import evaluate_rpn, get_or_train_rpn
from regionclip.world.student import (
    CONCEPT_POOL_FILE, get_or_pretrain_student, proposal_pseudo_label_accuracies, student_concepts, student_run_dir,
)
from regionclip.world.teacher import evaluate_teacher, get_or_train_teacher
from regionclip.world.zeroshot import zero_shot_ap50


def load_average() -> float:
    return os.getloadavg()[0]


def evaluate(model: RegionCLIP, rpn_model: RegionCLIP, world, val, pool: list[str], preset: DemoPreset) -> dict:
    """The demo's teacher-vs-student figures of one model."""
    started = time.perf_counter()
    report = evaluate_teacher(model, val, templates=preset.templates, progress=False)
    result: dict[str, Any] = {
        "image_top1": report.image_top1, "region_top1": report.region_top1,
        "region_top1_by_split": report.region_top1_by_split,
        "pseudo_labels": proposal_pseudo_label_accuracies(
            model, val, {"pool": pool, "names": None}, rpn_model, preset.templates
        ),
        "ap50": zero_shot_ap50(model, world, "val", templates=preset.templates,
                               config=DetectionConfig(num_proposals=preset.ap50_proposals)),
    }
    result["eval_seconds"] = time.perf_counter() - started
    return result


def gain(student: dict, teacher: dict) -> dict:
    """Student minus teacher: top-1 in points of percent, AP50 in AP points."""
    return {
        "image_top1": 100 * (student["image_top1"] - teacher["image_top1"]),
        "region_top1": 100 * (student["region_top1"] - teacher["region_top1"]),
        "pseudo_labels_pool": 100 * (student["pseudo_labels"]["pool"]["accuracy"]
                                     - teacher["pseudo_labels"]["pool"]["accuracy"]),
        "ap50": {mode: {g: student["ap50"][mode][g] - teacher["ap50"][mode][g] for g in teacher["ap50"][mode]}
                 for mode in teacher["ap50"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--teacher-steps", type=int, nargs="+", default=[3000, 1000])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--ablations", nargs="*", help="ablation runs, in this order",
                        default=[f"no_{name}" for name in reversed(LOSS_NAMES)] + ["names_pool"])
    parser.add_argument("--out", default="benchmarks/results/pretraining_world.json")
    args = parser.parse_args()
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    torch.set_num_threads(args.threads)
    preset = DemoPreset.default()
    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    world = generate_world(preset.world, cache / "worlds", progress=False)
    val = load_split(world, "val", progress=False)
    trained_rpn = get_or_train_rpn(world, preset.rpn, cache / "models", progress=False)
    results: dict[str, Any] = {
        "command": "PYTHONPATH=src nice -n 10 python benchmarks/pretraining_world.py " + " ".join(
            f"--threads {args.threads} --teacher-steps {' '.join(map(str, args.teacher_steps))}".split()),
        "threads": args.threads, "world": world.config.hash(), "student": preset.student.to_dict(),
        "ap50_proposals": preset.ap50_proposals, "load_average_1min": previous.get("load_average_1min", []),
    }
    results["load_average_1min"].append(load_average())

    def save() -> None:
        results["load_average_1min"].append(load_average())
        write_json(args.out, results)

    rpn = trained_rpn.load()
    results["rpn"] = previous.get("rpn") or evaluate_rpn(rpn, val, top_ns=(100, 300, 1000))
    # global box: a one-step batch of the student's data, both modes
    config = preset.student.pretrain_config("init", "pool", world.config.to_dict(), "out")
    batch = next(iter(caption_loader(CocoCaptionPairs.from_world(world, "pretrain"),
                                     StepPlan(config.batch_size, config.seed), config.transform(), num_steps=1)))
    sizes = {(image["width"], image["height"]) for image in world.load_instances("pretrain")["images"]}
    results["global_box"] = {
        "pretrain_image_sizes": sorted(sizes), "padded_size": list(batch.padded_size),
        "padded_box": batch.global_boxes("padded")[0].tolist(),
        "identical_boxes": bool(torch.equal(batch.global_boxes("padded"), batch.global_boxes("image"))),
    }
    save()

    pool_file: Path | None = None

    def student_of(teacher, student_config):
        """The cached (or newly pretrained) student; the parsed pool is copied in rather than parsed again."""
        run_dir = student_run_dir(cache / "models", world, student_config, teacher, trained_rpn)
        if pool_file is not None and student_config.concepts == "captions" and not (run_dir / CONCEPT_POOL_FILE).is_file():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pool_file, run_dir / CONCEPT_POOL_FILE)
        return get_or_pretrain_student(world, student_config, teacher, trained_rpn, cache / "models", progress=False)

    results["teachers"] = previous.get("teachers", {})
    base_teacher = None
    pool: list[str] = []
    for steps in args.teacher_steps:
        teacher_config = dataclasses.replace(preset.teachers[0], steps=steps)
        teacher = get_or_train_teacher(world, teacher_config, cache / "models", progress=False)
        student = student_of(teacher, preset.student)
        if pool_file is None:
            pool_file = student.run_dir / CONCEPT_POOL_FILE
            pool = student_concepts(student, val.categories)
            results["concept_pool"] = {"concepts": len(pool), "min_count": preset.student.concept_min_count}
        teacher_model = teacher.load()
        teacher_model.rpn = rpn
        if base_teacher is None:
            base_teacher, base_model = teacher, teacher_model
        if str(steps) in results["teachers"]:
            continue
        student_model = student.load()
        entry = {"teacher_run": teacher.run_dir.name, "student_run": student.run_dir.name,
                 "student_train_seconds": student.seconds, "student_trained_now": student.trained_now,
                 "teacher": evaluate(teacher_model, teacher_model, world, val, pool, preset)}
        entry["student"] = evaluate(student_model, teacher_model, world, val, pool, preset)
        entry["student_minus_teacher"] = gain(entry["student"], entry["teacher"])
        entry["student_final_losses"] = {k: sum(s[k] for s in student.losses[-10:]) / 10 for k in LOSS_NAMES}
        results["teachers"][str(steps)] = entry
        save()

    results["ablation"] = previous.get("ablation", {})
    variants = {f"no_{name}": dataclasses.replace(preset.student, losses={f"{name}_weight": 0.0})
                for name in LOSS_NAMES}
    variants["names_pool"] = dataclasses.replace(preset.student, concepts="names")
    for label in args.ablations:
        if label in results["ablation"]:
            continue
        student = student_of(base_teacher, variants[label])
        entry = {"student_run": student.run_dir.name, "student_train_seconds": student.seconds,
                 "student_trained_now": student.trained_now,
                 "student": evaluate(student.load(), base_model, world, val, pool, preset)}
        entry["student_minus_teacher"] = gain(entry["student"], results["teachers"][str(args.teacher_steps[0])]["teacher"])
        entry["student_final_losses"] = {k: sum(s[k] for s in student.losses[-10:]) / 10 for k in LOSS_NAMES}
        results["ablation"][label] = entry
        save()


if __name__ == "__main__":
    main()
