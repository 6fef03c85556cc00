"""Zero-shot detection: score fusion, NMS / soft-NMS, detect() with an RPN, feature extraction, zero-shot evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from regionclip import ModelConfig, RegionCLIP
from regionclip.checkpoints.detectron2_rpn import save_detectron2_rpn
from regionclip.cli import app
from regionclip.modeling.roi_heads.postprocessing import DetectionConfig, fuse_scores, select_detections, soft_nms_gaussian
from regionclip.evaluation import evaluate_zeroshot


def test_official_fusion_uses_raw_logits_and_drops_negative_ones():
    p = torch.tensor([[0.25, 0.5], [0.9, 0.05]])
    logits = torch.tensor([4.0, -1.0])
    official = fuse_scores(p, logits, "official")
    torch.testing.assert_close(official[0], torch.tensor([1.0, math.sqrt(2.0)]))  # not a probability: > 1
    assert torch.isnan(official[1]).all()
    sigmoid = fuse_scores(p, logits, "sigmoid")
    torch.testing.assert_close(sigmoid[1], torch.sqrt(p[1] / (1 + math.e)))
    assert torch.equal(fuse_scores(p, logits, "none"), p)
    boxes = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]])
    box_index, _, _ = select_detections(boxes, official, DetectionConfig())
    assert set(box_index.tolist()) == {0}  # the NaN row is gone
    box_index, _, _ = select_detections(boxes, sigmoid, DetectionConfig())
    assert set(box_index.tolist()) == {0, 1}


def test_per_class_nms_threshold_and_cap():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 9], [50.0, 50, 60, 60]])  # IoU(0, 1) = 0.9
    scores = torch.tensor([[0.9, 0.0005], [0.8, 0.7], [0.3, 0.2]])
    box_index, class_index, final = select_detections(boxes, scores, DetectionConfig(nms_threshold=0.5))
    got = sorted(zip(box_index.tolist(), class_index.tolist(), final.tolist()), key=lambda t: -t[2])
    # class 0: box 1 suppressed by box 0; class 1: box 0 is under the 0.001 threshold, so box 1 survives there
    assert [(b, c) for b, c, _ in got] == [(0, 0), (1, 1), (2, 0), (2, 1)]
    assert final.tolist() == sorted(final.tolist(), reverse=True)
    capped = select_detections(boxes, scores, DetectionConfig(max_detections=2))
    assert len(capped[0]) == 2 and capped[2].tolist() == pytest.approx([0.9, 0.7])


def test_gaussian_soft_nms_matches_hand_computation():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 5], [100.0, 100, 110, 110]])  # IoU(0, 1) = 0.5
    scores = torch.tensor([0.9, 0.8, 0.1])
    keep, decayed = soft_nms_gaussian(boxes, scores, sigma=0.5, prune=0.001)
    assert keep.tolist() == [0, 1, 2]
    torch.testing.assert_close(decayed, torch.tensor([0.9, 0.8 * math.exp(-0.25 / 0.5), 0.1]))
    keep, _ = soft_nms_gaussian(boxes, scores, sigma=0.5, prune=0.5)
    assert keep.tolist() == [0]  # both others fall under the prune threshold


def test_detect_with_rpn_official_and_sigmoid_fusion(sample_images, make_model_with_rpn):
    model = make_model_with_rpn()
    images = [str(p) for p in sample_images]
    # Class embeddings taken from region features, so random weights still give probabilities above threshold.
    classes = model.embed_regions(images[0], [[0, 0, 60, 50], [10, 20, 120, 90], [0, 0, 128, 96]])[0]
    official = model.detect(images, "cat,dog,kite", class_embeddings=classes)
    sigmoid = model.detect(images, "cat,dog,kite", class_embeddings=classes, config=DetectionConfig(score_fusion="sigmoid", max_detections=3000))
    for pred in official:
        assert 0 < len(pred) <= 100 and pred.labels.shape == (len(pred), 1)
        logits = pred.extras["objectness_logit"]
        assert (logits >= 0).all()  # negative raw logits are dropped by the official fusion
        np.testing.assert_allclose(pred.scores[:, 0], np.sqrt(pred.extras["class_probability"] * logits), rtol=1e-5)
        h, w = pred.image_size
        assert (pred.boxes[:, [0, 2]] <= w + 1e-3).all() and (pred.boxes[:, [1, 3]] <= h + 1e-3).all()
    assert any((pred.extras["objectness_logit"] < 0).any() for pred in sigmoid)  # kept by the sigmoid fusion
    for pred in sigmoid:
        logits = pred.extras["objectness_logit"]
        expected = np.sqrt(pred.extras["class_probability"] / (1 + np.exp(-logits)))
        np.testing.assert_allclose(pred.scores[:, 0], expected, rtol=1e-5)
        assert (pred.scores <= 1).all()


def test_detect_in_given_boxes_is_gt_mode(sample_images, make_model_with_rpn):
    model = make_model_with_rpn()
    boxes = [[0, 0, 60, 50], [64, 48, 128, 96]]
    pred = model.detect(str(sample_images[0]), "cat,dog,kite", boxes=boxes, templates="single")[0]
    np.testing.assert_allclose(pred.scores[:, 0], pred.extras["class_probability"])
    assert {tuple(b) for b in pred.boxes.round(3).tolist()} <= {tuple(map(float, b)) for b in boxes}
    assert "objectness_logit" not in pred.extras


def test_detect_needs_an_rpn(tiny_model, sample_images):
    with pytest.raises(ValueError, match="RPN"):
        tiny_model.detect(str(sample_images[0]), "cat,dog")


def test_detectron2_rpn_file_attaches_with_zero_unused_keys(tmp_path, sample_images, make_model, make_model_with_rpn):
    model = make_model_with_rpn(seed=1)
    rpn_file = tmp_path / "rpn_tiny.pth"
    save_detectron2_rpn(model.rpn, rpn_file)
    weights = make_model(ModelConfig.tiny(), seed=1).save_pretrained(tmp_path / "clip_only")
    loaded = RegionCLIP.from_pretrained(weights.parent, rpn=rpn_file)
    report = loaded.rpn_load_report
    assert not report.missing_keys and not report.unused_keys and not report.shape_mismatches
    a = loaded.detect(str(sample_images[0]), "cat,dog", templates="single")[0]
    b = model.detect(str(sample_images[0]), "cat,dog", templates="single")[0]
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    # one bundled artifact: CLIP + RPN in a single safetensors file
    bundled = RegionCLIP.from_pretrained(model.save_pretrained(tmp_path / "bundle"))
    np.testing.assert_allclose(bundled.detect(str(sample_images[0]), "cat,dog", templates="single")[0].boxes, b.boxes, atol=1e-4)


def test_extract_features_is_resumable(tmp_path, sample_images, make_model_with_rpn):
    model = make_model_with_rpn()
    weights = model.save_pretrained(tmp_path / "w")
    image_dir = sample_images[0].parent
    out = tmp_path / "features"
    runner = CliRunner()
    args = ["extract-features", str(image_dir), "--out", str(out), "--weights", str(weights), "--vocab", "cat,dog",
            "--num-proposals", "20"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.safetensors"))
    assert [f.name for f in files] == [f"{p.name}.safetensors" for p in sample_images]
    from safetensors import safe_open

    with safe_open(str(files[2]), "pt") as handle:
        boxes, feats, probs = (handle.get_tensor(k) for k in ("boxes", "features", "probabilities"))
        height, width = int(handle.metadata()["height"]), int(handle.metadata()["width"])
    assert 0 < len(boxes) <= 20 and feats.shape == (len(boxes), 32) and probs.shape == (len(boxes), 3)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(boxes)))
    assert (height, width) == (120, 80) and boxes[:, 2].max() <= width + 1e-3
    assert feats.norm(dim=1).min() > 0 and not torch.allclose(feats.norm(dim=1), torch.ones(len(boxes)))  # un-normalised
    mtimes = [f.stat().st_mtime_ns for f in files]
    files[1].unlink()
    result = runner.invoke(app, args)
    assert "wrote 1 files" in result.output and [f.stat().st_mtime_ns for f in (files[0], files[2])] == [mtimes[0], mtimes[2]]


def test_zero_shot_gt_evaluation_end_to_end(tmp_path, tiny_model, coco_ground_truth):
    gt = coco_ground_truth
    boxes = {im["id"]: [] for im in gt["images"]}
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes[ann["image_id"]].append([x, y, x + w, y + h])
    feats = tiny_model.embed_regions([str(tmp_path / f"{i}.png") for i in (1, 2, 3)], [boxes[i] for i in (1, 2, 3)])
    # An embedding aligned with every GT region makes each box a confident 'thing': AP must then be exactly 100,
    # which checks the box mapping to original pixels, the category ids and the evaluator wiring.
    class_embedding = torch.cat(feats).sum(dim=0, keepdim=True)
    assert (torch.cat(feats) @ class_embedding.T).min() > 0.05
    metrics, results = evaluate_zeroshot(tiny_model, gt, tmp_path, boxes="gt", class_embeddings=class_embedding, progress=False)
    assert len(results) == 6 and {r["category_id"] for r in results} == {7}
    assert metrics["AP50"] == pytest.approx(100.0) and metrics["AP"] == pytest.approx(100.0)
    assert metrics["AP50_novel"] == pytest.approx(100.0)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    torch.save(class_embedding, tmp_path / "emb.pth")
    weights = tiny_model.save_pretrained(tmp_path / "w")
    result = CliRunner().invoke(
        app,
        ["evaluate-zeroshot", "--annotations", str(path), "--images", str(tmp_path), "--boxes", "gt", "--weights",
         str(weights), "--class-embeddings", str(tmp_path / "emb.pth"), "--metrics-out", str(tmp_path / "m.json")],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["AP50"] == pytest.approx(100.0)


def test_cli_detect_draws_labelled_boxes_on_a_real_photo(tmp_path, make_model_with_rpn):
    skimage_data = pytest.importorskip("skimage.data")
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    model = make_model_with_rpn()
    weights = model.save_pretrained(tmp_path / "bundle")
    out = tmp_path / "detections.json"
    result = CliRunner().invoke(
        app,
        ["detect", str(photo), "--vocab", "person,helmet,flag,rocket", "--weights", str(weights.parent), "--out",
         str(out), "--draw", str(tmp_path / "drawn"), "--draw-threshold", "0", "--score-fusion", "sigmoid",
         "--templates", "single", "--max-detections", "10", "--score-threshold", "0"],
    )
    assert result.exit_code == 0, result.output
    entries = json.loads(out.read_text())
    assert 0 < len(entries) <= 10 and all(1 <= e["category_id"] <= 4 for e in entries)
    drawn = np.asarray(Image.open(tmp_path / "drawn" / "astronaut.png").convert("RGB")).astype(int)
    original = np.asarray(Image.open(photo).convert("RGB").resize((drawn.shape[1], drawn.shape[0]))).astype(int)
    assert (np.abs(drawn - original).sum(axis=2) > 60).mean() > 0.005  # boxes and label boxes were drawn


def test_proposals_of_an_image_do_not_depend_on_the_images_it_is_detected_with(make_model_with_rpn):
    """The official evaluation runs one image at a time; padded into a batch with a wider image, the FPN would see
    more padding and propose other boxes. Images of one size still share a batch."""
    model = make_model_with_rpn()
    rng = np.random.default_rng(0)
    small, wide = rng.integers(0, 256, (96, 100, 3), dtype=np.uint8), rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    prepared = model.prepare([small, wide, small])
    together = model.propose(prepared, 0.9, 50)
    alone = model.propose(prepared[:1], 0.9, 50)[0]
    assert torch.equal(together[0].boxes, together[2].boxes)
    torch.testing.assert_close(together[0].boxes, alone.boxes, rtol=0, atol=1e-4)  # batch of 2 vs 1: float rounding
    padded = model.propose(prepared, 0.9, 50, pad_together=True)[0]  # the trainers' batch: other proposals
    assert padded.boxes.shape != alone.boxes.shape or (padded.boxes - alone.boxes).abs().max() > 1e-2
