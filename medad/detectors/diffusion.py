"""Diffusion pseudo-healthy reconstruction ("ddpm"; AnoDDPM / Pinaya et al. style).

Training: MONAI's ``DiffusionModelUNet`` learns to predict the noise ``eps`` of
``x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps`` (``DDPMScheduler`` + ``DiffusionInferer``; patched: ``add_noise`` inside the patch) on
healthy images. Inference: a test image is noised to an intermediate step ``t0`` and brought
back with a few deterministic DDIM steps (``DDIMScheduler``, ``eta = 0``); the last step's
prediction of the clean image is the pseudo-healthy reconstruction and ``|x - x_hat|`` the map
(:func:`medad.detectors.reconstruction.residual_map`). ``t0`` trades detail (small) against
removing the lesion (large). ``noise="coarse"`` uses low-frequency multi-octave noise in both
training and inference (AnoDDPM found simplex noise removes large lesions better than white
noise); several reconstructions from different noise draws can be averaged.

``patch_size`` switches to patched diffusion (pDDPM, Behrendt et al., MIDL 2023): training
noises only one randomly placed patch of each image while the rest stays clean, and the loss
is taken on that patch only (as in the authors' released configuration, ``inpaint: True``), so
the network learns to fill a patch from its healthy context. At inference each patch of a grid
(``patch_size``, ``patch_stride``; the last patch of an axis is moved back so every pixel is
covered) is noised to ``t0`` on its own and denoised with the DDIM steps, the context being put
back clean after every step (as in training); each reconstruction keeps its patch, and the
patches are stitched, averaged where they overlap. A lesion is then inpainted from the healthy
tissue around it rather than from its own, only partly noised, intensities.

Inference skips what has nothing to reconstruct: a patch (or, without patches, an item) whose
pixels are all equal -- background outside the brain -- is kept as it is (residual 0). The
item-patch copies that remain go through the network in small calls on the CPU
(``eval_batch``), which is much faster there than one large call; neither changes the
reconstruction of the rest (the noise of every copy is drawn as if none were skipped).

Network evaluations per item at inference = ``inference_steps * n_reconstructions``, times
the number of grid patches with ``patch_size`` (at most: constant patches are skipped).
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
from medad.transforms.image import patch_grid  # noqa: F401  (re-exported: the patch grid of pDDPM)

__all__ = ["DDPMDetector", "ddim_timesteps", "noise_in_patch", "patch_grid", "patch_masks", "random_patch_mask",
           "stitch_patches", "varying"]

N_TRAIN_STEPS = 1000
#: network inputs per call at inference on the CPU: small calls stay in cache (128-px slices, one
#: thread: ~34 ms per input in calls of 4 against ~88 ms in calls of 64)
CPU_EVAL_BATCH = 4


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


def patch_masks(shape: Sequence[int], corners: Sequence[Sequence[int]], patch: Sequence[int]) -> torch.Tensor:
    """Boolean masks ``(len(corners), *shape)`` (``shape`` = ``(C, *spatial)`` or ``(1, *spatial)``),
    each true on one patch of size ``patch`` at its corner."""
    out = torch.zeros((len(corners), *[int(v) for v in shape]), dtype=torch.bool)
    for k, c in enumerate(corners):
        out[(k, slice(None), *(slice(int(a), int(a) + int(p)) for a, p in zip(c, patch)))] = True
    return out


def random_patch_mask(n: int, shape: Sequence[int], extent: Sequence[int], patch: Sequence[int],
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` boolean masks ``(n, *shape)``, each true on one patch placed uniformly at random
    inside the first ``extent`` pixels of each spatial axis (the image before padding)."""
    corners = [[int(torch.randint(0, int(e) - int(p) + 1, (1,), generator=generator)) for e, p in zip(extent, patch)]
               for _ in range(int(n))]
    return patch_masks(shape, corners, patch)


def stitch_patches(copies: torch.Tensor, mask: torch.Tensor, n_patches: int) -> torch.Tensor:
    """Stitch ``copies`` ``(K * B, C, *spatial)`` (patch-major: copy ``k * B + b`` of item ``b``
    is valid on its patch ``mask[k * B + b]``) into ``(B, C, *spatial)``: each pixel is the mean
    of the copies whose patch covers it (pixels no patch covers, e.g. padding, are 0)."""
    m = mask.reshape(n_patches, -1, *mask.shape[1:]).to(copies.dtype)
    return (copies.reshape(n_patches, -1, *copies.shape[1:]) * m).sum(0) / m.sum(0).clamp_min(1.0)


