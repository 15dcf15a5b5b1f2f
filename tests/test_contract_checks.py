"""Contract checks every detector shares (third user audit): set_params, items of another rank or
channel count than the training items, supervised labels of one class."""

from __future__ import annotations

import numpy as np
import pytest

from medad import registry
from medad.detectors.base import Detector
from medad.errors import ConfigError, InputError


def _fitted(name, x):
    det = registry.create(name, **registry.get(name).conformance_params)
    return det.fit(x)


def test_set_params_round_trips_and_refuses_unknown_names():
    det = registry.create("pca", n_components=3)
    assert det.set_params(n_components=5) is det and det.get_params()["n_components"] == 5
    with pytest.raises(ConfigError, match="no parameter nope; known: .*n_components"):
        det.set_params(nope=1)


@pytest.mark.parametrize("name", ["intensity", "pca", "patchcore"])
def test_items_of_another_layout_are_a_clear_error_also_after_load(name, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (12, 1, 16, 16)).astype(np.float32)
    det = _fitted(name, x)
    for d in (det, Detector.load(det.save(tmp_path / name))):
        with pytest.raises(InputError, match="fitted on items with 1 channels; got 2"):
            d.score(np.repeat(x[:2], 2, axis=1))
        with pytest.raises(InputError, match="fitted on items of 2 spatial/time dimension"):
            d.score(x[:2, :, :, :, None].repeat(3, axis=-1))
        assert d.score(x[:2]).score.shape == (2,)


def test_a_supervised_detector_needs_both_classes():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (8, 1, 16, 16)).astype(np.float32)
    with pytest.raises(InputError, match="one class only"):
        _fitted_sup = registry.create("classifier", **registry.get("classifier").conformance_params)
        _fitted_sup.fit(x, y=np.zeros(8, np.int64))


def test_loading_another_kind_of_model_folder_names_what_it_holds(tmp_path):
    """Detector.load on a score-fusion folder (or a brain model folder) says what the folder is and
    how to load it, instead of only 'not a saved medad detector'."""
    from medad.detectors.base import Detector
    from medad.errors import ReadError

    (tmp_path / "fusion.json").write_text("{}")
    with pytest.raises(ReadError, match="ScoreFusion.load"):
        Detector.load(tmp_path)
    brain = tmp_path / "brain"
    brain.mkdir()
    (brain / "brain_model.json").write_text("{}")
    with pytest.raises(ReadError, match="medad brain score"):
        Detector.load(brain)
    with pytest.raises(ReadError, match=r"model folder not found \(expected a saved medad detector\)"):
        Detector.load(tmp_path / "brain" / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReadError, match=r"no config.json\)$"):
        Detector.load(tmp_path / "empty")
    with pytest.raises(ReadError, match="is a file, not a model folder"):
        Detector.load(tmp_path / "fusion.json")
