"""MONAI Compose builders for 2D and 3D images (one builder, ``spatial_dims`` as a parameter).

:func:`image_transforms` returns an array pipeline (channel-first input) or, with ``keys``, a
dictionary pipeline in which masks/labels follow every spatial step with nearest-neighbour
interpolation and are never intensity-normalised. Steps, each optional::

    Orientation (RAS) -> Spacing -> CropForeground -> percentile normalisation inside the
    foreground -> resize or pad/crop -> training augmentations -> float32 tensor

:func:`percentile_normalize` (also as the MONAI transforms :class:`PercentileNormalize` /
:class:`PercentileNormalized`) maps the ``lower``/``upper`` percentiles of the foreground voxels
to ``b_min``/``b_max``, per channel.
"""

from __future__ import annotations

import functools
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from medad.errors import ConfigError, InputError


def percentile_normalize(img, mask=None, *, lower: float = 1.0, upper: float = 99.0,
                         b_min: float = 0.0, b_max: float = 1.0, clip: bool = False,
                         nonzero: bool = False):
    """Scale each channel so that its foreground ``lower``/``upper`` percentiles map to
    ``b_min``/``b_max``.

    Args:
        img: channel-first array or tensor ``(C, *spatial)``.
        mask: foreground ``(1|C, *spatial)`` or ``(*spatial)``; percentiles use these voxels only.
        nonzero: without a mask, use the voxels != 0 as foreground (skull-stripped data).
        clip: clip to ``[b_min, b_max]`` afterwards.

    Returns:
        the same type as ``img`` (MetaTensor metadata kept), float32.
    """
    import torch

    if not 0 <= lower < upper <= 100:
        raise ConfigError(f"need 0 <= lower < upper <= 100, got {lower}, {upper}")
    is_torch = isinstance(img, torch.Tensor)
    x = img.detach().float() if is_torch else np.asarray(img, dtype=np.float32)
    xn = x.cpu().numpy() if is_torch else x
    if xn.ndim < 2:
        raise InputError(f"expected a channel-first image (C, *spatial), got shape {xn.shape}")
    if mask is not None:
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        m = m.astype(bool)
        if m.ndim == xn.ndim - 1:
            m = m[None]
        m = np.broadcast_to(m, xn.shape)
    else:
        m = (xn != 0) if nonzero else np.ones(xn.shape, bool)
    scales, offsets = [], []
    for c in range(xn.shape[0]):
        vals = xn[c][m[c]]
        if vals.size == 0:
            raise InputError(f"channel {c}: the foreground is empty, cannot normalise")
        lo, hi = np.percentile(vals, [lower, upper])
        span = hi - lo if hi > lo else 1.0  # flat image: shift only
        scales.append((b_max - b_min) / span)
        offsets.append(b_min - lo * (b_max - b_min) / span)
    shape = (-1,) + (1,) * (xn.ndim - 1)
    if is_torch:
        s = torch.as_tensor(scales, dtype=x.dtype, device=x.device).reshape(shape)
        o = torch.as_tensor(offsets, dtype=x.dtype, device=x.device).reshape(shape)
        out = x * s + o
        if clip:
            out = out.clamp(min(b_min, b_max), max(b_min, b_max))
        return out
    out = xn * np.asarray(scales, np.float32).reshape(shape) + np.asarray(offsets, np.float32).reshape(shape)
    if clip:
        out = np.clip(out, min(b_min, b_max), max(b_min, b_max))
    return out.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _monai_classes():
    """PercentileNormalize(d) are built on first use so importing this module stays light."""
    from monai.transforms import MapTransform, Transform

    class PercentileNormalize(Transform):
        """Array transform for :func:`percentile_normalize` (mask passed at call time)."""

        def __init__(self, lower: float = 1.0, upper: float = 99.0, b_min: float = 0.0, b_max: float = 1.0,
                     clip: bool = False, nonzero: bool = False):
            self.kw = dict(lower=lower, upper=upper, b_min=b_min, b_max=b_max, clip=clip, nonzero=nonzero)

        def __call__(self, img, mask=None):
            return percentile_normalize(img, mask, **self.kw)

    class PercentileNormalized(MapTransform):
        """Dictionary transform: normalise ``keys`` inside ``data[mask_key]`` (if given)."""

        def __init__(self, keys, mask_key: Hashable | None = None, allow_missing_keys: bool = False, **kw):
            super().__init__(keys, allow_missing_keys)
            self.mask_key = mask_key
            self.norm = PercentileNormalize(**kw)

        def __call__(self, data: Mapping) -> dict:
            d = dict(data)
            mask = d.get(self.mask_key) if self.mask_key is not None else None
            for k in self.key_iterator(d):
                d[k] = self.norm(d[k], mask)
            return d

    return PercentileNormalize, PercentileNormalized


