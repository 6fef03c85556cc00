"""Tests of regionclip.evaluation: parity with pycocotools, hand-computed AP values, OV-COCO splits, LVIS rules."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from regionclip.evaluation import evaluate_coco, evaluate_lvis, format_metrics, limit_detections_per_image

# AP of the canonical hand case: 2 GT boxes; detections TP (0.9), FP (0.8), TP (0.7).
# precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> interpolated 1 on recall points 0.00..0.50 (51 points) and
# 2/3 on 0.51..1.00 (50 points): (51 + 50 * 2/3) / 101 = 253/303.
HAND_AP = 100.0 * 253.0 / 303.0
COCO_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR", "ARs", "ARm", "ARl"]


def box(x: float, y: float, size: float = 20.0) -> list[float]:
    return [float(x), float(y), float(size), float(size)]


def gt_dataset(annotations: list[tuple[int, int, list[float]]], categories: list[dict[str, Any]], images=(1,)):
    """A COCO dict from (image_id, category_id, bbox) triples."""
    return {
        "images": [{"id": i, "width": 640, "height": 480} for i in images],
        "categories": categories,
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for k, (i, c, b) in enumerate(annotations)
        ],
    }


def det(image_id: int, category_id: int, bbox: list[float], score: float) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def hand_case(category_id: int, image_id: int = 1, x0: float = 0.0) -> tuple[list, list]:
    """GT boxes and detections of the HAND_AP case for one category (boxes offset by x0)."""
    gts = [(image_id, category_id, box(x0 + 10, 10)), (image_id, category_id, box(x0 + 10, 100))]
    dets = [
        det(image_id, category_id, box(x0 + 10, 10), 0.9),
        det(image_id, category_id, box(x0 + 10, 300), 0.8),  # overlaps nothing
        det(image_id, category_id, box(x0 + 10, 100), 0.7),
    ]
    return gts, dets


# ----------------------------------------------------------------------------------------------------------------
# (1) parity with pycocotools on a seeded random fixture


def random_fixture(seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Several images and categories, boxes of all three COCO sizes, one crowd region, noisy detections."""
    rng = np.random.default_rng(seed)
    category_ids = [1, 2, 5, 17, 90]
    images, annotations, results = [], [], []
    ann_id = 0
    for image_id in range(1, 7):
        images.append({"id": image_id, "width": 640, "height": 480})
        for category_id in category_ids:
            for _ in range(int(rng.integers(0, 4))):
                side = float(rng.choice([rng.uniform(8, 30), rng.uniform(35, 90), rng.uniform(100, 260)]))
                w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
                x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
                ann_id += 1
                annotations.append(
                    {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h],
                     "area": w * h, "iscrowd": 0}
                )  # fmt: skip
                for _ in range(int(rng.integers(0, 3))):  # 0-2 jittered detections per GT
                    jitter = rng.normal(0, 0.12, size=4) * [w, h, w, h]
                    results.append(det(image_id, category_id, list(np.add([x, y, w, h], jitter).clip(1)),
                                       float(rng.uniform(0.05, 1.0))))  # fmt: skip
            for _ in range(int(rng.integers(0, 3))):  # background false positives
                w, h = rng.uniform(10, 150, size=2)
                results.append(det(image_id, category_id, [rng.uniform(0, 480), rng.uniform(0, 320), w, h],
                                   float(rng.uniform(0.0, 0.6))))  # fmt: skip
    annotations.append(  # a crowd region: detections inside it are neither TP nor FP
        {"id": ann_id + 1, "image_id": 1, "category_id": 1, "bbox": [300, 200, 200, 150], "area": 30000.0,
         "iscrowd": 1}
    )  # fmt: skip
    results.append(det(1, 1, [320, 210, 60, 60], 0.99))
    categories = [{"id": c, "name": f"class{c}"} for c in category_ids]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def pycocotools_eval(gt: dict[str, Any], results: list[dict[str, Any]]) -> PyCOCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = PyCOCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_coco_matches_pycocotools(seed: int) -> None:
    gt, results = random_fixture(seed)
    reference = pycocotools_eval(gt, results).stats  # same order as COCO_KEYS, -1 when undefined
    ours = evaluate_coco(gt, results)
    assert list(ours) == COCO_KEYS
    assert 0.0 < ours["AP"] < 100.0 and not math.isnan(ours["APl"])  # the fixture exercises every cell
    for key, expected in zip(COCO_KEYS, reference):
        if expected < 0:
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(100.0 * expected, abs=1e-6), key


