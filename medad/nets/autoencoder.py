"""Convolutional autoencoders for 1D/2D/3D inputs: plain, variational and memory-augmented.

One conv stack (MONAI ``Convolution`` / ``ResidualUnit`` blocks, so ``spatial_dims``, norm and
activation come from MONAI's factories) with three bottlenecks, so AE, VAE and MemAE differ
only where the methods differ:

* :class:`ConvAutoEncoder` -- ``z = f(x)``, ``x_hat = g(z)``; ``forward`` returns ``x_hat``.
* :class:`VarConvAutoEncoder` -- Gaussian latent ``q(z|x) = N(mu, diag(exp(logvar)))``;
  ``forward`` returns ``(x_hat, mu, logvar)`` (sampled in training, ``z = mu`` in eval mode).
  Written on the same stack rather than with MONAI's ``VarAutoEncoder`` because that one
  only has a dense vector latent and a fixed input shape; here the latent can also stay
  spatial (``latent_size=None``), which keeps the anatomy's layout for lesion maps.
* :class:`MemConvAutoEncoder` -- a :class:`~medad.nets.memory.MemoryModule` between encoder
  and decoder; ``forward`` returns ``(x_hat, weights)``.

The latent is either spatial (``latent_channels`` maps at the coarsest resolution; any input
size) or a vector (``latent_size`` with a fixed ``in_shape``). ``skip_connections=True`` turns
the stack into a U-Net (used by the denoising autoencoder, where noise, not the bottleneck,
stops the network from copying its input). Inputs whose sides are not multiples of the total
stride are padded (replicate) and the output is cropped back, so every network returns its
input's shape.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from medad.nets.memory import MemoryModule

__all__ = ["ConvAutoEncoder", "VarConvAutoEncoder", "MemConvAutoEncoder", "kl_divergence", "pad_to_multiple"]


def pad_to_multiple(x: torch.Tensor, factor: int, mode: str = "replicate") -> torch.Tensor:
    """Pad the spatial sides of ``(N, C, *spatial)`` at their end up to multiples of ``factor``
    (crop the output back with ``out[..., :n]``)."""
    pad: list[int] = []
    for n in reversed(x.shape[2:]):  # F.pad lists the last axis first
        pad += [0, -(-int(n) // factor) * factor - int(n)]
    return F.pad(x, pad, mode=mode) if any(pad) else x


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over latent dimensions, averaged over items."""
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    return kl.reshape(kl.shape[0], -1).sum(dim=1).mean()


