"""Command line: ``regionclip classify``, ``detect``, ``embed-vocab``, ``demo``, ``finetune``, ``evaluate`` ..."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RegionCLIP: zero-shot recognition of image regions.")


def _load_model(spec: str, device: Optional[str]):
    """``PATH`` or ``NAME`` with an optional ``@teacher`` / ``@student`` branch suffix."""
    from .api import RegionCLIP

    path, _, branch = spec.partition("@")
    return RegionCLIP.from_pretrained(path, branch=branch or "student", device=device)


OUTPUT_FORMATS = ("coco", "hf", "regions")


def check_output_format(output_format: str) -> None:
    if output_format not in OUTPUT_FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}")


def write_predictions(path: Path, predictions: list, output_format: str) -> None:
    """Predictions as a COCO results list, HF pipeline dicts (a list per image) or our per-image records."""
    from .utils import atomic_write_text

    if output_format == "coco":
        payload = [entry for pred in predictions for entry in pred.to_coco()]
    elif output_format == "hf":
        payload = [pred.to_hf() for pred in predictions]
    else:
        payload = [pred.to_json() for pred in predictions]
    atomic_write_text(path, json.dumps(payload, indent=1))
    typer.echo(f"wrote {path}")


def read_boxes_file(path: Path, images: list[Path]) -> tuple[list[list[list[float]]], Optional[list[int]]]:
    """Boxes (xyxy, original pixels) per image, and image ids when the file is a COCO instances json.

    Accepted: a COCO instances json (images matched by file name, ``bbox`` xywh); a json object mapping an image
    path or file name to its boxes; a json list with one box list per image (or, for a single image, its boxes).
    """
    if not path.is_file():
        raise typer.BadParameter(f"boxes file not found: {path}")
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        by_name = {Path(im["file_name"]).name: im["id"] for im in data["images"]}
        ids = []
        for image in images:
            if image.name not in by_name:
                raise typer.BadParameter(f"{image.name} is not among the images of {path}")
            ids.append(by_name[image.name])
        boxes: dict[int, list[list[float]]] = {i: [] for i in ids}
        for ann in data["annotations"]:
            if ann["image_id"] in boxes:
                x, y, w, h = ann["bbox"]
                boxes[ann["image_id"]].append([x, y, x + w, y + h])
        return [boxes[i] for i in ids], ids
    if isinstance(data, dict):
        result = []
        for image in images:
            key = next((k for k in (str(image), image.name) if k in data), None)
            if key is None:
                raise typer.BadParameter(f"no boxes for {image} in {path}")
            result.append(data[key])
        return result, None
    if isinstance(data, list):
        if len(images) == 1 and data and isinstance(data[0], list) and data[0] and not isinstance(data[0][0], list):
            return [data], None
        if len(data) != len(images):
            raise typer.BadParameter(f"{path} has {len(data)} box lists for {len(images)} images")
        return data, None
    raise typer.BadParameter(f"unrecognised boxes file {path}")


@app.command()
def classify(
    images: list[Path] = typer.Argument(..., help="Image files."),
    boxes: Path = typer.Option(..., "--boxes", help="Boxes json: COCO instances, {image: boxes} or [boxes per image]."),
    vocab: str = typer.Option("lvis", "--vocab", help="Preset (lvis, coco, coco65, ...), a file, or 'a,b,c'."),
    weights: list[str] = typer.Option(
        ..., "--weights", help="Weights file/dir or OpenAI name; add @teacher for a RegionCLIP teacher. Repeat to compare."
    ),
    top_k: int = typer.Option(3, "--top-k"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write predictions json here."),
    output_format: str = typer.Option("regions", "--format", help="regions | coco | hf"),
    draw: Optional[Path] = typer.Option(None, "--draw", help="PNG (one image) or directory (several)."),
    templates: str = typer.Option("ensemble", "--templates", help="ensemble (81 prompts) or single."),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Top-k labels of the given boxes over any vocabulary (zero-shot)."""
    from .text.vocabulary import Vocabulary
    from .viz import draw_predictions, side_by_side

    check_output_format(output_format)
    box_lists, image_ids = read_boxes_file(boxes, images)
    vocabulary = Vocabulary.parse(vocab)
    runs = []
    for spec in weights:
        model = _load_model(spec, device)
        runs.append(
            model.classify_regions(
                [str(p) for p in images], box_lists, vocabulary, top_k=top_k, templates=templates,
                image_ids=image_ids or list(range(1, len(images) + 1)), progress=len(images) > 1,
            )
        )
    first = runs[0]
    if out is not None:
        write_predictions(out, first, output_format)
    if draw is not None:
        several = len(images) > 1
        if several:
            draw.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            panels = [
                draw_predictions(str(image), run[index], title=spec if len(weights) > 1 else None)
                for spec, run in zip(weights, runs)
            ]
            target = draw / f"{image.stem}.png" if several else draw
            side_by_side(panels).save(target)
        typer.echo(f"drew {draw}")
    if out is None and draw is None:
        for pred in first:
            typer.echo(json.dumps(pred.to_json()))


