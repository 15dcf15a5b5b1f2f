"""Figures and reports for clinicians: PNG overlays, signal plots, HTML reports.

Heavy libraries (matplotlib) are imported inside the functions, so importing this package is cheap.
"""

from __future__ import annotations

from medad.report.overlay import save_overlay, save_signal_plot

__all__ = ["save_overlay", "save_signal_plot"]
