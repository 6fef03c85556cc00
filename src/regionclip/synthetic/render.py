# Over 300 lines: one image's rendering pipeline (background, layers, rasterisation, masks); its steps only serve render_image.
"""Rendering of one synthetic image: background, clutter, objects, exact visible masks, captions.

Every image is a pure function of ``(config, split, index)``: its RNG is seeded with
``(config.seed, split code, index)``, so the result does not depend on which worker renders it or in
which order.

Layering: the objects and clutter items are painted back to front. An object's *visible mask* is
the set of pixels it painted that no later layer painted over; its box is the tight bounding box of
that mask in pixel-edge coordinates (``x1``/``y1`` exclusive, i.e. COCO ``w = x1 - x0``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .captions import CaptionObject, make_captions
from .categories import CATEGORIES, CategorySpec, sampling_probabilities
from .config import SPLITS, WorldConfig, check_split
from .shapes import ACCENT, BROWN, DARK, GREEN, LIGHT, MAIN, NUM_ROLES, RED, SHADE, YELLOW, prims_extent

#: Split codes mixed into the per-image seed (fixed: never use Python's salted ``hash``).
SPLIT_CODES: dict[str, int] = {"pretrain": 1, "det_train": 2, "val": 3}
#: COCO image ids are ``offset + index + 1`` so ids are unique across splits.
IMAGE_ID_OFFSETS: dict[str, int] = {"pretrain": 1_000_000, "det_train": 2_000_000, "val": 3_000_000}

OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 135, 25),
    "yellow": (240, 205, 35),
    "green": (45, 150, 60),
    "blue": (40, 85, 205),
    "purple": (125, 55, 175),
    "pink": (240, 125, 175),
    "brown": (125, 75, 35),
    "black": (28, 28, 30),
    "white": (246, 246, 242),
    "gray": (125, 125, 128),
    "teal": (25, 140, 140),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "light blue": (190, 215, 240),
    "beige": (232, 220, 195),
    "pale yellow": (250, 242, 195),
    "light gray": (212, 212, 212),
    "pale pink": (245, 212, 222),
    "mint": (200, 238, 215),
    "lavender": (222, 212, 242),
    "cream": (250, 246, 232),
    "tan": (200, 170, 125),
    "dark blue": (28, 40, 85),
    "dark green": (28, 62, 40),
    "charcoal": (48, 48, 54),
}
SKIES: list[tuple[str, tuple[int, int, int]]] = [
    ("sunny", (115, 175, 235)),
    ("sunny", (150, 200, 245)),
    ("overcast", (190, 195, 205)),
]
GROUNDS: list[tuple[str, tuple[int, int, int], tuple[str, ...]]] = [
    ("grass", (80, 160, 70), (" on the grass", " in a green field")),
    ("sand", (225, 200, 140), (" on the sand", " at the beach")),
    ("dirt", (140, 100, 60), (" on a dirt road", " on brown ground")),
    ("snow", (238, 240, 246), (" in the snow", " on a winter day")),
]
BACKGROUND_KINDS = ("flat", "gradient", "noise", "stripes", "ground_sky")
STYLES = ("solid", "outline", "striped", "dotted", "checkered")
STYLE_PROBS = (0.45, 0.13, 0.16, 0.13, 0.13)
_STYLE_CDF = np.cumsum(STYLE_PROBS)
_OBJECT_COLOR_NAMES = list(OBJECT_COLORS)
_OBJECT_RGB = np.array([OBJECT_COLORS[n] for n in _OBJECT_COLOR_NAMES], np.float32)
_MIN_COLOR_CONTRAST = 90.0  # RGB distance between an object's colour and the background behind it


@dataclass
class BackgroundInfo:
    """What the captioner may say about the background."""

    kind: str
    phrases: list[str]


@dataclass
class ObjectRecord:
    """One object of a rendered image (bottom-to-top order in :func:`render_image`'s list).

    Attributes:
        category: category name.
        category_id: COCO category id.
        bbox: tight box of the visible pixels, ``(x0, y0, x1, y1)`` with exclusive ``x1``/``y1``,
            or ``None`` if nothing of the object is visible.
        mask: visible pixels, bool ``[H, W]``.
        silhouette: every pixel the object painted, before occlusion (amodal mask), bool ``[H, W]``.
        visible_fraction: visible pixels / painted pixels (occlusion only; objects lie inside the image).
        visible: ``visible_fraction >= config.min_visible_fraction`` (may be annotated / mentioned).
        annotated: has a box in this split's instances json (visible, and not novel in det_train).
        color: colour attribute (name of the MAIN colour).
        style: fill style (solid / outline / striped / dotted / checkered).
        size: longer side of the painted (unoccluded) extent as a fraction of the image side.
        depth: rank in the painting order among the objects (0 = bottom).
    """

    category: str
    category_id: int
    bbox: tuple[int, int, int, int] | None
    mask: np.ndarray = field(repr=False)
    silhouette: np.ndarray = field(repr=False)
    visible_fraction: float
    visible: bool
    annotated: bool
    color: str
    style: str
    size: float
    depth: int

    @property
    def bbox_xywh(self) -> list[float]:
        """COCO ``[x, y, w, h]`` of :attr:`bbox`."""
        if self.bbox is None:
            raise ValueError(f"object {self.category!r} is not visible: it has no box")
        x0, y0, x1, y1 = self.bbox
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------


def image_rng(config: WorldConfig, split: str, index: int) -> np.random.Generator:
    """The RNG of image ``index`` of ``split`` (independent of every other image)."""
    check_split(split)
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    return np.random.default_rng([config.seed, SPLIT_CODES[split], int(index)])


def image_id(split: str, index: int) -> int:
    """COCO image id of image ``index`` of ``split`` (unique across splits)."""
    check_split(split)
    if not 0 <= index < 1_000_000:
        raise ValueError(f"index must be in [0, 1e6), got {index}")
    return IMAGE_ID_OFFSETS[split] + index + 1


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """JPEG bytes with fixed settings (4:4:4 chroma keeps small colour attributes; deterministic)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality), subsampling=0, optimize=False)
    return buf.getvalue()


