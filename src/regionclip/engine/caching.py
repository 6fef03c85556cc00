"""Finished training runs cached on disk: one directory per run, trained once and reused afterwards.

A run directory holds ``config.json`` (what determines the run, written before training), ``checkpoints/``
while the run is in progress (`run_training` resumes from them), the trained weights, and ``training.json``
(the record: losses, wall time, the description) written last: its presence, with the weights, marks the run
finished. The embedded world's teacher and RPN (`regionclip.world`) are cached this way; a recipe subclasses
`CachedRun` to add its config and how to load its weights.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..utils import atomic_write_text
from .loop import TrainingRun

RESULT_FILE = "training.json"  # written last in a run directory: its presence marks a finished, cached run


@dataclass
class CachedRun:
    """A finished run of `cached_training`: its directory, trained weights and ``training.json`` record."""

    run_dir: Path
    weights: Path
    record: dict[str, Any]  # ``losses``, ``seconds``, the description and the fields ``save`` returned
    trained_now: bool  # False when the cache already held the finished run
    steps_run: int  # steps executed by this call (0 when cached)

    @property
    def losses(self) -> list[Any]:
        """The per-step records of the whole run."""
        return self.record["losses"]

    @property
    def seconds(self) -> float:
        """Training wall time of the run that produced the weights."""
        return self.record["seconds"]


RunT = TypeVar("RunT", bound=CachedRun)


def cached_training(
    run_dir: str | Path,
    output: Path,
    description: dict[str, Any],
    train: Callable[[Path], TrainingRun],
    save: Callable[[TrainingRun], dict[str, Any]],
    kind: type[RunT] = CachedRun,  # type: ignore[assignment]
    **extra: Any,
) -> RunT:
    """The finished run in ``run_dir``, training (or resuming) it first when its record or ``output`` is missing.

    ``description`` (what determines the run: training config, world hash, ...) is written to ``config.json``
    before training and into the record; ``train(checkpoint_dir)`` runs or resumes the training; ``save(run)``
    writes ``output`` (the trained weights) and returns extra record fields. The record is written last,
    atomically, then the intermediate checkpoints are deleted. The result is a ``kind`` (a `CachedRun`
    subclass) built with the ``extra`` fields it adds (e.g. its training config).
    """
    expected = {f.name for f in fields(kind)} - {f.name for f in fields(CachedRun)}
    if set(extra) != expected:
        raise TypeError(f"{kind.__name__} needs the fields {sorted(expected)}, got {sorted(extra)}")
    run_dir = Path(run_dir)
    result_file = run_dir / RESULT_FILE
    if result_file.is_file() and output.is_file():
        record = json.loads(result_file.read_text(encoding="utf-8"))
        return kind(run_dir, output, record, False, 0, **extra)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(description, indent=1))
    run = train(run_dir / "checkpoints")
    record = {"losses": run.losses, "seconds": run.seconds, **description, **save(run)}
    atomic_write_text(result_file, json.dumps(record))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return kind(run_dir, output, record, True, run.steps_run, **extra)
