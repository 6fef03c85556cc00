"""`regionclip demo` end to end on the tiny preset: report, pictures, loadable weights, caching, presets."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from regionclip import RegionCLIP
from regionclip.modeling.region_text_losses import LOSS_NAMES
from regionclip.text.vocabulary import Vocabulary
from regionclip.world import demo as demo_module
from regionclip.world import rpn as rpn_training
from regionclip.world import student as student_training
from regionclip.world import transfer as transfer_training
from regionclip.world.demo import DemoPreset, choose_threads, figure_image_indices, run_demo
from regionclip.world.teacher import train as teacher_training
from regionclip.world.zeroshot import zero_shot_ap50

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
    for heading in ("## World", "## CLIP teacher", "## Class-agnostic RPN", "## Region–text pretraining (student)",
                    "## Wall time per stage"):
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
    assert summary["stage_notes"] == {"teacher tiny": "trained", "rpn": "trained", "student": "trained",
                                      "transfer": "trained", "evaluate student": "computed"}
    for name in ("world", "teacher tiny", "rpn", "student", "transfer", "evaluate tiny", "evaluate student", "figures"):
        assert summary["stages"][name] >= 0.0
    for picture in ("regions_top3.png", "training_curves.png", "transfer_novel.png"):
        with Image.open(out / picture) as image:
            assert image.width > 400 and image.height > 300
        assert f"({picture})" in text
    assert len(summary["figure"]) == 2 and all(len(r["gt_boxes"]["regions"]) >= 2 for r in summary["figure"])
    with Image.open(out / "training_curves.png") as image:
        assert image.width == 1650  # three panels: teacher, RPN, the student's three losses


def test_demo_reports_teacher_vs_student(demo_run):
    root, report = demo_run
    summary = json.loads((root / "out" / "report.json").read_text())
    student = summary["student"]
    pool = (Path(student["cache"]) / student_training.CONCEPT_POOL_FILE).read_text().splitlines()
    assert student["concepts"] == len(pool) > 0 and all(int(line.split(",")[1]) >= 5 for line in pool)
    assert set(student["final_losses"]) == set(LOSS_NAMES)
    assert student["final_loss"] == pytest.approx(sum(student["final_losses"].values()))
    for model in ("tiny", "student"):
        assert set(summary["ap50"][model]) == {"gt", "rpn"}
        for mode in ("gt", "rpn"):
            assert set(summary["ap50"][model][mode]) == {"all", "base", "novel"}
            assert all(0.0 <= v <= 100.0 for v in summary["ap50"][model][mode].values())
        pseudo = summary["pseudo_labels"][model]
        assert pseudo["pool"]["matched"] == pseudo["names"]["matched"] > 0  # same proposals, two pools
        for entry in pseudo.values():
            hits = entry["accuracy"] * entry["matched"]
            assert hits == pytest.approx(round(hits), abs=1e-6)
    text = report.read_text()
    assert f"{len(pool)} concepts parsed from the pretraining captions" in text
    row = next(line for line in text.splitlines() if line.startswith("| student |"))
    assert len(re.findall(r"\d+\.\d%?", row)) == 4 + 2 * 3 + 2  # 4 top-1s, 2 × 3 AP50, 2 pseudo-label figures


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
    monkeypatch.setattr(student_training, "pretrain", forbidden)
    monkeypatch.setattr(transfer_training, "finetune", forbidden)
    monkeypatch.setattr(demo_module, "zero_shot_ap50", forbidden)  # the teacher-vs-student figures are cached too
    report = run_demo(root / "again", preset="tiny", cache_dir=root / "cache", progress=False, threads=1)
    summary = json.loads((root / "again" / "report.json").read_text())
    assert summary["stage_notes"] == {"teacher tiny": "cached", "rpn": "cached", "student": "cached",
                                      "transfer": "cached", "evaluate student": "cached"}
    first = json.loads((root / "out" / "report.json").read_text())
    assert summary["teachers"]["tiny"]["region_top1"] == first["teachers"]["tiny"]["region_top1"]
    assert summary["student"]["region_top1"] == first["student"]["region_top1"]
    assert summary["pseudo_labels"] == first["pseudo_labels"] and summary["ap50"] == first["ap50"]
    assert summary["rpn"]["recall"] == first["rpn"]["recall"]
    assert [r["ap50"] for r in summary["transfer"]] == [r["ap50"] for r in first["transfer"]]
    assert "(cached)" in report.read_text()


def test_student_row_recomputes_from_saved_student(demo_run):
    """The report's student figures are those of the saved student weights: GT-box zero-shot accuracy and
    pseudo-label accuracy recomputed here match, and the student did move away from its teacher."""
    from regionclip.synthetic import World
    from regionclip.world.data import load_split
    from regionclip.world.teacher import evaluate_teacher

    root, report = demo_run
    summary = json.loads((root / "out" / "report.json").read_text())
    student = RegionCLIP.from_pretrained(summary["student"]["weights"], device="cpu")
    teacher = RegionCLIP.from_pretrained(summary["teachers"]["tiny"]["weights"], device="cpu")
    assert summary["student"]["initialised_from"] == "tiny"
    assert any(not torch.equal(a, b) for a, b in zip(student.trunk.state_dict().values(),
                                                      teacher.trunk.state_dict().values()))
    val = load_split(World.open(summary["world"]["root"]), "val", progress=False)
    templates = summary["preset"]["templates"]
    recomputed = evaluate_teacher(student, val, templates=templates).to_dict()  # fp32, as the teacher's row
    for key in ("image_top1", "region_top1", "region_top3", "region_top1_by_split", "num_regions"):
        assert recomputed[key] == summary["student"][key]
    # pseudo-labels and AP50 were computed under the preset's evaluation precision (bf16 in tiny, as in default)
    assert summary["preset"]["evaluation_precision"] == "bf16"
    student.precision = teacher.precision = "bf16"
    pseudo = student_training.proposal_pseudo_label_accuracy(student, val, teacher, templates)
    assert pseudo == summary["pseudo_labels"]["student"]["names"]
    assert summary["pseudo_labels"]["tiny"]["names"]["matched"] == pseudo["matched"] > 0  # same RPN proposals
    pool = Vocabulary.from_file(Path(summary["student"]["cache"]) / student_training.CONCEPT_POOL_FILE).names
    on_pool = student_training.proposal_pseudo_label_accuracy(student, val, teacher, templates, concepts=pool)
    assert on_pool == summary["pseudo_labels"]["student"]["pool"]
    ap50 = zero_shot_ap50(student, World.open(summary["world"]["root"]), "val", boxes=("gt",), templates=templates)
    assert ap50["gt"] == summary["ap50"]["student"]["gt"]
    row = f"| student | {100 * recomputed['image_top1']:.1f}% | {100 * recomputed['region_top1']:.1f}% ("
    assert row in report.read_text()


def test_pseudo_label_accuracy_hand_example():
    proposals = [torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 8], [20, 20, 30, 30], [50, 50, 60, 60]]),
                 torch.tensor([[0.0, 0, 4, 4]])]
    predicted = [torch.tensor([3, 3, 5, 7]), torch.tensor([1])]
    gt_boxes = [torch.tensor([[0.0, 0, 10, 10], [21, 21, 30, 30]]), torch.zeros(0, 4)]
    gt_labels = [torch.tensor([3, 4]), torch.zeros(0, dtype=torch.long)]
    # proposal 0: IoU 1 with GT 0 (3 = 3, hit); 1: IoU 0.8 with GT 0 (hit); 2: IoU 81/100 with GT 1 (5 != 4, miss);
    # 3: no overlap (not counted); the second image has no GT (not counted)
    result = student_training.pseudo_label_accuracy(proposals, predicted, gt_boxes, gt_labels)
    assert result == {"accuracy": 2 / 3, "matched": 3, "proposals": 5}
    strict = student_training.pseudo_label_accuracy(proposals, predicted, gt_boxes, gt_labels, iou_threshold=0.85)
    assert strict == {"accuracy": 1.0, "matched": 1, "proposals": 5}
    empty = student_training.pseudo_label_accuracy(proposals[1:], predicted[1:], gt_boxes[1:], gt_labels[1:])
    assert empty["matched"] == 0 and empty["accuracy"] != empty["accuracy"]


def test_concept_categories_maps_parsed_words_to_categories():
    pytest.importorskip("spacy")
    categories = [{"id": 1, "name": "car", "synonyms": ["automobile"], "plural": "cars"},
                  {"id": 7, "name": "scissors", "synonyms": ["shears"], "plural": "scissors"},
                  {"id": 9, "name": "traffic light", "synonyms": [], "plural": "traffic lights"}]
    concepts = ["car", "automobile", "scissor", "shear", "orange car", "traffic light", "image", "light"]
    # "scissors"/"shears" parse to their lemmas; "orange car" by its root; "light" alone names no category
    assert student_training.concept_categories(concepts, categories).tolist() == [1, 1, 7, 7, 1, 9, -1, -1]
    # category names alone need no parser
    assert student_training.concept_categories(["scissors", "car"], categories).tolist() == [7, 1]


def test_student_config_validates_concepts():
    with pytest.raises(ValueError, match="concepts must be one of"):
        student_training.StudentPretrainConfig(concepts="world")
    with pytest.raises(ValueError, match="concept_min_count"):
        student_training.StudentPretrainConfig(concept_min_count=0)
    with pytest.raises(ValueError, match="unknown losses keys"):
        student_training.StudentPretrainConfig(losses={"region_weight": 0.0})


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
    with pytest.raises(ValueError, match="precision must be one of"):
        DemoPreset.from_dict({**DemoPreset.tiny().to_dict(), "evaluation_precision": "int8"})
    with pytest.raises(ValueError, match="precision must be one of"):
        DemoPreset.from_dict({**DemoPreset.tiny().to_dict(), "student": {"precision": "half"}})
    # the YAML file `make demo` users copy is the default preset
    assert DemoPreset.load(Path(__file__).parents[1] / "configs" / "demo_default.yaml") == DemoPreset.default()


def test_default_preset_cache_keys_are_pinned(tmp_path):
    # `make demo`'s cached world, teacher and RPN stay valid only while these keys do: a change must be deliberate
    # (a new TRAINER_VERSION / GENERATOR_VERSION), never a side effect of refactoring the configs.
    preset = DemoPreset.default()
    world_hash = preset.world.hash()
    assert world_hash == "2f99433beb712b44"
    assert preset.teachers[0].cache_key(world_hash) == "23bc515b5c28c290"
    assert preset.rpn.cache_key(preset.world) == "baf5523fc1e3fddb"
    world = SimpleNamespace(config=preset.world)
    assert teacher_training.teacher_run_dir(tmp_path, world, preset.teachers[0]).name == "teacher-tiny-23bc515b5c28c290"
    assert rpn_training.rpn_run_dir(tmp_path, world, preset.rpn).name == "rpn-baf5523fc1e3fddb"
    teacher, rpn = "teacher-tiny-23bc515b5c28c290", "rpn-baf5523fc1e3fddb"
    assert preset.student.cache_key(teacher, rpn, world_hash) == "a1da2ba1c8d8742a"
    assert preset.transfer.cache_key("student", 0.5, "student-a1da2ba1c8d8742a", rpn, world_hash) == "b6110e437f895ce3"
    # the earlier default (3000-step teacher, everything fp32) and the first recipe (category names as concepts)
    # keep the keys of their cached runs: an fp32 `precision` is left out of every key
    earlier_teacher = dataclasses.replace(preset.teachers[0], steps=3000, precision="fp32")
    assert earlier_teacher.cache_key(world_hash) == "3ac0a5e36b1d90cb"
    earlier_student = dataclasses.replace(preset.student, precision="fp32")
    assert earlier_student.cache_key("teacher-tiny-3ac0a5e36b1d90cb", rpn, world_hash) == "dba6c637e2430eed"
    names = dataclasses.replace(earlier_student, concepts="names")
    assert names.cache_key("teacher-tiny-3ac0a5e36b1d90cb", rpn, world_hash) == "59b8680a31582624"
    earlier_transfer = dataclasses.replace(preset.transfer, precision="fp32")
    assert earlier_transfer.cache_key("student", 0.5, "student-dba6c637e2430eed", rpn, world_hash) == "076485bfe3ca12e3"


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


def test_transfer_run_is_trained_on_base_names_and_its_ap50_recomputes(demo_run):
    """The tiny preset's transfer run: a detector fine-tuned from the student with base-name embeddings only, whose
    AP50 re-evaluated from the saved weights with all names equals the report's."""
    from regionclip.synthetic import World
    from regionclip.world.transfer import evaluate_transfer

    root, report = demo_run
    summary = json.loads((root / "out" / "report.json").read_text())
    (entry,) = summary["transfer"]
    assert (entry["initialisation"], entry["focal_gamma"]) == ("student", 0.5)
    world = World.open(summary["world"]["root"])
    categories = world.load_instances("val")["categories"]
    detector = transfer_training.OpenVocabularyDetector.from_pretrained(entry["weights"], device="cpu")
    assert detector.train_embeddings.shape[0] == sum(c["split"] == "base" for c in categories) < len(categories)
    assert detector.roi_heads_config.focal_gamma == 0.5
    student = RegionCLIP.from_pretrained(summary["student"]["weights"], device="cpu")
    trained, initial = detector.trunk.layer3.parameters(), student.trunk.layer3.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(trained, initial))
    assert torch.equal(detector.trunk.conv1.weight, student.trunk.conv1.weight)  # stem frozen (freeze_at 2)
    preset = DemoPreset.from_dict(summary["preset"])
    assert evaluate_transfer(detector, world, preset.transfer, preset.templates) == entry["ap50"]
    assert all(0.0 <= entry["ap50"][g] <= 100.0 for g in ("all", "base", "novel"))
    text = report.read_text()
    assert "## Transfer to open-vocabulary detection" in text
    assert f"| student | γ = 0.5 | {entry['ap50']['novel']:.2f} | {entry['ap50']['base']:.2f} |" in text
    assert summary["transfer_figure"] and all("student init, focal gamma 0.5" in r["detections"]
                                              for r in summary["transfer_figure"])


