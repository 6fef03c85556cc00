"""The resumable training loop: the embedded world's trainers (teacher CLIP, RPN) and the pretraining trainer.

A trainer supplies one function ``step_fn(step, generator) -> (loss, record)``; the loop owns everything else:
the learning-rate schedule (`schedules`), the per-step random stream, autocast, gradient clipping (`optim`), the
divergence check, the progress bar, atomic checkpoints every ``checkpoint_every`` steps and on SIGTERM, and
resuming from the newest one. Because data order and augmentation depend only on (seed, step), a resumed run reproduces an
uninterrupted one bit for bit.

Under torchrun (`distributed`) every rank runs the loop on a `DistributedDataParallel` module with the same
``step_fn``: the generator is the same on every rank (draw for the global batch, keep your `shard`), only rank 0
shows progress and writes checkpoints, and every rank resumes from them.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from ..utils import progress as progress_bar
from . import checkpointing
from .distributed import all_ranks_true, any_rank_true, barrier, is_main_process
from .optim import GradientClipping
from .schedules import Schedule


class RunConfig(Protocol):
    """What the loop reads from a trainer's config (``TeacherTrainConfig``, ``RPNTrainConfig``, ...)."""

    steps: int
    seed: int
    checkpoint_every: int

    def to_dict(self) -> dict[str, Any]: ...


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


class TrainingInterrupted(Exception):
    """SIGTERM stopped a run after writing the checkpoint of its last completed step; training again resumes."""

    def __init__(self, step: int, checkpoint_dir: Path) -> None:
        super().__init__(f"stopped by SIGTERM after step {step}; its checkpoint is in {checkpoint_dir}")
        self.step = step


@contextmanager
def sigterm_received() -> Iterator[list[int]]:
    """A list that receives the signal number when SIGTERM arrives (instead of the process dying mid-step);
    the previous handler is restored on exit. Outside the main thread, where no handler can be set, it stays empty."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    config: RunConfig,
    step_fn: StepFn,
    checkpoint_dir: str | Path,
    desc: str,
    *,
    schedule: Schedule,
    progress: bool = True,
    stop_after: int | None = None,
    after_step: Callable[[], None] | None = None,
    postfix: Callable[[Any], dict[str, str]] | None = None,
    clip_gradients: GradientClipping | None = None,
    autocast: torch.dtype | None = None,
) -> TrainingRun:
    """Run ``config.steps`` optimisation steps of ``step_fn``, resuming from the newest checkpoint.

    Every optimizer group runs at ``schedule(step)``. ``step_fn`` runs under ``torch.autocast`` with ``autocast``
    (e.g. ``torch.bfloat16``; None: full precision), the backward pass outside it; ``clip_gradients`` clips the
    gradients of the optimizer's parameters before each step. ``stop_after`` ends the call after that many total
    steps (a checkpoint is written there), as an interruption would; calling again resumes. SIGTERM (on any rank)
    ends the current step, writes its checkpoint and raises `TrainingInterrupted`. ``after_step`` runs
    after every optimizer step (e.g. clamping a parameter); ``postfix`` formats a step's record for the progress
    bar. Records are this rank's (those from before a resume: rank 0's, read from its checkpoint). The module
    is left in eval mode.
    """
    state = checkpointing.resume_latest(checkpoint_dir, module, optimizer)
    checkpointing.check_same_run(state, config.to_dict(), checkpoint_dir)
    start = int(state["step"]) if state else 0
    records: list[Any] = list(state["losses"]) if state else []
    seconds_before = float(state.get("seconds", 0.0)) if state else 0.0
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    device_type = parameters[0].device.type if parameters else "cpu"
    main = is_main_process()
    module.train()
    started = time.perf_counter()
    bar = progress_bar(total=config.steps, initial=start, desc=desc, unit="step", disable=not (progress and main))
    with bar, sigterm_received() as terminated:
        for step in range(start, end):
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            precision = nullcontext() if autocast is None else torch.autocast(device_type, dtype=autocast)
            with precision:
                loss, record = step_fn(step, step_generator(config.seed, step))
            if not all_ranks_true(bool(torch.isfinite(loss))):
                raise FloatingPointError(f"{desc} loss is {loss.item()} at step {step} (on some rank): training diverged")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_gradients is not None:
                clip_gradients(parameters)
            optimizer.step()
            if after_step is not None:
                after_step()
            records.append(record)
            # the postfix waits for the update's refresh: refreshing on every step would write a log line each
            shown = postfix(record) if postfix else {"loss": f"{loss.item():.3f}"}
            bar.set_postfix(lr=f"{lr:.2e}", **shown, refresh=False)
            bar.update(1)
            done = step + 1
            stopping = any_rank_true(bool(terminated))
            if done % config.checkpoint_every == 0 or done == end or stopping:
                if main:
                    elapsed = seconds_before + time.perf_counter() - started
                    checkpointing.save_checkpoint(
                        checkpoint_dir, done, module, optimizer,
                        {"losses": records, "seconds": elapsed, "config": config.to_dict()},
                    )
                barrier()  # no rank runs ahead of (or resumes without) the checkpoint rank 0 writes
            if stopping:
                raise TrainingInterrupted(done, Path(checkpoint_dir))
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
