"""Explanation maps for classifiers and anomaly detectors (Captum): Grad-CAM, Integrated
Gradients, GradientSHAP, KernelSHAP, LIME, and faithfulness checks (deletion / insertion).

    from medad.explain import explain
    m = explain(model_or_detector, x, method="gradcam")   # map with x's spatial shape
"""

from __future__ import annotations

from medad.explain.faithfulness import deletion_insertion, share_inside
from medad.explain.masks import segment_mask
from medad.explain.methods import METHODS, canonical_method, explain
from medad.explain.models import ScalarModel, as_scalar_model, default_layer, score_module

__all__ = ["explain", "METHODS", "canonical_method", "deletion_insertion", "share_inside", "segment_mask",
           "ScalarModel", "as_scalar_model", "score_module", "default_layer"]
