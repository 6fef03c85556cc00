"""Command line: ``regionclip classify``, ``regionclip embed-vocab``, ``regionclip demo``."""

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
    from .utils import atomic_write_text
    from .viz import draw_predictions, side_by_side

    if output_format not in ("regions", "coco", "hf"):
        raise typer.BadParameter("--format must be regions, coco or hf")
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
        if output_format == "coco":
            payload = [entry for pred in first for entry in pred.to_coco()]
        elif output_format == "hf":
            payload = [pred.to_hf() for pred in first]
        else:
            payload = [pred.to_json() for pred in first]
        atomic_write_text(out, json.dumps(payload, indent=1))
        typer.echo(f"wrote {out}")
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
) -> None:
    """The main job on the embedded default (no downloads)."""
    from .demo import run_demo

    report = run_demo(out)
    typer.echo(f"report: {report}")


if __name__ == "__main__":
    app()