def test_split_numbers_match_detectron2_formula_on_pycocotools_precision() -> None:
    """RegionCLIP averages every defined AP50 precision cell of a split; we average per-category APs."""
    gt, results = random_fixture(3)
    novel, base = [5, 17], [1, 2, 90]
    evaluator = pycocotools_eval(gt, results)
    precision = evaluator.eval["precision"][0, :, :, 0, 2]  # IoU 0.5, all recall points, area all, maxDets 100
    expected = {}
    for name, ids in (("novel", novel), ("base", base), ("all", novel + base)):
        cells = precision[:, [evaluator.params.catIds.index(c) for c in ids]]
        expected[f"AP50_{name}"] = 100.0 * float(np.mean(cells[cells > -1]))
    ours = evaluate_coco(gt, results, novel_category_ids=novel, base_category_ids=base)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


# ----------------------------------------------------------------------------------------------------------------
# (2) exact hand-computed AP


def test_hand_computed_ap_with_101_point_interpolation() -> None:
    gts, dets = hand_case(category_id=1)
    metrics = evaluate_coco(gt_dataset(gts, [{"id": 1, "name": "a"}]), dets)
    # Exact boxes, so every IoU threshold sees the same TP/FP sequence: AP = AP50 = AP75.
    for key in ("AP", "AP50", "AP75", "APs"):
        assert metrics[key] == pytest.approx(HAND_AP, abs=1e-9), key
    assert metrics["AR1"] == pytest.approx(50.0)  # one detection per image finds one of the two boxes
    assert metrics["AR10"] == pytest.approx(100.0)
    assert metrics["AR"] == pytest.approx(100.0)
    assert math.isnan(metrics["APm"]) and math.isnan(metrics["APl"])  # no medium/large GT (20x20 boxes)
    assert "AP50_novel" not in metrics


