# Over 300 lines: the three caption sources share one determinism scheme (StepPlan, sample seeds), kept in one place.
"""Image–caption pairs for region–text pretraining, deterministic by (seed, rank, step).

Sources: webdataset shards as img2dataset writes them (``.jpg``/``.png``/... + ``.txt`` and/or ``.json`` with a
``caption`` field, or a ``captions`` list as the embedded world writes), COCO Captions json + image folder, and a
split of the embedded world held in memory. docs/pretraining-data.md ("Caption data") states the scheme; in short:

* Global step ``s`` has ``B`` slots; the sample in slot ``j`` has the global position ``g = s·B + j`` and is a
  function of ``(seed, g)`` alone (which record, which of its first five captions, whether it is flipped).
* Rank ``r`` of ``W`` takes the contiguous slots ``[r·B/W, (r+1)·B/W)``, so the ranks together hold exactly the
  single-process batch, in the same order.
* Indexable sources (COCO json, the world) read record ``perm_e[g mod N]`` with ``e = g div N`` and ``perm_e`` a
  permutation of the ``N`` records seeded by ``(seed, e)``: every record once per epoch.
* Shards cannot be indexed, so every slot reads its own stream: per slot-epoch ``e`` a seeded permutation of the
  shards (split into parts when there are fewer shards than slots) deals the shards round-robin to the slots, and a
  seeded shuffle buffer mixes each slot's records; slot ``j`` at step ``s`` takes the ``s``-th record of its stream.
* DataLoader workers split steps, not samples: worker ``w`` of ``k`` builds the batches of steps
  ``start + w, start + w + k, ...``, and the loader returns them in step order; the output does not depend on ``k``.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from .detection import image_file_name
from .images import ImageInput
from .pretrain_images import CaptionSample, PretrainTransform, collate_pretrain

MAX_CAPTIONS = 5  # the official dataset keeps the first five captions of an image and picks one at random
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
# Seed-sequence tags keep the random streams of different purposes independent.
_SAMPLE, _EPOCH_ORDER, _SHARD_ORDER, _SHUFFLE = 0, 1, 2, 3


def _seed_state(*entropy: int) -> int:
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, np.uint64)[0])


def sample_generator(seed: int, position: int) -> torch.Generator:
    """The torch generator of the sample at global position ``position``: draws its caption, then its flip."""
    return torch.Generator().manual_seed(_seed_state(seed, _SAMPLE, position))


def choose_caption(captions: Sequence[str], generator: torch.Generator) -> str:
    """One of the first `MAX_CAPTIONS` captions, uniformly (one ``randint`` draw)."""
    pool = list(captions)[:MAX_CAPTIONS]
    if not pool:
        raise ValueError("an image has no caption")
    return pool[int(torch.randint(len(pool), (), generator=generator))]


@dataclass(frozen=True)
class StepPlan:
    """Which global positions a rank handles at each step."""

    global_batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.global_batch_size < 1 or self.world_size < 1:
            raise ValueError(f"need a positive batch and world size, got {self.global_batch_size}, {self.world_size}")
        if self.global_batch_size % self.world_size:
            raise ValueError(f"global batch {self.global_batch_size} is not divisible by world size {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def per_rank(self) -> int:
        return self.global_batch_size // self.world_size

    @property
    def slots(self) -> range:
        """This rank's slots of the global batch."""
        return range(self.rank * self.per_rank, (self.rank + 1) * self.per_rank)

    def positions(self, step: int) -> list[int]:
        """Global positions of this rank's samples at ``step``."""
        return [step * self.global_batch_size + slot for slot in self.slots]


def _steps(start_step: int, num_steps: int | None) -> Iterator[int]:
    if start_step < 0 or (num_steps is not None and num_steps < 0):
        raise ValueError(f"need start_step >= 0 and num_steps >= 0, got {start_step}, {num_steps}")
    return iter(range(start_step, start_step + num_steps)) if num_steps is not None else count(start_step)


# ---- indexable sources ---------------------------------------------------------------------------------------


class CaptionPairs(Protocol):
    """An indexable collection of images with their captions."""

    def __len__(self) -> int: ...

    def record(self, index: int) -> tuple[str, ImageInput, list[str]]:
        """``(key, image, captions)`` of record ``index``."""
        ...


