"""Command line: ``regionclip classify | detect | extract-features | evaluate-zeroshot | embed-vocab | concepts | finetune | pretrain | evaluate | demo``.

Options are checked before any weights load (bad ones are usage errors, exit status 2); the errors a user can act
on print one ``error: ...`` line and exit with status 1 (``regionclip --debug ...`` shows the traceback); images
that cannot be read are skipped and listed, everything else is written, and the exit status is 1."""

from __future__ import annotations

import functools
import json
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RegionCLIP: zero-shot recognition of image regions.")


BRANCHES = ("student", "teacher")


def _load_model(spec: str, device: Optional[str]):
    """``PATH`` or ``NAME`` with an optional ``@teacher`` / ``@student`` branch suffix. A spec naming an existing
    file or directory is taken whole (file names may contain ``@``)."""
    from .api import RegionCLIP

    path, branch = spec, "student"
    if not Path(spec).exists() and "@" in spec:
        path, _, branch = spec.rpartition("@")
        if branch not in BRANCHES:
            raise typer.BadParameter(
                f"{spec}: no such weights file, and {branch!r} is not a branch (use @student or @teacher)",
                param_hint="--weights",
            )
    return RegionCLIP.from_pretrained(path, branch=branch, device=device)


# Set by the group callback below for the current invocation: whether errors show their traceback.
_invocation = {"debug": False}


@app.callback()
def main(
    debug: bool = typer.Option(
        False, "--debug", envvar="REGIONCLIP_DEBUG", help="Show the full traceback of an error instead of one line."
    ),
) -> None:
    """RegionCLIP: zero-shot recognition of image regions."""
    _invocation["debug"] = debug


# Errors a user can act on (a missing or unreadable file, a bad value, a failed download, an empty file, memory):
# one line on stderr and exit status 1, unless --debug asks for the traceback.
USER_ERRORS = (OSError, ValueError, RuntimeError, EOFError)


def _reports_errors(command: Callable) -> Callable:
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise  # the command's own outcome (both are RuntimeErrors)
        except USER_ERRORS as error:
            if _invocation["debug"]:
                raise
            message = str(error) or type(error).__name__
            typer.echo(f"error: {message} (regionclip --debug ... shows the traceback)", err=True)
            raise typer.Exit(1) from None

    return run


def _command(name: Optional[str] = None):
    """``app.command`` with the one-line error reporting above."""
    return lambda function: app.command(name)(_reports_errors(function))


OUTPUT_FORMATS = ("coco", "hf", "regions")


class OnError(str, Enum):
    skip = "skip"
    fail = "fail"


ON_ERROR_HELP = "skip: write every readable image, list the others, exit 1 | fail: stop at the first unreadable image."


def check_output_format(output_format: str) -> None:
    if output_format not in OUTPUT_FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}")


def _parse_vocabulary(spec: str):
    from .text.vocabulary import Vocabulary

    try:
        return Vocabulary.parse(spec)
    except (OSError, ValueError) as error:
        raise typer.BadParameter(str(error), param_hint="--vocab") from None


def _check_templates(templates: str) -> None:
    from .text.templates import resolve_templates

    try:
        resolve_templates(templates)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--templates") from None


def _drawing_targets(images: list[Path], draw: Path) -> list[Path]:
    """``<draw>/<image stem>.png`` per image; two inputs that would overwrite each other's drawing are refused."""
    targets = [draw / f"{image.stem}.png" for image in images]
    seen: dict[Path, Path] = {}
    for image, target in zip(images, targets):
        if target in seen:
            raise typer.BadParameter(f"{seen[target]} and {image} would both be drawn to {target}", param_hint="--draw")
        seen[target] = image
    return targets