def test_iou_threshold_separates_ap50_from_ap75() -> None:
    # One GT 20x20, one detection shifted by 4 px: IoU = (16*20) / (2*400 - 320) = 2/3, between 0.5 and 0.75.
    gt = gt_dataset([(1, 1, box(10, 10))], [{"id": 1, "name": "a"}])
    metrics = evaluate_coco(gt, [det(1, 1, box(14, 10), 0.5)])
    assert metrics["AP50"] == pytest.approx(100.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(100.0 * 4 / 10)  # TP at IoU thresholds 0.50..0.65 only: 4 of 10


def test_max_dets_caps_per_image_and_category() -> None:
    gts, dets = hand_case(category_id=1)
    metrics = evaluate_coco(gt_dataset(gts, [{"id": 1, "name": "a"}]), dets, max_dets=2)
    # Only the 0.9 (TP) and 0.8 (FP) detections are kept: recall 1/2 at precision 1.
    assert metrics["AP50"] == pytest.approx(100.0 * 51 / 101)
    assert metrics["AR"] == pytest.approx(50.0)


# ----------------------------------------------------------------------------------------------------------------
# (3) OV-COCO novel / base / all


def split_fixture(with_split_field: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """novel 5: perfect; base 1: HAND_AP; base 2: GT but no detection (AP 0); base 3: no GT (left out)."""
    gts, dets = hand_case(category_id=1)
    gts += [(1, 5, box(200, 10)), (1, 2, box(300, 10))]
    dets += [det(1, 5, box(200, 10), 0.6), det(1, 3, box(400, 10), 0.95)]
    categories = [{"id": c, "name": f"class{c}"} for c in (1, 2, 3, 5)]
    if with_split_field:
        for cat in categories:
            cat["split"] = "unseen" if cat["id"] == 5 else "seen"  # OVR-CNN's spelling
    return gt_dataset(gts, categories), dets


@pytest.mark.parametrize("source", ["explicit", "novel_only", "gt_field"])
def test_ovd_split_numbers(source: str) -> None:
    gt, dets = split_fixture(with_split_field=source == "gt_field")
    kwargs = {
        "explicit": {"novel_category_ids": [5], "base_category_ids": [1, 2, 3]},
        "novel_only": {"novel_category_ids": [5]},  # base = every other GT category
        "gt_field": {},
    }[source]
    metrics = evaluate_coco(gt, dets, **kwargs)
    assert metrics["AP50_novel"] == pytest.approx(100.0)
    assert metrics["AP50_base"] == pytest.approx((HAND_AP + 0.0) / 2)
    assert metrics["AP50_all"] == pytest.approx((100.0 + HAND_AP + 0.0) / 3)
    # The standard AP50 averages the same three categories with GT.
    assert metrics["AP50"] == pytest.approx(metrics["AP50_all"])


def test_split_errors() -> None:
    gt, dets = split_fixture(with_split_field=False)
    with pytest.raises(ValueError, match="both novel and base"):
        evaluate_coco(gt, dets, novel_category_ids=[5, 1], base_category_ids=[1, 2])
    with pytest.raises(ValueError, match="absent from the ground-truth categories"):
        evaluate_coco(gt, dets, novel_category_ids=[77])
    gt["categories"][0]["split"] = "maybe"
    with pytest.raises(ValueError, match="split 'maybe'"):
        evaluate_coco(gt, dets)


# ----------------------------------------------------------------------------------------------------------------
# input handling


def test_empty_results_warn_and_score_zero() -> None:
    gt, _ = split_fixture(with_split_field=True)
    with pytest.warns(UserWarning, match="no detections"):
        metrics = evaluate_coco(gt, [])
    for key in ("AP", "AP50", "AP75", "APs", "AR", "AP50_novel", "AP50_base", "AP50_all"):
        assert metrics[key] == 0.0, key
    with pytest.warns(UserWarning, match="no detections"):
        assert evaluate_lvis(lvis_fixture(), [])["APf"] == 0.0


def test_json_path_and_dict_agree_and_inputs_are_untouched(tmp_path: Path) -> None:
    gt, results = random_fixture(4)
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    from_dict = evaluate_coco(gt, results)
    from_path = evaluate_coco(str(path), results)
    assert from_dict.keys() == from_path.keys()
    for key in from_dict:
        assert from_dict[key] == pytest.approx(from_path[key], nan_ok=True), key
    assert gt == gt_before and results == results_before


def test_bad_results_raise_clear_errors() -> None:
    gt = gt_dataset([(1, 1, box(10, 10))], [{"id": 1, "name": "a"}])
    with pytest.raises(ValueError, match="image_id 9 is not in the ground truth"):
        evaluate_coco(gt, [det(9, 1, box(10, 10), 0.5)])
    with pytest.raises(ValueError, match="4 finite numbers"):
        evaluate_coco(gt, [det(1, 1, [1.0, 2.0, 3.0], 0.5)])
    with pytest.raises(ValueError, match="lacks \\['score'\\]"):
        evaluate_coco(gt, [{"image_id": 1, "category_id": 1, "bbox": box(1, 1)}])
    with pytest.raises(ValueError, match="max_dets"):
        evaluate_coco(gt, [], max_dets=0)
    with pytest.raises(TypeError):
        evaluate_coco(42, [])  # type: ignore[arg-type]


def test_unknown_category_is_dropped_with_a_warning() -> None:
    gt = gt_dataset([(1, 1, box(10, 10))], [{"id": 1, "name": "a"}])
    with pytest.warns(UserWarning, match="absent from the ground truth"):
        metrics = evaluate_coco(gt, [det(1, 1, box(10, 10), 0.5), det(1, 4, box(10, 10), 0.9)])
    assert metrics["AP"] == pytest.approx(100.0)


# ----------------------------------------------------------------------------------------------------------------
# (4) LVIS


def lvis_fixture(not_exhaustive: bool = True) -> dict[str, Any]:
    """Category 1 frequent, 2 common, 3 rare.

    image 1: GT cat 1 (x1), cat 2 (x2, the hand case); cat 3 verified absent.
    image 2: GT cat 2 (x1, flagged not-exhaustive), cat 3 (x1); cat 1 verified absent.
    image 3: nothing annotated, nothing verified absent.
    """
    annotations = [(1, 1, box(200, 10))]
    annotations += hand_case(category_id=2)[0]
    annotations += [(2, 2, box(10, 10)), (2, 3, box(100, 100))]
    gt = gt_dataset(
        annotations,
        [{"id": 1, "name": "f_cat", "frequency": "f"}, {"id": 2, "name": "c_cat", "frequency": "c"},
         {"id": 3, "name": "r_cat", "frequency": "r"}],
        images=(1, 2, 3),
    )  # fmt: skip
    negatives = {1: [3], 2: [1], 3: []}
    for image in gt["images"]:
        image["neg_category_ids"] = negatives[image["id"]]
        image["not_exhaustive_category_ids"] = [2] if (image["id"] == 2 and not_exhaustive) else []
    return gt


def lvis_detections() -> list[dict[str, Any]]:
    dets = [det(1, 1, box(200, 10), 0.9)]  # frequent: perfect
    dets += hand_case(category_id=2)[1]  # common: TP .9, FP .8, TP .7 in image 1
    dets += [det(2, 2, box(10, 10), 0.6), det(2, 2, box(300, 300), 0.95)]  # TP .6 and a stray .95 in image 2
    dets += [det(1, 3, box(400, 10), 0.5)]  # rare: a FP where rare is verified absent, its GT never found
    dets += [det(3, 1, box(10, 10), 0.99)]  # unverified image: must be dropped, not counted as FP
    return dets


# common with the stray .95 ignored: TP .9, FP .8, TP .7, TP .6 of 3 GT -> precision 1, 1/2, 2/3, 3/4 at recall
# 1/3, 1/3, 2/3, 1; interpolated 1 on 0.00..0.33 (34 points), 3/4 on 0.34..1.00 (67 points).
LVIS_APC = 100.0 * (34 + 67 * 0.75) / 101


def test_lvis_frequency_groups_hand_checked() -> None:
    metrics = evaluate_lvis(lvis_fixture(), lvis_detections())
    assert list(metrics) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
                             "AR", "ARs", "ARm", "ARl"]  # fmt: skip
    assert metrics["APf"] == pytest.approx(100.0)  # the 0.99 FP in the unverified image 3 was dropped
    assert metrics["APc"] == pytest.approx(LVIS_APC)  # the 0.95 FP in a not-exhaustive category was ignored
    assert metrics["APr"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx((100.0 + LVIS_APC + 0.0) / 3)
    assert metrics["AP50"] == pytest.approx(metrics["AP"])  # exact boxes: same at every IoU threshold


def test_lvis_not_exhaustive_flag_is_what_spares_the_false_positive() -> None:
    metrics = evaluate_lvis(lvis_fixture(not_exhaustive=False), lvis_detections())
    # Now the 0.95 detection is a FP ranked first: precision 0, 1/2, 1/3, 1/2, 3/5 -> interpolated 3/5 everywhere.
    assert metrics["APc"] == pytest.approx(60.0)


def test_lvis_negative_images_count_false_positives() -> None:
    dets = lvis_detections() + [det(2, 1, box(10, 10), 0.95)]  # cat 1 is verified absent from image 2
    metrics = evaluate_lvis(lvis_fixture(), dets)
    assert metrics["APf"] == pytest.approx(50.0)  # FP then TP: precision 0, 1/2 -> 1/2 at every recall point


def test_lvis_caps_detections_per_image_over_all_categories() -> None:
    gt = gt_dataset([(1, 1, box(10, 10)), (1, 2, box(100, 10))],
                    [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "c"}])  # fmt: skip
    dets = [det(1, 1, box(10, 10), 0.9), det(1, 2, box(100, 10), 0.8)]
    capped = evaluate_lvis(gt, dets, max_dets=1)
    assert (capped["APf"], capped["APc"]) == (pytest.approx(100.0), pytest.approx(0.0))
    full = evaluate_lvis(gt, dets, max_dets=2)
    assert (full["APf"], full["APc"]) == (pytest.approx(100.0), pytest.approx(100.0))
    # COCO caps per image *and category*, so max_dets=1 keeps both there.
    assert evaluate_coco(gt, dets, max_dets=1)["AP"] == pytest.approx(100.0)


def test_limit_detections_per_image_keeps_top_scores_stably() -> None:
    dets = [det(1, 1, box(0, 0), 0.2), det(2, 1, box(0, 0), 0.1), det(1, 2, box(0, 0), 0.7),
            det(1, 3, box(0, 0), 0.2), det(1, 1, box(5, 5), 0.5)]  # fmt: skip
    kept = limit_detections_per_image(dets, 3)
    assert [(d["image_id"], d["score"]) for d in kept] == [(1, 0.7), (1, 0.5), (1, 0.2), (2, 0.1)]
    assert kept[2]["category_id"] == 1  # of the two 0.2 ties, the earlier one wins


def test_lvis_requires_frequencies() -> None:
    gt = lvis_fixture()
    del gt["categories"][2]["frequency"]
    with pytest.raises(ValueError, match="frequency"):
        evaluate_lvis(gt, lvis_detections())


def test_lvis_group_without_categories_is_nan() -> None:
    gt = gt_dataset([(1, 1, box(10, 10))], [{"id": 1, "name": "a", "frequency": "f"}])
    metrics = evaluate_lvis(gt, [det(1, 1, box(10, 10), 0.9)])
    assert metrics["APf"] == pytest.approx(100.0)
    assert math.isnan(metrics["APr"]) and math.isnan(metrics["APc"])


# ----------------------------------------------------------------------------------------------------------------
# formatting


def test_format_metrics_table() -> None:
    text = format_metrics({"AP": 41.256, "AP50_novel": float("nan"), "AR": 100.0})
    lines = text.splitlines()
    assert lines[0].split("|")[0].strip() == "metric"
    assert len({len(line) for line in lines}) == 1  # aligned columns
    assert lines[2] == "AP         |  41.26"
    assert lines[3] == "AP50_novel |    nan"
    assert lines[4] == "AR         | 100.00"
    assert format_metrics({"AP": 1.0}, digits=0).splitlines()[-1] == "AP     |     1"
    with pytest.raises(ValueError, match="digits"):
        format_metrics({"AP": 1.0}, digits=-1)
