"""The training engine: one resumable loop for every trainer, its checkpoints, schedules, optimizers and
data-parallel helpers.

* `loop` - `run_training(module, optimizer, config, step_fn, checkpoint_dir, desc, schedule=...)` (checkpoints
  on SIGTERM, then `TrainingInterrupted`), the per-step random stream `step_generator`, epoch sampling
  `batch_indices`;
* `caching` - finished runs cached in a run directory: `cached_training`, `CachedRun`;
* `checkpointing` - atomic ``step-XXXXXXXX/`` run-state directories (`save_checkpoint`, `load_run_state`,
  `resume_latest`);
* `schedules` - `WarmupCosine`, `WarmupMultiStep` (RegionCLIP's), `build_schedule`;
* `optim` - `build_optimizer` (SGD / AdamW over trainable parameters), `GradientClipping`;
* `distributed` - torchrun / DDP: `init_distributed`, `wrap_model`, `shard`, ranks, barrier.
"""

from .caching import CachedRun, cached_training
from .checkpointing import latest_checkpoint, list_checkpoints, load_run_state, resume_latest, save_checkpoint
from .distributed import (
    barrier,
    cleanup_distributed,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
    rank_generator,
    shard,
    unwrap_model,
    wrap_model,
)
from .loop import TrainingInterrupted, TrainingRun, batch_indices, run_training, step_generator
from .optim import GradientClipping, build_optimizer, parameter_groups, trainable_parameters
from .schedules import SCHEDULES, Schedule, WarmupCosine, WarmupMultiStep, build_schedule

__all__ = [
    "CachedRun",
    "GradientClipping",
    "SCHEDULES",
    "Schedule",
    "TrainingInterrupted",
    "TrainingRun",
    "WarmupCosine",
    "WarmupMultiStep",
    "barrier",
    "batch_indices",
    "build_optimizer",
    "build_schedule",
    "cached_training",
    "cleanup_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "latest_checkpoint",
    "list_checkpoints",
    "load_run_state",
    "parameter_groups",
    "rank_generator",
    "resume_latest",
    "run_training",
    "save_checkpoint",
    "shard",
    "step_generator",
    "trainable_parameters",
    "unwrap_model",
    "wrap_model",
]
