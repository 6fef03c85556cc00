"""Outputs that never collide, mix or vanish, and errors a user can act on (issue 9 §4 JSON, §5, §6)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from regionclip import Vocabulary
from regionclip.cli import app
from regionclip.features import extract_region_features
from regionclip.results import RegionPredictions
from regionclip.utils import atomic_write_text

BOXES = [[[0, 0, 60, 50], [10, 20, 120, 90]], [[5, 5, 40, 40]], [[0, 0, 80, 120]]]


def _strict_json(text: str):
    """Parse as a strict JSON reader would: bare NaN / Infinity are errors."""
    def refuse(constant):
        raise ValueError(f"non-JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def rpn_weights(tmp_path_factory, make_model_with_rpn):
    """A tiny CLIP + RPN bundle on disk, and the model it was saved from."""
    model = make_model_with_rpn()
    return model.save_pretrained(tmp_path_factory.mktemp("bundle")), model


@pytest.fixture()
def umask():
    previous = os.umask(0o022)
    os.umask(previous)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(previous)


# ---- atomic writes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask, mode", [(0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_gives_the_umask_permissions(tmp_path, umask, mask, mode):
    umask(mask)
    target = atomic_write_text(tmp_path / "out.json", "{}")
    plain = tmp_path / "plain.json"
    plain.write_text("{}")  # what an ordinary open() gives under the same umask
    assert stat.S_IMODE(target.stat().st_mode) == mode == stat.S_IMODE(plain.stat().st_mode)


def test_atomic_write_keeps_the_mode_of_a_replaced_file(tmp_path, umask):
    # neither mkstemp's 0o600 nor the umask's 0o644: an ordinary overwrite keeps the mode
    umask(0o022)
    target = tmp_path / "shared.json"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_text() == "new"


def test_atomic_write_error_names_the_target_not_the_temporary_file(tmp_path):
    target = tmp_path / "results.json"
    target.mkdir()  # a folder where the file should go: the rename fails
    with pytest.raises(IsADirectoryError) as caught:
        atomic_write_text(target, "{}")
    assert str(target) in str(caught.value) and ".tmp" not in str(caught.value)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


# ---- JSON never holds bare NaN --------------------------------------------------------------------------------
def test_write_json_refuses_or_nulls_non_finite_numbers(tmp_path):
    from regionclip.utils import write_json

    payload = {"AP": 41.5, "APl": float("nan"), "per_class": [1.0, float("inf")]}
    with pytest.raises(ValueError, match="non-finite"):
        write_json(tmp_path / "refused.json", payload)
    assert not (tmp_path / "refused.json").exists()
    write_json(tmp_path / "metrics.json", payload, undefined_as_null=True)
    assert _strict_json((tmp_path / "metrics.json").read_text()) == {"AP": 41.5, "APl": None, "per_class": [1.0, None]}


def test_predictions_with_non_finite_scores_are_refused():
    vocab = Vocabulary.from_names(["cat", "dog"])
    good = dict(boxes=np.zeros((1, 4), np.float32), labels=np.zeros((1, 1), np.int64), vocabulary=vocab, image_size=(4, 4))
    RegionPredictions(scores=np.full((1, 1), 0.5, np.float32), **good)
    with pytest.raises(ValueError, match="non-finite.*photo.jpg"):
        RegionPredictions(scores=np.full((1, 1), np.nan, np.float32), source="photo.jpg", **good)


def test_evaluation_metrics_json_writes_undefined_metrics_as_null(tmp_path, tiny_model, coco_ground_truth):
    gt = coco_ground_truth  # small and medium boxes only: APl is undefined
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    boxes = {i: [] for i in (1, 2, 3)}
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes[ann["image_id"]].append([x, y, x + w, y + h])
    feats = tiny_model.embed_regions([str(tmp_path / f"{i}.png") for i in (1, 2, 3)], [boxes[i] for i in (1, 2, 3)])
    torch.save(torch.cat(feats).sum(dim=0, keepdim=True), tmp_path / "emb.pth")  # every GT box a confident 'thing'
    weights = tiny_model.save_pretrained(tmp_path / "w")
    result = CliRunner().invoke(
        app,
        ["evaluate-zeroshot", "--annotations", str(tmp_path / "gt.json"), "--images", str(tmp_path), "--weights",
         str(weights), "--class-embeddings", str(tmp_path / "emb.pth"), "--metrics-out", str(tmp_path / "m.json"),
         "--out", str(tmp_path / "results.json")],
    )
    assert result.exit_code == 0, result.output
    metrics = _strict_json((tmp_path / "m.json").read_text())
    assert metrics["APl"] is None and metrics["AP"] == pytest.approx(100.0)
    assert len(_strict_json((tmp_path / "results.json").read_text())) == 6


# ---- vocabularies ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "names, message",
    [
        (["cat", "dog", "cat"], "'cat' appears twice"),
        (["cat", "Cat"], "'cat' and 'Cat' give the same prompt"),
        (["traffic_light", "traffic light"], "same prompt"),
        (["cat", None], "name 2 is None"),
        (["cat", 7], "name 2 is 7"),
        (["cat", "  "], "name 2 is ''"),
        (["cat", "()"], "name 2 is '\\(\\)'"),
    ],
)
def test_vocabulary_refuses_duplicates_and_non_names(names, message):
    with pytest.raises(ValueError, match=message):
        Vocabulary.from_names(names)


def test_vocabulary_duplicates_from_strings_and_json(tmp_path):
    with pytest.raises(ValueError, match="appears twice"):
        Vocabulary.parse("cat, dog, cat")
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": None}]}))
    with pytest.raises(ValueError, match="name 2 is None"):
        Vocabulary.from_file(path)
    assert len(Vocabulary.preset("lvis")) == 1203  # the presets stay valid


# ---- extract-features -----------------------------------------------------------------------------------------
def _image_folder(path, names, seed=0):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(path / name)
    return path


def test_extract_features_keeps_same_stem_images_apart_and_records_settings(tmp_path, rpn_weights):
    weights, model = rpn_weights
    images = _image_folder(tmp_path / "images", ["a.jpg", "a.png", "b.png"])
    out = tmp_path / "features"
    args = ["extract-features", str(images), "--out", str(out), "--weights", str(weights), "--num-proposals", "7",
            "--vocab", "cat,dog", "--templates", "single"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 3 files" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg.safetensors", "a.png.safetensors", "b.png.safetensors"]
    with safe_open(str(out / "a.jpg.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    settings = json.loads(metadata["settings"])
    from regionclip.text.embedder import module_fingerprint

    assert settings["weights_sha256"] == module_fingerprint(model)
    assert settings["num_proposals"] == 7 and settings["vocabulary"] == ["cat", "dog"] and settings["templates"] == "single"
    assert metadata["image"] == str(images / "a.jpg")


@pytest.mark.parametrize(
    "change, message",
    [
        (["--num-proposals", "8"], "num_proposals 7 → 8"),
        (["--vocab", "cat,bird"], "vocabulary"),
        (["--templates", "ensemble"], "templates 'single' → 'ensemble'"),
    ],
)
def test_extract_features_refuses_to_resume_with_other_settings(tmp_path, rpn_weights, change, message):
    weights, _ = rpn_weights
    images = _image_folder(tmp_path / "images", ["a.png", "b.png"])
    out = tmp_path / "features"
    base = {"--num-proposals": "7", "--vocab": "cat,dog", "--templates": "single"}
    args = ["extract-features", str(images), "--out", str(out), "--weights", str(weights)]
    assert CliRunner().invoke(app, args + [x for kv in base.items() for x in kv]).exit_code == 0
    (out / "b.png.safetensors").unlink()  # an interrupted run
    changed = {**base, change[0]: change[1]}
    result = CliRunner().invoke(app, args + [x for kv in changed.items() for x in kv])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (out / "b.png.safetensors").exists()  # nothing mixed in


def test_extract_features_refuses_other_weights_and_files_without_settings(tmp_path, rpn_weights, make_model_with_rpn):
    weights, model = rpn_weights
    images = _image_folder(tmp_path / "images", ["a.png"])
    out = tmp_path / "features"
    extract_region_features(model, images, out, num_proposals=5, progress=False)
    other = make_model_with_rpn(seed=1)
    with pytest.raises(ValueError, match="other settings \\(weights"):
        extract_region_features(other, images, out, num_proposals=5, progress=False)
    from safetensors.torch import save_file

    save_file({"boxes": torch.zeros(1, 4)}, str(out / "old.png.safetensors"))
    with pytest.raises(ValueError, match="records no extraction settings"):
        extract_region_features(model, images, out, num_proposals=5, progress=False)


@pytest.mark.parametrize("option, value", [("--batch-size", "-1"), ("--batch-size", "0"), ("--num-proposals", "0"),
                                           ("--num-proposals", "-5")])
def test_extract_features_counts_must_be_positive(tmp_path, rpn_weights, option, value):
    weights, model = rpn_weights
    images = _image_folder(tmp_path / "images", ["a.png"])
    result = CliRunner().invoke(
        app, ["extract-features", str(images), "--out", str(tmp_path / "f"), "--weights", str(weights), option, value]
    )
    assert result.exit_code == 2 and option in result.output
    assert not (tmp_path / "f").exists()
    keyword = option[2:].replace("-", "_")
    with pytest.raises(ValueError, match=f"{keyword} must be at least 1"):
        extract_region_features(model, images, tmp_path / "f", **{keyword: int(value)}, progress=False)


def test_extract_features_skips_an_unreadable_image(tmp_path, rpn_weights):
    weights, _ = rpn_weights
    images = _image_folder(tmp_path / "images", ["a.png", "c.png"])
    (images / "b.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "features"
    args = ["extract-features", str(images), "--out", str(out), "--weights", str(weights), "--num-proposals", "5",
            "--batch-size", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.png.safetensors", "c.png.safetensors"]
    assert "wrote 2 files" in result.stdout
    assert "1 of 3 images" in result.stderr and "b.jpg" in result.stderr

    result = CliRunner().invoke(app, args + ["--on-error", "fail"])  # resumes: only b.jpg is left, and it fails
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: cannot read image") and "b.jpg" in result.stderr


# ---- classify / detect ----------------------------------------------------------------------------------------
def test_classify_skips_an_unreadable_image_and_writes_the_others(tmp_path, sample_images, rpn_weights):
    weights, _ = rpn_weights
    broken = tmp_path / "broken.png"
    broken.write_bytes(Image.open(sample_images[0]).tobytes()[:200])  # raw bytes, not a PNG
    images = [sample_images[0], broken, sample_images[2]]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({p.name: b for p, b in zip(images, BOXES)}))
    out = tmp_path / "results.json"
    base = ["classify", *map(str, images), "--boxes", str(boxes), "--vocab", "cat,dog", "--weights", str(weights.parent),
            "--templates", "single", "--out", str(out)]
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 1
    records = _strict_json(out.read_text())
    assert [r["image"] for r in records] == [str(sample_images[0]), str(sample_images[2])]
    assert [r["image_id"] for r in records] == [1, 3]
    assert "1 of 3 images" in result.stderr and str(broken) in result.stderr

    hf_out = tmp_path / "hf.json"
    result = CliRunner().invoke(app, base[:-1] + [str(hf_out), "--format", "hf"])
    hf = _strict_json(hf_out.read_text())
    assert len(hf) == 3 and hf[1] is None and len(hf[0]) == 2 * 2  # positions still match the inputs

    out.unlink()
    result = CliRunner().invoke(app, base + ["--on-error", "fail"])
    assert result.exit_code == 1 and str(broken) in result.stderr and not out.exists()


def test_detect_skips_missing_and_unreadable_images(tmp_path, sample_images, rpn_weights):
    weights, _ = rpn_weights
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff truncated")
    missing = tmp_path / "missing.png"
    out = tmp_path / "detections.json"
    result = CliRunner().invoke(
        app,
        ["detect", str(sample_images[0]), str(broken), str(missing), str(sample_images[1]), "--vocab", "cat,dog",
         "--weights", str(weights), "--templates", "single", "--format", "regions", "--out", str(out),
         "--score-fusion", "sigmoid", "--num-proposals", "50"],
    )
    assert result.exit_code == 1
    assert [r["image"] for r in _strict_json(out.read_text())] == [str(sample_images[0]), str(sample_images[1])]
    assert "2 of 4 images" in result.stderr and str(broken) in result.stderr and str(missing) in result.stderr


def test_drawings_that_would_overwrite_each_other_are_refused(tmp_path, sample_images):
    twin = tmp_path / "other" / sample_images[0].name
    twin.parent.mkdir()
    twin.write_bytes(sample_images[0].read_bytes())
    result = CliRunner().invoke(
        app, ["detect", str(sample_images[0]), str(twin), "--vocab", "cat", "--weights", "never-loaded", "--draw",
              str(tmp_path / "drawn")],
    )
    assert result.exit_code == 2 and "would both be drawn" in result.output


# ---- errors a user can act on ---------------------------------------------------------------------------------
def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, sample_images):
    args = ["embed-vocab", "--vocab", "cat,dog", "--weights", str(tmp_path / "missing.safetensors"), "--out",
            str(tmp_path / "e.pth")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("error: ") and "missing.safetensors" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    debug = CliRunner().invoke(app, ["--debug", *args])
    assert isinstance(debug.exception, FileNotFoundError)  # re-raised: the full traceback is shown


@pytest.mark.parametrize(
    "args, hint",
    [
        (["--templates", "bogus"], "--templates"),
        (["--num-proposals", "0"], "--num-proposals"),
        (["--max-detections", "0"], "--max-detections"),
        (["--score-fusion", "product"], "score_fusion"),
        (["--vocab", "cat,cat"], "--vocab"),
        (["--format", "yaml"], "--format"),
    ],
)
def test_detect_validates_options_before_loading_the_model(tmp_path, sample_images, args, hint):
    # The weights path does not exist: a usage error (exit 2) proves the options were checked before loading.
    result = CliRunner().invoke(
        app, ["detect", str(sample_images[0]), "--vocab", "cat,dog", "--weights", str(tmp_path / "absent"), *args]
    )
    assert result.exit_code == 2, result.output
    assert hint in result.output and "Traceback" not in result.output


def test_classify_top_k_and_missing_boxes_file_are_usage_errors(tmp_path, sample_images):
    common = ["classify", str(sample_images[0]), "--weights", str(tmp_path / "absent"), "--vocab", "cat"]
    result = CliRunner().invoke(app, [*common, "--boxes", str(tmp_path / "none.json")])
    assert result.exit_code == 2 and "boxes file not found" in result.output
    (tmp_path / "boxes.json").write_text("[[0, 0, 5, 5]]")
    result = CliRunner().invoke(app, [*common, "--boxes", str(tmp_path / "boxes.json"), "--top-k", "0"])
    assert result.exit_code == 2 and "--top-k" in result.output
    (tmp_path / "bad.json").write_text("{not json")
    result = CliRunner().invoke(app, [*common, "--boxes", str(tmp_path / "bad.json")])
    assert result.exit_code == 2 and "not a JSON file" in result.output
    (tmp_path / "coco.json").write_text(json.dumps({"images": [{"id": 1, "file_name": sample_images[0].name}],
                                                    "annotations": [{"image_id": 1, "box": [0, 0, 4, 4]}]}))
    result = CliRunner().invoke(app, [*common, "--boxes", str(tmp_path / "coco.json")])
    assert result.exit_code == 2 and "not a boxes file of a known layout" in result.output and "'bbox'" in result.output


def test_extract_features_python_api_fails_on_an_unreadable_image_when_asked(tmp_path, rpn_weights):
    _, model = rpn_weights
    images = _image_folder(tmp_path / "images", ["a.png"])
    (images / "z.png").write_bytes(b"")
    summary = extract_region_features(model, images, tmp_path / "skip", num_proposals=3, progress=False)
    assert (summary.written, summary.skipped) == (1, 0) and list(summary.failed) == [str(images / "z.png")]
    with pytest.raises(ValueError, match="z.png"):
        extract_region_features(model, images, tmp_path / "fail", num_proposals=3, on_error="fail", progress=False)
