"""``regionclip demo | concepts | pretrain | finetune``: the embedded demo and the trainers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import _command


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
    from ..world.demo import DemoPreset, run_demo

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
    from ..text.concepts import build_concept_pool, load_spacy_pipeline, read_captions, write_concept_pool
    from ..utils import progress

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
    from ..finetune import FinetuneConfig
    from ..finetune import finetune as run_finetune

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
    from ..pretrain import PretrainConfig
    from ..pretrain import pretrain as run_pretrain

    try:
        settings = PretrainConfig.from_yaml(config)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise typer.BadParameter(str(error), param_hint="--config") from None
    run = run_pretrain(settings, progress=progress)
    last = run.losses[-1] if run.losses else {}
    typer.echo(f"{run.step} steps in {run.seconds:.0f} s; last losses {last}; student in {settings.output_dir}")
