"""PatchCore-style patch-feature memory bank (Roth et al., 2022) over features learned here.

Nothing is downloaded: the feature extractor is a small conv encoder trained on the normal
images themselves. ``backbone`` chooses how:

* ``"cutpaste"`` (default) -- trained to tell normal images from ones with synthetic anomalies
  (the CutPaste paper's self-supervised representation; corruptions from
  :func:`medad.detectors.cutpaste.synthesize_anomalies`);
* ``"ae"`` -- trained as an autoencoder (reconstruct the image);
* ``"random"`` -- random initialisation, no training: a WEAK reference (random conv features are
  still local texture descriptors, but nothing about them was learned).

Patch features of two encoder stages are averaged over a 3x3 neighbourhood, brought to one grid
and concatenated. A random subset of at most ``max_patches`` training patch features is reduced
by greedy (k-centre) coreset selection to ``ceil(coreset_ratio * n)`` entries. A test patch's
score is its distance to the nearest bank entry; the map is that, smoothed and upsampled, and the
image score its maximum.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from medad.detectors.base import AnomalyResult, Detector
from medad.detectors.torch_base import TorchDetector
from medad.nets.image_encoders import PrepStatsMixin
from medad.errors import ConfigError, InputError
from medad.registry import register

BACKBONES = ("cutpaste", "ae", "random")


def greedy_coreset(features, n_select: int, *, proj_dim: int = 128, seed: int = 0):
    """Indices of ``n_select`` rows of ``features`` ``(n, d)`` chosen by greedy k-centre selection
    (each step adds the point farthest from those already chosen), on a random projection to
    ``proj_dim`` dimensions for speed."""
    import torch

    n, d = features.shape
    n_select = int(min(max(n_select, 1), n))
    g = torch.Generator().manual_seed(int(seed))
    f = features.float()
    if d > proj_dim:
        f = f @ (torch.randn(d, proj_dim, generator=g) / math.sqrt(proj_dim)).to(f.device)
    idx = torch.empty(n_select, dtype=torch.long)
    idx[0] = int(torch.randint(0, n, (1,), generator=g))
    min_d = torch.cdist(f, f[idx[0]][None]).squeeze(1)
    for i in range(1, n_select):
        nxt = int(torch.argmax(min_d))
        idx[i] = nxt
        min_d = torch.minimum(min_d, torch.cdist(f, f[nxt][None]).squeeze(1))
    return idx


def coreset_bank(pool, ratio: float, *, seed: int = 0, device=None):
    """The memory bank: ``ceil(ratio * n)`` rows of the patch features ``pool`` ``(n, d)`` chosen by
    :func:`greedy_coreset` (computed on ``device`` when given), or every row when that is all."""
    n_keep = max(1, math.ceil(float(ratio) * len(pool)))
    if n_keep >= len(pool):
        return pool.contiguous()
    idx = greedy_coreset(pool if device is None else pool.to(device), n_keep, seed=int(seed))
    return pool[idx].contiguous()


def knn_distance(q, bank, k: int = 1, chunk: int = 4096):
    """Mean distance of every row of ``q`` to its ``k`` nearest rows of ``bank``, in chunks of
    ``chunk`` query rows so the distance matrix stays small."""
    import torch

    k = min(int(k), len(bank))
    return torch.cat([torch.cdist(q[i:i + chunk], bank).topk(k, dim=1, largest=False).values.mean(1)
                      for i in range(0, len(q), chunk)])


def _build_patch_net(in_channels: int, image_size: int | None, channels: Sequence[int], backbone: str):
    import torch
    from torch import nn

    from medad.nets.image_encoders import ConvDecoder, ConvEncoder, ImagePrep

    class PatchNet(nn.Module):
        """Encoder + the head its self-supervised task needs (classifier or decoder)."""

        def __init__(self):
            super().__init__()
            self.prep = ImagePrep(in_channels, image_size, multiple=2 ** len(channels))
            self.encoder = ConvEncoder(in_channels, channels)
            if backbone == "ae":
                self.head = ConvDecoder(in_channels, channels)
            else:
                self.head = nn.Linear(int(channels[-1]), 2)

        def forward(self, xp):
            feats = self.encoder(xp)
            if backbone == "ae":
                return self.head(feats[-1])
            return self.head(feats[-1].mean((-2, -1)))

        def patch_features(self, xp, layers: Sequence[int]):
            """Locally averaged features of ``layers`` on the grid of the first of them."""
            import torch.nn.functional as F

            feats = self.encoder(xp)
            out = []
            size = feats[layers[0]].shape[-2:]
            for li in layers:
                f = F.avg_pool2d(feats[li], 3, stride=1, padding=1, count_include_pad=False)
                if f.shape[-2:] != size:
                    f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                out.append(f)
            return torch.cat(out, 1)

    return PatchNet()


@register("patchcore")
class PatchCoreDetector(PrepStatsMixin, TorchDetector):
    """Nearest-neighbour distance of patch features to a coreset memory bank of normal patches.

    Args:
        backbone: ``"cutpaste"``, ``"ae"`` or ``"random"`` (weak, untrained; see module doc).
        image_size: working side length (``None``: each input's own size).
        channels: encoder channels per stage.
        layers: encoder stages whose features make a patch descriptor.
        coreset_ratio: memory bank size as a share of the pooled training patches.
        max_patches: training patches pooled (random subset) before coreset selection.
        blur_sigma: smoothing of the patch-score map, in feature-grid cells.
        epochs, batch_size, lr, seed, device: training of the backbone (ignored for ``random``).
    """

    input_kind = "image"
    conformance_params = {"image_size": 16, "channels": (4, 8), "layers": (0, 1), "epochs": 1,
                          "batch_size": 16, "coreset_ratio": 0.1, "max_patches": 2000}

    def __init__(self, backbone: str = "cutpaste", image_size: int | None = 64, channels: Sequence[int] = (32, 64, 128),
                 layers: Sequence[int] = (1, 2), coreset_ratio: float = 0.1, max_patches: int = 20000,
                 blur_sigma: float = 1.0, epochs: int = 10, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                 device: str = "auto"):
        self._set_params(locals())

    def _prepare_fit(self, x: np.ndarray, y) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"patchcore backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if not 0 < float(self.coreset_ratio) <= 1:
            raise ConfigError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        super()._prepare_fit(x, y)

    def _build_net(self):
        net = _build_patch_net(int(self.in_shape_[0]), self.image_size, list(self.channels), self.backbone)
        return self._with_stats(net, net.prep)

    def _loss(self, net, batch):
        import torch
        import torch.nn.functional as F

        from medad.detectors.cutpaste import synthesize_anomalies

        m = getattr(net, "module", net)
        xp = m.prep(batch[0])
        if self.backbone == "ae":
            return F.mse_loss(net(xp), xp)
        # normal vs corrupted copies of the same images: the encoder has to notice local defects
        xa, _ = synthesize_anomalies(xp, p_anomaly=1.0)
        logits = net(torch.cat([xp, xa]))
        target = torch.cat([torch.zeros(len(xp)), torch.ones(len(xa))]).long().to(logits.device)
        return F.cross_entropy(logits, target)

    # ------------------------------------------------------------------ memory bank
    def _fit(self, x, val, y) -> None:
        import torch

        from medad.utils import get_device

        if self.backbone == "random":  # no training: only the BatchNorm statistics of the data
            from medad.utils import seed_everything

            seed_everything(int(self.seed))
            self.in_shape_ = [int(v) for v in x.shape[1:]]
            self._prepare_fit(x, y)
            self.net_ = self._build_net()
        else:
            super()._fit(x, val, y)
        device = get_device(self.device)
        net = self.net_.to(device)
        if self.backbone == "random":
            for mod in net.modules():
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                    mod.reset_running_stats()
                    mod.momentum = None  # cumulative average over the pass below
            net.train()
            with torch.no_grad():
                for i in range(0, len(x), int(self.batch_size)):
                    net.encoder(net.prep(torch.from_numpy(np.ascontiguousarray(x[i:i + int(self.batch_size)])).to(device)))
        net.eval()
        feats = []
        with torch.no_grad():
            for i in range(0, len(x), int(self.batch_size)):
                xb = torch.from_numpy(np.ascontiguousarray(x[i:i + int(self.batch_size)])).to(device)
                f = net.patch_features(net.prep(xb), list(self.layers))
                feats.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).cpu())
        pool = torch.cat(feats)
        g = torch.Generator().manual_seed(int(self.seed))
        if len(pool) > int(self.max_patches):
            pool = pool[torch.randperm(len(pool), generator=g)[: int(self.max_patches)]]
        self.n_pooled_ = int(len(pool))
        self.bank_ = coreset_bank(pool, self.coreset_ratio, seed=int(self.seed), device=device)
        self.net_.to("cpu")

    def _extra_state(self):
        return {"bank": self.bank_}

    def _load_extra_state(self, arrays) -> None:
        self.bank_ = arrays["bank"]

    def _score_batch(self, net, xb):
        from medad.nets.image_encoders import gaussian_blur, upsample_map

        f = net.patch_features(net.prep(xb), list(self.layers))
        b, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, d)
        dmin = knn_distance(q, self.bank_.to(q.device))
        m = gaussian_blur(dmin.reshape(b, h, w), float(self.blur_sigma))
        m = upsample_map(m, xb.shape[-2:])
        return m.reshape(b, -1).max(1).values, m


@register("patchstats")
class PatchStatsDetector(Detector):
    """Memory bank of hand-crafted multi-scale patch descriptors (no network, no downloads).

    Descriptors (see :mod:`medad.detectors.handcrafted`): Lab colour (or grey intensity) and
    gradient/Laplacian texture, each relative to its own frame's robust statistics and/or as it
    is, box mean and std at several window sizes. They are standardised with the training
    patches' statistics; a random subset of at most ``max_patches`` is reduced by greedy coreset
    selection to ``coreset_ratio`` of it. A patch's score is its mean distance to its ``k``
    nearest bank entries; the map is that, smoothed and upsampled; the image score is the mean of
    the highest ``top_fraction`` of the image's patch scores (1.0: the mean of all, which suits
    diffuse findings; small: close to the maximum, which suits small lesions).

    Args:
        image_size: working side length (``None``: the input size).
        relative: ``"frame"``, ``"absolute"`` or ``"both"`` (see module doc of handcrafted).
        texture: add gradient-magnitude and Laplacian channels.
        scales: box window sizes, working pixels.
        stride: grid step of the patch descriptors, working pixels.
        position_weight: > 0 appends the patch's position in the foreground's bounding box with
            this weight (standardised units), making the bank position-aware.
        fg_threshold: channel-mean intensity below which a pixel is background (frame statistics
            ignore it).
        masked: box statistics over valid pixels only (foreground without thin overlays, eroded
            by a pixel, and without specular highlights when ``highlights``); cells with less than
            half their smallest window valid stay out of the bank and score 0, as do background
            pixels of the map; the image score is taken over valid cells. Regions blacked out of
            training frames (e.g. a known lesion) then leave no trace in the bank.
        highlights: with ``masked``, leave specular highlights (bright, colourless glare) out of
            the statistics: the map there comes from the tissue around them.
        k: nearest neighbours averaged.
        coreset_ratio, max_patches: bank size.
        top_fraction: share of the highest patch scores averaged into the image score.
        blur_sigma: smoothing of the patch-score map, in grid cells.
        batch_size: images described per step (memory only).
        seed: random subset / coreset seed.
    """

    input_kind = "image"
    conformance_params = {"image_size": 16, "scales": (2, 4), "stride": 2, "max_patches": 500}

    def __init__(self, image_size: int | None = 64, relative: str = "both", texture: bool = True,
                 scales: Sequence[int] = (4, 8, 16), stride: int = 4, position_weight: float = 0.0,
                 fg_threshold: float = 0.05, masked: bool = False, highlights: bool = True, k: int = 1,
                 coreset_ratio: float = 1.0, max_patches: int = 20000,
                 top_fraction: float = 1.0, blur_sigma: float = 1.0, batch_size: int = 64, seed: int = 0):
        self._set_params(locals())

    def _describe(self, x: np.ndarray):
        """Images -> ``(N, h, w, D)`` raw descriptors (torch, float32) and which cells describe
        tissue ``(N, h, w)``: centre in the foreground (``masked``: instead, at least half the
        smallest window valid)."""
        import torch

        from medad.detectors.handcrafted import patch_descriptors, pixel_channels
        from medad.nets.image_encoders import resize

        if self.image_size:
            x = resize(torch.from_numpy(np.ascontiguousarray(x)), int(self.image_size)).numpy()
        f, fg = pixel_channels(x, str(self.relative), bool(self.texture), float(self.fg_threshold),
                               masked=bool(self.masked), highlights=bool(self.highlights))
        o, st = int(self.stride) // 2, int(self.stride)
        d, cover = patch_descriptors(f, fg, list(self.scales), st, position=float(self.position_weight) > 0,
                                     masked=bool(self.masked))
        cells = torch.from_numpy(fg[:, o::st, o::st])
        if self.masked:  # a glare spot at the centre is fine: its window's tissue describes it
            cells = cover >= 0.5
        return d, cells

    def _standardise(self, d):
        z = (d - self.mean_.to(d.dtype)) / self.std_.to(d.dtype)
        if float(self.position_weight) > 0:  # position columns: raw coordinates times the weight
            z[..., -2:] = d[..., -2:] * float(self.position_weight)
        return z

    def _fit(self, x, val, y) -> None:
        import torch

        from medad.detectors.handcrafted import RELATIVE_MODES

        if x.ndim != 4:
            raise InputError(f"patchstats expects 2D images (N, C, H, W), got shape {x.shape}")
        if self.relative not in RELATIVE_MODES:
            raise ConfigError(f"patchstats relative must be one of {RELATIVE_MODES}, got {self.relative!r}")
        if not 0 < float(self.coreset_ratio) <= 1 or not 0 < float(self.top_fraction) <= 1:
            raise ConfigError("patchstats coreset_ratio and top_fraction must be in (0, 1]")
        self.in_channels_ = int(x.shape[1])
        g = torch.Generator().manual_seed(int(self.seed))
        per_image = None
        feats = []
        for i in range(0, len(x), int(self.batch_size)):
            d, fgc = self._describe(x[i:i + int(self.batch_size)])
            per_image = d.shape[1] * d.shape[2]
            # background cells (black borders, or regions blacked out to exclude them from
            # training, e.g. a known lesion) stay out of the bank
            flat = d[fgc]
            # subsample while describing so memory stays bounded on large training sets
            keep = max(1, int(math.ceil(int(self.max_patches) * len(d) / len(x))))
            if len(flat) > keep:
                flat = flat[torch.randperm(len(flat), generator=g)[:keep]]
            feats.append(flat)
        pool = torch.cat(feats)[: int(self.max_patches)]
        self.mean_ = pool.mean(0)
        self.std_ = pool.std(0).clamp_min(1e-6)
        z = self._standardise(pool)
        self.n_pooled_ = int(len(z))
        self.bank_ = coreset_bank(z, self.coreset_ratio, seed=int(self.seed))
        self.patches_per_image_ = int(per_image)

    def _score(self, x: np.ndarray) -> AnomalyResult:
        import torch

        from medad.nets.image_encoders import gaussian_blur, topk_mean, upsample_map

        if x.ndim != 4 or x.shape[1] != self.in_channels_:
            raise InputError(f"patchstats was fitted on {self.in_channels_}-channel images (N, C, H, W), got shape {x.shape}")
        from medad.detectors.handcrafted import foreground

        scores, maps = [], []
        for i in range(0, len(x), int(self.batch_size)):
            xb = x[i:i + int(self.batch_size)]
            d, cells = self._describe(xb)
            d = self._standardise(d)
            b, h, w, D = d.shape
            q = d.reshape(-1, D)
            m = knn_distance(q, self.bank_, int(self.k)).reshape(b, h, w)
            if self.masked:  # background is not tissue: lowest score, and not in the image score
                m = m * cells
                scores.append(torch.stack([topk_mean(mi[ci][None] if ci.any() else mi[None], float(self.top_fraction))[0]
                                           for mi, ci in zip(m, cells)]))
            else:
                scores.append(topk_mean(m, float(self.top_fraction)))
            mp = upsample_map(gaussian_blur(m, float(self.blur_sigma)), x.shape[-2:])
            if self.masked:
                mp = mp * torch.from_numpy(foreground(xb, float(self.fg_threshold)))
            maps.append(mp)
        return AnomalyResult(score=torch.cat(scores).double().numpy(), map=torch.cat(maps).numpy())

    def _get_state(self):
        return ({"mean": self.mean_, "std": self.std_, "bank": self.bank_},
                {"in_channels": self.in_channels_, "n_pooled": self.n_pooled_,
                 "patches_per_image": self.patches_per_image_})

    def _set_state(self, arrays, extra) -> None:
        self.mean_, self.std_, self.bank_ = arrays["mean"], arrays["std"], arrays["bank"]
        self.in_channels_ = int(extra["in_channels"])
        self.n_pooled_ = int(extra["n_pooled"])
        self.patches_per_image_ = int(extra["patches_per_image"])
