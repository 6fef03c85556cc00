"""Caption writer of the synthetic world.

Captions imitate real alt-text / COCO captions: they mention some of the visible objects (sometimes
only the biggest), with attributes (colour, size word, fill style), spatial relations, synonyms,
plurals with counts, and vocabulary-free filler ("a cartoon drawing of", "on a sunny day", "cute").
Only objects at least ``min_visible_fraction`` visible are passed in, so hidden objects are never
named, and counts ("two fish") are the numbers of *visible* instances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .categories import CategorySpec

NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
VAGUE_QUANTITIES = ("some", "several", "a few")
PREFIXES = (
    "a photo of ",
    "a cartoon drawing of ",
    "a drawing of ",
    "an illustration of ",
    "a picture of ",
    "clip art of ",
    "a simple sketch of ",
    "a cute drawing of ",
    "a colorful image of ",
    "an image of ",
    "a toy scene with ",
)
GENERIC_SUFFIXES = (" in the scene", " in this image", " in the picture", " in a simple cartoon style")
CLUTTER_SUFFIXES = (" among some random doodles", " with a few scribbles around", " and some abstract shapes")
FILLER_ADJECTIVES = ("cute", "funny", "lovely", "pretty", "happy", "nice")
SMALL_WORDS = ("small", "tiny", "little")
BIG_WORDS = ("big", "large", "huge")
STYLE_WORDS = {
    "outline": ("outlined", "hollow"),
    "striped": ("striped",),
    "dotted": ("dotted", "polka-dot", "spotted"),
    "checkered": ("checkered", "checked"),
}
RELATIONS = ("to the left of", "to the right of", "above", "below", "in front of", "behind", "next to", "near")
SMALL_SIZE, BIG_SIZE = 0.2, 0.38  # size fractions below / above which size words apply


@dataclass
class CaptionObject:
    """What the captioner knows about one visible object."""

    spec: CategorySpec
    color: str
    style: str
    size: float
    bbox: tuple[int, int, int, int]
    depth: int
    area: int


def spatial_relation(
    box_a: tuple[float, float, float, float], box_b: tuple[float, float, float, float], a_in_front: bool
) -> str:
    """Relation of A to B ("a car *to the left of* a tree") from xyxy boxes and the painting order.

    Strongly overlapping boxes (intersection > 25 % of the smaller box) are described by depth
    ("in front of" / "behind"); otherwise by the dominant axis between the box centres (image y
    grows downwards, so a smaller centre y is "above").
    """
    ax0, ay0, ax1, ay1 = box_a
    bx0, by0, bx1, by1 = box_b
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    smaller = min((ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0))
    if smaller > 0 and iw * ih > 0.25 * smaller:
        return "in front of" if a_in_front else "behind"
    dx = (ax0 + ax1) / 2 - (bx0 + bx1) / 2
    dy = (ay0 + ay1) / 2 - (by0 + by1) / 2
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _with_article(words: list[str]) -> str:
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def _noun(rng: np.random.Generator, spec: CategorySpec) -> str:
    if spec.synonyms and rng.random() < 0.35:
        return _pick(rng, spec.synonyms)
    return spec.name


def noun_phrase(rng: np.random.Generator, obj: CaptionObject, detail: float) -> str:
    """Singular mention with optional attributes, e.g. "a big red striped car", "a pair of shears"."""
    adjectives: list[str] = []
    if rng.random() < 0.12:
        adjectives.append(_pick(rng, FILLER_ADJECTIVES))
    if rng.random() < detail * 0.7:
        if obj.size < SMALL_SIZE:
            adjectives.append(_pick(rng, SMALL_WORDS))
        elif obj.size > BIG_SIZE:
            adjectives.append(_pick(rng, BIG_WORDS))
    if rng.random() < detail:
        adjectives.append(obj.color)
    if obj.style in STYLE_WORDS and rng.random() < detail * 0.8:
        adjectives.append(_pick(rng, STYLE_WORDS[obj.style]))
    noun = _noun(rng, obj.spec)
    if obj.spec.unit:
        return " ".join(["a", obj.spec.unit, "of", *adjectives, noun])
    return _with_article([*adjectives, noun])


def count_phrase(rng: np.random.Generator, objs: list[CaptionObject]) -> str:
    """Plural mention of all visible instances of one category, e.g. "two fish", "three red kites"."""
    spec = objs[0].spec
    n = len(objs)
    quantity = NUMBER_WORDS.get(n, "many") if rng.random() < 0.75 else _pick(rng, VAGUE_QUANTITIES)
    words = [quantity]
    colors = {o.color for o in objs}
    if spec.unit:
        words += [spec.unit + "s", "of"]
    if len(colors) == 1 and rng.random() < 0.35:
        words.append(objs[0].color)
    words.append(spec.plural)
    return " ".join(words)


def _group_phrase(rng: np.random.Generator, objs: list[CaptionObject], detail: float) -> str:
    return noun_phrase(rng, objs[0], detail) if len(objs) == 1 else count_phrase(rng, objs)


def _join(rng: np.random.Generator, phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    comma = "," if len(phrases) > 2 and rng.random() < 0.3 else ""
    return ", ".join(phrases[:-1]) + f"{comma} and " + phrases[-1]


def _one_caption(
    rng: np.random.Generator, objects: list[CaptionObject], bg_phrases: list[str], has_clutter: bool
) -> str:
    groups: dict[int, list[CaptionObject]] = {}
    for obj in sorted(objects, key=lambda o: -o.area):
        groups.setdefault(obj.spec.id, []).append(obj)
    group_list = list(groups.values())  # biggest-first by their largest instance

    strategy = _pick(rng, ("biggest", "biggest", "list", "list", "list", "relation", "relation"))
    if strategy == "relation" and len(objects) < 2:
        strategy = "list"
    prefix = _pick(rng, PREFIXES) if rng.random() < 0.45 else ""
    suffixes = [*bg_phrases, *GENERIC_SUFFIXES, *(CLUTTER_SUFFIXES if has_clutter else ())]
    suffix = _pick(rng, suffixes) if rng.random() < 0.5 else ""

    if strategy == "biggest":
        phrase = noun_phrase(rng, group_list[0][0], detail=0.8)
        if prefix:
            text = prefix + phrase + suffix
        else:
            text = _pick(rng, ("{np}{s}", "there is {np}{s}", "this is {np}{s}", "{np}")).format(np=phrase, s=suffix)
    elif strategy == "list":
        k = int(rng.integers(1, min(3, len(group_list)) + 1))
        chosen = [group_list[i] for i in sorted(rng.choice(len(group_list), k, replace=False))]
        if rng.random() < 0.5:
            chosen = [chosen[i] for i in rng.permutation(k)]
        listed = _join(rng, [_group_phrase(rng, g, detail=0.6) for g in chosen])
        if prefix:
            text = prefix + listed + suffix
        else:
            verb = "are" if len(chosen[0]) > 1 else "is"
            templates = ["{l}{s}", "there " + verb + " {l}{s}", "an image with {l}{s}"]
            if len(chosen) > 1 or len(chosen[0]) > 1:
                templates.append("{l} together{s}")
            template = _pick(rng, templates)
            text = template.format(l=listed, s=suffix)
    else:
        ia, ib = (int(i) for i in rng.choice(len(objects), 2, replace=False))
        a, b = objects[ia], objects[ib]
        relation = spatial_relation(a.bbox, b.bbox, a.depth > b.depth)
        if rng.random() < 0.15:
            relation = _pick(rng, ("next to", "near"))
        np_a, np_b = noun_phrase(rng, a, 0.6), noun_phrase(rng, b, 0.5)
        if prefix:
            text = f"{prefix}{np_a} {relation} {np_b}"
        else:
            text = _pick(rng, ("{a} {r} {b}", "{a} is {r} {b}")).format(a=np_a, r=relation, b=np_b)
        others = [g for g in group_list if g[0].spec.id not in (a.spec.id, b.spec.id)]
        if others and rng.random() < 0.25:
            text += ", and " + _group_phrase(rng, others[int(rng.integers(len(others)))], detail=0.4)
        text += suffix

    text = " ".join(text.split())
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.55:
        text += "."
    return text


def make_captions(
    rng: np.random.Generator,
    objects: list[CaptionObject],
    bg_phrases: list[str],
    has_clutter: bool,
    n: int,
) -> list[str]:
    """``n`` distinct captions (fewer only if the scene cannot produce that many variants)."""
    if not objects:
        raise ValueError("a caption needs at least one visible object")
    captions: list[str] = []
    for _ in range(8 * n):
        text = _one_caption(rng, objects, bg_phrases, has_clutter)
        if text not in captions:
            captions.append(text)
        if len(captions) == n:
            break
    return captions