def _missing_images(images: list[Path], on_error: str, failed: dict[str, str]) -> list[int]:
    """Indices of the images that exist; missing ones are recorded in ``failed`` (or stop the command first,
    before any model is loaded, with ``--on-error fail``)."""
    present = []
    for index, image in enumerate(images):
        if image.is_file():
            present.append(index)
        elif on_error == "fail":
            raise typer.BadParameter(f"image file not found: {image}", param_hint="IMAGES")
        else:
            failed[str(image)] = f"image file not found: {image}"
    return present


def run_per_image(
    indices: list[int],
    run: Callable[[list[int]], list],
    images: list[Path],
    batch_size: int,
    on_error: str,
    failed: dict[str, str],
) -> dict[int, object]:
    """``run`` over ``indices`` in batches. A batch that raises one of the per-image errors (unreadable image,
    invalid boxes, non-finite predictions) is re-run image by image, so only the images that fail are lost: they
    are recorded in ``failed`` (``on_error="skip"``) or stop the run with an error naming the image."""
    from .features import UNREADABLE_IMAGE_ERRORS, describe_failure
    from .utils import progress

    results: dict[int, object] = {}
    for start in progress(range(0, len(indices), batch_size), disable=len(indices) <= 1, desc="images", unit="batch"):
        chunk = indices[start : start + batch_size]
        try:
            results.update(zip(chunk, run(chunk)))
            continue
        except UNREADABLE_IMAGE_ERRORS:
            pass
        for index in chunk:
            try:
                results[index] = run([index])[0]
            except UNREADABLE_IMAGE_ERRORS as error:
                reason = describe_failure(images[index], error)
                if on_error == "fail":
                    raise ValueError(reason) from error
                failed[str(images[index])] = reason
    return results


def report_failures(failed: dict[str, str], total: int) -> None:
    """List the skipped images on stderr and exit 1, after everything else has been written."""
    if not failed:
        return
    typer.echo(f"warning: {len(failed)} of {total} images could not be processed and were skipped:", err=True)
    for reason in failed.values():
        typer.echo(f"  {reason}", err=True)
    raise typer.Exit(1)


def write_predictions(path: Path, predictions: list, output_format: str) -> None:
    """Predictions as a COCO results list, HF pipeline dicts (a list per image, ``null`` for a skipped image so
    positions keep matching the inputs) or our per-image records; strict JSON (no NaN)."""
    from .utils import write_json

    if output_format == "coco":
        payload = [entry for pred in predictions if pred is not None for entry in pred.to_coco()]
    elif output_format == "hf":
        payload = [pred.to_hf() if pred is not None else None for pred in predictions]
    else:
        payload = [pred.to_json() for pred in predictions if pred is not None]
    write_json(path, payload, indent=1)
    typer.echo(f"wrote {path}")


def read_boxes_file(path: Path, images: list[Path]) -> tuple[list[list[list[float]]], Optional[list[int]]]:
    """Boxes (xyxy, original pixels) per image, and image ids when the file is a COCO instances json.

    Accepted: a COCO instances json (images matched by file name, ``bbox`` xywh); a json object mapping an image
    path or file name to its boxes; a json list with one box list per image (or, for a single image, its boxes).
    """
    if not path.is_file():
        raise typer.BadParameter(f"boxes file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise typer.BadParameter(f"{path} is not a JSON file ({error})", param_hint="--boxes") from None
    try:
        return _boxes_per_image(data, path, images)
    except (KeyError, TypeError, ValueError) as error:
        raise typer.BadParameter(f"{path} is not a boxes file of a known layout ({type(error).__name__}: {error})",
                                 param_hint="--boxes") from None


def _boxes_per_image(data: object, path: Path, images: list[Path]) -> tuple[list, Optional[list[int]]]:
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
) -> None:
    """Top-k labels of the given boxes over any vocabulary (zero-shot)."""
    from .viz import draw_predictions, side_by_side

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
        model = _load_model(spec, device)
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


