"""Turn what the user has -- a classifier ``nn.Module`` or a medad detector -- into one thing every
explanation method can use: a module whose ``forward(x)`` returns one scalar per item, ``(B,)``.

The protocol for detectors (so their *anomaly score* can be explained):

* A detector may define ``score_module(self) -> nn.Module`` returning a module whose forward maps a
  batch ``(B, C, *spatial)`` tensor to the ``(B,)`` anomaly scores (differentiable where possible).
* Otherwise every :class:`medad.detectors.torch_base.TorchDetector` works as it is: its
  ``net_`` and ``_score_batch(net, xb)`` are wrapped (gradients flow as long as
  ``_score_batch`` does not detach or use ``no_grad``).
* Supervised torch detectors whose score is a probability made from their network's logits
  (``sigmoid(logit)`` or ``1 - softmax(logits)[normal]``) are explained through the *log-odds*
  of that probability, read from the logits (checked to reproduce the score on the example).
  The log-odds rank inputs exactly like the probability, but do not saturate: a probability
  stuck at 1.0 has (almost) zero gradient, which leaves Grad-CAM and the perturbation methods
  with nothing to explain. Explaining the pre-sigmoid/pre-softmax score is the standard choice
  (Grad-CAM explains the class score before the softmax).
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
        explained: what ``forward`` returns, in words (shown in reports and benchmarks).
        log_odds_fn: ``x -> (B,)`` log-odds of the explained probability, or None when the output
            is not a probability (an unbounded anomaly score).
    """

    def __init__(self, inner, fn, kind: str, differentiable: bool, target: int | None = None, *,
                 explained: str = "", log_odds_fn=None):
        super().__init__()
        self.inner = inner
        self._fn = fn
        self.kind = kind
        self.differentiable = differentiable
        self.target = target
        self.explained = explained
        self.log_odds_fn = log_odds_fn

    def forward(self, x):
        return self._fn(x)

    @property
    def is_probability(self) -> bool:
        """Whether the model's decision is a probability (classifiers, supervised detectors)."""
        return self.log_odds_fn is not None

    def probability(self, x):
        """The scalar on a [0, 1] scale for faithfulness curves: the class / abnormal probability
        when there is one; otherwise the raw anomaly score (it has no natural scale)."""
        import torch

        if self.log_odds_fn is None:
            return self.forward(x)
        return torch.sigmoid(self.log_odds_fn(x))

    def log_odds(self, x):
        """log(p / (1 - p)) of the explained probability, computed from the logits (no rounding
        of p to 1.0), or the raw score when the output is not a probability."""
        return self.forward(x) if self.log_odds_fn is None else self.log_odds_fn(x)


def _log_odds(logits, positive: int | None, negative: int | None):
    """log-odds of a class probability from logits ``(B, K)`` (``(B, 1)``: the logit itself).
    ``positive``: log p(positive) / (1 - p(positive)); ``negative``: log (1 - p(neg)) / p(neg)."""
    import torch

    if logits.shape[1] == 1:
        z = logits[:, 0]
        return -z if negative == 1 or positive == 0 else z
    k = positive if positive is not None else negative
    others = torch.cat([logits[:, :k], logits[:, k + 1:]], dim=1)
    lo = logits[:, k] - torch.logsumexp(others, dim=1)
    return lo if positive is not None else -lo


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
        def logit(x):
            return sign * model(x).reshape(len(x))

        return ScalarModel(model, logit, "classifier", True, None, explained="class logit", log_odds_fn=logit)
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
    return ScalarModel(model, lambda x: model(x)[:, t], "classifier", True, t, explained=f"logit of class {t}",
                       log_odds_fn=lambda x: _log_odds(model(x), t, None))


def score_module(detector, x_example=None) -> ScalarModel:
    """The anomaly score of ``detector`` as a module ``(B, C, *spatial) -> (B,)`` (see module doc):
    its log-odds when the score is a probability made from the network's logits (checked on
    ``x_example``), else the score itself."""
    import torch

    if hasattr(detector, "score_module"):
        inner = detector.score_module()
        return ScalarModel(inner, inner, "detector", True, explained="anomaly score")
    detector._require_fitted()
    if hasattr(detector, "net_") and hasattr(detector, "_score_batch"):
        net = detector.net_

        def fn(x):
            return detector._score_batch(net, x)[0].reshape(len(x))

        lo = _detector_log_odds(detector, net, fn, x_example)
        if lo is not None:
            return ScalarModel(net, lo, "detector", True, explained="log-odds of the abnormal probability",
                               log_odds_fn=lo)
        return ScalarModel(net, fn, "detector", True, explained="anomaly score")

    def blackbox(x):
        s = detector.score(x.detach().cpu().numpy()).score
        return torch.as_tensor(np.asarray(s), dtype=torch.float32, device=x.device)

    return ScalarModel(None, blackbox, "detector", False, explained="anomaly score")


