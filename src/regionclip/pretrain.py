"""Region–text pretraining (docs/pretraining.md, "Model and trainer").

    regionclip pretrain --config configs/pretrain/cc3m_rn50.yaml
    torchrun --nproc_per_node 8 -m regionclip.pretrain --config configs/pretrain/cc3m_rn50.yaml

`RegionTextPretraining` on the engine of `regionclip.engine`: SGD (momentum 0.9, weight decay 1e-4) over the
student's trainable parameters, `WarmupMultiStep`, per-parameter gradient-norm clipping at 5.0, fp32 or bf16
autocast, the global batch split over the ranks (`caption_loader`, deterministic by seed, rank and step), atomic
checkpoints every N steps and on SIGTERM, a JSONL log written by rank 0, and at the end the student as this project's
safetensors plus the official ``{"model": ...}`` pretraining ``.pth``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .config import ConfigBase, ModelConfig
from .data.captions import CocoCaptionPairs, StepPlan, caption_loader
from .data.pretrain_images import GLOBAL_BOX_MODES, PretrainTransform
from .engine import (
    GradientClipping,
    WarmupMultiStep,
    barrier,
    build_optimizer,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    rank_generator,
    run_training,
    unwrap_model,
    wrap_model,
)
from .engine.distributed import launch_from_yaml
from .engine.loop import TrainingRun
from .modeling.meta_arch.pretraining import ProposalSampling, RegionTextPretraining
from .modeling.region_text_losses import LOSS_NAMES, RegionTextLossConfig
from .precision import autocast_dtype, check_precision
from .utils import atomic_write_text, write_json

LOG_FILE, STUDENT_FILE, OFFICIAL_FILE = "log.jsonl", "model.safetensors", "model_final.pth"


@dataclass
class PretrainConfig(ConfigBase):
    """A pretraining run; paths are relative to the working directory. Defaults: the official RN50 recipe.

    Data: exactly one of ``shards`` (webdataset path / brace pattern / list), ``captions_json`` + ``image_dir``
    (COCO Captions), or ``world`` (the embedded world: a preset name or ``{preset: ..., field: value}``,
    generated into ``cache_dir`` unless it exists; ``world_split`` is read).
    ``concepts``: the concept pool: an official embedding ``.pth`` (``[K, D]``), a pool / vocabulary file
    (``name,count`` lines) or a vocabulary spec embedded by the frozen text encoder, or ``"world"`` for the world's
    category names.
    """

    config_label: ClassVar[str] = "pretrain config"

    weights: str  # initialisation: OAI-CLIP teacher/student file, official pretraining .pth, CLIP or our safetensors
    concepts: str
    output_dir: str
    rpn: str | None = None  # detectron2 RPN .pth (e.g. rpn_lvis_866.pth) when the weights carry none
    model: str | None = None  # model preset (e.g. "tiny") for weight files without a stored config
    teacher_concepts: str | None = None  # the teacher's copy of the pool (official .pth), when its dimension differs
    shards: str | list[str] | None = None
    captions_json: str | None = None
    image_dir: str | None = None
    world: str | dict[str, Any] | None = None
    world_split: str = "pretrain"
    cache_dir: str | None = None  # where a world is generated (default: $REGIONCLIP_CACHE or ~/.cache/regionclip)
    min_size: int | None = 800  # pretraining resize: short side (None: keep the image size)
    max_size: int = 1333
    flip_probability: float = 0.5
    global_box: str = "padded"  # "padded" (official) or "image"
    rpn_nms_threshold: float = 0.5
    rpn_top_k: int = 300
    regions_per_image: int = 100
    losses: dict[str, float] = field(default_factory=dict)  # RegionTextLossConfig overrides
    steps: int = 600000
    batch_size: int = 96  # global, split over the ranks
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [300000, 525000])
    gamma: float = 0.1
    warmup_steps: int = 1000
    warmup_factor: float = 0.001
    grad_clip: float | None = 5.0  # per-parameter gradient-norm clip; None: off
    freeze_at: int = 2
    precision: str = "fp32"  # "fp32", "bf16" (autocast) or "fp16" (autocast, CUDA only)
    num_workers: int = 0
    shuffle_buffer: int = 1000
    seed: int = 0
    checkpoint_every: int = 5000

    def __post_init__(self) -> None:
        sources = [name for name in ("shards", "captions_json", "world") if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ValueError(f"give exactly one data source (shards, captions_json or world), got {sources or 'none'}")
        if self.captions_json is not None and self.image_dir is None:
            raise ValueError("captions_json needs image_dir")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("need steps, batch_size and checkpoint_every >= 1")
        check_precision(self.precision)
        if self.global_box not in GLOBAL_BOX_MODES:
            raise ValueError(f"global_box must be one of {GLOBAL_BOX_MODES}, got {self.global_box!r}")
        self.transform()
        self.sampling()
        self.loss_config()

    # ---- parts -------------------------------------------------------------------------------------
    def transform(self) -> PretrainTransform:
        return PretrainTransform(self.min_size, self.max_size, self.flip_probability)

    def sampling(self) -> ProposalSampling:
        return ProposalSampling(self.rpn_nms_threshold, self.rpn_top_k, self.regions_per_image)

    def loss_config(self) -> RegionTextLossConfig:
        known = {f.name for f in dataclasses.fields(RegionTextLossConfig)}
        unknown = set(self.losses) - known
        if unknown:
            raise ValueError(f"unknown losses keys {sorted(unknown)}; known: {sorted(known)}")
        return RegionTextLossConfig(**self.losses)

    def schedule(self) -> WarmupMultiStep:
        return WarmupMultiStep(self.lr, tuple(self.milestones), self.gamma, self.warmup_steps, self.warmup_factor)


def _world(config: PretrainConfig):
    from .synthetic import WorldConfig, generate_world
    from .text.embedder import default_cache_dir

    spec = {"preset": config.world} if isinstance(config.world, str) else dict(config.world)  # type: ignore[arg-type]
    world_config = WorldConfig.preset(spec.pop("preset"), **spec) if "preset" in spec else WorldConfig.from_dict(spec)
    cache = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    return generate_world(world_config, cache / "worlds", progress=False)


def caption_source(config: PretrainConfig):
    """The data source `caption_loader` reads: shard path(s), or an indexable `CocoCaptionPairs`."""
    if config.shards is not None:
        return config.shards
    if config.captions_json is not None:
        return CocoCaptionPairs(config.captions_json, config.image_dir)  # type: ignore[arg-type]
    return CocoCaptionPairs.from_world(_world(config), config.world_split)


def build_model(config: PretrainConfig, device: torch.device | str = "cpu") -> RegionTextPretraining:
    """The pretraining model initialised from ``config.weights`` with the concept pool of ``config.concepts``."""
    concepts: Any = config.concepts
    if concepts == "world":
        if config.world is None:
            raise ValueError("concepts: world needs a world data source")
        from .text.vocabulary import Vocabulary

        world = _world(config)
        concepts = Vocabulary.from_names([c["name"] for c in world.load_instances(config.world_split)["categories"]])
    return RegionTextPretraining.from_pretrained(
        config.weights,
        concept_embeddings=concepts,
        rpn=config.rpn,
        config=ModelConfig.preset(config.model) if config.model else None,
        teacher_concept_embeddings=config.teacher_concepts,
        transform=config.transform(),
        sampling=config.sampling(),
        loss_config=config.loss_config(),
        freeze_at=config.freeze_at,
        device=device,
    )


class _StepLog:
    """Rank 0's JSONL log, one line per step: ``step``, each loss, ``loss`` (their sum), ``lr``, ``images_per_second``
    (global batch over the step's wall time, data loading included). A resumed run first drops the lines of steps
    it is about to redo."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.started = 0.0
        self.pending: dict[str, Any] | None = None

    def resume_at(self, step: int) -> None:
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        atomic_write_text(self.path, "".join(line + "\n" for line in lines if json.loads(line)["step"] < step))

    def begin(self) -> None:
        self.started, self.pending = time.perf_counter(), None

    def record(self, line: dict[str, Any]) -> None:
        self.pending = line

    def finish(self, images: int) -> None:
        if not self.enabled or self.pending is None:
            return
        seconds = time.perf_counter() - self.started
        line = {**self.pending, "images_per_second": round(images / seconds, 3) if seconds > 0 else None}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        self.pending = None


def pretrain(config: PretrainConfig, progress: bool = True, stop_after: int | None = None) -> TrainingRun:
    """Train (or resume) the run in ``config.output_dir``; when finished, rank 0 writes the student to
    ``model.safetensors`` (a `RegionCLIP`) and the official layout to ``model_final.pth``."""
    device = init_distributed()
    rank, world_size = get_rank(), get_world_size()
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} does not split over {world_size} ranks")
    output = Path(config.output_dir)
    main = is_main_process()
    if main:
        output.mkdir(parents=True, exist_ok=True)
        config.to_yaml(output / "config.yaml")
    barrier()
    model = build_model(config, device)
    if main and model.load_report is not None:
        atomic_write_text(output / "load_report.txt", model.load_report.summary() + "\n")
    source = caption_source(config)
    plan = StepPlan(config.batch_size, config.seed, rank, world_size)
    transform = config.transform()
    wrapped = wrap_model(model, device)
    optimizer = build_optimizer(model, "sgd", config.lr, config.weight_decay, momentum=config.momentum)
    schedule = config.schedule()
    log = _StepLog(output / LOG_FILE, main)
    stream: dict[str, Any] = {"batches": None, "next_step": None}

    def step_fn(step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        if stream["next_step"] != step:  # first step of this call (fresh or resumed): open the data at this step
            stream["batches"] = iter(caption_loader(
                source, plan, transform, start_step=step, num_steps=config.steps - step,
                num_workers=config.num_workers, shuffle_buffer=config.shuffle_buffer,
            ))
            log.resume_at(step)
        log.begin()
        batch = next(stream["batches"])
        stream["next_step"] = step + 1
        # region sampling differs per rank (its own images); flips and captions came with the batch
        losses = wrapped(batch, None, None, config.global_box, rank_generator(config.seed, step))
        total = sum(losses.values())
        record = {name: round(float(losses[name].detach()), 6) for name in LOSS_NAMES}
        log.record({"step": step, **record, "loss": round(float(total.detach()), 6), "lr": schedule(step)})
        return total, record

    run = run_training(
        wrapped, optimizer, config, step_fn, output / "checkpoints", "pretrain",
        schedule=schedule, progress=progress, stop_after=stop_after,
        clip_gradients=GradientClipping("per_parameter", config.grad_clip) if config.grad_clip else None,
        autocast=autocast_dtype(config.precision, device),
        after_step=lambda: log.finish(config.batch_size),
        postfix=lambda r: {k.split("_")[0]: f"{v:.3f}" for k, v in r.items()},
    )
    if run.finished and main:
        trained = unwrap_model(run.module)
        trained.save_pretrained(output / STUDENT_FILE)
        trained.save_official(output / OFFICIAL_FILE, {"iteration": run.step})
        write_json(output / "training.json", {"losses": run.losses, "seconds": run.seconds})
    barrier()
    return run


def main(argv: list[str] | None = None) -> None:
    launch_from_yaml("python -m regionclip.pretrain", __doc__.splitlines()[0], PretrainConfig, pretrain, argv)


if __name__ == "__main__":
    main()
