"""Speed and accuracy of each `DetectionConfig` speed knob and of the ``fast`` preset, against ``exact`` fp32.

Same generated RN50-shaped model and R50-FPN RPN as ``zeroshot_inference.py`` (official checkpoint format,
BatchNorms folded), two noise images of different sizes (800x1333 and 800x1066, so batching across images
matters), a 1203-name vocabulary with random class embeddings. Per variant: seconds per image of ``detect``
(median of repeats after a warm-up) and the fraction of the exact detections that stay the same: a detection of
the same class whose box overlaps at IoU >= 0.9 (also at 0.5). Also the LVIS text embedding time (1203 names x 81
templates, trimmed encoder) fp32 and bf16, extrapolated from a measured subset of prompts.

    python benchmarks/fast_preset_agreement.py --out benchmarks/results/fast_preset_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).parent))
from zeroshot_inference import build_model, text_prompts, timed  # noqa: E402

from regionclip import Vocabulary  # noqa: E402
from regionclip.modeling.proposal_generator import RPNConfig  # noqa: E402
from regionclip.modeling.roi_heads import DETECTION_PRESETS, DetectionConfig  # noqa: E402
from regionclip.text.templates import ENSEMBLE_TEMPLATES  # noqa: E402
from regionclip.utils import atomic_write_text  # noqa: E402

FAST = DETECTION_PRESETS["fast"]
VARIANTS = {
    "exact": {},
    "num_proposals_300": {"num_proposals": FAST["num_proposals"]},
    "roi_sampling_ratio_2": {"roi_sampling_ratio": FAST["roi_sampling_ratio"]},
    "bf16": {"precision": FAST["precision"]},
    "batch_regions_across_images": {"batch_regions_across_images": True},
    "fast": FAST,
}


def agreement(reference, other, iou: float) -> float:
    """Fraction of ``reference`` detections with a same-class detection in ``other`` at box IoU >= ``iou``."""
    kept = total = 0
    for ref, oth in zip(reference, other):
        total += len(ref)
        if not len(ref) or not len(oth):
            continue
        overlaps = box_iou(torch.as_tensor(ref.boxes), torch.as_tensor(oth.boxes))
        same_class = torch.as_tensor(ref.labels[:, 0])[:, None] == torch.as_tensor(oth.labels[:, 0])[None, :]
        kept += int(((overlaps >= iou) & same_class).any(dim=1).sum())
    return kept / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_output/fast_preset.json"))
    parser.add_argument("--model", default="rn50")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--text-prompts", type=int, default=5000)
    args = parser.parse_args()

    load_before = os.getloadavg()
    generator = torch.Generator().manual_seed(0)
    model, _ = build_model(args.model, RPNConfig.preset("lvis_fpn"))
    images = [torch.randint(0, 256, (3, 800, width), generator=generator).to(torch.uint8) for width in (1333, 1066)]
    vocabulary = Vocabulary.parse([f"name {i}" for i in range(1203)])
    weights = torch.randn(1203, model.config.embed_dim, generator=generator)
    seconds, outputs = {}, {}
    for name, knobs in VARIANTS.items():
        config = DetectionConfig(**knobs)
        total, outputs[name] = timed(
            lambda: model.detect(images, vocabulary, config=config, class_embeddings=weights, batch_size=2),
            args.repeats,
        )
        seconds[name] = total / len(images)
    prompts = text_prompts(args.text_prompts)
    lvis_prompts = 1203 * len(ENSEMBLE_TEMPLATES)
    text = {}
    for precision in ("fp32", "bf16"):
        model.precision = precision
        start = time.perf_counter()
        model.text_embedder.encode_texts(prompts)  # one call: the subset is large enough to need no warm-up
        per_1000 = (time.perf_counter() - start) * 1000 / len(prompts)
        model.precision = "fp32"
        text[precision] = {"measured_prompts": len(prompts), "s_per_1000_prompts": per_1000,
                           "lvis_1203x81_s_extrapolated": per_1000 * lvis_prompts / 1000}
    report = {
        "setup": {"model": f"{args.model} shape, generated weights, BatchNorms folded", "rpn": "lvis_fpn, generated",
                  "images": [[800, 1333], [800, 1066]], "vocabulary": 1203, "repeats": args.repeats,
                  "threads": torch.get_num_threads(), "torch": torch.__version__, "variants": VARIANTS},
        "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()},
        "detect_s_per_image": seconds,
        "speedup_vs_exact": {name: seconds["exact"] / s for name, s in seconds.items()},
        "detections_per_image_exact": sum(len(p) for p in outputs["exact"]) / len(images),
        "same_detections_vs_exact_iou_0.9": {n: agreement(outputs["exact"], o, 0.9) for n, o in outputs.items()},
        "same_detections_vs_exact_iou_0.5": {n: agreement(outputs["exact"], o, 0.5) for n, o in outputs.items()},
        "text_lvis_81_templates_trimmed": text,
    }
    atomic_write_text(args.out, json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
