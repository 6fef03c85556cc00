"""Accuracy and speed of the lower precisions on the embedded world (issue: speed), in one run.

    PYTHONPATH=src python benchmarks/world_precision.py --threads 1 --out benchmarks/results/world_precision.json

1. Inference: zero-shot AP50 (all / base / novel) on the default world's validation split, with ground-truth boxes
   and with RPN proposals, for the cached default teacher and student, in fp32 (exact), bf16 autocast and the
   ``fast`` detection preset (bf16, 300 proposals, fixed RoIAlign sampling, cross-image region batches); with the
   wall time of each evaluation.
2. Training: the teacher trainer's speed in fp32 and bf16 autocast (alternating short timed runs, steps/s), and
   a teacher trained ``--train-steps`` steps each way, compared on the figures the demo reports (image top-1, GT-box
   top-1, AP50), so a faster schedule is not bought with accuracy.

``--skip PART ... --keep-skipped-from EARLIER.json`` re-runs the other parts and copies the skipped ones from an
earlier result, recorded under ``kept_from_earlier_run`` (file, git commit, that run's threads and load average).

Models come from the demo cache (``$REGIONCLIP_CACHE`` or ``~/.cache/regionclip``): the default preset's world,
teacher, RPN and student are trained there first if missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from regionclip.modeling.roi_heads import DetectionConfig
from regionclip.synthetic import generate_world
from regionclip.text.embedder import default_cache_dir
from regionclip.utils import atomic_write_text
from regionclip.world.data import load_split
from regionclip.world.demo import DemoPreset
from regionclip.world.rpn import get_or_train_rpn
from regionclip.world.student import get_or_pretrain_student
from regionclip.world.teacher import evaluate_teacher, get_or_train_teacher
from regionclip.world.teacher.train import train_teacher
from regionclip.world.zeroshot import zero_shot_ap50

MODES = ("fp32", "bf16", "fast")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def ap50_by_mode(model: Any, world: Any, templates: str) -> dict[str, Any]:
    """AP50 with GT boxes and RPN proposals in each of `MODES`; GT mode keeps the official GT-command threshold."""
    out: dict[str, Any] = {}
    for mode in MODES:
        model.precision = "fp32" if mode == "fp32" else "bf16"
        rpn_config = DetectionConfig.preset("fast") if mode == "fast" else None
        gt_config = DetectionConfig.preset("fast", score_threshold=0.0001) if mode == "fast" else None
        gt, gt_seconds = timed(lambda: zero_shot_ap50(model, world, boxes=("gt",), templates=templates, config=gt_config))
        rpn, rpn_seconds = timed(
            lambda: zero_shot_ap50(model, world, boxes=("rpn",), templates=templates, config=rpn_config)
        )
        out[mode] = {"gt": gt["gt"], "rpn": rpn["rpn"], "seconds": {"gt": gt_seconds, "rpn": rpn_seconds}}
        print(mode, json.dumps(out[mode]), flush=True)
    model.precision = "fp32"
    for boxes in ("gt", "rpn"):
        for mode in ("bf16", "fast"):
            out[f"{mode}_minus_fp32_{boxes}"] = {
                g: out[mode][boxes][g] - out["fp32"][boxes][g] for g in out["fp32"][boxes]
            }
    return out


def training_speed(data: Any, config: Any, steps: int, rounds: int) -> dict[str, Any]:
    """Steps/s of the teacher trainer, fp32 and bf16 alternating (``rounds`` pairs of ``steps``-step runs)."""
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(rounds):
        for precision in ("fp32", "bf16"):
            run_config = dataclasses.replace(config, steps=steps + 2, precision=precision, checkpoint_every=10_000)
            with tempfile.TemporaryDirectory() as tmp:
                warm = train_teacher(data, run_config, tmp, progress=False, stop_after=2)  # warm-up, untimed
                run = train_teacher(data, run_config, tmp, progress=False)
            del warm
            seconds[precision].append(run.seconds / steps)
    best = {p: min(v) for p, v in seconds.items()}
    return {"seconds_per_step": seconds, "steps_per_second_best": {p: 1 / s for p, s in best.items()},
            "bf16_speedup": best["fp32"] / best["bf16"], "batch_size": config.batch_size}


# result keys of each --skip part
PART_KEYS = {"inference": "inference", "speed": "training_speed", "trained": "trained_teachers"}


def kept_parts(path: Path, parts: list[str]) -> dict[str, Any]:
    """The ``parts`` of an earlier result file, with where they come from: the file, the last git commit that wrote
    it (if it is tracked and unchanged since) and that run's threads and load average."""
    earlier = json.loads(path.read_text())
    missing = [part for part in parts if PART_KEYS[part] not in earlier]
    if missing:
        raise SystemExit(f"{path} has no {', '.join(missing)} part to keep")
    commit = subprocess.run(["git", "log", "-1", "--format=%H", "--", str(path.resolve())], capture_output=True, text=True,
                            cwd=path.resolve().parent).stdout.strip()
    changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(path.resolve())], cwd=path.resolve().parent).returncode
    provenance = {"file": str(path), "git_commit": commit if commit and changed == 0 else None,
                  "threads": earlier.get("threads"), "load_before": earlier.get("load_before"),
                  "load_after": earlier.get("load_after"), "parts": {part: PART_KEYS[part] for part in parts}}
    return {PART_KEYS[part]: earlier[PART_KEYS[part]] for part in parts} | {"kept_from_earlier_run": provenance}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=1000, help="steps of the fp32-vs-bf16 teacher pair")
    parser.add_argument("--speed-steps", type=int, default=20)
    parser.add_argument("--speed-rounds", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=["inference", "speed", "trained"])
    parser.add_argument("--keep-skipped-from", type=Path,
                        help="an earlier json of this script: the parts named in --skip are copied from it, and the "
                             "json records which file, git commit and load average they come from")
    parser.add_argument("--out", type=Path, default=Path("bench_output/world_precision.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = DemoPreset.default()
    cache = default_cache_dir()
    result: dict[str, Any] = {"threads": args.threads, "load_before": list(os.getloadavg())}
    if args.keep_skipped_from is not None:
        result.update(kept_parts(args.keep_skipped_from, args.skip))

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=1))

    world = generate_world(preset.world, cache / "worlds", progress=False)
    teacher = get_or_train_teacher(world, preset.teachers[0], cache / "models", progress=False)
    rpn = get_or_train_rpn(world, preset.rpn, cache / "models", progress=False)
    if "inference" not in args.skip:
        student = get_or_pretrain_student(world, preset.student, teacher, rpn, cache / "models", progress=False)
        for name, run in (("teacher", teacher), ("student", student)):
            model = run.load()
            if model.rpn is None:
                model.rpn = rpn.load()
            result.setdefault("inference", {})[name] = {"run": run.run_dir.name, **ap50_by_mode(model, world, preset.templates)}
            save()
    pretrain = None
    if "speed" not in args.skip:
        pretrain = load_split(world, "pretrain", progress=False)
        result["training_speed"] = training_speed(pretrain, preset.teachers[0], args.speed_steps, args.speed_rounds)
        print("speed", json.dumps(result["training_speed"]), flush=True)
        save()
    if "trained" not in args.skip:
        val = load_split(world, "val", progress=False)
        trained: dict[str, Any] = {}
        for precision in ("bf16", "fp32"):
            config = dataclasses.replace(preset.teachers[0], steps=args.train_steps, precision=precision)
            run = get_or_train_teacher(world, config, cache / "models", progress=False, data=pretrain)
            model = run.load()
            model.rpn = rpn.load()
            report = evaluate_teacher(model, val, templates=preset.templates)
            trained[precision] = {
                "run": run.run_dir.name, "train_seconds": run.seconds, "final_loss": sum(run.losses[-10:]) / 10,
                "image_top1": report.image_top1, "region_top1": report.region_top1,
                "ap50": zero_shot_ap50(model, world, templates=preset.templates),
            }
            print(precision, json.dumps(trained[precision]), flush=True)
            result["trained_teachers"] = trained
            save()
    result["load_after"] = list(os.getloadavg())
    save()


if __name__ == "__main__":
    main()