def noise_in_patch(scheduler, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """The forward process ``x_t`` of ``scheduler`` inside ``mask`` (broadcast to ``x``), ``x``
    itself outside (``mask=None``: everywhere, plain DDPM)."""
    xt = scheduler.add_noise(x, noise, t)
    return xt if mask is None else torch.where(mask.to(x.device), xt, x)


def varying(x: torch.Tensor, corners: Sequence[Sequence[int]], patch: Sequence[int]) -> torch.Tensor:
    """``(len(corners), N)``: whether patch ``k`` (corner ``corners[k]``, size ``patch``) of item
    ``n`` of ``x`` ``(N, C, *spatial)`` holds more than one value (a constant patch is background)."""
    out = []
    for c in corners:
        p = x[(slice(None), slice(None), *(slice(int(a), int(a) + int(q)) for a, q in zip(c, patch)))]
        p = p.reshape(p.shape[0], -1)
        out.append(p.amax(1) > p.amin(1))
    return torch.stack(out)


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
        patch_size: patched diffusion (pDDPM): side of the noised patch (an int for every
            axis, or one per axis); ``None``: the whole image is noised.
        patch_stride: stride of the inference grid of patches (``None``: ``patch_size``, no
            overlap; at most ``patch_size``, so no pixel is left out). Evaluations per item are
            multiplied by the number of grid patches.
        eval_batch: network inputs (items, or item-patch copies with ``patch_size``) per call at
            inference; ``None``: ``CPU_EVAL_BATCH`` on the CPU (small calls stay in cache), all
            copies of a batch at once elsewhere. Does not change the results.
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
                 n_reconstructions: int = 1, train_t_max: int | None = None,
                 patch_size: int | Sequence[int] | None = None, patch_stride: int | Sequence[int] | None = None,
                 eval_batch: int | None = None, ssim_weight: float = 0.0,
                 polarity: str = "abs",
                 top_frac: float = 0.01, epochs: int = 50, batch_size: int = 32, lr: float = 2e-4, seed: int = 0,
                 device: str = "auto"):
        self._set_params(locals())

    # ------------------------------------------------------------------ setup
    def _prepare_fit(self, x: np.ndarray, y) -> None:
        self._patch_setting(x.shape[2:])  # a bad patch setting fails before training
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

    def _patch_setting(self, spatial: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """``(patch, stride)`` per spatial axis, checked against the image sides ``spatial``;
        ``None`` without patches."""
        if self.patch_size is None:
            return None
        sd = len(spatial)

        def per_axis(v, name: str) -> tuple[int, ...]:
            vals = [v] * sd if isinstance(v, (int, np.integer)) else list(v) if isinstance(v, (list, tuple)) else [v]
            if len(vals) != sd or not all(isinstance(a, (int, np.integer)) and a >= 1 for a in vals):
                raise ConfigError(f"{name} must be a positive int or {sd} positive ints, got {v!r}")
            return tuple(int(a) for a in vals)

        patch = per_axis(self.patch_size, "patch_size")
        stride = patch if self.patch_stride is None else per_axis(self.patch_stride, "patch_stride")
        if any(st > p for st, p in zip(stride, patch)):
            raise ConfigError(f"patch_stride {stride} is larger than patch_size {patch}: the grid would leave gaps")
        if any(p > int(n) for p, n in zip(patch, spatial)):
            raise ConfigError(f"patch_size {patch} is larger than the images {tuple(int(n) for n in spatial)}")
        return patch, stride

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
        from monai.networks.schedulers import DDPMScheduler

        if not hasattr(self, "_train_scheduler"):
            self._train_scheduler = DDPMScheduler(num_train_timesteps=N_TRAIN_STEPS)
        x = self._normalise(batch[0])
        t_max = N_TRAIN_STEPS if self.train_t_max is None else int(min(max(1, self.train_t_max), N_TRAIN_STEPS))
        t = torch.randint(0, t_max, (x.shape[0],), device=x.device).long()
        noise = self._noise(x)
        patched = self._patch_setting(batch[0].shape[2:])
        mask = None if patched is None else random_patch_mask(x.shape[0], (1, *x.shape[2:]), batch[0].shape[2:],
                                                              patched[0]).to(x.device)
        if mask is None:  # plain DDPM: MONAI's inferer noises the whole image and runs the network
            from monai.inferers import DiffusionInferer

            pred = DiffusionInferer(self._train_scheduler)(inputs=x, diffusion_model=net, noise=noise, timesteps=t)
            return F.mse_loss(pred.float(), noise.float())
        pred = net(noise_in_patch(self._train_scheduler, x, noise, t, mask), timesteps=t).float()
        # only the noised patch has something to predict; the clean context is the condition
        w = mask.expand_as(pred).float()
        return ((pred - noise.float()) ** 2 * w).sum() / w.sum()

    # ------------------------------------------------------------------ inference
    def _score(self, x: np.ndarray):
        from medad.utils import get_device

        if int(self.spatial_dims) != 2 or get_device(self.device).type != "cpu":
            return super()._score(x)
        # channels-last convolutions are faster on the CPU; the weights are put back afterwards
        # (saving needs contiguous tensors)
        self.net_.to(memory_format=torch.channels_last)
        try:
            return super()._score(x)
        finally:
            self.net_.to(memory_format=torch.contiguous_format)

    def _eval_batch(self, device: torch.device) -> int | None:
        """Network inputs per call at inference (``None``: all at once)."""
        if self.eval_batch is not None:
            if int(self.eval_batch) < 1:
                raise ConfigError(f"eval_batch must be >= 1, got {self.eval_batch}")
            return int(self.eval_batch)
        return CPU_EVAL_BATCH if device.type == "cpu" else None

    def _denoise(self, net, sched, ts: Sequence[int], x: torch.Tensor, noise: torch.Tensor,
                 mask: torch.Tensor | None) -> torch.Tensor:
        """Clean-image estimate of the last DDIM step, from ``x`` noised to ``ts[0]`` (inside
        ``mask`` only, the context being put back clean after every step, as in training)."""
        sample = noise_in_patch(sched, x, noise, torch.full((x.shape[0],), ts[0], device=x.device, dtype=torch.long),
                                mask)
        x0 = sample
        for t in ts:
            eps = net(sample, timesteps=torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
            sample, x0 = sched.step(eps, t, sample)
            if mask is not None:
                sample = torch.where(mask, sample, x)
        return x0

    def _reconstruct(self, net, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from monai.networks.schedulers import DDIMScheduler

        sched = DDIMScheduler(num_train_timesteps=N_TRAIN_STEPS, clip_sample=False)
        n_inf, ts = ddim_timesteps(int(self.t0), int(self.inference_steps))
        sched.set_timesteps(n_inf)
        xn = self._normalise(x)
        b = xn.shape[0]
        patched = self._patch_setting(x.shape[2:])
        if patched is None:
            masks, varies = None, varying(x, [[0] * (x.ndim - 2)], x.shape[2:])
        else:
            patch, stride = patched
            corners = patch_grid(x.shape[2:], patch, stride)
            masks = patch_masks((1, *xn.shape[2:]), corners, patch).to(xn.device)
            varies = varying(x, corners, patch)
        # copies are patch-major: copy k * B + b is item b with patch k noised (plain DDPM: k = 0);
        # a constant patch or item (background) has nothing to reconstruct: it is skipped and kept as it is
        n_copies = varies.numel()
        todo = varies.reshape(-1).nonzero().flatten().to(xn.device)
        chunk = self._eval_batch(xn.device) or max(1, int(todo.numel()))
        n_rec = max(1, int(self.n_reconstructions))
        est = None
        for _ in range(n_rec):
            # the noise of every copy, skipped or not, so the draws do not depend on what is skipped
            noise = self._noise(xn[:1].expand(n_copies, *xn.shape[1:]), generator)
            parts = [self._denoise(net, sched, ts, xn[c % b], noise[c], None if masks is None else masks[c // b])
                     for c in todo.split(chunk)]
            r = torch.cat(parts) if parts else xn[:0]
            est = r if est is None else est + r
        recon = xn.repeat(n_copies // b, *([1] * (xn.ndim - 1))).index_copy(0, todo, est / n_rec)
        if masks is not None:
            used = masks.repeat_interleave(b, dim=0) & varies.reshape(-1, *([1] * (xn.ndim - 1))).to(xn.device)
            stitched = stitch_patches(recon, used, masks.shape[0])
            recon = torch.where(used.reshape(masks.shape[0], b, *used.shape[1:]).any(0), stitched, xn)
        recon = recon[(slice(None), slice(None), *(slice(0, int(n)) for n in x.shape[2:]))]
        return recon * self.half_range_.to(x.device) + self.offset_.to(x.device)
