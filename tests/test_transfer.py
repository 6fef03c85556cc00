"""Open-vocabulary transfer: Fast R-CNN losses and RoI sampling by hand, official-layout checkpoints, box deltas at
test time, and a short fine-tune + evaluate run on a generated COCO-format dataset."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from regionclip import ModelConfig, OpenVocabularyDetector, RegionCLIP
from regionclip.checkpoints.detectron2_rpn import save_detectron2_rpn
from regionclip.cli import app
from regionclip.finetune import FinetuneConfig, finetune
from regionclip.finetune import main as finetune_main
from regionclip.modeling.box_regression import BoxCoder
from regionclip.modeling.matcher import match_by_iou
from regionclip.modeling.roi_heads import (
    RoIHeadConfig,
    SampledRoIs,
    classification_loss,
    fast_rcnn_losses,
    label_and_sample_proposals,
)
from regionclip.modeling.meta_arch import ProposalNetwork
from regionclip.modeling.proposal_generator import RPNConfig


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def softmax_row(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    return [e / sum(exps) for e in exps]


# ---- losses by hand -------------------------------------------------------------------------------------------
LOGITS = [[2.0, -1.0, 0.0], [0.5, 1.5, 0.0], [-3.0, 4.0, 0.0], [1.0, 1.0, 0.0]]  # K = 2, background logit last
LABELS = [0, 1, 2, 2]  # two foreground RoIs, two background (label K = 2)


def test_focal_scaled_loss_with_background_weight_by_hand():
    expected = []
    for row, label in zip(LOGITS, LABELS):
        p_t = softmax_row(row)[label]
        weight = 0.2 if label == 2 else 1.0
        expected.append(weight * -math.log(p_t) * (1 - p_t) ** 0.5)
    loss = classification_loss(torch.tensor(LOGITS), torch.tensor(LABELS), RoIHeadConfig())
    assert loss.item() == pytest.approx(sum(expected) / 4, rel=1e-6)  # plain mean over the RoIs, no alpha
    gamma2 = classification_loss(torch.tensor(LOGITS), torch.tensor(LABELS), RoIHeadConfig(focal_gamma=2.0))
    manual = [
        (0.2 if label == 2 else 1.0) * -math.log(softmax_row(row)[label]) * (1 - softmax_row(row)[label]) ** 2
        for row, label in zip(LOGITS, LABELS)
    ]
    assert gamma2.item() == pytest.approx(sum(manual) / 4, rel=1e-6)


def test_lvis_recipe_is_the_weighted_mean_cross_entropy():
    weights = [1.0 if label < 2 else 0.8 for label in LABELS]
    ce = [-math.log(softmax_row(row)[label]) for row, label in zip(LOGITS, LABELS)]
    expected = sum(w * c for w, c in zip(weights, ce)) / sum(weights)
    loss = classification_loss(torch.tensor(LOGITS), torch.tensor(LABELS), RoIHeadConfig.lvis())
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_focal_loss_of_a_certain_roi_has_a_finite_gradient():
    logits = torch.tensor([[60.0, -60.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)  # p_t == 1 in float32
    loss = classification_loss(logits, torch.tensor([0, 2]), RoIHeadConfig())
    loss.backward()
    assert torch.isfinite(logits.grad).all() and loss.item() == pytest.approx(0.2 * math.log(3) * (2 / 3) ** 0.5 / 2, rel=1e-6)


def test_box_loss_by_hand_deltas_10_10_5_5():
    # proposal 10x10 centred (5, 5) → GT 12x10 centred (7, 7): deltas (10*2/10, 10*2/10, 5*log 1.2, 5*log 1)
    rois = [
        SampledRoIs(
            boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 5.0, 5.0]]),
            labels=torch.tensor([1, 2, 2]),
            matched_boxes=torch.tensor([[1.0, 2.0, 13.0, 12.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]),
        ),
        SampledRoIs(torch.tensor([[0.0, 0.0, 4.0, 8.0]]), torch.tensor([0]), torch.tensor([[0.0, 0.0, 4.0, 8.0]])),
    ]
    predicted = torch.zeros(4, 4)
    predicted[3] = torch.tensor([0.5, -0.25, 0.0, 1.0])  # the exact RoI (target 0) still pays |prediction|
    losses = fast_rcnn_losses(torch.zeros(4, 3), predicted, rois, BoxCoder((10, 10, 5, 5)), RoIHeadConfig())
    expected = (2 + 2 + 5 * math.log(1.2) + 0) + (0.5 + 0.25 + 0 + 1.0)
    assert losses["loss_box_reg"].item() == pytest.approx(expected / 4, rel=1e-6)  # ÷ all 4 RoIs, not the 2 fg


# ---- RoI sampling ---------------------------------------------------------------------------------------------
def test_roi_sampling_appends_gt_and_labels_by_iou_half():
    gt_boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    gt_labels = torch.tensor([4, 1])
    proposals = torch.tensor(
        [
            [0.0, 0.0, 10.0, 20.0],  # IoU 0.5 with gt 0 → foreground, label 4
            [0.0, 0.0, 10.0, 21.0],  # IoU 10/21 < 0.5 → background
            [20.0, 0.0, 29.0, 10.0],  # IoU 0.9 with gt 1 → label 1
            [50.0, 50.0, 60.0, 60.0],  # no overlap → background
        ]
    )
    sampled = label_and_sample_proposals(proposals, gt_boxes, gt_labels, 5, RoIHeadConfig())
    pairs = sorted(zip(sampled.boxes.tolist(), sampled.labels.tolist(), sampled.matched_boxes.tolist()))
    assert len(sampled) == 6  # 4 proposals + 2 GT, all within 512
    assert sorted(sampled.labels.tolist()) == [1, 1, 4, 4, 5, 5]  # background label = K = 5
    assert ([0.0, 0.0, 10.0, 10.0], 4, [0.0, 0.0, 10.0, 10.0]) in pairs  # the appended GT matches itself
    assert ([20.0, 0.0, 29.0, 10.0], 1, [20.0, 0.0, 30.0, 10.0]) in pairs
    assert ([0.0, 0.0, 10.0, 21.0], 5, [0.0, 0.0, 10.0, 10.0]) in pairs
    assert sampled.labels[:4].lt(5).all()  # foreground first

    # 4 RoIs at 25 %: 1 of the 4 foreground boxes, and both background boxes (fewer than the 3 places left)
    small = label_and_sample_proposals(proposals, gt_boxes, gt_labels, 5, RoIHeadConfig(batch_size_per_image=4),
                                       torch.Generator().manual_seed(0))
    assert small.labels.lt(5).sum() == 1 and small.labels.eq(5).sum() == 2
    # no GT: everything is background
    empty = label_and_sample_proposals(proposals, torch.zeros(0, 4), torch.zeros(0), 5, RoIHeadConfig())
    assert empty.labels.tolist() == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="labels must lie"):
        label_and_sample_proposals(proposals, gt_boxes, torch.tensor([0, 5]), 5, RoIHeadConfig())


def test_matcher_buckets_and_low_quality_matches():
    iou = torch.tensor([[0.9, 0.69, 0.3, 0.29, 0.1], [0.1, 0.2, 0.25, 0.05, 0.2]])
    matched, labels = match_by_iou(iou, (0.5,), (0, 1))
    assert labels.tolist() == [1, 1, 0, 0, 0] and matched.tolist() == [0, 0, 0, 0, 1]
    _, labels = match_by_iou(iou, (0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)
    assert labels.tolist() == [1, -1, 1, 0, 0]


def test_recipes_and_yaml(tmp_path):
    assert (RoIHeadConfig().background_weight, RoIHeadConfig().focal_gamma) == (0.2, 0.5)
    assert (RoIHeadConfig.lvis().background_weight, RoIHeadConfig.lvis().focal_gamma) == (0.8, None)
    config = FinetuneConfig(weights="w", train_annotations="a", train_images="i", output_dir="o",
                            roi_heads=RoIHeadConfig.lvis())
    config.to_yaml(tmp_path / "c.yaml")
    assert FinetuneConfig.from_yaml(tmp_path / "c.yaml") == config
    with pytest.raises(ValueError, match="unknown finetune config keys"):
        FinetuneConfig.from_dict({**config.to_dict(), "lr_steps": 3})
    with pytest.raises(ValueError, match="unknown roi_heads keys"):
        RoIHeadConfig.from_dict({"gamma": 1})


def test_precision_names_are_the_shared_ones(tmp_path):
    from regionclip.precision import PRECISIONS, autocast_dtype

    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        config = FinetuneConfig(weights="w", train_annotations="a", train_images="i", output_dir="o",
                                precision=precision)
        config.to_yaml(tmp_path / "p.yaml")
        assert FinetuneConfig.from_yaml(tmp_path / "p.yaml").precision == precision
        assert autocast_dtype(config.precision) is dtype
    assert PRECISIONS == ("fp32", "bf16", "fp16")
    paths = {"weights": "w", "train_annotations": "a", "train_images": "i", "output_dir": "o"}
    with pytest.raises(ValueError, match="precision must be one of"):
        FinetuneConfig.from_dict({**paths, "precision": "bfloat16"})
    with pytest.raises(ValueError, match="unknown finetune config keys"):
        FinetuneConfig.from_dict({**paths, "autocast": "bf16"})  # the old field name
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        autocast_dtype("fp16", "cpu")
    assert [FinetuneConfig.from_yaml(f"configs/transfer/{n}.yaml").precision for n in ("coco_rn50", "lvis_rn50x4")] == [
        "fp32", "fp32"]


# ---- checkpoints ----------------------------------------------------------------------------------------------
def official_rn50_key_count() -> int:
    """510, from the architectures: every conv of ModifiedResNet / detectron2's ResNet is bias-free and followed by
    a FrozenBN with 4 entries (weight, bias, running_mean, running_var; no batch counter)."""
    conv_bn = 1 + 4
    clip_visual = 3 * conv_bn + sum(3 * conv_bn * n + conv_bn for n in (3, 4, 6, 3)) + 1 + 4 * 2  # stem, stages, attnpool
    c4_rpn = conv_bn + sum(3 * conv_bn * n + conv_bn for n in (3, 4, 6)) + 3 * 2  # stem, res2-4, rpn_head convs
    predictor = 5  # cls_score, cls_bg_score, test_cls_score, bbox_pred.weight/bias
    return clip_visual + c4_rpn + predictor


def constant_tensor(shape: torch.Size, value: float) -> torch.Tensor:
    """A tensor of one stored element: the generated RN50-size file stays a few kilobytes."""
    return torch.full((1,), value).expand(shape)


def test_official_coco_rn50_layout_loads_strictly(tmp_path):
    with torch.device("meta"):
        visual = RegionCLIP.from_config(ModelConfig(text=None)).openai_state_dict()
        rpn = ProposalNetwork(RPNConfig.coco_c4()).state_dict()
    state = {"backbone." + k.removeprefix("visual."): v.shape for k, v in visual.items()}
    state.update({"offline_" + k: v.shape for k, v in rpn.items()})
    state.update({
        "roi_heads.box_predictor.cls_score.weight": torch.Size([48, 1024]),
        "roi_heads.box_predictor.cls_bg_score.weight": torch.Size([1, 1024]),
        "roi_heads.box_predictor.test_cls_score.weight": torch.Size([65, 1024]),
        "roi_heads.box_predictor.bbox_pred.weight": torch.Size([4, 1024]),
        "roi_heads.box_predictor.bbox_pred.bias": torch.Size([4]),
    })
    assert len(state) == official_rn50_key_count() == 510
    tensors = {k: constant_tensor(shape, 0.0 if "cls_bg" in k else 0.5 + i / 1000) for i, (k, shape) in enumerate(state.items())}
    path = tmp_path / "regionclip_finetuned-coco_rn50.pth"
    torch.save({"model": tensors, "iteration": 89999}, path)

    base, novel = torch.randn(48, 1024), torch.randn(65, 1024)
    det = OpenVocabularyDetector.from_pretrained(path, test_embeddings=novel, device="cpu")
    assert det.config.name == "RN50" and det.rpn.config.variant == "c4"
    assert torch.equal(det.train_embeddings, tensors["roi_heads.box_predictor.cls_score.weight"])
    assert torch.equal(det.test_embeddings, novel)  # the passed embeddings win, and the report says so
    assert "test embeddings: passed [65, 1024]; the file's [65, 1024] (test_cls_score) NOT used" in det.load_report.summary()
    assert "train embeddings: from the file [48, 1024]" in det.load_report.summary()
    key = "backbone.layer3.5.conv2.weight"
    assert torch.equal(det.trunk.layer3[5].conv2.weight, tensors[key])
    assert torch.equal(det.bbox_pred.bias, tensors["roi_heads.box_predictor.bbox_pred.bias"])
    assert set(det.official_state_dict()) == set(state)
    det = OpenVocabularyDetector.from_pretrained(path, train_embeddings=base, device="cpu")
    assert torch.equal(det.train_embeddings, base) and "cls_score) NOT used" in det.load_report.summary()

    for broken, message in (
        ({k: v for k, v in tensors.items() if k != key}, "missing"),
        ({**tensors, "roi_heads.res5.0.conv1.weight": tensors[key]}, "no place"),
        ({**tensors, "roi_heads.box_predictor.cls_bg_score.weight": torch.ones(1, 1024)}, "cls_bg_score is not zero"),
        ({k: v for k, v in tensors.items() if "bbox_pred.bias" not in k}, "box predictor keys"),
    ):
        torch.save({"model": broken}, path)
        with pytest.raises(ValueError, match=message):
            OpenVocabularyDetector.from_pretrained(path, device="cpu")


@pytest.fixture()
def tiny_files(tmp_path, make_model):
    """Tiny CLIP weights (with text tower, safetensors) and a tiny C4 RPN file."""
    torch.manual_seed(0)
    clip = make_model(ModelConfig.tiny())
    clip_path = clip.save_pretrained(tmp_path / "clip")
    rpn = ProposalNetwork(RPNConfig.tiny("c4"))
    save_detectron2_rpn(rpn, tmp_path / "rpn.pth")
    return clip_path, tmp_path / "rpn.pth"


def square_image(size: int = 128) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(3, size, size, generator=generator)


def test_official_and_safetensors_round_trips_keep_losses_and_detections(tiny_files, tmp_path):
    clip_path, rpn_path = tiny_files
    det = OpenVocabularyDetector.from_pretrained(clip_path, torch.randn(3, 32), torch.randn(5, 32), rpn=rpn_path, device="cpu")
    assert "initial" in det.load_report.summary() and not det.trunk.layer1[0].conv1.weight.requires_grad
    assert det.trunk.layer2[0].conv1.weight.requires_grad and not any(p.requires_grad for p in det.rpn.parameters())
    torch.nn.init.normal_(det.bbox_pred.weight, std=0.05)
    image, target = square_image(), {"boxes": [[10, 20, 60, 90]], "labels": [2]}
    proposals = [[[12, 18, 64, 80], [0, 0, 40, 40], [70, 70, 120, 110]]]
    reference = det.losses([image], [target], proposals)
    reference_dets = det.detect([image], list("abcde"))[0]

    det.save_official(tmp_path / "det.pth")
    saved, official = torch.load(tmp_path / "det.pth", weights_only=True)["model"], det.official_state_dict()
    assert saved.keys() == official.keys() and all(torch.equal(saved[k], official[k]) for k in saved)
    det.save_pretrained(tmp_path / "det")
    for path, config in ((tmp_path / "det.pth", ModelConfig.tiny()), (tmp_path / "det", None)):
        loaded = OpenVocabularyDetector.from_pretrained(path, config=config, device="cpu")
        losses = loaded.losses([image], [target], proposals)
        assert all(torch.equal(losses[k], reference[k]) for k in reference)
        found = loaded.detect([image], list("abcde"))[0]
        np.testing.assert_array_equal(found.boxes, reference_dets.boxes)
        np.testing.assert_array_equal(found.scores, reference_dets.scores)


def test_detect_applies_box_deltas_and_clips_to_the_image(tiny_model):
    det = OpenVocabularyDetector(
        tiny_model.config, tiny_model.trunk, tiny_model.pooler, tiny_model.head, tiny_model.text_encoder
    )
    det.set_embeddings(test=torch.randn(4, 32, generator=torch.Generator().manual_seed(1)))
    torch.nn.init.zeros_(det.bbox_pred.weight)
    det.bbox_pred.bias.data = torch.tensor([0.0, 0.0, 5 * math.log(2.0), 0.0])  # double the width
    boxes = [[10.0, 10.0, 30.0, 30.0], [110.0, 40.0, 126.0, 60.0]]  # 128 px image: no resizing (tiny min_size 128)
    from regionclip.modeling.roi_heads import DetectionConfig

    config = DetectionConfig(score_threshold=0.0, nms_threshold=1.0, max_detections=100)
    pred = det.detect([square_image()], list("abcd"), boxes=[boxes], config=config)[0]
    assert {tuple(b) for b in pred.boxes.tolist()} == {(0.0, 10.0, 40.0, 30.0), (102.0, 40.0, 128.0, 60.0)}
    probabilities = det.classifier.probabilities(
        det.embed_regions(square_image(), boxes, normalize=False)[0], det.test_embeddings
    )
    assert len(pred) == 8  # every (box, class) above threshold 0 survives NMS at IoU 1
    assert np.allclose(np.sort(pred.scores[:, 0]), np.sort(probabilities.flatten().numpy()), rtol=1e-5)


# ---- fine-tune and evaluate end to end ------------------------------------------------------------------------
COLOURS = {1: (230, 40, 40), 2: (40, 200, 40), 3: (40, 60, 230)}  # category 3 is novel


def write_dataset(root, count: int, seed: int) -> tuple:
    """``count`` 96×128 images with one or two coloured rectangles each, and their COCO instances json."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        array = rng.integers(90, 140, (96, 128, 3), dtype=np.uint8)
        for k, category in enumerate(rng.choice([1, 2, 3], size=2, replace=False)):
            x, y = int(rng.integers(4, 40)) + 60 * k, int(rng.integers(4, 40))
            w, h = int(rng.integers(24, 40)), int(rng.integers(24, 40))
            w = min(w, 127 - x)
            array[y : y + h, x : x + w] = COLOURS[int(category)]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": int(category),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(array).save(root / "images" / f"{index}.png")
        images.append({"id": index + 1, "file_name": f"{index}.png", "height": 96, "width": 128})
    categories = [{"id": 1, "name": "red box", "split": "base"}, {"id": 2, "name": "green box", "split": "base"},
                  {"id": 3, "name": "blue box", "split": "novel"}]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, root / "images"


