"""Hand-crafted multi-scale patch descriptors for image screening (no learning, no downloads).

Used by the ``patchstats`` memory-bank detector (:mod:`medad.detectors.patchcore`). Per pixel:
colour in a perceptual space (CIE Lab for RGB, the intensity for grey images) and two texture
channels (Sobel gradient magnitude, absolute Laplacian). Each channel can be taken as it is
("absolute"), relative to its own frame ("frame": minus the frame's median, divided by its
robust spread, both over the frame's foreground so a dark endoscope border does not count), or
both. A patch descriptor is the box mean and standard deviation of every channel at several
window sizes, sampled on a grid (optionally with the patch's position inside the foreground's
bounding box).

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
                   fg_threshold: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel channels ``(N, K, H, W)`` and the foreground ``(N, H, W)``."""
    parts = [colour_channels(x)]
    if texture:
        parts.append(texture_channels(x))
    f = np.concatenate(parts, 1)
    fg = foreground(x, fg_threshold)
    if relative == "absolute":
        return f, fg
    rel = frame_relative(f, fg)
    return (rel if relative == "frame" else np.concatenate([rel, f], 1)), fg


def patch_descriptors(f: np.ndarray, fg: np.ndarray, scales: Sequence[int], stride: int,
                      position: bool = False):
    """Box mean and std of every channel at each window size in ``scales``, on a grid of step
    ``stride``: ``(N, h, w, D)`` float32 tensor. ``position`` appends the cell's (row, column)
    in the foreground's bounding box, in about [-1, 1] (the last two features)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32))
    h, w = t.shape[-2:]
    outs = []
    for s in scales:
        s = int(s)
        m = F.avg_pool2d(t, s, stride=1, padding=s // 2, count_include_pad=False)[..., :h, :w]
        m2 = F.avg_pool2d(t * t, s, stride=1, padding=s // 2, count_include_pad=False)[..., :h, :w]
        outs += [m, (m2 - m * m).clamp_min(0).sqrt()]
    o = int(stride) // 2
    d = torch.cat(outs, 1)[..., o::int(stride), o::int(stride)]
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
    return d.permute(0, 2, 3, 1).contiguous()