class ConvAutoEncoder(nn.Module):
    """Convolutional autoencoder with a spatial or vector bottleneck.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        out_channels: output channels (default ``in_channels``).
        channels: feature maps of each encoder stage (mirrored by the decoder).
        strides: stride of each stage (same length as ``channels``).
        latent_channels: channels of a spatial latent (used when ``latent_size`` is None).
        latent_size: size of a vector latent; needs ``in_shape``.
        in_shape: spatial shape of the inputs (only for a vector latent).
        kernel_size: convolution kernel size.
        num_res_units: residual sub-units per stage (0: plain convolutions).
        act, norm, dropout: MONAI layer factory arguments.
        skip_connections: U-Net skips from each encoder stage to the decoder.
    """

    #: how many latent tensors the encoder head produces per latent dimension (2 for mu/logvar)
    _latent_mult = 1

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int | None = None,
        channels: Sequence[int] = (32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        latent_channels: int = 16,
        latent_size: int | None = None,
        in_shape: Sequence[int] | None = None,
        kernel_size: int = 3,
        num_res_units: int = 1,
        act: str | tuple = "PRELU",
        norm: str | tuple = "BATCH",
        dropout: float | None = None,
        skip_connections: bool = False,
    ):
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"channels {tuple(channels)} and strides {tuple(strides)} must be non-empty and equally long")
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels or in_channels)
        self.channels = [int(c) for c in channels]
        self.strides = [int(s) for s in strides]
        self.latent_channels = int(latent_channels)
        self.latent_size = None if latent_size is None else int(latent_size)
        self.skip_connections = bool(skip_connections)
        self.factor = math.prod(self.strides)
        common = dict(spatial_dims=self.spatial_dims, kernel_size=kernel_size, act=act, norm=norm, dropout=dropout)

        self.encoder = nn.ModuleList()
        c_in = self.in_channels
        for c, s in zip(self.channels, self.strides):
            if num_res_units > 0:
                self.encoder.append(ResidualUnit(in_channels=c_in, out_channels=c, strides=s, subunits=num_res_units, **common))
            else:
                self.encoder.append(Convolution(in_channels=c_in, out_channels=c, strides=s, **common))
            c_in = c

        c_last = self.channels[-1]
        mult = self._latent_mult
        if self.latent_size is None:
            self.to_latent = Convolution(self.spatial_dims, c_last, self.latent_channels * mult, kernel_size=1, conv_only=True)
            self.from_latent = Convolution(self.spatial_dims, self.latent_channels, c_last, kernel_size=1, act=act, norm=norm)
            self.final_shape = None
        else:
            if in_shape is None or len(in_shape) != self.spatial_dims:
                raise ValueError(f"a vector latent (latent_size) needs in_shape with {self.spatial_dims} sides")
            self.final_shape = [-(-int(n) // self.factor) for n in in_shape]
            flat = c_last * math.prod(self.final_shape)
            self.to_latent = nn.Linear(flat, self.latent_size * mult)
            self.from_latent = nn.Sequential(nn.Linear(self.latent_size, flat), nn.ReLU())

        self.decoder = nn.ModuleList()
        for i in reversed(range(len(self.channels))):
            c_in = self.channels[i] * (2 if self.skip_connections else 1)
            c_out = self.channels[i - 1] if i > 0 else self.channels[0]
            block: list[nn.Module] = [Convolution(in_channels=c_in, out_channels=c_out, strides=self.strides[i],
                                                  is_transposed=True, **common)]
            if num_res_units > 0:
                block.append(ResidualUnit(in_channels=c_out, out_channels=c_out, subunits=num_res_units, **common))
            self.decoder.append(nn.Sequential(*block))
        self.head = Convolution(self.spatial_dims, self.channels[0], self.out_channels, kernel_size=kernel_size,
                                conv_only=True)

    # ------------------------------------------------------------------ pieces
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected (N, C, {self.spatial_dims} spatial sides), got {tuple(x.shape)}")
        return pad_to_multiple(x, self.factor)

    def _encode_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self._pad(x)
        skips = []
        for stage in self.encoder:
            h = stage(h)
            skips.append(h)
        if self.latent_size is None:
            return self.to_latent(h), skips
        return self.to_latent(h.flatten(1)), skips

    def bottleneck(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Transform the encoder output before decoding; returns ``(z, auxiliary outputs)``."""
        return z, {}

    def decode(self, z: torch.Tensor, skips: list[torch.Tensor] | None = None,
               out_shape: Sequence[int] | None = None) -> torch.Tensor:
        """Map a latent back to image space (cropped to ``out_shape`` when given)."""
        h = self.from_latent(z)
        if self.latent_size is not None:
            h = h.reshape(h.shape[0], self.channels[-1], *self.final_shape)
        for j, stage in enumerate(self.decoder):
            if self.skip_connections:
                if skips is None:
                    raise ValueError("a network with skip connections needs the encoder's skips to decode")
                h = torch.cat([h, skips[len(skips) - 1 - j]], dim=1)
            h = stage(h)
        out = self.head(h)
        if out_shape is not None:
            out = out[(slice(None), slice(None), *(slice(0, int(n)) for n in out_shape))]
        return out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent code (for a VAE: the mean)."""
        z, aux = self.bottleneck(self._encode_features(x)[0])
        return aux.get("mu", z)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z, skips = self._encode_features(x)
        z, aux = self.bottleneck(z)
        return self.decode(z, skips, x.shape[2:]), aux

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``x_hat`` only, whatever the bottleneck."""
        return self._run(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)


class VarConvAutoEncoder(ConvAutoEncoder):
    """Variational autoencoder on the :class:`ConvAutoEncoder` stack (same arguments).

    ``forward`` returns ``(x_hat, mu, logvar)``; in eval mode ``z = mu`` so reconstructions are
    deterministic.
    """

    _latent_mult = 2

    def bottleneck(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mu, logvar = z.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return z, {"mu": mu, "logvar": logvar}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        recon, aux = self._run(x)
        return recon, aux["mu"], aux["logvar"]


class MemConvAutoEncoder(ConvAutoEncoder):
    """Memory-augmented autoencoder (MemAE) on the :class:`ConvAutoEncoder` stack.

    Args:
        memory_slots: number of prototypes.
        shrink_threshold: hard-shrinkage ``lambda`` (``None``: ``1 / memory_slots``).
        **kwargs: :class:`ConvAutoEncoder` arguments (``skip_connections`` is refused: skips
            would let the input bypass the memory).

    ``forward`` returns ``(x_hat, weights)``; see :class:`~medad.nets.memory.MemoryModule`.
    """

    def __init__(self, *args, memory_slots: int = 100, shrink_threshold: float | None = None, **kwargs):
        if kwargs.get("skip_connections"):
            raise ValueError("MemConvAutoEncoder cannot use skip connections (they bypass the memory)")
        super().__init__(*args, **kwargs)
        dim = self.latent_channels if self.latent_size is None else self.latent_size
        self.memory = MemoryModule(memory_slots, dim, shrink_threshold)

    def bottleneck(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z, w = self.memory(z)
        return z, {"weights": w}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon, aux = self._run(x)
        return recon, aux["weights"]
