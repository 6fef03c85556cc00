"""Zero-shot inference speed on CPU: RegionCLIP's region path vs a naive crop-and-encode baseline.

RN50-shaped model with generated weights, one 800x1333 image, N proposals, a 1203-name vocabulary (random
class embeddings: text encoding is a one-off, cached cost and is timed separately). Reports seconds per image for
the trunk, RoIAlign, res5 + attention pool and the classifier, images/s, peak memory, FLOPs against this CPU's
measured fp32 GEMM throughput, and ratios against (a) the naive baseline — crop every box, resize to 224, CLIP
``encode_image`` — and (b) the un-optimised settings (one region at a time, contiguous memory, autograd on), all in
the same process. Timings are medians of repeats; the machine is noisy, so compare ratios, not seconds.

    python benchmarks/zeroshot_inference.py --out bench_output/zeroshot_inference.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from regionclip import ModelConfig, RegionCLIP
from regionclip.modeling.clip_parts import build_open_clip
from regionclip.utils import atomic_write_text


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measured_gemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul throughput of this CPU (best of ``repeats``), the practical peak to compare against."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def random_boxes(count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
    wh = (0.05 + 0.5 * torch.rand(count, 2, generator=generator)) * torch.tensor([width, height])
    boxes = torch.cat([xy, xy + wh], dim=1)
    return torch.minimum(boxes, torch.tensor([width, height, width, height], dtype=torch.float32))


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def stage_times(model: RegionCLIP, pixels: torch.Tensor, boxes: torch.Tensor, weights: torch.Tensor, repeats: int,
                optimised: bool) -> dict[str, float]:
    """Seconds for each stage on one image; ``optimised`` = inference_mode + batched head + channels_last."""
    context = torch.inference_mode() if optimised else nullcontext()
    memory_format = torch.channels_last if optimised else torch.contiguous_format
    model.trunk.to(memory_format=memory_format)
    model.head.to(memory_format=memory_format)
    region_batch = 256 if optimised else 1
    with context:
        batch = model.normalize(pixels)[None].contiguous(memory_format=memory_format)
        t_trunk, res4 = timed(lambda: model.trunk(batch), repeats)
        t_pool, pooled = timed(lambda: model.pooler(res4, [boxes]), repeats)
        pooled = pooled.contiguous(memory_format=memory_format)
        t_head, feats = timed(lambda: torch.cat([model.head(c) for c in pooled.split(region_batch)]), repeats)
        t_cls, _ = timed(lambda: model.classifier.probabilities(feats, weights), repeats)
    total = t_trunk + t_pool + t_head + t_cls
    return {"trunk_s": t_trunk, "roi_align_s": t_pool, "res5_attnpool_s": t_head, "classifier_s": t_cls,
            "total_s": total, "images_per_s": 1.0 / total}


def naive_crop_baseline(model: RegionCLIP, pixels: torch.Tensor, boxes: torch.Tensor, weights: torch.Tensor,
                        batch: int = 32) -> float:
    """Crop each box from the image, resize to CLIP's 224 px and run the full visual tower, then classify."""
    clip = build_open_clip(model.config)
    clip.load_state_dict(model.openai_state_dict(), strict=False)
    clip.eval()
    size = model.config.vision.image_size
    start = time.perf_counter()
    with torch.inference_mode():
        image = model.normalize(pixels)
        feats = []
        for chunk in boxes.split(batch):
            crops = []
            for x1, y1, x2, y2 in chunk.round().long().tolist():
                crop = image[:, y1 : max(y2, y1 + 1), x1 : max(x2, x1 + 1)]
                crops.append(F.interpolate(crop[None], size=(size, size), mode="bicubic", align_corners=False)[0])
            feats.append(clip.encode_image(torch.stack(crops)))
        model.classifier.probabilities(torch.cat(feats), weights)
    return time.perf_counter() - start


def count_flops(model: RegionCLIP, pixels: torch.Tensor, boxes: torch.Tensor, weights: torch.Tensor) -> dict[str, int]:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        res4 = model.trunk(model.normalize(pixels)[None])
        trunk = counter.get_total_flops()
        feats = model.head(model.pooler(res4, [boxes]))
        head = counter.get_total_flops() - trunk
        model.classifier.probabilities(feats, weights)
    return {"trunk": trunk, "res5_attnpool": head, "total": counter.get_total_flops()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_output/zeroshot_inference.json"))
    parser.add_argument("--proposals", type=int, default=1000)
    parser.add_argument("--vocabulary-size", type=int, default=1203)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-naive", action="store_true", help="Skip the (slow) crop-and-encode baseline.")
    args = parser.parse_args()

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = RegionCLIP.from_config(ModelConfig.rn50())
    height, width = 800, 1333
    pixels = torch.randint(0, 256, (3, height, width), generator=generator).float()
    boxes = random_boxes(args.proposals, height, width, generator)
    weights = torch.randn(args.vocabulary_size, model.config.embed_dim, generator=generator)

    text_start = time.perf_counter()
    model.embed_vocabulary([f"name {i}" for i in range(8)], "single", use_cache=False)
    text_seconds_per_name = (time.perf_counter() - text_start) / 8

    gemm = measured_gemm_gflops()
    flops = count_flops(model, pixels, boxes, weights)
    rss_before = peak_rss_mb()
    before = stage_times(model, pixels, boxes, weights, args.repeats, optimised=False)
    after = stage_times(model, pixels, boxes, weights, args.repeats, optimised=True)
    naive = None if args.skip_naive else naive_crop_baseline(model, pixels, boxes, weights)

    report = {
        "setup": {
            "model": "RN50 shape, generated weights", "image": [height, width], "proposals": args.proposals,
            "vocabulary": args.vocabulary_size, "precision": "fp32", "batch_images": 1, "device": "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "repeats": args.repeats,
        },
        "cpu_fp32_gemm_gflops": gemm,
        "flops": flops,
        "unoptimised": before,
        "optimised": after,
        "speedup_optimised_vs_unoptimised": before["total_s"] / after["total_s"],
        "achieved_gflops_optimised": flops["total"] / after["total_s"] / 1e9,
        "fraction_of_measured_gemm_peak": flops["total"] / after["total_s"] / 1e9 / gemm,
        "text_encoder_seconds_per_name_single_template": text_seconds_per_name,
        "peak_rss_mb": max(peak_rss_mb(), rss_before),
    }
    if naive is not None:
        report["naive_crop_encode_s"] = naive
        report["speedup_optimised_vs_naive"] = naive / after["total_s"]
        report["speedup_unoptimised_vs_naive"] = naive / before["total_s"]
    atomic_write_text(args.out, json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
