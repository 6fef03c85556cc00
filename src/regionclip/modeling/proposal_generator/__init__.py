"""detectron2-compatible region proposal generator (the frozen offline RPNs of RegionCLIP): head, selection, losses.

The whole proposal network (detectron2 backbone + this RPN) is
`regionclip.modeling.meta_arch.proposal_network.ProposalNetwork`:

>>> from regionclip.modeling.meta_arch import ProposalNetwork
>>> from regionclip.modeling.proposal_generator import RPNConfig
>>> rpn = ProposalNetwork(RPNConfig.lvis_fpn()).eval()
>>> proposals = rpn([rgb_image_0_255], nms_thresh=0.9)   # list of Proposals(boxes, objectness_logits, image_size)

Load released weights with ``regionclip.checkpoints.detectron2_rpn.load_detectron2_rpn``.
"""

from .config import CAFFE_PIXEL_MEAN_BGR, DEFAULT_SCALE_CLAMP, RPNConfig
from .losses import label_and_sample_anchors, match_anchors, rpn_losses, subsample_labels
from .proposals import Proposals, select_top_proposals
from .rpn import RPN
from .rpn_head import StandardRPNHead

__all__ = [
    "CAFFE_PIXEL_MEAN_BGR",
    "DEFAULT_SCALE_CLAMP",
    "Proposals",
    "RPN",
    "RPNConfig",
    "StandardRPNHead",
    "label_and_sample_anchors",
    "match_anchors",
    "rpn_losses",
    "select_top_proposals",
    "subsample_labels",
]
