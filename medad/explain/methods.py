"""Attribution maps through Captum: Grad-CAM, Integrated Gradients, GradientSHAP, KernelSHAP and
LIME, for 1D signal, 2D image and 3D volume models, classifiers and anomaly detectors alike.

One entry point, :func:`explain`, returns a map with the input's spatial shape (channels summed
or averaged away). Every method explains one scalar per item (a class logit, the log-odds of a
supervised detector's abnormal probability, or an anomaly score; see :mod:`medad.explain.models`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medad.errors import InputError
from medad.explain.masks import segment_mask
from medad.explain.models import (ScalarModel, as_scalar_model, baseline_tensor, evaluating_on, model_device,
                                  resolve_layer, spatial_dims_of)

#: method name -> (needs gradients, short description shown in reports)
METHODS: dict[str, tuple[bool, str]] = {
    "gradcam": (True, "Grad-CAM: where the last convolution layer's features push the score up"),
    "ig": (True, "Integrated Gradients: each pixel's contribution along a path from a blank baseline"),
    "gradient_shap": (True, "GradientSHAP: expected gradients at random points between the baseline(s) and the input "
                            "(an approximation of SHAP values)"),
    "kernel_shap": (False, "KernelSHAP: Shapley values of superpixels / segments estimated by switching them off"),
    "lime": (False, "LIME: weights of a linear surrogate fitted to the model's output on perturbed segments"),
}
ALIASES = {"grad-cam": "gradcam", "grad_cam": "gradcam", "integrated_gradients": "ig",
           "shap": "kernel_shap", "kernelshap": "kernel_shap", "gradientshap": "gradient_shap"}


def _interpolate(attr, size: tuple[int, ...]):
    import torch.nn.functional as F

    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(attr, size=size, mode=mode, align_corners=False)


def _reference_stack(x, baseline):
    """``baseline`` as a stack ``(K, C, *spatial)`` of K > 1 reference items, or None when it is
    one baseline (a scalar or an array broadcastable to one item)."""
    if isinstance(baseline, (int, float)):
        return None
    b = np.asarray(baseline)
    if b.ndim == x.ndim and b.shape[0] > 1:
        return baseline_tensor(x[:1].expand(b.shape[0], *x.shape[1:]), b)
    return None


def _one(model: ScalarModel, x, method: str, *, spatial_dims: int, layer, baseline, n_samples: int | None,
         n_segments: int | None, perturbations_per_eval: int, n_steps: int, per_channel: bool,
         compactness: float, noise: float) -> np.ndarray:
    """Attribution for one item ``x`` of shape ``(1, C, *spatial)`` -> ``(*spatial)``."""
    import captum.attr as ca
    import torch

    spatial = tuple(x.shape[2:])
    refs = _reference_stack(x, baseline)
    if refs is not None and method != "gradient_shap":
        raise InputError(f"a stack of {len(refs)} reference items as baseline is only used by gradient_shap; "
                         f"{method} needs one baseline (a value or one item)")
    base = refs if refs is not None else baseline_tensor(x, baseline)
    if method == "gradcam":
        lgc = ca.LayerGradCam(model, resolve_layer(model, layer, x))
        a = lgc.attribute(x, relu_attributions=True)
        if x.ndim == 3 and a.ndim == 4:  # a signal's time-frequency features: averaged over frequency
            a = a.mean(2)
        if a.ndim != x.ndim:
            raise InputError(f"Grad-CAM layer output has shape {tuple(a.shape)}, not (B, C, *spatial)")
        a = _interpolate(a.float(), spatial)
        return a[0].sum(0).detach().cpu().numpy()
    if method == "ig":
        a = ca.IntegratedGradients(model).attribute(x, baselines=base, n_steps=n_steps,
                                                    internal_batch_size=perturbations_per_eval)
        return a[0].sum(0).detach().cpu().numpy()
    if method == "gradient_shap":
        # Expected gradients (Erion et al.): baselines drawn from the given "absent" input(s) only.
        # No noise is added to them. The former version added noise of 0.1 x the input's std to
        # the baseline and the input; for a seizure EEG window (std ~6x that of the healthy
        # reference) that noise is ~60 % of the reference's own amplitude, so the map explained
        # the score against a different, noisier reference than the one given (and used by the
        # deletion test): on the Bonn test windows it was no better than random maps (margin 0.10
        # [-0.39, 0.48]; 0.66 [0.10, 1.07] without the noise, same model and windows). SmoothGrad
        # noise on the input stays available (``noise``), scaled to its distance from the baseline.
        sd = float((x - base.mean(0, keepdim=True)).std()) if noise > 0 else 0.0
        a = ca.GradientShap(model).attribute(x, baselines=base, n_samples=n_samples or 64,
                                             stdevs=float(noise) * sd)
        return a[0].sum(0).detach().cpu().numpy()
    if method in ("kernel_shap", "lime"):
        item = x[0].detach().cpu().numpy()
        labels = segment_mask(item, spatial_dims, n_segments or (16 if spatial_dims == 1 else 64),
                              compactness=compactness, per_channel=per_channel)
        full = np.broadcast_to(labels if per_channel else labels[None], item.shape)
        labels_full, noop = _merge_noop_segments(full, item, base[0].cpu().numpy())
        fm = torch.as_tensor(labels_full, device=x.device)[None].contiguous()
        n_feat = int(labels_full.max()) + 1
        if method == "kernel_shap":
            explainer = ca.KernelShap(model)
        else:
            from captum._utils.models.linear_model import SkLearnLinearRegression
            from captum.attr._core.lime import get_exp_kernel_similarity_function

            # Captum's default Lasso surrogate shrinks every weight to zero on these inputs;
            # ordinary least squares on the binary segment indicators does not.
            explainer = ca.Lime(model, interpretable_model=SkLearnLinearRegression(),
                                similarity_func=get_exp_kernel_similarity_function("cosine", kernel_width=0.75))
        a = explainer.attribute(x, baselines=base, feature_mask=fm,
                                n_samples=n_samples or max(2 * n_feat + 64, 128),
                                perturbations_per_eval=perturbations_per_eval)
        a = a[0].float().detach().cpu().numpy()
        a[noop] = 0.0  # segments equal to the baseline cannot change the output: exactly zero
        # Every position of a segment carries the segment's weight; averaging over channels keeps
        # that weight (a shared mask repeats it per channel).
        return a.mean(0)
    raise InputError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")


def _merge_noop_segments(labels: np.ndarray, item: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge every segment whose values already equal the baseline (e.g. the empty background
    around a skull-stripped brain) into one feature. Switching such a segment off changes
    nothing, so its true attribution is zero; leaving it as a feature only adds sampling noise
    to KernelSHAP / LIME. Returns the relabelled mask and a boolean mask of the no-op positions."""
    k = int(labels.max()) + 1
    differs = np.bincount(labels.ravel(), weights=(item != base).ravel().astype(np.float64), minlength=k) > 0
    if differs.all() or not differs.any():
        return np.array(labels, dtype=np.int64), np.zeros(labels.shape, bool)  # a writable copy
    new_id = np.zeros(k, np.int64)
    new_id[differs] = np.arange(1, int(differs.sum()) + 1)  # 0 = the merged no-op feature
    relabelled = new_id[labels]
    return relabelled, relabelled == 0


