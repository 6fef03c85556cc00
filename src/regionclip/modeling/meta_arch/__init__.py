"""Assembled models: the region model (`RegionCLIPModel`), the offline proposal network (`ProposalNetwork`) and,
in `regionclip.modeling.meta_arch.fast_rcnn`, the open-vocabulary detector (a `regionclip.RegionCLIP`, so it is
imported from there: importing it here would make this package depend on the user-facing API built on it)."""

from .proposal_network import ProposalNetwork
from .region_clip import ImageDetections, RegionCLIPModel

__all__ = ["ImageDetections", "ProposalNetwork", "RegionCLIPModel"]
