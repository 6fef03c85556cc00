"""``regionclip evaluate-zeroshot | evaluate``: AP of zero-shot inference and of transferred detectors."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import _command
from .common import Precision, _load_model, _parse_vocabulary, precision_option


@_command("evaluate-zeroshot")
def evaluate_zeroshot_command(
    annotations: Path = typer.Option(..., "--annotations", exists=True, dir_okay=False, help="COCO or LVIS instances json."),
    images: Path = typer.Option(..., "--images", exists=True, file_okay=False, help="Image folder."),
    boxes: str = typer.Option("gt", "--boxes", help="gt | rpn"),
    weights: str = typer.Option(..., "--weights"),
    rpn: Optional[Path] = typer.Option(None, "--rpn", exists=True, dir_okay=False),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="Default: the annotation file's categories."),
    score_fusion: str = typer.Option("official", "--score-fusion"),
    soft_nms: bool = typer.Option(False, "--soft-nms"),
    class_embeddings: Optional[Path] = typer.Option(
        None, "--class-embeddings", exists=True, dir_okay=False, help="Official [K, D] .pth embeddings."
    ),
    max_images: Optional[int] = typer.Option(None, "--max-images", min=1),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the COCO results json here."),
    metrics_out: Optional[Path] = typer.Option(
        None, "--metrics-out", help="Write the metrics json here (undefined metrics, e.g. APl without large objects, are null)."
    ),
    device: Optional[str] = typer.Option(None, "--device"),
    precision: Precision = precision_option(),
) -> None:
    """COCO AP/AP50 (+ OV-COCO novel/base/all AP50) or LVIS AP/APr/APc/APf of zero-shot inference."""
    from ..checkpoints import load_embedding_file
    from ..modeling.roi_heads import DetectionConfig
    from ..evaluation import evaluate_zeroshot, format_metrics
    from ..utils import write_json

    if boxes not in ("gt", "rpn"):
        raise typer.BadParameter(f"must be gt or rpn, not {boxes!r}", param_hint="--boxes")
    if vocab is not None:
        _parse_vocabulary(vocab)
    try:
        DetectionConfig(score_fusion=score_fusion)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--score-fusion") from None
    embeddings = load_embedding_file(class_embeddings) if class_embeddings else None
    model = _load_model(weights, device, precision.value)
    if rpn is not None:
        model.attach_rpn(rpn)
    metrics, results = evaluate_zeroshot(
        model, annotations, images, boxes=boxes, vocabulary=vocab, score_fusion=score_fusion, soft_nms=soft_nms,
        class_embeddings=embeddings, max_images=max_images,
    )
    typer.echo(format_metrics(metrics))
    if out is not None:
        write_json(out, results)
    if metrics_out is not None:
        write_json(metrics_out, metrics, undefined_as_null=True, indent=1)


def _vocabulary_or_embeddings(spec: Optional[str]):
    """(vocabulary, embeddings file): a ``.pth`` is an official embedding file, anything else a vocabulary."""
    from ..text.vocabulary import Vocabulary

    if spec is None:
        return None, None
    if spec.endswith(".pth"):
        if not Path(spec).is_file():
            raise typer.BadParameter(f"embedding file not found: {spec}")
        return None, Path(spec)
    return Vocabulary.parse(spec), None


@_command()
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
    precision: Precision = precision_option(),
) -> None:
    """Open-vocabulary detection AP: OV-COCO AP50 novel/base/all, or LVIS AP/APr/APc/APf (300 detections)."""
    from ..config import ModelConfig
    from ..evaluation import evaluate_zeroshot, format_metrics
    from ..evaluation._common import load_ground_truth
    from ..evaluation.zeroshot import is_lvis_style
    from ..modeling.meta_arch.fast_rcnn import OpenVocabularyDetector, transfer_detection_config
    from ..utils import write_json

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
    detector.precision = precision.value
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
    write_json(out, results)
    typer.echo(f"wrote {out}")
    if metrics_out is not None:
        write_json(metrics_out, metrics, undefined_as_null=True, indent=1)
