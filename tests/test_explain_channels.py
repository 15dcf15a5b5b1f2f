"""``medad explain --channels`` on a recording model: a recording lacking the model's channel is
refused with the reason naming ``--channels`` (as ``medad screen run`` skips it); with
``--channels NAME`` the named channel is explained in the model's place, matched by the same code
(``ScreeningModel.use_channels`` -> ``match_channels``) and scored as ``screen run --channels``
scores it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_pipeline_screening import _eeg, _write_edf

from medad.errors import ConfigError, ReadError
from pipelines.screening import ScreeningConfig, train_screening


def _cli(args):
    from typer.testing import CliRunner

    from medad.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def cz_model(tmp_path_factory):
    """A model trained on EDFs of one named channel (Cz), and a 3-channel EDF without Cz whose C3
    holds spikes (Fp1 and O1 are background)."""
    root = tmp_path_factory.mktemp("explain_channels")
    normals, test = root / "normals", root / "test"
    normals.mkdir()
    test.mkdir()
    for i in range(5):
        _write_edf(normals / f"n{i}.edf", _eeg(30, 1, seed=200 + i), names=["Cz"])
    x = _eeg(30, 3, seed=210)
    x[1] = _eeg(30, 1, seed=211, spikes=(10.0, 20.0))[0]
    _write_edf(test / "other.edf", x, names=["Fp1", "C3", "O1"])
    cfg = ScreeningConfig(bandpass=[0.5, 40.0], notch=None, window_fpr=0.02, val_fraction=0.4,
                          detector_params={"amplitude": True})
    model = train_screening(normals, root / "model", cfg, progress=False)
    assert json.loads((model / "screening.json").read_text())["channels"] == ["Cz"]
    return root, model, test / "other.edf"


def test_explain_refuses_a_recording_without_the_models_channel(cz_model, tmp_path):
    root, model, rec = cz_model
    r = _cli(["explain", model, rec, "--out", tmp_path / "e", "--top-k", "1", "--n-samples", "16",
              "--n-segments", "4"])
    assert isinstance(r.exception, ReadError), r.output
    problem = str(r.exception)
    assert "trained on channel 'Cz'" in problem and "Fp1, C3, O1" in problem and "--channels" in problem
    assert not (tmp_path / "e" / "case.json").exists()


def test_explain_with_channels_explains_the_named_channel_as_screen_run_scores_it(cz_model, tmp_path):
    root, model, rec = cz_model
    r = _cli(["screen", "run", model, rec, "--out", tmp_path / "s", "--channels", "C3", "--no-overlays"])
    assert r.exit_code == 0, r.output
    screened = json.loads((tmp_path / "s" / "results.json").read_text())["recordings"][0]
    assert screened["status"] == "ok" and screened["channels"] == ["C3"] and screened["decision"] == "abnormal"
    r = _cli(["explain", model, rec, "--out", tmp_path / "e", "--channels", "c3", "--top-k", "1",
              "--n-samples", "16", "--n-segments", "4"])
    assert r.exit_code == 0, r.output
    case = json.loads((tmp_path / "e" / "case.json").read_text())
    assert case["decision"] == "abnormal"
    assert case["score"] == pytest.approx(screened["max_score"], rel=1e-5)
    assert case["details"]["channels"] == "C3 (chosen with --channels in place of the model's Cz)"
    assert len(case["figures"]) == 1 and (tmp_path / "e" / case["figures"][0]["png"]).is_file()
    start = float(Path(case["figures"][0]["png"]).stem.split("_")[-1].rstrip("s"))  # <method>_<start>s.png
    assert 6.0 <= start <= 20.0  # the explained (best) window overlaps C3's spikes at 10-20 s
    # another channel of the same recording: background, so a lower score than the spiking one
    r = _cli(["explain", model, rec, "--out", tmp_path / "e2", "--channels", "O1", "--top-k", "1",
              "--n-samples", "16", "--n-segments", "4"])
    assert r.exit_code == 0, r.output
    other = json.loads((tmp_path / "e2" / "case.json").read_text())
    assert other["details"]["channels"].startswith("O1 ") and other["score"] < case["score"]


def test_explain_channels_errors(cz_model, tmp_path):
    root, model, rec = cz_model
    # as many names as the model has channels, checked before the recording is read
    r = _cli(["explain", model, rec, "--out", tmp_path / "e", "--channels", "Fp1,C3"])
    assert isinstance(r.exception, ConfigError) and "takes 1 channel(s)" in str(r.exception), r.output
    assert not (tmp_path / "e").exists()
    # a channel the recording lacks: named, with what it may be
    r = _cli(["explain", model, rec, "--out", tmp_path / "e", "--channels", "C4"])
    assert isinstance(r.exception, ReadError) and "chosen with --channels not found: 'C4'" in str(r.exception)
    # no names at all
    r = _cli(["explain", model, rec, "--out", tmp_path / "e", "--channels", " , "])
    assert r.exit_code == 2 and "--channels" in r.output


def test_explain_channels_is_refused_for_a_model_that_is_not_a_recording_model(tmp_path):
    from medad import registry

    rng = np.random.default_rng(0)
    det = registry.create("pca", n_components=4, image_size=16)
    det.fit(rng.normal(size=(30, 1, 32, 32)).astype(np.float32))
    det.calibrate(rng.normal(size=(20, 1, 32, 32)).astype(np.float32), fpr=0.05)
    saved = det.save(tmp_path / "pca")
    np.save(tmp_path / "x.npy", rng.normal(size=(1, 32, 32)).astype(np.float32))
    r = _cli(["explain", saved, tmp_path / "x.npy", "--out", tmp_path / "e", "--channels", "Fp1"])
    assert r.exit_code == 2 and "--channels" in r.output and "screen train" in r.output
    assert not (tmp_path / "e").exists()


def test_explain_help_shares_the_screen_run_channels_wording():
    from medad.commands.signals import CHANNELS_HELP

    for cmd in (["explain"], ["screen", "run"]):
        r = _cli(cmd + ["--help"])
        assert r.exit_code == 0
        assert " ".join(CHANNELS_HELP.split()[:12]) in " ".join(r.output.replace("│", " ").split())