class CocoCaptionPairs:
    """COCO Captions json (``images`` + ``annotations`` with ``image_id`` / ``caption``) and its image folder.

    Records follow the json's ``images`` order; images without any caption are left out.
    """

    def __init__(self, captions_json: str | Path, image_dir: str | Path) -> None:
        path = Path(captions_json)
        if not path.is_file():
            raise FileNotFoundError(f"captions json not found: {path}")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise ValueError(f"{path}: not a COCO captions json (needs 'images' and 'annotations')")
        captions: dict[int, list[str]] = {}
        for ann in data["annotations"]:
            captions.setdefault(ann["image_id"], []).append(ann["caption"])
        self.image_dir = Path(image_dir)
        self.images = [(im["id"], image_file_name(im)) for im in data["images"] if im["id"] in captions]
        self.captions = captions
        if not self.images:
            raise ValueError(f"{path}: no image has a caption")

    @classmethod
    def from_world(cls, world: object, split: str = "pretrain") -> CocoCaptionPairs:
        """A split of the embedded world, read from its files (``world``: a `regionclip.synthetic.World`)."""
        return cls(world.captions_json(split), world.images_dir(split))  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.images)

    def record(self, index: int) -> tuple[str, ImageInput, list[str]]:
        image_id, file_name = self.images[index]
        return str(image_id), self.image_dir / file_name, self.captions[image_id]


class SplitCaptionPairs:
    """A world split decoded into memory (`regionclip.world.data.load_split`): no file access per sample."""

    def __init__(self, split: object) -> None:
        if getattr(split, "images", None) is None:
            raise ValueError("the split was loaded without pixels; use load_split(..., with_images=True)")
        self.split = split

    def __len__(self) -> int:
        return len(self.split)  # type: ignore[arg-type]

    def record(self, index: int) -> tuple[str, ImageInput, list[str]]:
        split = self.split
        return str(split.image_ids[index]), split.images[index], split.captions[index]  # type: ignore[attr-defined]


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's ``(position, record index)`` pairs, one list per step, for an indexable source."""

    def __init__(self, num_records: int, plan: StepPlan, start_step: int = 0, num_steps: int | None = None) -> None:
        if num_records < 1:
            raise ValueError("the caption source is empty")
        _steps(start_step, num_steps)  # validates
        self.num_records, self.plan, self.start_step, self.num_steps = num_records, plan, start_step, num_steps
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.int64)

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an endless sampler has no length")
        return self.num_steps

    def record_index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_records)
        if epoch != self._epoch:  # one permutation per epoch, kept while positions stay in it
            generator = torch.Generator().manual_seed(_seed_state(self.plan.seed, _EPOCH_ORDER, epoch))
            self._epoch, self._order = epoch, torch.randperm(self.num_records, generator=generator)
        return int(self._order[offset])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in _steps(self.start_step, self.num_steps):
            yield [(g, self.record_index(g)) for g in self.plan.positions(step)]


class CaptionPairDataset(Dataset):
    """Indexed by ``(position, record index)``: the record's image preprocessed and one caption, both drawn from
    `sample_generator` ``(seed, position)``."""

    def __init__(self, pairs: CaptionPairs, transform: PretrainTransform, seed: int) -> None:
        self.pairs, self.transform, self.seed = pairs, transform, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: tuple[int, int]) -> CaptionSample:
        position, index = item
        key, image, captions = self.pairs.record(index)
        generator = sample_generator(self.seed, position)
        caption = choose_caption(captions, generator)
        return CaptionSample(self.transform(image, generator), caption, key, position)


# ---- webdataset shards ---------------------------------------------------------------------------------------


@dataclass
class ShardRecord:
    """One undecoded shard sample."""

    key: str
    image_bytes: bytes
    captions: list[str]

    def decode(self) -> Image.Image:
        with Image.open(io.BytesIO(self.image_bytes)) as image:
            return image.convert("RGB")


def shard_record(sample: dict[str, object]) -> ShardRecord:
    """Image bytes and captions of a webdataset sample: ``json["captions"]`` (a list), else ``json["caption"]``,
    else the ``txt`` member."""
    key = str(sample.get("__key__"))
    where = f"sample {key!r} of {sample.get('__url__')}"
    image = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if not isinstance(image, bytes):
        raise ValueError(f"{where} has no image ({'/'.join(IMAGE_EXTENSIONS)} member)")
    captions: list[str] = []
    if isinstance(sample.get("json"), bytes):
        meta = json.loads(sample["json"])  # type: ignore[arg-type]
        if isinstance(meta.get("captions"), list):
            captions = [str(c) for c in meta["captions"]]
        elif isinstance(meta.get("caption"), str):
            captions = [meta["caption"]]
    if not captions and isinstance(sample.get("txt"), bytes):
        captions = [sample["txt"].decode("utf-8")]  # type: ignore[union-attr]
    if not any(c.strip() for c in captions):
        raise ValueError(f"{where} has no caption (json 'caption'/'captions' or a txt member)")
    return ShardRecord(key, image, captions)


def expand_shard_urls(urls: str | Path | Sequence[str | Path]) -> list[str]:
    """Brace patterns (``data/{00000..00009}.tar``) and lists, in the given order."""
    import webdataset as wds

    items = [urls] if isinstance(urls, (str, Path)) else list(urls)
    expanded = [u for item in items for u in wds.shardlists.expand_urls(str(item))]
    if not expanded:
        raise ValueError("no shard given")
    return expanded


def _read_shard(url: str) -> Iterator[ShardRecord]:
    import webdataset as wds

    for sample in wds.tariterators.tarfile_samples([{"url": url}]):
        yield shard_record(sample)


