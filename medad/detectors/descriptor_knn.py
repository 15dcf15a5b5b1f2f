"""Whole-image nearest-neighbour screening on hand-crafted shape descriptors (no learning, no
downloads).

``hog_knn``: every healthy training image (and, with ``flip``, its mirror image) is described
by histograms of oriented gradients (:func:`medad.detectors.handcrafted.hog_descriptors`); the
descriptors, standardised with the training set's statistics, are the memory bank. A new image
scores its mean distance to its ``k`` nearest bank entries: "how far is its anatomy's outline and
texture from every normal image seen". This suits sets of many distinct normal appearances
(sequences, planes, crops) -- e.g. brain MRI slices -- where raw-pixel distances are dominated by
brightness and small misalignments. The map says where the image differs from its nearest
normal image: each HOG block's squared standardised difference, spread over the block's pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medad.detectors.base import AnomalyResult, Detector
from medad.errors import ConfigError, InputError
from medad.registry import register


@register("hog_knn")
class HOGKNNDetector(Detector):
    """Nearest normal image in a bank of HOG descriptors.

    Args:
        image_size: working side length (images are area-resized to it after the median filter).
        cell: HOG cell size in working pixels (blocks are 2 x 2 cells).
        orientations: HOG orientation bins.
        median: median filter size at the input resolution (3 or 5; 0: none).
        flip: add each training image's left-right mirror image to the bank (brains and most
            organs are roughly symmetric; the side of a finding does not make it normal).
        k: nearest bank entries averaged into the score.
        batch_size: images scored per step (memory only).
    """

    input_kind = "image"
    conformance_params = {"image_size": 16, "cell": 4}

    def __init__(self, image_size: int = 64, cell: int = 8, orientations: int = 9, median: int = 3,
                 flip: bool = True, k: int = 1, batch_size: int = 256):
        self._set_params(locals())

    def _check_params(self) -> None:
        if int(self.median) not in (0, 3, 5):
            raise ConfigError(f"hog_knn median must be 0, 3 or 5, got {self.median!r}")
        if int(self.cell) < 2 or int(self.image_size) < 2 * int(self.cell):
            raise ConfigError(f"hog_knn needs cell >= 2 and image_size >= 2 * cell (one block), got "
                              f"image_size={self.image_size}, cell={self.cell}")
        if int(self.k) < 1 or int(self.orientations) < 2:
            raise ConfigError("hog_knn needs k >= 1 and orientations >= 2")

    def _describe(self, x: np.ndarray) -> np.ndarray:
        from medad.detectors.handcrafted import hog_descriptors

        return hog_descriptors(x, int(self.image_size), int(self.cell), int(self.orientations), int(self.median))

    def _fit(self, x, val, y) -> None:
        import torch

        if x.ndim != 4:
            raise InputError(f"hog_knn expects 2D images (N, C, H, W), got shape {x.shape}")
        self._check_params()
        self.in_channels_ = int(x.shape[1])
        d = self._describe(x)
        if self.flip:
            d = np.concatenate([d, self._describe(np.ascontiguousarray(x[..., ::-1]))])
        self.grid_ = [int(d.shape[1]), int(d.shape[2])]
        flat = torch.from_numpy(d.reshape(len(d), -1))
        self.mean_ = flat.mean(0)
        # a feature that hardly varies among training images (an always-empty corner block)
        # must not dominate the distance: spreads floored at a quarter of the median spread
        std = flat.std(0)
        self.std_ = std.clamp_min(max(0.25 * float(std.median()), 1e-6))
        self.bank_ = ((flat - self.mean_) / self.std_).contiguous()

    def _score(self, x: np.ndarray) -> AnomalyResult:
        import torch

        if x.ndim != 4 or x.shape[1] != self.in_channels_:
            raise InputError(f"hog_knn was fitted on {self.in_channels_}-channel images (N, C, H, W), got shape {x.shape}")
        bh, bw = self.grid_
        cell, size = int(self.cell), int(self.image_size)
        scores, maps = [], []
        for i in range(0, len(x), int(self.batch_size)):
            xb = x[i:i + int(self.batch_size)]
            q = (torch.from_numpy(self._describe(xb).reshape(len(xb), -1)) - self.mean_) / self.std_
            nn = torch.cdist(q, self.bank_).topk(min(int(self.k), len(self.bank_)), dim=1, largest=False)
            scores.append(nn.values.mean(1))
            per_block = ((q - self.bank_[nn.indices[:, 0]]) ** 2).reshape(len(xb), bh, bw, -1).sum(-1)
            maps.append(self._block_map(per_block.numpy(), cell, size, x.shape[-2:]))
        return AnomalyResult(score=torch.cat(scores).double().numpy(), map=np.concatenate(maps))

    @staticmethod
    def _block_map(per_block: np.ndarray, cell: int, size: int, out_hw) -> np.ndarray:
        """Block values ``(N, bh, bw)`` -> pixel map ``(N, H, W)``: each pixel the mean of the
        blocks (2 x 2 cells each) that cover it at the working size, then resized to the input."""
        import cv2

        n, bh, bw = per_block.shape
        acc = np.zeros((n, size, size), np.float32)
        cnt = np.zeros((size, size), np.float32)
        for r in range(bh):
            for c in range(bw):
                acc[:, r * cell:(r + 2) * cell, c * cell:(c + 2) * cell] += per_block[:, r, c, None, None]
                cnt[r * cell:(r + 2) * cell, c * cell:(c + 2) * cell] += 1
        acc /= np.maximum(cnt, 1)
        if tuple(out_hw) == (size, size):
            return acc
        return np.stack([cv2.resize(a, (int(out_hw[1]), int(out_hw[0])), interpolation=cv2.INTER_LINEAR) for a in acc])

    def _get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return ({"mean": self.mean_, "std": self.std_, "bank": self.bank_},
                {"in_channels": self.in_channels_, "grid": self.grid_})

    def _set_state(self, arrays, extra) -> None:
        self.mean_, self.std_, self.bank_ = arrays["mean"], arrays["std"], arrays["bank"]
        self.in_channels_ = int(extra["in_channels"])
        self.grid_ = [int(v) for v in extra["grid"]]
