"""Detectors: one contract for every method (see :class:`medad.detectors.base.Detector`).

Nothing heavy is imported here; use :func:`medad.registry.get` or import the module.
"""

from medad.detectors.base import AnomalyResult, Detector  # noqa: F401
