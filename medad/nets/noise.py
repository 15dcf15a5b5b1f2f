"""Structured noise for denoising autoencoders and diffusion models (1D/2D/3D).

:func:`coarse_noise` is the noise of Kascenas et al.'s denoising autoencoder: Gaussian noise
drawn on a coarse grid, upsampled to the image and shifted by a random offset so the coarse
grid does not sit at the same place in every image. Summing several such grids (octaves, each
finer and weaker) gives a low-frequency noise in the spirit of AnoDDPM's simplex noise, which
removes large lesions better than white Gaussian noise.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["coarse_noise", "make_noise"]

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def coarse_noise(shape: Sequence[int], res: int | Sequence[int], *, std: float = 1.0, octaves: int = 1,
                 persistence: float = 0.5, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, normalise: bool = False) -> torch.Tensor:
    """Low-resolution Gaussian noise, upsampled to ``shape = (N, C, *spatial)``.

    Args:
        shape: output shape.
        res: coarse grid size per spatial side (an int applies to every side, capped by the side).
        std: standard deviation of the coarse samples of the first octave.
        octaves: number of grids summed; octave ``k`` has ``2**k`` times the resolution and
            ``persistence**k`` times the amplitude.
        persistence: amplitude ratio between consecutive octaves.
        generator: CPU generator for reproducible noise (drawn on the CPU, then moved, so the
            same seed gives the same noise on every device).
        device: where the result goes.
        normalise: rescale each item to zero mean and standard deviation ``std`` (what a
            diffusion model needs, since its forward process assumes unit-variance noise).
    """
    shape = [int(s) for s in shape]
    spatial = shape[2:]
    if not 1 <= len(spatial) <= 3:
        raise ValueError(f"coarse noise needs 1 to 3 spatial axes, got shape {shape}")
    base = [int(res)] * len(spatial) if isinstance(res, int) else [int(r) for r in res]
    out = torch.zeros(shape)
    for k in range(int(octaves)):
        grid = [max(1, min(n, r * 2**k)) for n, r in zip(spatial, base)]
        low = torch.randn(shape[:2] + grid, generator=generator) * (std * persistence**k)
        up = F.interpolate(low, size=spatial, mode=_MODES[len(spatial)], align_corners=False)
        shifts = [int(torch.randint(0, n, (1,), generator=generator)) for n in spatial]
        out += torch.roll(up, shifts=shifts, dims=list(range(2, 2 + len(spatial))))
    if normalise:
        dims = list(range(1, len(shape)))
        out = (out - out.mean(dim=dims, keepdim=True)) / (out.std(dim=dims, keepdim=True) + 1e-8) * std
    return out.to(device) if device is not None else out


def make_noise(kind: str, like: torch.Tensor, *, res: int = 16, octaves: int = 4, persistence: float = 0.5,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Unit-variance noise shaped like ``like``: ``"gaussian"`` (white) or ``"coarse"``
    (multi-octave coarse noise, AnoDDPM-like), on ``like``'s device and dtype."""
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator).to(like.device, like.dtype)
    if kind == "coarse":
        return coarse_noise(like.shape, res, octaves=octaves, persistence=persistence, generator=generator,
                            normalise=True).to(like.device, like.dtype)
    raise ValueError(f"unknown noise type {kind!r}; use 'gaussian' or 'coarse'")