def canonical_method(method: str) -> str:
    m = ALIASES.get(method.lower(), method.lower())
    if m not in METHODS:
        raise InputError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")
    return m


def explain(model: Any, x, method: str = "gradcam", target: int | None = None, *,
            spatial_dims: int | None = None, layer=None, baseline: float | np.ndarray = 0.0,
            n_samples: int | None = None, n_segments: int | None = None,
            perturbations_per_eval: int = 32, n_steps: int = 32, per_channel: bool = False,
            compactness: float = 1.0, noise: float = 0.0, device: str | None = None,
            seed: int = 0) -> np.ndarray:
    """Explain a classifier's class logit or a detector's anomaly score (for supervised detectors
    whose score is a probability, its log-odds from the logits: same ranking, no saturation).

    Args:
        model: a classifier ``nn.Module`` (output ``(B, classes)`` or ``(B,)``/``(B, 1)`` logits)
            or a fitted medad detector (see :mod:`medad.explain.models` for the protocol).
        x: one item ``(C, *spatial)`` or a batch ``(N, C, *spatial)`` (NumPy or tensor).
        method: ``gradcam``, ``ig``, ``gradient_shap``, ``kernel_shap`` (alias ``shap``) or ``lime``.
        target: class to explain (classifiers; default the predicted class). Must be None for
            detectors, which explain their anomaly score.
        spatial_dims: 1 (signal), 2 (image) or 3 (volume); inferred from the model when possible.
        layer: Grad-CAM layer (module or dotted name); default the last convolution executed.
        baseline: the "absent" value (scalar or array broadcastable to one item) used by IG,
            GradientSHAP, KernelSHAP and LIME. For GradientSHAP it may also be a stack
            ``(K, C, *spatial)`` of K reference items (e.g. healthy training windows) from which
            baselines are drawn (expected gradients over a reference distribution).
        n_samples: model evaluations (KernelSHAP/LIME) or samples (GradientSHAP, default 64).
        n_segments: superpixels / supervoxels / time segments for KernelSHAP and LIME.
        perturbations_per_eval: batch size of perturbed inputs per forward pass.
        n_steps: Integrated Gradients path steps.
        per_channel: KernelSHAP/LIME segments distinct per channel.
        noise: GradientSHAP's SmoothGrad noise on the input, as a fraction of the standard
            deviation of (input - baseline); 0 (default) adds none (chosen on Bonn validation
            segments: 0.1 did not help, 0.2 halved the margin over random maps).
        device: where to run (default: CUDA when present).
        seed: seeds the random perturbations, so maps are reproducible.

    Returns:
        ``(*spatial)`` for one item, ``(N, *spatial)`` for a batch, float32.
    """
    import torch

    from medad.utils import get_device

    method = canonical_method(method)
    sd = spatial_dims or spatial_dims_of(model)
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
    if sd is None:
        raise InputError("cannot tell the number of spatial axes of this model: pass spatial_dims=")
    if xt.ndim == sd + 1:
        single, xt = True, xt[None]
    elif xt.ndim == sd + 2:
        single = False
    else:
        raise InputError(f"input of shape {tuple(xt.shape)} is neither one item (C, *spatial) nor a batch "
                         f"(N, C, *spatial) with {sd} spatial axes")
    if not torch.isfinite(xt).all():
        raise InputError("input contains NaN or infinite values")
    dev = get_device(device)
    xt = xt.to(dev)
    wrapped = as_scalar_model(model, xt[:1].to(model_device(model, dev)), target)
    if METHODS[method][0] and not wrapped.differentiable:
        raise InputError(f"{method} needs gradients but {type(model).__name__} is not a neural network; "
                         "use kernel_shap or lime")
    with evaluating_on(wrapped, dev):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        maps = []
        for i in range(len(xt)):
            xi = xt[i:i + 1]
            if wrapped.kind == "classifier" and target is None and wrapped.target is not None:
                wrapped = as_scalar_model(model, xi, None)  # per-item predicted class
            maps.append(_one(wrapped, xi, method, spatial_dims=sd, layer=layer, baseline=baseline,
                             n_samples=n_samples, n_segments=n_segments,
                             perturbations_per_eval=max(1, int(perturbations_per_eval)), n_steps=n_steps,
                             per_channel=per_channel, compactness=compactness, noise=noise))
    out = np.stack(maps).astype(np.float32)
    return out[0] if single else out

