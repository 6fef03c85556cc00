"""Tests of the embedded synthetic world generator (regionclip.synthetic)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from regionclip.synthetic import (
    CATEGORIES,
    CATEGORY_BY_NAME,
    SPLITS,
    World,
    WorldConfig,
    category_names,
    encode_jpeg,
    generate_world,
    image_id,
    render_image,
    sampling_probabilities,
    spatial_relation,
    tight_bbox,
    visible_masks,
)
from regionclip.synthetic import captions as captions_module
from regionclip.synthetic import render as render_module
from regionclip.synthetic import world as world_module

NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}


def _term_pattern(term: str) -> re.Pattern[str]:
    return re.compile(r"(?<![a-z])" + re.escape(term) + r"(?![a-z])")


TERM_PATTERNS = [(c.name, t, _term_pattern(t)) for c in CATEGORIES for t in c.terms]


def mentioned_categories(caption: str) -> set[str]:
    """Categories whose name, synonym or plural occurs as a whole word (independent of the package)."""
    text = caption.lower()
    return {name for name, _, pattern in TERM_PATTERNS if pattern.search(text)}


def stated_counts(caption: str) -> dict[str, int]:
    """{category: n} for phrases like "two fish", "three red kites", "two pairs of scissors"."""
    out: dict[str, int] = {}
    text = caption.lower()
    for c in CATEGORIES:
        pattern = r"\b(" + "|".join(NUMBER_WORDS) + r")\s+(?:pairs of\s+)?(?:[a-z-]+\s+)?" + re.escape(c.plural) + r"(?![a-z])"
        for m in re.finditer(pattern, text):
            out[c.name] = NUMBER_WORDS[m.group(1)]
    return out


# ------------------------------------------------------------------------------------------------
# Category table
# ------------------------------------------------------------------------------------------------


def test_category_table_is_long_tailed_split_and_named() -> None:
    assert len(CATEGORIES) == 52
    assert [c.id for c in CATEGORIES] == list(range(1, len(CATEGORIES) + 1))
    assert len({c.name for c in CATEGORIES}) == len(CATEGORIES)
    for c in CATEGORIES:
        assert 0 <= len(c.synonyms) <= 3 and c.plural and c.frequency in "fcr" and c.split in ("base", "novel")
        assert callable(c.draw)
    groups = Counter(c.frequency for c in CATEGORIES)
    assert set(groups) == {"f", "c", "r"}
    novel = category_names("novel")
    assert 0.25 <= len(novel) / len(CATEGORIES) <= 0.35
    assert {CATEGORY_BY_NAME[n].frequency for n in novel} == {"f", "c", "r"}  # novel spread over groups
    assert sorted(category_names("base") + novel) == sorted(category_names())
    # Zipf-like weights: every group's mean probability exceeds the next group's
    p = sampling_probabilities()
    assert p.sum() == pytest.approx(1.0)
    mean = {g: np.mean([p[c.id - 1] for c in CATEGORIES if c.frequency == g]) for g in "fcr"}
    assert mean["f"] > 3 * mean["c"] > 9 * mean["r"]


def test_no_category_term_hides_inside_another_or_in_filler() -> None:
    for a in CATEGORIES:
        for b in CATEGORIES:
            if a is b:
                continue
            for ta in a.terms:
                for tb in b.terms:
                    assert not _term_pattern(ta).search(tb), f"{ta!r} ({a.name}) inside {tb!r} ({b.name})"
    filler = [
        *captions_module.PREFIXES,
        *captions_module.GENERIC_SUFFIXES,
        *captions_module.CLUTTER_SUFFIXES,
        *captions_module.FILLER_ADJECTIVES,
        *captions_module.SMALL_WORDS,
        *captions_module.BIG_WORDS,
        *(w for words in captions_module.STYLE_WORDS.values() for w in words),
        *captions_module.RELATIONS,
        *captions_module.VAGUE_QUANTITIES,
        *render_module.OBJECT_COLORS,
        *(f" on a {name} background" for name in render_module.BACKGROUND_COLORS),
        *(phrase for *_, phrases in render_module.GROUNDS for phrase in phrases),
        " on a sunny day", " under a blue sky", " on a gray day", " outdoors", " on a textured background",
    ]
    for text in filler:
        assert not mentioned_categories(text), f"filler {text!r} names a category"


def test_categories_differ_in_shape_not_only_colour() -> None:
    """Solid, unrotated silhouettes of different categories overlap little after size normalisation."""
    size = 64
    masks = {}
    for c in CATEGORIES:
        prims, lo, hi = render_module._transform(c.draw(np.random.default_rng(0)), 56, 1.0, 0.0)
        layer = render_module._Layer(render_module._translate(prims, size / 2, size / 2), np.zeros((10, 3), np.uint8))
        y0, x0, codes = render_module._rasterize(layer, size)
        full = np.zeros((size, size), bool)
        full[y0 : y0 + codes.shape[0], x0 : x0 + codes.shape[1]] = codes > 0
        masks[c.name] = full
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.85, (a, b, iou)


# ------------------------------------------------------------------------------------------------
# Geometry helpers, hand-computed
# ------------------------------------------------------------------------------------------------


def test_visible_masks_hand_computed() -> None:
    bottom = np.zeros((4, 4), bool)
    bottom[0:3, 0:3] = True
    middle = np.zeros((4, 4), bool)
    middle[1:4, 1:4] = True
    top = np.zeros((4, 4), bool)
    top[0, 0] = top[3, 3] = True
    vb, vm, vt = visible_masks([bottom, middle, top])
    expected_b = np.array([[0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    expected_m = np.array([[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 0]], bool)
    assert (vb == expected_b).all() and (vm == expected_m).all() and (vt == top).all()
    assert tight_bbox(vb) == (0, 0, 3, 3)  # x1 / y1 exclusive
    assert tight_bbox(vm) == (1, 1, 4, 4)
    assert tight_bbox(np.zeros((4, 4), bool)) is None


def test_spatial_relation_hand_cases() -> None:
    assert spatial_relation((0, 0, 10, 10), (50, 5, 60, 15), False) == "to the left of"
    assert spatial_relation((50, 5, 60, 15), (0, 0, 10, 10), True) == "to the right of"
    assert spatial_relation((0, 0, 10, 10), (2, 40, 12, 50), False) == "above"
    assert spatial_relation((2, 40, 12, 50), (0, 0, 10, 10), False) == "below"
    # intersection 5*10=50 > 25 % of 100: described by depth
    assert spatial_relation((0, 0, 10, 10), (5, 0, 15, 10), True) == "in front of"
    assert spatial_relation((0, 0, 10, 10), (5, 0, 15, 10), False) == "behind"
    # intersection 2*10=20 <= 25: still a left/right relation
    assert spatial_relation((0, 0, 10, 10), (8, 0, 18, 10), True) == "to the left of"


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def test_render_is_a_pure_function_of_seed_split_index() -> None:
    cfg = WorldConfig.tiny()
    img_a, objs_a, caps_a = render_image(cfg, "pretrain", 3)
    render_image(cfg, "pretrain", 4)  # rendering other images in between changes nothing
    img_b, objs_b, caps_b = render_image(cfg, "pretrain", 3)
    assert np.array_equal(np.asarray(img_a), np.asarray(img_b)) and caps_a == caps_b
    assert [o.bbox for o in objs_a] == [o.bbox for o in objs_b]
    img_c, _, _ = render_image(cfg, "val", 3)
    img_d, _, _ = render_image(cfg.replace(seed=1), "pretrain", 3)
    assert not np.array_equal(np.asarray(img_a), np.asarray(img_c))
    assert not np.array_equal(np.asarray(img_a), np.asarray(img_d))
    with pytest.raises(ValueError, match="unknown split"):
        render_image(cfg, "train", 0)
    with pytest.raises(ValueError, match="non-negative"):
        render_image(cfg, "val", -1)


def test_visible_masks_and_boxes_are_exact_without_clutter() -> None:
    """Without clutter, occlusion comes only from later objects: check it pixel by pixel."""
    cfg = WorldConfig.tiny(min_clutter=0, max_clutter=0)
    hidden = 0
    for index in range(25):
        image, objects, _ = render_image(cfg, "det_train", index)
        assert image.size == (cfg.image_size, cfg.image_size) and image.mode == "RGB"
        expected = visible_masks([o.silhouette for o in objects])
        for obj, vis in zip(objects, expected):
            assert np.array_equal(obj.mask, vis)
            assert obj.visible_fraction == pytest.approx(vis.sum() / obj.silhouette.sum())
            assert obj.visible == (obj.visible_fraction >= cfg.min_visible_fraction)
            is_base = CATEGORY_BY_NAME[obj.category].split == "base"
            assert obj.annotated == (obj.visible and is_base)
            hidden += not obj.visible
        top = objects[-1]
        assert top.visible_fraction == 1.0  # nothing is painted above the top object
    assert hidden > 0  # occlusion does hide objects now and then


def test_boxes_are_tight_boxes_of_visible_pixels_with_clutter() -> None:
    cfg = WorldConfig.tiny()
    sizes = []
    for index in range(30):
        _, objects, _ = render_image(cfg, "val", index)
        union = np.zeros((cfg.image_size, cfg.image_size), int)
        for obj in objects:
            union += obj.mask
            assert not (obj.mask & ~obj.silhouette).any()  # visible ⊆ painted
            ys, xs = np.nonzero(obj.mask)
            if obj.bbox is None:
                assert ys.size == 0
                continue
            assert obj.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            x0, y0, x1, y1 = obj.bbox
            assert obj.mask[y0:y1, x0:x1].sum() == obj.mask.sum() > 0
            sizes.append(obj.size)
        assert union.max() <= 1  # a pixel belongs to at most one object
    assert 0.1 <= min(sizes) < 0.2 and 0.4 < max(sizes) <= 0.75  # 12-50 % of the side (+ rotation)


# ------------------------------------------------------------------------------------------------
# The generated world
# ------------------------------------------------------------------------------------------------


def test_written_annotations_and_images_match_rerendering(tiny_world: World) -> None:
    cfg = tiny_world.config
    for split in SPLITS:
        data = tiny_world.load_instances(split)
        by_image: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for index in range(0, cfg.num_images(split), 5):
            image, objects, captions = render_image(cfg, split, index)
            img_id = image_id(split, index)
            path = tiny_world.images_dir(split) / f"{img_id:012d}.jpg"
            assert path.read_bytes() == encode_jpeg(image, cfg.jpeg_quality)
            written = [(a["category_id"], a["bbox"], a["area"]) for a in by_image.get(img_id, [])]
            expected = [(o.category_id, o.bbox_xywh, float(o.mask.sum())) for o in objects if o.annotated]
            assert written == expected
            caps = [a["caption"] for a in tiny_world.load_captions(split)["annotations"] if a["image_id"] == img_id]
            assert caps == captions


def test_captions_only_name_visible_objects_with_true_counts(tiny_world: World) -> None:
    cfg = tiny_world.config
    n_captions = 0
    partial = 0
    synonyms_used = plurals_used = relations_used = 0
    counts_checked = 0
    for split in SPLITS:
        caps_by_image: dict[int, list[str]] = {}
        for ann in tiny_world.load_captions(split)["annotations"]:
            caps_by_image.setdefault(ann["image_id"], []).append(ann["caption"])
        for index in range(cfg.num_images(split)):
            _, objects, _ = render_image(cfg, split, index)
            visible = Counter(o.category for o in objects if o.visible)
            caps = caps_by_image[image_id(split, index)]
            assert cfg.min_captions <= len(caps) <= cfg.max_captions and len(set(caps)) == len(caps)
            for caption in caps:
                n_captions += 1
                named = mentioned_categories(caption)
                assert named, f"caption names no object: {caption!r}"
                assert named <= set(visible), (caption, visible)
                partial += len(named) < len(visible)
                for name, n in stated_counts(caption).items():
                    assert visible[name] == n, (caption, visible)
                    counts_checked += 1
                low = caption.lower()
                synonyms_used += any(_term_pattern(s).search(low) for c in CATEGORIES for s in c.synonyms)
                plurals_used += any(
                    _term_pattern(c.plural).search(low) for c in CATEGORIES if c.plural != c.name
                )
                relations_used += any(r in low for r in captions_module.RELATIONS[:6])
    assert partial > 0.3 * n_captions  # captions mention some, not all, objects
    assert synonyms_used > 0 and plurals_used > 0 and relations_used > 0 and counts_checked > 0


def test_split_rules(tiny_world: World) -> None:
    novel_ids = {c.id for c in CATEGORIES if c.split == "novel"}
    all_ids = {c.id for c in CATEGORIES}
    ids = {s: {a["category_id"] for a in tiny_world.load_instances(s)["annotations"]} for s in SPLITS}
    assert ids["det_train"] and not ids["det_train"] & novel_ids
    assert ids["val"] == all_ids  # every category, even the rarest, occurs in validation
    assert ids["pretrain"] & novel_ids
    for split in SPLITS:
        cats = tiny_world.load_instances(split)["categories"]
        assert [c["id"] for c in cats] == sorted(all_ids)
        for entry in cats:
            spec = CATEGORY_BY_NAME[entry["name"]]
            assert (entry["frequency"], entry["split"], entry["synonyms"]) == (spec.frequency, spec.split, list(spec.synonyms))
    # novel objects are present (unannotated) in det_train images and named in its captions
    cfg = tiny_world.config
    novel_visible = []
    for index in range(cfg.num_det_train):
        _, objects, caps = render_image(cfg, "det_train", index)
        for o in objects:
            if CATEGORY_BY_NAME[o.category].split == "novel":
                assert not o.annotated
                novel_visible.append(o.visible)
    assert any(novel_visible)


def test_frequency_groups_ordered_in_occurrences(tiny_world: World) -> None:
    counts = Counter()
    for split in ("pretrain", "val"):
        counts.update(a["category_id"] for a in tiny_world.load_instances(split)["annotations"])
    mean = {g: np.mean([counts[c.id] for c in CATEGORIES if c.frequency == g]) for g in "fcr"}
    assert mean["f"] > mean["c"] > mean["r"] > 0


def test_coco_and_webdataset_formats(tiny_world: World) -> None:
    from pycocotools.coco import COCO

    coco = COCO(str(tiny_world.instances_json("val")))
    first = coco.getImgIds()[0]
    ann_ids = coco.getAnnIds(imgIds=[first])
    assert ann_ids and all(coco.anns[i]["image_id"] == first for i in ann_ids)
    assert len(coco.getImgIds()) == tiny_world.config.num_val
    for ann in coco.loadAnns(coco.getAnnIds()):
        x, y, w, h = ann["bbox"]
        assert ann["iscrowd"] == 0 and w > 0 and h > 0 and 0 < ann["area"] <= w * h
        assert 0 <= x and x + w <= 160 and 0 <= y and y + h <= 160
    img = coco.loadImgs([first])[0]
    assert (tiny_world.images_dir("val") / img["file_name"]).is_file() and img["width"] == img["height"] == 160

    import webdataset as wds

    captions: dict[int, list[str]] = {}
    for ann in tiny_world.load_captions("pretrain")["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    assert len(tiny_world.shard_paths) == 3 and all(p.is_file() for p in tiny_world.shard_paths)
    seen = []
    for sample in wds.WebDataset(tiny_world.shard_pattern, shardshuffle=False).decode("pil"):
        meta = sample["json"]
        seen.append(meta["image_id"])
        assert sample["__key__"] == f"{meta['image_id']:012d}"
        assert meta["captions"] == captions[meta["image_id"]] and sample["txt"] == meta["captions"][0]
        assert sample["jpg"].size == (160, 160)
    assert seen == [image_id("pretrain", i) for i in range(tiny_world.config.num_pretrain)]
    raw = next(iter(wds.WebDataset([str(p) for p in tiny_world.shard_paths], shardshuffle=False)))
    assert raw["jpg"] == (tiny_world.images_dir("pretrain") / f"{image_id('pretrain', 0):012d}.jpg").read_bytes()


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_byte_deterministic_across_worker_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = WorldConfig.tiny(num_pretrain=20, num_det_train=10, num_val=10, shard_size=8)
    one = generate_world(cfg, tmp_path / "a", progress=False, num_workers=1)
    two = generate_world(cfg, tmp_path / "b", progress=False, num_workers=2)  # 40 tasks: pooled
    assert capsys.readouterr().err == ""  # progress=False is silent
    assert one.root.name == two.root.name == cfg.hash()
    files_one, files_two = _tree_bytes(one.root), _tree_bytes(two.root)
    assert len(files_one) == 40 + 6 + 3 + 2  # images, jsons, shards, config + marker
    assert files_one == files_two
    other = generate_world(cfg.replace(seed=7), tmp_path / "a", progress=False, num_workers=1)
    assert other.root != one.root
    files_other = _tree_bytes(other.root)
    assert files_other.keys() == files_one.keys()
    differing = [k for k in files_one if files_one[k] != files_other[k]]
    assert sum(k.endswith(".jpg") for k in differing) == 40
    assert "annotations/instances_val.json" in differing


def test_cache_returns_without_regenerating(tiny_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tiny_world.marker
    assert marker.is_file() and json.loads(marker.read_text())["config_hash"] == tiny_world.root.name
    before = marker.stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(world_module, "_write_world", fail)
    again = generate_world(tiny_world.config, tiny_world.root.parent, progress=False)
    assert again.root == tiny_world.root and marker.stat().st_mtime_ns == before
    assert World.open(tiny_world.root).config == tiny_world.config
    # no temp directories left behind next to the world
    assert [p.name for p in tiny_world.root.parent.iterdir()] == [tiny_world.root.name]


def test_incomplete_directory_is_replaced_and_failures_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = WorldConfig.tiny(num_pretrain=3, num_det_train=2, num_val=2)
    stale = tmp_path / cfg.hash()
    stale.mkdir()
    (stale / "junk.txt").write_text("partial")
    world = generate_world(cfg, tmp_path, progress=False)
    assert world.marker.is_file() and not (world.root / "junk.txt").exists()
    with pytest.raises(FileNotFoundError):
        World.open(tmp_path)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(world_module, "_write_world", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_world(cfg.replace(seed=3), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [cfg.hash()]


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


def test_config_presets_yaml_and_validation(tmp_path: Path) -> None:
    tiny, default, full = WorldConfig.tiny(), WorldConfig.default(), WorldConfig.full()
    assert tiny.num_pretrain + tiny.num_det_train + tiny.num_val < 200
    assert (default.num_pretrain, default.num_det_train, default.num_val) == (3000, 1500, 500)
    assert full.num_pretrain >= 10_000 and WorldConfig.preset("full") == full
    path = tiny.replace(seed=5).to_yaml(tmp_path / "world.yaml")
    assert WorldConfig.from_yaml(path) == tiny.replace(seed=5)
    (tmp_path / "p.yaml").write_text("preset: tiny\nseed: 9\n")
    assert WorldConfig.from_yaml(tmp_path / "p.yaml") == tiny.replace(seed=9)
    (tmp_path / "bad.yaml").write_text("seed: 1\nnum_imgs: 5\n")
    with pytest.raises(ValueError, match="num_imgs"):
        WorldConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="min_objects"):
        WorldConfig(min_objects=5, max_objects=2)
    with pytest.raises(ValueError, match="pretrain_iconic_fraction"):
        WorldConfig(pretrain_iconic_fraction=1.5)
    with pytest.raises(TypeError, match="seed"):
        WorldConfig(seed="0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown preset"):
        WorldConfig.preset("huge")
    assert WorldConfig(max_object_size=0.5).hash() == WorldConfig(max_object_size=0.5).hash()
    assert WorldConfig(min_visible_fraction=1).hash() == WorldConfig(min_visible_fraction=1.0).hash()
    assert tiny.hash() != tiny.replace(seed=1).hash()


def test_iconic_pretraining_images_show_one_large_object():
    plain = WorldConfig.tiny(pretrain_iconic_fraction=0.0)
    all_iconic = WorldConfig.tiny(pretrain_iconic_fraction=1.0)
    iconic_sizes, plain_sizes = [], []
    for index in range(16):
        _, objects, captions = render_image(all_iconic, "pretrain", index)
        assert len(objects) == 1 and captions
        iconic_sizes.append(objects[0].size)
        plain_sizes += [o.size for o in render_image(plain, "pretrain", index)[1]]
    # log-uniform over the upper half of [0.12, 0.5] instead of all of it
    assert min(iconic_sizes) > 0.8 * (0.12 * 0.5) ** 0.5 and np.mean(iconic_sizes) > np.mean(plain_sizes) + 0.05
    # detection splits never hold iconic images, and the choice has its own random stream:
    # every image that is not iconic is byte-identical to the world without iconic images
    half = WorldConfig.tiny(pretrain_iconic_fraction=0.5)
    kinds = []
    for split, index in [("pretrain", i) for i in range(12)] + [("det_train", 0), ("val", 60)]:
        image, objects, _ = render_image(half, split, index)
        reference = render_image(plain, split, index)[0]
        same = np.array_equal(np.asarray(image), np.asarray(reference))
        kinds.append(same)
        if split != "pretrain":
            assert same, split
        elif not same:
            assert len(objects) == 1
    assert 0 < sum(kinds[:12]) < 12  # both kinds occur among 12 pretraining images
