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
from medad.transforms.brain import mirror_asymmetry, robust_stats, robust_zscore

__all__ = ["IntensityDetector", "AsymmetryDetector"]


def _grey_and_foreground(x: np.ndarray, background: float | None) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C, *spatial)`` -> grey ``(N, *spatial)`` and foreground mask (pixels not equal to
    ``background`` in some channel; every pixel when ``background`` is ``None``)."""
    grey = x.mean(axis=1)
    if background is None:
        return grey, np.ones(grey.shape, dtype=bool)
    return grey, (x != background).any(axis=1)


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

    # ------------------------------------------------------------------ contract
    def _fit(self, x: np.ndarray, val, y) -> None:
        self._check_params()
        grey, fg = _grey_and_foreground(x, self.background)
        if not fg.any():
            raise InputError("the training images have no foreground pixels")
        self.center_, self.scale_ = robust_stats(grey[fg])

    def _score(self, x: np.ndarray) -> AnomalyResult:
        from scipy import ndimage as ndi

        self._check_params()
        grey, fg = _grey_and_foreground(x, self.background)
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


@register("asymmetry")
class AsymmetryDetector(Detector):
    """Left-right (hemispheric) asymmetry: the map is ``|s(x) - mirror(s(x))|`` per item (see
    :func:`medad.transforms.brain.mirror_asymmetry`), an item's score a high quantile of it.

    For contrasts where a lesion is not simply brighter than healthy tissue (T1c: the oedema of a
    glioma is only slightly darker than white matter, the enhancing rim brighter), tissue that
    differs from its contralateral counterpart is the cue. Nothing is learned; thresholds come
    from healthy data through :meth:`calibrate`. Healthy brains are not perfectly symmetric
    (gyri, ventricles), and the tissue opposite a lesion scores as high as the lesion itself.

    Args:
        sigma: Gaussian smoothing in pixels over the spatial axes, inside the foreground.
        axis: spatial axis that is mirrored, about its centre (0 = the first spatial axis: left-
            right for the RAS-ordered axial slices and 3D crops of brain preprocessing, whose
            grid is centred on the brain).
        quantile: an item's score is this quantile of its map inside the foreground.
        background: pixels equal to this value are outside the foreground (0 after brain
            preprocessing); ``None`` makes every pixel foreground.
    """

    input_kind = "image"
    conformance_params = {"sigma": 1.0}

    def __init__(self, sigma: float = 2.0, axis: int = 0, quantile: float = 0.99, background: float | None = 0.0):
        self._set_params(locals())

    def _check_params(self, spatial_ndim: int) -> None:
        if float(self.sigma) < 0:
            raise ConfigError(f"sigma must be >= 0, got {self.sigma}")
        if not 0.0 < float(self.quantile) <= 1.0:
            raise ConfigError(f"quantile must be in (0, 1], got {self.quantile}")
        if not 0 <= int(self.axis) < spatial_ndim:
            raise ConfigError(f"axis must be a spatial axis in [0, {spatial_ndim}), got {self.axis}")

    def _fit(self, x: np.ndarray, val, y) -> None:
        self._check_params(x.ndim - 2)
        if not _grey_and_foreground(x, self.background)[1].any():
            raise InputError("the training images have no foreground pixels")

    def _score(self, x: np.ndarray) -> AnomalyResult:
        self._check_params(x.ndim - 2)
        grey, fg = _grey_and_foreground(x, self.background)
        maps = np.zeros(grey.shape, dtype=np.float32)
        scores = np.zeros(len(grey), dtype=np.float32)
        for i in range(len(grey)):
            if fg[i].any():
                maps[i] = mirror_asymmetry(grey[i], fg[i], sigma=float(self.sigma), axis=int(self.axis))
                scores[i] = np.quantile(maps[i][fg[i]], float(self.quantile))
        return AnomalyResult(score=scores, map=maps)
