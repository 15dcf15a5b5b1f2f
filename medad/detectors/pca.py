"""PCA on raw (downsampled) pixels: the classical baseline of image screening.

Healthy images are shrunk to ``image_size``, flattened and centred; the top principal components
span "normal appearance". With ``method="residual"`` a new image is projected onto them and
back; the residual is the map (upsampled to the input grid) and its mean square the score. With
``method="knn"`` the score is the distance to the nearest healthy training images (as
reconstructed from their coordinates; neighbours found in the components' coordinates), and the
map the squared difference from the nearest one: "how far from any normal image seen", which suits sets of
many distinct normal appearances (views, sequences) that one linear subspace spans badly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medad.detectors.base import AnomalyResult, Detector
from medad.errors import ConfigError, InputError
from medad.registry import register

NORMALIZE = ("none", "robust")
METHODS = ("residual", "knn")


def robust_normalize(x: np.ndarray, fg_threshold: float = 0.05) -> np.ndarray:
    """Each image ``(C, H, W)`` of ``x`` minus its foreground median, over the foreground's
    10th-90th percentile spread (foreground: channel mean above ``fg_threshold``; all pixels
    when fewer than 16 are)."""
    from medad.detectors.handcrafted import foreground, frame_relative

    return frame_relative(x, foreground(x, fg_threshold), spread="p10-p90")


@register("pca")
class PCADetector(Detector):
    """PCA reconstruction error on downsampled pixels.

    Args:
        n_components: components kept; a float in (0, 1) keeps enough to explain that share
            of the variance.
        image_size: side length images are resized to before the PCA (small: it is the
            dimension of the problem).
        blur_sigma: Gaussian smoothing of the residual map, in working pixels.
        batch_size: images scored per step (memory only).
        normalize: ``"none"`` or ``"robust"``: each image minus the median of its foreground
            (pixels above ``fg_threshold``), divided by the spread between the foreground's 10th
            and 90th percentiles -- removes brightness/contrast differences between scans
            without letting the background or a bright lesion set the scale.
        fg_threshold: foreground threshold for ``normalize="robust"`` (inputs in [0, 1]).
        method: ``"residual"`` or ``"knn"`` (see module doc).
        k: nearest training images averaged (``method="knn"``).
    """

    input_kind = "image"
    conformance_params = {"n_components": 4, "image_size": 16}

    def __init__(self, n_components: float | int = 0.95, image_size: int = 32, blur_sigma: float = 1.0,
                 batch_size: int = 256, normalize: str = "none", fg_threshold: float = 0.05,
                 method: str = "residual", k: int = 1):
        self._set_params(locals())

    def _flat(self, x: np.ndarray):
        import torch

        from medad.nets.image_encoders import resize

        if self.normalize not in NORMALIZE:
            raise ConfigError(f"pca normalize must be one of {NORMALIZE}, got {self.normalize!r}")
        if self.normalize == "robust":
            x = robust_normalize(x, float(self.fg_threshold))
        t = resize(torch.from_numpy(np.ascontiguousarray(x)), self.image_size)
        return t.reshape(len(t), -1).double()

    def _fit(self, x, val, y) -> None:
        import torch

        if x.ndim != 4:
            raise InputError(f"pca expects 2D images (N, C, H, W), got shape {x.shape}")
        if self.method not in METHODS:
            raise ConfigError(f"pca method must be one of {METHODS}, got {self.method!r}")
        self.in_channels_ = int(x.shape[1])
        xf = self._flat(x)
        mean = xf.mean(0)
        # economy SVD of the centred data: rows of vh are the principal axes
        _, s, vh = torch.linalg.svd(xf - mean, full_matrices=False)
        var = s**2
        nc = self.n_components
        if isinstance(nc, float) and 0 < nc < 1:
            k = int(torch.searchsorted(torch.cumsum(var, 0) / var.sum().clamp_min(1e-12), torch.tensor(nc, dtype=var.dtype)).item()) + 1
        else:
            k = int(nc)
        k = max(1, min(k, vh.shape[0]))
        self.mean_ = mean.float()
        self.components_ = vh[:k].float().contiguous()
        self.explained_variance_ratio_ = float((var[:k].sum() / var.sum().clamp_min(1e-12)).item())
        # knn: the training images' coordinates are the memory bank
        self.bank_ = ((xf - mean) @ vh[:k].T).float().contiguous() if self.method == "knn" else torch.zeros(0, k)

    def _score(self, x: np.ndarray) -> AnomalyResult:
        import torch

        from medad.nets.image_encoders import gaussian_blur, upsample_map

        if x.ndim != 4 or x.shape[1] != self.in_channels_:
            raise InputError(f"pca was fitted on {self.in_channels_}-channel images (N, C, H, W), got shape {x.shape}")
        scores, maps = [], []
        comp, mean, bank = self.components_.double(), self.mean_.double(), self.bank_.double()
        s = int(self.image_size)
        for i in range(0, len(x), int(self.batch_size)):
            xb = x[i:i + int(self.batch_size)]
            c = self._flat(xb) - mean
            if self.method == "knn":
                coef = c @ comp.T
                nn = torch.cdist(coef, bank).topk(min(int(self.k), len(bank)), dim=1, largest=False)
                # full distance to the neighbours' reconstructions: the part of the image outside
                # the normal subspace (where a lesion mostly lies) counts as well
                out2 = ((c - coef @ comp) ** 2).sum(1, keepdim=True)
                scores.append((nn.values**2 + out2).sqrt().mean(1).float())
                resid = c - bank[nn.indices[:, 0]] @ comp  # difference from the nearest normal image
            else:
                resid = c - (c @ comp.T) @ comp
            r2 = (resid**2).reshape(len(xb), self.in_channels_, s, s).mean(1).float()
            if self.method != "knn":
                scores.append(r2.reshape(len(xb), -1).mean(1))
            maps.append(upsample_map(gaussian_blur(r2, float(self.blur_sigma)), x.shape[-2:]))
        return AnomalyResult(score=torch.cat(scores).double().numpy(), map=torch.cat(maps).numpy())

    def _get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return ({"mean": self.mean_, "components": self.components_, "bank": self.bank_},
                {"in_channels": self.in_channels_, "explained_variance_ratio": self.explained_variance_ratio_})

    def _set_state(self, arrays, extra) -> None:
        import torch

        self.mean_ = arrays["mean"]
        self.components_ = arrays["components"]
        self.bank_ = arrays.get("bank", torch.zeros(0, len(self.components_)))  # models saved before the knn method
        self.in_channels_ = int(extra["in_channels"])
        self.explained_variance_ratio_ = float(extra["explained_variance_ratio"])
