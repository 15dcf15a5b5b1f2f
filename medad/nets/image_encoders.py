"""Small 2D image networks shared by the image-screening detectors (Deep SVDD, PatchCore).

* :class:`ImagePrep` -- resize to the working size and standardise per channel with statistics
  learned from the training images (buffers, so they travel with the weights).
* :class:`ConvEncoder` -- a plain conv trunk returning every stage's feature map. With
  ``bias_free=True`` it follows Ruff et al.'s rules for Deep SVDD: no bias terms anywhere,
  BatchNorm without affine parameters and an unbounded (leaky ReLU) activation, so the network
  cannot map everything onto a constant centre.
* :class:`ConvDecoder` -- the mirror of :class:`ConvEncoder`, used to pretrain the encoder as an
  autoencoder.

All spatial work is 2D; sizes must be divisible by ``2 ** len(channels)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size: Sequence[int] | int) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` to ``size`` (antialiased when shrinking)."""
    size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``(N, C, H, W)`` images (std floored so flat inputs work)."""
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x.std(axis=(0, 2, 3), dtype=np.float64)
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


class ImagePrep(nn.Module):
    """Resize to ``image_size`` and standardise each channel.

    Args:
        in_channels: image channels.
        image_size: working side length (``None`` keeps the input size).
        multiple: with ``image_size=None``, sizes are rounded up to a multiple of this.
    """

    def __init__(self, in_channels: int, image_size: int | None = None, multiple: int = 1):
        super().__init__()
        self.image_size = image_size
        self.multiple = int(multiple)
        self.register_buffer("mean", torch.zeros(in_channels))
        self.register_buffer("std", torch.ones(in_channels))

    def set_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_size:
            x = resize(x, self.image_size)
        elif self.multiple > 1:  # keep the input size, rounded up to what the net can halve
            m = self.multiple
            x = resize(x, [-(-int(s) // m) * m for s in x.shape[-2:]])
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


def _block(c_in: int, c_out: int, bias_free: bool) -> nn.Sequential:
    if bias_free:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                             nn.BatchNorm2d(c_out, eps=1e-4, affine=False), nn.LeakyReLU(0.1))
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1))


class ConvEncoder(nn.Module):
    """``len(channels)`` stages of conv-BN-LeakyReLU followed by 2x2 max pooling.

    ``forward`` returns the list of stage outputs (after pooling), finest first.

    Args:
        in_channels: image channels.
        channels: output channels per stage.
        bias_free: Deep SVDD rules (no bias, BatchNorm without affine parameters).
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (16, 32, 64), bias_free: bool = False):
        super().__init__()
        chans = [int(in_channels), *[int(c) for c in channels]]
        self.stages = nn.ModuleList(
            nn.Sequential(_block(chans[i], chans[i + 1], bias_free), nn.MaxPool2d(2)) for i in range(len(channels))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: upsample + conv per stage back to ``out_channels``."""

    def __init__(self, out_channels: int, channels: Sequence[int] = (16, 32, 64), bias_free: bool = False):
        super().__init__()
        chans = [int(c) for c in channels][::-1]
        layers: list[nn.Module] = []
        for i in range(len(chans) - 1):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _block(chans[i], chans[i + 1], bias_free)]
        layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                   nn.Conv2d(chans[-1], int(out_channels), 3, padding=1, bias=not bias_free)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def gaussian_blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of maps ``(N, H, W)`` (reflect padding; ``sigma <= 0`` is a no-op)."""
    if sigma <= 0:
        return m
    r = max(1, int(round(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=m.dtype, device=m.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = m.unsqueeze(1)
    r_h, r_w = min(r, x.shape[-2] - 1), min(r, x.shape[-1] - 1)
    if r_h < r or r_w < r:  # tiny maps: reflect padding needs pad < size
        return m
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x.squeeze(1)


def upsample_map(m: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(N, h, w)`` map -> ``(N, H, W)`` by bilinear interpolation."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m.unsqueeze(1), size=tuple(int(s) for s in size), mode="bilinear",
                         align_corners=False).squeeze(1)


def topk_mean(m: torch.Tensor, frac: float) -> torch.Tensor:
    """Mean of the top ``frac`` share of each map's values ``(N, ...)`` -> ``(N,)``."""
    flat = m.reshape(m.shape[0], -1)
    k = max(1, int(round(float(frac) * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(dim=1)


class PrepStatsMixin:
    """For detectors whose net starts with an :class:`ImagePrep`: learn the per-channel statistics
    from the training images before the net is built, and put them into each new net (when
    loading, the saved buffers overwrite them)."""

    def _prepare_fit(self, x: np.ndarray, y) -> None:
        self._stats = channel_stats(x)

    def _with_stats(self, net: nn.Module, prep: ImagePrep) -> nn.Module:
        if getattr(self, "_stats", None) is not None:
            prep.set_stats(*self._stats)
        return net
