"""Data-parallel training with ``torch.distributed`` under torchrun (gloo on CPU, NCCL on CUDA).

Every helper also works when no process group is initialised (a plain single-process run is rank 0 of 1).

Determinism across ranks: the global batch of a step and its random draws are a function of (seed, step) only -
every rank builds the same `step_generator` stream, draws for the *global* batch and keeps its `shard` - so N ranks
together compute exactly the single-process step (DDP averages the ranks' gradients of their shard-mean losses,
which is the gradient of the global-mean loss when the shards are equal). `rank_generator` gives a rank its own
stream for randomness that need not match a single-process run.
"""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T", torch.Tensor, Sequence)

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def init_distributed() -> torch.device:
    """Join the process group torchrun describes in the environment and return this rank's device.

    Without torchrun (``WORLD_SIZE`` unset or 1) nothing is initialised and the device is ``cuda`` when available,
    else ``cpu``. The backend is NCCL with one GPU per local rank when CUDA is available, gloo otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size <= 1:
        return torch.device("cuda" if cuda else "cpu")
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world_size} but {missing} are not set: launch with torchrun")
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    return device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0: the one process that writes checkpoints and logs and shows progress."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_ranks_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (a collective: every rank must call it)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def any_rank_true(flag: bool) -> bool:
    """Whether ``flag`` holds on some rank (a collective: every rank must call it)."""
    return not all_ranks_true(not flag)


def shard(batch: T, rank: int | None = None, world_size: int | None = None) -> T:
    """Rank ``rank``'s contiguous share of a global batch (a tensor's first dimension or a sequence); the shards of
    ranks 0..N-1 concatenated are the batch. The batch size must divide by the world size."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    if len(batch) % world_size:
        raise ValueError(f"a global batch of {len(batch)} does not split evenly over {world_size} ranks")
    size = len(batch) // world_size
    return batch[rank * size : (rank + 1) * size]


def rank_generator(seed: int, step: int, rank: int | None = None) -> torch.Generator:
    """A random stream of its own for ``rank`` at ``step`` (a function of (seed, step, rank) only, so a resumed
    run redraws it exactly); distinct from every other rank's and from the shared `step_generator` stream."""
    rank = get_rank() if rank is None else rank
    return torch.Generator().manual_seed((((seed * 1_000_003 + step) * 8191 + rank + 1) * 2_654_435_761) % (2**63))


def wrap_model(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` on ``device``, wrapped in `DistributedDataParallel` when several ranks train it."""
    module = module.to(device)
    if not is_distributed():
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap_model(module: nn.Module) -> nn.Module:
    """The model inside a DDP / DataParallel wrapper (whose state-dict keys carry a ``module.`` prefix)."""
    while isinstance(module, (DistributedDataParallel, nn.DataParallel)):
        module = module.module
    return module


def cleanup_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch_from_yaml(prog: str, description: str, config_type: type, train, argv: list[str] | None = None) -> None:
    """The ``python -m regionclip.<trainer> --config FILE`` entry point that torchrun starts on every rank: parse the
    command line, build ``config_type.from_yaml(FILE)``, run ``train(config, progress=...)`` and always leave the
    process group."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, type=Path, help="Run configuration (YAML).")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        train(config_type.from_yaml(args.config), progress=not args.no_progress)
    finally:
        cleanup_distributed()
