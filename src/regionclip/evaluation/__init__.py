"""Box-detection metrics for zero-shot and open-vocabulary evaluation (COCO, OV-COCO splits, LVIS)."""

from regionclip.evaluation.coco import evaluate_coco
from regionclip.evaluation.lvis import evaluate_lvis, limit_detections_per_image
from regionclip.evaluation.table import format_metrics
from regionclip.evaluation.zeroshot import evaluate_zeroshot

__all__ = ["evaluate_coco", "evaluate_lvis", "evaluate_zeroshot", "format_metrics", "limit_detections_per_image"]
