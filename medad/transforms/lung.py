"""Lung fields of a chest CT slice saved as a picture (arbitrary windowing and framing).

Figures cut from papers have no Hounsfield units: the grey value of air, lung and soft tissue
differs from picture to picture, and the crop may or may not show air outside the body. So the
segmentation works on the slice's own intensity levels:

1. A light median filter (text, arrows and JPEG noise are thin) and Otsu's threshold split dark
   (air, aerated lung) from bright (soft tissue, bone).
2. Dark connected components are candidate lungs. Air *outside* the body lies against the
   picture's edge: a component with most of its pixels in the outer band of the picture (a
   corner, a strip above the chest wall, the ring around a small body) is not lung. A lung in a
   tight crop touches the edge too, but only a small share of it lies in the band.
3. The largest one or two remaining components (each at least ``min_area`` of the picture) are
   the lungs; a closing and hole filling put vessels, nodules and opacities *inside* a lung back
   into its mask (an opacity against the chest wall is only partly recovered: the closing radius
   limits how deep a bay it bridges).

The reference levels returned with the mask make intensities comparable across pictures:
``air`` (a low percentile of the whole picture: lung air, trachea or outside air) and
``tissue`` (the median of the bright, non-lung pixels: chest wall, mediastinum). A pixel's
*normalised density* is ``(I - air) / (tissue - air)``: about 0 for aerated lung and 1 for soft
tissue whatever the window, so ground-glass opacity sits in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medad.errors import InputError


@dataclass
class LungSegmentation:
    """Lung mask of one slice and its reference levels.

    Attributes:
        mask: ``(H, W)`` bool, both lungs (holes filled).
        lungs: ``(H, W)`` int, 0 outside, 1 for the lung whose centre is more to the image's left,
            2 for the other (a single lung found: only 1).
        air: grey value of air in this picture.
        tissue: grey value of soft tissue in this picture.
        found: False when no lung-like component was found (``mask`` then holds the dark pixels
            inside the picture's inner region, so features stay defined).
    """

    mask: np.ndarray
    lungs: np.ndarray
    air: float
    tissue: float
    found: bool

    def density(self, img: np.ndarray) -> np.ndarray:
        """``img`` in units of this slice's air (0) and soft tissue (1)."""
        return ((np.asarray(img, np.float32) - self.air) / max(self.tissue - self.air, 1e-3)).astype(np.float32)


def _disc(radius: int) -> np.ndarray:
    import cv2

    r = max(int(radius), 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not reach the edge filled."""
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(mask)


def segment_lungs(img: np.ndarray, *, border: float = 0.06, max_border_share: float = 0.4,
                  min_area: float = 0.02, close_radius: float = 0.04,
                  open_radius: float = 0.02) -> LungSegmentation:
    """Segment the lungs of one 2D slice ``img`` (any grey range).

    Args:
        img: ``(H, W)`` grey slice.
        border: width of the outer band of the picture, as a share of its shorter side.
        max_border_share: a dark component with more than this share of its pixels in the band
            is air outside the body.
        min_area: smallest lung component, as a share of the picture.
        close_radius: closing radius (share of the shorter side) that bridges vessels and
            opacities at a lung's edge before the holes are filled.
        open_radius: opening radius (share of the shorter side) applied to the dark pixels
            before they are split into components.
    """
    import cv2
    from skimage.filters import threshold_otsu

    img = np.asarray(img, np.float32)
    if img.ndim != 2 or min(img.shape) < 8:
        raise InputError(f"segment_lungs expects one 2D slice of at least 8 x 8 pixels, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise InputError("segment_lungs: the slice contains NaN or infinite values")
    h, w = img.shape
    side = min(h, w)
    lo, hi = float(img.min()), float(img.max())
    sm = cv2.medianBlur(img, 3) if side >= 16 else img.copy()
    air = float(np.percentile(sm, 1))
    if hi - lo < 1e-6:  # a flat picture: nothing to segment
        empty = np.zeros((h, w), bool)
        return LungSegmentation(empty, empty.astype(np.int32), air, air + 1.0, False)
    thr = float(threshold_otsu(sm))
    dark = sm <= thr
    band = np.zeros((h, w), bool)
    b = max(1, int(round(border * side)))
    band[:b], band[-b:], band[:, :b], band[:, -b:] = True, True, True, True

    # an opening cuts thin dark bridges (a gap in the chest wall, a fissure of the crop) that
    # would join a lung to the air outside the body
    opened = cv2.morphologyEx(dark.astype(np.uint8), cv2.MORPH_OPEN, _disc(int(round(open_radius * side))))
    n, lab, stats, cents = cv2.connectedComponentsWithStats(opened, connectivity=8)
    in_band = np.bincount(lab[band], minlength=n)
    cand = []
    for i in range(1, n):
        area = int(stats[i, cv2.CC_STAT_AREA])
        if area < min_area * h * w or in_band[i] > max_border_share * area:
            continue
        cand.append((area, i))
    cand = sorted(cand, reverse=True)[:2]
    found = bool(cand)
    lungs = np.zeros((h, w), np.int32)
    if found:
        # left-to-right order of the lungs in the picture
        cand = sorted(cand, key=lambda ai: cents[ai[1]][0])
        k = _disc(int(round(close_radius * side)))
        for j, (_, i) in enumerate(cand, 1):
            m = cv2.morphologyEx((lab == i).astype(np.uint8), cv2.MORPH_CLOSE, k) > 0
            lungs[fill_holes(m) & (lungs == 0)] = j
        mask = lungs > 0
    else:  # fall back to the dark pixels away from the edge, so features stay defined
        mask = dark & ~band
        if not mask.any():
            mask = dark
        lungs[mask] = 1
    # soft tissue: the bright pixels that are not lung (chest wall, mediastinum); with a lung
    # window they saturate, with a mediastinal window their median is muscle / blood
    bright = (~dark) & (~mask)
    tissue = float(np.median(sm[bright])) if bright.any() else hi
    if tissue - air < 1e-3:
        tissue = air + max(hi - lo, 1e-3)
    return LungSegmentation(mask, lungs, air, tissue, found)
