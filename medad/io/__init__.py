"""Readers and writers. Import the submodule you need (``medad.io.volumes``,
``medad.io.images``, ``medad.io.signals``); this package imports nothing heavy."""

from medad.io.records import Annotation, ImageRecord, SignalRecord, VolumeRecord  # noqa: F401