class CaptionShardStream(IterableDataset):
    """This rank's per-step sample lists from webdataset shards (see the module docstring for the scheme).

    ``shuffle_buffer``: records held per slot; a full buffer gives out a seeded random one for each record read,
    and is emptied in seeded random order at the end of each slot-epoch (epochs never mix). Records a worker does not
    need are read but not decoded, which is also how a resumed stream (``start_step``) catches up.
    """

    def __init__(
        self,
        urls: str | Path | Sequence[str | Path],
        plan: StepPlan,
        transform: PretrainTransform,
        *,
        shuffle_buffer: int = 1000,
        start_step: int = 0,
        num_steps: int | None = None,
    ) -> None:
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        _steps(start_step, num_steps)
        self.urls = expand_shard_urls(urls)
        self.plan, self.transform, self.shuffle_buffer = plan, transform, shuffle_buffer
        self.start_step, self.num_steps = start_step, num_steps
        # Fewer shards than slots: each shard is read as `parts` virtual shards (its records i ≡ p mod parts).
        self.parts = math.ceil(plan.global_batch_size / len(self.urls))

    def virtual_shards(self, slot: int, epoch: int) -> list[tuple[int, int]]:
        """``(shard index, part)`` pairs that ``slot`` reads in its ``epoch``, in order."""
        total = len(self.urls) * self.parts
        generator = torch.Generator().manual_seed(_seed_state(self.plan.seed, _SHARD_ORDER, epoch))
        order = torch.randperm(total, generator=generator).tolist()
        return [divmod(v, self.parts) for v in order[slot :: self.plan.global_batch_size]]

    def _epoch_records(self, slot: int, epoch: int) -> Iterator[ShardRecord]:
        rng = np.random.default_rng(np.random.SeedSequence([self.plan.seed, _SHUFFLE, slot, epoch]))
        buffer: list[ShardRecord] = []
        for shard, part in self.virtual_shards(slot, epoch):
            for i, record in enumerate(_read_shard(self.urls[shard])):
                if i % self.parts != part:
                    continue
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(record)
                    continue
                pick = int(rng.integers(len(buffer)))
                buffer[pick], record = record, buffer[pick]
                yield record
        for pick in rng.permutation(len(buffer)):
            yield buffer[int(pick)]

    def slot_records(self, slot: int) -> Iterator[ShardRecord]:
        """The endless record stream of ``slot``; its ``s``-th record belongs to step ``s``."""
        empty_epochs = 0
        for epoch in count():
            produced = False
            for record in self._epoch_records(slot, epoch):
                produced = True
                yield record
            empty_epochs = 0 if produced else empty_epochs + 1
            if empty_epochs > len(self.urls) * self.parts:
                raise ValueError(
                    f"slot {slot} found no sample in {empty_epochs} epochs: the shards hold too few samples for a "
                    f"global batch of {self.plan.global_batch_size}"
                )

    def __iter__(self) -> Iterator[list[CaptionSample]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        streams = {slot: self.slot_records(slot) for slot in self.plan.slots}
        for _ in range(self.start_step):  # catch up without decoding
            for stream in streams.values():
                next(stream)
        for offset, step in enumerate(_steps(self.start_step, self.num_steps)):
            records = {slot: next(stream) for slot, stream in streams.items()}
            if offset % workers != worker:
                continue
            samples = []
            for slot, record in records.items():
                position = step * self.plan.global_batch_size + slot
                generator = sample_generator(self.plan.seed, position)
                caption = choose_caption(record.captions, generator)
                samples.append(CaptionSample(self.transform(record.decode(), generator), caption, record.key, position))
            yield samples


# ---- one entry point -----------------------------------------------------------------------------------------


def caption_loader(
    source: CaptionPairs | str | Path | Sequence[str | Path],
    plan: StepPlan,
    transform: PretrainTransform | None = None,
    *,
    start_step: int = 0,
    num_steps: int | None = None,
    num_workers: int = 0,
    shuffle_buffer: int = 1000,
) -> DataLoader:
    """A DataLoader of `PretrainBatch` es for this rank, one per step from ``start_step`` (endless unless
    ``num_steps``). ``source``: an indexable `CaptionPairs` or webdataset shard path(s) / brace pattern(s)."""
    transform = transform or PretrainTransform()
    common = dict(num_workers=num_workers, collate_fn=collate_pretrain)
    if isinstance(source, (str, Path)) or (isinstance(source, Sequence) and not hasattr(source, "record")):
        stream = CaptionShardStream(
            source, plan, transform, shuffle_buffer=shuffle_buffer, start_step=start_step, num_steps=num_steps
        )
        return DataLoader(stream, batch_size=None, **common)
    sampler = StepBatchSampler(len(source), plan, start_step, num_steps)
    return DataLoader(CaptionPairDataset(source, transform, plan.seed), batch_sampler=sampler, **common)
