"""Typed errors. Every user-facing failure is a :class:`MedadError` naming the file and problem."""

from __future__ import annotations

from pathlib import Path


class MedadError(Exception):
    """Base class of every error medad raises on purpose."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class ReadError(MedadError):
    """A file or folder could not be read (missing, corrupt, wrong format, bad content)."""


class InputError(MedadError):
    """Data of the wrong shape, type or content was handed to medad."""


class ConfigError(MedadError):
    """A configuration or setting is wrong or missing."""


class NotFittedError(MedadError):
    """A detector was used before ``fit`` (or before ``calibrate`` where a threshold is needed)."""
