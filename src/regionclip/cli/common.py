"""What the commands share: loading weights from a spec, checking options, per-image runs that survive unreadable
images, writing predictions."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import typer


BRANCHES = ("student", "teacher")


def _load_model(spec: str, device: Optional[str], precision: str = "fp32"):
    """``PATH`` or ``NAME`` with an optional ``@teacher`` / ``@student`` branch suffix, run at ``precision``. A spec
    naming an existing file or directory is taken whole (file names may contain ``@``)."""
    from ..api import RegionCLIP

    path, branch = spec, "student"
    if not Path(spec).exists() and "@" in spec:
        path, _, branch = spec.rpartition("@")
        if branch not in BRANCHES:
            raise typer.BadParameter(
                f"{spec}: no such weights file, and {branch!r} is not a branch (use @student or @teacher)",
                param_hint="--weights",
            )
    return RegionCLIP.from_pretrained(path, branch=branch, device=device, precision=precision)


OUTPUT_FORMATS = ("coco", "hf", "regions")


class OnError(str, Enum):
    skip = "skip"
    fail = "fail"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


PRECISION_HELP = "fp32 (exact, official arithmetic) | bf16 (autocast; CPU or GPU) | fp16 (CUDA only)."


def precision_option():
    return typer.Option(Precision.fp32, "--precision", help=PRECISION_HELP)


ON_ERROR_HELP = "skip: write every readable image, list the others, exit 1 | fail: stop at the first unreadable image."


def check_output_format(output_format: str) -> None:
    if output_format not in OUTPUT_FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}")


def _parse_vocabulary(spec: str):
    from ..text.vocabulary import Vocabulary

    try:
        return Vocabulary.parse(spec)
    except (OSError, ValueError) as error:
        raise typer.BadParameter(str(error), param_hint="--vocab") from None


def _check_templates(templates: str) -> None:
    from ..text.templates import resolve_templates

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
    progress: bool = True,
) -> dict[int, object]:
    """``run`` over ``indices`` in batches. A batch that raises one of the per-image errors (unreadable image,
    invalid boxes, non-finite predictions) is re-run image by image, so only the images that fail are lost: they
    are recorded in ``failed`` (``on_error="skip"``) or stop the run with an error naming the image."""
    from ..features import UNREADABLE_IMAGE_ERRORS, describe_failure
    from ..utils import progress as progress_bar

    results: dict[int, object] = {}
    shown = progress and len(indices) > 1
    for start in progress_bar(range(0, len(indices), batch_size), disable=not shown, desc="images", unit="batch"):
        chunk = indices[start : start + batch_size]
        try:
            results.update(zip(chunk, run(chunk)))
            continue
        except UNREADABLE_IMAGE_ERRORS:
            failed_batch = chunk  # some image of the batch is unreadable: retry one by one to lose only that one
        for index in failed_batch:
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
    from ..utils import write_json

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
    from ..data.detection import image_file_name

    if isinstance(data, dict) and "annotations" in data and "images" in data:
        by_name = {Path(image_file_name(im)).name: im["id"] for im in data["images"]}
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
