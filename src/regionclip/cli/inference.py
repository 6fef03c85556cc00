"""``regionclip classify | detect | extract-features | embed-vocab``: recognition and detection over images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from . import _command
from .common import (
    ON_ERROR_HELP,
    OnError,
    _check_templates,
    _drawing_targets,
    _load_model,
    _missing_images,
    _parse_vocabulary,
    PRECISION_HELP,
    Precision,
    check_output_format,
    precision_option,
    read_boxes_file,
    report_failures,
    run_per_image,
    write_predictions,
)


@_command()
def classify(
    images: list[Path] = typer.Argument(..., help="Image files."),
    boxes: Path = typer.Option(..., "--boxes", help="Boxes json: COCO instances, {image: boxes} or [boxes per image]."),
    vocab: str = typer.Option("lvis", "--vocab", help="Preset (lvis, coco, coco65, ...), a file, or 'a,b,c'."),
    weights: list[str] = typer.Option(
        ..., "--weights", help="Weights file/dir or OpenAI name; add @teacher for a RegionCLIP teacher. Repeat to compare."
    ),
    top_k: int = typer.Option(3, "--top-k", min=1),
    out: Optional[Path] = typer.Option(None, "--out", help="Write predictions json here."),
    output_format: str = typer.Option("regions", "--format", help="regions | coco | hf"),
    draw: Optional[Path] = typer.Option(None, "--draw", help="PNG (one image) or directory (several)."),
    templates: str = typer.Option("ensemble", "--templates", help="ensemble (81 prompts) or single."),
    on_error: OnError = typer.Option(OnError.skip, "--on-error", help=ON_ERROR_HELP),
    device: Optional[str] = typer.Option(None, "--device"),
    precision: Precision = precision_option(),
) -> None:
    """Top-k labels of the given boxes over any vocabulary (zero-shot)."""
    from ..viz import draw_predictions, side_by_side

    check_output_format(output_format)
    _check_templates(templates)
    box_lists, image_ids = read_boxes_file(boxes, images)
    vocabulary = _parse_vocabulary(vocab)
    several = len(images) > 1
    targets = _drawing_targets(images, draw) if draw is not None and several else None
    ids = image_ids or list(range(1, len(images) + 1))
    failed: dict[str, str] = {}
    remaining = _missing_images(images, on_error, failed)
    runs = []
    for spec in weights:
        if not remaining:
            break
        model = _load_model(spec, device, precision.value)
        class_embeddings = model.embed_vocabulary(vocabulary, templates)

        def run(indices: list[int], model=model, class_embeddings=class_embeddings) -> list:
            return model.classify_regions(
                [str(images[i]) for i in indices], [box_lists[i] for i in indices], vocabulary, top_k=top_k,
                class_embeddings=class_embeddings, batch_size=len(indices), image_ids=[ids[i] for i in indices],
            )

        runs.append(run_per_image(remaining, run, images, 8, on_error, failed))
        remaining = [i for i in remaining if i in runs[-1]]  # an image unreadable for one model is for all
    if remaining:
        first = [runs[0].get(i) if i in remaining else None for i in range(len(images))]
        if out is not None:
            write_predictions(out, first, output_format)
        if draw is not None:
            if several:
                draw.mkdir(parents=True, exist_ok=True)
            for index in remaining:
                panels = [
                    draw_predictions(str(images[index]), results[index], title=spec if len(weights) > 1 else None)
                    for spec, results in zip(weights, runs)
                ]
                side_by_side(panels).save(targets[index] if several else draw)
            typer.echo(f"drew {draw}")
        if out is None and draw is None:
            for pred in first:
                if pred is not None:
                    typer.echo(json.dumps(pred.to_json(), allow_nan=False))
    report_failures(failed, len(images))


def _detection_config(preset: str, vocab_is_lvis: bool, **options):
    from ..modeling.roi_heads import DetectionConfig

    chosen = {k: v for k, v in options.items() if v is not None}
    return DetectionConfig.preset(preset, lvis=vocab_is_lvis, **chosen)


@_command()
def detect(
    images: list[Path] = typer.Argument(..., help="Image files."),
    vocab: str = typer.Option("lvis", "--vocab", help="Preset (lvis, coco, coco65, ...), a file, or 'a,b,c'."),
    weights: str = typer.Option(..., "--weights", help="Weights file/dir (with an RPN inside, or give --rpn)."),
    rpn: Optional[Path] = typer.Option(
        None, "--rpn", exists=True, dir_okay=False, help="detectron2 RPN .pth (e.g. rpn_lvis_866.pth)."
    ),
    score_fusion: str = typer.Option("official", "--score-fusion", help="official (sqrt(p*logit)) | sigmoid | none"),
    soft_nms: bool = typer.Option(False, "--soft-nms", help="Gaussian soft-NMS (sigma 0.5) instead of NMS."),
    score_threshold: Optional[float] = typer.Option(None, "--score-threshold"),
    max_detections: Optional[int] = typer.Option(None, "--max-detections", min=1, help="Default 100 (300 for LVIS)."),
    num_proposals: Optional[int] = typer.Option(None, "--num-proposals", min=1, help="Default 1000 (300 with --preset fast)."),
    preset: str = typer.Option(
        "exact", "--preset",
        help="exact (official) | fast (300 proposals, RoIAlign sampling 2, bf16, region batches across images).",
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Write predictions json here."),
    output_format: str = typer.Option("coco", "--format", help="coco | hf | regions"),
    draw: Optional[Path] = typer.Option(None, "--draw", help="Directory for annotated images."),
    draw_threshold: float = typer.Option(0.3, "--draw-threshold", help="Only draw detections scoring above this."),
    templates: str = typer.Option("ensemble", "--templates"),
    on_error: OnError = typer.Option(OnError.skip, "--on-error", help=ON_ERROR_HELP),
    device: Optional[str] = typer.Option(None, "--device"),
    precision: Optional[Precision] = typer.Option(
        None, "--precision", help=PRECISION_HELP + " Default: the preset's (exact fp32, fast bf16)."
    ),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per model call."),
    num_workers: int = typer.Option(
        0, "--num-workers", min=0, help="Processes decoding and resizing the next images while the model runs."
    ),
) -> None:
    """Zero-shot detection: RPN proposals classified over any vocabulary."""
    from ..features import prepared_image_batches, readable_positions
    from ..utils import progress
    from ..viz import draw_predictions

    check_output_format(output_format)
    _check_templates(templates)
    vocabulary = _parse_vocabulary(vocab)
    try:
        config = _detection_config(
            preset, vocabulary.frequency is not None, score_fusion=score_fusion, soft_nms=soft_nms,
            score_threshold=score_threshold, max_detections=max_detections, num_proposals=num_proposals,
            precision=precision.value if precision is not None else None,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    targets = _drawing_targets(images, draw) if draw is not None else None
    failed: dict[str, str] = {}
    remaining = _missing_images(images, on_error, failed)
    predictions: dict[int, object] = {}
    if remaining:
        model = _load_model(weights, device)
        if rpn is not None:
            model.attach_rpn(rpn)
        if model.rpn is None:
            raise ValueError(f"{weights} carries no RPN: give one with --rpn (e.g. rpn_lvis_866.pth)")
        class_embeddings = model.embed_vocabulary(vocabulary, templates)
        size = model.config.input
        loader = prepared_image_batches([images[i] for i in remaining], size.min_size, size.max_size, batch_size, num_workers)
        batch_indices = (remaining[start : start + batch_size] for start in range(0, len(remaining), batch_size))
        for indices, batch in zip(batch_indices, progress(loader, disable=len(remaining) <= 1, desc="images", unit="batch")):
            ready = {indices[k]: batch[k][1] for k in readable_positions(batch, on_error.value, failed)}

            def run(chosen: list[int], ready=ready) -> list:
                found = model.detect(
                    [ready[i] for i in chosen], vocabulary, config=config, class_embeddings=class_embeddings,
                    batch_size=len(chosen), image_ids=[i + 1 for i in chosen],
                )
                for i, pred in zip(chosen, found):
                    pred.source = str(images[i])  # prepared images carry no file name
                return found

            if ready:
                predictions.update(run_per_image(list(ready), run, images, len(ready), on_error.value, failed, progress=False))
    if predictions:
        if out is not None:
            write_predictions(out, [predictions.get(i) for i in range(len(images))], output_format)
        if draw is not None:
            draw.mkdir(parents=True, exist_ok=True)
            for index, pred in predictions.items():
                shown = pred.subset(pred.scores[:, 0] > draw_threshold)
                draw_predictions(str(images[index]), shown).save(targets[index])
            typer.echo(f"drew {len(predictions)} images into {draw}")
        for index, pred in predictions.items():
            typer.echo(f"{images[index]}: {len(pred)} detections; best: " + ", ".join(
                f"{names[0]} {scores[0]:.2f}" for names, scores in zip(pred.class_names[:5], pred.scores[:5].tolist())
            ))
    report_failures(failed, len(images))


@_command("extract-features")
def extract_features(
    image_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images."),
    out: Path = typer.Option(..., "--out", help="Output folder: <image file name>.safetensors per image."),
    weights: str = typer.Option(..., "--weights"),
    rpn: Optional[Path] = typer.Option(
        None, "--rpn", exists=True, dir_okay=False, help="detectron2 RPN .pth when the weights carry none."
    ),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="Also store class probabilities over this vocabulary."),
    num_proposals: int = typer.Option(100, "--num-proposals", min=1),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    num_workers: int = typer.Option(
        0, "--num-workers", min=0, help="Processes decoding and resizing the next images while the model runs."
    ),
    templates: str = typer.Option("ensemble", "--templates", help="Prompts for --vocab: ensemble (81) or single."),
    on_error: OnError = typer.Option(OnError.skip, "--on-error", help=ON_ERROR_HELP),
    device: Optional[str] = typer.Option(None, "--device"),
    precision: Precision = precision_option(),
) -> None:
    """Region boxes and un-normalised features (and optional probabilities) for every image; resumable into a
    folder made with the same weights and settings."""
    from ..features import extract_region_features, list_images

    _check_templates(templates)
    vocabulary = _parse_vocabulary(vocab) if vocab is not None else None
    total = len(list_images(image_dir))
    model = _load_model(weights, device, precision.value)
    if rpn is not None:
        model.attach_rpn(rpn)
    summary = extract_region_features(
        model, image_dir, out, vocabulary, num_proposals=num_proposals, batch_size=batch_size, templates=templates,
        on_error=on_error.value, num_workers=num_workers,
    )
    typer.echo(f"wrote {summary.written} files into {out} ({summary.skipped} already present)")
    report_failures(summary.failed, total)


@_command("embed-vocab")
def embed_vocab(
    vocab: str = typer.Option(..., "--vocab", help="Preset, file or 'a,b,c'."),
    weights: str = typer.Option(..., "--weights", help="Weights with a text encoder (file/dir or OpenAI name)."),
    out: Path = typer.Option(..., "--out", help="Embedding file: .pth (official [N, D] format)."),
    templates: str = typer.Option("ensemble", "--templates", help="ensemble (81 prompts) or single."),
    device: Optional[str] = typer.Option(None, "--device"),
    precision: Precision = precision_option(),
) -> None:
    """Write the un-normalised ``[N, D]`` class embeddings of a vocabulary (official ``.pth`` format)."""
    from ..checkpoints.embeddings import save_embedding_file

    _check_templates(templates)
    vocabulary = _parse_vocabulary(vocab)
    model = _load_model(weights, device, precision.value)
    embeddings = model.embed_vocabulary(vocabulary, templates, progress=True)
    save_embedding_file(out, embeddings)
    typer.echo(f"wrote {out}: {tuple(embeddings.shape)}")
