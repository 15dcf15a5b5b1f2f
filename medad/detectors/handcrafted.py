"""Hand-crafted multi-scale patch descriptors for image screening (no learning, no downloads).

Used by the ``patchstats`` memory-bank detector (:mod:`medad.detectors.patchcore`). Per pixel:
colour in a perceptual space (CIE Lab for RGB, the intensity for grey images) and two texture
channels (Sobel gradient magnitude, absolute Laplacian). Each channel can be taken as it is
("absolute"), relative to its own frame ("frame": minus the frame's median, divided by its
robust spread, both over the frame's foreground so a dark endoscope border does not count), or
both. A patch descriptor is the box mean and standard deviation of every channel at several
window sizes, sampled on a grid (optionally with the patch's position inside the foreground's
bounding box).

``masked`` descriptors take the box statistics over *valid* pixels only (a normalised
convolution): the foreground, eroded by a pixel so the Sobel response of the rim does not count,
with thin overlays (text on the border) opened away and, optionally, specular highlights left
out. Without it, a window that overlaps the black endoscope border or a glare spot mixes them
into the patch's colour, and the rim, not the lesion, is what looks unusual.

Why frame-relative: the colour of "normal" varies more between frames (camera, light, patient)
than inside one; a lesion is what differs from the rest of its own frame.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RELATIVE_MODES = ("frame", "absolute", "both")


def colour_channels(x: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` in [0, 1] -> ``(N, K, H, W)``: Lab scaled to about [-1, 1] for 3-channel
    input, the image itself otherwise."""
    if x.shape[1] != 3:
        return x.astype(np.float32)
    import cv2

    out = np.empty_like(x, dtype=np.float32)
    scale = np.array([100.0, 128.0, 128.0], np.float32)
    for i, im in enumerate(x):
        rgb = np.ascontiguousarray(np.clip(np.moveaxis(im, 0, -1), 0, 1), dtype=np.float32)
        out[i] = np.moveaxis(cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab) / scale, -1, 0)
    return out


