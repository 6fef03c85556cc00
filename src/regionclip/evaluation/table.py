"""Plain-text rendering of a metrics dict."""

from __future__ import annotations

import math
from collections.abc import Mapping


def format_metrics(metrics: Mapping[str, float], *, digits: int = 2) -> str:
    """Render metrics as a two-column aligned table (one metric per row, insertion order kept).

    Example::

        metric | value
        -------+------
        AP     | 41.25
        AP50   |   nan
    """
    if digits < 0:
        raise ValueError(f"digits must be >= 0, got {digits}")
    rows = [(str(name), "nan" if math.isnan(float(v)) else f"{float(v):.{digits}f}") for name, v in metrics.items()]
    name_width = max([len("metric"), *(len(name) for name, _ in rows)])
    value_width = max([len("value"), *(len(value) for _, value in rows)])
    lines = [f"{'metric':<{name_width}} | {'value':>{value_width}}", f"{'-' * name_width}-+-{'-' * value_width}"]
    lines += [f"{name:<{name_width}} | {value:>{value_width}}" for name, value in rows]
    return "\n".join(lines)