def test_finetune_lowers_the_loss_and_evaluate_writes_results(tiny_files, tmp_path):
    clip_path, rpn_path = tiny_files
    train_json, train_images = write_dataset(tmp_path / "train", 4, seed=0)
    val_json, val_images = write_dataset(tmp_path / "val", 2, seed=1)
    config = FinetuneConfig(
        weights=str(clip_path), rpn=str(rpn_path), train_annotations=str(train_json), train_images=str(train_images),
        output_dir=str(tmp_path / "run"), steps=24, batch_size=2, lr=0.002, milestones=[20], warmup_steps=2,
        train_min_sizes=[112, 128], train_max_size=256, roi_heads=RoIHeadConfig(batch_size_per_image=64),
        checkpoint_every=12,
    )
    run = finetune(config, progress=False)
    totals = [r["loss_cls"] + r["loss_box_reg"] for r in run.losses]
    assert len(totals) == 24 and np.mean(totals[-6:]) < 0.7 * np.mean(totals[:6])
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "model_final.pth").is_file()
    assert "train embeddings: the text encoder's, for 2 categories" in (tmp_path / "run" / "load_report.txt").read_text()
    # the command on the same config resumes the finished run: nothing is retrained
    config.to_yaml(tmp_path / "finetune.yaml")
    result = CliRunner().invoke(app, ["finetune", "--config", str(tmp_path / "finetune.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("24 steps") and f"detector in {tmp_path / 'run'}" in result.output
    finetune_main(["--config", str(tmp_path / "finetune.yaml"), "--no-progress"])  # python -m regionclip.finetune

    out, metrics = tmp_path / "results.json", tmp_path / "metrics.json"
    result = CliRunner().invoke(app, [
        "evaluate", "--weights", str(tmp_path / "run"), "--annotations", str(val_json), "--images", str(val_images),
        "--vocab-train", "red box,green box", "--out", str(out), "--metrics-out", str(metrics), "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    results, scores = json.loads(out.read_text()), json.loads(metrics.read_text())
    assert results and {r["category_id"] for r in results} <= {1, 2, 3} and all(len(r["bbox"]) == 4 for r in results)
    assert {"AP50_novel", "AP50_base", "AP50_all"} <= set(scores)
    assert 0 <= scores["AP50_all"] <= 100

    # official embedding files for the test vocabulary (the annotation file's 3 categories) are used as given
    from regionclip.checkpoints import save_embedding_file

    save_embedding_file(tmp_path / "test_emb.pth", torch.randn(3, 32))
    result = CliRunner().invoke(app, [
        "evaluate", "--weights", str(tmp_path / "run" / "model_final.pth"), "--model", "tiny", "--annotations",
        str(val_json), "--images", str(val_images), "--vocab-test", str(tmp_path / "test_emb.pth"), "--nms",
        "--out", str(out), "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert "test embeddings: passed [3, 32]" in result.output and "AP50_novel" in result.output


def test_initialisation_from_a_pretraining_file_takes_the_student(tiny_files, tmp_path, make_model):
    from regionclip.checkpoints.pretraining import PretrainingWeights, save_pretraining_checkpoint

    student, teacher = make_model(ModelConfig.tiny(), seed=1), make_model(ModelConfig.tiny(), seed=2)
    state = student.openai_state_dict()
    text = {k: v for k, v in state.items() if not k.startswith("visual.")}
    _, rpn_path = tiny_files
    rpn = {f"offline_{k}": v for k, v in ProposalNetwork(RPNConfig.tiny("c4")).state_dict().items()}
    visual = {k: v for k, v in state.items() if k.startswith("visual.")}
    teacher_visual = {k: v for k, v in teacher.openai_state_dict().items() if k.startswith("visual.")}
    weights = PretrainingWeights(visual, teacher_visual, text, rpn)
    path = save_pretraining_checkpoint(tmp_path / "pretrained.pth", weights)
    det = OpenVocabularyDetector.from_pretrained(path, torch.randn(2, 32), rpn=rpn_path, config=ModelConfig.tiny(), device="cpu")
    assert torch.equal(det.head.attnpool.c_proj.weight, student.head.attnpool.c_proj.weight)
    assert not torch.equal(det.head.attnpool.c_proj.weight, teacher.head.attnpool.c_proj.weight)
    summary = det.load_report.summary()
    assert "regionclip-pretrain" in summary and "RPN: the one passed (rpn=) replaces the file's" in summary
    assert "teacher_backbone.* keys" in summary and "bbox_pred: newly initialised" in summary


def test_training_augmentation_flips_boxes_with_the_image(tmp_path):
    from regionclip.data.detection import DetectionRecord, TrainAugmentation

    array = np.zeros((64, 128, 3), dtype=np.uint8)
    array[20:50, 10:40] = 255
    Image.fromarray(array).save(tmp_path / "a.png")
    record = DetectionRecord(tmp_path / "a.png", 1, torch.tensor([[10.0, 20.0, 40.0, 50.0]]), torch.tensor([0]))
    augmentation = TrainAugmentation(min_sizes=(32, 64), max_size=256)
    image, target = augmentation.apply(record, 64, True)
    assert image.original_size == (64, 128) and image.size == (64, 128)
    assert target["boxes"].tolist() == [[88.0, 20.0, 118.0, 50.0]]
    assert bool((image.pixels[:, 20:50, 88:118] == 255).all()) and float(image.pixels[:, 20:50, 10:40].max()) == 0
    smaller, _ = augmentation.apply(record, 32, False)
    assert smaller.size == (32, 64) and smaller.to_input_boxes(record.boxes).tolist() == [[5.0, 10.0, 20.0, 25.0]]
    draws = {augmentation.draw(torch.Generator().manual_seed(s)) for s in range(40)}
    assert draws == {(32, False), (32, True), (64, False), (64, True)}


def _finetune_rank(rank: int, world_size: int, port: int, config_path: str) -> None:
    import os

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    config = FinetuneConfig.from_yaml(config_path)
    from regionclip.engine import cleanup_distributed, unwrap_model

    try:
        run = finetune(config, progress=False)
        weights = unwrap_model(run.module).state_dict()
        torch.save({k: v for k, v in weights.items() if k.startswith(("trunk.layer3", "head.", "bbox_pred"))},
                   f"{config.output_dir}/rank{rank}.pt")
    finally:
        cleanup_distributed()


@pytest.mark.slow  # two fresh interpreters importing torch
def test_two_rank_finetune_keeps_the_ranks_in_sync(tiny_files, tmp_path):
    import socket

    import torch.multiprocessing as mp

    clip_path, rpn_path = tiny_files
    train_json, train_images = write_dataset(tmp_path / "train", 4, seed=0)
    config = FinetuneConfig(
        weights=str(clip_path), rpn=str(rpn_path), train_annotations=str(train_json), train_images=str(train_images),
        output_dir=str(tmp_path / "run"), steps=4, batch_size=2, milestones=[3], warmup_steps=1,
        train_min_sizes=[112, 128], train_max_size=256, roi_heads=RoIHeadConfig(batch_size_per_image=32),
    )
    config.to_yaml(tmp_path / "config.yaml")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_finetune_rank, args=(2, port, str(tmp_path / "config.yaml")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / "run" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) > 10
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    initial = OpenVocabularyDetector.from_pretrained(clip_path, torch.zeros(2, 32), rpn=rpn_path, device="cpu")
    trained = [k for k in ranks[0] if k.startswith("trunk.layer3") and k.endswith("conv1.weight")]
    assert trained and all(not torch.equal(ranks[0][k], initial.state_dict()[k]) for k in trained)  # it did train
    assert (tmp_path / "run" / "model_final.pth").is_file()


def test_training_categories_and_lvis_image_paths():
    from regionclip.data.detection import image_file_name, training_vocabulary

    split = {"categories": [{"id": 7, "name": "b", "split": "seen"}, {"id": 2, "name": "a", "split": "base"},
                            {"id": 3, "name": "n", "split": "unseen"}]}
    assert training_vocabulary(split).category_ids == (2, 7)  # base only, sorted by id: labels 0, 1
    lvis = {"categories": [{"id": i, "name": f"c{i}", "frequency": f} for i, f in ((1, "r"), (2, "c"), (3, "f"))]}
    assert training_vocabulary(lvis).category_ids == (2, 3)  # rare categories are the novel ones
    assert training_vocabulary(lvis, [1]).category_ids == (1,)
    with pytest.raises(ValueError, match="not in the annotations"):
        training_vocabulary(lvis, [9])
    assert image_file_name({"id": 1, "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg"}) == (
        "val2017/000000000139.jpg"
    )