def _detector_log_odds(detector, net, score_fn, x_example):
    """For a supervised detector whose score is ``sigmoid(logit)`` or ``1 - softmax(logits)[normal]``:
    ``x -> log-odds`` from the logits; None when the score is something else (the check: the
    sigmoid of the candidate reproduces the detector's own score on ``x_example``)."""
    if not getattr(detector, "supervised", False) or x_example is None:
        return None
    normal = int(getattr(detector, "normal_class", 0))

    def lo(x):
        return _log_odds(net(x), None, normal)

    key = (type(detector), normal, tuple(x_example.shape[1:]))
    checked = _LOG_ODDS_CHECKED.setdefault(net, {})
    if key not in checked:  # the check costs forward passes: once per network and input shape
        checked[key] = _reproduces_score(net, lo, score_fn, x_example, normal)
    return lo if checked[key] else None


def _reproduces_score(net, lo, score_fn, x_example, normal: int) -> bool:
    """Whether ``sigmoid(lo(x))`` equals the detector's score on one example."""
    import torch

    was_training = net.training
    try:
        net.eval()  # dropout would make the two outputs differ
        with torch.no_grad():
            x0 = x_example[:1].to(model_device(net, x_example.device))
            out = net(x0)
            if out.ndim != 2 or not 0 <= normal < max(2, out.shape[1]):
                return False
            return bool(torch.allclose(torch.sigmoid(lo(x0)).float(), score_fn(x0).float(), atol=1e-4, rtol=1e-3))
    except (RuntimeError, TypeError, ValueError, IndexError):  # the net is not a plain logit model
        return False
    finally:
        net.train(was_training)


def as_scalar_model(model: Any, x_example, target: int | None = None) -> ScalarModel:
    """Wrap a classifier module or a detector (see module doc) as a :class:`ScalarModel`."""
    from medad.detectors.base import Detector

    if isinstance(model, ScalarModel):
        return model
    if isinstance(model, Detector):
        if target is not None:
            raise InputError("detectors explain their anomaly score: target must be None")
        return score_module(model, x_example)
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
    When every feature map is input-shaped, the last convolution is used. A network that turns a
    signal ``(B, C, T)`` into a time-frequency image (``cnn2d`` on spectrograms) has no feature map
    of the input's rank: its last ``(B, C, F, T')`` map is taken (:func:`medad.explain.methods`
    averages its Grad-CAM over frequency)."""
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
    if len(in_shape) == 3:  # a signal seen as a time-frequency image: its last 2D feature map
        for mod, sh in reversed(seen):
            if len(sh) == 4 and sh[1] > 1 and int(np.prod(sh[2:])) > 1:
                return mod
    raise InputError("no layer with a spatial feature map found: pass layer= explicitly")


_LAYERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOG_ODDS_CHECKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


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
    restore = [(m, _param_device(m)) for m in nets]
    # Each submodule's own flag: ``train(flag)`` is recursive, so restoring the fresh wrapper
    # (training=True) would switch the wrapped network, and its dropout / batch norm, to training.
    modes = [(m, m.training) for net in nets for m in net.modules()]
    # cuDNN computes an LSTM/GRU's backward pass only in training mode ("cudnn RNN backward can
    # only be called in training mode": gradient maps of a recurrent model failed on a GPU); the
    # native kernels differentiate in eval mode, so cuDNN is off for the block where an RNN is
    # explained on CUDA.
    rnn = any(isinstance(m, torch.nn.RNNBase) for net in nets for m in net.modules())
    cudnn_off = rnn and torch.device(device).type == "cuda"
    try:
        for m in nets:
            m.eval().to(device)
        with torch.backends.cudnn.flags(enabled=False) if cudnn_off else contextlib.nullcontext():
            yield wrapped
    finally:
        for m, training in modes:
            m.training = training
        for m, d in restore:
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
