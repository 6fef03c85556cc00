"""Learning-rate schedules: a schedule maps the 0-based step to the learning rate used by that step.

* `WarmupCosine` - the embedded world's trainers: linear warm-up from ``lr / warmup_steps`` to ``lr``, then cosine
  decay to ``lr * min_lr_ratio`` at ``steps``.
* `WarmupMultiStep` - RegionCLIP's pretraining and transfer schedule (detectron2's ``WarmupMultiStepLR``):
  ``lr * warmup(step) * gamma ** (number of milestones <= step)`` with the linear warm-up factor
  ``warmup_factor * (1 - step / warmup_steps) + step / warmup_steps`` before ``warmup_steps`` and 1 after it.
  RegionCLIP's RN50 pretraining uses lr 0.002, milestones (300000, 525000) of 600000 steps, gamma 0.1, 1000
  warm-up steps from factor 0.001; its COCO transfer lr 0.002, milestones (60000, 80000), 5000 warm-up steps.

`build_schedule` selects one by name from a config mapping (``{"name": "warmup_multistep", "lr": ..., ...}``).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Protocol


class Schedule(Protocol):
    def __call__(self, step: int) -> float: ...


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up from ``lr / warmup_steps`` (step 0) to ``lr`` (step ``warmup_steps - 1``), then cosine decay
    from ``lr`` to ``lr * min_lr_ratio`` at step ``steps`` (held there after)."""

    lr: float
    steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.steps < 1 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0, steps >= 1, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got {self}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class WarmupMultiStep:
    """detectron2's ``WarmupMultiStepLR`` with linear warm-up: step 0 runs at ``lr * warmup_factor``, the factor
    rises linearly to 1 at ``warmup_steps``, and the rate is multiplied by ``gamma`` at each milestone (a
    milestone step already uses the decayed rate)."""

    lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1
    warmup_steps: int = 1000
    warmup_factor: float = 0.001

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        if self.lr <= 0 or self.gamma <= 0 or self.warmup_steps < 0 or not 0 < self.warmup_factor <= 1:
            raise ValueError(f"need lr > 0, gamma > 0, warmup_steps >= 0, 0 < warmup_factor <= 1; got {self}")

    def __call__(self, step: int) -> float:
        factor = 1.0
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            factor = self.warmup_factor * (1 - alpha) + alpha
        return self.lr * factor * self.gamma ** bisect.bisect_right(self.milestones, step)


SCHEDULES: dict[str, type] = {"warmup_cosine": WarmupCosine, "warmup_multistep": WarmupMultiStep}


def build_schedule(spec: dict[str, Any]) -> Schedule:
    """The schedule named by ``spec["name"]`` (a key of `SCHEDULES`) with the other entries as its fields."""
    params = dict(spec)
    name = params.pop("name", None)
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    cls = SCHEDULES[name]
    unknown = set(params) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {name} schedule keys: {sorted(unknown)}")
    return cls(**params)
