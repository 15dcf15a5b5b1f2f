"""Lung-aware one-class screening of chest CT slices (no network, no downloads).

COVID-19 pneumonia shows as ground-glass opacity and consolidation: lung that should be dark
(air) turns mid-grey, mostly in the periphery and the posterior (lower, in a supine slice) lung,
often on both sides. Slices cut from papers have arbitrary windows and crops, so nothing here
uses absolute grey values: each slice's lungs are segmented (:func:`medad.transforms.lung.segment_lungs`)
and its pixels re-expressed as a *normalised density* -- 0 at the slice's own air level, 1 at its
own soft-tissue level. The lung field is then summarised by a short, named feature vector
(:data:`FEATURES`): density quantiles, the share of mid-grey (0.25-0.75) and dense (> 0.75)
lung, local texture, periphery-minus-centre and posterior-minus-anterior density, the per-lung
mid-grey shares (the larger and the smaller: bilateral disease raises the smaller), the lung
area share of the picture and how far the lungs fall short of their convex hull (consolidation
against the chest wall bites into the dark lung).

Features are robust-scaled with the training slices' median and interquartile range. Scores
(``method``):

* ``"knn"``: mean Euclidean distance to the ``k`` nearest training slices -- any unusual lung;
* ``"mahalanobis"``: Ledoit-Wolf-shrunk Mahalanobis distance to the training mean;
* ``"density"``: one-sided -- the sum of the positive robust z-scores of the features that
  opacities raise (:data:`DENSER`): only lungs *denser* than normal count, so other unusual
  slices (emphysema, a different window) do not.

The map is the local (Gaussian, ``map_sigma`` px, lung pixels only) mean density inside the lungs, in robust
z-units of the training slices' lung pixels, clipped at 0 and 0 outside the lungs: where the
lung is denser than aerated lung usually is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medad.detectors.base import AnomalyResult, Detector
from medad.errors import ConfigError, InputError
from medad.registry import register

FEATURES = (
    "q10", "q25", "q50", "q75", "q90",          # normalised density quantiles in the lungs
    "mid_share", "dense_share",                 # share of lung at 0.25-0.75 / above 0.75
    "local_std", "gradient",                    # texture: mean 5 px local std, Sobel magnitude
    "periphery_minus_centre", "periphery_mid_share",
    "posterior_minus_anterior",
    "mid_share_max_lung", "mid_share_min_lung", "lung_mean_difference",
    "lung_area_share", "hull_deficit",
)
# features that ground-glass opacity and consolidation raise (used by method="density")
DENSER = ("q10", "q25", "q50", "q75", "q90", "mid_share", "dense_share", "periphery_mid_share",
          "mid_share_max_lung", "mid_share_min_lung", "hull_deficit")
SCORES = ("knn", "mahalanobis", "density")
MID = (0.25, 0.75)


def _lung_features(u: np.ndarray, seg) -> np.ndarray:
    """Feature vector (:data:`FEATURES`) of one slice from its normalised density ``u`` and
    :class:`~medad.transforms.lung.LungSegmentation` ``seg``."""
    import cv2

    mask = seg.mask if seg.mask.sum() >= 4 else np.ones_like(seg.mask)
    lungs = seg.lungs if seg.mask.sum() >= 4 else mask.astype(np.int32)
    v = u[mask]
    q = np.percentile(v, [10, 25, 50, 75, 90])
    mid = (u >= MID[0]) & (u <= MID[1])
    dense = u > MID[1]
    mean = cv2.blur(u, (5, 5))
    local_std = np.sqrt(np.maximum(cv2.blur(u * u, (5, 5)) - mean * mean, 0))
    grad = np.hypot(cv2.Sobel(u, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(u, cv2.CV_32F, 0, 1, ksize=3))
    # periphery: the outer third of each lung by distance to its own edge
    periph = np.zeros_like(mask)
    per_lung = []
    for j in range(1, int(lungs.max()) + 1):
        lj = lungs == j
        if not lj.any():
            continue
        d = cv2.distanceTransform(lj.astype(np.uint8), cv2.DIST_L2, 3)
        periph |= lj & (d < d.max() / 3.0)
        per_lung.append((float(mid[lj].mean()), float(u[lj].mean())))
    centre = mask & ~periph

    def mean_of(a, m):
        return float(a[m].mean()) if m.any() else float(a[mask].mean())

    rows = np.nonzero(mask)[0]
    row_c = rows.mean()
    yy = np.arange(u.shape[0])[:, None]
    lower, upper = mask & (yy > row_c), mask & (yy <= row_c)
    mids = [m for m, _ in per_lung] or [float(mid[mask].mean())]
    means = [m for _, m in per_lung]
    hull = cv2.convexHull(np.argwhere(mask)[:, ::-1].astype(np.int32))
    hull_area = max(float(cv2.contourArea(hull)), 1.0)
    return np.array([
        *q, float(mid[mask].mean()), float(dense[mask].mean()),
        mean_of(local_std, mask), mean_of(grad, mask),
        mean_of(u, periph) - mean_of(u, centre), mean_of(mid, periph),
        mean_of(u, lower) - mean_of(u, upper),
        max(mids), min(mids), abs(means[0] - means[1]) if len(means) == 2 else 0.0,
        float(mask.mean()), max(0.0, 1.0 - float(mask.sum()) / hull_area),
    ], np.float64)


@register("lung_knn")
class LungCTDetector(Detector):
    """Lung-field features of chest CT slices relative to each slice's air and soft tissue.

    Args:
        image_size: working side length (slices are area-resized to it; maps come back at the
            input size).
        method: ``"knn"``, ``"mahalanobis"`` or ``"density"`` (see the module docstring).
        k: nearest training slices averaged (``method="knn"``).
        map_sigma: Gaussian width (working px) of the local mean density in the map.
        close_radius: lung-mask closing radius as a share of the side
            (:func:`~medad.transforms.lung.segment_lungs`).
        batch_size: slices per step (memory only).
    """

    input_kind = "image"
    conformance_params = {"image_size": 32}

    def __init__(self, image_size: int = 128, method: str = "knn", k: int = 1, map_sigma: float = 2.0,
                 close_radius: float = 0.04, batch_size: int = 64):
        self._set_params(locals())

    # ------------------------------------------------------------------ features
    def _check_params(self) -> None:
        if self.method not in SCORES:
            raise ConfigError(f"lung_knn method must be one of {', '.join(SCORES)}, got {self.method!r}")
        if int(self.image_size) < 16 or int(self.k) < 1 or float(self.map_sigma) <= 0:
            raise ConfigError(f"lung_knn needs image_size >= 16, k >= 1 and map_sigma > 0, got "
                              f"image_size={self.image_size}, k={self.k}, map_sigma={self.map_sigma}")

    def _check_shape(self, x: np.ndarray) -> None:
        if x.ndim != 4:
            raise InputError(f"lung_knn expects 2D slices (N, C, H, W), got shape {x.shape}")

    def _slices(self, x: np.ndarray):
        """Per slice: (normalised density at the working size, segmentation)."""
        import cv2

        from medad.transforms.lung import segment_lungs

        s = int(self.image_size)
        for im in x.mean(1):
            im = np.ascontiguousarray(im, np.float32)
            if im.shape != (s, s):
                im = cv2.resize(im, (s, s), interpolation=cv2.INTER_AREA)
            seg = segment_lungs(im, close_radius=float(self.close_radius))
            u = seg.density(cv2.medianBlur(im, 3))
            yield u, seg

    def describe(self, x) -> np.ndarray:
        """``(N, C, H, W)`` slices -> ``(N, F)`` raw lung features (:data:`FEATURES`)."""
        from medad.detectors.base import as_array

        x = as_array(x, name="input", min_ndim=4)
        self._check_shape(x)
        return np.stack([_lung_features(u, seg) for u, seg in self._slices(x)])

    # ------------------------------------------------------------------ contract
    def _fit(self, x, val, y) -> None:
        self._check_shape(x)
        self._check_params()
        from sklearn.covariance import LedoitWolf

        feats, vals = [], []
        for u, seg in self._slices(x):
            feats.append(_lung_features(u, seg))
            if seg.mask.any():
                vals.append(u[seg.mask][::3])
        f = np.stack(feats)
        self.center_ = np.median(f, 0)
        iqr = np.subtract(*np.percentile(f, [75, 25], 0))
        # a feature nearly constant in training (a lung never split in two) must not dominate:
        # spreads floored at a tenth of the median spread
        self.scale_ = np.maximum(iqr, max(0.1 * float(np.median(iqr)), 1e-6))
        z = (f - self.center_) / self.scale_
        self.bank_ = z
        lw = LedoitWolf().fit(z)
        self.mean_, self.precision_ = lw.location_, lw.precision_
        # lung-pixel density of the training slices (every third pixel): the map's reference
        q25, q50, q75 = np.percentile(np.concatenate(vals or [np.zeros(1)]), [25, 50, 75])
        self.pixel_ref_ = np.array([q50, max(q75 - q25, 1e-3)])

    def _features_score(self, f: np.ndarray) -> np.ndarray:
        z = (f - self.center_) / self.scale_
        if self.method == "knn":
            d = np.sqrt(((z[:, None, :] - self.bank_[None]) ** 2).sum(-1))
            k = min(int(self.k), len(self.bank_))
            return np.sort(d, 1)[:, :k].mean(1)
        if self.method == "mahalanobis":
            c = z - self.mean_
            return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", c, self.precision_, c), 0))
        idx = [FEATURES.index(n) for n in DENSER]
        return np.clip(z[:, idx], 0, None).sum(1)

    def _score(self, x: np.ndarray) -> AnomalyResult:
        import cv2

        self._check_shape(x)
        self._check_params()
        feats, maps = [], []
        sig = float(self.map_sigma)
        for u, seg in self._slices(x):
            feats.append(_lung_features(u, seg))
            # blurred inside the lungs only (normalised convolution): the bright chest wall and
            # mediastinum must not bleed into the rim of the lung map
            w = seg.mask.astype(np.float32)
            local = cv2.GaussianBlur(u * w, (0, 0), sig) / np.maximum(cv2.GaussianBlur(w, (0, 0), sig), 1e-3)
            m = np.where(seg.mask, np.clip((local - self.pixel_ref_[0]) / self.pixel_ref_[1], 0, None), 0)
            if m.shape != x.shape[-2:]:
                m = cv2.resize(m.astype(np.float32), (int(x.shape[-1]), int(x.shape[-2])), interpolation=cv2.INTER_LINEAR)
            maps.append(m.astype(np.float32))
        return AnomalyResult(score=self._features_score(np.stack(feats)), map=np.stack(maps))

    def _get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return ({"center": self.center_, "scale": self.scale_, "bank": self.bank_, "mean": self.mean_,
                 "precision": self.precision_, "pixel_ref": self.pixel_ref_}, {"features": list(FEATURES)})

    def _set_state(self, arrays, extra) -> None:
        from medad.errors import ReadError

        if list(extra.get("features", [])) != list(FEATURES):
            raise ReadError(f"saved lung_knn has features {extra.get('features')}, this version {list(FEATURES)}",
                            "config.json")
        a = {k: np.asarray(v, np.float64) for k, v in arrays.items()}
        self.center_, self.scale_, self.bank_ = a["center"], a["scale"], a["bank"]
        self.mean_, self.precision_, self.pixel_ref_ = a["mean"], a["precision"], a["pixel_ref"]