def _detection_config(vocab_is_lvis: bool, **options):
    from .modeling.roi_heads import DetectionConfig

    chosen = {k: v for k, v in options.items() if v is not None}
    return DetectionConfig.lvis(**chosen) if vocab_is_lvis else DetectionConfig(**chosen)


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
    num_proposals: int = typer.Option(1000, "--num-proposals", min=1),
    out: Optional[Path] = typer.Option(None, "--out", help="Write predictions json here."),
    output_format: str = typer.Option("coco", "--format", help="coco | hf | regions"),
    draw: Optional[Path] = typer.Option(None, "--draw", help="Directory for annotated images."),
    draw_threshold: float = typer.Option(0.3, "--draw-threshold", help="Only draw detections scoring above this."),
    templates: str = typer.Option("ensemble", "--templates"),
    on_error: OnError = typer.Option(OnError.skip, "--on-error", help=ON_ERROR_HELP),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Zero-shot detection: RPN proposals classified over any vocabulary."""
    from .viz import draw_predictions

    check_output_format(output_format)
    _check_templates(templates)
    vocabulary = _parse_vocabulary(vocab)
    try:
        config = _detection_config(
            vocabulary.frequency is not None, score_fusion=score_fusion, soft_nms=soft_nms,
            score_threshold=score_threshold, max_detections=max_detections, num_proposals=num_proposals,
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

        def run(indices: list[int]) -> list:
            return model.detect(
                [str(images[i]) for i in indices], vocabulary, config=config, class_embeddings=class_embeddings,
                batch_size=len(indices), image_ids=[i + 1 for i in indices],
            )

        predictions = run_per_image(remaining, run, images, 4, on_error, failed)
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
    templates: str = typer.Option("ensemble", "--templates", help="Prompts for --vocab: ensemble (81) or single."),
    on_error: OnError = typer.Option(OnError.skip, "--on-error", help=ON_ERROR_HELP),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Region boxes and un-normalised features (and optional probabilities) for every image; resumable into a
    folder made with the same weights and settings."""
    from .features import extract_region_features, list_images

    _check_templates(templates)
    vocabulary = _parse_vocabulary(vocab) if vocab is not None else None
    total = len(list_images(image_dir))
    model = _load_model(weights, device)
    if rpn is not None:
        model.attach_rpn(rpn)
    summary = extract_region_features(
        model, image_dir, out, vocabulary, num_proposals=num_proposals, batch_size=batch_size, templates=templates,
        on_error=on_error.value,
    )
    typer.echo(f"wrote {summary.written} files into {out} ({summary.skipped} already present)")
    report_failures(summary.failed, total)


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
) -> None:
    """COCO AP/AP50 (+ OV-COCO novel/base/all AP50) or LVIS AP/APr/APc/APf of zero-shot inference."""
    from .checkpoints import load_embedding_file
    from .modeling.roi_heads import DetectionConfig
    from .evaluation import evaluate_zeroshot, format_metrics
    from .utils import write_json

    if boxes not in ("gt", "rpn"):
        raise typer.BadParameter(f"must be gt or rpn, not {boxes!r}", param_hint="--boxes")
    if vocab is not None:
        _parse_vocabulary(vocab)
    try:
        DetectionConfig(score_fusion=score_fusion)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--score-fusion") from None
    embeddings = load_embedding_file(class_embeddings) if class_embeddings else None
    model = _load_model(weights, device)
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


