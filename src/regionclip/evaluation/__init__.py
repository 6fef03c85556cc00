"""Evaluation: box-detection metrics for zero-shot and open-vocabulary evaluation (COCO, OV-COCO splits, LVIS),
image–text retrieval recall, top-k accuracy and proposal recall."""

from regionclip.evaluation.coco import evaluate_coco
from regionclip.evaluation.lvis import evaluate_lvis, limit_detections_per_image
from regionclip.evaluation.proposal_recall import proposal_hits, proposal_recall
from regionclip.evaluation.retrieval import retrieval_chance, retrieval_recall_at_1, topk_accuracy
from regionclip.evaluation.table import format_metrics
from regionclip.evaluation.zeroshot import evaluate_zeroshot

__all__ = [
    "evaluate_coco",
    "evaluate_lvis",
    "evaluate_zeroshot",
    "format_metrics",
    "limit_detections_per_image",
    "proposal_hits",
    "proposal_recall",
    "retrieval_chance",
    "retrieval_recall_at_1",
    "topk_accuracy",
]
