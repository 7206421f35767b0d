"""Models of a session: each (name, device, dtype) loaded once, shared by the cases that use it, and freed as soon as
no case left to run needs it. Hub models are read from the local cache only, unless downloads are allowed.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections import Counter
from collections.abc import Iterable, Iterator

import torch

from pytest_specdec.suite import is_hub_id
from specdec.errors import SpecdecError
from specdec.loading import LoadedModel, hub_offline, load_model

ModelKey = tuple[str, str, str]  # (name, device, dtype)
DOWNLOAD_HINT = (
    " (the specdec benchmark plugin reads hub models from the local cache only; pass --specdec-allow-download to let "
    "it download them)"
)


@contextlib.contextmanager
def cache_only(enabled: bool) -> Iterator[None]:
    """Set ``HF_HUB_OFFLINE=1`` for the duration (a missing hub model then fails at once instead of retrying)."""
    if not enabled:
        yield
        return
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


class ModelCache:
    def __init__(self, allow_download: bool) -> None:
        self.allow_download = allow_download
        self._loaded: dict[ModelKey, LoadedModel] = {}
        self._failed: dict[ModelKey, SpecdecError] = {}  # a model that cannot load is tried once per session
        self._uses: Counter[ModelKey] = Counter()  # cases still to run per model

    def expect(self, keys: Iterable[ModelKey]) -> None:
        """Count a case that will use ``keys`` (so that the models stay loaded until its run)."""
        self._uses.update(keys)

    def get(self, key: ModelKey) -> LoadedModel:
        """The loaded model; raises the loader's :class:`SpecdecError` (remembered for later cases)."""
        if key in self._loaded:
            return self._loaded[key]
        if key in self._failed:
            raise self._failed[key]
        name, device, dtype = key
        user_offline = hub_offline()  # before cache_only sets it
        try:
            with cache_only(not self.allow_download):
                loaded = load_model(name, device=device, dtype=dtype)
        except SpecdecError as error:
            if is_hub_id(name) and not self.allow_download and not user_offline:
                error = type(error)(f"{error}{DOWNLOAD_HINT}")
            self._failed[key] = error
            raise error from None
        self._loaded[key] = loaded
        return loaded

    def release(self, keys: Iterable[ModelKey]) -> None:
        """A case that used ``keys`` is done: free each model no remaining case needs."""
        for key in keys:
            self._uses[key] -= 1
            if self._uses[key] <= 0:
                self._uses.pop(key, None)
                if self._loaded.pop(key, None) is not None:
                    _collect_garbage()

    def clear(self) -> None:
        """Free every model (after an out-of-memory error, and at the end of the session)."""
        self._loaded.clear()
        _collect_garbage()


def _collect_garbage() -> None:
    """Free what the models held. A device whose context died (a CUDA illegal memory access is sticky: every later
    call raises it again) cannot free anything; that was already reported by the case that hit it."""
    gc.collect()
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if hasattr(torch, "mps") and torch.backends.mps.is_available():
            torch.mps.empty_cache()
    except RuntimeError:  # torch.AcceleratorError derives from RuntimeError
        pass
