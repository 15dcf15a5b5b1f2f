"""Deep SVDD (Ruff et al., 2018): one-class training that pulls the features of normal images
towards a fixed centre; the score is the squared distance to it.

The rules that keep it from collapsing onto the trivial solution phi(x) = c are enforced by
construction: the network has no bias term anywhere, its BatchNorm layers have no affine
parameters, the activation is unbounded (leaky ReLU), and the centre ``c`` is the mean of the
*initial* network's outputs on the training data, stored as a buffer (never trained).
Optionally the encoder is first pretrained as a (bias-free) autoencoder, as in the paper.

The map is the input-gradient saliency of the score (``|d score / d x|`` summed over channels and
smoothed) -- one backward pass per batch. It shows which pixels the distance is most sensitive
to; it is coarser than a segmentation map.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medad.detectors.torch_base import TorchDetector
from medad.nets.image_encoders import PrepStatsMixin
from medad.registry import register


def _build_svdd_net(in_channels: int, image_size: int, channels: Sequence[int], rep_dim: int):
    import torch
    from torch import nn

    from medad.nets.image_encoders import ConvEncoder, ImagePrep

    class SVDDNet(nn.Module):
        """ImagePrep -> bias-free conv encoder -> bias-free linear map to ``rep_dim``."""

        def __init__(self):
            super().__init__()
            self.prep = ImagePrep(in_channels, image_size)
            self.encoder = ConvEncoder(in_channels, channels, bias_free=True)
            side = image_size // 2 ** len(channels)
            self.fc = nn.Linear(int(channels[-1]) * side * side, rep_dim, bias=False)
            self.register_buffer("c", torch.zeros(rep_dim))

        def forward(self, x):
            return self.fc(self.encoder(self.prep(x))[-1].flatten(1))

    return SVDDNet()


@register("svdd")
class DeepSVDDDetector(PrepStatsMixin, TorchDetector):
    """One-class Deep SVDD on 2D images (grey or RGB).

    Args:
        image_size: working side length (divisible by ``2 ** len(channels)``).
        channels: channels of the bias-free conv stages.
        rep_dim: size of the feature space the centre lives in.
        pretrain_epochs: epochs of bias-free autoencoder pretraining of the encoder (0: none).
        map_sigma: smoothing of the gradient map, as a fraction of the image side.
        weight_decay: L2 on the weights (the paper's lambda).
        epochs, batch_size, lr, seed, device: training settings.
    """

    input_kind = "image"
    conformance_params = {"image_size": 16, "channels": (4, 8), "rep_dim": 8, "epochs": 2,
                          "pretrain_epochs": 1, "batch_size": 16}

    def __init__(self, image_size: int = 64, channels: Sequence[int] = (16, 32, 64), rep_dim: int = 32,
                 pretrain_epochs: int = 0, map_sigma: float = 0.03, weight_decay: float = 1e-6,
                 epochs: int = 20, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto"):
        self._set_params(locals())

    @property
    def train_overrides(self):  # type: ignore[override]
        return {"weight_decay": float(self.weight_decay)}

    # ------------------------------------------------------------------ fitting
    def _prepare_fit(self, x: np.ndarray, y) -> None:
        self._fit_x = x
        super()._prepare_fit(x, y)

    def _fit(self, x, val, y) -> None:
        try:
            super()._fit(x, val, y)
        finally:
            self._fit_x = None

    def _build_net(self):
        net = _build_svdd_net(int(self.in_shape_[0]), int(self.image_size), list(self.channels), int(self.rep_dim))
        if getattr(self, "_fit_x", None) is not None:  # fitting (not loading): initialise
            self._with_stats(net, net.prep)
            if int(self.pretrain_epochs) > 0:
                self._pretrain(net, self._fit_x)
            net.c.copy_(self._initial_centre(net, self._fit_x))
        return net

    def _pretrain(self, net, x: np.ndarray) -> None:
        """Train ``net.encoder`` with a bias-free mirror decoder to reconstruct the images."""
        import torch
        import torch.nn.functional as F
        from torch import nn
        from torch.utils.data import TensorDataset

        from medad.nets.image_encoders import ConvDecoder
        from medad.training import train

        class _AE(nn.Module):
            def __init__(self, prep, encoder, decoder):
                super().__init__()
                self.prep, self.encoder, self.decoder = prep, encoder, decoder

            def forward(self, x):
                xp = self.prep(x)
                return self.decoder(self.encoder(xp)[-1]), xp

        ae = _AE(net.prep, net.encoder, ConvDecoder(int(self.in_shape_[0]), list(self.channels), bias_free=True))

        def loss(model, batch):
            return F.mse_loss(*model(batch[0]))

        cfg = self._train_config()
        cfg.epochs = int(self.pretrain_epochs)
        cfg.checkpoint_dir = None
        train(ae, TensorDataset(torch.from_numpy(np.ascontiguousarray(x))), loss, cfg)
        net.to("cpu")

    def _initial_centre(self, net, x: np.ndarray):
        """Mean output of the (untrained or pretrained) network on the training data; coordinates
        too close to 0 are pushed away from it, as in Ruff et al.'s code, so no unit can reach the
        centre trivially by dying."""
        import torch

        net.train()  # batch statistics: the running ones are not meaningful yet
        outs = []
        with torch.no_grad():
            for i in range(0, len(x), max(2, int(self.batch_size))):
                xb = torch.from_numpy(np.ascontiguousarray(x[i:i + max(2, int(self.batch_size))]))
                if len(xb) < 2:  # BatchNorm needs 2 items in train mode
                    net.eval()
                outs.append(net(xb))
        c = torch.cat(outs).mean(0)
        eps = 0.1
        c[(c.abs() < eps) & (c < 0)] = -eps
        c[(c.abs() < eps) & (c >= 0)] = eps
        return c

    def _loss(self, net, batch):
        m = getattr(net, "module", net)
        return ((net(batch[0]) - m.c) ** 2).sum(1).mean()

    # ------------------------------------------------------------------ scoring
    def _score_batch(self, net, xb):
        import torch

        from medad.nets.image_encoders import gaussian_blur

        with torch.enable_grad():
            xg = xb.clone().requires_grad_(True)
            s = ((net(xg) - net.c) ** 2).sum(1)
            (grad,) = torch.autograd.grad(s.sum(), xg)
        sal = grad.abs().sum(1)
        sal = gaussian_blur(sal, float(self.map_sigma) * max(sal.shape[-2:]))
        return s.detach(), sal
