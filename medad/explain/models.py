"""Turn what the user has -- a classifier ``nn.Module`` or a medad detector -- into one thing every
explanation method can use: a module whose ``forward(x)`` returns one scalar per item, ``(B,)``.

The protocol for detectors (so their *anomaly score* can be explained):

* A detector may define ``score_module(self) -> nn.Module`` returning a module whose forward maps a
  batch ``(B, C, *spatial)`` tensor to the ``(B,)`` anomaly scores (differentiable where possible).
* Otherwise every :class:`medad.detectors.torch_base.TorchDetector` works as it is: its
  ``net_`` and ``_score_batch(net, xb)`` are wrapped (gradients flow as long as
  ``_score_batch`` does not detach or use ``no_grad``).
* Any other detector is wrapped as a black box around ``score()``: only the perturbation
  methods (KernelSHAP, LIME) and the faithfulness curves can use it.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Iterator

import numpy as np

from medad.errors import InputError


def _nn():
    import torch.nn as nn

    return nn


class ScalarModel(_nn().Module):  # type: ignore[misc]
    """``forward(x) -> (B,)``: the explained scalar of each item.

    Attributes:
        kind: ``"classifier"`` (output is a class logit) or ``"detector"`` (an anomaly score).
        differentiable: whether gradients w.r.t. the input exist (False for black boxes).
        inner: the wrapped network (searched for the Grad-CAM layer).
    """

    def __init__(self, inner, fn, kind: str, differentiable: bool, target: int | None = None):
        super().__init__()
        self.inner = inner
        self._fn = fn
        self.kind = kind
        self.differentiable = differentiable
        self.target = target

    def forward(self, x):
        return self._fn(x)

    def probability(self, x):
        """The scalar on a [0, 1] scale for faithfulness curves: softmax/sigmoid of the class logit
        for classifiers; the raw score for detectors (it has no natural scale)."""
        import torch

        if self.kind != "classifier":
            return self.forward(x)
        out = self.inner(x)
        if out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1):
            return torch.sigmoid(out.reshape(len(out)))
        return torch.softmax(out, dim=1)[:, self.target]


def _classifier(model, x_example, target: int | None) -> ScalarModel:
    """Select one logit of a classifier. ``target=None``: the class the model predicts for
    ``x_example`` (or the single logit of a binary model)."""
    import torch

    with torch.no_grad():
        out = model(x_example)
    if out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1):
        if target not in (None, 0, 1):
            raise InputError(f"model has one output logit; target must be None, 0 or 1, got {target}")
        sign = -1.0 if target == 0 else 1.0  # explaining class 0 of a one-logit model = minus the logit
        return ScalarModel(model, lambda x: sign * model(x).reshape(len(x)), "classifier", True, None)
    if out.ndim != 2:
        raise InputError(f"classifier output must be (B, classes), got shape {tuple(out.shape)}")
    if target is None:
        preds = out.argmax(1).unique()
        if len(preds) > 1:
            raise InputError("items of this batch are predicted as different classes: pass target=")
        target = int(preds[0])
    if not 0 <= int(target) < out.shape[1]:
        raise InputError(f"target {target} out of range for {out.shape[1]} classes")
    t = int(target)
    return ScalarModel(model, lambda x: model(x)[:, t], "classifier", True, t)


def score_module(detector) -> ScalarModel:
    """The anomaly score of ``detector`` as a module ``(B, C, *spatial) -> (B,)`` (see module doc)."""
    import torch

    if hasattr(detector, "score_module"):
        inner = detector.score_module()
        return ScalarModel(inner, inner, "detector", True)
    detector._require_fitted()
    if hasattr(detector, "net_") and hasattr(detector, "_score_batch"):
        net = detector.net_

        def fn(x):
            return detector._score_batch(net, x)[0].reshape(len(x))

        return ScalarModel(net, fn, "detector", True)

    def blackbox(x):
        s = detector.score(x.detach().cpu().numpy()).score
        return torch.as_tensor(np.asarray(s), dtype=torch.float32, device=x.device)

    return ScalarModel(None, blackbox, "detector", False)


def as_scalar_model(model: Any, x_example, target: int | None = None) -> ScalarModel:
    """Wrap a classifier module or a detector (see module doc) as a :class:`ScalarModel`."""
    from medad.detectors.base import Detector

    if isinstance(model, ScalarModel):
        return model
    if isinstance(model, Detector):
        if target is not None:
            raise InputError("detectors explain their anomaly score: target must be None")
        return score_module(model)
    if isinstance(model, _nn().Module):
        return _classifier(model, x_example, target)
    raise InputError(f"cannot explain a {type(model).__name__}: expected a torch nn.Module or a medad Detector")


def spatial_dims_of(model: Any) -> int | None:
    """How many spatial axes the model's input has (1 signal, 2 image, 3 volume), if it can tell."""
    from medad.detectors.base import Detector

    if isinstance(model, Detector):
        if model.input_kind == "signal":
            return 1
        shape = getattr(model, "in_shape_", None)
        if shape:
            return len(shape) - 1
        model = getattr(model, "net_", None)
    if isinstance(model, ScalarModel):
        model = model.inner
    nn = _nn()
    if isinstance(model, nn.Module):
        for m in model.modules():
            for d, types in ((1, (nn.Conv1d,)), (2, (nn.Conv2d,)), (3, (nn.Conv3d,))):
                if isinstance(m, types):
                    return d
    return None


