"""detectron2-compatible region proposal networks (the frozen offline RPNs of RegionCLIP).

>>> from regionclip.modeling.rpn import ProposalNetwork, RPNConfig
>>> rpn = ProposalNetwork(RPNConfig.lvis_fpn()).eval()
>>> proposals = rpn([rgb_image_0_255], nms_thresh=0.9)   # list of Proposals(boxes, objectness_logits, image_size)

Load released weights with ``regionclip.checkpoints.detectron2_rpn.load_detectron2_rpn``.
"""

from .anchors import AnchorGenerator, cell_anchors, grid_anchors
from ..box_regression import BoxCoder
from .config import CAFFE_PIXEL_MEAN_BGR, DEFAULT_SCALE_CLAMP, RPNConfig
from .fpn import FPN
from .head import StandardRPNHead
from .network import RPN, ProposalNetwork
from .proposals import Proposals, clip_boxes, select_top_proposals
from .resnet import ResNet
from .training import label_and_sample_anchors, match_anchors, rpn_losses, subsample_labels

__all__ = [
    "AnchorGenerator",
    "BoxCoder",
    "CAFFE_PIXEL_MEAN_BGR",
    "DEFAULT_SCALE_CLAMP",
    "FPN",
    "ProposalNetwork",
    "Proposals",
    "RPN",
    "RPNConfig",
    "ResNet",
    "StandardRPNHead",
    "cell_anchors",
    "clip_boxes",
    "grid_anchors",
    "label_and_sample_anchors",
    "match_anchors",
    "rpn_losses",
    "select_top_proposals",
    "subsample_labels",
]