def tight_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box ``(x0, y0, x1, y1)`` (exclusive max) of the true pixels of a 2-D mask, or ``None``."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def visible_masks(silhouettes: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each layer given painted masks listed bottom to top (later layers occlude)."""
    if not silhouettes:
        return []
    covered = np.zeros_like(silhouettes[0], dtype=bool)
    out: list[np.ndarray] = [covered] * len(silhouettes)
    for i in range(len(silhouettes) - 1, -1, -1):
        sil = silhouettes[i].astype(bool, copy=False)
        out[i] = sil & ~covered
        covered = covered | sil
    return out


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.int16) + rng.integers(-amount, amount + 1, 3), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Backgrounds
# ------------------------------------------------------------------------------------------------


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x / y coordinate grids (cached; treat as read-only)."""
    if size not in _GRIDS:
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        _GRIDS[size] = (xs, ys)
    return _GRIDS[size]


def _draw_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, BackgroundInfo]:
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    names = list(BACKGROUND_COLORS)
    xs, ys = _grid(size)
    if kind == "flat":
        name = names[int(rng.integers(len(names)))]
        img = np.broadcast_to(_jitter(rng, BACKGROUND_COLORS[name], 8), (size, size, 3)).copy()
        return img, BackgroundInfo(kind, [f" on a {name} background", " on a plain background"])
    if kind == "gradient":
        i, j = rng.choice(len(names), 2, replace=False)
        c1, c2 = _jitter(rng, BACKGROUND_COLORS[names[i]], 8), _jitter(rng, BACKGROUND_COLORS[names[j]], 8)
        a = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(a) + ys * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
        return img.astype(np.uint8), BackgroundInfo(
            kind, [" on a gradient background", f" on a {names[i]} and {names[j]} background"]
        )
    if kind == "noise":
        name = names[int(rng.integers(len(names)))]
        base = _jitter(rng, BACKGROUND_COLORS[name], 8).astype(np.float32)
        cells = int(rng.integers(3, 12))
        coarse = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32)
        img = base + (smooth - 128.0) * rng.uniform(0.12, 0.3)
        return np.clip(img, 0, 255).astype(np.uint8), BackgroundInfo(
            kind, [" on a textured background", f" on a mottled {name} background"]
        )
    if kind == "stripes":
        i, j = rng.choice(len(names), 2, replace=False)
        c1, c2 = _jitter(rng, BACKGROUND_COLORS[names[i]], 8), _jitter(rng, BACKGROUND_COLORS[names[j]], 8)
        a, period = rng.uniform(0, math.pi), rng.uniform(10, 32)
        # distance (px) to the nearest stripe edge, signed; a 1-px ramp avoids aliasing (and JPEG bloat)
        u = ((xs * math.cos(a) + ys * math.sin(a)) / period + rng.uniform()) % 1.0
        signed = (0.25 - np.abs(u - 0.5)) * period  # >0 inside the c1 band centred at u = 0.5
        t = np.clip(signed + 0.5, 0.0, 1.0)[..., None]
        img = c1 * t + c2 * (1 - t)
        return img.astype(np.uint8), BackgroundInfo(kind, [" on a striped background", " against a striped wall"])
    # ground and sky: horizon with a gentle wave; sky brightens towards the horizon
    sky_word, sky_rgb = SKIES[int(rng.integers(len(SKIES)))]
    ground_word, ground_rgb, ground_phrases = GROUNDS[int(rng.integers(len(GROUNDS)))]
    horizon = size * rng.uniform(0.45, 0.75)
    wave = rng.uniform(0, 0.05) * size * np.sin(xs[0] * 2 * math.pi / rng.uniform(40, 160) + rng.uniform(0, 6.3))
    sky_top = _jitter(rng, sky_rgb, 10).astype(np.float32)
    t = np.clip(ys / horizon, 0, 1)[..., None]
    sky = sky_top * (1 - 0.35 * t) + 255.0 * 0.35 * t
    ground = _jitter(rng, ground_rgb, 10).astype(np.float32) * (0.9 + 0.1 * (ys / size))[..., None]
    img = np.where((ys > horizon + wave[None, :])[..., None], ground, sky)
    phrases = [*ground_phrases, " outdoors"]
    if sky_word == "sunny":
        phrases += [" on a sunny day", " under a blue sky"]
    else:
        phrases += [" on a gray day"]
    return np.clip(img, 0, 255).astype(np.uint8), BackgroundInfo(kind, phrases)


# ------------------------------------------------------------------------------------------------
# Layers (objects and clutter) and rasterisation
# ------------------------------------------------------------------------------------------------

PixelPrim = tuple[np.ndarray, int, int, bool]  # points [n,2] px, role, line width px (0 = fill), closed


@dataclass
class _Layer:
    prims: list[PixelPrim]
    lut: np.ndarray  # [NUM_ROLES, 3] uint8
    outline_px: int = 0  # >0: MAIN polygons are stroked, not filled
    pattern: tuple | None = None  # texture painted over MAIN pixels
    pattern_rgb: np.ndarray | None = None
    object_index: int | None = None  # None for clutter


def _rasterize(layer: _Layer, size: int) -> tuple[int, int, np.ndarray] | None:
    """Paint role codes of a layer; returns (y0, x0, codes crop) of its painted extent, or None.

    Drawing happens on a canvas covering only the layer's extent (shifted by whole pixels, which
    PIL rasterises identically), clipped to the image.
    """
    pts_all = np.concatenate([pts for pts, *_ in layer.prims])
    pad = max(max(width for _, _, width, _ in layer.prims), layer.outline_px) / 2 + 2
    ox, oy = (max(0, int(math.floor(v - pad))) for v in pts_all.min(axis=0))
    ex, ey = (min(size, int(math.ceil(v + pad)) + 1) for v in pts_all.max(axis=0))
    if ex <= ox or ey <= oy:
        return None
    canvas = Image.new("L", (ex - ox, ey - oy), 0)
    draw = ImageDraw.Draw(canvas)
    shift = np.array([ox, oy], dtype=np.float64)
    for pts, role, width, closed in layer.prims:
        flat = (pts - shift).ravel().tolist()
        if width > 0:
            if closed:
                flat += flat[:2]
            draw.line(flat, fill=role, width=width, joint="curve")
        elif role == MAIN and layer.outline_px:
            draw.polygon(flat, outline=role, width=layer.outline_px)
        else:
            draw.polygon(flat, fill=role)
    codes = np.asarray(canvas)
    rows, cols = np.flatnonzero(codes.any(axis=1)), np.flatnonzero(codes.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return int(y0) + oy, int(x0) + ox, codes[y0:y1, x0:x1]


def _pattern_mask(pattern: tuple, y0: int, x0: int, shape: tuple[int, int]) -> np.ndarray:
    ys, xs = np.mgrid[y0 : y0 + shape[0], x0 : x0 + shape[1]].astype(np.float32)
    kind = pattern[0]
    if kind == "striped":
        _, angle, period, phase = pattern
        return ((xs * math.cos(angle) + ys * math.sin(angle)) / period + phase) % 1.0 < 0.5
    if kind == "dotted":
        _, period, radius, ox, oy = pattern
        dx, dy = (xs + ox) % period - period / 2, (ys + oy) % period - period / 2
        return dx * dx + dy * dy < radius * radius
    _, cell, ox, oy = pattern  # checkered
    return ((np.floor((xs + ox) / cell) + np.floor((ys + oy) / cell)) % 2) == 0


def _colorize(layer: _Layer, y0: int, x0: int, codes: np.ndarray) -> np.ndarray:
    rgb = layer.lut[codes]
    if layer.pattern is not None and layer.pattern_rgb is not None:
        sel = (codes == MAIN) & _pattern_mask(layer.pattern, y0, x0, codes.shape)
        rgb[sel] = layer.pattern_rgb
    return rgb


def _transform(
    prims: list, size_px: float, aspect: float, rotation_deg: float
) -> tuple[list[PixelPrim], np.ndarray, np.ndarray]:
    """Unit-frame primitives → pixel primitives centred at the origin; returns (prims, lo, hi)."""
    x0, y0, x1, y1 = prims_extent(prims)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) / 2
    hx, hy = (x1 - x0) / 2 / half, (y1 - y0) / 2 / half
    ax, ay = math.sqrt(aspect), 1 / math.sqrt(aspect)
    m = max(hx * ax, hy * ay)  # renormalise so the longer side is exactly size_px
    sx, sy = size_px / 2 * ax / m / half, size_px / 2 * ay / m / half
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    wscale = math.sqrt(sx * sy)
    # all points at once (one numpy pass instead of one per primitive)
    lengths = [len(p.points) for p in prims]
    pts = np.concatenate([p.points for p in prims])
    px, py = (pts[:, 0] - cx) * sx, (pts[:, 1] - cy) * sy
    pts = np.stack([c * px - s * py, s * px + c * py], axis=1)
    widths = [max(1, int(round(p.width * wscale))) if p.width > 0 else 0 for p in prims]
    pad = np.repeat([w / 2 + 1 for w in widths], lengths)[:, None]
    lo, hi = (pts - pad).min(axis=0), (pts + pad).max(axis=0)
    parts = np.split(pts, np.cumsum(lengths)[:-1])
    out: list[PixelPrim] = [(part, p.role, w, p.closed) for part, p, w in zip(parts, prims, widths)]
    return out, lo, hi


def _translate(prims: list[PixelPrim], dx: float, dy: float) -> list[PixelPrim]:
    shift = np.array([dx, dy])
    return [(pts + shift, role, width, closed) for pts, role, width, closed in prims]


# Base colours of the fixed roles (MAIN / ACCENT are filled per instance) and per-role jitter.
_ROLE_BASE_RGB = np.zeros((NUM_ROLES, 3), np.int16)
_ROLE_BASE_RGB[DARK] = (35, 35, 40)
_ROLE_BASE_RGB[LIGHT] = (236, 238, 230)
_ROLE_BASE_RGB[BROWN] = (120, 75, 35)
_ROLE_BASE_RGB[YELLOW] = (245, 205, 40)
_ROLE_BASE_RGB[GREEN] = (60, 150, 60)
_ROLE_BASE_RGB[RED] = (215, 40, 40)
_ROLE_JITTER = np.full((NUM_ROLES, 3), 10, np.int16)
_ROLE_JITTER[[MAIN, ACCENT]] = 12
_ROLE_JITTER[DARK] = 8


@dataclass
class _ObjectPlan:
    spec: CategorySpec
    color: str
    style: str
    layer: _Layer
    extent_px: float  # longer side of the object's pixel extent (after rotation)


def _plan_object(
    rng: np.random.Generator, spec: CategorySpec, config: WorldConfig, background: np.ndarray, large: bool = False
) -> _ObjectPlan:
    size = config.image_size
    # sizes are log-uniform; a large (iconic) object takes the upper half of the log range
    log_lo, log_hi = math.log(config.min_object_size), math.log(config.max_object_size)
    frac = math.exp(rng.uniform((log_lo + log_hi) / 2 if large else log_lo, log_hi))
    aspect = math.exp(rng.uniform(-math.log(1.3), math.log(1.3)))
    rotation = rng.uniform(-spec.max_rotation, spec.max_rotation)
    prims, lo, hi = _transform(spec.draw(rng), frac * size, aspect, rotation)
    # Keep the whole object inside the image: visibility then measures occlusion only.
    cx_lo, cx_hi = -lo[0], size - hi[0]
    cy_lo, cy_hi = -lo[1], size - hi[1]
    cx = rng.uniform(cx_lo, cx_hi) if cx_hi > cx_lo else size / 2
    cy = rng.uniform(cy_lo, cy_hi) if cy_hi > cy_lo else size / 2
    prims = _translate(prims, cx, cy)

    behind = background[int(np.clip(cy, 0, size - 1)), int(np.clip(cx, 0, size - 1))].astype(np.float32)
    names = _OBJECT_COLOR_NAMES
    order = rng.permutation(len(names))
    contrast = np.linalg.norm(_OBJECT_RGB[order] - behind, axis=1) >= _MIN_COLOR_CONTRAST
    # first colour (in random order) that stands out from the background behind the object
    color = names[order[int(np.argmax(contrast))]] if contrast.any() else names[order[0]]
    others = [name for name in names if name != color]
    accent_name = others[int(rng.integers(len(others)))]
    base = _ROLE_BASE_RGB.copy()
    base[MAIN], base[ACCENT] = OBJECT_COLORS[color], OBJECT_COLORS[accent_name]
    lut = np.clip(base + rng.integers(-_ROLE_JITTER, _ROLE_JITTER + 1), 0, 255).astype(np.uint8)
    lut[SHADE] = (lut[MAIN].astype(np.float32) * 0.62).astype(np.uint8)
    main, accent = lut[MAIN], lut[ACCENT]

    style = STYLES[min(int(np.searchsorted(_STYLE_CDF, rng.random(), side='right')), len(STYLES) - 1)]
    layer = _Layer(prims, lut)
    if style == "outline":
        layer.outline_px = max(1, int(round(frac * size / 30)))
    elif style != "solid":
        candidates = [accent, np.array([245, 245, 245], np.uint8), np.array([30, 30, 30], np.uint8)]
        candidates = [c for c in candidates if np.linalg.norm(c.astype(np.float32) - main) > 80] or [lut[SHADE]]
        layer.pattern_rgb = candidates[int(rng.integers(len(candidates)))]
        if style == "striped":
            layer.pattern = ("striped", rng.uniform(0, math.pi), rng.uniform(4, 9), rng.uniform())
        elif style == "dotted":
            period = rng.uniform(5, 9)
            layer.pattern = ("dotted", period, period * rng.uniform(0.22, 0.32), rng.uniform(0, 9), rng.uniform(0, 9))
        else:
            layer.pattern = ("checkered", float(rng.integers(3, 7)), rng.uniform(0, 6), rng.uniform(0, 6))
    return _ObjectPlan(spec, color, style, layer, float(max(hi - lo)))


def _plan_clutter(rng: np.random.Generator, size: int) -> _Layer:
    """A distractor that belongs to no category: scribble, zigzag, blob, random polygon or dots."""
    kind = ("scribble", "zigzag", "blob", "polygon", "dots")[int(rng.integers(5))]
    extent = size * rng.uniform(0.06, 0.35)
    cx, cy = rng.uniform(0, size, 2)
    prims: list[PixelPrim]
    if kind == "scribble":
        steps = rng.normal(0, extent / 3, (int(rng.integers(4, 10)), 2))
        prims = [(np.cumsum(steps, 0) + (cx, cy), MAIN, int(rng.integers(1, 4)), False)]
    elif kind == "zigzag":
        n = int(rng.integers(4, 9))
        xs = np.linspace(-extent / 2, extent / 2, n)
        ys = np.where(np.arange(n) % 2 == 0, -1.0, 1.0) * extent * rng.uniform(0.1, 0.3)
        a = rng.uniform(0, math.pi)
        pts = np.stack([xs * math.cos(a) - ys * math.sin(a), xs * math.sin(a) + ys * math.cos(a)], 1)
        prims = [(pts + (cx, cy), MAIN, int(rng.integers(1, 4)), False)]
    elif kind == "blob":
        n = 14
        t = np.linspace(0, 2 * math.pi, n, endpoint=False)
        radius = extent / 2 * (1 + 0.35 * np.convolve(np.tile(rng.normal(0, 1, n), 3), np.ones(3) / 3, "same")[n : 2 * n])
        pts = np.stack([np.cos(t) * radius * rng.uniform(0.6, 1.0), np.sin(t) * radius], 1)
        prims = [(pts + (cx, cy), MAIN, 0, False)]
    elif kind == "polygon":
        pts = rng.uniform(-extent / 2, extent / 2, (int(rng.integers(3, 7)), 2))
        prims = [(pts + (cx, cy), MAIN, 0, False)]
    else:
        prims = []
        for _ in range(int(rng.integers(3, 9))):
            r = rng.uniform(1.5, 3.5)
            t = np.linspace(0, 2 * math.pi, 10, endpoint=False)
            ox, oy = rng.uniform(-extent / 2, extent / 2, 2)
            prims.append((np.stack([cx + ox + r * np.cos(t), cy + oy + r * np.sin(t)], 1), MAIN, 0, False))
    lut = np.zeros((NUM_ROLES, 3), np.uint8)
    names = list(OBJECT_COLORS)
    lut[MAIN] = _jitter(rng, OBJECT_COLORS[names[int(rng.integers(len(names)))]], 25)
    return _Layer(prims, lut)


# ------------------------------------------------------------------------------------------------
# The public renderer
# ------------------------------------------------------------------------------------------------

_CATEGORY_PROBS = sampling_probabilities()


def render_image(
    config: WorldConfig, split: str, index: int
) -> tuple[Image.Image, list[ObjectRecord], list[str]]:
    """Render image ``index`` of ``split`` in memory.

    Returns ``(image, objects, captions)``: the RGB image before JPEG encoding, every drawn object
    (bottom to top, with its exact visible mask and box; invisible/hidden ones included, flagged by
    ``visible`` / ``annotated``), and the 1-``config.max_captions`` captions of the image.
    """
    check_split(split)
    rng = image_rng(config, split, index)
    size = config.image_size
    background, bg_info = _draw_background(rng, size)

    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    # decided on a stream of its own, so the other images (and worlds without iconic images) stay unchanged
    iconic = split == "pretrain" and config.pretrain_iconic_fraction > 0 and (
        np.random.default_rng([config.seed, SPLIT_CODES[split], int(index), 1]).random() < config.pretrain_iconic_fraction
    )
    if iconic:
        n = 1
    cat_idx = rng.choice(len(CATEGORIES), size=n, p=_CATEGORY_PROBS)
    forced = split == "val" and config.val_covers_all_categories and index < len(CATEGORIES)
    if forced:
        cat_idx[-1] = index
    plans = [_plan_object(rng, CATEGORIES[int(k)], config, background, large=iconic) for k in cat_idx]

    # Painting order: larger objects tend to be further back; the forced val object is on top.
    keys = np.array([-p.extent_px for p in plans]) * rng.uniform(0.6, 1.4, n)
    order = list(np.argsort(keys, kind="stable"))
    if forced:
        order.remove(n - 1)
        order.append(n - 1)
    n_clutter = int(rng.integers(config.min_clutter, config.max_clutter + 1))
    clutter = [(_plan_clutter(rng, size), int(rng.integers(0, n))) for _ in range(n_clutter)]
    layers: list[_Layer] = []
    for depth, k in enumerate(order):
        layers += [layer for layer, slot in clutter if slot == depth]  # clutter never goes on top
        plans[k].layer.object_index = depth
        layers.append(plans[k].layer)
    plans = [plans[k] for k in order]

    # Rasterise, then compute visibility top-down and composite.
    canvas = background.copy()
    rasters = [_rasterize(layer, size) for layer in layers]
    covered = np.zeros((size, size), bool)
    visible_full: dict[int, np.ndarray] = {}
    silhouettes: dict[int, np.ndarray] = {}
    extent: dict[int, tuple[int, int]] = {}
    for layer, raster in zip(reversed(layers), reversed(rasters)):
        if raster is None:
            continue
        y0, x0, codes = raster
        h, w = codes.shape
        sil = codes > 0
        region = covered[y0 : y0 + h, x0 : x0 + w]
        vis = sil & ~region
        target = canvas[y0 : y0 + h, x0 : x0 + w]
        target[vis] = _colorize(layer, y0, x0, codes)[vis]
        region |= sil
        if layer.object_index is not None:
            full = np.zeros((size, size), bool)
            full[y0 : y0 + h, x0 : x0 + w] = vis
            visible_full[layer.object_index] = full
            amodal = np.zeros((size, size), bool)
            amodal[y0 : y0 + h, x0 : x0 + w] = sil
            silhouettes[layer.object_index] = amodal
            extent[layer.object_index] = (h, w)

    records: list[ObjectRecord] = []
    for depth, plan in enumerate(plans):
        mask = visible_full.get(depth, np.zeros((size, size), bool))
        silhouette = silhouettes.get(depth, np.zeros((size, size), bool))
        total = int(silhouette.sum())
        frac = float(mask.sum()) / total if total else 0.0
        visible = total > 0 and frac >= config.min_visible_fraction
        h, w = extent.get(depth, (0, 0))
        records.append(
            ObjectRecord(
                category=plan.spec.name,
                category_id=plan.spec.id,
                bbox=tight_bbox(mask),
                mask=mask,
                silhouette=silhouette,
                visible_fraction=frac,
                visible=visible,
                annotated=visible and (split != "det_train" or plan.spec.split == "base"),
                color=plan.color,
                style=plan.style,
                size=max(h, w) / size,
                depth=depth,
            )
        )

    mentionable = [
        CaptionObject(plan.spec, rec.color, rec.style, rec.size, rec.bbox, rec.depth, int(rec.mask.sum()))
        for plan, rec in zip(plans, records)
        if rec.visible and rec.bbox is not None
    ]
    n_captions = int(rng.integers(config.min_captions, config.max_captions + 1))
    captions = make_captions(rng, mentionable, bg_info.phrases, n_clutter > 0, n_captions)
    return Image.fromarray(canvas), records, captions


__all__ = [
    "SPLITS",
    "BackgroundInfo",
    "ObjectRecord",
    "encode_jpeg",
    "image_id",
    "image_rng",
    "render_image",
    "tight_bbox",
    "visible_masks",
]