def default_layer(model: ScalarModel, x):
    """The Grad-CAM layer: the module that produced the last feature map in a forward pass of
    ``x`` -- an output with channels and more than one spatial position that is not shaped like
    the input (that would be a reconstruction, not features). Found with hooks, so execution
    order counts, not registration order. For a plain CNN this is the last convolution (or the
    activation right after it); for DenseNet-style nets it is the final concatenated features,
    which a 'last Conv layer' rule would miss (there the last convolution sees a few channels).
    When every feature map is input-shaped, the last convolution is used."""
    import torch

    if model.inner is None:
        raise InputError("this detector is a black box (no network): Grad-CAM needs a convolutional network")
    seen: list = []

    def hook(mod, inp, out):
        if isinstance(out, torch.Tensor):
            seen.append((mod, tuple(out.shape)))

    hooks = [m.register_forward_hook(hook) for m in model.inner.modules()]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    in_shape = tuple(x[:1].shape)
    spatial = [(m, sh) for m, sh in reversed(seen) if len(sh) == len(in_shape) and int(np.prod(sh[2:])) > 1]
    for mod, shape in spatial:
        if shape != in_shape:
            return mod
    nn = _nn()
    for mod, _ in spatial:  # only input-shaped maps: fall back to the last convolution
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return mod
    raise InputError("no layer with a spatial feature map found: pass layer= explicitly")


_LAYERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def resolve_layer(model: ScalarModel, layer, x):
    """``layer`` as a module: None -> automatic (found once per network and input shape, then
    cached: finding it costs a forward pass), a dotted name inside the network, or a module."""
    if layer is None:
        if model.inner is None:
            return default_layer(model, x)
        per_net = _LAYERS.setdefault(model.inner, {})
        key = tuple(x.shape[1:])
        if key not in per_net:
            per_net[key] = default_layer(model, x)
        return per_net[key]
    if isinstance(layer, str):
        try:
            return model.inner.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.inner.named_modules() if n]
            raise InputError(f"no layer named {layer!r}; layers: {', '.join(names[:40])}") from None
    return layer


def _param_device(m):
    p = next(iter(m.parameters()), None)
    return None if p is None else p.device


def model_device(model: Any, default):
    """Where a classifier module's or a torch detector's parameters live (``default`` if none)."""
    import torch

    net = getattr(model, "net_", model)
    return (_param_device(net) if isinstance(net, torch.nn.Module) else None) or default


@contextlib.contextmanager
def evaluating_on(wrapped: ScalarModel, device) -> Iterator[ScalarModel]:
    """Put the wrapped network in eval mode on ``device`` for the block, then back where and how
    it was (a detector's network goes back to the CPU after explaining on the GPU)."""
    import torch

    nets = [m for m in (wrapped.inner, wrapped) if isinstance(m, torch.nn.Module)]
    restore = [(m, m.training, _param_device(m)) for m in nets]
    try:
        for m in nets:
            m.eval().to(device)
        yield wrapped
    finally:
        for m, training, d in restore:
            m.train(training)
            if d is not None:
                m.to(d)


def baseline_tensor(x, baseline):
    """The 'absent' input for a batch ``x`` (B, C, *spatial): a scalar, or an array broadcastable
    to one item (C, *spatial) or to ``x``."""
    import torch

    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    b = torch.as_tensor(np.asarray(baseline), dtype=x.dtype, device=x.device)
    try:
        return b.expand_as(x).clone()
    except RuntimeError:
        raise InputError(f"baseline shape {tuple(b.shape)} does not fit the input {tuple(x.shape)}") from None
