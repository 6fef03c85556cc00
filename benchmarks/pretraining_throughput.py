"""Pretraining throughput (images/s) in fp32 and bf16 autocast, from the trainer's own JSONL log.

    PYTHONPATH=src python benchmarks/pretraining_throughput.py [--model tiny] [--steps 12] [--batch-size 8] [--threads 1]

Generated weights (He-initialised convolutions, a tiny RPN) and generated images: the speed does not depend on
what the weights have learnt. Reports the median images/s over the steps after the first two (warm-up), with the
1-minute load average before and after each run (a shared machine makes the figures indicative only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from regionclip import ModelConfig, RegionCLIP
from regionclip.checkpoints.embeddings import save_embedding_file
from regionclip.modeling.meta_arch import ProposalNetwork
from regionclip.modeling.proposal_generator import RPNConfig
from regionclip.pretrain import LOG_FILE, PretrainConfig, pretrain


def write_inputs(root: Path, model_name: str, images: int, size: tuple[int, int]) -> dict[str, str]:
    torch.manual_seed(0)
    model = RegionCLIP.from_config(ModelConfig.preset(model_name))
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    model.rpn = ProposalNetwork(RPNConfig.tiny("fpn")).freeze()
    weights = model.save_pretrained(root / "init")
    concepts = save_embedding_file(root / "concepts.pth", torch.randn(200, model.config.embed_dim))
    rng = np.random.default_rng(0)
    entries, captions = [], []
    for index in range(images):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / f"{index}.png")
        entries.append({"id": index, "file_name": f"{index}.png", "width": size[1], "height": size[0]})
        captions.append({"id": index, "image_id": index, "caption": f"a photo of object {index}"})
    (root / "captions.json").write_text(json.dumps({"images": entries, "annotations": captions}))
    return {"weights": str(weights), "concepts": str(concepts), "captions_json": str(root / "captions.json"),
            "image_dir": str(root)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--regions", type=int, default=100, help="regions per image (official: 100)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"model": args.model, "batch_size": args.batch_size, "regions_per_image": args.regions,
               "image_size": [args.height, args.width], "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = write_inputs(root, args.model, 2 * args.batch_size, (args.height, args.width))
        for precision in ("fp32", "bf16"):
            load_before = os.getloadavg()[0]
            config = PretrainConfig(
                **inputs, output_dir=str(root / precision), min_size=None, steps=args.steps,
                batch_size=args.batch_size, milestones=[args.steps], warmup_steps=1, regions_per_image=args.regions,
                precision=precision, checkpoint_every=args.steps,
            )
            pretrain(config, progress=False)
            lines = [json.loads(x) for x in (root / precision / LOG_FILE).read_text().splitlines()]
            speeds = [x["images_per_second"] for x in lines[2:]]
            results[precision] = {"images_per_second": round(statistics.median(speeds), 2),
                                  "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
