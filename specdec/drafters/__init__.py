"""Drafters: what proposes tokens for the target to verify. One module per drafting method."""

from specdec.drafters.base import Drafter, DraftProposal
from specdec.drafters.model import ModelDrafter

__all__ = ["DraftProposal", "Drafter", "ModelDrafter"]
