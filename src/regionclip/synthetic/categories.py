# Over 300 lines: the category table is one drawing function per category (53), each a few lines; splitting it would scatter the table.
"""The category table of the synthetic world: names, synonyms, plurals, LVIS-like frequency groups,
OV-COCO-like base/novel split, and one procedural drawing function per category.

Categories differ by *structure* (parts and their layout); colour and fill style are per-instance
attributes chosen by the renderer (``MAIN`` / ``SHADE`` roles), so colour alone never identifies a
class. Drawing functions take the instance's RNG and return primitives in a unit frame
(see :mod:`regionclip.synthetic.shapes`); small random variations (number of petals, cabin length,
hand positions ...) give intra-class shape variety.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from .shapes import (
    ACCENT,
    BROWN,
    DARK,
    GREEN,
    LIGHT,
    MAIN,
    RED,
    SHADE,
    YELLOW,
    Prim,
    arc_points,
    circle,
    ellipse,
    half_ellipse,
    line,
    mirror_x,
    poly,
    rect,
    regular_star,
    ring,
)

Frequency = Literal["f", "c", "r"]
SplitName = Literal["base", "novel"]
DrawFn = Callable[[np.random.Generator], list[Prim]]


@dataclass(frozen=True)
class CategorySpec:
    """One category of the synthetic world.

    Attributes:
        id: COCO category id (1-based, table order).
        name: canonical natural-language name.
        synonyms: 0-3 alternative names used in captions (singular).
        plural: plural of ``name``.
        frequency: LVIS-like group, ``"f"`` frequent, ``"c"`` common, ``"r"`` rare.
        split: ``"base"`` (boxes in det_train) or ``"novel"`` (never boxed in det_train).
        draw: procedural drawing function ``rng -> list[Prim]``.
        max_rotation: largest in-plane rotation in degrees (small for upright composed objects).
        unit: counting unit for pluralia tantum ("a pair of scissors"), else ``None``.
        weight: relative sampling weight (set from the frequency group and the rank inside it).
    """

    id: int
    name: str
    synonyms: tuple[str, ...]
    plural: str
    frequency: Frequency
    split: SplitName
    draw: DrawFn = field(repr=False, compare=False)
    max_rotation: float = 15.0
    unit: str | None = None
    weight: float = 1.0

    @property
    def terms(self) -> tuple[str, ...]:
        """Every word form captions may use for this category (name, synonyms, plural)."""
        return tuple(dict.fromkeys((self.name, *self.synonyms, self.plural)))


# ----------------------------------------------------------------------------------------------
# Drawing functions. Coordinates: unit frame, x right, y down; extents are normalised later.
# ----------------------------------------------------------------------------------------------


def _car(r: np.random.Generator) -> list[Prim]:
    back, front = r.uniform(-0.62, -0.35), r.uniform(0.35, 0.62)
    roof = r.uniform(-0.5, -0.32)
    wheel = r.uniform(0.2, 0.27)
    return [
        poly([(back, 0.1), (back + 0.2, roof), (front - 0.2, roof), (front, 0.1)], MAIN),
        poly([(back + 0.12, 0.06), (back + 0.26, roof + 0.08), (-0.04, roof + 0.08), (-0.04, 0.06)], LIGHT),
        poly([(0.04, 0.06), (0.04, roof + 0.08), (front - 0.26, roof + 0.08), (front - 0.12, 0.06)], LIGHT),
        poly([(-1, 0.16), (-0.9, 0.05), (0.85, 0.05), (1, 0.2), (1, 0.55), (-1, 0.55)], MAIN),
        rect(0.86, 0.18, 0.98, 0.28, YELLOW),
        circle(-0.55, 0.55, wheel, DARK),
        circle(0.55, 0.55, wheel, DARK),
        circle(-0.55, 0.55, wheel * 0.4, LIGHT),
        circle(0.55, 0.55, wheel * 0.4, LIGHT),
    ]


def _bus(r: np.random.Generator) -> list[Prim]:
    n = int(r.integers(3, 6))
    prims = [
        poly([(-1, -0.45), (0.9, -0.5), (1, -0.38), (1, 0.4), (-1, 0.4)], MAIN),
        rect(-1, 0.1, 1, 0.18, ACCENT),
        rect(0.72, -0.38, 0.95, -0.02, LIGHT),
    ]
    step = 1.5 / n
    for k in range(n):
        x = -0.9 + k * step
        prims.append(rect(x, -0.36, x + step * 0.75, -0.05, LIGHT))
    for x in (-0.6, 0.6):
        prims += [circle(x, 0.42, 0.2, DARK), circle(x, 0.42, 0.08, LIGHT)]
    return prims


def _truck(r: np.random.Generator) -> list[Prim]:
    top = r.uniform(-0.7, -0.45)
    return [
        rect(-1, top, 0.25, 0.35, MAIN),
        poly([(0.3, -0.2), (0.7, -0.2), (1, 0.1), (1, 0.35), (0.3, 0.35)], SHADE),
        poly([(0.4, -0.12), (0.66, -0.12), (0.86, 0.08), (0.4, 0.08)], LIGHT),
        rect(-1, 0.33, 1, 0.45, DARK),
        circle(-0.7, 0.48, 0.18, DARK),
        circle(-0.32, 0.48, 0.18, DARK),
        circle(0.65, 0.48, 0.18, DARK),
    ]


def _bicycle(r: np.random.Generator) -> list[Prim]:
    rw = r.uniform(0.33, 0.4)
    seat = (-0.2, -0.3)
    bars = (0.42, -0.3)
    pedal = (-0.05, 0.3)
    return [
        ring(-0.6, 0.3, rw, 0.07, DARK),
        ring(0.6, 0.3, rw, 0.07, DARK),
        line([(-0.6, 0.3), pedal, seat, (-0.6, 0.3)], 0.07, MAIN),
        line([seat, bars, pedal], 0.07, MAIN),
        line([bars, (0.6, 0.3)], 0.07, MAIN),
        line([bars, (0.36, -0.5), (0.55, -0.52)], 0.06, DARK),
        poly([(-0.34, -0.36), (-0.05, -0.36), (-0.12, -0.28), (-0.3, -0.28)], DARK),
        circle(*pedal, 0.08, DARK),
    ]


def _boat(r: np.random.Generator) -> list[Prim]:
    prims = [
        line([(0, 0.35), (0, -0.95)], 0.05, DARK),
        poly([(0.06, -0.9), (0.06, 0.25), (r.uniform(0.5, 0.8), 0.25)], LIGHT),
    ]
    if r.random() < 0.6:
        prims.append(poly([(-0.06, -0.7), (-0.06, 0.25), (r.uniform(-0.6, -0.4), 0.25)], ACCENT))
    prims += [
        poly([(0.02, -0.95), (0.25, -0.88), (0.02, -0.8)], ACCENT),
        poly([(-1, 0.3), (1, 0.3), (0.7, 0.72), (-0.75, 0.72)], MAIN),
        rect(-0.9, 0.36, 0.92, 0.42, SHADE),
    ]
    return prims


def _airplane(r: np.random.Generator) -> list[Prim]:
    n_win = int(r.integers(4, 8))
    prims = [
        poly([(-0.05, -0.02), (0.2, -0.02), (-0.12, -0.45), (-0.28, -0.45)], SHADE),
        poly([(-0.95, -0.05), (-0.65, -0.05), (-0.86, -0.55), (-1, -0.55)], SHADE),
        ellipse(0, 0, 1, 0.17, MAIN),
        poly([(0.72, -0.1), (0.9, -0.06), (0.82, -0.01), (0.7, -0.01)], LIGHT),
        poly([(-0.12, 0.02), (0.25, 0.02), (-0.2, 0.68), (-0.42, 0.68)], SHADE),
    ]
    for k in range(n_win):
        prims.append(circle(-0.5 + k * 1.1 / n_win, -0.04, 0.04, LIGHT, n=10))
    return prims


def _house(r: np.random.Generator) -> list[Prim]:
    prims = []
    if r.random() < 0.6:
        prims.append(rect(0.4, -0.78, 0.58, -0.3, SHADE))
    apex = r.uniform(-1.0, -0.75)
    prims += [
        rect(-0.75, -0.05, 0.75, 0.95, MAIN),
        poly([(-0.95, 0.02), (0.95, 0.02), (0, apex)], ACCENT),
        rect(-0.15, 0.4, 0.15, 0.95, BROWN),
    ]
    for x0 in (-0.6, 0.3):
        prims += [
            rect(x0, 0.15, x0 + 0.3, 0.45, LIGHT),
            line([(x0 + 0.15, 0.15), (x0 + 0.15, 0.45)], 0.03, DARK),
            line([(x0, 0.3), (x0 + 0.3, 0.3)], 0.03, DARK),
        ]
    return prims


def _tree(r: np.random.Generator) -> list[Prim]:
    prims = [poly([(-0.14, 1), (0.14, 1), (0.09, 0.05), (-0.09, 0.05)], BROWN)]
    blobs = [(0, -0.45, 0.45), (-0.38, -0.1, 0.38), (0.38, -0.1, 0.38), (0, -0.05, 0.4)]
    for cx, cy, rad in blobs:
        prims.append(circle(cx + r.uniform(-0.06, 0.06), cy + r.uniform(-0.06, 0.06), rad * r.uniform(0.9, 1.1), MAIN))
    for _ in range(int(r.integers(0, 4))):
        prims.append(circle(r.uniform(-0.4, 0.4), r.uniform(-0.5, 0.0), 0.09, SHADE, n=12))
    return prims


def _umbrella(r: np.random.Generator) -> list[Prim]:
    k = int(r.integers(4, 7))
    top = arc_points(0, 0, 1, 0.8, 180, 360, 25)
    tips = np.linspace(1, -1, k + 1)
    bottom = []
    for a, b in zip(tips[:-1], tips[1:]):
        cx, half = (a + b) / 2, (a - b) / 2
        bottom.append(arc_points(cx, 0, half, 0.16, 0, -180, 9))
    canopy = np.concatenate([top, *bottom])
    prims = [
        line([(0, 0), (0, 0.85)], 0.06, DARK),
        line(arc_points(-0.13, 0.85, 0.13, 0.13, 0, 180, 9), 0.06, DARK),
        poly(canopy, MAIN),
    ]
    for t in tips[1:-1]:
        prims.append(line([(0, -0.8), (t, -0.02)], 0.03, SHADE))
    prims.append(line([(0, -0.8), (0, -0.96)], 0.05, DARK))
    return prims


def _fish(r: np.random.Generator) -> list[Prim]:
    tail = r.uniform(0.35, 0.55)
    return [
        poly([(0.45, 0), (1, -tail), (0.88, 0), (1, tail)], SHADE),
        poly([(-0.35, -0.3), (0.05, -0.62), (0.2, -0.28)], SHADE),
        ellipse(-0.15, 0, 0.75, r.uniform(0.32, 0.45), MAIN),
        line(arc_points(-0.55, 0, 0.18, 0.28, -60, 60, 7), 0.04, SHADE),
        circle(-0.62, -0.1, 0.11, LIGHT, n=12),
        circle(-0.64, -0.1, 0.06, DARK, n=10),
    ]


def _flower(r: np.random.Generator) -> list[Prim]:
    n = int(r.integers(5, 10))
    off = r.uniform(0, 360)
    prims = [
        line([(0, -0.3), (0.06, 0.4), (0, 1)], 0.08, GREEN),
        ellipse(0.22, 0.5, 0.22, 0.08, GREEN, angle=-30),
    ]
    for k in range(n):
        a = off + 360.0 * k / n
        cx, cy = 0.33 * math.cos(math.radians(a)), -0.42 + 0.33 * math.sin(math.radians(a))
        prims.append(ellipse(cx, cy, 0.26, 0.13, MAIN, angle=a, n=16))
    prims.append(circle(0, -0.42, 0.15, YELLOW))
    return prims


def _cup(r: np.random.Generator) -> list[Prim]:
    prims = []
    if r.random() < 0.4:
        prims.append(ellipse(-0.07, 0.78, 0.95, 0.13, ACCENT))
    prims += [
        ring(0.52, 0.02, 0.28, 0.11, MAIN, ry=0.3),
        poly([(-0.65, -0.65), (0.5, -0.65), (0.4, 0.75), (-0.55, 0.75)], MAIN),
        ellipse(-0.075, -0.65, 0.575, 0.1, SHADE),
    ]
    return prims


def _bird(r: np.random.Generator) -> list[Prim]:
    return [
        poly([(-0.45, 0.1), (-1, r.uniform(-0.3, -0.1)), (-0.95, 0.35)], SHADE),
        line([(0, 0.48), (0, 0.85)], 0.04, DARK),
        line([(0.15, 0.48), (0.18, 0.85)], 0.04, DARK),
        ellipse(-0.05, 0.15, 0.6, 0.38, MAIN),
        circle(0.5, -0.3, 0.28, MAIN),
        ellipse(-0.12, 0.08, 0.38, 0.18, SHADE, angle=-15),
        poly([(0.74, -0.38), (1.05, -0.27), (0.74, -0.2)], YELLOW),
        circle(0.58, -0.36, 0.05, DARK, n=10),
    ]


def _clock(r: np.random.Generator) -> list[Prim]:
    prims = []
    if r.random() < 0.35:  # alarm-clock bells and feet
        prims += [circle(-0.65, -0.72, 0.3, MAIN), circle(0.65, -0.72, 0.3, MAIN)]
        prims += [line([(-0.55, 0.7), (-0.75, 1.0)], 0.08, DARK), line([(0.55, 0.7), (0.75, 1.0)], 0.08, DARK)]
    prims += [circle(0, 0, 1, MAIN, n=36), circle(0, 0, 0.82, LIGHT, n=36)]
    for k in range(12):
        t = math.radians(30 * k)
        prims.append(line([(0.66 * math.cos(t), 0.66 * math.sin(t)), (0.78 * math.cos(t), 0.78 * math.sin(t))], 0.05, DARK))
    h, m = math.radians(r.uniform(0, 360)), math.radians(r.uniform(0, 360))
    prims += [
        line([(0, 0), (0.42 * math.cos(h), 0.42 * math.sin(h))], 0.08, DARK),
        line([(0, 0), (0.66 * math.cos(m), 0.66 * math.sin(m))], 0.05, DARK),
        circle(0, 0, 0.07, DARK, n=10),
    ]
    return prims


def _key(r: np.random.Generator) -> list[Prim]:
    prims = [ring(-0.62, 0, 0.3, 0.16, MAIN), rect(-0.34, -0.08, 1, 0.08, MAIN)]
    n = int(r.integers(2, 4))
    for k in range(n):
        x = 0.55 + k * 0.16
        prims.append(rect(x, 0.06, x + 0.11, r.uniform(0.2, 0.36), MAIN))
    return prims


def _lamp(r: np.random.Generator) -> list[Prim]:
    w = r.uniform(0.7, 0.9)
    return [
        line([(0, -0.3), (0, 0.85)], 0.07, DARK),
        ellipse(0, 0.88, 0.45, 0.12, DARK),
        ellipse(0, -0.25, 0.2, 0.14, YELLOW),
        poly([(-0.42, -1), (0.42, -1), (w, -0.3), (-w, -0.3)], MAIN),
    ]


def _chair(r: np.random.Generator) -> list[Prim]:
    back_top = r.uniform(-1.0, -0.75)
    return [
        rect(-0.55, back_top, -0.42, 0.15, MAIN),
        rect(0.42, back_top, 0.55, 0.15, MAIN),
        rect(-0.55, back_top + 0.08, 0.55, back_top + 0.22, MAIN),
        rect(-0.55, -0.45, 0.55, -0.33, MAIN),
        poly([(-0.68, 0.05), (0.68, 0.05), (0.62, 0.25), (-0.62, 0.25)], SHADE),
        rect(-0.6, 0.25, -0.47, 1, MAIN),
        rect(0.47, 0.25, 0.6, 1, MAIN),
    ]


def _kite(r: np.random.Generator) -> list[Prim]:
    ys = np.linspace(0.45, 1.05, 12)
    phase = r.uniform(0, 6.28)
    tail = np.stack([0.12 * np.sin(ys * 9 + phase), ys], axis=1)
    prims = [line(tail, 0.03, DARK)]
    for k in (4, 8):
        x, y = tail[k]
        prims += [poly([(x, y), (x - 0.14, y - 0.07), (x - 0.14, y + 0.07)], ACCENT)]
        prims += [poly([(x, y), (x + 0.14, y - 0.07), (x + 0.14, y + 0.07)], ACCENT)]
    prims += [
        poly([(0, -1), (0.55, -0.35), (0, 0.45), (-0.55, -0.35)], MAIN),
        poly([(0, -1), (0.55, -0.35), (0, -0.35)], SHADE),
        line([(0, -1), (0, 0.45)], 0.03, DARK),
        line([(-0.55, -0.35), (0.55, -0.35)], 0.03, DARK),
    ]
    return prims


def _star(r: np.random.Generator) -> list[Prim]:
    return [regular_star(5, 1.0, r.uniform(0.38, 0.5), MAIN)]


def _heart(r: np.random.Generator) -> list[Prim]:
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    prims = [poly(np.stack([x, y], axis=1) / 16.0, MAIN)]
    if r.random() < 0.4:
        prims.append(ellipse(-0.45, -0.35, 0.12, 0.2, LIGHT, angle=30))
    return prims


def _moon(r: np.random.Generator) -> list[Prim]:
    d, r2 = r.uniform(0.35, 0.6), r.uniform(0.8, 0.95)
    # Crescent = unit circle minus a circle of radius r2 centred at (d, 0); built from the two arcs.
    xi = (1 - r2 * r2 + d * d) / (2 * d)
    yi = math.sqrt(max(1 - xi * xi, 0.0))
    alpha = math.degrees(math.atan2(yi, xi))
    gamma = math.degrees(math.atan2(yi, xi - d))
    outer = arc_points(0, 0, 1, 1, alpha, 360 - alpha, 30)
    inner = arc_points(d, 0, r2, r2, 360 - gamma, gamma, 24)
    return [poly(np.concatenate([outer, inner]), MAIN)]


def _sun(r: np.random.Generator) -> list[Prim]:
    n = int(r.integers(8, 13))
    half = 180.0 / n * 0.45
    prims = []
    off = r.uniform(0, 360)
    for k in range(n):
        a = off + 360.0 * k / n
        p1 = arc_points(0, 0, 0.62, 0.62, a - half, a + half, 2)
        tip = arc_points(0, 0, 1, 1, a, a, 1)
        prims.append(poly(np.concatenate([p1, tip]), MAIN))
    prims.append(circle(0, 0, 0.55, MAIN, n=32))
    return prims


def _cloud(r: np.random.Generator) -> list[Prim]:
    prims = [rect(-0.55, 0.1, 0.7, 0.52, MAIN)]
    for cx, cy, rad in [(-0.55, 0.15, 0.38), (-0.1, -0.2, 0.5), (0.42, -0.05, 0.42), (0.72, 0.22, 0.3)]:
        prims.append(circle(cx + r.uniform(-0.05, 0.05), cy + r.uniform(-0.05, 0.05), rad * r.uniform(0.9, 1.1), MAIN))
    return prims


def _mushroom(r: np.random.Generator) -> list[Prim]:
    prims = [
        poly([(-0.22, 0), (0.22, 0), (0.28, 0.95), (-0.28, 0.95)], LIGHT),
        half_ellipse(0, 0.05, 1, r.uniform(0.65, 0.85), MAIN),
    ]
    for _ in range(int(r.integers(3, 6))):
        a = math.radians(r.uniform(200, 340))
        rho = r.uniform(0.3, 0.62)
        prims.append(circle(rho * math.cos(a), 0.05 + rho * math.sin(a) * 0.8, r.uniform(0.08, 0.13), LIGHT, n=12))
    return prims


def _apple(r: np.random.Generator) -> list[Prim]:
    prims = [
        line([(0, -0.45), (0.08, -0.9)], 0.08, BROWN),
        ellipse(0.3, -0.72, 0.25, 0.1, GREEN, angle=-30),
        ellipse(-0.27, 0.1, 0.62, 0.7, MAIN),
        ellipse(0.27, 0.1, 0.62, 0.7, MAIN),
    ]
    if r.random() < 0.5:
        prims.append(ellipse(-0.45, -0.15, 0.1, 0.16, LIGHT))
    return prims


def _leaf(r: np.random.Generator) -> list[Prim]:
    h = r.uniform(0.38, 0.5)
    x = np.linspace(-1, 1, 17)
    y = h * (1 - x**2) ** 0.8
    blade = np.concatenate([np.stack([x, -y], 1), np.stack([x[::-1], y[::-1]], 1)[1:-1]])
    prims = [line([(0.95, 0), (1.3, 0.15)], 0.06, SHADE), poly(blade, MAIN), line([(-0.95, 0), (0.98, 0)], 0.04, SHADE)]
    for xv in (-0.45, 0.0, 0.45):
        prims.append(line([(xv, 0), (xv - 0.25, -h * 0.6)], 0.025, SHADE))
        prims.append(line([(xv, 0), (xv - 0.25, h * 0.6)], 0.025, SHADE))
    return prims


def _candle(r: np.random.Generator) -> list[Prim]:
    flame = np.concatenate([arc_points(0, -0.62, 0.14, 0.14, -30, 210, 12), [(0, -1.0)]])
    return [
        poly(flame, YELLOW),
        line([(0, -0.5), (0, -0.38)], 0.04, DARK),
        rect(-0.25, -0.4, 0.25, 0.85, MAIN),
        poly([(-0.25, -0.4), (0.25, -0.4), (0.25, -0.3), (0.1, -0.3), (0.08, -0.15), (0.0, -0.3), (-0.25, -0.3)], SHADE),
        rect(-0.5, 0.8, 0.5, 0.95, SHADE if r.random() < 0.5 else ACCENT),
    ]


def _bottle(r: np.random.Generator) -> list[Prim]:
    w = r.uniform(0.3, 0.42)
    return [
        poly([(-w, 1), (w, 1), (w, -0.2), (0.12, -0.55), (0.12, -0.85), (-0.12, -0.85), (-0.12, -0.55), (-w, -0.2)], MAIN),
        rect(-0.14, -1, 0.14, -0.82, DARK if r.random() < 0.5 else ACCENT),
        rect(-w, 0.05, w, 0.5, LIGHT),
    ]


def _eyeglasses(r: np.random.Generator) -> list[Prim]:
    lens_role = DARK if r.random() < 0.4 else LIGHT
    rad = r.uniform(0.32, 0.4)
    return [
        circle(-0.5, 0, rad, lens_role),
        circle(0.5, 0, rad, lens_role),
        ring(-0.5, 0, rad, 0.1, MAIN),
        ring(0.5, 0, rad, 0.1, MAIN),
        line(arc_points(0, 0.02, 0.14, 0.14, 200, 340, 7), 0.08, MAIN),
        line([(-0.5 - rad, -0.05), (-1.0, -0.3)], 0.07, MAIN),
        line([(0.5 + rad, -0.05), (1.0, -0.3)], 0.07, MAIN),
    ]


def _book(r: np.random.Generator) -> list[Prim]:
    prims = [
        poly([(-1, -0.5), (0, -0.4), (1, -0.5), (1, 0.68), (0, 0.78), (-1, 0.68)], MAIN),
        poly([(-0.92, -0.62), (0, -0.5), (0, 0.62), (-0.92, 0.52)], LIGHT),
        poly([(0.92, -0.62), (0, -0.5), (0, 0.62), (0.92, 0.52)], LIGHT),
        line([(0, -0.5), (0, 0.62)], 0.03, SHADE),
    ]
    n = int(r.integers(3, 6))
    for k in range(n):
        y = -0.38 + k * 0.85 / n
        prims.append(line([(-0.8, y), (-0.12, y + 0.08)], 0.025, DARK))
        prims.append(line([(0.12, y + 0.08), (0.8, y)], 0.025, DARK))
    return prims


def _ladder(r: np.random.Generator) -> list[Prim]:
    n = int(r.integers(4, 7))
    prims = [rect(-0.5, -1, -0.38, 1, MAIN), rect(0.38, -1, 0.5, 1, MAIN)]
    for k in range(n):
        y = -0.85 + k * 1.7 / (n - 1)
        prims.append(rect(-0.4, y - 0.04, 0.4, y + 0.04, MAIN))
    return prims


def _television(r: np.random.Generator) -> list[Prim]:
    return [
        line([(0, -0.55), (-0.35, -1)], 0.04, DARK),
        line([(0, -0.55), (0.35, -1)], 0.04, DARK),
        line([(-0.7, 0.68), (-0.82, 0.95)], 0.06, DARK),
        line([(0.7, 0.68), (0.82, 0.95)], 0.06, DARK),
        rect(-1, -0.55, 1, 0.7, MAIN),
        rect(-0.86, -0.42, 0.45, 0.57, DARK if r.random() < 0.6 else LIGHT),
        poly([(-0.75, -0.32), (-0.45, -0.32), (-0.75, -0.05)], LIGHT),
        circle(0.72, -0.2, 0.1, ACCENT, n=12),
        circle(0.72, 0.15, 0.1, ACCENT, n=12),
    ]


def _rocket(r: np.random.Generator) -> list[Prim]:
    return [
        poly([(-0.2, 0.72), (0.2, 0.72), (0, r.uniform(0.95, 1.15))], YELLOW),
        poly([(-0.28, 0.3), (-0.6, 0.82), (-0.28, 0.7)], ACCENT),
        poly([(0.28, 0.3), (0.6, 0.82), (0.28, 0.7)], ACCENT),
        poly([(-0.3, 0.75), (0.3, 0.75), (0.3, -0.4), (0.15, -0.8), (0, -1), (-0.15, -0.8), (-0.3, -0.4)], MAIN),
        circle(0, -0.15, 0.17, DARK, n=16),
        circle(0, -0.15, 0.12, LIGHT, n=16),
    ]


def _snowman(r: np.random.Generator) -> list[Prim]:
    return [
        line([(-0.3, -0.1), (-0.8, -0.42)], 0.04, BROWN),
        line([(0.3, -0.1), (0.8, -0.42)], 0.04, BROWN),
        circle(0, 0.55, 0.48, MAIN),
        circle(0, -0.05, 0.36, MAIN),
        circle(0, -0.5, 0.26, MAIN),
        rect(-0.18, -0.98, 0.18, -0.7, DARK),
        rect(-0.3, -0.74, 0.3, -0.68, DARK),
        circle(-0.09, -0.55, 0.035, DARK, n=8),
        circle(0.09, -0.55, 0.035, DARK, n=8),
        poly([(0, -0.5), (0.25, -0.46), (0, -0.43)], ACCENT),
        circle(0, -0.1, 0.04, DARK, n=8),
        circle(0, 0.08, 0.04, DARK, n=8),
    ]


def _cat(r: np.random.Generator) -> list[Prim]:
    ts = np.linspace(0, 1, 10)
    tail = np.stack([0.4 + 0.45 * ts, 0.8 - 0.55 * ts**0.7 + 0.1 * np.sin(ts * 6)], 1)
    prims = [
        line(tail, 0.12, MAIN),
        poly([(-0.4, -0.45), (-0.36, -0.98), (-0.06, -0.66)], MAIN),
        poly([(0.4, -0.45), (0.36, -0.98), (0.06, -0.66)], MAIN),
        ellipse(0, 0.42, 0.5, 0.52, MAIN),
        ellipse(0, -0.35, 0.42, 0.36, MAIN),
        poly([(-0.33, -0.58), (-0.32, -0.85), (-0.14, -0.66)], ACCENT),
        poly([(0.33, -0.58), (0.32, -0.85), (0.14, -0.66)], ACCENT),
        ellipse(-0.16, -0.4, 0.06, 0.09, DARK, n=10),
        ellipse(0.16, -0.4, 0.06, 0.09, DARK, n=10),
        poly([(-0.06, -0.26), (0.06, -0.26), (0, -0.19)], ACCENT),
    ]
    for side in (-1, 1):
        for dy in (-0.06, 0.02):
            prims.append(line([(side * 0.12, -0.22), (side * 0.62, -0.22 + dy * 2)], 0.015, DARK))
    return prims


def _rabbit(r: np.random.Generator) -> list[Prim]:
    ear = r.uniform(0.32, 0.42)
    return [
        ellipse(-0.16, -0.35 - ear, 0.11, ear, MAIN, angle=-8),
        ellipse(0.16, -0.35 - ear, 0.11, ear, MAIN, angle=8),
        ellipse(-0.16, -0.35 - ear, 0.05, ear * 0.75, LIGHT, angle=-8),
        ellipse(0.16, -0.35 - ear, 0.05, ear * 0.75, LIGHT, angle=8),
        ellipse(0, 0.5, 0.45, 0.45, MAIN),
        ellipse(0, -0.15, 0.32, 0.28, MAIN),
        ellipse(-0.22, 0.92, 0.16, 0.08, SHADE),
        ellipse(0.22, 0.92, 0.16, 0.08, SHADE),
        circle(-0.12, -0.2, 0.045, DARK, n=8),
        circle(0.12, -0.2, 0.045, DARK, n=8),
        circle(0, -0.07, 0.05, ACCENT, n=8),
    ]


def _turtle(r: np.random.Generator) -> list[Prim]:
    return [
        ellipse(-0.45, 0.38, 0.14, 0.2, SHADE),
        ellipse(0.35, 0.38, 0.14, 0.2, SHADE),
        poly([(-0.75, 0.22), (-1.0, 0.32), (-0.75, 0.3)], SHADE),
        ellipse(0.8, 0.08, 0.22, 0.16, SHADE),
        circle(0.88, 0.03, 0.035, DARK, n=8),
        half_ellipse(-0.05, 0.25, 0.78, r.uniform(0.6, 0.75), MAIN),
        rect(-0.83, 0.2, 0.73, 0.3, SHADE),
        ellipse(-0.05, -0.08, 0.24, 0.18, SHADE),
        ellipse(-0.48, 0.08, 0.15, 0.12, SHADE),
        ellipse(0.38, 0.08, 0.15, 0.12, SHADE),
    ]


def _snake(r: np.random.Generator) -> list[Prim]:
    xs = np.linspace(-1, 0.65, 30)
    freq, phase = r.uniform(1.2, 1.8), r.uniform(0, 6.28)
    ys = 0.35 * np.sin(2 * math.pi * freq * (xs + 1) / 1.65 + phase)
    head_y = float(ys[-1])
    return [
        line(np.stack([xs, ys], 1), 0.2, MAIN),
        ellipse(0.8, head_y, 0.22, 0.15, MAIN),
        circle(0.86, head_y - 0.05, 0.035, DARK, n=8),
        line([(1.0, head_y), (1.15, head_y), (1.22, head_y - 0.06)], 0.025, RED),
        line([(1.15, head_y), (1.22, head_y + 0.06)], 0.025, RED),
    ]


def _butterfly(r: np.random.Generator) -> list[Prim]:
    up = ellipse(-0.45, -0.35, 0.5, 0.4, MAIN, angle=25)
    low = ellipse(-0.33, 0.38, 0.34, 0.28, SHADE, angle=-25)
    spot = circle(-0.5, -0.38, r.uniform(0.1, 0.16), ACCENT, n=14)
    antenna = line([(-0.02, -0.5), (-0.25, -0.95)], 0.03, DARK)
    knob = circle(-0.25, -0.95, 0.05, DARK, n=8)
    half = [low, up, spot, antenna, knob]
    return [*half, *[mirror_x(p) for p in half], ellipse(0, 0, 0.08, 0.55, DARK)]


def _spider(r: np.random.Generator) -> list[Prim]:
    prims = []
    if r.random() < 0.5:
        prims.append(line([(0, -0.35), (0, -1.0)], 0.02, LIGHT))
    for k in range(4):
        y0 = -0.05 + k * 0.15
        knee = (0.55 + 0.05 * k, y0 - 0.4 + 0.12 * k)
        foot = (0.9, y0 + 0.1 + 0.15 * k)
        leg = line([(0.1, y0), knee, foot], 0.06, MAIN)
        prims += [leg, mirror_x(leg)]
    prims += [
        ellipse(0, 0.25, 0.32, 0.38, MAIN),
        ellipse(0, -0.22, 0.2, 0.18, MAIN),
        circle(-0.07, -0.26, 0.04, LIGHT, n=8),
        circle(0.07, -0.26, 0.04, LIGHT, n=8),
    ]
    return prims


def _anchor(r: np.random.Generator) -> list[Prim]:
    arc = arc_points(0, 0.22, 0.62, 0.62, 15, 165, 15)
    return [
        ring(0, -0.82, 0.14, 0.07, MAIN),
        rect(-0.07, -0.68, 0.07, 0.86, MAIN),
        rect(-0.42, -0.55, 0.42, -0.43, MAIN),
        line(arc, 0.13, MAIN),
        poly([(0.72, 0.36), (0.5, 0.18), (0.48, 0.5)], MAIN),
        poly([(-0.72, 0.36), (-0.5, 0.18), (-0.48, 0.5)], MAIN),
    ]


def _hammer(r: np.random.Generator) -> list[Prim]:
    return [
        rect(-0.08, -0.55, 0.08, 1, BROWN if r.random() < 0.6 else ACCENT),
        rect(-0.1, 0.45, 0.1, 1, DARK),
        rect(-0.5, -0.85, 0.3, -0.5, MAIN),
        rect(-0.66, -0.9, -0.5, -0.45, MAIN),
        poly([(0.3, -0.85), (0.82, -1.0), (0.78, -0.88), (0.3, -0.58)], MAIN),
    ]


def _scissors(r: np.random.Generator) -> list[Prim]:
    spread = r.uniform(0.12, 0.3)
    return [
        poly([(-0.3, 0.42), (-0.16, 0.46), (spread, -1.0)], LIGHT),
        poly([(0.3, 0.42), (0.16, 0.46), (-spread, -1.0)], LIGHT),
        ring(-0.36, 0.62, 0.2, 0.09, MAIN),
        ring(0.36, 0.62, 0.2, 0.09, MAIN),
        circle(0, -0.06, 0.05, DARK, n=10),
    ]


def _pencil(r: np.random.Generator) -> list[Prim]:
    return [
        rect(-0.7, -0.13, 0.75, 0.13, MAIN),
        rect(-0.7, -0.035, 0.75, 0.035, SHADE),
        poly([(0.75, -0.13), (0.75, 0.13), (1.08, 0)], LIGHT),
        poly([(0.97, -0.035), (0.97, 0.035), (1.08, 0)], DARK),
        rect(-0.84, -0.14, -0.7, 0.14, LIGHT),
        rect(-1.0, -0.13, -0.84, 0.13, ACCENT),
    ]


def _balloon(r: np.random.Generator) -> list[Prim]:
    ys = np.linspace(0.35, 1.05, 10)
    string = np.stack([0.06 * np.sin(ys * 12 + r.uniform(0, 6.28)), ys], 1)
    return [
        line(string, 0.02, DARK),
        poly([(0, 0.3), (-0.08, 0.42), (0.08, 0.42)], MAIN),
        ellipse(0, -0.32, 0.5, r.uniform(0.58, 0.68), MAIN),
        ellipse(-0.2, -0.55, 0.08, 0.14, LIGHT, angle=20),
    ]


def _crown(r: np.random.Generator) -> list[Prim]:
    mid = r.uniform(-0.9, -0.7)
    return [
        poly([(-0.9, 0.5), (-1, -0.6), (-0.5, -0.05), (0, mid), (0.5, -0.05), (1, -0.6), (0.9, 0.5)], MAIN),
        rect(-0.9, 0.3, 0.9, 0.55, SHADE),
        circle(-1, -0.6, 0.09, ACCENT, n=10),
        circle(0, mid, 0.09, ACCENT, n=10),
        circle(1, -0.6, 0.09, ACCENT, n=10),
        circle(0, 0.42, 0.07, ACCENT, n=10),
    ]


def _guitar(r: np.random.Generator) -> list[Prim]:
    prims = [
        ellipse(0, 0.55, 0.48, 0.42, MAIN),
        ellipse(0, 0.05, 0.36, 0.32, MAIN),
        circle(0, 0.22, 0.12, DARK, n=16),
        rect(-0.07, -0.95, 0.07, 0.05, BROWN),
        rect(-0.12, -1.12, 0.12, -0.92, DARK),
        rect(-0.16, 0.6, 0.16, 0.66, DARK),
    ]
    for x in (-0.035, 0.0, 0.035):
        prims.append(line([(x, -0.95), (x, 0.62)], 0.012, LIGHT))
    return prims


def _traffic_light(r: np.random.Generator) -> list[Prim]:
    return [
        rect(-0.06, 0.5, 0.06, 1, DARK),
        rect(-0.35, -1, 0.35, 0.55, MAIN),
        circle(0, -0.65, 0.2, RED),
        circle(0, -0.22, 0.2, YELLOW),
        circle(0, 0.21, 0.2, GREEN),
    ]


def _tent(r: np.random.Generator) -> list[Prim]:
    prims = [
        line([(0, -0.9), (0, -1.08)], 0.04, DARK),
        poly([(-1, 0.8), (0, -0.9), (1, 0.8)], MAIN),
        poly([(-0.3, 0.8), (0, 0.1), (0.3, 0.8)], DARK),
        rect(-1.05, 0.8, 1.05, 0.88, BROWN),
    ]
    if r.random() < 0.5:
        prims.append(poly([(0.02, -1.08), (0.3, -1.0), (0.02, -0.93)], ACCENT))
    return prims


def _flag(r: np.random.Generator) -> list[Prim]:
    amp, phase = r.uniform(0.04, 0.12), r.uniform(0, 6.28)
    xs = np.linspace(-0.75, 0.95, 12)
    wave = amp * np.sin(xs * 5 + phase)
    top, bottom = -0.95 + wave, -0.05 + wave
    cloth = np.concatenate([np.stack([xs, top], 1), np.stack([xs[::-1], bottom[::-1]], 1)])
    prims = [rect(-0.85, -1, -0.75, 1, DARK), circle(-0.8, -1.02, 0.07, YELLOW, n=10), poly(cloth, MAIN)]
    if r.random() < 0.5:
        band = np.concatenate([np.stack([xs, top + 0.3], 1), np.stack([xs[::-1], (top + 0.6)[::-1]], 1)])
        prims.append(poly(band, ACCENT))
    else:
        prims.append(circle(0.1, -0.5 + amp * math.sin(0.5 + phase), 0.2, ACCENT))
    return prims


def _cactus(r: np.random.Generator) -> list[Prim]:
    prims = [
        line([(-0.2, 0.1), (-0.6, 0.1), (-0.6, -0.45)], 0.22, MAIN),
        line([(0.2, -0.15), (0.55, -0.15), (0.55, -0.6)], 0.22, MAIN),
        rect(-0.2, -0.8, 0.2, 0.85, MAIN),
        circle(0, -0.8, 0.2, MAIN),
        line([(0, -0.85), (0, 0.8)], 0.02, SHADE),
    ]
    if r.random() < 0.6:
        prims.append(poly([(-0.45, 0.8), (0.45, 0.8), (0.35, 1.2), (-0.35, 1.2)], BROWN))
    return prims


def _diamond(r: np.random.Generator) -> list[Prim]:
    return [
        poly([(-1, -0.3), (-0.55, -0.75), (0.55, -0.75), (1, -0.3), (0, 0.9)], MAIN),
        poly([(-0.3, -0.3), (0, -0.75), (0.3, -0.3)], LIGHT),
        line([(-1, -0.3), (1, -0.3)], 0.03, SHADE),
        line([(-0.55, -0.75), (-0.3, -0.3), (0, 0.9), (0.3, -0.3), (0.55, -0.75)], 0.03, SHADE),
    ]


# ----------------------------------------------------------------------------------------------
# The table. Order inside each frequency group is the Zipf rank (first = most frequent).
# ----------------------------------------------------------------------------------------------

# name, synonyms, plural, frequency, split, draw, max_rotation, unit
_TABLE: list[tuple[str, tuple[str, ...], str, Frequency, SplitName, DrawFn, float, str | None]] = [
    # frequent
    ("car", ("automobile", "auto"), "cars", "f", "base", _car, 10, None),
    ("tree", (), "trees", "f", "base", _tree, 8, None),
    ("house", ("home", "cottage"), "houses", "f", "base", _house, 8, None),
    ("bird", (), "birds", "f", "base", _bird, 20, None),
    ("umbrella", ("parasol",), "umbrellas", "f", "novel", _umbrella, 25, None),
    ("flower", ("blossom",), "flowers", "f", "base", _flower, 20, None),
    ("cup", ("mug",), "cups", "f", "base", _cup, 10, None),
    ("cat", ("kitty",), "cats", "f", "novel", _cat, 10, None),
    ("chair", ("seat",), "chairs", "f", "base", _chair, 8, None),
    ("fish", (), "fish", "f", "base", _fish, 30, None),
    ("clock", (), "clocks", "f", "novel", _clock, 15, None),
    ("boat", ("ship", "vessel"), "boats", "f", "base", _boat, 10, None),
    ("bicycle", ("bike", "cycle"), "bicycles", "f", "novel", _bicycle, 10, None),
    ("star", (), "stars", "f", "base", _star, 180, None),
    ("apple", (), "apples", "f", "novel", _apple, 25, None),
    ("book", (), "books", "f", "base", _book, 15, None),
    # common
    ("bus", ("coach",), "buses", "c", "base", _bus, 6, None),
    ("airplane", ("plane", "aeroplane", "aircraft"), "airplanes", "c", "novel", _airplane, 25, None),
    ("key", (), "keys", "c", "base", _key, 60, None),
    ("truck", ("lorry",), "trucks", "c", "base", _truck, 6, None),
    ("kite", (), "kites", "c", "novel", _kite, 25, None),
    ("heart", (), "hearts", "c", "base", _heart, 30, None),
    ("lamp", (), "lamps", "c", "base", _lamp, 8, None),
    ("moon", ("crescent",), "moons", "c", "novel", _moon, 45, None),
    ("sun", (), "suns", "c", "base", _sun, 45, None),
    ("cloud", (), "clouds", "c", "base", _cloud, 8, None),
    ("leaf", (), "leaves", "c", "base", _leaf, 60, None),
    ("ladder", (), "ladders", "c", "novel", _ladder, 15, None),
    ("bottle", ("flask",), "bottles", "c", "base", _bottle, 15, None),
    ("television", ("tv",), "televisions", "c", "base", _television, 6, None),
    ("guitar", (), "guitars", "c", "novel", _guitar, 35, None),
    ("balloon", (), "balloons", "c", "base", _balloon, 20, None),
    ("tent", (), "tents", "c", "novel", _tent, 6, None),
    ("flag", ("banner",), "flags", "c", "base", _flag, 10, None),
    ("pencil", (), "pencils", "c", "base", _pencil, 60, None),
    # rare
    ("mushroom", ("toadstool",), "mushrooms", "r", "base", _mushroom, 12, None),
    ("snowman", (), "snowmen", "r", "novel", _snowman, 8, None),
    ("candle", (), "candles", "r", "base", _candle, 8, None),
    ("eyeglasses", ("glasses", "spectacles"), "eyeglasses", "r", "base", _eyeglasses, 15, "pair"),
    ("butterfly", (), "butterflies", "r", "novel", _butterfly, 30, None),
    ("rocket", ("spaceship",), "rockets", "r", "base", _rocket, 30, None),
    ("rabbit", ("bunny",), "rabbits", "r", "base", _rabbit, 10, None),
    ("scissors", ("shears",), "scissors", "r", "novel", _scissors, 45, "pair"),
    ("turtle", ("tortoise",), "turtles", "r", "base", _turtle, 12, None),
    ("snake", ("serpent",), "snakes", "r", "base", _snake, 20, None),
    ("crown", ("tiara",), "crowns", "r", "novel", _crown, 12, None),
    ("spider", (), "spiders", "r", "base", _spider, 30, None),
    ("anchor", (), "anchors", "r", "base", _anchor, 20, None),
    ("cactus", (), "cacti", "r", "novel", _cactus, 8, None),
    ("hammer", ("mallet",), "hammers", "r", "base", _hammer, 45, None),
    ("traffic light", ("traffic signal", "stoplight"), "traffic lights", "r", "base", _traffic_light, 6, None),
    ("diamond", ("gem", "jewel"), "diamonds", "r", "base", _diamond, 20, None),
]

#: Total sampling mass of each frequency group's head category; weights fall off as rank^-ZIPF_EXPONENT.
GROUP_HEAD_WEIGHT: dict[str, float] = {"f": 12.0, "c": 3.0, "r": 0.5}
ZIPF_EXPONENT = 0.7


def _build_table() -> list[CategorySpec]:
    specs: list[CategorySpec] = []
    rank = {"f": 0, "c": 0, "r": 0}
    for i, (name, syn, plural, freq, split, draw, max_rot, unit) in enumerate(_TABLE):
        weight = GROUP_HEAD_WEIGHT[freq] / (rank[freq] + 1) ** ZIPF_EXPONENT
        rank[freq] += 1
        specs.append(CategorySpec(i + 1, name, syn, plural, freq, split, draw, float(max_rot), unit, weight))
    return specs


#: All categories, in id order (``CATEGORIES[i].id == i + 1``).
CATEGORIES: list[CategorySpec] = _build_table()
CATEGORY_BY_NAME: dict[str, CategorySpec] = {c.name: c for c in CATEGORIES}


def category_names(split: Literal["all", "base", "novel"] = "all") -> list[str]:
    """Names of the categories of a split (``"all"``, ``"base"`` or ``"novel"``), in id order."""
    if split not in ("all", "base", "novel"):
        raise ValueError(f"split must be 'all', 'base' or 'novel', got {split!r}")
    return [c.name for c in CATEGORIES if split == "all" or c.split == split]


def sampling_probabilities() -> np.ndarray:
    """Per-category probability (id order) of drawing that category for one object slot."""
    w = np.array([c.weight for c in CATEGORIES], dtype=np.float64)
    return w / w.sum()