def __getattr__(name: str):  # lazy MONAI classes: medad.transforms.image.PercentileNormalize
    if name in ("PercentileNormalize", "PercentileNormalized"):
        pn, pnd = _monai_classes()
        globals().update(PercentileNormalize=pn, PercentileNormalized=pnd)
        return globals()[name]
    raise AttributeError(name)


def _tuple(v, n: int) -> tuple:
    if v is None:
        return None
    t = tuple(v) if isinstance(v, (list, tuple)) else (v,) * n
    if len(t) != n:
        raise ConfigError(f"expected {n} values (one per spatial dimension), got {t}")
    return t


def image_transforms(spatial_dims: int = 2, *, keys: Sequence[str] | None = None,
                     mask_keys: Sequence[str] = (), foreground_key: str | None = None,
                     orientation: str | None = None, pixdim: float | Sequence[float] | None = None,
                     crop_foreground: bool = False, crop_margin: int = 0,
                     normalize: bool = True, lower: float = 1.0, upper: float = 99.0,
                     b_min: float = 0.0, b_max: float = 1.0, clip: bool = False, nonzero: bool = False,
                     spatial_size: int | Sequence[int] | None = None, resize_mode: str = "pad_crop",
                     augment: bool = False, flip_axes: Sequence[int] | None = (0,),
                     rotate_deg: float = 10.0, scale: float = 0.1, noise_std: float = 0.02,
                     gamma: tuple[float, float] = (0.8, 1.25), prob: float = 0.5, seed: int | None = None):
    """Build a MONAI ``Compose`` for 2D or 3D images.

    Args:
        spatial_dims: 2 or 3.
        keys: image keys for a dictionary pipeline; ``None`` builds an array pipeline
            (input ``(C, *spatial)``; orientation/spacing need a MetaTensor with an affine).
        mask_keys: (dict only) masks/labels: nearest interpolation, no intensity change.
        foreground_key: (dict only) key of the foreground mask used to crop and to compute the
            percentiles (e.g. a brain mask); without it the image itself (> its minimum for
            cropping, ``nonzero`` for the percentiles).
        orientation: axis codes, e.g. ``"RAS"`` (3D) / ``"RA"`` (2D).
        pixdim: target spacing (mm) per axis.
        crop_foreground: crop to the foreground bounding box (+ ``crop_margin``).
        normalize, lower, upper, b_min, b_max, clip, nonzero: see :func:`percentile_normalize`.
        spatial_size: output size; ``resize_mode`` ``"pad_crop"`` (centre pad/crop, no
            interpolation) or ``"resize"`` (interpolate; aspect ratio not kept).
        augment: add random flips (``flip_axes``), affine (rotation +-``rotate_deg``, zoom
            +-``scale``), Gaussian noise and gamma contrast, each with probability ``prob``.
        seed: seeds the random transforms (same seed, same augmentations).
    """
    import monai.transforms as mt
    import torch

    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if resize_mode not in ("pad_crop", "resize"):
        raise ConfigError(f"resize_mode must be 'pad_crop' or 'resize', got {resize_mode!r}")
    dict_mode = keys is not None
    if not dict_mode and (mask_keys or foreground_key):
        raise ConfigError("mask_keys/foreground_key need a dictionary pipeline (keys=...)")
    img_keys = list(keys or [])
    masks = list(mask_keys) + ([foreground_key] if foreground_key and foreground_key not in mask_keys else [])
    all_keys = img_keys + masks
    modes = ["bilinear"] * len(img_keys) + ["nearest"] * len(masks)
    size = _tuple(spatial_size, spatial_dims)
    PercentileNormalize, PercentileNormalized = _monai_classes()
    ops: list[Any] = []

    if orientation:
        if len(orientation) != spatial_dims:
            raise ConfigError(f"orientation {orientation!r} needs {spatial_dims} axis codes")
        labels = (("L", "R"), ("P", "A"), ("I", "S"))  # RAS world, as nibabel and medad.io
        ops.append(mt.Orientationd(all_keys, axcodes=orientation, labels=labels) if dict_mode
                   else mt.Orientation(axcodes=orientation, labels=labels))
    if pixdim is not None:
        pd = _tuple(pixdim, spatial_dims)
        ops.append(mt.Spacingd(all_keys, pixdim=pd, mode=modes) if dict_mode
                   else mt.Spacing(pixdim=pd, mode="bilinear"))
    if crop_foreground:
        if dict_mode:
            source = foreground_key or img_keys[0]
            ops.append(mt.CropForegroundd(all_keys, source_key=source, margin=crop_margin,
                                          select_fn=(lambda m: m > 0.5) if foreground_key else _above_min,
                                          allow_smaller=True))
        else:
            ops.append(mt.CropForeground(select_fn=_above_min, margin=crop_margin, allow_smaller=True))
    if normalize:
        kw = dict(lower=lower, upper=upper, b_min=b_min, b_max=b_max, clip=clip, nonzero=nonzero)
        ops.append(PercentileNormalized(img_keys, mask_key=foreground_key, **kw) if dict_mode
                   else PercentileNormalize(**kw))
    if size is not None:
        if resize_mode == "pad_crop":
            ops.append(mt.ResizeWithPadOrCropd(all_keys, spatial_size=size) if dict_mode
                       else mt.ResizeWithPadOrCrop(spatial_size=size))
        else:
            interp = ["area" if m == "bilinear" else "nearest" for m in modes]
            ops.append(mt.Resized(all_keys, spatial_size=size, mode=interp) if dict_mode
                       else mt.Resize(spatial_size=size, mode="area"))
    if augment:
        ops.extend(_augmentations(spatial_dims, img_keys, masks, dict_mode, flip_axes, rotate_deg,
                                  scale, noise_std, gamma, prob))
    ops.append(mt.EnsureTyped(all_keys, dtype=torch.float32, track_meta=False) if dict_mode
               else mt.EnsureType(dtype=torch.float32, track_meta=False))
    comp = mt.Compose(ops)
    if seed is not None:
        comp.set_random_state(seed=seed)
    return comp


