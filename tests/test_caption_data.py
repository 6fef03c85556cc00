"""Caption data for pretraining: determinism by (seed, rank, step), the rank-shard union, real webdataset shards."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from regionclip.data.captions import (
    CaptionShardStream,
    CocoCaptionPairs,
    StepBatchSampler,
    StepPlan,
    caption_loader,
    choose_caption,
    sample_generator,
    shard_record,
)
from regionclip.data.pretrain_images import PretrainTransform

KEEP_SIZE = PretrainTransform(min_size=None)  # no resizing: the tests look at keys, captions and flips


def _png(index: int) -> bytes:
    array = np.full((6 + index % 3, 8 + index % 5, 3), index * 7 % 256, dtype=np.uint8)
    array[0, 0] = (255, 0, 0)  # marks the left edge, so a flip is visible in the pixels
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def shards(tmp_path):
    """4 real .tar shards of 6 samples, img2dataset style: .png + .txt + .json ('caption'), one shard txt-only."""
    paths = []
    for shard in range(4):
        path = tmp_path / f"{shard:05d}.tar"
        with wds.TarWriter(str(path), encoder=False) as writer:
            for i in range(6):
                index = shard * 6 + i
                sample = {"__key__": f"{index:05d}", "png": _png(index), "txt": f"caption {index}".encode()}
                if shard != 3:
                    sample["json"] = json.dumps({"caption": f"caption {index}", "url": "x", "status": "success"}).encode()
                writer.write(sample)
        paths.append(str(path))
    return paths


def _batches(loader) -> list:
    return [batch for batch in loader]


def _summary(batch) -> list[tuple]:
    return [
        (key, caption, flipped, position, image_size)
        for key, caption, flipped, position, image_size in zip(
            batch.keys, batch.captions, batch.flipped, batch.positions, batch.image_sizes
        )
    ]


def test_shard_stream_union_of_ranks_is_the_single_process_batch_and_workers_do_not_matter(shards):
    single = _batches(caption_loader(shards, StepPlan(4, seed=3), KEEP_SIZE, num_steps=8, shuffle_buffer=3))
    assert [b.positions for b in single] == [list(range(4 * s, 4 * s + 4)) for s in range(8)]
    ranks = [
        _batches(caption_loader(shards, StepPlan(4, seed=3, rank=r, world_size=2), KEEP_SIZE, num_steps=8,
                                shuffle_buffer=3, num_workers=2 if r else 0))
        for r in range(2)
    ]
    for step, batch in enumerate(single):
        joined = _summary(ranks[0][step]) + _summary(ranks[1][step])
        assert joined == _summary(batch)
        for i in range(4):
            rank, local = divmod(i, 2)
            h, w = batch.image_sizes[i]
            assert torch.equal(ranks[rank][step].images[local, :, :h, :w], batch.images[i, :, :h, :w])
    # each slot reads one whole shard per epoch here (4 shards, 4 slots): 6 steps = every sample exactly once
    keys = Counter(k for batch in single[:6] for k in batch.keys)
    assert sorted(keys) == [f"{i:05d}" for i in range(24)] and set(keys.values()) == {1}
    slot_orders = [[batch.keys[j] for batch in single[:6]] for j in range(4)]
    assert any(order != sorted(order) for order in slot_orders)  # the buffer shuffles within a shard
    unshuffled = _batches(caption_loader(shards, StepPlan(4, seed=3), KEEP_SIZE, num_steps=6, shuffle_buffer=1))
    for j in range(4):  # a one-record buffer keeps each shard's file order
        order = [int(batch.keys[j]) for batch in unshuffled]
        assert order == list(range(order[0], order[0] + 6)) and order[0] % 6 == 0
    again = _batches(caption_loader(shards, StepPlan(4, seed=3), KEEP_SIZE, num_steps=8, shuffle_buffer=3))
    assert [_summary(b) for b in again] == [_summary(b) for b in single]
    other_seed = _batches(caption_loader(shards, StepPlan(4, seed=4), KEEP_SIZE, num_steps=8, shuffle_buffer=3))
    assert [_summary(b) for b in other_seed] != [_summary(b) for b in single]


def test_shard_stream_resumes_at_a_step(shards):
    full = _batches(caption_loader(shards, StepPlan(2, seed=1), KEEP_SIZE, num_steps=20, shuffle_buffer=4))
    resumed = _batches(caption_loader(shards, StepPlan(2, seed=1), KEEP_SIZE, start_step=13, num_steps=7,
                                      shuffle_buffer=4, num_workers=2))
    assert [_summary(b) for b in resumed] == [_summary(b) for b in full[13:]]
    assert all(torch.equal(a.images, b.images) for a, b in zip(resumed, full[13:]))


def test_fewer_shards_than_slots_are_read_in_parts(shards):
    stream = CaptionShardStream(shards[:2], StepPlan(5, seed=0), KEEP_SIZE, shuffle_buffer=2, num_steps=2)
    assert stream.parts == 3  # 2 shards x 3 parts = 6 virtual shards for 5 slots
    dealt = [v for slot in range(5) for v in stream.virtual_shards(slot, epoch=0)]
    assert sorted(dealt) == [(s, p) for s in range(2) for p in range(3)]
    # slot 0's first epoch is exactly the records of its virtual shards (record i of shard s is in part i mod 3),
    # shuffled; its second epoch follows
    for slot in range(5):
        expected = sorted(f"{6 * s + i:05d}" for s, p in stream.virtual_shards(slot, 0) for i in range(6) if i % 3 == p)
        stream_keys = [r.key for r in _take(stream.slot_records(slot), len(expected) + 1)]
        assert sorted(stream_keys[:-1]) == expected
        second = {f"{6 * s + i:05d}" for s, p in stream.virtual_shards(slot, 1) for i in range(6) if i % 3 == p}
        assert stream_keys[-1] in second


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_shard_samples_read_captions_from_json_then_txt():
    png = _png(0)
    assert shard_record({"__key__": "a", "jpg": png, "json": b'{"caption": "from json"}', "txt": b"t"}).captions == [
        "from json"
    ]
    world_style = {"__key__": "b", "jpg": png, "json": b'{"captions": ["one", "two"]}', "txt": b"one"}
    assert shard_record(world_style).captions == ["one", "two"]
    assert shard_record({"__key__": "c", "png": png, "txt": b"only txt"}).captions == ["only txt"]
    with pytest.raises(ValueError, match="no image"):
        shard_record({"__key__": "d", "txt": b"x", "__url__": "s.tar"})
    with pytest.raises(ValueError, match="no caption"):
        shard_record({"__key__": "e", "jpg": png, "json": b'{"url": "x"}'})


@pytest.fixture()
def coco_captions(tmp_path):
    images, annotations = [], []
    for index in range(10):
        Image.open(io.BytesIO(_png(index))).save(tmp_path / f"{index}.png")
        images.append({"id": 100 + index, "file_name": f"{index}.png", "width": 8, "height": 6})
        for c in range(index % 3 + 1 if index != 9 else 0):  # image 109 has no caption
            annotations.append({"id": len(annotations), "image_id": 100 + index, "caption": f"img {index} cap {c}"})
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return CocoCaptionPairs(path, tmp_path)


def test_coco_captions_epochs_ranks_and_workers(coco_captions):
    assert len(coco_captions) == 9  # the image without captions is left out
    # 9 records, batch 3: three steps are one epoch, every record exactly once
    single = _batches(caption_loader(coco_captions, StepPlan(3, seed=7), KEEP_SIZE, num_steps=6))
    epoch0 = [k for b in single[:3] for k in b.keys]
    assert sorted(epoch0) == sorted(str(100 + i) for i in range(9))
    assert [k for b in single[3:] for k in b.keys] != epoch0  # a new permutation per epoch
    for batch in single:
        for key, caption in zip(batch.keys, batch.captions):
            assert caption.startswith(f"img {int(key) - 100} cap ")
    ranks = [
        _batches(caption_loader(coco_captions, StepPlan(3, seed=7, rank=r, world_size=3), KEEP_SIZE, num_steps=6,
                                num_workers=2 if r == 1 else 0))
        for r in range(3)
    ]
    for step, batch in enumerate(single):
        assert sum((_summary(ranks[r][step]) for r in range(3)), []) == _summary(batch)
        assert torch.equal(torch.cat([ranks[r][step].images[:, :, :6, :8] for r in range(3)]), batch.images[:, :, :6, :8])
    resumed = _batches(caption_loader(coco_captions, StepPlan(3, seed=7), KEEP_SIZE, start_step=4, num_steps=2))
    assert [_summary(b) for b in resumed] == [_summary(b) for b in single[4:]]


def test_a_sample_is_a_function_of_seed_and_position(coco_captions):
    sampler = StepBatchSampler(len(coco_captions), StepPlan(3, seed=7))
    position = 5
    index = sampler.record_index(position)
    key, image, captions = coco_captions.record(index)
    generator = sample_generator(7, position)
    caption = choose_caption(captions, generator)
    flipped = bool(torch.rand((), generator=generator) < 0.5)
    batch = next(iter(caption_loader(coco_captions, StepPlan(3, seed=7), KEEP_SIZE, start_step=1, num_steps=1)))
    assert (batch.keys[2], batch.captions[2], batch.flipped[2], batch.positions[2]) == (key, caption, flipped, 5)
    replay = sample_generator(7, position)
    choose_caption(captions, replay)  # the caption draw comes first, then the transform's flip draw
    expected = KEEP_SIZE(image, replay)
    h, w = batch.image_sizes[2]
    assert expected.flipped == flipped and expected.size == (h, w)
    assert torch.equal(batch.images[2, :, :h, :w], expected.pixels)


def test_world_caption_split_in_memory(tiny_world):
    from regionclip.data.captions import SplitCaptionPairs
    from regionclip.world.data import load_split

    world = tiny_world
    split = load_split(world, "pretrain")
    in_memory, from_files = SplitCaptionPairs(split), CocoCaptionPairs.from_world(world, "pretrain")
    assert len(in_memory) == len(from_files) == len(split)
    plan = StepPlan(4, seed=2)
    a = next(iter(caption_loader(in_memory, plan, PretrainTransform(min_size=None), num_steps=1)))
    b = next(iter(caption_loader(from_files, plan, PretrainTransform(min_size=None), num_steps=1)))
    assert _summary(a) == _summary(b) and torch.equal(a.images, b.images)  # decoded once vs from the JPEG files
    shard_batch = next(iter(caption_loader(world.shard_pattern, plan, PretrainTransform(min_size=None), num_steps=1)))
    assert len(shard_batch) == 4 and all(c in sum(split.captions, []) for c in shard_batch.captions)


def test_bad_plans_raise():
    with pytest.raises(ValueError, match="divisible"):
        StepPlan(5, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        StepPlan(4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="no shard"):
        caption_loader([], StepPlan(2))
