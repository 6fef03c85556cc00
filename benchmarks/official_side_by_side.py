"""Zero-shot inference speed of the official implementation and of this library, side by side on this machine.

The figures quoted in issue 13 were measured on another machine; a ratio against them mixes two CPUs. This script
measures both implementations here, on the same generated weights, images and vocabulary, in alternating processes
(official, ours, official, ours, ...), so that a busy or idle spell of the machine falls on both sides alike:

- weights: an RN50-shaped RegionCLIP with generated weights (non-trivial frozen-BatchNorm statistics) and an R50-FPN
  RPN (``RPNConfig.lvis_fpn``), written in the official checkpoint layout (``{"model": ...}`` with ``backbone.*``,
  ``teacher_backbone.*``, ``lang_encoder.*`` and the offline RPN), the RPN also as a plain detectron2 file for
  ``MODEL.CLIP.BB_RPN_WEIGHTS``, and 1203 generated class embeddings as a ``TEXT_EMB_PATH`` file; our side loads the
  same files through ``RegionCLIP.from_pretrained``;
- images: noise, 800x1333 and 800x1066 (already at the test-time size, so neither side resizes), and 5 random
  boxes per image for GT-box mode;
- modes: RPN mode with 1000 proposals (the official LVIS zero-shot config ``CLIP_fast_rcnn_R_50_C4_zsinf.yaml`` with
  the options of its ``test_zeroshot_inference.sh``: RPN NMS 0.9, score fusion with the RPN logit, score threshold
  0.02, 300 detections) and GT-box mode (the same config with ``CROP_REGION_TYPE GT``, no score fusion, threshold
  0.0001); ours in fp32 (``exact``), bf16 and the ``fast`` preset, with the matching ``DetectionConfig.preset(...,
  lvis=True)``; and text, seconds per 1000 prompts, the official concept-embedding loop (81 templates per name, one
  name at a time, all 77 positions) vs ``text_embedder.embed_names`` (no cache), for the first ``--text-names`` LVIS
  names;
- each process loads its model, warms up on the first image (or name), times all images (names) once and prints
  JSON; official: one forward per image under ``torch.no_grad``, as its evaluator runs; ours: one ``detect`` call
  on all images, as a user calls it; seconds per image = total / images;
- ``--pairs`` rounds of (official, ours) per mode; the json gives official / ours per round and its median and
  min-max, the load average before and after every process and the whole run, both torch versions and the
  official commit;
- a check that both run the same computation (``--skip-check`` leaves it out): RPN proposals and objectness, region
  features of the same boxes (GT boxes and the official proposals) and the final detections of both modes, official
  vs ours fp32.

The official process runs a small driver that this script writes at run time (``official_driver.py`` in the work
directory); it imports the official ``detectron2`` package and calls its config, model builder and checkpointer the
way the official ``tools/train_net.py --eval-only`` does. No official code is part of this repository.

Setting up the official implementation (outside this repository): take a checkout of microsoft/RegionCLIP (the
figures in ``benchmarks/results/official_side_by_side_cpu.json`` name the commit) and install its ``detectron2`` fork
as its INSTALL instructions say, into a Python environment of its own with the same torch and torchvision as this
library uses, so that both sides run the same kernels. The json records every local change that was needed to
import it with today's numpy and Pillow; docs/zero-shot-detection.md ("Side by side with the official
implementation") describes them. Then, with ``PYTHONPATH=src``:

    python benchmarks/official_side_by_side.py --official-root /path/to/RegionCLIP \\
        --official-python /path/to/official-env/bin/python --threads 2 --pairs 3 \\
        --out benchmarks/results/official_side_by_side_cpu.json

``benchmarks/readme_table.py --official benchmarks/results/official_side_by_side_cpu.json`` then uses these figures
as the official column. A full run takes ~1 h on 2 cores (the official RPN mode is the slow part).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from regionclip import ModelConfig, RegionCLIP, Vocabulary
from regionclip.checkpoints.detectron2_rpn import save_detectron2_rpn
from regionclip.checkpoints.embeddings import save_embedding_file
from regionclip.checkpoints.io import save_detectron2_checkpoint
from regionclip.checkpoints.pretraining import pretraining_state_dict
from regionclip.modeling.meta_arch import ProposalNetwork
from regionclip.modeling.proposal_generator import RPNConfig
from regionclip.modeling.roi_heads import DetectionConfig
from regionclip.text.templates import ENSEMBLE_TEMPLATES
from regionclip.utils import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zeroshot_inference import agreement, random_boxes  # noqa: E402  (the sibling benchmark's helpers)

OFFICIAL_CONFIG = "configs/LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_zsinf.yaml"
OFFICIAL_RPN_CONFIG = "configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
# The options the official test_zeroshot_inference.sh adds to the config for LVIS, per mode (weights paths aside).
OFFICIAL_MODE_OPTIONS = {
    "rpn": ["MODEL.CLIP.CROP_REGION_TYPE", "RPN", "MODEL.CLIP.MULTIPLY_RPN_SCORE", "True"],
    "gt": ["MODEL.CLIP.CROP_REGION_TYPE", "GT", "MODEL.CLIP.MULTIPLY_RPN_SCORE", "False",
           "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0001"],
}
# Our settings for the same runs: the official LVIS zero-shot config (threshold 0.02, 300 detections); GT mode
# with the official GT command's threshold.
OUR_MODE_OVERRIDES = {"rpn": {}, "gt": {"score_threshold": 0.0001}}
OUR_VARIANTS = {"exact": ("exact", None), "bf16": ("exact", "bf16"), "fast": ("fast", None)}
IMAGE_SIZES = ((800, 1333), (800, 1066))
VOCABULARY_SIZE = 1203

OFFICIAL_DRIVER = r'''
"""Written by regionclip's benchmarks/official_side_by_side.py: times or checks the official implementation.