def _detection_config(vocab_is_lvis: bool, **options):
    from .detection import DetectionConfig

    chosen = {k: v for k, v in options.items() if v is not None}
    return DetectionConfig.lvis(**chosen) if vocab_is_lvis else DetectionConfig(**chosen)


@app.command()
def detect(
    images: list[Path] = typer.Argument(..., help="Image files."),
    vocab: str = typer.Option("lvis", "--vocab", help="Preset (lvis, coco, coco65, ...), a file, or 'a,b,c'."),
    weights: str = typer.Option(..., "--weights", help="Weights file/dir (with an RPN inside, or give --rpn)."),
    rpn: Optional[Path] = typer.Option(None, "--rpn", help="detectron2 RPN .pth (e.g. rpn_lvis_866.pth)."),
    score_fusion: str = typer.Option("official", "--score-fusion", help="official (sqrt(p*logit)) | sigmoid | none"),
    soft_nms: bool = typer.Option(False, "--soft-nms", help="Gaussian soft-NMS (sigma 0.5) instead of NMS."),
    score_threshold: Optional[float] = typer.Option(None, "--score-threshold"),
    max_detections: Optional[int] = typer.Option(None, "--max-detections", help="Default 100 (300 for LVIS)."),
    num_proposals: int = typer.Option(1000, "--num-proposals"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write predictions json here."),
    output_format: str = typer.Option("coco", "--format", help="coco | hf | regions"),
    draw: Optional[Path] = typer.Option(None, "--draw", help="Directory for annotated images."),
    draw_threshold: float = typer.Option(0.3, "--draw-threshold", help="Only draw detections scoring above this."),
    templates: str = typer.Option("ensemble", "--templates"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Zero-shot detection: RPN proposals classified over any vocabulary."""
    from .text.vocabulary import Vocabulary
    from .viz import draw_predictions

    check_output_format(output_format)
    vocabulary = Vocabulary.parse(vocab)
    config = _detection_config(
        vocabulary.frequency is not None, score_fusion=score_fusion, soft_nms=soft_nms,
        score_threshold=score_threshold, max_detections=max_detections, num_proposals=num_proposals,
    )
    model = _load_model(weights, device)
    if rpn is not None:
        model.attach_rpn(rpn)
    predictions = model.detect(
        [str(p) for p in images], vocabulary, config=config, templates=templates,
        image_ids=list(range(1, len(images) + 1)), progress=len(images) > 1,
    )
    if out is not None:
        write_predictions(out, predictions, output_format)
    if draw is not None:
        draw.mkdir(parents=True, exist_ok=True)
        for image, pred in zip(images, predictions):
            shown = pred.subset(pred.scores[:, 0] > draw_threshold)
            draw_predictions(str(image), shown).save(draw / f"{image.stem}.png")
        typer.echo(f"drew {len(images)} images into {draw}")
    for image, pred in zip(images, predictions):
        typer.echo(f"{image}: {len(pred)} detections; best: " + ", ".join(
            f"{names[0]} {scores[0]:.2f}" for names, scores in zip(pred.class_names[:5], pred.scores[:5].tolist())
        ))


@app.command("extract-features")
def extract_features(
    image_dir: Path = typer.Argument(..., help="Folder of images."),
    out: Path = typer.Option(..., "--out", help="Output folder (one .safetensors per image)."),
    weights: str = typer.Option(..., "--weights"),
    rpn: Optional[Path] = typer.Option(None, "--rpn", help="detectron2 RPN .pth when the weights carry none."),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="Also store class probabilities over this vocabulary."),
    num_proposals: int = typer.Option(100, "--num-proposals"),
    batch_size: int = typer.Option(4, "--batch-size"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Region boxes and un-normalised features (and optional probabilities) for every image; resumable."""
    from .features import extract_region_features

    model = _load_model(weights, device)
    if rpn is not None:
        model.attach_rpn(rpn)
    summary = extract_region_features(model, image_dir, out, vocab, num_proposals=num_proposals, batch_size=batch_size)
    typer.echo(f"wrote {summary.written} files into {out} ({summary.skipped} already present)")


@app.command("evaluate-zeroshot")
def evaluate_zeroshot_command(
    annotations: Path = typer.Option(..., "--annotations", help="COCO or LVIS instances json."),
    images: Path = typer.Option(..., "--images", help="Image folder."),
    boxes: str = typer.Option("gt", "--boxes", help="gt | rpn"),
    weights: str = typer.Option(..., "--weights"),
    rpn: Optional[Path] = typer.Option(None, "--rpn"),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="Default: the annotation file's categories."),
    score_fusion: str = typer.Option("official", "--score-fusion"),
    soft_nms: bool = typer.Option(False, "--soft-nms"),
    class_embeddings: Optional[Path] = typer.Option(None, "--class-embeddings", help="Official [K, D] .pth embeddings."),
    max_images: Optional[int] = typer.Option(None, "--max-images"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the COCO results json here."),
    metrics_out: Optional[Path] = typer.Option(None, "--metrics-out", help="Write the metrics json here."),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """COCO AP/AP50 (+ OV-COCO novel/base/all AP50) or LVIS AP/APr/APc/APf of zero-shot inference."""
    from .checkpoints import load_embedding_file
    from .evaluation import evaluate_zeroshot, format_metrics
    from .utils import atomic_write_text

    model = _load_model(weights, device)
    if rpn is not None:
        model.attach_rpn(rpn)
    metrics, results = evaluate_zeroshot(
        model, annotations, images, boxes=boxes, vocabulary=vocab, score_fusion=score_fusion, soft_nms=soft_nms,
        class_embeddings=load_embedding_file(class_embeddings) if class_embeddings else None, max_images=max_images,
    )
    typer.echo(format_metrics(metrics))
    if out is not None:
        atomic_write_text(out, json.dumps(results))
    if metrics_out is not None:
        atomic_write_text(metrics_out, json.dumps(metrics, indent=1))


@app.command("embed-vocab")
def embed_vocab(
    vocab: str = typer.Option(..., "--vocab", help="Preset, file or 'a,b,c'."),
    weights: str = typer.Option(..., "--weights", help="Weights with a text encoder (file/dir or OpenAI name)."),
    out: Path = typer.Option(..., "--out", help="Embedding file: .pth (official [N, D] format)."),
    templates: str = typer.Option("ensemble", "--templates", help="ensemble (81 prompts) or single."),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Write the un-normalised ``[N, D]`` class embeddings of a vocabulary (official ``.pth`` format)."""
    from .checkpoints.embeddings import save_embedding_file
    from .text.vocabulary import Vocabulary

    vocabulary = Vocabulary.parse(vocab)
    model = _load_model(weights, device)
    embeddings = model.embed_vocabulary(vocabulary, templates, progress=True)
    save_embedding_file(out, embeddings)
    typer.echo(f"wrote {out}: {tuple(embeddings.shape)}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_output"), "--out", help="Report folder."),
    preset: str = typer.Option(
        "default", "--preset", help="default (~6-8 min on 2 cores), full (longer, both teacher sizes), tiny, or a YAML file."
    ),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help="Cache of worlds and trained models (default $REGIONCLIP_CACHE or ~/.cache/regionclip)."
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: the idle cores)."),
) -> None:
    """The main job on the embedded world: generate it, train the CLIP teacher and the RPN, evaluate, report.

    No downloads; everything is cached, so a second run only evaluates."""
    from .demo import DemoPreset, run_demo

    try:
        config = DemoPreset.load(preset)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--preset") from None
    report = run_demo(out, preset=config, cache_dir=cache_dir, threads=threads)
    typer.echo(f"report: {report}")



@app.command()
def finetune(
    config: Path = typer.Option(..., "--config", help="Fine-tuning YAML (see configs/transfer/)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Fine-tune an open-vocabulary detector on COCO-format data (resumes an interrupted run).

    Several GPUs/processes: torchrun --nproc-per-node N -m regionclip.finetune --config CONFIG."""
    from .finetune import FinetuneConfig
    from .finetune import finetune as run_finetune

    try:
        settings = FinetuneConfig.from_yaml(config)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise typer.BadParameter(str(error), param_hint="--config") from None
    run = run_finetune(settings, progress=progress)
    last = run.losses[-1] if run.losses else {}
    typer.echo(f"{run.step} steps in {run.seconds:.0f} s; last losses {last}; detector in {settings.output_dir}")


def _vocabulary_or_embeddings(spec: Optional[str]):
    """(vocabulary, embeddings file): a ``.pth`` is an official embedding file, anything else a vocabulary."""
    from .text.vocabulary import Vocabulary

    if spec is None:
        return None, None
    if spec.endswith(".pth"):
        if not Path(spec).is_file():
            raise typer.BadParameter(f"embedding file not found: {spec}")
        return None, Path(spec)
    return Vocabulary.parse(spec), None


@app.command()
def evaluate(
    weights: str = typer.Option(..., "--weights", help="Detector weights (official fine-tuned .pth or ours)."),
    annotations: Path = typer.Option(..., "--annotations", help="COCO (OV-COCO) or LVIS instances json."),
    images: Path = typer.Option(..., "--images", help="Image folder."),
    vocab_train: Optional[str] = typer.Option(
        None, "--vocab-train", help="Base categories (vocabulary: their ids are the base split) or their embeddings .pth."
    ),
    vocab_test: Optional[str] = typer.Option(
        None, "--vocab-test", help="Test vocabulary, or embeddings .pth for the annotation file's categories (default)."
    ),
    rpn: Optional[Path] = typer.Option(None, "--rpn", help="detectron2 RPN .pth when the weights carry none."),
    model: Optional[str] = typer.Option(None, "--model", help="Model preset for weight files without a config."),
    soft_nms: bool = typer.Option(True, "--soft-nms/--nms", help="Gaussian soft-NMS (official) or hard NMS."),
    score_fusion: Optional[str] = typer.Option(None, "--score-fusion", help="Default none (COCO) / official (LVIS)."),
    max_images: Optional[int] = typer.Option(None, "--max-images"),
    batch_size: int = typer.Option(4, "--batch-size"),
    out: Path = typer.Option(Path("coco_instances_results.json"), "--out", help="COCO results json."),
    metrics_out: Optional[Path] = typer.Option(None, "--metrics-out", help="Write the metrics json here."),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Open-vocabulary detection AP: OV-COCO AP50 novel/base/all, or LVIS AP/APr/APc/APf (300 detections)."""
    from .config import ModelConfig
    from .evaluation import evaluate_zeroshot, format_metrics
    from .evaluation._common import load_ground_truth
    from .evaluation.zeroshot import is_lvis_style
    from .modeling.meta_arch import OpenVocabularyDetector, transfer_detection_config
    from .utils import atomic_write_text

    if not annotations.is_file():
        raise typer.BadParameter(f"annotation file not found: {annotations}", param_hint="--annotations")
    gt = load_ground_truth(annotations)
    lvis = is_lvis_style(gt)
    base_vocabulary, train_file = _vocabulary_or_embeddings(vocab_train)
    test_vocabulary, test_file = _vocabulary_or_embeddings(vocab_test)
    detector = OpenVocabularyDetector.from_pretrained(
        weights, train_embeddings=train_file, test_embeddings=test_file, rpn=rpn,
        config=ModelConfig.preset(model) if model else None, device=device,
    )
    typer.echo(detector.load_report.summary())
    if base_vocabulary is not None and not lvis:
        base = set(base_vocabulary.category_ids)
        gt["categories"] = [{**c, "split": "base" if c["id"] in base else "novel"} for c in gt["categories"]]
    options = {"soft_nms": soft_nms, **({"score_fusion": score_fusion} if score_fusion else {})}
    metrics, results = evaluate_zeroshot(
        detector, gt, images, boxes="rpn", vocabulary=test_vocabulary,
        config=transfer_detection_config(lvis, **options), max_images=max_images, batch_size=batch_size,
    )
    typer.echo(format_metrics(metrics))
    atomic_write_text(out, json.dumps(results))
    typer.echo(f"wrote {out}")
    if metrics_out is not None:
        atomic_write_text(metrics_out, json.dumps(metrics, indent=1))


if __name__ == "__main__":
    app()
