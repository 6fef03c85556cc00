"""Vector primitives in which the synthetic categories are drawn.

Every category is described as a list of :class:`Prim` (filled polygons or thick polylines) in a local
"unit" frame (roughly [-1, 1]², y pointing down, like image rows). The renderer normalises the frame,
applies a per-instance similarity transform (scale, aspect, rotation, translation) and rasterises
the primitives with PIL. Rotating *points* instead of rotating a raster keeps the masks exact.

Each primitive carries a paint *role* (an integer code); the renderer maps roles to colours per
instance, so the same structure can be red, striped or outlined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Paint roles (codes written into the per-object index raster; 0 = not painted).
MAIN = 1  # the instance's attribute colour, receives the style (outline / stripes / dots / checks)
SHADE = 2  # a darker version of MAIN (wings, fins, secondary parts)
ACCENT = 3  # a second random colour (roofs, jewels, flags)
DARK = 4  # near black (wheels, eyes, handles)
LIGHT = 5  # near white (windows, pages, faces)
BROWN = 6  # wood, trunks, stems
YELLOW = 7  # flames, beaks, bulbs
GREEN = 8  # leaves, stems
RED = 9  # traffic-light lamp, tongues
NUM_ROLES = 10

PointsLike = Sequence[tuple[float, float]] | np.ndarray


@dataclass(frozen=True)
class Prim:
    """One drawing primitive in the unit frame.

    ``width == 0`` means a filled polygon; ``width > 0`` a polyline of that thickness (unit-frame
    units), closed when ``closed`` is true.
    """

    points: np.ndarray
    role: int
    width: float = 0.0
    closed: bool = False


def _as_points(points: PointsLike) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(arr) < 2:
        raise ValueError("a primitive needs at least two points")
    return arr


def poly(points: PointsLike, role: int) -> Prim:
    """Filled polygon through ``points``."""
    return Prim(_as_points(points), role)


def rect(x0: float, y0: float, x1: float, y1: float, role: int) -> Prim:
    """Filled axis-aligned rectangle (in the unit frame; it still rotates with the object)."""
    return poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], role)


def arc_points(
    cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 24, angle: float = 0.0
) -> np.ndarray:
    """Points on an elliptical arc from ``start`` to ``end`` degrees (0° = +x, 90° = +y = down).

    ``angle`` rotates the ellipse about its centre (degrees, same orientation).
    """
    t = np.radians(np.linspace(start, end, n))
    x, y = rx * np.cos(t), ry * np.sin(t)
    if angle:
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        x, y = c * x - s * y, s * x + c * y
    return np.stack([x + cx, y + cy], axis=1)


def ellipse(
    cx: float, cy: float, rx: float, ry: float, role: int, angle: float = 0.0, n: int = 28
) -> Prim:
    """Filled ellipse approximated by an ``n``-gon."""
    return Prim(arc_points(cx, cy, rx, ry, 0.0, 360.0, n + 1, angle)[:-1], role)


def circle(cx: float, cy: float, r: float, role: int, n: int = 24) -> Prim:
    """Filled circle approximated by an ``n``-gon."""
    return ellipse(cx, cy, r, r, role, n=n)


def half_ellipse(cx: float, cy: float, rx: float, ry: float, role: int, n: int = 24) -> Prim:
    """Upper half of an ellipse (a dome), closed along its diameter."""
    return Prim(arc_points(cx, cy, rx, ry, 180.0, 360.0, n), role)


def line(points: PointsLike, width: float, role: int, closed: bool = False) -> Prim:
    """Thick polyline through ``points`` (``width`` in unit-frame units)."""
    if width <= 0:
        raise ValueError("line width must be positive")
    return Prim(_as_points(points), role, float(width), closed)


def ring(cx: float, cy: float, r: float, width: float, role: int, ry: float | None = None) -> Prim:
    """Circle (or ellipse) outline of thickness ``width``."""
    return Prim(arc_points(cx, cy, r, r if ry is None else ry, 0.0, 360.0, 29)[:-1], role, float(width), True)


def regular_star(points: int, outer: float, inner: float, role: int, rotation: float = -90.0) -> Prim:
    """Star polygon with ``points`` tips, centred at the origin."""
    k = np.arange(2 * points)
    radius = np.where(k % 2 == 0, outer, inner)
    t = np.radians(rotation + k * 180.0 / points)
    return Prim(np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1), role)


def mirror_x(prim: Prim) -> Prim:
    """Mirror a primitive about the vertical axis x = 0."""
    pts = prim.points.copy()
    pts[:, 0] = -pts[:, 0]
    return Prim(pts, prim.role, prim.width, prim.closed)


def prims_extent(prims: Sequence[Prim]) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of all primitives, counting half the thickness of lines."""
    pts = np.concatenate([p.points for p in prims])
    pad = np.repeat([p.width / 2.0 for p in prims], [len(p.points) for p in prims])[:, None]
    lo, hi = (pts - pad).min(axis=0), (pts + pad).max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])
