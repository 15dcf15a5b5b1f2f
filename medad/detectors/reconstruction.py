"""Pseudo-healthy reconstruction detectors: autoencoder ("ae"), denoising autoencoder with coarse
noise ("dae", Kascenas et al.), variational autoencoder ("vae") and memory-augmented
autoencoder ("memae", Gong et al.).

All learn to reconstruct healthy images; the anomaly map is the residual ``|x - x_hat|``
averaged over channels (optionally plus ``ssim_weight * (1 - SSIM)``), on the input grid, and
an item's score is the mean of the top ``top_frac`` share of its map. They work in 1D, 2D and
3D (``spatial_dims``); the number of input channels is taken from the training data.

Post-processing of maps (brain mask, median filter, connected components) belongs to the
pipeline, so every detector, the intensity baseline included, gets the same treatment.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medad.detectors.torch_base import TorchDetector
from medad.errors import ConfigError, InputError
from medad.nets.image_encoders import topk_mean
from medad.registry import register

__all__ = ["ReconstructionDetector", "AEDetector", "DAEDetector", "VAEDetector", "MemAEDetector",
           "residual_map", "ssim_map"]

_TINY = {"epochs": 1, "batch_size": 8, "channels": (4, 8), "strides": (2, 2), "latent_channels": 4,
         "device": "cpu"}


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Local SSIM of ``x`` and ``y`` ``(N, C, *spatial)`` with a uniform window, same shape.

    The dynamic range ``L`` is each item's range of ``x`` (inputs are normalised scans, not
    fixed-range images).
    """
    sd = x.ndim - 2
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[sd - 1]
    r = window // 2

    def mean(t):
        return pool(F.pad(t, [r] * (2 * sd), mode="replicate"), window, stride=1)

    mx, my = mean(x), mean(y)
    vx = mean(x * x) - mx**2
    vy = mean(y * y) - my**2
    cxy = mean(x * y) - mx * my
    flat = x.reshape(x.shape[0], -1)
    rng = (flat.amax(1) - flat.amin(1)).clamp_min(1e-6).reshape(-1, *([1] * (x.ndim - 1)))
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


POLARITIES = ("abs", "positive", "negative")


def residual_map(x: torch.Tensor, recon: torch.Tensor, ssim_weight: float = 0.0, ssim_window: int = 7,
                 polarity: str = "abs") -> torch.Tensor:
    """Anomaly map ``(N, *spatial)``: channel-mean ``|x - x_hat|`` (+ ``ssim_weight * (1 - SSIM)``).

    ``polarity="positive"`` keeps only ``x > x_hat`` (brighter than the pseudo-healthy
    reconstruction: hyperintense lesions such as FLAIR white-matter lesions and tumour oedema),
    ``"negative"`` only ``x < x_hat``; a dark reconstruction error then no longer counts.
    """
    d = x - recon
    if polarity == "abs":
        d = d.abs()
    elif polarity == "positive":
        d = d.clamp_min(0)
    elif polarity == "negative":
        d = (-d).clamp_min(0)
    else:
        raise ConfigError(f"unknown residual polarity {polarity!r}; use one of {', '.join(POLARITIES)}")
    m = d.mean(dim=1)
    if ssim_weight:
        m = m + float(ssim_weight) * (1.0 - ssim_map(x, recon, ssim_window)).clamp_min(0).mean(dim=1)
    return m


