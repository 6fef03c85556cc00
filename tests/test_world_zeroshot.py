"""`zero_shot_ap50` on a generated tiny world, scored against models whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regionclip.results import RegionPredictions
from regionclip.synthetic import WorldConfig, generate_world
from regionclip.world.zeroshot import zero_shot_ap50


class AnnotationOracle:
    """Answers with the annotated boxes; ``wrong`` category ids are reported as another category."""

    def __init__(self, world, wrong=frozenset()):
        self.instances = world.load_instances("val")
        self.wrong = wrong
        self.calls = []

    def embed_vocabulary(self, vocabulary, templates, use_cache=True):
        return torch.ones(len(vocabulary), 4)

    def detect(self, paths, vocabulary, boxes=None, config=None, class_embeddings=None, batch_size=1,
               image_ids=None, progress=False):
        self.calls.append("gt" if boxes is not None else "rpn")
        index_of = {c: i for i, c in enumerate(vocabulary.category_ids)}
        predictions = []
        for image_id in image_ids:
            annotations = [a for a in self.instances["annotations"] if a["image_id"] == image_id]
            xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)], np.float32)
            labels = [index_of[a["category_id"]] for a in annotations]
            labels = [(l + 1) % len(vocabulary) if vocabulary.category_ids[l] in self.wrong else l for l in labels]
            predictions.append(RegionPredictions(
                boxes=xyxy.reshape(-1, 4), scores=np.ones((len(labels), 1), np.float32),
                labels=np.array(labels, np.int64).reshape(-1, 1), vocabulary=vocabulary, image_size=(160, 160),
                image_id=image_id,
            ))
        return predictions


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(WorldConfig.tiny(), tmp_path_factory.mktemp("worlds"), progress=False)


def test_perfect_answers_score_100_in_every_group(world):
    oracle = AnnotationOracle(world)
    result = zero_shot_ap50(oracle, world)
    assert oracle.calls == ["gt", "rpn"]
    assert result == {mode: {"all": 100.0, "base": 100.0, "novel": 100.0} for mode in ("gt", "rpn")}


def test_wrong_novel_answers_lower_novel_ap50_only(world):
    categories = world.load_instances("val")["categories"]
    novel = {c["id"] for c in categories if c["split"] == "novel"}
    present = {a["category_id"] for a in world.load_instances("val")["annotations"]}
    wrong = frozenset(novel & present)
    assert wrong, "the tiny world's validation split has novel objects"
    result = zero_shot_ap50(AnnotationOracle(world, wrong), world, boxes=("gt",))
    assert result["gt"]["novel"] == 0.0  # no novel object keeps its category
    assert 0.0 < result["gt"]["all"] < 100.0


def test_images_without_file_name_are_found_by_coco_url(world):
    """LVIS v1 jsons carry ``coco_url`` instead of ``file_name``: the image is ``<folder>/<split>/<name>``."""
    from regionclip.evaluation import evaluate_zeroshot

    gt = world.load_instances("val")
    gt["categories"] = [{k: v for k, v in c.items() if k != "frequency"} for c in gt["categories"]]
    for image in gt["images"]:
        image["coco_url"] = f"http://images.cocodataset.org/val/{image.pop('file_name')}"
    seen = []

    class Recorder(AnnotationOracle):
        def detect(self, paths, *args, **kwargs):
            seen.extend(paths)
            return super().detect(paths, *args, **kwargs)

    metrics, _ = evaluate_zeroshot(Recorder(world), gt, world.root / "images", boxes="rpn", progress=False)
    annotated = {a["image_id"] for a in gt["annotations"]}
    assert sorted(seen) == sorted(str(world.images_dir("val") / f"{i:012d}.jpg") for i in annotated)
    assert metrics["AP50_all"] == pytest.approx(100.0)