def _above_min(x):
    """Foreground for cropping without a mask: voxels above the image minimum (background)."""
    return x > x.min()


def _augmentations(spatial_dims, img_keys, masks, dict_mode, flip_axes, rotate_deg, scale,
                   noise_std, gamma, prob) -> list:
    import monai.transforms as mt

    rad = float(np.deg2rad(rotate_deg))
    rot = (rad,) if spatial_dims == 2 else (rad, rad, rad)
    scl = (scale,) * spatial_dims
    all_keys = img_keys + masks
    ops: list[Any] = []
    if dict_mode:
        for ax in flip_axes or ():
            ops.append(mt.RandFlipd(all_keys, prob=prob, spatial_axis=ax))
        ops.append(mt.RandAffined(all_keys, prob=prob, rotate_range=rot, scale_range=scl,
                                  mode=["bilinear"] * len(img_keys) + ["nearest"] * len(masks),
                                  padding_mode="zeros"))
        if noise_std > 0:
            ops.append(mt.RandGaussianNoised(img_keys, prob=prob, std=noise_std))
        ops.append(mt.RandAdjustContrastd(img_keys, prob=prob, gamma=gamma))
    else:
        for ax in flip_axes or ():
            ops.append(mt.RandFlip(prob=prob, spatial_axis=ax))
        ops.append(mt.RandAffine(prob=prob, rotate_range=rot, scale_range=scl, padding_mode="zeros"))
        if noise_std > 0:
            ops.append(mt.RandGaussianNoise(prob=prob, std=noise_std))
        ops.append(mt.RandAdjustContrast(prob=prob, gamma=gamma))
    return ops


def record_to_tensor(record) -> Any:
    """A VolumeRecord/ImageRecord as a channel-first MONAI MetaTensor (affine kept for volumes;
    RGB images become 3 channels)."""
    import torch
    from monai.data import MetaTensor

    d = np.asarray(record.data, dtype=np.float32)
    affine = getattr(record, "affine", None)
    if affine is None:  # 2D image: pixel grid, (H, W[, 3]) -> (C, H, W)
        arr = d[None] if d.ndim == 2 else np.moveaxis(d, -1, 0)
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(arr)))
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(d[None])),
                      affine=torch.as_tensor(affine, dtype=torch.float64))


def patch_grid(spatial: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> list[tuple[int, ...]]:
    """Corners of the patches (crops) of a grid over ``spatial``, patch size and stride per axis;
    the last patch of each axis ends at the border, so the patches cover every pixel (an axis
    shorter than its patch gets the single start 0)."""
    import itertools

    def starts(n: int, p: int, s: int) -> list[int]:
        last = max(n - p, 0)
        out = list(range(0, last + 1, s))
        return out if out[-1] == last else out + [last]

    return list(itertools.product(*(starts(int(n), int(p), int(s)) for n, p, s in zip(spatial, patch, stride))))
