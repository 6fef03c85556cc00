"""classify_regions end to end, its output conversions, drawing and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import supervision as sv
import torch
from PIL import Image
from typer.testing import CliRunner

from regionclip import ModelConfig, Vocabulary
from regionclip.checkpoints import load_embedding_file
from regionclip.cli import app
from regionclip.viz import format_percent

BOXES = [[[0, 0, 60, 50], [10, 20, 120, 90]], [[5, 5, 40, 40]], [[0, 0, 80, 120]]]


def test_classify_regions_top_k_matches_manual_softmax(tiny_model, sample_images):
    vocab = Vocabulary.from_names(["cat", "dog", "kite", "car"], category_ids=[17, 18, 38, 3])
    preds = tiny_model.classify_regions([str(p) for p in sample_images], BOXES, vocab, top_k=3, templates="single")
    assert [len(p) for p in preds] == [2, 1, 1]
    weights = tiny_model.embed_vocabulary(vocab, "single")
    for pred, path, boxes in zip(preds, sample_images, BOXES):
        feats = tiny_model.embed_regions(str(path), boxes)[0]
        cos = feats @ torch.nn.functional.normalize(weights, dim=-1).T
        full = torch.softmax(torch.cat([cos / 0.01, torch.zeros(len(boxes), 1)], dim=1), dim=1)[:, :-1]
        expected_scores, expected_labels = full.topk(3, dim=1)
        np.testing.assert_allclose(pred.scores, expected_scores.numpy(), atol=1e-6)
        np.testing.assert_array_equal(pred.labels, expected_labels.numpy())
        np.testing.assert_array_equal(pred.boxes, np.asarray(boxes, dtype=np.float32))  # original pixels back
        assert pred.image_size == Image.open(path).size[::-1]


def test_conversions_share_one_pass(tiny_model, sample_images):
    vocab = Vocabulary.preset("coco80")
    pred = tiny_model.classify_regions(str(sample_images[0]), BOXES[0], vocab, top_k=2, templates="single", image_ids=[42])[0]
    detections = pred.to_supervision()
    assert isinstance(detections, sv.Detections) and len(detections) == 2
    np.testing.assert_array_equal(detections.class_id, pred.labels[:, 0])
    assert list(detections.data["class_name"]) == [vocab.names[i] for i in pred.labels[:, 0]]
    assert detections.data["topk_confidence"].shape == (2, 2)

    coco = pred.to_coco()
    assert len(coco) == 4 and all(entry["image_id"] == 42 for entry in coco)
    assert coco[0]["bbox"] == [0.0, 0.0, 60.0, 50.0]  # xywh
    assert coco[2]["bbox"] == [10.0, 20.0, 110.0, 70.0]
    assert coco[0]["category_id"] == vocab.category_ids[pred.labels[0, 0]]  # original, non-contiguous COCO id
    assert all(1 <= entry["category_id"] <= 90 for entry in coco)

    hf = pred.to_hf()
    assert [d["score"] for d in hf] == sorted((d["score"] for d in hf), reverse=True)
    assert hf[0]["box"].keys() == {"xmin", "ymin", "xmax", "ymax"} and all(isinstance(v, int) for v in hf[0]["box"].values())
    processor = pred.to_processor_dict()
    assert processor["boxes"].shape == (2, 4) and len(processor["text_labels"]) == 2


def test_percent_format_follows_the_appendix():
    assert [format_percent(p) for p in (0.995, 0.0043, 0.0002, 0.129, 0.0097)] == ["99.5%", "0.43%", "0.02%", "12.9%", "0.97%"]


def test_cli_classify_embed_and_compare(tmp_path, sample_images, make_model):
    runner = CliRunner()
    weights_a = make_model(ModelConfig.tiny(), seed=0).save_pretrained(tmp_path / "a")
    weights_b = make_model(ModelConfig.tiny(), seed=1).save_pretrained(tmp_path / "b")
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps({p.name: b for p, b in zip(sample_images, BOXES)}))
    out = tmp_path / "results.json"
    result = runner.invoke(
        app,
        ["classify", *map(str, sample_images), "--boxes", str(boxes_file), "--vocab", "cat,dog,kite",
         "--weights", str(weights_a.parent), "--weights", str(weights_b.parent), "--top-k", "2",
         "--out", str(out), "--draw", str(tmp_path / "drawn"), "--templates", "single"],
    )
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert len(records) == 3 and len(records[0]["regions"]) == 2 and len(records[0]["regions"][0]["labels"]) == 2
    drawn = sorted((tmp_path / "drawn").glob("*.png"))
    assert len(drawn) == 3
    single_width = max(640, 640 * 128 // 96)  # one panel, enlarged to a 640-px short side
    assert Image.open(drawn[0]).width > 2 * single_width - 50  # two panels side by side

    coco_out = tmp_path / "coco.json"
    result = runner.invoke(
        app,
        ["classify", str(sample_images[0]), "--boxes", str(boxes_file), "--vocab", "coco",
         "--weights", str(weights_a.parent), "--format", "coco", "--out", str(coco_out), "--templates", "single"],
    )
    assert result.exit_code == 0, result.output
    entries = json.loads(coco_out.read_text())
    assert len(entries) == 2 * 3 and {"image_id", "category_id", "bbox", "score"} <= entries[0].keys()

    emb = tmp_path / "emb.pth"
    result = runner.invoke(app, ["embed-vocab", "--vocab", "cat,dog", "--weights", str(weights_a), "--out", str(emb), "--templates", "single"])
    assert result.exit_code == 0, result.output
    assert load_embedding_file(emb).shape == (2, 32)


def test_cli_reads_coco_instances_boxes(tmp_path, sample_images, tiny_model):
    from regionclip.cli import read_boxes_file

    instances = {
        "images": [{"id": 11, "file_name": sample_images[0].name}, {"id": 12, "file_name": sample_images[1].name}],
        "annotations": [{"id": 1, "image_id": 11, "bbox": [1, 2, 10, 20], "category_id": 1}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances))
    boxes, ids = read_boxes_file(path, sample_images[:2])
    assert ids == [11, 12] and boxes == [[[1, 2, 11, 22]], []]
    import typer

    with pytest.raises(typer.BadParameter):
        read_boxes_file(path, [sample_images[2]])