argv[1]: json spec {"official_root", "mode" (rpn | gt | text), "task" (time | check), "threads", "weights",
"rpn_weights", "class_embeddings", "images" [.npy HWC RGB uint8], "boxes" [per image, xyxy], "names", "out"}."""
import json
import os
import sys
import time

import numpy as np
import torch

spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

root = spec["official_root"]
mode = spec["mode"]
cfg = get_cfg()
cfg.merge_from_file(os.path.join(root, spec["config"]))
cfg.merge_from_list(spec["options"] + [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", spec["weights"],
    "MODEL.CLIP.TEXT_EMB_PATH", spec["class_embeddings"],
    "MODEL.CLIP.OFFLINE_RPN_CONFIG", os.path.join(root, spec["rpn_config"]),
    "MODEL.CLIP.BB_RPN_WEIGHTS", spec["rpn_weights"],
] + (["MODEL.CLIP.GET_CONCEPT_EMB", "True"] if mode == "text" else []))
cfg.freeze()
start = time.perf_counter()
model = build_model(cfg)
DetectionCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
if cfg.MODEL.CLIP.CROP_REGION_TYPE == "RPN":  # the second checkpoint of tools/train_net.py --eval-only
    DetectionCheckpointer(model, bb_rpn_weights=True).resume_or_load(cfg.MODEL.CLIP.BB_RPN_WEIGHTS, resume=False)
model.eval()
load_s = time.perf_counter() - start
report = {"load_s": load_s, "torch": torch.__version__, "threads": torch.get_num_threads()}


def inputs(index):
    image = np.load(spec["images"][index])
    item = {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": image.shape[0], "width": image.shape[1]}
    if mode == "gt":
        instances = Instances(image.shape[:2])
        instances.gt_boxes = Boxes(torch.tensor(spec["boxes"][index], dtype=torch.float32))
        item["instances"] = instances
    return item


if mode == "text":
    from detectron2.data.datasets.clip_prompt_utils import pre_tokenize

    def embed(name):  # the loop of the official tools/extract_concept_features.py
        with torch.no_grad():
            tokens = pre_tokenize([name]).to(model.device)[0]
            return model.lang_encoder.encode_text(tokens).mean(0, keepdim=True)

    embed(spec["names"][0])
    start = time.perf_counter()
    embeddings = torch.cat([embed(name) for name in spec["names"]])
    report["seconds"] = time.perf_counter() - start
    if spec["task"] == "check":
        torch.save({"embeddings": embeddings}, spec["out"])
elif spec["task"] == "time":
    items = [inputs(i) for i in range(len(spec["images"]))]
    with torch.no_grad():
        model([items[0]])
        seconds = []
        for item in items:
            start = time.perf_counter()
            model([item])
            seconds.append(time.perf_counter() - start)
    report["seconds_per_image"] = seconds
else:  # check: proposals, region features and final detections of one forward, captured by forward hooks
    captured = {}
    model.backbone.attnpool.register_forward_hook(lambda module, args, output: captured.update(features=output))
    if mode == "rpn":
        model.offline_proposal_generator.register_forward_hook(
            lambda module, args, output: captured.update(proposals=output[0][0]))
    saved = {}
    with torch.no_grad():
        for index in range(len(spec["images"])):
            outputs = model([inputs(index)])[0]["instances"]
            saved[f"{index}.boxes"] = outputs.pred_boxes.tensor
            saved[f"{index}.scores"] = outputs.scores
            saved[f"{index}.classes"] = outputs.pred_classes
            saved[f"{index}.region_features"] = captured["features"]
            if mode == "rpn":
                saved[f"{index}.proposals"] = captured["proposals"].proposal_boxes.tensor
                saved[f"{index}.objectness"] = captured["proposals"].objectness_logits
    torch.save({key: value.clone() for key, value in saved.items()}, spec["out"])  # clones: not whole storages
print(json.dumps(report))
'''


def randomise_batchnorms(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial frozen-BatchNorm statistics, so that folding and the weight mapping both matter."""
    for module in model.modules():
        if getattr(module, "running_var", None) is not None:
            n = module.weight.shape[0]
            module.weight.data.copy_(0.5 + 0.5 * torch.rand(n, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_mean.data.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.data.copy_(0.5 + torch.rand(n, generator=generator))


def prepare_inputs(work: Path, gt_boxes: int) -> dict[str, object]:
    """Generated weights in the official layouts, images, GT boxes and class embeddings, written under ``work``
    (made once; the seeds fix them). Returns their paths and the boxes."""
    work.mkdir(parents=True, exist_ok=True)
    files = {"weights": work / "regionclip_generated_rn50.pth", "rpn_weights": work / "rpn_generated_lvis_fpn.pth",
             "class_embeddings": work / "lvis_1203_generated_emb.pth",
             "images": [work / f"noise_{h}x{w}.npy" for h, w in IMAGE_SIZES], "boxes": work / "gt_boxes.json"}
    if not all(Path(p).is_file() for p in [files["weights"], files["rpn_weights"], files["class_embeddings"],
                                           *files["images"], files["boxes"]]):
        torch.manual_seed(0)
        model = RegionCLIP.from_config(ModelConfig.preset("rn50"))
        randomise_batchnorms(model, torch.Generator().manual_seed(1))
        torch.manual_seed(2)
        rpn = ProposalNetwork(RPNConfig.lvis_fpn())
        randomise_batchnorms(rpn, torch.Generator().manual_seed(3))
        clip = model.openai_state_dict()
        visual = {k: v for k, v in clip.items() if k.startswith("visual.")}
        text = {k: v for k, v in clip.items() if not k.startswith("visual.")}
        save_detectron2_checkpoint(files["weights"], pretraining_state_dict(visual, visual, text, rpn.state_dict()))
        save_detectron2_rpn(rpn, files["rpn_weights"])
        generator = torch.Generator().manual_seed(4)
        save_embedding_file(files["class_embeddings"], torch.randn(VOCABULARY_SIZE, model.config.embed_dim,
                                                                   generator=generator))
        boxes = []
        for (h, w), path in zip(IMAGE_SIZES, files["images"]):
            np.save(path, torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy())
            boxes.append(random_boxes(gt_boxes, h, w, generator).tolist())
        atomic_write_text(files["boxes"], json.dumps(boxes))
    files["boxes"] = json.loads(Path(files["boxes"]).read_text())
    return files


def text_names(count: int) -> list[str]:
    """The first ``count`` LVIS names as both sides put them into the templates (cleaned: the official loop takes
    names as given, its LVIS files hold them cleaned)."""
    return list(Vocabulary.preset("lvis").prompt_names[:count])


# ---- our side, run in a process of its own (--worker) -------------------------------------------------------
def our_worker(spec: dict) -> dict[str, object]:
    """Load, warm up and time our side for one mode; with ``task == "check"`` save its outputs instead."""
    torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    model = RegionCLIP.from_pretrained(spec["weights"], device="cpu")
    load_s = time.perf_counter() - start
    report: dict[str, object] = {"load_s": load_s, "torch": torch.__version__, "threads": torch.get_num_threads()}
    mode = spec["mode"]
    if mode == "text":
        names = spec["names"]
        seconds = {}
        for precision in ("fp32", "bf16"):
            model.precision = precision
            model.text_embedder.embed_names(names[:1], use_cache=False)
            start = time.perf_counter()
            embeddings = model.text_embedder.embed_names(names, use_cache=False)
            seconds[precision] = time.perf_counter() - start
            if spec["task"] == "check" and precision == "fp32":
                torch.save({"embeddings": embeddings}, spec["out"])
        report["seconds"] = seconds
        return report
    images = [np.load(path) for path in spec["images"]]
    embeddings = torch.load(spec["class_embeddings"], weights_only=True)
    vocabulary = Vocabulary.parse([f"class {i}" for i in range(len(embeddings))])
    boxes = spec["boxes"] if mode == "gt" else None
    if spec["task"] == "check":
        config = DetectionConfig.preset("exact", lvis=True, **OUR_MODE_OVERRIDES[mode])
        outputs = model.detect(images, vocabulary, boxes=boxes, config=config, class_embeddings=embeddings)
        saved = {}
        for index, prediction in enumerate(outputs):
            saved[f"{index}.boxes"] = torch.as_tensor(prediction.boxes)
            saved[f"{index}.scores"] = torch.as_tensor(prediction.scores).reshape(-1)
            saved[f"{index}.classes"] = torch.as_tensor(prediction.labels).reshape(-1)
        if mode == "rpn":
            with torch.inference_mode():
                proposals = model.propose(model.prepare(images), config.rpn_nms_threshold, config.num_proposals)
            for index, found in enumerate(proposals):
                saved[f"{index}.proposals"] = found.boxes
                saved[f"{index}.objectness"] = found.objectness_logits
            # region features of the official proposals, so that both sides embed the very same boxes
            official = torch.load(spec["official_outputs"], weights_only=True)
            region_boxes = [official[f"{index}.proposals"] for index in range(len(images))]
        else:
            region_boxes = [torch.tensor(b) for b in boxes]
        for index, features in enumerate(model.embed_regions(images, region_boxes, normalize=False)):
            saved[f"{index}.region_features"] = features
        torch.save(saved, spec["out"])
        return report
    seconds = {}
    for variant in spec["variants"]:
        preset, precision = OUR_VARIANTS[variant]
        config = DetectionConfig.preset(preset, lvis=True, **OUR_MODE_OVERRIDES[mode],
                                        **({"precision": precision} if precision else {}))

        def run(batch):
            return model.detect(batch, vocabulary, boxes=boxes and boxes[: len(batch)], config=config,
                                class_embeddings=embeddings, batch_size=len(images))

        run(images[:1])
        start = time.perf_counter()
        run(images)
        seconds[variant] = (time.perf_counter() - start) / len(images)
    report["s_per_image"] = seconds
    return report


# ---- orchestration -------------------------------------------------------------------------------------------
def run_process(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run one timing/check process; its last stdout line is its JSON report. Adds the load average around it."""
    before = os.getloadavg()
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} ... failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["load_average_before"], report["load_average_after"] = before, os.getloadavg()
    return report


class Sides:
    """Builds the command of each side's process for a mode and task."""

    def __init__(self, args: argparse.Namespace, files: dict[str, object]) -> None:
        self.args, self.files = args, files
        self.driver = args.work_dir / "official_driver.py"
        atomic_write_text(self.driver, OFFICIAL_DRIVER.lstrip())
        self.official_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.official_env["PYTHONPATH"] = str(args.official_root)
        self.official_env["OMP_NUM_THREADS"] = str(args.threads)

    def spec(self, mode: str, task: str, out: Path | None = None) -> dict[str, object]:
        return {"mode": mode, "task": task, "threads": self.args.threads, "weights": str(self.files["weights"]),
                "rpn_weights": str(self.files["rpn_weights"]), "class_embeddings": str(self.files["class_embeddings"]),
                "images": [str(p) for p in self.files["images"]], "boxes": self.files["boxes"],
                "names": text_names(self.args.text_names), "out": str(out) if out else None}

    def official(self, mode: str, task: str = "time", out: Path | None = None) -> dict[str, object]:
        spec = self.spec(mode, task, out) | {
            "official_root": str(self.args.official_root), "config": OFFICIAL_CONFIG, "rpn_config": OFFICIAL_RPN_CONFIG,
            "options": OFFICIAL_MODE_OPTIONS["gt" if mode == "gt" else "rpn"],
        }
        return run_process([str(self.args.official_python), str(self.driver), json.dumps(spec)],
                           cwd=self.args.official_root, env=self.official_env)

    def ours(self, mode: str, task: str = "time", out: Path | None = None,
             official_outputs: Path | None = None) -> dict[str, object]:
        spec = self.spec(mode, task, out) | {"variants": self.args.variants,
                                             "official_outputs": str(official_outputs) if official_outputs else None}
        env = dict(os.environ, OMP_NUM_THREADS=str(self.args.threads))
        return run_process([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)], env=env)


@dataclass
class Detections:
    """One image's final detections from either side, as `zeroshot_inference.agreement` reads them."""

    boxes: torch.Tensor
    labels: torch.Tensor  # [N, 1]
    scores: torch.Tensor

    def __len__(self) -> int:
        return len(self.boxes)


def as_detections(outputs: dict[str, torch.Tensor], index: int) -> Detections:
    return Detections(outputs[f"{index}.boxes"], outputs[f"{index}.classes"].reshape(-1, 1), outputs[f"{index}.scores"])


def compare(official: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], mode: str, images: int) -> dict:
    """How closely our fp32 outputs follow the official ones on the same inputs."""
    result: dict[str, object] = {}
    features = [(official[f"{i}.region_features"], ours[f"{i}.region_features"]) for i in range(images)]
    result["region_features"] = {
        "regions": sum(len(a) for a, _ in features),
        "max_abs_difference": max(float((a - b).abs().max()) for a, b in features),
        "max_abs_value": max(float(a.abs().max()) for a, _ in features),
        "min_cosine": min(float(F.cosine_similarity(a, b).min()) for a, b in features),
    }
    if mode == "rpn":
        pairs = [(official[f"{i}.proposals"], ours[f"{i}.proposals"]) for i in range(images)]
        logits = [(official[f"{i}.objectness"], ours[f"{i}.objectness"]) for i in range(images)]
        same_count = all(len(a) == len(b) for a, b in pairs)
        result["proposals"] = {
            "per_image_official_ours": [[len(a), len(b)] for a, b in pairs],
            "same_order_max_abs_box_difference": max(float((a - b).abs().max()) for a, b in pairs) if same_count else None,
            "same_order_max_abs_objectness_difference": (
                max(float((a - b).abs().max()) for a, b in logits) if same_count else None),
            "official_found_by_ours_iou_0.99": sum(
                int((box_iou(a, b).max(dim=1).values >= 0.99).sum()) for a, b in pairs) / sum(len(a) for a, _ in pairs),
        }
    reference = [as_detections(official, i) for i in range(images)]
    other = [as_detections(ours, i) for i in range(images)]
    result["detections"] = {
        "per_image_official_ours": [[len(a.boxes), len(b.boxes)] for a, b in zip(reference, other)],
        "official_found_by_ours_same_class_iou_0.99": agreement(reference, other, 0.99),
        "ours_found_by_official_same_class_iou_0.99": agreement(other, reference, 0.99),
    }
    same_shape = all(len(a.boxes) == len(b.boxes) for a, b in zip(reference, other))
    if same_shape:
        result["detections"]["same_order_max_abs_score_difference"] = max(
            float((a.scores - b.scores).abs().max()) for a, b in zip(reference, other) if len(a.boxes))
        result["detections"]["same_order_same_class_fraction"] = sum(
            int((a.labels == b.labels).sum()) for a, b in zip(reference, other)) / max(sum(len(a.boxes) for a in reference), 1)
    return result


def check(sides: Sides, work: Path, images: int) -> dict[str, object]:
    result = {}
    for mode in ("rpn", "gt"):
        official_out, ours_out = work / f"check_official_{mode}.pt", work / f"check_ours_{mode}.pt"
        sides.official(mode, "check", official_out)
        sides.ours(mode, "check", ours_out, official_outputs=official_out)
        result[mode] = compare(torch.load(official_out, weights_only=True), torch.load(ours_out, weights_only=True),
                               mode, images)
        print(mode, json.dumps(result[mode]), flush=True)
    official_out, ours_out = work / "check_official_text.pt", work / "check_ours_text.pt"
    sides.official("text", "check", official_out)
    sides.ours("text", "check", ours_out)
    a = torch.load(official_out, weights_only=True)["embeddings"]
    b = torch.load(ours_out, weights_only=True)["embeddings"]
    result["text"] = {"names": len(a), "max_abs_difference": float((a - b).abs().max()),
                      "max_abs_value": float(a.abs().max())}
    print("text", json.dumps(result["text"]), flush=True)
    return result


def spread(values: list[float]) -> dict[str, object]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def summarise(runs: list[dict], variants: list[str], prompts: int) -> dict[str, object]:
    """Per mode: official and our seconds, and official / ours per round (each round's processes ran back to back)."""
    summary: dict[str, object] = {}
    for mode in ("rpn", "gt", "text"):
        rounds = [run for run in runs if run["mode"] == mode]
        if not rounds:
            continue
        if mode == "text":
            official = [r["official"]["seconds"] / prompts * 1000 for r in rounds]
            ours = {p: [r["ours"]["seconds"][p] / prompts * 1000 for r in rounds] for p in ("fp32", "bf16")}
            unit = "s_per_1000_prompts"
        else:
            official = [statistics.mean(r["official"]["seconds_per_image"]) for r in rounds]
            ours = {v: [r["ours"]["s_per_image"][v] for r in rounds] for v in variants}
            unit = "s_per_image"
        summary[mode] = {
            "unit": unit, "official": spread(official), "ours": {name: spread(v) for name, v in ours.items()},
            "official_over_ours": {name: spread([o / u for o, u in zip(official, v)]) for name, v in ours.items()},
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run our side for one json spec
    parser.add_argument("--official-root", type=Path, help="checkout of microsoft/RegionCLIP with its detectron2 built")
    parser.add_argument("--official-python", type=Path, help="python of the environment the official code runs in")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every process")
    parser.add_argument("--pairs", type=int, default=3, help="rounds of (official, ours) per mode")
    parser.add_argument("--modes", nargs="+", default=["rpn", "gt", "text"], choices=["rpn", "gt", "text"])
    parser.add_argument("--variants", nargs="+", default=list(OUR_VARIANTS), choices=list(OUR_VARIANTS))
    parser.add_argument("--gt-boxes", type=int, default=5)
    parser.add_argument("--text-names", type=int, default=10, help="LVIS names embedded with the 81 templates")
    parser.add_argument("--skip-check", action="store_true", help="skip the check that both compute the same")
    parser.add_argument("--work-dir", type=Path, default=Path("bench_output/official_side_by_side"))
    parser.add_argument("--out", type=Path, default=Path("bench_output/official_side_by_side_cpu.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(our_worker(json.loads(args.worker))))
        return
    if args.official_root is None or args.official_python is None:
        parser.error("--official-root and --official-python are required")
    args.official_root, args.official_python = args.official_root.resolve(), args.official_python.absolute()
    if not (args.official_root / OFFICIAL_CONFIG).is_file():
        parser.error(f"{args.official_root} is not a RegionCLIP checkout: {OFFICIAL_CONFIG} is missing")
    if not args.official_python.is_file():
        parser.error(f"--official-python {args.official_python} does not exist")
    args.work_dir = args.work_dir.resolve()
    load_before = os.getloadavg()
    files = prepare_inputs(args.work_dir, args.gt_boxes)
    sides = Sides(args, files)
    official_torch = subprocess.run([str(args.official_python), "-c", "import torch; print(torch.__version__)"],
                                    capture_output=True, text=True, env=sides.official_env).stdout.strip()
    official_commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                     cwd=args.official_root).stdout.strip() or None
    official_changes = subprocess.run(["git", "diff", "--stat", "HEAD"], capture_output=True, text=True,
                                      cwd=args.official_root).stdout.strip() or None
    prompts = args.text_names * len(ENSEMBLE_TEMPLATES)
    report: dict[str, object] = {
        "setup": {
            "official_root": str(args.official_root), "official_git_head": official_commit,
            "official_uncommitted_changes": official_changes, "official_torch": official_torch,
            "official_config": OFFICIAL_CONFIG, "official_rpn_config": OFFICIAL_RPN_CONFIG,
            "official_mode_options": OFFICIAL_MODE_OPTIONS, "ours_torch": torch.__version__,
            "ours_detection_config": {"preset": "DetectionConfig.preset(variant, lvis=True)",
                                      "mode_overrides": OUR_MODE_OVERRIDES, "variants": OUR_VARIANTS},
            "model": "rn50 shape, generated weights (random frozen-BatchNorm statistics), official checkpoint layout",
            "rpn": "lvis_fpn, generated weights", "images": IMAGE_SIZES, "gt_boxes_per_image": args.gt_boxes,
            "vocabulary": VOCABULARY_SIZE, "proposals": 1000, "text_names": args.text_names, "text_prompts": prompts,
            "threads": args.threads, "pairs": args.pairs, "cpu": platform.processor() or platform.machine(),
            "timing": "each process loads, warms up on the first image and times all images once; official one "
                      "forward per image (torch.no_grad), ours one detect call on all images",
        },
        "load_average_1_5_15_min": {"before": load_before, "after": None},
    }
    if not args.skip_check:
        report["check_official_vs_ours_fp32"] = check(sides, args.work_dir, len(IMAGE_SIZES))
    runs = []
    for pair in range(args.pairs):
        for mode in args.modes:
            official = sides.official(mode)
            ours = sides.ours(mode)
            runs.append({"pair": pair, "mode": mode, "official": official, "ours": ours})
            print(json.dumps(runs[-1]), flush=True)
            report["runs"] = runs
            report["summary"] = summarise(runs, args.variants, prompts)
            atomic_write_text(args.out, json.dumps(report, indent=1))
    report["load_average_1_5_15_min"]["after"] = os.getloadavg()
    atomic_write_text(args.out, json.dumps(report, indent=1))
    print(json.dumps(report.get("summary"), indent=1))


if __name__ == "__main__":
    main()
