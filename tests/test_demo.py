"""`regionclip demo` end to end on the tiny preset: report, pictures, loadable weights, caching, presets."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from regionclip import RegionCLIP
from regionclip.world import demo as demo_module
from regionclip.world import rpn as rpn_training
from regionclip.world.demo import DemoPreset, choose_threads, figure_image_indices, run_demo
from regionclip.world.teacher import train as teacher_training

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    report = run_demo(root / "out", preset="tiny", cache_dir=root / "cache", progress=False, threads=1)
    return root, report


def test_demo_writes_report_with_all_figures(demo_run):
    root, report = demo_run
    out = root / "out"
    text = report.read_text()
    for heading in ("## World", "## CLIP teacher", "## Class-agnostic RPN", "## Wall time per stage"):
        assert heading in text
    for figure in ("R@1 image→text", "R@1 text→image", "largest object", "GT boxes", "recall@100", "recall@300", "*chance*"):
        assert figure in text
    assert "1.9%" in text  # uniform chance over the 52 category names
    assert len(re.findall(r"\d+\.\d%", text)) >= 20  # every cell holds a number
    summary = json.loads((out / "report.json").read_text())
    teacher = summary["teachers"]["tiny"]
    # accuracies are whole numbers of hits over the val images (each holds an object) and over their GT boxes
    for key, count in (("image_top1", teacher["num_images"]), ("image_top5", teacher["num_images"]),
                       ("region_top1", teacher["num_regions"]), ("region_top3", teacher["num_regions"])):
        hits = teacher[key] * count
        assert hits == pytest.approx(round(hits), abs=1e-4) and 0 <= round(hits) <= count
    assert teacher["image_top1"] <= teacher["image_top5"] and teacher["region_top1"] <= teacher["region_top3"]
    assert set(teacher["retrieval"]) == {"image_to_text", "text_to_image"}
    assert set(summary["rpn"]["recall"]) == {"base", "novel", "all"}
    assert summary["stage_notes"]["teacher tiny"] == "trained" and summary["stage_notes"]["rpn"] == "trained"
    for name in ("world", "teacher tiny", "rpn", "evaluate tiny", "figures"):
        assert summary["stages"][name] >= 0.0
    for picture in ("regions_top3.png", "training_curves.png"):
        with Image.open(out / picture) as image:
            assert image.width > 400 and image.height > 300
        assert f"({picture})" in text
    assert len(summary["figure"]) == 2 and all(len(r["gt_boxes"]["regions"]) >= 2 for r in summary["figure"])


def test_demo_weights_load_with_rpn(demo_run):
    root, _ = demo_run
    weights = root / "out" / "models" / "teacher-tiny" / "model.safetensors"
    model = RegionCLIP.from_pretrained(weights, device="cpu")
    assert model.rpn is not None and model.config.name == "tiny"
    image = Image.new("RGB", (160, 160), "white")
    detections = model.detect(image, "car, tree", templates="single")
    assert len(detections) == 1


def test_second_run_reuses_cached_models(demo_run, monkeypatch):
    root, _ = demo_run

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(teacher_training, "train_teacher", forbidden)
    monkeypatch.setattr(rpn_training, "train_rpn", forbidden)
    report = run_demo(root / "again", preset="tiny", cache_dir=root / "cache", progress=False, threads=1)
    summary = json.loads((root / "again" / "report.json").read_text())
    assert summary["stage_notes"] == {"teacher tiny": "cached", "rpn": "cached"}
    first = json.loads((root / "out" / "report.json").read_text())
    assert summary["teachers"]["tiny"]["region_top1"] == first["teachers"]["tiny"]["region_top1"]
    assert summary["rpn"]["recall"] == first["rpn"]["recall"]
    assert "(cached)" in report.read_text()


def test_cli_demo_uses_cache(demo_run):
    from typer.testing import CliRunner

    from regionclip.cli import app

    root, _ = demo_run
    result = CliRunner().invoke(
        app, ["demo", "--preset", "tiny", "--out", str(root / "cli"), "--cache-dir", str(root / "cache"), "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    assert (root / "cli" / "report.md").is_file()


@pytest.mark.parametrize("name", ["default", "full"])
def test_yaml_presets_match_python_presets(name):
    path = REPO / "configs" / f"demo_{name}.yaml"
    assert DemoPreset.load(path).to_dict() == DemoPreset.load(name).to_dict()


def test_presets_round_trip_and_validate(tmp_path):
    preset = DemoPreset.full()
    assert DemoPreset.from_yaml(preset.to_yaml(tmp_path / "p.yaml")).to_dict() == preset.to_dict()
    assert [t.label for t in preset.teachers] == ["tiny", "small@64"]
    with pytest.raises(ValueError):
        DemoPreset.load("nope")
    with pytest.raises(ValueError):
        DemoPreset.from_dict({**DemoPreset.tiny().to_dict(), "typo": 1})
    with pytest.raises(ValueError):
        DemoPreset.from_dict({**DemoPreset.tiny().to_dict(), "detection": {"max_detections": 0}})


def test_default_preset_cache_keys_are_pinned(tmp_path):
    # `make demo`'s cached world, teacher and RPN stay valid only while these keys do: a change must be deliberate
    # (a new TRAINER_VERSION / GENERATOR_VERSION), never a side effect of refactoring the configs.
    preset = DemoPreset.default()
    world_hash = preset.world.hash()
    assert world_hash == "2f99433beb712b44"
    assert preset.teachers[0].cache_key(world_hash) == "3ac0a5e36b1d90cb"
    assert preset.rpn.cache_key(preset.world) == "baf5523fc1e3fddb"
    world = SimpleNamespace(config=preset.world)
    assert teacher_training.teacher_run_dir(tmp_path, world, preset.teachers[0]).name == "teacher-tiny-3ac0a5e36b1d90cb"
    assert rpn_training.rpn_run_dir(tmp_path, world, preset.rpn).name == "rpn-baf5523fc1e3fddb"


def test_choose_threads(monkeypatch):
    assert choose_threads(3) == 3
    with pytest.raises(ValueError):
        choose_threads(0)
    monkeypatch.setattr(demo_module.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(demo_module.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert choose_threads() == 2
    monkeypatch.setattr(demo_module.os, "getloadavg", lambda: (0.9, 1.0, 1.0))  # e.g. a job that just ended
    assert choose_threads() == 2
    monkeypatch.setattr(demo_module.os, "getloadavg", lambda: (1.9, 1.0, 1.0))
    assert choose_threads() == 1
    monkeypatch.setattr(demo_module.os, "getloadavg", lambda: (4.5, 1.0, 1.0))
    assert choose_threads() == 1


def test_figure_images_prefer_novel_objects(demo_run):
    from regionclip.synthetic import World
    from regionclip.world.data import load_split

    root, _ = demo_run
    summary = json.loads((root / "out" / "report.json").read_text())
    val = load_split(World.open(summary["world"]["root"]), "val", with_images=False)
    chosen = figure_image_indices(val, 4)
    novel = val.category_ids_of("novel")
    assert len(chosen) == 4 and chosen == sorted(chosen)
    assert all(2 <= len(val.boxes[i]) <= 4 for i in chosen)
    assert sum(any(int(c) in novel for c in val.labels[i]) for i in chosen) >= 2


@pytest.mark.slow
def test_default_demo_teacher_and_rpn_beat_chance(tmp_path):
    """`make demo` as shipped (minutes): the teacher is clearly better than chance on retrieval and zero-shot
    classification, and the RPN recalls base and novel objects."""
    run_demo(tmp_path / "out", preset="default", cache_dir=tmp_path / "cache", progress=False)
    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    teacher = summary["teachers"]["tiny"]
    chance = teacher["chance"]
    for direction in ("image_to_text", "text_to_image"):
        assert teacher["retrieval"][direction] > 5 * teacher["retrieval_chance"][direction]
    assert teacher["image_top1"] > 5 * chance and teacher["image_top5"] > 3 * (5 * chance)
    assert teacher["image_present_top1"] > 2 * teacher["image_present_chance"]
    assert teacher["region_top1"] > 5 * chance and teacher["region_top3"] > 3 * (3 * chance)
    for group in ("base", "novel"):
        assert summary["rpn"]["recall"][group]["300"] > 0.9
