"""Zero-shot inference speed on CPU: RegionCLIP's region path vs a naive crop-and-encode baseline.

RN50-shaped model with generated weights, one 800x1333 image, N proposals, a 1203-name vocabulary (random
class embeddings: text encoding is a one-off, cached cost and is timed separately). Reports seconds per image for
the trunk, RoIAlign, res5 + attention pool and the classifier, images/s, peak memory, FLOPs against this CPU's
measured fp32 GEMM throughput, and ratios against (a) the naive baseline — crop every box, resize to 224, CLIP
``encode_image`` — and (b) the un-optimised settings (one region at a time, contiguous memory, autograd on), all in
the same process. The slow variants are timed per region on a subset and scaled to N (they are linear in N).
Timings are medians of repeats after a warm-up; the machine is noisy, so compare ratios, not seconds.

    python benchmarks/zeroshot_inference.py --out bench_output/zeroshot_inference.json
"""

from __future__ import annotations

import argparse
import copy
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
from regionclip.modeling.clip_parts import attention_pool_first_token, build_open_clip
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
    """Median seconds of ``repeats`` calls after one untimed warm-up call."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def library_stage_times(model: RegionCLIP, pixels: torch.Tensor, boxes: torch.Tensor, weights: torch.Tensor,
                        repeats: int) -> dict[str, float]:
    """Seconds per stage of the library's own path (what ``classify_regions`` / ``detect`` run) on one image."""
    with torch.inference_mode():
        batch = model.normalize(pixels)[None]
        t_trunk, res4 = timed(lambda: model.trunk(batch), repeats)
        t_pool, pooled = timed(
            lambda: model.pooler(res4, [boxes]).contiguous(memory_format=torch.channels_last), repeats
        )
        t_head, feats = timed(lambda: torch.cat([model.head(c) for c in pooled.split(model.region_batch_size)]), repeats)
        t_cls, _ = timed(lambda: model.classifier.probabilities(feats, weights), repeats)
    total = t_trunk + t_pool + t_head + t_cls
    return {"trunk_s": t_trunk, "roi_align_s": t_pool, "res5_attnpool_s": t_head, "classifier_s": t_cls,
            "total_s": total, "images_per_s": 1.0 / total}


def region_head_ablation(model: RegionCLIP, pixels: torch.Tensor, boxes: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds per region of the res5 + attention-pool head, adding one optimisation at a time."""
    with torch.inference_mode():
        pooled = model.pooler(model.trunk(model.normalize(pixels)[None]), [boxes])
    pooled = pooled.clone()  # a normal tensor, usable by the autograd-on variants
    contiguous_head = copy.deepcopy(model.head).to(memory_format=torch.contiguous_format)
    plain = pooled.contiguous()
    channels_last = pooled.contiguous(memory_format=torch.channels_last)

    def run(head, inputs, batch, first_token, grad):
        context = nullcontext() if grad else torch.inference_mode()
        with context:
            outs = []
            for chunk in inputs.split(batch):
                x = head.layer4(chunk)
                outs.append(attention_pool_first_token(head.attnpool, x) if first_token else head.attnpool(x))
            return torch.cat(outs)

    n = len(boxes)
    steps = {
        "one_region_at_a_time": (contiguous_head, plain, 1, False, True),
        "batched": (contiguous_head, plain, n, False, True),
        "batched+inference_mode": (contiguous_head, plain, n, False, False),
        "batched+inference_mode+channels_last": (model.head, channels_last, n, False, False),
        "batched+inference_mode+channels_last+first_token_attnpool": (model.head, channels_last, n, True, False),
    }
    return {name: timed(lambda a=args: run(*a), repeats)[0] / n for name, args in steps.items()}


def naive_crop_baseline(model: RegionCLIP, pixels: torch.Tensor, boxes: torch.Tensor, weights: torch.Tensor,
                        batch: int = 32) -> float:
    """Seconds per box: crop each box from the image, resize to CLIP's 224 px, run the whole visual tower, classify."""
    clip = build_open_clip(model.config)
    clip.load_state_dict(model.openai_state_dict(), strict=False)
    clip.eval()
    size = model.config.vision.image_size

    def run():
        with torch.inference_mode():
            image = model.normalize(pixels)
            feats = []
            for chunk in boxes.split(batch):
                crops = []
                for x1, y1, x2, y2 in chunk.round().long().tolist():
                    crop = image[:, y1 : max(y2, y1 + 1), x1 : max(x2, x1 + 1)]
                    crops.append(F.interpolate(crop[None], size=(size, size), mode="bicubic", align_corners=False)[0])
                feats.append(clip.encode_image(torch.stack(crops)))
            return model.classifier.probabilities(torch.cat(feats), weights)

    return timed(run, 1)[0] / len(boxes)


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
    parser.add_argument("--subset", type=int, default=64,
                        help="Regions on which the slow variants (per-region loop, naive crops) are timed, per region.")
    parser.add_argument("--skip-naive", action="store_true", help="Skip the crop-and-encode baseline.")
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
    library = library_stage_times(model, pixels, boxes, weights, args.repeats)
    subset = boxes[: args.subset]
    ablation = region_head_ablation(model, pixels, subset, args.repeats)
    naive_per_box = None if args.skip_naive else naive_crop_baseline(model, pixels, subset, weights)

    before_head = ablation["one_region_at_a_time"] * args.proposals
    unoptimised_total = library["total_s"] - library["res5_attnpool_s"] + before_head
    report = {
        "setup": {
            "model": "RN50 shape, generated weights", "image": [height, width], "proposals": args.proposals,
            "vocabulary": args.vocabulary_size, "precision": "fp32", "batch_images": 1, "device": "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "repeats": args.repeats, "subset_regions_for_slow_variants": len(subset),
        },
        "cpu_fp32_gemm_gflops": gemm,
        "flops": flops,
        "library_path": library,
        "achieved_gflops": flops["total"] / library["total_s"] / 1e9,
        "fraction_of_measured_gemm_peak": flops["total"] / library["total_s"] / 1e9 / gemm,
        "region_head_seconds_per_region": ablation,
        "region_head_speedup_vs_one_at_a_time": {
            name: ablation["one_region_at_a_time"] / value for name, value in ablation.items()
        },
        "unoptimised_total_s_extrapolated": unoptimised_total,
        "speedup_library_vs_unoptimised": unoptimised_total / library["total_s"],
        "text_encoder_seconds_per_name_single_template": text_seconds_per_name,
        "peak_rss_mb": peak_rss_mb(),
    }
    if naive_per_box is not None:
        naive_total = naive_per_box * args.proposals
        report["naive_crop_encode_seconds_per_box"] = naive_per_box
        report["naive_crop_encode_total_s_extrapolated"] = naive_total
        report["speedup_library_vs_naive"] = naive_total / library["total_s"]
    atomic_write_text(args.out, json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
