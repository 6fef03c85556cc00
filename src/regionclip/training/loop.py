"""The resumable training loop shared by the embedded world's trainers (teacher CLIP, RPN, ...).

A trainer supplies one function ``step_fn(step, generator) -> (loss, record)``; the loop owns everything else:
the warm-up + cosine learning rate, the per-step random stream, progress bar, divergence check, atomic
checkpoints every ``checkpoint_every`` steps and resuming from the newest one. Because data order and
augmentation depend only on (seed, step), a resumed run reproduces an uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..utils import atomic_write_text
from . import checkpointing

RESULT_FILE = "training.json"  # written last in a run directory: its presence marks a finished, cached run


class ScheduleConfig(Protocol):
    """What the loop reads from a trainer's config (``TeacherTrainConfig``, ``RPNTrainConfig``)."""

    steps: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    seed: int
    checkpoint_every: int

    def to_dict(self) -> dict[str, Any]: ...


def learning_rate(step: int, config: ScheduleConfig) -> float:
    """Linear warm-up from ``lr / warmup_steps`` to ``lr``, then cosine decay to ``lr * min_lr_ratio``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random stream of one training step: a function of (seed, step) only, so resuming is exact."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


def batch_indices(num_samples: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Sample indices of ``step``: consecutive slices of a per-epoch permutation (last partial batch dropped)."""
    per_epoch = num_samples // batch_size
    if per_epoch < 1:
        raise ValueError(f"{num_samples} samples cannot fill a batch of {batch_size}")
    epoch, slot = divmod(step, per_epoch)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return order[slot * batch_size : (slot + 1) * batch_size]


#: ``step_fn(step, generator)`` → the loss to minimise and the json-serialisable record kept in the history
StepFn = Callable[[int, torch.Generator], "tuple[torch.Tensor, Any]"]


@dataclass
class TrainingRun:
    """Outcome of `run_training`: the trained module and its per-step records."""

    module: nn.Module
    losses: list[Any]
    step: int  # steps completed so far (== config.steps when finished)
    steps_run: int  # steps executed by this call (0 when everything came from a checkpoint)
    finished: bool
    seconds: float = 0.0  # training wall time, summed over interrupted and resumed calls


def run_training(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: ScheduleConfig,
    step_fn: StepFn,
    checkpoint_dir: str | Path,
    desc: str,
    progress: bool = True,
    stop_after: int | None = None,
    after_step: Callable[[], None] | None = None,
    postfix: Callable[[Any], dict[str, str]] | None = None,
) -> TrainingRun:
    """Run ``config.steps`` optimisation steps of ``step_fn``, resuming from the newest checkpoint.

    ``stop_after`` ends the call after that many total steps (a checkpoint is written there), as an interruption
    would; calling again resumes. ``after_step`` runs after every optimizer step (e.g. clamping a parameter);
    ``postfix`` formats a step's record for the progress bar. The module is left in eval mode.
    """
    state = checkpointing.resume_latest(checkpoint_dir, module, optimizer)
    checkpointing.check_same_run(state, config.to_dict(), checkpoint_dir)
    start = int(state["step"]) if state else 0
    records: list[Any] = list(state["losses"]) if state else []
    seconds_before = float(state.get("seconds", 0.0)) if state else 0.0
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    module.train()
    started = time.perf_counter()
    bar = tqdm(total=config.steps, initial=start, desc=desc, unit="step", disable=not progress)
    try:
        for step in range(start, end):
            lr = learning_rate(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, record = step_fn(step, step_generator(config.seed, step))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc} loss is {loss.item()} at step {step}: training diverged")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            records.append(record)
            bar.update(1)
            bar.set_postfix(lr=f"{lr:.2e}", **(postfix(record) if postfix else {"loss": f"{loss.item():.3f}"}))
            done = step + 1
            if done % config.checkpoint_every == 0 or done == end:
                elapsed = seconds_before + time.perf_counter() - started
                checkpointing.save_checkpoint(
                    checkpoint_dir, done, module, optimizer,
                    {"losses": records, "seconds": elapsed, "config": config.to_dict()},
                )
    finally:
        bar.close()
    step_reached = max(start, end)
    module.eval()
    return TrainingRun(
        module=module,
        losses=records,
        step=step_reached,
        steps_run=max(0, end - start),
        finished=step_reached >= config.steps,
        seconds=seconds_before + time.perf_counter() - started,
    )


@dataclass
class CachedRun:
    """A finished run of `cached_training`: its ``training.json`` record (``losses``, ``seconds``, ...)."""

    record: dict[str, Any]
    trained_now: bool  # False when the cache already held the finished run
    steps_run: int


def cached_training(
    run_dir: str | Path,
    output: Path,
    description: dict[str, Any],
    train: Callable[[Path], TrainingRun],
    save: Callable[[TrainingRun], dict[str, Any]],
) -> CachedRun:
    """The finished run in ``run_dir``, training (or resuming) it first when its record or ``output`` is missing.

    ``description`` (what determines the run: training config, world hash, ...) is written to ``config.json``
    before training and into the record; ``train(checkpoint_dir)`` runs or resumes the training; ``save(run)``
    writes ``output`` (the trained weights) and returns extra record fields. The record is written last,
    atomically, then the intermediate checkpoints are deleted.
    """
    run_dir = Path(run_dir)
    result_file = run_dir / RESULT_FILE
    if result_file.is_file() and output.is_file():
        return CachedRun(json.loads(result_file.read_text(encoding="utf-8")), False, 0)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(description, indent=1))
    run = train(run_dir / "checkpoints")
    record = {"losses": run.losses, "seconds": run.seconds, **description, **save(run)}
    atomic_write_text(result_file, json.dumps(record))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return CachedRun(record, True, run.steps_run)
