"""The percentile-intensity baseline ("intensity"): the classical floor every image model is
compared with.

A lesion that is brighter than healthy tissue (FLAIR hyperintensities, most tumours on FLAIR)
shows up as a high robust z-score. The detector z-scores intensities inside the foreground
(median and IQR, which lesions barely move), median-filters the result to remove isolated hot
pixels and uses it as the anomaly map; an item's score is a high quantile of its map. The
threshold comes, as for every detector, from healthy data through :meth:`calibrate` (e.g. the
99.5th percentile of healthy brain voxels with ``pixel_fpr=0.005``).

Works on 2D and 3D images alike: the filter runs over the spatial axes of ``(N, C, *spatial)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medad.detectors.base import AnomalyResult, Detector
from medad.errors import ConfigError, InputError
from medad.registry import register
from medad.transforms.brain import robust_stats, robust_zscore

__all__ = ["IntensityDetector"]


@register("intensity")
class IntensityDetector(Detector):
    """Robust z-score of intensity inside the foreground, median-filtered.

    Args:
        median_size: median filter width in pixels/voxels over the spatial axes (odd; 0 or 1 = off).
        normalize: ``"item"`` (median/IQR of each item's own foreground, e.g. one volume),
            ``"fit"`` (median/IQR of the healthy training foreground, for slices of volumes that
            were already normalised) or ``"none"`` (intensities as given).
        quantile: an item's score is this quantile of its map inside the foreground.
        background: pixels equal to this value are outside the foreground (0 after brain
            preprocessing); ``None`` makes every pixel foreground.
        sign: ``1`` flags bright lesions, ``-1`` dark ones.
    """

    input_kind = "image"
    conformance_params = {"median_size": 3, "normalize": "fit"}

    def __init__(self, median_size: int = 5, normalize: str = "fit", quantile: float = 0.99,
                 background: float | None = 0.0, sign: int = 1):
        self._set_params(locals())

    # ------------------------------------------------------------------ helpers
    def _check_params(self) -> None:
        if self.normalize not in ("item", "fit", "none"):
            raise ConfigError(f"normalize must be 'item', 'fit' or 'none', got {self.normalize!r}")
        if not 0.0 < float(self.quantile) <= 1.0:
            raise ConfigError(f"quantile must be in (0, 1], got {self.quantile}")
        if self.sign not in (1, -1):
            raise ConfigError(f"sign must be 1 or -1, got {self.sign}")
        if self.median_size and int(self.median_size) > 1 and int(self.median_size) % 2 == 0:
            raise ConfigError(f"median_size must be odd, got {self.median_size}")

    def _grey_and_foreground(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, C, *spatial)`` -> grey ``(N, *spatial)`` and foreground mask."""
        grey = x.mean(axis=1)
        if self.background is None:
            return grey, np.ones(grey.shape, dtype=bool)
        return grey, (x != self.background).any(axis=1)

    # ------------------------------------------------------------------ contract
    def _fit(self, x: np.ndarray, val, y) -> None:
        self._check_params()
        grey, fg = self._grey_and_foreground(x)
        if not fg.any():
            raise InputError("the training images have no foreground pixels")
        self.center_, self.scale_ = robust_stats(grey[fg])

    def _score(self, x: np.ndarray) -> AnomalyResult:
        from scipy import ndimage as ndi

        self._check_params()
        grey, fg = self._grey_and_foreground(x)
        maps = np.zeros(grey.shape, dtype=np.float32)
        scores = np.zeros(len(grey), dtype=np.float32)
        k = int(self.median_size or 0)
        for i in range(len(grey)):
            if not fg[i].any():
                continue
            if self.normalize == "item":
                z = robust_zscore(grey[i], fg[i])
            elif self.normalize == "fit":
                z = (grey[i] - self.center_) / self.scale_
            else:
                z = grey[i].astype(np.float32, copy=True)
            # 0 (healthy median) outside the foreground, so the filter is not dragged by background
            z = np.where(fg[i], self.sign * z, 0.0).astype(np.float32)
            if k > 1:
                z = ndi.median_filter(z, size=k)
            maps[i] = np.where(fg[i], z, 0.0)
            scores[i] = np.quantile(maps[i][fg[i]], float(self.quantile))
        return AnomalyResult(score=scores, map=maps)

    def _get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {"center": self.center_, "scale": self.scale_}

    def _set_state(self, arrays: dict[str, Any], extra: dict[str, Any]) -> None:
        self.center_ = float(extra["center"])
        self.scale_ = float(extra["scale"])