class ReconstructionDetector(TorchDetector):
    """Shared logic of detectors whose map is a reconstruction residual.

    Subclasses implement ``_build_net`` and ``_loss`` and, if reconstruction is not simply
    ``net.reconstruct(x)``, ``_reconstruct(net, x, generator)``.
    """

    input_kind = "image"

    # ------------------------------------------------------------------ checks
    def _check_input(self, x: np.ndarray) -> None:
        super()._check_input(x)
        sd = int(self.spatial_dims)
        if x.ndim != sd + 2:
            raise InputError(f"{type(self).__name__} with spatial_dims={sd} expects (N, C, {sd} spatial sides), "
                             f"got shape {x.shape}")
        shape = getattr(self, "in_shape_", None)
        if shape is not None and x.shape[1] != shape[0]:
            raise InputError(f"{type(self).__name__} was trained on {shape[0]} channels, got {x.shape[1]}")
        if shape is not None and getattr(self, "latent_size", None) and list(x.shape[1:]) != list(shape):
            raise InputError(f"{type(self).__name__} has a vector latent trained on items of shape {tuple(shape)}, "
                             f"got {tuple(x.shape[1:])}")

    # ------------------------------------------------------------------ nets
    def _net_kwargs(self) -> dict[str, Any]:
        """Arguments of the :mod:`medad.nets.autoencoder` stack from this detector's parameters."""
        return dict(spatial_dims=int(self.spatial_dims), in_channels=int(self.in_shape_[0]),
                    channels=tuple(self.channels), strides=tuple(self.strides),
                    latent_channels=int(self.latent_channels),
                    latent_size=None if self.latent_size is None else int(self.latent_size),
                    in_shape=self.in_shape_[1:], num_res_units=int(self.num_res_units), norm=self.norm)

    def _recon_loss(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        if self.loss == "mse":
            return F.mse_loss(recon, x)
        if self.loss == "l1":
            return F.l1_loss(recon, x)
        raise ConfigError(f"unknown loss {self.loss!r}; use 'mse' or 'l1'")

    # ------------------------------------------------------------------ scoring
    def _reconstruct(self, net, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return net.reconstruct(x)

    def _score(self, x: np.ndarray):
        # one generator per call, advanced batch by batch: the same input gives the same scores
        # (also after save/load) for detectors that draw noise at inference
        self._generator = torch.Generator().manual_seed(int(self.seed) + 1)
        try:
            return super()._score(x)
        finally:
            self._generator = None

    def _score_batch(self, net, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # called on its own (medad.explain differentiates through it): the same noise every call
        gen = getattr(self, "_generator", None) or torch.Generator().manual_seed(int(self.seed) + 1)
        recon = self._reconstruct(net, xb, gen)
        m = residual_map(xb, recon, float(self.ssim_weight), polarity=str(self.polarity))
        return topk_mean(m, float(self.top_frac)), m


@register("ae")
class AEDetector(ReconstructionDetector):
    """Convolutional autoencoder; map = reconstruction residual.

    Args:
        spatial_dims: 1, 2 or 3 (inputs ``(N, C, *spatial)``).
        channels: feature maps per encoder stage.
        strides: stride per stage.
        latent_channels: channels of the spatial bottleneck (used when ``latent_size`` is None).
        latent_size: vector bottleneck size (fixes the input shape to the training shape).
        num_res_units: residual sub-units per stage.
        norm: MONAI norm name (``"batch"``, ``"instance"``, ...).
        loss: ``"mse"`` or ``"l1"``.
        ssim_weight: weight of ``1 - SSIM`` added to the residual map.
        polarity: ``"abs"`` residual, or only ``"positive"`` (input brighter than its
            reconstruction: hyperintense lesions) or ``"negative"`` differences.
        top_frac: share of the highest map values averaged into the item score.
        epochs, batch_size, lr, seed, device: training settings.
    """

    conformance_params = dict(_TINY)

    def __init__(self, spatial_dims: int = 2, channels: Sequence[int] = (32, 64, 128), strides: Sequence[int] = (2, 2, 2),
                 latent_channels: int = 16, latent_size: int | None = None, num_res_units: int = 1,
                 norm: str = "batch", loss: str = "mse", ssim_weight: float = 0.0, polarity: str = "abs", top_frac: float = 0.01,
                 epochs: int = 20, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto"):
        self._set_params(locals())

    def _build_net(self):
        from medad.nets.autoencoder import ConvAutoEncoder

        return ConvAutoEncoder(**self._net_kwargs())

    def _loss(self, net, batch):
        x = batch[0]
        return self._recon_loss(x, net(x))


@register("dae")
class DAEDetector(ReconstructionDetector):
    """Denoising autoencoder with coarse noise (Kascenas et al., MIDL 2022).

    Training corrupts each healthy image with Gaussian noise drawn on a ``noise_res`` grid,
    upsampled and randomly shifted, and learns to return the clean image; a lesion looks like
    such a low-frequency corruption and is "denoised" away. The network is a U-Net (the
    :class:`~medad.nets.autoencoder.ConvAutoEncoder` stack with skip connections); at test
    time the clean image goes in and the residual is the map.

    Args:
        noise_res: coarse noise grid per side (Kascenas et al.: 16 for 128-pixel slices).
        noise_std: standard deviation of the noise (in the data's units). The paper's 0.2 is
            for mean/std-normalised slices; on robust-z-scored BraTS FLAIR slices it left the
            U-Net close to the identity (lesions reconstructed), while 1.0 worked (see
            ``configs/brain_dae.yaml``).
        skip_connections: U-Net skips (the original model has them; noise keeps the network
            from learning the identity).
        Other arguments as for ``"ae"``.
    """

    conformance_params = dict(_TINY, noise_res=4)

    def __init__(self, spatial_dims: int = 2, channels: Sequence[int] = (32, 64, 128, 256),
                 strides: Sequence[int] = (2, 2, 2, 2), latent_channels: int = 64, latent_size: int | None = None,
                 num_res_units: int = 1, norm: str = "batch", skip_connections: bool = True, noise_res: int = 16,
                 noise_std: float = 0.2, loss: str = "mse", ssim_weight: float = 0.0, polarity: str = "abs", top_frac: float = 0.01,
                 epochs: int = 20, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto"):
        self._set_params(locals())

    def _build_net(self):
        from medad.nets.autoencoder import ConvAutoEncoder

        return ConvAutoEncoder(**self._net_kwargs(), skip_connections=bool(self.skip_connections))

    def _loss(self, net, batch):
        from medad.nets.noise import coarse_noise

        x = batch[0]
        noise = coarse_noise(x.shape, int(self.noise_res), std=float(self.noise_std)).to(x.device, x.dtype)
        return self._recon_loss(x, net(x + noise))


@register("vae")
class VAEDetector(ReconstructionDetector):
    """Variational autoencoder; map = residual of the reconstruction from the posterior mean.

    The loss is the negative ELBO per pixel: reconstruction error plus
    ``kl_weight * KL(q(z|x) || N(0, I)) / n_pixels`` (``kl_weight=1``: the ELBO; smaller
    values trade the prior for sharper reconstructions).

    Args:
        kl_weight: weight of the KL term (beta of a beta-VAE).
        latent_size: vector latent (the classic VAE); ``None`` keeps a spatial Gaussian latent
            of ``latent_channels`` maps.
        Other arguments as for ``"ae"``.
    """

    conformance_params = dict(_TINY)

    def __init__(self, spatial_dims: int = 2, channels: Sequence[int] = (32, 64, 128), strides: Sequence[int] = (2, 2, 2),
                 latent_channels: int = 16, latent_size: int | None = None, num_res_units: int = 1,
                 norm: str = "batch", kl_weight: float = 1.0, loss: str = "mse", ssim_weight: float = 0.0, polarity: str = "abs",
                 top_frac: float = 0.01, epochs: int = 20, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                 device: str = "auto"):
        self._set_params(locals())

    def _build_net(self):
        from medad.nets.autoencoder import VarConvAutoEncoder

        return VarConvAutoEncoder(**self._net_kwargs())

    def _loss(self, net, batch):
        from medad.nets.autoencoder import kl_divergence

        x = batch[0]
        recon, mu, logvar = net(x)
        n_pix = x[0].numel()
        return self._recon_loss(x, recon) + float(self.kl_weight) * kl_divergence(mu, logvar) / n_pix


@register("memae")
class MemAEDetector(ReconstructionDetector):
    """Memory-augmented autoencoder (Gong et al., ICCV 2019).

    The latent at each bottleneck position is replaced by a sparse combination of
    ``memory_slots`` learned prototypes (hard shrinkage at ``shrink_threshold``); the loss adds
    ``entropy_weight`` times the entropy of the addressing weights.

    Args:
        memory_slots: number of prototypes.
        shrink_threshold: hard-shrinkage lambda (``None``: ``1 / memory_slots``).
        entropy_weight: weight of the entropy term (Gong et al.: 0.0002).
        Other arguments as for ``"ae"``.
    """

    conformance_params = dict(_TINY, memory_slots=8)

    def __init__(self, spatial_dims: int = 2, channels: Sequence[int] = (32, 64, 128), strides: Sequence[int] = (2, 2, 2),
                 latent_channels: int = 16, latent_size: int | None = None, num_res_units: int = 1,
                 norm: str = "batch", memory_slots: int = 256, shrink_threshold: float | None = None,
                 entropy_weight: float = 0.0002, loss: str = "mse", ssim_weight: float = 0.0, polarity: str = "abs", top_frac: float = 0.01,
                 epochs: int = 20, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto"):
        self._set_params(locals())

    def _build_net(self):
        from medad.nets.autoencoder import MemConvAutoEncoder

        return MemConvAutoEncoder(**self._net_kwargs(), memory_slots=int(self.memory_slots),
                                  shrink_threshold=self.shrink_threshold)

    def _loss(self, net, batch):
        from medad.nets.memory import memory_entropy

        x = batch[0]
        recon, weights = net(x)
        return self._recon_loss(x, recon) + float(self.entropy_weight) * memory_entropy(weights)
