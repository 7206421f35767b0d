"""Every error specdec raises on purpose.

All of them derive from :class:`SpecdecError`, so a command-line front end can catch that one class, print the
message (which always says what is wrong and how to fix it) and exit non-zero without a traceback.
"""

from __future__ import annotations


class SpecdecError(Exception):
    """Base class of the errors specdec raises for bad input or an unusable environment."""


class ConfigError(SpecdecError, ValueError):
    """A configuration value is invalid: the message names the field (and the file, if any) and what was expected."""


class ModelLoadError(SpecdecError):
    """A model or tokenizer could not be loaded: the message names the model and how to get it."""


class IncompatibleModelsError(SpecdecError):
    """Target and draft cannot be paired (different vocabularies, different devices, ...)."""


class UnsupportedModelError(SpecdecError):
    """The model's architecture cannot be driven by the engine (for example a cache that cannot be rolled back)."""


class DeviceError(SpecdecError):
    """The requested device is unknown or not available on this machine."""
