"""Synthetic-world generation speed: 10,000 images (the issue's budget is 2 minutes on 2 cores).

Generates the default world with 8,000 pretraining + 1,500 detection-training + 500 validation images into a fresh
temporary directory (nothing cached) with one render process per core, and, as the same-process baseline, a
1,000-image world with a single process. Reports wall seconds, images/s and the parallel speed-up (images/s with
all cores / images/s with one); the machine is noisy, so compare the ratio, and re-run before trusting seconds.

    python benchmarks/world_generation.py --out bench_output/world_generation.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from regionclip.synthetic import WorldConfig, generate_world
from regionclip.utils import atomic_write_text


def generation_seconds(config: WorldConfig, num_workers: int) -> float:
    """Wall seconds to generate ``config`` from scratch (everything written, then deleted)."""
    with tempfile.TemporaryDirectory(prefix="regionclip-bench-world-") as root:
        start = time.perf_counter()
        generate_world(config, root, progress=False, num_workers=num_workers)
        return time.perf_counter() - start


def world_of(total: int) -> WorldConfig:
    """The default world scaled to ``total`` images: 80% pretraining, 15% detection-training, 5% validation."""
    det_train, val = round(total * 0.15), round(total * 0.05)
    return WorldConfig.default(num_pretrain=total - det_train - val, num_det_train=det_train, num_val=val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_output/world_generation.json"))
    parser.add_argument("--images", type=int, default=10_000, help="total images of the timed world")
    parser.add_argument("--baseline-images", type=int, default=1_000, help="images of the one-process baseline")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    runs = {}
    for label, total, workers in (("all_cores", args.images, cores), ("one_process", args.baseline_images, 1)):
        config = world_of(total)
        seconds = generation_seconds(config, workers)
        runs[label] = {"images": total, "workers": workers, "seconds": seconds, "images_per_s": total / seconds}
        print(f"{label}: {total} images with {workers} process(es) in {seconds:.1f} s ({total / seconds:.0f} images/s)")
    report = {
        "setup": {
            "world": "WorldConfig.default, 160-px images, JPEG + COCO json + webdataset shards",
            "cpus": cores, "cpu": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
        },
        **runs,
        "parallel_speedup": runs["all_cores"]["images_per_s"] / runs["one_process"]["images_per_s"],
        "within_budget_120s": runs["all_cores"]["seconds"] <= 120.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
