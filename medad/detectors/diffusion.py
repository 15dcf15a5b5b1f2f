"""Diffusion pseudo-healthy reconstruction ("ddpm"; AnoDDPM / Pinaya et al. style).

Training: MONAI's ``DiffusionModelUNet`` learns to predict the noise ``eps`` of
``x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps`` (``DDPMScheduler`` + ``DiffusionInferer``) on
healthy images. Inference: a test image is noised to an intermediate step ``t0`` and brought
back with a few deterministic DDIM steps (``DDIMScheduler``, ``eta = 0``); the last step's
prediction of the clean image is the pseudo-healthy reconstruction and ``|x - x_hat|`` the map
(:func:`medad.detectors.reconstruction.residual_map`). ``t0`` trades detail (small) against
removing the lesion (large). ``noise="coarse"`` uses low-frequency multi-octave noise in both
training and inference (AnoDDPM found simplex noise removes large lesions better than white
noise); several reconstructions from different noise draws can be averaged.

Network evaluations per item at inference = ``inference_steps * n_reconstructions``.
The inference noise comes from a generator seeded with ``seed``, so scores are reproducible.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medad.detectors.reconstruction import ReconstructionDetector
from medad.errors import ConfigError
from medad.registry import register

__all__ = ["DDPMDetector", "ddim_timesteps"]

N_TRAIN_STEPS = 1000


def ddim_timesteps(t0: int, steps: int, num_train_timesteps: int = N_TRAIN_STEPS) -> tuple[int, list[int]]:
    """``(num_inference_steps, timesteps)`` for a DDIM pass from ``~t0`` towards 0 in ``steps`` evaluations.

    ``DDIMScheduler.step`` goes from ``t`` to ``t - num_train_timesteps // num_inference_steps``,
    so the stride is fixed through ``num_inference_steps``; the timesteps start at ``t0`` and
    stay non-negative.
    """
    if not 0 < t0 < num_train_timesteps:
        raise ConfigError(f"t0 must be in (0, {num_train_timesteps}), got {t0}")
    if steps < 1:
        raise ConfigError(f"inference_steps must be >= 1, got {steps}")
    target = max(1, t0 // steps)
    n_inf = max(1, num_train_timesteps // target)
    stride = num_train_timesteps // n_inf
    ts = [t0 - j * stride for j in range(steps) if t0 - j * stride >= 0]
    return n_inf, ts


@register("ddpm")
class DDPMDetector(ReconstructionDetector):
    """Denoising diffusion model; map = residual of a partial-noise DDIM reconstruction.

    Args:
        spatial_dims: 2 or 3.
        channels: feature maps per U-Net level.
        attention_levels: self-attention per level (costly at fine levels).
        num_res_blocks: residual blocks per level.
        norm_num_groups: group-norm groups (must divide every entry of ``channels``).
        num_head_channels: channels per attention head.
        noise: ``"gaussian"`` or ``"coarse"`` (multi-octave low-frequency noise).
        noise_res: coarse grid per side of the first octave of coarse noise.
        noise_octaves: octaves of coarse noise.
        t0: step the test image is noised to (of 1000).
        inference_steps: DDIM network evaluations per reconstruction.
        n_reconstructions: reconstructions (different noise) averaged per item.
        train_t_max: train on timesteps below this only (``None``: all 1000); inference never
            goes above ``t0``, so ``train_t_max ~ t0`` spends a small CPU budget where it is used.
        ssim_weight, polarity, top_frac: map and score (as for ``"ae"``).
        epochs, batch_size, lr, seed, device: training settings.

    Inputs are rescaled internally so the 0.5th-99.5th percentile range of the training data
    maps to [-1, 1] (the range the noise schedule assumes); maps are in the input's units.
    """

    conformance_params = {"epochs": 1, "batch_size": 8, "channels": (8, 8), "attention_levels": (False, False),
                          "norm_num_groups": 4, "num_head_channels": 8, "inference_steps": 2, "t0": 200,
                          "device": "cpu"}

    def __init__(self, spatial_dims: int = 2, channels: Sequence[int] = (32, 64, 64),
                 attention_levels: Sequence[bool] = (False, False, True), num_res_blocks: int = 1,
                 norm_num_groups: int = 16, num_head_channels: int = 32, noise: str = "gaussian",
                 noise_res: int = 8, noise_octaves: int = 4, t0: int = 300, inference_steps: int = 10,
                 n_reconstructions: int = 1, train_t_max: int | None = None, ssim_weight: float = 0.0,
                 polarity: str = "abs",
                 top_frac: float = 0.01, epochs: int = 50, batch_size: int = 32, lr: float = 2e-4, seed: int = 0,
                 device: str = "auto"):
        self._set_params(locals())

    # ------------------------------------------------------------------ setup
    def _prepare_fit(self, x: np.ndarray, y) -> None:
        lo, hi = np.percentile(x, [0.5, 99.5])
        self.offset_ = torch.tensor(float((hi + lo) / 2))
        self.half_range_ = torch.tensor(float(max((hi - lo) / 2, 1e-6)))

    def _extra_state(self):
        return {"offset": self.offset_, "half_range": self.half_range_}

    def _load_extra_state(self, arrays) -> None:
        self.offset_ = arrays["offset"].float()
        self.half_range_ = arrays["half_range"].float()

    def _build_net(self):
        from monai.networks.nets import DiffusionModelUNet

        if len(self.attention_levels) != len(self.channels):
            raise ConfigError(f"attention_levels {tuple(self.attention_levels)} must match channels {tuple(self.channels)}")
        return DiffusionModelUNet(
            spatial_dims=int(self.spatial_dims), in_channels=int(self.in_shape_[0]), out_channels=int(self.in_shape_[0]),
            channels=tuple(int(c) for c in self.channels), attention_levels=tuple(bool(a) for a in self.attention_levels),
            num_res_blocks=int(self.num_res_blocks), norm_num_groups=int(self.norm_num_groups),
            num_head_channels=int(self.num_head_channels),
        )

    @property
    def _factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def _noise(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        from medad.nets.noise import make_noise

        try:
            return make_noise(str(self.noise), like, res=int(self.noise_res), octaves=int(self.noise_octaves),
                              generator=generator)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        from medad.nets.autoencoder import pad_to_multiple

        return pad_to_multiple((x - self.offset_.to(x.device)) / self.half_range_.to(x.device), self._factor)

    # ------------------------------------------------------------------ training
    def _loss(self, net, batch):
        from monai.inferers import DiffusionInferer
        from monai.networks.schedulers import DDPMScheduler

        if not hasattr(self, "_inferer"):
            self._inferer = DiffusionInferer(DDPMScheduler(num_train_timesteps=N_TRAIN_STEPS))
        x = self._normalise(batch[0])
        t_max = N_TRAIN_STEPS if self.train_t_max is None else int(min(max(1, self.train_t_max), N_TRAIN_STEPS))
        t = torch.randint(0, t_max, (x.shape[0],), device=x.device).long()
        noise = self._noise(x)
        pred = self._inferer(inputs=x, diffusion_model=net, noise=noise, timesteps=t)
        return F.mse_loss(pred.float(), noise.float())

    # ------------------------------------------------------------------ inference
    def _reconstruct(self, net, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from monai.networks.schedulers import DDIMScheduler

        sched = DDIMScheduler(num_train_timesteps=N_TRAIN_STEPS, clip_sample=False)
        n_inf, ts = ddim_timesteps(int(self.t0), int(self.inference_steps))
        sched.set_timesteps(n_inf)
        xn = self._normalise(x)
        recon = torch.zeros_like(xn)
        for _ in range(max(1, int(self.n_reconstructions))):
            sample = sched.add_noise(xn, self._noise(xn, generator),
                                     torch.full((xn.shape[0],), ts[0], device=xn.device, dtype=torch.long))
            x0 = sample
            for t in ts:
                eps = net(sample, timesteps=torch.full((xn.shape[0],), t, device=xn.device, dtype=torch.long))
                sample, x0 = sched.step(eps, t, sample)
            # the clean-image estimate of the last evaluation is the reconstruction
            recon += x0
        recon = recon / max(1, int(self.n_reconstructions))
        recon = recon[(slice(None), slice(None), *(slice(0, int(n)) for n in x.shape[2:]))]
        return recon * self.half_range_.to(x.device) + self.offset_.to(x.device)
