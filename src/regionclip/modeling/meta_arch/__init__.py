"""Assembled models: the region model (`RegionCLIPModel`), the offline proposal network (`ProposalNetwork`) and,
in `regionclip.modeling.meta_arch.fast_rcnn` and `.pretraining`, the open-vocabulary detector and the region–text
pretraining model (both built on `regionclip.RegionCLIP`, so they are imported from there: importing it here would make this package depend on the user-facing API built on it)."""

from .proposal_network import ProposalNetwork
from .region_clip import ImageDetections, RegionCLIPModel

__all__ = ["ImageDetections", "ProposalNetwork", "RegionCLIPModel"]
