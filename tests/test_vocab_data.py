"""Checks of the shipped vocabulary tables (src/regionclip/text/data/*.tsv)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "regionclip" / "text" / "data"

# The 10 ids of COCO's 1..90 range that the 2014/2017 detection sets never use.
COCO_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
OVD_NOVEL = {
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard", "skateboard", "cup",
    "knife", "cake", "couch", "keyboard", "sink", "scissors",
}  # fmt: skip
OVD_BASE = {
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse", "sheep",
    "bear", "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis", "kite", "surfboard",
    "bottle", "fork", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "pizza",
    "donut", "chair", "bed", "toilet", "tv", "laptop", "mouse", "remote", "microwave", "oven", "toaster",
    "refrigerator", "book", "clock", "vase", "toothbrush",
}  # fmt: skip


def read_tsv(name: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(DATA_DIR / name, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


@pytest.fixture(scope="module")
def coco80() -> list[dict[str, str]]:
    header, rows = read_tsv("coco80.tsv")
    assert header == ["id", "name"]
    return rows


@pytest.fixture(scope="module")
def coco_ovd() -> list[dict[str, str]]:
    header, rows = read_tsv("coco_ovd.tsv")
    assert header == ["id", "name", "split"]
    return rows


@pytest.fixture(scope="module")
def lvis() -> list[dict[str, str]]:
    header, rows = read_tsv("lvis_v1.tsv")
    assert header == ["id", "name", "frequency", "synonyms"]
    return rows


def test_coco80_ids_are_the_original_noncontiguous_ones(coco80: list[dict[str, str]]) -> None:
    ids = [int(row["id"]) for row in coco80]
    assert len(ids) == 80
    assert ids == sorted(ids)
    assert set(ids) == set(range(1, 91)) - COCO_UNUSED_IDS
    assert len({row["name"] for row in coco80}) == 80


def test_coco80_official_names(coco80: list[dict[str, str]]) -> None:
    names = {int(row["id"]): row["name"] for row in coco80}
    assert names[1] == "person"
    assert names[90] == "toothbrush"
    assert names[10] == "traffic light"
    assert names[13] == "stop sign"
    assert names[63] == "couch"
    assert names[64] == "potted plant"
    assert names[67] == "dining table"
    assert names[72] == "tv"
    assert names[89] == "hair drier"


def test_coco_ovd_split_is_48_base_17_novel(coco_ovd: list[dict[str, str]]) -> None:
    assert len(coco_ovd) == 65
    ids = [int(row["id"]) for row in coco_ovd]
    assert ids == sorted(ids) and len(set(ids)) == 65
    assert Counter(row["split"] for row in coco_ovd) == {"base": 48, "novel": 17}
    assert {row["name"] for row in coco_ovd if row["split"] == "novel"} == OVD_NOVEL
    assert {row["name"] for row in coco_ovd if row["split"] == "base"} == OVD_BASE


def test_coco_ovd_rows_are_coco80_rows(coco_ovd: list[dict[str, str]], coco80: list[dict[str, str]]) -> None:
    coco_by_id = {row["id"]: row["name"] for row in coco80}
    for row in coco_ovd:
        assert coco_by_id[row["id"]] == row["name"], row
    # 80 - 65 = 15 COCO classes are outside the OVR-CNN benchmark (e.g. no "traffic light", "hair drier").
    excluded = set(coco_by_id.values()) - {row["name"] for row in coco_ovd}
    assert len(excluded) == 15
    assert {"traffic light", "hair drier", "dining table"} <= excluded


def test_lvis_has_1203_categories_with_frequency_groups(lvis: list[dict[str, str]]) -> None:
    assert [int(row["id"]) for row in lvis] == list(range(1, 1204))
    assert len({row["name"] for row in lvis}) == 1203
    assert Counter(row["frequency"] for row in lvis) == {"f": 405, "c": 461, "r": 337}


def test_lvis_spot_checks(lvis: list[dict[str, str]]) -> None:
    by_id = {int(row["id"]): row for row in lvis}
    expected = {
        1: ("aerosol_can", "c", "aerosol_can|spray_can"),
        3: ("airplane", "f", "airplane|aeroplane"),
        13: ("applesauce", "r", "applesauce"),
        136: ("bow_(weapon)", "r", "bow_(weapon)"),
        793: ("person", "f", "person|baby|child|boy|girl|man|woman|human"),
        1203: ("zucchini", "c", "zucchini|courgette"),
    }
    for cat_id, (name, frequency, synonyms) in expected.items():
        row = by_id[cat_id]
        assert (row["name"], row["frequency"], row["synonyms"]) == (name, frequency, synonyms), row


def test_lvis_raw_names_and_synonyms(lvis: list[dict[str, str]]) -> None:
    for row in lvis:
        assert all(row["synonyms"].split("|")), row
    # Raw LVIS names join words with underscores; v1 has exactly one name with a space, kept verbatim.
    assert [row["name"] for row in lvis if " " in row["name"]] == ["monitor_(computer_equipment) computer_monitor"]


def test_sources_document_every_table() -> None:
    sources = (DATA_DIR / "SOURCES.md").read_text(encoding="utf-8")
    for name in ("coco80.tsv", "coco_ovd.tsv", "lvis_v1.tsv", "CC BY 4.0"):
        assert name in sources
