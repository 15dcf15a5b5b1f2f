"""Self-supervised synthetic anomalies (CutPaste, Li et al. 2021; DRAEM-style corruptions,
Zavrtanik et al. 2021): one-class training turned into segmentation.

During training every batch of normal images is corrupted on the fly -- a rectangle cut from
the image and pasted elsewhere (with a colour jitter), irregular blobs filled with another
image's texture, with a shifted intensity/colour, or with a blurred or noisy copy -- and a small
MONAI U-Net (no pretrained weights) learns to segment the corrupted pixels. At test time its
sigmoid output is the anomaly map; the image score is the mean of the top ``topk`` share of it.
The corruptions are generic, so the network learns "what does not fit the normal texture here"
rather than any particular lesion.
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
        smooth_sigma: Gaussian smoothing of the map (working pixels) before scoring, so isolated
            pixels count less than coherent regions.
        epochs, batch_size, lr, seed, device: training settings.
    """

    input_kind = "image"
    conformance_params = {"image_size": 16, "channels": (4, 8), "epochs": 1, "batch_size": 16}

    def __init__(self, image_size: int | None = 64, channels: Sequence[int] = (16, 32, 64),
                 p_anomaly: float = 0.8, area: Sequence[float] = (0.01, 0.12), topk: float = 0.01,
                 smooth_sigma: float = 1.0,
                 epochs: int = 20, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto"):
        self._set_params(locals())

    def _build_net(self):
        net = _build_seg_net(int(self.in_shape_[0]), self.image_size, list(self.channels))
        return self._with_stats(net, net.prep)

    def _loss(self, net, batch):
        import torch
        import torch.nn.functional as F

        m = getattr(net, "module", net)
        xp = m.prep(batch[0])
        if float(torch.rand(1)) < 0.5:  # cheap augmentation: flips keep mucosa/anatomy plausible
            xp = xp.flip(-1)
        xa, target = synthesize_anomalies(xp, p_anomaly=float(self.p_anomaly), area=tuple(self.area))
        logits = net(xa)
        # plain pixel-wise BCE: a soft-Dice term was tried and rewards a uniformly raised
        # probability while the net cannot yet tell corrupted pixels apart, which stalled training
        return F.binary_cross_entropy_with_logits(logits, target)

    def _score_batch(self, net, xb):
        import torch

        from medad.nets.image_encoders import gaussian_blur, topk_mean, upsample_map

        prob = torch.sigmoid(net(net.prep(xb)))[:, 0]
        m = upsample_map(gaussian_blur(prob, float(self.smooth_sigma)), xb.shape[-2:])
        return topk_mean(m, float(self.topk)), m
