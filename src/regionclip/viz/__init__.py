"""Drawing predictions (appendix Fig. 1 style) with supervision's annotators."""

from .draw import draw_predictions, format_percent, side_by_side

__all__ = ["draw_predictions", "format_percent", "side_by_side"]
