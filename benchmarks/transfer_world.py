"""Transfer in the embedded world (issue 12): RegionCLIP (student) vs CLIP (teacher) initialisation, focal scaling
on (γ 0.5) and off, on the default demo world, with wall times.

    PYTHONPATH=src nice -n 10 python benchmarks/transfer_world.py --threads 1 --preset full --steps 100 --part runs
    PYTHONPATH=src nice -n 10 python benchmarks/transfer_world.py --threads 1 --preset full --steps 100 \
        --part zero-shot --out benchmarks/results/transfer_world_zero_shot.json

Each of the four runs is `get_or_train_transfer` with the ``--preset`` demo preset's transfer settings (``full``:
the four-run table) on the default world, fine-tuned on the base boxes of ``det_train`` and evaluated on validation
(OV-COCO generalized AP50 with all names). For context (``--part zero-shot``), the AP50 of the two initialisations
themselves, before fine-tuning (same RPN, same test settings). Runs are cached in the demo's models cache
(``$REGIONCLIP_CACHE`` or ``~/.cache/regionclip``); a cached run reports the wall time it took when it was trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from regionclip.modeling.meta_arch.fast_rcnn import transfer_detection_config
from regionclip.synthetic import generate_world
from regionclip.text.embedder import default_cache_dir
from regionclip.utils import atomic_write_text
from regionclip.world.demo import DemoPreset
from regionclip.world.rpn import get_or_train_rpn
from regionclip.world.student import get_or_pretrain_student
from regionclip.world.teacher import get_or_train_teacher
from regionclip.world.transfer import get_or_train_transfer
from regionclip.world.zeroshot import zero_shot_ap50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preset", default="full", help="demo preset whose transfer settings are used")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's transfer steps")
    parser.add_argument("--out", default="benchmarks/results/transfer_world.json")
    parser.add_argument("--part", choices=("runs", "zero-shot", "all"), default="all",
                        help="what to measure; the other part's entries already in --out are kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    default = DemoPreset.default()
    transfer = DemoPreset.load(args.preset).transfer
    if args.steps is not None:
        transfer = dataclasses.replace(transfer, steps=args.steps)
    cache = default_cache_dir()
    world = generate_world(default.world, cache / "worlds", progress=False)
    teacher = get_or_train_teacher(world, default.teachers[0], cache / "models", progress=False)
    rpn = get_or_train_rpn(world, default.rpn, cache / "models", progress=False)
    student = get_or_pretrain_student(world, default.student, teacher, rpn, cache / "models", progress=False)
    inits = {"student": student, "teacher": teacher}

    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    if args.part in ("zero-shot", "all"):
        result["zero_shot_before_finetuning"] = zero_shot_of_inits(inits, rpn, world, transfer, default.templates)
    if args.part in ("runs", "all"):
        result.update(transfer_runs(world, transfer, inits, rpn, cache, default.templates), transfer=transfer.to_dict())
    command = ("PYTHONPATH=src nice -n 10 python benchmarks/transfer_world.py "
               f"--threads {args.threads} --preset {args.preset} --part {args.part}"
               + (f" --steps {args.steps}" if args.steps is not None else ""))
    result.setdefault("commands", {})[args.part] = {
        "command": command, "cpus": os.cpu_count(), "threads": args.threads, "load_before": list(load_before),
        "load_after": list(os.getloadavg()), "torch": torch.__version__,
    }
    result.update(world=world.config.hash(),
                  init_runs={"student": student.run_dir.name, "teacher": teacher.run_dir.name, "rpn": rpn.run_dir.name})
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1))
    print("wrote", out)


def zero_shot_of_inits(inits, rpn, world, transfer, templates) -> dict:
    """AP50 of the initialisations themselves (with the RPN, the transfer evaluation's test settings)."""
    detection = transfer_detection_config(num_proposals=transfer.eval_proposals, soft_nms=transfer.eval_soft_nms)
    out = {}
    for name, run in inits.items():
        model = run.load()
        model.rpn = rpn.load()
        started = time.perf_counter()
        ap50 = zero_shot_ap50(model, world, boxes=("rpn",), templates=templates, config=detection)["rpn"]
        out[name] = {"ap50": ap50, "eval_seconds": time.perf_counter() - started, "load_average_after": os.getloadavg()}
        print("zero-shot", name, out[name], flush=True)
    return out


def transfer_runs(world, transfer, inits, rpn, cache, templates) -> dict:
    runs = []
    for init, gamma in transfer.runs():
        started = time.perf_counter()
        run = get_or_train_transfer(world, transfer, init, gamma, inits[init], rpn, cache / "models",
                                    templates, progress=False)
        entry = {**run.to_dict(), "wall_seconds_this_call": time.perf_counter() - started,
                 "load_average_after": os.getloadavg()}
        runs.append(entry)
        print(run.label, entry["ap50"], f"train {entry['train_seconds']:.0f} s", flush=True)
    return {"runs": runs}


if __name__ == "__main__":
    main()
