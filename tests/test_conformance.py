"""Every registered detector through the same checks: fit -> score -> calibrate -> predict ->
save -> load -> identical scores (the scikit-learn / anomalib conformance idea)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medad import registry
from medad.detectors.base import AnomalyResult, Detector
from medad.errors import InputError, NotFittedError

DEFAULT_SHAPES = {"image": (1, 32, 32), "signal": (1, 512), "features": (8,)}


def _make(kind: str, shape: tuple[int, ...], n: int, abnormal: bool, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(0.0, 0.1, size=(n, *shape)).astype(np.float32)
    if kind == "image":
        h, w = shape[-2:]
        yy, xx = np.mgrid[0:h, 0:w]
        x += (np.sin(xx / 3.0) * np.cos(yy / 4.0)).astype(np.float32)
        if abnormal:
            x[..., h // 3: h // 3 + h // 4, w // 3: w // 3 + w // 4] += 3.0
    elif kind == "signal":
        t = np.arange(shape[-1]) / 128.0
        x += np.sin(2 * np.pi * 6 * t).astype(np.float32)
        if abnormal:
            x[..., shape[-1] // 2: shape[-1] // 2 + 20] += 4.0
    else:
        if abnormal:
            x += 3.0
    return x


def _data(cls):
    rng = np.random.default_rng(0)
    shape = cls.conformance_shape or DEFAULT_SHAPES[cls.input_kind]
    healthy = _make(cls.input_kind, shape, 24, False, rng)
    val = _make(cls.input_kind, shape, 8, False, rng)
    test = np.concatenate([_make(cls.input_kind, shape, 4, False, rng), _make(cls.input_kind, shape, 4, True, rng)])
    return healthy, val, test, shape, rng


@pytest.mark.parametrize("name", registry.available())
def test_detector_conformance(name, tmp_path):
    cls = registry.get(name)
    assert issubclass(cls, Detector)
    det = cls(**cls.conformance_params)
    # __init__ only stores parameters
    assert not getattr(det, "fitted_", False)
    assert set(det.get_params()) >= set(cls.conformance_params)
    healthy, val, test, shape, rng = _data(cls)
    with pytest.raises(NotFittedError):
        det.score(test)

    if cls.supervised:
        x = np.concatenate([healthy, _make(cls.input_kind, shape, 24, True, rng)])
        y = np.r_[np.zeros(len(healthy), int), np.ones(24, int)]
        assert det.fit(x, y=y) is det
    else:
        assert det.fit(healthy) is det

    res = det.score(test)
    assert isinstance(res, AnomalyResult)
    assert res.score.shape == (len(test),) and np.isfinite(res.score).all()
    if res.map is not None:
        spatial = shape[1:] if cls.input_kind in ("image", "signal") else shape
        assert res.map.shape == (len(test), *spatial)

    with pytest.raises(NotFittedError):
        det.predict(test)
    det.calibrate(val, fpr=0.1)
    assert det.threshold_ is not None
    pred = det.predict(test)
    assert pred.label.dtype == bool and pred.label.shape == (len(test),)
    if pred.map is not None:
        assert pred.mask is not None and pred.mask.shape == pred.map.shape

    path = det.save(tmp_path / "model")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["name"] == name
    loaded = Detector.load(path)
    assert type(loaded) is cls
    def norm(p):  # JSON turns tuples into lists
        return json.loads(json.dumps(p))

    assert norm(loaded.get_params()) == norm(det.get_params())
    res2 = loaded.score(test)
    np.testing.assert_allclose(res2.score, res.score, rtol=1e-5, atol=1e-6)
    if res.map is not None:
        np.testing.assert_allclose(res2.map, res.map, rtol=1e-5, atol=1e-5)
    assert loaded.threshold_ == det.threshold_
    np.testing.assert_array_equal(loaded.predict(test).label, pred.label)


@pytest.mark.parametrize("name", registry.available())
def test_detector_rejects_bad_input(name):
    cls = registry.get(name)
    det = cls(**cls.conformance_params)
    with pytest.raises(InputError):
        det.fit(np.zeros((0,) + (cls.conformance_shape or DEFAULT_SHAPES[cls.input_kind]), np.float32))
    bad = np.full((4,) + (cls.conformance_shape or DEFAULT_SHAPES[cls.input_kind]), np.nan, np.float32)
    with pytest.raises(InputError):
        det.fit(bad, y=np.zeros(4, int) if cls.supervised else None)


def test_registry_lists_the_baselines():
    names = registry.available()
    assert "intensity" in names, "the image baseline must be registered"
    assert "features" in names, "the signal baseline must be registered"
