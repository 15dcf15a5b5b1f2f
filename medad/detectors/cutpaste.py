"""Self-supervised synthetic anomalies (CutPaste, Li et al. 2021; DRAEM-style corruptions,
Zavrtanik et al. 2021): one-class training turned into segmentation.

During training every batch of normal images is corrupted on the fly -- a rectangle cut from
the image and pasted elsewhere (with a colour jitter), irregular blobs filled with another
image's texture, with a shifted intensity/colour, or with a blurred or noisy copy -- and a small
MONAI U-Net (no pretrained weights) learns to segment the corrupted pixels. At test time its
sigmoid output is the anomaly map; the image score is the mean of the top ``topk`` share of it.
The corruptions are generic, so the network learns "what does not fit the normal texture here"
rather than any particular lesion.

``corruption="polyp"`` swaps them for raised, polyp-like bumps on the tissue of raw RGB frames
(:func:`synthesize_polyps`): a smooth, slightly wobbly ellipse whose content is magnified
outwards from its centre (a dome nearer the camera), recoloured, shaded (brighter top, darker
contour, a shadow at its base), sometimes with glare spots, smoothed or filled with another
frame's mucosa.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from medad.detectors.torch_base import TorchDetector
from medad.nets.image_encoders import PrepStatsMixin
from medad.registry import register


def _rect_mask(h: int, w: int, area: tuple[float, float], gen, device):
    import torch

    a = float(torch.empty(1).uniform_(*area, generator=gen)) * h * w
    ratio = float(torch.exp(torch.empty(1).uniform_(np.log(0.3), np.log(3.3), generator=gen)))
    rh = int(np.clip(round((a * ratio) ** 0.5), 1, h - 1))
    rw = int(np.clip(round((a / ratio) ** 0.5), 1, w - 1))
    y0 = int(torch.randint(0, h - rh + 1, (1,), generator=gen))
    x0 = int(torch.randint(0, w - rw + 1, (1,), generator=gen))
    return y0, x0, rh, rw


def _blob_mask(h: int, w: int, area: tuple[float, float], gen, device):
    """An irregular blob: smooth low-resolution noise, upsampled and thresholded to a random area
    (a cheap stand-in for DRAEM's Perlin masks)."""
    import torch
    import torch.nn.functional as F

    res = int(torch.randint(2, 7, (1,), generator=gen))
    noise = torch.randn(1, 1, res, res, generator=gen).to(device)
    noise = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[0, 0]
    frac = float(torch.empty(1).uniform_(*area, generator=gen))
    thr = torch.quantile(noise.flatten(), 1.0 - frac)
    return (noise > thr).float()


def synthesize_anomalies(x, *, p_anomaly: float = 0.8, area: tuple[float, float] = (0.01, 0.12),
                         generator=None):
    """Corrupt a batch of (standardised) images ``(B, C, H, W)``.

    Returns ``(x_aug, mask)`` with ``mask`` ``(B, 1, H, W)`` in {0, 1} marking corrupted pixels;
    a share ``1 - p_anomaly`` of the images is left untouched (empty mask) so the network also
    learns to say "nothing here". Randomness comes from ``generator`` (or torch's global one).
    """
    import torch
    import torch.nn.functional as F

    b, c, h, w = x.shape
    gen = generator
    out = x.clone()
    mask = torch.zeros(b, 1, h, w, device=x.device)
    for i in range(b):
        if float(torch.rand(1, generator=gen)) >= p_anomaly:
            continue
        kind = int(torch.randint(0, 5, (1,), generator=gen))
        img = x[i]
        if kind == 0:  # CutPaste: a rectangle of this image moved elsewhere, colour-jittered
            y0, x0, rh, rw = _rect_mask(h, w, area, gen, x.device)
            sy = int(torch.randint(0, h - rh + 1, (1,), generator=gen))
            sx = int(torch.randint(0, w - rw + 1, (1,), generator=gen))
            patch = img[:, sy:sy + rh, sx:sx + rw]
            jitter = 1.0 + 0.4 * (torch.rand(c, 1, 1, generator=gen).to(x.device) - 0.5)
            if float(torch.rand(1, generator=gen)) < 0.5:
                patch = patch.flip(-1)
            out[i, :, y0:y0 + rh, x0:x0 + rw] = patch * jitter + 0.3 * (torch.rand(c, 1, 1, generator=gen).to(x.device) - 0.5)
            mask[i, 0, y0:y0 + rh, x0:x0 + rw] = 1.0
            continue
        m = _blob_mask(h, w, area, gen, x.device)
        if kind == 1:  # texture of another image of the batch (shifted)
            j = int(torch.randint(0, b, (1,), generator=gen))
            dy, dx = (int(v) for v in torch.randint(0, max(h, w), (2,), generator=gen))
            fill = torch.roll(x[j], shifts=(dy, dx), dims=(1, 2))
            if j == i:
                fill = fill.flip(-2)
        elif kind == 2:  # intensity / colour shift (in units of the channel std)
            # from subtle to far outside the normal range, brighter or darker, mostly grey-ish
            scale = 0.5 + torch.rand(c, 1, 1, generator=gen).to(x.device)
            sign = 1.0 if float(torch.rand(1, generator=gen)) < 0.5 else -1.0
            amp = 0.5 + 3.5 * float(torch.rand(1, generator=gen))
            tint = 1.0 + 0.3 * torch.randn(c, 1, 1, generator=gen).to(x.device)
            fill = img * scale + sign * amp * tint
        elif kind == 3:  # blurred copy: lost texture
            k = 2 * int(torch.randint(1, 4, (1,), generator=gen)) + 1
            fill = F.avg_pool2d(img[None], k, stride=1, padding=k // 2, count_include_pad=False)[0]
        else:  # noisy copy: extra texture
            fill = img + torch.randn(img.shape, generator=gen).to(x.device) * (0.3 + float(torch.rand(1, generator=gen)))
        beta = 0.5 + 0.5 * float(torch.rand(1, generator=gen))  # partial transparency, as in DRAEM
        out[i] = img * (1 - beta * m) + fill * (beta * m)
        mask[i, 0] = m
    return out, mask


def _uniform(gen, lo: float, hi: float) -> float:
    import torch

    return lo + (hi - lo) * float(torch.rand(1, generator=gen))


def _tissue_colour_match(src, ref, region, level: float):
    """``src`` (C, H, W) shifted so its mean colour over ``region`` (its own tissue there) equals
    ``ref``'s over ``region``; ``None`` when either has (almost) no tissue there."""
    t_src = (src.mean(0) > level).float() * region
    if region.sum() <= 4 or t_src.sum() <= 4:
        return None
    shift = (ref * region).sum((1, 2)) / region.sum() - (src * t_src).sum((1, 2)) / t_src.sum()
    return (src + shift.view(-1, 1, 1)).clamp(0, 1)


def synthesize_polyps(x, *, p_anomaly: float = 0.8, area: tuple[float, float] = (0.02, 0.3),
                      tissue_level: float = 0.05, texture_p: float = 0.3, generator=None):
    """Raised, polyp-like bumps on raw frames ``(B, C, H, W)`` in [0, 1] (RGB endoscopy).

    A share ``p_anomaly`` of the frames gets one (sometimes two) bumps centred on a tissue pixel
    (channel mean above ``tissue_level``; darker pixels -- the endoscope border, blacked-out
    regions -- are never changed): an ellipse of ``area`` (log-uniform share of the frame) with a
    wobbly outline and a soft edge, inside which the content is pulled outwards from the centre
    (radial magnification: a dome nearer the camera), recoloured, shaded (brighter top, darker
    contour), sometimes smoothed, given glare spots or filled with another frame's mucosa
    (``texture_p``; its colour matched to the local one), with a shadow on one side of its base.
    Returns ``(x_aug, mask)``, ``mask`` ``(B, 1, H, W)`` in {0, 1}: the bump's tissue pixels.
    """
    import torch
    import torch.nn.functional as F

    gen, (b, c, h, w), dev = generator, x.shape, x.device
    yy, xx = torch.meshgrid(torch.arange(h, device=dev, dtype=x.dtype), torch.arange(w, device=dev, dtype=x.dtype),
                            indexing="ij")
    tissue = (x.mean(1) > tissue_level).float()
    out = x.clone()
    mask = torch.zeros(b, 1, h, w, device=dev)
    u = (lambda lo, hi: _uniform(gen, lo, hi))  # noqa: E731
    for i in range(b):
        idx = torch.nonzero(tissue[i].flatten()).flatten()
        if float(torch.rand(1, generator=gen)) >= p_anomaly or len(idx) < 50:
            continue
        for _ in range(1 if u(0, 1) < 0.8 else 2):
            k = int(idx[int(torch.randint(0, len(idx), (1,), generator=gen))])
            cy, cx = float(k // w), float(k % w)
            a = math.exp(u(math.log(area[0]), math.log(area[1]))) * h * w
            ratio, th = math.exp(u(math.log(0.5), math.log(2.0))), u(0, math.pi)
            ra, rb = math.sqrt(a / math.pi * ratio), math.sqrt(a / math.pi / ratio)
            dx, dy = xx - cx, yy - cy
            eu = (dx * math.cos(th) + dy * math.sin(th)) / ra
            ev = (-dx * math.sin(th) + dy * math.cos(th)) / rb
            phi = torch.atan2(ev, eu)
            outline = torch.ones_like(phi)
            for order in (2, 3, 4):  # a wobbly outline, not a perfect ellipse
                outline = outline + u(0, 0.08) * torch.cos(order * phi + u(0, 2 * math.pi))
            rn = (torch.sqrt(eu * eu + ev * ev) + 1e-6) / outline  # 1 on the outline
            soft = torch.sigmoid((1 - rn) * math.sqrt(ra * rb) / u(0.5, 2.5)) * tissue[i]
            src = x[i]
            if u(0, 1) < texture_p:  # another frame's mucosa, shifted, at the local colour
                j = int(torch.randint(0, b, (1,), generator=gen))
                other = torch.roll(x[j], shifts=(int(torch.randint(0, h, (1,), generator=gen)),
                                                 int(torch.randint(0, w, (1,), generator=gen))), dims=(1, 2))
                matched = _tissue_colour_match(other, x[i], (soft > 0.5).float(), tissue_level)
                if matched is not None:
                    src = torch.where(other.mean(0, keepdim=True) > tissue_level, matched, x[i])
            # radial magnification: a point at normalised radius r shows what lay at r ** g (g > 1)
            scale = torch.where(rn < 1, rn.clamp(min=1e-3) ** (u(1.2, 2.5) - 1), torch.ones_like(rn))
            grid = torch.stack([(cx + dx * scale) / (w - 1) * 2 - 1, (cy + dy * scale) / (h - 1) * 2 - 1], -1)
            fill = F.grid_sample(src[None], grid[None], mode="bilinear", padding_mode="border", align_corners=True)[0]
            if u(0, 1) < 0.3:  # a smoother surface (fewer visible vessels)
                kk = 2 * int(torch.randint(1, 3, (1,), generator=gen)) + 1
                fill = F.avg_pool2d(fill[None], kk, 1, kk // 2, count_include_pad=False)[0]
            fill = fill * (1 + u(0.05, 0.2) * torch.randn(c, 1, 1, generator=gen).to(dev)) + u(-0.08, 0.12)
            height = torch.sqrt((1 - rn.clamp(max=1) ** 2).clamp(min=0))  # a dome
            amp, tilt, light = u(0.15, 0.6), u(0, 0.6), u(0, 2 * math.pi)  # light near the camera, tilted
            fill = fill * (1 + amp * (height - 0.5) + tilt * amp * (1 - height) * torch.cos(phi - light))
            if u(0, 1) < 0.6:  # glare spots where the dome faces the camera
                top = torch.nonzero(((height > 0.5) & (rn < 1)).flatten()).flatten()
                for _s in range(int(torch.randint(1, 5, (1,), generator=gen)) if len(top) else 0):
                    q = int(top[int(torch.randint(0, len(top), (1,), generator=gen))])
                    sr = u(0.5, 2.0)
                    spot = torch.exp(-((yy - q // w) ** 2 * u(0.5, 2) + (xx - q % w) ** 2) / (2 * sr * sr))
                    fill = fill * (1 - spot) + spot * u(0.85, 1.0)
            fill = fill * (1 - u(0.1, 0.4) * torch.exp(-((rn - 0.95) / 0.08) ** 2))  # darker contour
            out[i] = out[i] * (1 - soft) + fill.clamp(0, 1) * soft
            if u(0, 1) < 0.8:  # a shadow on one side of the base, outside the bump
                ring = torch.exp(-((rn - 1.05) / 0.12) ** 2) * (rn > 1).float()
                side = 0.5 + 0.5 * torch.cos(phi - u(0, 2 * math.pi))
                out[i] = out[i] * (1 - u(0.1, 0.4) * ring * side * tissue[i])
            mask[i, 0] = torch.maximum(mask[i, 0], ((soft > 0.5) & (rn < 1)).float())
    return out, mask


def _build_seg_net(in_channels: int, image_size: int | None, channels: Sequence[int]):
    import torch
    from torch import nn
    from monai.networks.nets import UNet

    from medad.nets.image_encoders import ImagePrep

    class SegNet(nn.Module):
        """ImagePrep -> MONAI U-Net -> one logit per pixel (at the working size)."""

        def __init__(self):
            super().__init__()
            self.prep = ImagePrep(in_channels, image_size, multiple=2 ** (len(channels) - 1))
            self.unet = UNet(spatial_dims=2, in_channels=in_channels, out_channels=1, channels=tuple(channels),
                             strides=(2,) * (len(channels) - 1), num_res_units=1)

        def forward(self, xp):  # xp: already prepared
            return self.unet(xp)

    net = SegNet()
    # prior initialisation (as in RetinaNet): start at p = 0.05 for every pixel instead of 0.5, so
    # the first hundreds of steps are not spent learning that most pixels are normal
    last = [m for m in net.unet.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1]
    if last.bias is not None:
        with torch.no_grad():
            last.bias.fill_(-math.log((1 - 0.05) / 0.05))
    return net


@register("cutpaste")
class CutPasteDetector(PrepStatsMixin, TorchDetector):
    """Segmenter of synthetic anomalies, trained on normal 2D images only.

    Args:
        image_size: working side length (``None``: each input's own size, rounded up to a
            multiple the U-Net can halve -- use this to train on patches and score whole frames).
        channels: U-Net channels per level.
        p_anomaly: share of training images that get a synthetic anomaly.
        area: range of the corrupted area as a share of the image.
        topk: image score = mean of the top ``topk`` share of the map.
        corruption: ``"generic"`` (CutPaste / DRAEM-style corruptions of the standardised image)
            or ``"polyp"`` (:func:`synthesize_polyps` on the raw RGB frames in [0, 1]).
        tissue_level: pixels whose channel mean is at most this are not tissue: polyp-like
            bumps avoid them.
        rotate: also turn training images by multiples of 90 degrees (square inputs).
        mask_background: zero the map off tissue (see ``tissue_level``): nothing is learned there.
        smooth_sigma: Gaussian smoothing of the map (working pixels) before scoring, so isolated
            pixels count less than coherent regions.
        tta: average the net's output over the input and its left-right mirror image and, when
            trained with ``rotate`` on square inputs, their 90-degree turns (8 views; 2 otherwise):
            a steadier map at 2-8 x the inference cost.
        epochs, batch_size, lr, seed, device: training settings.
    """

    input_kind = "image"
    conformance_params = {"image_size": 16, "channels": (4, 8), "epochs": 1, "batch_size": 16}

    def __init__(self, image_size: int | None = 64, channels: Sequence[int] = (16, 32, 64),
                 p_anomaly: float = 0.8, area: Sequence[float] = (0.01, 0.12), topk: float = 0.01,
                 smooth_sigma: float = 1.0, corruption: str = "generic",
                 tissue_level: float = 0.05, rotate: bool = False, mask_background: bool = False, tta: bool = False,
                 epochs: int = 20, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto"):
        self._set_params(locals())

    def _build_net(self):
        if self.corruption not in ("generic", "polyp"):
            from medad.errors import ConfigError

            raise ConfigError(f"cutpaste: corruption must be 'generic' or 'polyp', not {self.corruption!r}")
        net = _build_seg_net(int(self.in_shape_[0]), self.image_size, list(self.channels))
        return self._with_stats(net, net.prep)

    def _loss(self, net, batch):
        import torch
        import torch.nn.functional as F

        from medad.nets.image_encoders import resize

        m = getattr(net, "module", net)
        x = batch[0]
        if float(torch.rand(1)) < 0.5:  # cheap augmentation: flips keep mucosa/anatomy plausible
            x = x.flip(-1)
        if self.rotate and x.shape[-1] == x.shape[-2]:
            x = torch.rot90(x, int(torch.randint(0, 4, (1,))), (-2, -1))
        if self.corruption == "polyp":  # on the raw frame at the working size: tissue, [0, 1] colours
            mult = 2 ** (len(self.channels) - 1)
            x = resize(x, self.image_size or [-(-int(s) // mult) * mult for s in x.shape[-2:]])
            xa, target = synthesize_polyps(x, p_anomaly=float(self.p_anomaly), area=tuple(self.area),
                                           tissue_level=float(self.tissue_level))
            xa = m.prep(xa)
        else:
            xa, target = synthesize_anomalies(m.prep(x), p_anomaly=float(self.p_anomaly), area=tuple(self.area))
        logits = net(xa)
        # plain pixel-wise BCE: a soft-Dice term was tried and rewards a uniformly raised
        # probability while the net cannot yet tell corrupted pixels apart, which stalled training
        return F.binary_cross_entropy_with_logits(logits, target)

    def _score_batch(self, net, xb):
        import torch

        from medad.nets.image_encoders import gaussian_blur, topk_mean, upsample_map

        turns = 4 if self.rotate and xb.shape[-1] == xb.shape[-2] else 1  # the turns seen in training
        views = [(k, f) for k in range(turns) for f in ((), (-1,))] if self.tta else [(0, ())]
        prob = 0
        for k, flip in views:  # each view's output turned back onto the input's pixels
            v = torch.rot90(xb.flip(flip) if flip else xb, k, (-2, -1))
            out = torch.rot90(torch.sigmoid(net(net.prep(v)))[:, 0], -k, (-2, -1))
            prob = prob + (out.flip(flip) if flip else out) / len(views)
        m = upsample_map(gaussian_blur(prob, float(self.smooth_sigma)), xb.shape[-2:])
        if self.mask_background:
            m = m * (xb.mean(1) > float(self.tissue_level)).to(m.dtype)
        return topk_mean(m, float(self.topk)), m