def texture_channels(x: np.ndarray) -> np.ndarray:
    """Gradient magnitude and absolute Laplacian of the channel-mean image: ``(N, 2, H, W)``."""
    import cv2

    g = x.mean(1).astype(np.float32)
    out = np.empty((len(g), 2) + g.shape[1:], np.float32)
    for i, im in enumerate(g):
        gx = cv2.Sobel(im, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(im, cv2.CV_32F, 0, 1, ksize=3)
        out[i, 0] = np.hypot(gx, gy)
        out[i, 1] = np.abs(cv2.Laplacian(im, cv2.CV_32F, ksize=3))
    return out


def foreground(x: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels brighter than ``threshold`` (channel mean): excludes black borders/background.
    An image with (almost) no such pixel counts as all foreground."""
    fg = x.mean(1) > float(threshold)
    few = fg.reshape(len(fg), -1).sum(1) < 16
    fg[few] = True
    return fg


def specular_highlights(x: np.ndarray, level: float = 0.85, chroma: float = 0.25, grow: int = 2) -> np.ndarray:
    """Glare: pixels whose brightest channel exceeds ``level`` and whose channel spread is below
    ``chroma`` of it (bright and colourless), grown by ``grow`` pixels: ``(N, H, W)`` bool."""
    import cv2

    mx, mn = x.max(1), x.min(1)
    h = (mx > level) & ((mx - mn) < chroma * mx)
    if grow <= 0:
        return h
    k = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    return np.stack([cv2.dilate(a.astype(np.uint8), k) > 0 for a in h])


def valid_pixels(x: np.ndarray, fg_threshold: float, highlights: bool = True, erode: int = 1,
                 open_size: int = 5) -> np.ndarray:
    """Pixels that describe tissue: the foreground with thin structures (text overlays, thinner
    than ``open_size``) opened away, eroded by ``erode`` pixels, and without specular highlights
    when ``highlights``: ``(N, H, W)`` bool. An image left with (almost) nothing keeps its plain
    foreground."""
    import cv2

    fg = foreground(x, fg_threshold)
    v = fg.copy()
    for i, a in enumerate(fg):
        a = a.astype(np.uint8)
        if open_size > 1:
            a = cv2.morphologyEx(a, cv2.MORPH_OPEN, np.ones((open_size, open_size), np.uint8))
        if erode > 0:
            a = cv2.erode(a, np.ones((2 * erode + 1, 2 * erode + 1), np.uint8))
        v[i] = a > 0
    if highlights:
        v &= ~specular_highlights(x)
    few = v.reshape(len(v), -1).sum(1) < 16
    v[few] = fg[few]
    return v


def frame_relative(f: np.ndarray, fg: np.ndarray, spread: str = "mad") -> np.ndarray:
    """Each image's channels minus their foreground median, over a robust spread of the
    foreground: ``"mad"`` (1.4826 x median absolute deviation, + 1e-3) or ``"p10-p90"`` (the
    10th-90th percentile range, at least 1e-3)."""
    out = np.empty(f.shape, np.float32)
    for i in range(len(f)):
        v = f[i][:, fg[i]]
        med = np.median(v, axis=1)
        if spread == "mad":
            s = np.median(np.abs(v - med[:, None]), axis=1) * 1.4826 + 1e-3
        else:
            lo, hi = np.percentile(v, [10, 90], axis=1)
            s = np.maximum(hi - lo, 1e-3)
        out[i] = (f[i] - med[:, None, None]) / s[:, None, None]
    return out


def pixel_channels(x: np.ndarray, relative: str = "both", texture: bool = True,
                   fg_threshold: float = 0.05, masked: bool = False,
                   highlights: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel channels ``(N, K, H, W)`` and the pixels they are taken over ``(N, H, W)``: the
    foreground, or with ``masked`` the :func:`valid_pixels` (``highlights``: leave glare out)."""
    parts = [colour_channels(x)]
    if texture:
        parts.append(texture_channels(x))
    f = np.concatenate(parts, 1)
    fg = valid_pixels(x, fg_threshold, highlights) if masked else foreground(x, fg_threshold)
    if relative == "absolute":
        return f, fg
    rel = frame_relative(f, fg)
    return (rel if relative == "frame" else np.concatenate([rel, f], 1)), fg


def patch_descriptors(f: np.ndarray, fg: np.ndarray, scales: Sequence[int], stride: int,
                      position: bool = False, masked: bool = False):
    """Box mean and std of every channel at each window size in ``scales``, on a grid of step
    ``stride``: ``(N, h, w, D)`` float32 tensor, and each cell's coverage ``(N, h, w)`` (share of
    valid pixels in its smallest window; all ones unless ``masked``). ``masked``: statistics over
    the pixels of ``fg`` only (normalised convolution). ``position`` appends the cell's (row,
    column) in the foreground's bounding box, in about [-1, 1] (the last two features)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32))
    h, w = t.shape[-2:]
    wt = torch.from_numpy(np.ascontiguousarray(fg, dtype=np.float32))[:, None] if masked else None
    outs = []
    cover = None
    for s in scales:
        s = int(s)

        def box(a, s=s):
            return F.avg_pool2d(a, s, stride=1, padding=s // 2, count_include_pad=False)[..., :h, :w]

        if wt is None:
            m, m2 = box(t), box(t * t)
        else:  # weighted box mean: only valid pixels count
            ws = box(wt)
            cover = ws if cover is None else cover
            m, m2 = box(t * wt) / ws.clamp_min(1e-6), box(t * t * wt) / ws.clamp_min(1e-6)
        outs += [m, (m2 - m * m).clamp_min(0).sqrt()]
    o = int(stride) // 2
    d = torch.cat(outs, 1)[..., o::int(stride), o::int(stride)]
    cover = torch.ones(d.shape[0], *d.shape[2:]) if cover is None else cover[:, 0, o::int(stride), o::int(stride)]
    if position:
        rows = torch.arange(h)[o::int(stride)].float()
        cols = torch.arange(w)[o::int(stride)].float()
        pos = []
        for m in fg:
            rr, cc = np.nonzero(m)
            r0, r1, c0, c1 = rr.min(), rr.max() + 1, cc.min(), cc.max() + 1
            pr = (2 * (rows - r0) / max(r1 - r0, 1) - 1).clamp(-1.5, 1.5)
            pc = (2 * (cols - c0) / max(c1 - c0, 1) - 1).clamp(-1.5, 1.5)
            pos.append(torch.stack(torch.meshgrid(pr, pc, indexing="ij")))
        d = torch.cat([d, torch.stack(pos)], 1)
    return d.permute(0, 2, 3, 1).contiguous(), cover.contiguous()


def hog_descriptors(x: np.ndarray, image_size: int = 64, cell: int = 8, orientations: int = 9,
                    median: int = 3) -> np.ndarray:
    """Histograms of oriented gradients of whole images: ``(N, C, H, W)`` -> ``(N, bh, bw, F)``,
    one row of ``F = 4 * orientations`` values per block of 2 x 2 cells (blocks overlap by a
    cell; L2-Hys normalised, so brightness and contrast do not count).

    Each image is averaged over its channels, median filtered (``median`` px at the input
    resolution, 0: off -- impulse noise otherwise adds gradients everywhere) and area-resized
    to ``image_size`` before the gradients are taken."""
    import cv2
    from skimage.feature import hog

    out = []
    for im in x.mean(1).astype(np.float32):
        if median:
            im = cv2.medianBlur(im, int(median))
        if im.shape != (image_size, image_size):
            im = cv2.resize(im, (int(image_size), int(image_size)), interpolation=cv2.INTER_AREA)
        h = hog(im, orientations=int(orientations), pixels_per_cell=(int(cell), int(cell)),
                cells_per_block=(2, 2), block_norm="L2-Hys", feature_vector=False)
        out.append(h.reshape(h.shape[0], h.shape[1], -1))
    return np.stack(out).astype(np.float32)
