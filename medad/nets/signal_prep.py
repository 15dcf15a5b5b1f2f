"""The front end of every signal network: amplitude normalisation per window and channel, then
the representation the network reads (raw samples, frames, or a log STFT / mel / MFCC image).

It is a module inside the network, so it is saved with the weights, runs on the model's device
and stays differentiable (explanations can attribute to raw samples). The mel filters come from
:func:`medad.transforms.signal.mel_filterbank` (one definition of the mel scale in medad).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from medad.errors import ConfigError
from medad.nets.recurrent import to_frames

__all__ = ["REPRESENTATIONS", "SignalPrep", "normalize_windows"]

REPRESENTATIONS = ("raw", "frames", "stft", "mel", "mfcc")


def normalize_windows(x: torch.Tensor) -> torch.Tensor:
    """Per window and channel: minus the mean, divided by the standard deviation.

    The floor is relative to the mean std over channels, so a flat channel stays flat instead of
    amplifying noise, and scaling a window by any factor leaves the output unchanged.
    """
    std = x.std(dim=-1, keepdim=True)
    floor = 1e-3 * std.mean(dim=-2, keepdim=True) + 1e-12
    return (x - x.mean(dim=-1, keepdim=True)) / (std + floor)


class SignalPrep(nn.Module):
    """``(N, C, T)`` -> raw ``(N, C, T)`` | frames ``(N, S, C*F)`` | image ``(N, C, F, S)``.

    Args:
        normalize: "window" (:func:`normalize_windows`) or "none".
        representation: "raw", "frames", "stft", "mel" or "mfcc".
        frame_len: samples per frame ("frames").
        n_fft, hop: STFT size and hop (default ``n_fft // 4``) for the images.
        n_mels, n_mfcc: mel bands and cepstral coefficients.
        sfreq: sampling rate in Hz (needed for "mel" and "mfcc").
    """

    def __init__(self, normalize: str = "window", representation: str = "raw", frame_len: int = 64,
                 n_fft: int = 64, hop: int | None = None, n_mels: int = 32, n_mfcc: int = 13,
                 sfreq: float | None = None) -> None:
        super().__init__()
        if normalize not in ("window", "none"):
            raise ConfigError(f"normalize must be 'window' or 'none', got {normalize!r}")
        if representation not in REPRESENTATIONS:
            raise ConfigError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
        self.normalize, self.representation = normalize, representation
        self.frame_len, self.n_fft = int(frame_len), int(n_fft)
        self.hop = int(hop or max(1, self.n_fft // 4))
        if representation in ("stft", "mel", "mfcc"):
            self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        if representation in ("mel", "mfcc"):
            if not sfreq:
                raise ConfigError(f"representation {representation!r} needs the sampling rate (sfreq)")
            from medad.transforms.signal import mel_filterbank

            fb = mel_filterbank(float(sfreq), self.n_fft, int(n_mels))
            self.register_buffer("mel_fb", torch.from_numpy(fb), persistent=False)
            if representation == "mfcc":
                from scipy.fft import dct

                d = dct(np.eye(int(n_mels)), type=2, axis=0, norm="ortho")[: int(n_mfcc)]
                self.register_buffer("dct", torch.from_numpy(d.astype(np.float32)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize == "window":
            x = normalize_windows(x)
        if self.representation == "raw":
            return x
        if self.representation == "frames":
            return to_frames(x, self.frame_len)
        n, c, t = x.shape
        spec = torch.stft(x.reshape(n * c, t), self.n_fft, hop_length=self.hop, window=self.window,
                          center=False, return_complex=True).abs() ** 2
        if self.representation in ("mel", "mfcc"):
            spec = torch.einsum("mf,bft->bmt", self.mel_fb, spec)
        img = torch.log(spec + 1e-6)
        if self.representation == "mfcc":
            img = torch.einsum("cm,bmt->bct", self.dct, img)
        return img.reshape(n, c, *img.shape[1:])

    def out_shape(self, in_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of one item ``in_shape = (C, T)`` after this module."""
        with torch.no_grad():
            return tuple(self(torch.randn(2, *[int(v) for v in in_shape])).shape[1:])
