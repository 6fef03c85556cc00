"""Resumable, atomic training checkpoints (the run state: weights, optimizer, step, history).

A checkpoint is a directory ``<run>/checkpoints/step-<step:08d>/`` holding

* ``model.safetensors`` - the module's state dict (no pickle);
* ``optimizer.pt``      - the optimizer's state dict, read back with ``torch.load(weights_only=True)``;
* ``state.json``        - the step, the loss history and any trainer state (json-serialisable).

It is written into a hidden temporary sibling and renamed into place, so a directory named ``step-*`` is
always complete; a run killed mid-write leaves only a ``.tmp-*`` directory, which is ignored and cleaned up.
Weights are those of the bare model: a DDP wrapper is looked through, so no key carries its ``module.`` prefix and
a checkpoint written by N ranks loads into a single process and back. (Released weight files are read by
`regionclip.checkpoints`, not here.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .distributed import unwrap_model

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})$")
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.pt", "state.json"


def _plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or strided storage; channels_last weights are stored in standard layout.
    return {k: v.detach().cpu().contiguous().clone() for k, v in unwrap_model(module).state_dict().items()}


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``directory`` as ``(step, path)``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint directory, or ``None``."""
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1][1] if checkpoints else None


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write the checkpoint of ``step`` atomically and delete all but the ``keep`` newest ones.

    ``state`` must be json-serialisable; ``step`` is added to it.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=directory))
    try:
        save_file(_plain_state_dict(model), str(tmp / MODEL_FILE))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}), encoding="utf-8")
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in directory.glob(".tmp-step-*"):  # leftovers of interrupted writes
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_run_state(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Load a checkpoint directory into ``model`` (strictly; a DDP wrapper's inner model) and ``optimizer``;
    returns its ``state.json``."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    weights = load_file(str(path / MODEL_FILE))
    unwrap_model(model).load_state_dict(weights, strict=True)
    if optimizer is not None:
        if not (path / OPTIMIZER_FILE).is_file():
            raise FileNotFoundError(f"{path} has no optimizer state")
        optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


def resume_latest(
    directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any] | None:
    """Load the newest checkpoint under ``directory`` if there is one; returns its state or ``None``."""
    path = latest_checkpoint(directory)
    return None if path is None else load_run_state(path, model, optimizer)


def check_same_run(state: dict[str, Any] | None, config: dict[str, Any], directory: str | Path) -> None:
    """Refuse to resume a checkpoint written under another training config (its schedule and data order differ);
    ``checkpoint_every`` may change."""
    if state is None or "config" not in state:
        return
    saved = {k: v for k, v in state["config"].items() if k != "checkpoint_every"}
    wanted = {k: v for k, v in config.items() if k != "checkpoint_every"}
    if saved != wanted:
        changed = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        raise ValueError(f"{directory} holds checkpoints of a different training config (differs in {changed}); "
                         "use another directory or delete it")
