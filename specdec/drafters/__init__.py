"""Drafters: what proposes tokens for the target to verify. One module per drafting method; ``registry`` is the one
factory (``make_drafter``) that the CLI, the Python API and the suites use."""

from specdec.drafters.base import Drafter, DraftProposal
from specdec.drafters.model import ModelDrafter
from specdec.drafters.registry import (
    METHODS,
    DraftSpec,
    build_drafter,
    make_drafter,
    method_names,
    option_names,
    parse_options,
)

__all__ = [
    "METHODS",
    "DraftProposal",
    "DraftSpec",
    "Drafter",
    "ModelDrafter",
    "build_drafter",
    "make_drafter",
    "method_names",
    "option_names",
    "parse_options",
]
