"""Residual dilated CNN for signals: raw windows (``spatial_dims=1``) or time-frequency images
(STFT / mel / MFCC, ``spatial_dims=2``), with a classifier head or an embedding output.

One class for both input kinds (MONAI style): convolution, normalisation and pooling layers
are looked up by ``spatial_dims`` (plain torch layers; importing MONAI's factories costs
seconds, which every signal command would pay).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["ResidualDilatedBlock", "SignalCNN"]


_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}


class ResidualDilatedBlock(nn.Module):
    """Two dilated convolutions with batch norm and a residual connection.

    Args:
        spatial_dims: 1 (time) or 2 (frequency x time).
        in_channels, out_channels: feature maps in and out.
        kernel_size: odd kernel size.
        dilation: dilation of the second convolution (the first one is undilated so the
            block sees every sample before it skips any).
        stride: stride of the first convolution (downsampling); the skip path follows it.
        dropout: dropout between the convolutions.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 dilation: int = 1, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        conv, norm = _CONV[spatial_dims], _NORM[spatial_dims]
        pad = kernel_size // 2
        self.conv1 = conv(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=False)
        self.norm1 = norm(out_channels)
        self.conv2 = conv(out_channels, out_channels, kernel_size, dilation=dilation,
                          padding=pad * dilation, bias=False)
        self.norm2 = norm(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(conv(in_channels, out_channels, 1, stride=stride, bias=False), norm(out_channels))
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(self.drop(h)))
        return self.act(h + self.skip(x))


class SignalCNN(nn.Module):
    """Stem convolution, stages of residual dilated blocks, global average pooling, head.

    Each stage halves the resolution (stride 2 in its first block); the blocks of a stage use
    growing dilations, so the receptive field grows fast on long raw windows.

    Args:
        spatial_dims: 1 for raw windows ``(N, C, T)``, 2 for images ``(N, C, F, T)``.
        in_channels: input channels (EEG/ECG leads, or spectrogram channels).
        out_channels: classifier outputs (1 for a binary logit, K for K classes); ``0`` returns
            the pooled embedding instead (size ``channels[-1]``).
        channels: feature maps per stage.
        dilations: dilations of the blocks inside every stage.
        kernel_size: kernel of the blocks (odd).
        stem_kernel: kernel of the stem convolution; ``stem_stride`` its stride (raw signals
            are long, so a strided stem keeps the cost low).
        dropout: dropout in the blocks and before the head.
    """

    def __init__(self, spatial_dims: int = 1, in_channels: int = 1, out_channels: int = 1,
                 channels: Sequence[int] = (16, 32, 64), dilations: Sequence[int] = (1, 2),
                 kernel_size: int = 3, stem_kernel: int = 7, stem_stride: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if spatial_dims not in (1, 2):
            raise ValueError(f"spatial_dims must be 1 or 2, got {spatial_dims}")
        conv, norm = _CONV[spatial_dims], _NORM[spatial_dims]
        self.spatial_dims = spatial_dims
        self.stem = nn.Sequential(
            conv(in_channels, channels[0], stem_kernel, stride=stem_stride, padding=stem_kernel // 2, bias=False),
            norm(channels[0]), nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        c_in = channels[0]
        for c in channels:
            for j, d in enumerate(dilations):
                blocks.append(ResidualDilatedBlock(spatial_dims, c_in, c, kernel_size, dilation=d,
                                                   stride=2 if j == 0 else 1, dropout=dropout))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.pool = _POOL[spatial_dims](1)
        self.embedding_size = c_in
        self.head = (nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, out_channels))
                     if out_channels > 0 else None)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature maps before pooling ``(N, channels[-1], *reduced)`` (e.g. for Grad-CAM)."""
        return self.blocks(self.stem(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embedding ``(N, channels[-1])``."""
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x)
        return e if self.head is None else self.head(e)
