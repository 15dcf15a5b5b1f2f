"""Supervised 2D CNN classifiers (MONAI networks, no pretrained weights), binary or multi-class.

``fit(x, y=labels)`` with integer labels where ``normal_class`` (default 0) is the normal class
and every other label an abnormal class (e.g. Kvasir-style class sets, or tumour types). The
cross-entropy is class-weighted (inverse frequency) by default, for imbalanced sets. The anomaly
score is the abnormal probability ``1 - p(normal_class)``; :meth:`predict_proba` gives every
class. Scores and class probabilities come from one forward pass: ``score``/``predict`` return a
:class:`ClassifierResult`, whose ``proba`` holds the class probabilities of the items scored (a
caller that needs both runs the network once). The classifier makes no map of its own:
explanation maps (Grad-CAM, SHAP, LIME) come from ``medad.explain``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from medad.detectors.base import AnomalyResult
from medad.detectors.torch_base import TorchDetector
from medad.nets.image_encoders import PrepStatsMixin
from medad.errors import ConfigError, InputError
from medad.registry import register

ARCHS = ("densenet_small", "densenet121", "resnet18", "efficientnet-b0")


def _build_classifier(arch: str, in_channels: int, n_classes: int, image_size: int | None):
    from torch import nn
    from monai.networks import nets as mn

    from medad.nets.image_encoders import ImagePrep

    if arch == "densenet_small":  # a DenseNet small enough for a CPU: 3 short dense blocks
        body = mn.DenseNet(spatial_dims=2, in_channels=in_channels, out_channels=n_classes, init_features=16,
                           growth_rate=8, block_config=(2, 3, 4), bn_size=2)
    elif arch == "densenet121":
        body = mn.DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=n_classes, pretrained=False)
    elif arch == "resnet18":
        body = mn.resnet18(spatial_dims=2, n_input_channels=in_channels, num_classes=n_classes, pretrained=False)
    elif arch == "efficientnet-b0":
        body = mn.EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_channels,
                                 num_classes=n_classes)
    else:
        raise ConfigError(f"unknown classifier arch {arch!r}; choose one of {ARCHS}")
    return nn.Sequential(ImagePrep(in_channels, image_size), body)


@dataclass
class ClassifierResult(AnomalyResult):
    """An :class:`~medad.detectors.base.AnomalyResult` with the class probabilities
    ``proba`` ``(N, n_classes)`` of the items scored, from the forward pass that made ``score``
    (``score == 1 - proba[:, normal_class]``). Indexing selects the same items of ``proba``."""

    proba: np.ndarray | None = None

    def __getitem__(self, idx) -> "ClassifierResult":
        return replace(super().__getitem__(idx), proba=None if self.proba is None else self.proba[idx])


@register("classifier")
class CNNClassifierDetector(PrepStatsMixin, TorchDetector):
    """Supervised image classifier; anomaly score = 1 - p(normal class).

    Args:
        arch: ``"densenet_small"`` (default, CPU-sized), ``"densenet121"``, ``"resnet18"`` or
            ``"efficientnet-b0"`` -- all MONAI, randomly initialised.
        image_size: working side length.
        normal_class: label of the normal class.
        class_weight: ``"balanced"`` (inverse class frequency in the loss) or ``None``.
        augment: random flips during training.
        epochs, batch_size, lr, seed, device: training settings.
    """

    input_kind = "image"
    supervised = True
    conformance_params = {"image_size": 16, "epochs": 1, "batch_size": 16}

    def __init__(self, arch: str = "densenet_small", image_size: int = 64, normal_class: int = 0,
                 class_weight: str | None = "balanced", augment: bool = True, epochs: int = 15,
                 batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto"):
        self._set_params(locals())

    def _prepare_fit(self, x: np.ndarray, y) -> None:
        import torch

        y = np.asarray(y)
        if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
            raise InputError("classifier labels must be integers (normal_class = normal, others abnormal)")
        if y.min() < 0:
            raise InputError(f"classifier labels must be >= 0, got {int(y.min())}")
        if not (y == int(self.normal_class)).any():
            raise InputError(f"no training item has the normal class label {self.normal_class}")
        counts = np.bincount(y.astype(int), minlength=self.n_classes_).astype(np.float64)
        if self.class_weight == "balanced":
            w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / (counts > 0).sum(), 0.0)
        elif self.class_weight is None:
            w = np.ones_like(counts)
        else:
            raise ConfigError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        self._weights = torch.as_tensor(w, dtype=torch.float32)
        super()._prepare_fit(x, y)

    def _build_net(self):
        net = _build_classifier(self.arch, int(self.in_shape_[0]), int(self.n_classes_), self.image_size)
        return self._with_stats(net, net[0])

    def _loss(self, net, batch):
        import torch
        import torch.nn.functional as F

        xb, yb = batch
        if self.augment:
            if float(torch.rand(1)) < 0.5:
                xb = xb.flip(-1)
            if float(torch.rand(1)) < 0.5:
                xb = xb.flip(-2)
        return F.cross_entropy(net(xb), yb.long(), weight=self._weights.to(xb.device))

    def _score_batch(self, net, xb):
        # the abnormality score as a differentiable function of the net (medad.explain wraps it)
        p = _softmax(net(xb))
        return 1.0 - p[:, int(self.normal_class)], None

    def _score(self, x: np.ndarray) -> ClassifierResult:
        proba = self._proba(x)
        return ClassifierResult(score=(1.0 - proba[:, int(self.normal_class)]).astype(np.float64), proba=proba)

    def _proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, n_classes)`` of checked items, in batches without gradients."""
        import torch

        from medad.utils import get_device

        dev = get_device(self.device)
        net = self.net_.to(dev).eval()
        bs = max(1, int(self.batch_size))
        out = []
        with torch.no_grad():
            for i in range(0, len(x), bs):
                out.append(_softmax(net(torch.from_numpy(np.ascontiguousarray(x[i:i + bs])).to(dev))).cpu())
        self.net_.to("cpu")
        return torch.cat(out).numpy()

    def predict_proba(self, x) -> np.ndarray:
        """Class probabilities ``(N, n_classes)`` (``score(x).proba`` gives them with the scores)."""
        return self.score(x).proba


def _softmax(logits):
    """Class probabilities from a classifier's logits ``(B, n_classes)``, in float32."""
    import torch

    return torch.softmax(logits.float(), dim=1)
