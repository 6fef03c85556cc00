"""Writing (and caching) a whole synthetic world on disk.

Layout of ``root/<config-hash>/``::

    config.yaml                          the WorldConfig
    images/<split>/<image_id:012d>.jpg   JPEG, fixed quality, 4:4:4
    annotations/instances_<split>.json   COCO instances (+ LVIS-like category fields)
    annotations/captions_<split>.json    COCO captions (1-3 per image)
    shards/pretrain-000000.tar ...       webdataset shards of the pretrain split (.jpg/.txt/.json)
    COMPLETE                             completion marker, written last

The directory is produced in a temporary sibling and renamed into place, so a directory with the
final name is always complete; ``generate_world`` returns at once when the marker exists.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..utils import progress as progress_bar
from .categories import CATEGORIES
from .config import GENERATOR_VERSION, SPLITS, WorldConfig, check_split
from .render import encode_jpeg, image_id, render_image

MARKER = "COMPLETE"
SHARD_PREFIX = "pretrain-"
_INLINE_LIMIT = 32  # below this many images a process pool costs more than it saves


@dataclass(frozen=True)
class World:
    """A generated world on disk: paths and loaders."""

    root: Path
    config: WorldConfig

    @classmethod
    def open(cls, root: str | Path) -> "World":
        """Open an existing, complete world directory (``root/<config-hash>``)."""
        root = Path(root).expanduser()
        if not (root / MARKER).exists():
            raise FileNotFoundError(f"{root} is not a complete synthetic world (no {MARKER} marker)")
        return cls(root, WorldConfig.from_yaml(root / "config.yaml"))

    @property
    def marker(self) -> Path:
        """The completion marker file."""
        return self.root / MARKER

    def images_dir(self, split: str) -> Path:
        """Directory of the JPEG files of ``split`` (COCO ``file_name`` is relative to it)."""
        return self.root / "images" / check_split(split)

    def instances_json(self, split: str) -> Path:
        """COCO instances json of ``split``."""
        return self.root / "annotations" / f"instances_{check_split(split)}.json"

    def captions_json(self, split: str) -> Path:
        """COCO captions json of ``split``."""
        return self.root / "annotations" / f"captions_{check_split(split)}.json"

    @property
    def num_shards(self) -> int:
        """Number of webdataset shards of the pretrain split."""
        return max(1, math.ceil(self.config.num_pretrain / self.config.shard_size))

    @property
    def shard_paths(self) -> list[Path]:
        """Paths of the pretrain webdataset shards, in order."""
        return [self.root / "shards" / f"{SHARD_PREFIX}{i:06d}.tar" for i in range(self.num_shards)]

    @property
    def shard_pattern(self) -> str:
        """Brace pattern over all shards, as ``webdataset.WebDataset`` accepts it."""
        last = self.num_shards - 1
        if last == 0:
            return str(self.shard_paths[0])
        return str(self.root / "shards" / f"{SHARD_PREFIX}{{000000..{last:06d}}}.tar")

    def load_instances(self, split: str) -> dict[str, Any]:
        """Parsed COCO instances json of ``split``."""
        return json.loads(self.instances_json(split).read_text(encoding="utf-8"))

    def load_captions(self, split: str) -> dict[str, Any]:
        """Parsed COCO captions json of ``split``."""
        return json.loads(self.captions_json(split).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# Per-image work (runs in worker processes)
# ------------------------------------------------------------------------------------------------

_WORKER_STATE: dict[str, Any] = {}


def _init_worker(config: WorldConfig, out: Path) -> None:
    _WORKER_STATE["config"] = config
    _WORKER_STATE["world"] = World(out, config)


def _render_task(task: tuple[str, int]) -> tuple[bytes, list[tuple[int, list[float], int]], list[str]]:
    """Render one image and write its JPEG (file creation is slow here, so workers share it).

    Returns the JPEG bytes for pretrain images (they also go into the shards, written by the parent;
    empty otherwise), the annotated objects as (category id, xywh, area), and the captions.
    """
    split, index = task
    config: WorldConfig = _WORKER_STATE["config"]
    world: World = _WORKER_STATE["world"]
    image, objects, captions = render_image(config, split, index)
    jpeg = encode_jpeg(image, config.jpeg_quality)
    (world.images_dir(split) / f"{image_id(split, index):012d}.jpg").write_bytes(jpeg)
    boxes = [(o.category_id, o.bbox_xywh, int(o.mask.sum())) for o in objects if o.annotated]
    return (jpeg if split == "pretrain" else b""), boxes, captions


def _results(config: WorldConfig, out: Path, tasks: list[tuple[str, int]], num_workers: int) -> Iterator[tuple]:
    """Render results in task order, in a pool when worthwhile (order and bytes never depend on it)."""
    if num_workers <= 1 or len(tasks) < _INLINE_LIMIT:
        _init_worker(config, out)
        yield from map(_render_task, tasks)
        return
    # fork is cheap and safe on Linux (workers only use numpy / PIL); elsewhere keep the default
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    chunksize = max(1, min(32, len(tasks) // (num_workers * 8)))
    with context.Pool(num_workers, initializer=_init_worker, initargs=(config, out)) as pool:
        yield from pool.imap(_render_task, tasks, chunksize=chunksize)


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def _category_entries(instance_counts: dict[int, int], image_counts: dict[int, int]) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "name": c.name,
            "synonyms": list(c.synonyms),
            "plural": c.plural,
            "frequency": c.frequency,
            "split": c.split,
            "image_count": image_counts.get(c.id, 0),
            "instance_count": instance_counts.get(c.id, 0),
        }
        for c in CATEGORIES
    ]


def _dump_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")


def _write_world(config: WorldConfig, out: Path, progress: bool, num_workers: int) -> None:
    import webdataset as wds  # deferred: it imports torch, which render-only users need not pay for

    (out / "annotations").mkdir(parents=True)
    (out / "shards").mkdir()
    config.to_yaml(out / "config.yaml")
    tasks = [(split, i) for split in SPLITS for i in range(config.num_images(split))]
    world = World(out, config)
    per_split: dict[str, dict[str, list]] = {s: {"images": [], "instances": [], "captions": []} for s in SPLITS}
    for split in SPLITS:
        world.images_dir(split).mkdir(parents=True)

    shard_writer = wds.ShardWriter(
        str(out / "shards" / f"{SHARD_PREFIX}%06d.tar"),
        maxcount=config.shard_size,
        verbose=0,
        encoder=False,
        mtime=0,  # fixed int metadata (a float adds a PAX header per entry) → byte-identical tar files
        user="regionclip",
        group="regionclip",
        mode=0o644,
    )
    bar = progress_bar(total=len(tasks), desc="synthetic world", unit="img", disable=not progress)
    try:
        for (split, index), (jpeg, boxes, captions) in zip(tasks, _results(config, out, tasks, num_workers)):
            img_id = image_id(split, index)
            file_name = f"{img_id:012d}.jpg"
            record = per_split[split]
            record["images"].append(
                {"id": img_id, "file_name": file_name, "width": config.image_size, "height": config.image_size}
            )
            for category_id, xywh, area in boxes:
                record["instances"].append(
                    {
                        "id": len(record["instances"]) + 1,
                        "image_id": img_id,
                        "category_id": category_id,
                        "bbox": xywh,
                        "area": float(area),
                        "iscrowd": 0,
                    }
                )
            for caption in captions:
                record["captions"].append({"id": len(record["captions"]) + 1, "image_id": img_id, "caption": caption})
            if split == "pretrain":
                shard_writer.write(
                    {
                        "__key__": f"{img_id:012d}",
                        "jpg": jpeg,
                        "txt": captions[0].encode("utf-8"),
                        "json": json.dumps({"image_id": img_id, "captions": captions}).encode("utf-8"),
                    }
                )
            bar.update(1)
    finally:
        bar.close()
        shard_writer.close()

    info = {"description": "regionclip synthetic world", "version": GENERATOR_VERSION, "config_hash": config.hash()}
    for split in SPLITS:
        record = per_split[split]
        instance_counts: dict[int, int] = {}
        image_sets: dict[int, set[int]] = {}
        for ann in record["instances"]:
            instance_counts[ann["category_id"]] = instance_counts.get(ann["category_id"], 0) + 1
            image_sets.setdefault(ann["category_id"], set()).add(ann["image_id"])
        categories = _category_entries(instance_counts, {k: len(v) for k, v in image_sets.items()})
        _dump_json(
            world.instances_json(split),
            {
                "info": {**info, "split": split},
                "licenses": [],
                "images": record["images"],
                "annotations": record["instances"],
                "categories": categories,
            },
        )
        _dump_json(
            world.captions_json(split),
            {"info": {**info, "split": split}, "licenses": [], "images": record["images"], "annotations": record["captions"]},
        )


def generate_world(
    config: WorldConfig, root: str | Path, progress: bool = True, num_workers: int | None = None
) -> World:
    """Generate the world of ``config`` under ``root/<config.hash()>/`` (or reuse it if complete).

    Args:
        config: what to generate; equal configs give byte-identical files.
        root: cache directory holding one sub-directory per config hash.
        progress: show a tqdm progress bar.
        num_workers: render processes (default ``os.cpu_count()``); never changes the output.
    """
    if not isinstance(config, WorldConfig):
        raise TypeError(f"config must be a WorldConfig, got {type(config).__name__}")
    root = Path(root).expanduser()
    final = root / config.hash()
    if (final / MARKER).exists():
        return World(final, config)
    workers = (os.cpu_count() or 1) if num_workers is None else int(num_workers)
    if workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the world is an ordinary shared directory
        _write_world(config, tmp, progress, workers)
        summary = {"config_hash": final.name, "version": GENERATOR_VERSION}
        summary.update({f"num_{s}": config.num_images(s) for s in SPLITS})
        (tmp / MARKER).write_text(json.dumps(summary, sort_keys=True) + "\n", encoding="utf-8")  # last file
        if final.exists() and not (final / MARKER).exists():
            shutil.rmtree(final)  # leftover of an interrupted non-atomic copy; never a complete world
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MARKER).exists():  # lost a race only if the winner finished
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return World(final, config)
