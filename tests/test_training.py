"""Training on the embedded world: metrics on hand-made inputs, schedules, checkpoints, short teacher / RPN runs
(loss decreases), exact resume, caching, and loading trained weights like released ones."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from regionclip import RegionCLIP
from regionclip.synthetic import WorldConfig
from regionclip.engine import checkpointing
from regionclip.engine.caching import cached_training
from regionclip.engine.loop import TrainingRun, batch_indices, step_generator
from regionclip.evaluation.proposal_recall import proposal_hits, proposal_recall
from regionclip.evaluation.retrieval import retrieval_chance, retrieval_recall_at_1, topk_accuracy
from regionclip.modeling.text_encoder import encode_text_trimmed
from regionclip.world import rpn as rpn_training
from regionclip.world.data import load_split
from regionclip.world.rpn import RPNTrainConfig, evaluate_rpn, get_or_train_rpn, train_rpn, world_anchor_sizes
from regionclip.world.teacher import (
    TeacherTrainConfig,
    TrainedTeacher,
    build_teacher,
    clip_to_regionclip,
    crop_sources,
    evaluate_teacher,
    get_or_train_teacher,
    image_embeddings,
    mirror_caption,
    normalize_pixels,
    random_resized_crops,
    resize_images,
    to_grayscale,
    train_teacher,
)


pytestmark = pytest.mark.usefixtures("single_torch_thread")



@pytest.fixture(scope="module")
def pretrain(tiny_world):
    return load_split(tiny_world, "pretrain")


@pytest.fixture(scope="module")
def det_train(tiny_world):
    return load_split(tiny_world, "det_train")


@pytest.fixture(scope="module")
def val(tiny_world):
    return load_split(tiny_world, "val")


# ---- metrics on hand-made inputs -------------------------------------------------------------------


def test_retrieval_recall_on_constructed_similarity():
    # 3 images, 4 captions; captions 0 and 1 describe image 0, caption 2 image 1, caption 3 image 2.
    owners = [0, 0, 1, 2]
    similarity = torch.tensor(
        [
            [0.1, 0.9, 0.2, 0.0],  # image 0 → caption 1 (its own): hit
            [0.0, 0.3, 0.4, 0.8],  # image 1 → caption 3 (image 2's): miss
            [0.2, 0.1, 0.1, 0.95],  # image 2 → caption 3: hit
        ]
    )
    recall = retrieval_recall_at_1(similarity, owners)
    assert recall["image_to_text"] == pytest.approx(2 / 3)
    # caption 0 → image 2 (0.2 beats 0.1 and 0.0): miss; 1 → image 0: hit; 2 → image 1: hit; 3 → image 2: hit
    assert recall["text_to_image"] == pytest.approx(3 / 4)
    chance = retrieval_chance(owners, 3)
    assert chance["image_to_text"] == pytest.approx((2 / 4 + 1 / 4 + 1 / 4) / 3)
    assert chance["text_to_image"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        retrieval_recall_at_1(similarity, [0, 1, 2])  # one owner short
    with pytest.raises(ValueError):
        retrieval_recall_at_1(similarity, [0, 0, 1, 3])  # image 3 does not exist


def test_topk_accuracy():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.4, 0.35, 0.25]])
    targets = [0, 1, 2]
    assert topk_accuracy(logits, targets, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, targets, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, targets, 3) == pytest.approx(1.0)


def test_proposal_recall_on_hand_boxes():
    gts = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]]), torch.tensor([[0.0, 0.0, 8.0, 8.0]])]
    proposals = [
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 40.0]]),  # IoU 1, then IoU exactly 0.5
        torch.tensor([[4.0, 0.0, 12.0, 8.0], [0.0, 0.0, 8.0, 8.0]]),  # IoU 1/3 first, exact box second
    ]
    hits = proposal_hits(proposals, gts, top_n=2)
    assert hits[0].tolist() == [True, True] and hits[1].tolist() == [True]
    assert proposal_recall(proposals, gts, top_n=2) == pytest.approx(1.0)
    assert proposal_recall(proposals, gts, top_n=1) == pytest.approx(1 / 3)  # only the first box of image 0
    assert proposal_recall(proposals, gts, top_n=2, iou_threshold=0.51) == pytest.approx(2 / 3)
    keep = [torch.tensor([False, True]), torch.tensor([True])]
    assert proposal_recall(proposals, gts, top_n=1, keep=keep) == pytest.approx(0.0)
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    assert proposal_recall(empty, gts, top_n=5) == 0.0
    assert math.isnan(proposal_recall(proposals, [torch.zeros(0, 4), torch.zeros(0, 4)], top_n=1))


# ---- schedule, sampling, augmentation, text trimming ---------------------------------------------------


def test_learning_rate_warmup_and_cosine():
    learning_rate = TeacherTrainConfig(model="tiny", steps=12, lr=1e-3, warmup_steps=4, min_lr_ratio=0.1).schedule()
    assert [learning_rate(s) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert learning_rate(8) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half-way through the cosine
    assert learning_rate(12) == pytest.approx(1e-4)


def test_batches_cover_each_epoch_once_and_repeat():
    first = [batch_indices(10, 3, seed=5, step=s) for s in range(3)]  # 3 batches per epoch, 1 sample dropped
    flat = torch.cat(first).tolist()
    assert len(set(flat)) == 9
    assert torch.equal(batch_indices(10, 3, seed=5, step=1), first[1])
    assert not torch.equal(batch_indices(10, 3, seed=5, step=3), first[0])  # a new permutation next epoch
    with pytest.raises(ValueError):
        batch_indices(2, 3, seed=0, step=0)


def test_mirror_caption_swaps_sides_only():
    assert mirror_caption("a cat to the left of a car") == "a cat to the right of a car"
    assert mirror_caption("right of the left tree") == "left of the right tree"
    assert mirror_caption("leftover bright things") == "leftover bright things"


def test_full_crop_equals_resize():
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    crops = random_resized_crops(images, 32, (1.0, 1.0), (1.0, 1.0), step_generator(0, 0))
    assert torch.allclose(crops, resize_images(images, 32))
    varied = random_resized_crops(images, 32, (0.3, 0.5), (0.75, 1.33), step_generator(0, 1))
    assert varied.shape == (3, 3, 32, 32) and not torch.allclose(varied, crops)


def test_crop_sources_keep_every_crop_at_input_resolution():
    images = torch.randint(0, 256, (5, 3, 160, 160), dtype=torch.uint8)
    sources = crop_sources(images, 64, 0.7, batch_size=2)
    assert sources.dtype == torch.uint8 and sources.shape == (5, 3, 77, 77)  # ceil(64 / sqrt(0.7)) = 77
    assert torch.equal(sources, resize_images(images, 77).round().to(torch.uint8))
    assert crop_sources(images, 160, 0.7) is images  # already no larger than needed: used as is


def test_grayscale_uses_luma_weights():
    pixels = torch.zeros(2, 3, 1, 1)
    pixels[0, :, 0, 0] = torch.tensor([255.0, 0.0, 0.0])
    pixels[1, :, 0, 0] = torch.tensor([10.0, 20.0, 30.0])
    gray = to_grayscale(pixels)
    assert gray[0, :, 0, 0].tolist() == pytest.approx([0.299 * 255] * 3)
    assert gray[1, :, 0, 0].tolist() == pytest.approx([0.299 * 10 + 0.587 * 20 + 0.114 * 30] * 3)


def test_trimmed_text_encoding_equals_full_context():
    from open_clip.tokenizer import SimpleTokenizer

    clip = build_teacher(TeacherTrainConfig(model="tiny")).eval()
    tokens = SimpleTokenizer(context_length=77)(["a red car", "two striped fish to the left of a huge umbrella"])
    with torch.no_grad():
        assert torch.allclose(encode_text_trimmed(clip, tokens), clip.encode_text(tokens), atol=1e-5)


# ---- checkpoints ------------------------------------------------------------------------------------


def test_checkpoints_are_atomic_pruned_and_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    for step in (1, 2, 3):
        checkpointing.save_checkpoint(tmp_path, step, model, optimizer, {"losses": [float(step)]}, keep=2)
    (tmp_path / ".tmp-step-00000004-x").mkdir()  # an interrupted write: never picked up
    assert [s for s, _ in checkpointing.list_checkpoints(tmp_path)] == [2, 3]
    clone = torch.nn.Linear(3, 2)
    clone_optimizer = torch.optim.AdamW(clone.parameters(), lr=0.1)
    state = checkpointing.resume_latest(tmp_path, clone, clone_optimizer)
    assert state["step"] == 3 and state["losses"] == [3.0]
    assert torch.equal(clone.weight, model.weight)
    saved = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(clone_optimizer.state_dict()["state"][0]["exp_avg"], saved)
    assert checkpointing.resume_latest(tmp_path / "none", clone) is None


def test_cached_training_trains_once_and_again_when_an_output_is_lost(tmp_path):
    calls = []
    weights = tmp_path / "run" / "weights.bin"

    def train(checkpoint_dir):
        calls.append(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True)  # what run_training leaves behind
        return TrainingRun(torch.nn.Linear(1, 1), [3.0, 2.0], step=2, steps_run=2, finished=True, seconds=1.5)

    def save(run):
        weights.write_bytes(b"w")
        return {"extra": 7}

    description = {"training": {"steps": 2}, "world": "abc"}
    first = cached_training(tmp_path / "run", weights, description, train, save)
    assert first.trained_now and first.steps_run == 2 and len(calls) == 1
    assert first.record == {"losses": [3.0, 2.0], "seconds": 1.5, "training": {"steps": 2}, "world": "abc", "extra": 7}
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == description
    assert not (tmp_path / "run" / "checkpoints").exists()
    again = cached_training(tmp_path / "run", weights, description, train, save)
    assert not again.trained_now and again.record == first.record and len(calls) == 1
    weights.unlink()
    assert cached_training(tmp_path / "run", weights, description, train, save).trained_now and len(calls) == 2


def test_cached_training_checks_the_record_fields_before_training(tmp_path):
    calls = []

    def train(checkpoint_dir):
        calls.append(checkpoint_dir)
        raise AssertionError("must not train")

    with pytest.raises(TypeError, match="config"):  # a TrainedTeacher needs its training config
        cached_training(tmp_path / "run", tmp_path / "w.bin", {}, train, lambda run: {}, TrainedTeacher)
    assert calls == [] and not (tmp_path / "run").exists()


# ---- short training runs -------------------------------------------------------------------------------


def _mean(values):
    return sum(values) / len(values)


def test_teacher_loss_decreases(pretrain, tmp_path):
    config = TeacherTrainConfig(model="tiny", steps=24, batch_size=16, lr=2e-3, warmup_steps=2, checkpoint_every=100)
    run = train_teacher(pretrain, config, tmp_path, progress=False)
    assert run.finished and run.steps_run == 24 and len(run.losses) == 24
    assert _mean(run.losses[-4:]) < _mean(run.losses[:4]) - 0.3


def test_rpn_loss_decreases(det_train, tiny_world, tmp_path):
    config = RPNTrainConfig(steps=16, batch_size=8, width=8, lr=3e-3, warmup_steps=2, checkpoint_every=100)
    run = train_rpn(det_train, config, tiny_world.config, tmp_path, progress=False)
    totals = rpn_training.rpn_loss_total(run.losses)
    assert len(totals) == 16
    assert _mean(totals[-3:]) < 0.8 * _mean(totals[:3])


def test_teacher_resume_reproduces_uninterrupted_run(pretrain, tmp_path):
    config = TeacherTrainConfig(model="tiny", steps=4, batch_size=16, warmup_steps=1, checkpoint_every=1)
    whole = train_teacher(pretrain, config, tmp_path / "whole", progress=False)
    first = train_teacher(pretrain, config, tmp_path / "split", progress=False, stop_after=2)
    assert not first.finished and first.step == 2
    resumed = train_teacher(pretrain, config, tmp_path / "split", progress=False)
    assert resumed.steps_run == 2 and resumed.finished
    assert resumed.losses == whole.losses
    for key, value in whole.module.state_dict().items():
        assert torch.equal(value, resumed.module.state_dict()[key]), key


def test_bf16_teacher_training_runs_under_autocast_with_fp32_weights(pretrain, tmp_path):
    fp32 = TeacherTrainConfig(model="tiny", steps=2, batch_size=16, warmup_steps=1)
    bf16 = TeacherTrainConfig(model="tiny", steps=2, batch_size=16, warmup_steps=1, precision="bf16")
    exact = train_teacher(pretrain, fp32, tmp_path / "fp32", progress=False)
    fast = train_teacher(pretrain, bf16, tmp_path / "bf16", progress=False)
    assert all(p.dtype == torch.float32 for p in fast.module.parameters())
    # same first batch, bf16 arithmetic: the first loss moves by rounding only, not more
    assert fast.losses[0] != exact.losses[0] and abs(fast.losses[0] - exact.losses[0]) < 0.05 * exact.losses[0]
    assert bf16.cache_key("w") != fp32.cache_key("w")
    with pytest.raises(ValueError, match="fp16"):
        TeacherTrainConfig(model="tiny", precision="fp16")


def test_rpn_resume_reproduces_uninterrupted_run(det_train, tiny_world, tmp_path):
    config = RPNTrainConfig(steps=3, batch_size=4, width=8, warmup_steps=1, checkpoint_every=1)
    whole = train_rpn(det_train, config, tiny_world.config, tmp_path / "whole", progress=False)
    train_rpn(det_train, config, tiny_world.config, tmp_path / "split", progress=False, stop_after=1)
    resumed = train_rpn(det_train, config, tiny_world.config, tmp_path / "split", progress=False)
    assert resumed.steps_run == 2 and resumed.losses == whole.losses
    for key, value in whole.module.state_dict().items():
        assert torch.equal(value, resumed.module.state_dict()[key]), key


# ---- caching, weight formats, evaluation ------------------------------------------------------------


def test_cached_teacher_loads_like_released_weights(tiny_world, pretrain, val, tmp_path):
    config = TeacherTrainConfig(model="tiny", steps=3, batch_size=16, warmup_steps=1)
    trained = get_or_train_teacher(tiny_world, config, tmp_path, progress=False, data=pretrain)
    assert trained.trained_now and trained.steps_run == 3 and trained.weights.is_file()
    again = get_or_train_teacher(tiny_world, config, tmp_path, progress=False)
    assert not again.trained_now and again.steps_run == 0 and again.losses == trained.losses
    other_seed = TeacherTrainConfig(model="tiny", steps=3, batch_size=16, warmup_steps=1, seed=1)
    assert other_seed.cache_key(tiny_world.config.hash()) != config.cache_key(tiny_world.config.hash())

    model = RegionCLIP.from_pretrained(trained.weights, device="cpu")
    assert model.config.name == "tiny"
    assert not (trained.run_dir / "checkpoints").exists()  # removed once the final weights are written
    # The same config trains the same weights (deterministic), and the file reproduces them exactly.
    direct = train_teacher(pretrain, config, tmp_path / "direct", progress=False).module
    direct_model = clip_to_regionclip(direct, config.model_config())
    images = val.images[:4]
    assert torch.allclose(image_embeddings(model, images), image_embeddings(direct_model, images), atol=1e-6)


def test_teacher_image_embedding_matches_open_clip(pretrain):
    config = TeacherTrainConfig(model="tiny", steps=2, batch_size=16, warmup_steps=1)
    clip = build_teacher(config)
    clip.train()
    with torch.no_grad():  # move the BatchNorm statistics away from their initial values
        clip.encode_image(normalize_pixels(resize_images(pretrain.images[:16], 64)))
    clip.eval()
    model = clip_to_regionclip(clip, config.model_config())
    images = pretrain.images[:3]
    with torch.no_grad():
        reference = F.normalize(clip.encode_image(normalize_pixels(resize_images(images, 64))), dim=-1)
    assert torch.allclose(image_embeddings(model, images), reference, atol=1e-5)


def test_evaluate_teacher_counts_everything(val):
    config = TeacherTrainConfig(model="tiny")
    model = clip_to_regionclip(build_teacher(config).eval(), config.model_config())
    report = evaluate_teacher(model, val)
    assert report.num_images == len(val) == 52
    assert report.num_regions == sum(len(b) for b in val.boxes)
    assert report.num_captions == sum(len(c) for c in val.captions)
    assert report.num_classes == 52 and report.chance == pytest.approx(1 / 52)
    # each accuracy is a whole number of hits: over the images (every val image holds an object) / the regions
    assert all(len(labels) for labels in val.labels)
    for value, count in ((report.image_top1, 52), (report.image_top5, 52),
                         (report.region_top1, report.num_regions), (report.region_top3, report.num_regions)):
        hits = value * count
        assert hits == pytest.approx(round(hits), abs=1e-4) and 0 <= round(hits) <= count
    assert report.image_top1 <= report.image_top5 and report.region_top1 <= report.region_top3
    # the largest object is in the image, so a correct top-1 is also a present-object hit
    assert report.image_top1 <= report.image_present_top1 <= 1.0
    with_objects = [labels for labels in val.labels if len(labels)]
    expected_chance = sum(len(set(labels.tolist())) for labels in with_objects) / len(with_objects) / 52
    assert report.image_present_chance == pytest.approx(expected_chance)


def test_rpn_recall_grouping_with_perfect_proposals(val, tiny_world, monkeypatch):
    # Proposals equal to the ground truth: every group is fully recalled, and counts follow the categories.
    monkeypatch.setattr(rpn_training, "propose", lambda rpn, images, top_n, nms_thresh=None: list(val.boxes))
    network = rpn_training.build_rpn(RPNTrainConfig(width=8), tiny_world.config)
    figures = evaluate_rpn(network, val)
    novel = val.category_ids_of("novel")
    num_novel = sum(int(c) in novel for labels in val.labels for c in labels)
    assert figures["num_boxes"]["novel"] == num_novel > 0
    assert figures["num_boxes"]["all"] == sum(len(b) for b in val.boxes)
    for group in ("base", "novel", "all"):
        assert figures["recall"][group] == {100: 1.0, 300: 1.0}


def test_rpn_weights_round_trip_through_detectron2_format(tiny_world, det_train, tmp_path):
    config = RPNTrainConfig(steps=2, batch_size=4, width=8, warmup_steps=1)
    trained = get_or_train_rpn(tiny_world, config, tmp_path, progress=False, data=det_train)
    assert trained.trained_now and not get_or_train_rpn(tiny_world, config, tmp_path, progress=False).trained_now
    loaded = trained.load()
    assert loaded.frozen and loaded.config.anchor_sizes == world_anchor_sizes(tiny_world.config)
    payload = torch.load(trained.weights, weights_only=True)
    assert any(k.startswith("proposal_generator.rpn_head.") for k in payload["model"])
    record = json.loads((trained.run_dir / "training.json").read_text())
    assert len(record["losses"]) == 2


def test_world_anchor_sizes_span_object_sizes():
    sizes = [s[0] for s in world_anchor_sizes(WorldConfig.default())]
    assert sizes == [15.0, 23.0, 35.0, 53.0, 80.0]  # 0.8 * 0.12 * 160 … 0.5 * 160, geometric


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError):
        TeacherTrainConfig(model="nope")
    with pytest.raises(ValueError):
        TeacherTrainConfig(image_size=100)  # not a multiple of 32
    with pytest.raises(ValueError):
        TeacherTrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="grayscale_prob"):
        TeacherTrainConfig(grayscale_prob=1.5)
    with pytest.raises(ValueError):
        RPNTrainConfig(width=0)
    with pytest.raises(ValueError):
        TeacherTrainConfig.from_dict({"steps": 3, "typo": 1})


def test_resume_refuses_a_different_config(pretrain, tmp_path):
    config = TeacherTrainConfig(model="tiny", steps=2, batch_size=16, warmup_steps=1)
    train_teacher(pretrain, config, tmp_path, progress=False, stop_after=1)
    changed = TeacherTrainConfig(model="tiny", steps=2, batch_size=16, warmup_steps=1, lr=5e-4)
    with pytest.raises(ValueError, match="lr"):
        train_teacher(pretrain, changed, tmp_path, progress=False)
    # only when to checkpoint differs: resumes
    same = TeacherTrainConfig(model="tiny", steps=2, batch_size=16, warmup_steps=1, checkpoint_every=7)
    assert train_teacher(pretrain, same, tmp_path, progress=False).steps_run == 1
