"""Which decoder drives a model: the fast path where its architecture has one, else the generic path.

The choice sits above both implementations (:mod:`specdec.decoder` and :mod:`specdec.fast.decoder`), which do not
know of each other.
"""

from __future__ import annotations

from specdec.decoder import Decoder, HFDecoder
from specdec.errors import ConfigError, UnsupportedModelError
from specdec.fast.decoder import FastDecoder
from specdec.fast.models import unsupported_reason
from specdec.loading import LoadedModel

DECODER_CHOICES = ("auto", "fast", "generic")

__all__ = ["DECODER_CHOICES", "Decoder", "make_decoder"]


def make_decoder(loaded: LoadedModel, vocab_size: int | None = None, choice: str = "auto") -> Decoder:
    """``fast`` where the architecture has a fast path, ``generic`` for everything transformers runs.

    ``auto`` takes the fast path when the model supports it, on CUDA (Triton kernels, CUDA graphs) and on a CPU (the
    PyTorch reference kernels, still far less Python per forward than transformers' modules); on MPS, where the fast
    path has not been tested, it takes the generic path.
    """
    if choice not in DECODER_CHOICES:
        raise ConfigError(f"unknown decoder {choice!r}: expected one of {', '.join(DECODER_CHOICES)}")
    reason = unsupported_reason(loaded.model, loaded.device)
    if choice == "fast":
        if reason is not None:
            raise UnsupportedModelError(f"no fast path for {loaded.name!r}: {reason}; use --decoder generic")
        return FastDecoder(loaded, vocab_size)
    if choice == "auto" and reason is None and loaded.device.type in ("cuda", "cpu"):
        return FastDecoder(loaded, vocab_size)
    return HFDecoder(loaded, vocab_size)
