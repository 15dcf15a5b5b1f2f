"""The detector contract.

Every method -- classical baseline, autoencoder, diffusion model, one-class network or
supervised classifier -- implements the same interface::

    det = registry.create("ae", spatial_dims=2)
    det.fit(healthy)                     # learns normality; returns self
    det.calibrate(healthy_val, fpr=0.05) # threshold from healthy data only
    res = det.predict(x)                 # AnomalyResult(score, map, label, mask)
    det.save("model/"); det2 = Detector.load("model/")   # no pickle

Scores are "higher = more abnormal" everywhere. Inputs are arrays of shape
``(N, C, *spatial)`` (images, ``input_kind="image"``), ``(N, C, T)`` (signals,
``input_kind="signal"``) or ``(N, F)`` (``input_kind="features"``). Maps come back on the
input grid without the channel axis: ``(N, *spatial)`` / ``(N, T)``.

Following scikit-learn, ``__init__`` only stores parameters and learned state ends in ``_``.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medad.errors import ConfigError, InputError, NotFittedError, ReadError
from medad.utils import json_default

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


@dataclass
class AnomalyResult:
    """What a detector returns.

    Attributes:
        score: ``(N,)`` one score per item, higher = more abnormal.
        map: ``(N, *spatial)`` per-pixel/voxel/sample scores on the input grid, or ``None``.
        label: ``(N,)`` bool decisions (set by ``predict`` once calibrated).
        mask: same shape as ``map``, bool (set by ``predict`` once calibrated).
        threshold: item-level threshold used for ``label``.
        pixel_threshold: map-level threshold used for ``mask``.
    """

    score: np.ndarray
    map: np.ndarray | None = None
    label: np.ndarray | None = None
    mask: np.ndarray | None = None
    threshold: float | None = None
    pixel_threshold: float | None = None

    def __len__(self) -> int:
        return int(len(self.score))

    def __getitem__(self, idx) -> "AnomalyResult":
        def sel(a):
            return None if a is None else a[idx]

        return replace(self, score=self.score[idx], map=sel(self.map), label=sel(self.label), mask=sel(self.mask))

    @staticmethod
    def concat(results: list["AnomalyResult"]) -> "AnomalyResult":
        """Join results of consecutive batches."""
        if not results:
            raise InputError("no results to concatenate")

        def cat(name):
            parts = [getattr(r, name) for r in results]
            return None if any(p is None for p in parts) else np.concatenate(parts, axis=0)

        r0 = results[0]
        return AnomalyResult(
            score=cat("score"), map=cat("map"), label=cat("label"), mask=cat("mask"),
            threshold=r0.threshold, pixel_threshold=r0.pixel_threshold,
        )


def as_array(x: Any, *, name: str = "input", min_ndim: int = 2) -> np.ndarray:
    """Turn arrays, tensors or lists of equally-shaped arrays into a float32 NumPy array,
    rejecting empty input and NaN/inf with a clear error."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, (list, tuple)):
        if not x:
            raise InputError(f"{name} is empty")
        x = np.stack([np.asarray(v) for v in x])
    x = np.asarray(x)
    if x.size == 0:
        raise InputError(f"{name} is empty (shape {x.shape})")
    if x.ndim < min_ndim:
        raise InputError(f"{name} must have at least {min_ndim} dimensions, got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return x


def threshold_at_fpr(healthy_scores: np.ndarray, fpr: float) -> float:
    """The threshold that flags a fraction ``fpr`` of healthy scores (scores > threshold flagged)."""
    s = np.asarray(healthy_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise InputError("no healthy scores to calibrate on")
    if not 0.0 <= fpr < 1.0:
        raise InputError(f"fpr must be in [0, 1), got {fpr}")
    return float(np.quantile(s, 1.0 - fpr, method="higher")) if fpr > 0 else float(s.max())


class Detector:
    """Base class of every detector. Subclasses implement ``_fit`` and ``_score`` and, when they
    have learned state, ``_get_state`` / ``_set_state``.

    Class attributes:
        name: registry name (set by :func:`medad.registry.register`).
        input_kind: ``"image"``, ``"signal"`` or ``"features"`` (see module docstring).
        supervised: True when ``fit`` needs labels ``y``.
        conformance_params: small, fast parameters used by the conformance test suite.
        conformance_shape: item shape ``x.shape[1:]`` for that suite (default per input_kind:
            image (1, 32, 32), signal (1, 512), features (8,)).
    """

    name: ClassVar[str] = "detector"
    input_kind: ClassVar[str] = "image"
    supervised: ClassVar[bool] = False
    # items to score must have the rank and channel count of the training items (off for detectors
    # that also score another layout, e.g. precomputed feature rows)
    check_layout: ClassVar[bool] = True
    conformance_params: ClassVar[dict[str, Any]] = {}
    #: item shape (without N) used by the conformance suite; None = its default for input_kind
    conformance_shape: ClassVar[tuple[int, ...] | None] = None

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (read back from attributes of the same name)."""
        sig = inspect.signature(type(self).__init__)
        out = {}
        for p in sig.parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out[p.name] = getattr(self, p.name)
        return out

    def set_params(self, **params: Any) -> "Detector":
        """Set constructor parameters (scikit-learn style); refit afterwards. Unknown names are a
        ConfigError listing the known ones."""
        known = self.get_params()
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no parameter {', '.join(unknown)}; known: "
                              f"{', '.join(known)}")
        self._set_params(params)
        return self

    def _set_params(self, params: dict[str, Any]) -> None:
        """Store constructor arguments as same-named attributes: ``self._set_params(locals())``."""
        for k, v in params.items():
            if k not in ("self", "__class__"):
                setattr(self, k, v)

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({ps})"

    # ------------------------------------------------------------------ contract
    def fit(self, x, val=None, *, y=None) -> "Detector":
        """Learn normality from ``x`` (healthy items), or from labelled ``x, y`` when supervised.

        Args:
            x: training items.
            val: optional held-out items (for early stopping / monitoring), healthy for one-class.
            y: labels (1 = abnormal), required when ``supervised``.
        """
        x = as_array(x, name="training data")
        if self.supervised:
            if y is None:
                raise InputError(f"{type(self).__name__} is supervised: fit needs labels y")
            y = np.asarray(y)
            if len(y) != len(x):
                raise InputError(f"{len(x)} training items but {len(y)} labels")
        if self.supervised and len(np.unique(y)) < 2:
            raise InputError(f"{type(self).__name__} is supervised: its labels hold one class only "
                             f"({np.unique(y).tolist()}); it needs normal and abnormal items")
        self._check_input(x)
        if val is not None:
            val = as_array(val, name="validation data")
        self._fit(x, val, y)
        # what scoring must match: the items' rank and channels (features: their number)
        self.input_layout_ = {"ndim": int(x.ndim), "channels": int(x.shape[1])}
        self.fitted_ = True
        return self

    def score(self, x) -> AnomalyResult:
        """Score items: one score each (higher = more abnormal) and a map where the method has one."""
        self._require_fitted()
        x = as_array(x, name="input")
        self._check_input(x)
        self._check_layout(x)
        res = self._score(x)
        if res.score.shape != (len(x),):
            raise RuntimeError(f"{type(self).__name__}._score returned {res.score.shape} scores for {len(x)} items")
        return res

    def calibrate(self, healthy_val, *, fpr: float = 0.05, pixel_fpr: float | None = None,
                  foreground: np.ndarray | None = None) -> "Detector":
        """Choose thresholds from healthy data only.

        ``threshold_`` flags a fraction ``fpr`` of healthy items; ``pixel_threshold_`` (when
        the detector makes maps) flags a fraction ``pixel_fpr`` (default ``fpr``) of healthy
        pixels, counted inside ``foreground`` when given (same shape as the maps).
        """
        res = self.score(healthy_val)
        self.threshold_ = threshold_at_fpr(res.score, fpr)
        self.calibration_ = {"n_items": int(len(res.score)), "fpr": float(fpr), "source": "healthy validation"}
        if res.map is not None:
            vals = res.map if foreground is None else res.map[np.asarray(foreground, dtype=bool)]
            pf = fpr if pixel_fpr is None else pixel_fpr
            self.pixel_threshold_ = threshold_at_fpr(vals, pf)
            self.calibration_["pixel_fpr"] = float(pf)
        return self

    def predict(self, x, *, foreground: np.ndarray | None = None) -> AnomalyResult:
        """Score and threshold: ``label`` per item and ``mask`` per pixel (inside ``foreground``)."""
        if getattr(self, "threshold_", None) is None:
            raise NotFittedError(f"{type(self).__name__} has no threshold: call calibrate() on healthy data first")
        res = self.score(x)
        res.threshold = self.threshold_
        res.label = res.score > self.threshold_
        pt = getattr(self, "pixel_threshold_", None)
        if res.map is not None and pt is not None:
            res.pixel_threshold = pt
            res.mask = res.map > pt
            if foreground is not None:
                res.mask &= np.asarray(foreground, dtype=bool)
        return res

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` (name, parameters, thresholds, small state) and
        ``weights.safetensors`` (arrays) into the folder ``path``, atomically."""
        self._require_fitted()
        path = Path(path)
        arrays, extra = self._get_state()
        config = {
            "name": self.name,
            "params": self.get_params(),
            "threshold": getattr(self, "threshold_", None),
            "pixel_threshold": getattr(self, "pixel_threshold_", None),
            "calibration": getattr(self, "calibration_", None),
            "input_layout": getattr(self, "input_layout_", None),
            "state": extra,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=json_default), encoding="utf-8")
            _save_arrays(arrays, tmp / WEIGHTS_FILE)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Detector":
        """Load a detector saved with :meth:`save` (any registered type when called on ``Detector``)."""
        from medad import registry

        from medad.utils import read_model_json

        path = Path(path)
        config = read_model_json(path, CONFIG_FILE, "saved medad detector")
        try:
            klass = registry.get(config["name"])
        except KeyError as e:
            raise ReadError(f"corrupt {CONFIG_FILE}: missing {e}", path) from None
        if cls is not Detector and not issubclass(klass, cls):
            raise ReadError(f"holds a {klass.__name__}, not a {cls.__name__}", path)
        det = klass(**config["params"])
        arrays = _load_arrays(path / WEIGHTS_FILE)
        det._set_state(arrays, config.get("state") or {})
        det.threshold_ = config.get("threshold")
        det.pixel_threshold_ = config.get("pixel_threshold")
        det.calibration_ = config.get("calibration")
        det.input_layout_ = config.get("input_layout")  # None for models saved before it was kept
        det.fitted_ = True
        return det

    # ------------------------------------------------------------------ for subclasses
    def _fit(self, x: np.ndarray, val: np.ndarray | None, y: np.ndarray | None) -> None:
        raise NotImplementedError

    def _score(self, x: np.ndarray) -> AnomalyResult:
        raise NotImplementedError

    def _get_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Learned state as (arrays or tensors by name, JSON-able extras)."""
        return {}, {}

    def _set_state(self, arrays: dict[str, Any], extra: dict[str, Any]) -> None:
        return None

    def _check_layout(self, x: np.ndarray) -> None:
        """Items to score have the rank and channels (features: the number) of the training items."""
        lay = getattr(self, "input_layout_", None)
        if not lay or not self.check_layout:
            return
        what = "features" if self.input_kind == "features" else "channels"
        if x.ndim != lay["ndim"]:
            raise InputError(f"{type(self).__name__} was fitted on items of {lay['ndim'] - 2} spatial/time "
                             f"dimension(s) (shape (N, C, ...) with {lay['ndim']} axes); got shape {x.shape}")
        if x.shape[1] != lay["channels"]:
            raise InputError(f"{type(self).__name__} was fitted on items with {lay['channels']} {what}; got "
                             f"{x.shape[1]} (shape {x.shape})")

    def _check_input(self, x: np.ndarray) -> None:
        need = {"image": 3, "signal": 3, "features": 2}.get(self.input_kind, 2)
        if x.ndim < need:
            raise InputError(
                f"{type(self).__name__} expects {self.input_kind} input with at least {need} "
                f"dimensions (N, C, ...), got shape {x.shape}"
            )

    def _require_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() first")




def _save_arrays(arrays: dict[str, Any], file: Path) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for k, v in arrays.items():
        t = v.detach().cpu() if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
        tensors[k] = t.contiguous().clone()
    save_file(tensors, str(file))


def _load_arrays(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(file)))
    except (SafetensorError, OSError, ValueError) as e:
        raise ReadError(f"corrupt weights file: {e}", file) from None