@_command("embed-vocab")
def embed_vocab(
    vocab: str = typer.Option(..., "--vocab", help="Preset, file or 'a,b,c'."),
    weights: str = typer.Option(..., "--weights", help="Weights with a text encoder (file/dir or OpenAI name)."),
    out: Path = typer.Option(..., "--out", help="Embedding file: .pth (official [N, D] format)."),
    templates: str = typer.Option("ensemble", "--templates", help="ensemble (81 prompts) or single."),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Write the un-normalised ``[N, D]`` class embeddings of a vocabulary (official ``.pth`` format)."""
    from .checkpoints.embeddings import save_embedding_file

    _check_templates(templates)
    vocabulary = _parse_vocabulary(vocab)
    model = _load_model(weights, device)
    embeddings = model.embed_vocabulary(vocabulary, templates, progress=True)
    save_embedding_file(out, embeddings)
    typer.echo(f"wrote {out}: {tuple(embeddings.shape)}")


@_command()
def demo(
    out: Path = typer.Option(Path("demo_output"), "--out", help="Report folder."),
    preset: str = typer.Option(
        "default", "--preset", help="default (~6-8 min on 2 cores), full (longer, both teacher sizes), tiny, or a YAML file."
    ),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help="Cache of worlds and trained models (default $REGIONCLIP_CACHE or ~/.cache/regionclip)."
    ),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads (default: the idle cores)."),
) -> None:
    """The main job on the embedded world: generate it, train the CLIP teacher and the RPN, evaluate, report.

    No downloads; everything is cached, so a second run only evaluates."""
    from .world.demo import DemoPreset, run_demo

    try:
        config = DemoPreset.load(preset)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--preset") from None
    report = run_demo(out, preset=config, cache_dir=cache_dir, threads=threads)
    typer.echo(f"report: {report}")


@_command()
def concepts(
    captions: list[Path] = typer.Argument(
        ..., help="COCO Captions json, webdataset .tar shards or text files (one caption per line)."
    ),
    out: Path = typer.Option(..., "--out", help="Concept pool file (name,count lines, most frequent first)."),
    min_count: int = typer.Option(
        1, "--min-count", min=1, help="Keep concepts seen at least this often (the official CC3M pool used 100)."
    ),
    spacy_model: Optional[str] = typer.Option(None, "--spacy-model", help="spaCy pipeline (default: small English)."),
) -> None:
    """Parse noun concepts from captions into a concept pool (docs/pretraining.md); needs regionclip[concepts]."""
    from .text.concepts import build_concept_pool, load_spacy_pipeline, read_captions, write_concept_pool
    from .utils import progress

    caption_stream = read_captions(captions)
    nlp = load_spacy_pipeline(spacy_model)
    pool = build_concept_pool(progress(caption_stream, desc="parsing captions", unit=" captions"), min_count, nlp=nlp)
    write_concept_pool(out, pool)
    typer.echo(f"wrote {out}: {len(pool)} concepts")


@_command()
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


@_command()
def pretrain(
    config: Path = typer.Option(..., "--config", help="Pretraining YAML (see configs/pretrain/)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Region–text pretraining of a RegionCLIP student (resumes an interrupted run; docs/pretraining.md).

    Several GPUs/processes: torchrun --nproc_per_node N -m regionclip.pretrain --config CONFIG."""
    from .pretrain import PretrainConfig
    from .pretrain import pretrain as run_pretrain

    try:
        settings = PretrainConfig.from_yaml(config)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise typer.BadParameter(str(error), param_hint="--config") from None
    run = run_pretrain(settings, progress=progress)
    last = run.losses[-1] if run.losses else {}
    typer.echo(f"{run.step} steps in {run.seconds:.0f} s; last losses {last}; student in {settings.output_dir}")


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
) -> None:
    """Open-vocabulary detection AP: OV-COCO AP50 novel/base/all, or LVIS AP/APr/APc/APf (300 detections)."""
    from .config import ModelConfig
    from .evaluation import evaluate_zeroshot, format_metrics
    from .evaluation._common import load_ground_truth
    from .evaluation.zeroshot import is_lvis_style
    from .modeling.meta_arch.fast_rcnn import OpenVocabularyDetector, transfer_detection_config
    from .utils import write_json

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
    write_json(out, results)
    typer.echo(f"wrote {out}")
    if metrics_out is not None:
        write_json(metrics_out, metrics, undefined_as_null=True, indent=1)


if __name__ == "__main__":
    app()