def test_transfer_config_runs_keys_and_errors():
    from regionclip.world.transfer import TransferConfig

    config = TransferConfig(initialisations=("student", "teacher"), focal_gammas=(0.5, None))
    assert config.runs() == [("student", 0.5), ("student", None), ("teacher", 0.5), ("teacher", None)]
    keys = {config.cache_key(i, g, "init", "rpn", "world") for i, g in config.runs()}
    assert len(keys) == 4
    key = config.cache_key("student", 0.5, "init", "rpn", "world")
    assert TransferConfig(checkpoint_every=7).cache_key("student", 0.5, "init", "rpn", "world") == key
    assert TransferConfig(focal_gammas=(None, 0.5)).cache_key("student", 0.5, "init", "rpn", "world") == key
    assert TransferConfig(steps=TransferConfig().steps + 1).cache_key("student", 0.5, "init", "rpn", "world") != key
    assert config.cache_key("student", 0.5, "init", "other-rpn", "world") != key
    bf16 = TransferConfig(precision="bf16")
    assert bf16.cache_key("student", 0.5, "init", "rpn", "world") != TransferConfig().cache_key(
        "student", 0.5, "init", "rpn", "world")
    assert bf16.finetune_config("init", "annotations", "images", "out", 0.5).precision == "bf16"
    student = DemoPreset.default().student
    assert student.precision == "bf16" and student.pretrain_config("init", "pool", {}, "out").precision == "bf16"
    with pytest.raises(ValueError, match="initialisations"):
        TransferConfig(initialisations=("clip",))
    with pytest.raises(ValueError, match="focal_gammas"):
        TransferConfig(focal_gammas=())
    with pytest.raises(ValueError, match="focal_gamma must be >= 0"):
        TransferConfig(focal_gammas=(-1.0,))
