"""Explanation maps (medad.explain): shapes for 1D/2D/3D, Grad-CAM finds a bright square,
LIME is not all zeros, detectors' anomaly scores can be explained, faithfulness beats random."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medad.detectors.base import AnomalyResult, Detector
from medad.detectors.torch_base import TorchDetector
from medad.errors import InputError
from medad.explain import METHODS, deletion_insertion, explain, default_layer, segment_mask, share_inside
from medad.explain.models import as_scalar_model

SIZE = 24


def _squares(n: int, rng: np.random.Generator):
    """Noise images; label 1 items carry a bright 6x6 square at a random place."""
    x = rng.normal(0, 0.3, (n, 1, SIZE, SIZE)).astype(np.float32)
    y = rng.integers(0, 2, n)
    boxes = np.zeros((n, SIZE, SIZE), bool)
    for i in range(n):
        r, c = rng.integers(1, SIZE - 7, 2)
        boxes[i, r:r + 6, c:c + 6] = True
        if y[i]:
            x[i, 0, r:r + 6, c:c + 6] += 2.0
    return x, y, boxes


def _cnn(dim: int = 2, cin: int = 1, n_out: int = 2) -> nn.Module:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
    pool = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}[dim]
    return nn.Sequential(conv(cin, 8, 3, padding=1), nn.ReLU(), conv(8, 8, 3, padding=1), nn.ReLU(),
                         pool(1), nn.Flatten(), nn.Linear(8, n_out))


@pytest.fixture(scope="module")
def square_model():
    """A small CNN trained (a few seconds) to tell images with a bright square from noise."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y, _ = _squares(96, rng)
    model = _cnn()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(8):
        for i in range(0, len(x), 32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[i:i + 32]), yt[i:i + 32]).backward()
            opt.step()
    model.eval()
    xs, ys, boxes = _squares(16, np.random.default_rng(1))
    acc = (model(torch.from_numpy(xs)).argmax(1).numpy() == ys).mean()
    assert acc >= 0.9, f"toy model did not learn the square task (accuracy {acc})"
    pos = np.flatnonzero(ys == 1)[:2]
    return model, xs[pos], boxes[pos]


def test_gradcam_lights_up_the_square(square_model):
    model, xs, boxes = square_model
    for x, box in zip(xs, boxes):
        m = explain(model, x, "gradcam", target=1)
        assert m.shape == (SIZE, SIZE)
        assert m[box].mean() > 3 * m[~box].mean()
        assert share_inside(m, box) > box.mean() * 2


def test_gradcam_batch_and_auto_layer(square_model):
    model, xs, _ = square_model
    maps = explain(model, xs, "gradcam", target=1)
    assert maps.shape == (len(xs), SIZE, SIZE)
    np.testing.assert_allclose(maps[0], explain(model, xs[0], "gradcam", target=1), rtol=1e-5, atol=1e-7)
    layer = default_layer(as_scalar_model(model, torch.from_numpy(xs[:1]), 1), torch.from_numpy(xs[:1]))
    assert layer is model[3]  # the activation after the last convolution: the last feature map
    by_name = explain(model, xs[0], "gradcam", target=1, layer="0")  # overridable by name
    assert by_name.shape == (SIZE, SIZE)


def test_lime_is_not_all_zeros_and_points_at_square(square_model):
    model, xs, boxes = square_model
    m = explain(model, xs[0], "lime", target=1, n_segments=36, n_samples=160)
    assert m.shape == (SIZE, SIZE)
    assert np.abs(m).max() > 0
    assert m[boxes[0]].mean() > m[~boxes[0]].mean()


@pytest.mark.parametrize("method", ["ig", "gradient_shap", "kernel_shap"])
def test_other_methods_favour_the_square(square_model, method):
    model, xs, boxes = square_model
    m = explain(model, xs[0], method, target=1, n_segments=36, n_samples=128 if method == "kernel_shap" else None)
    assert m.shape == (SIZE, SIZE) and np.isfinite(m).all()
    assert m[boxes[0]].mean() > m[~boxes[0]].mean()


def test_deletion_beats_random(square_model):
    model, xs, _ = square_model
    m = explain(model, xs[0], "gradcam", target=1)
    f = deletion_insertion(model, xs[0], m, target=1, steps=10, n_random=2)
    assert f["scale"].startswith("log-odds")  # default: the curves follow the logits, not a saturating probability
    assert f["deletion_auc"] < f["random_deletion_auc"] and f["deletion_margin"] > 0.1
    assert f["insertion_auc"] > f["random_insertion_auc"]
    assert len(f["deletion_curve"]) == 11
    # the probability-scale figures come from the same forward passes and agree with output="probability"
    p = deletion_insertion(model, xs[0], m, target=1, steps=10, n_random=2, output="probability")
    assert p["scale"] == "probability" and p["deletion_auc"] == pytest.approx(f["probability"]["deletion_auc"], abs=1e-5)
    assert 0.0 <= p["deletion_auc"] <= 1.0 and p["deletion_margin"] > 0
    # region perturbation: 4x4 blocks ranked by their mean attribution, random block orders as the control
    b = deletion_insertion(model, xs[0], m, target=1, steps=10, n_random=2, patch=4)
    assert len(b["deletion_curve"]) == 11 and b["deletion_margin"] > 0
    with pytest.raises(InputError, match="output"):
        deletion_insertion(model, xs[0], m, target=1, output="softmax")
    # an array baseline (e.g. background value outside an organ) gives the same as the equal scalar
    g = deletion_insertion(model, xs[0], m, target=1, steps=10, n_random=2, baseline=np.zeros_like(xs[0]))
    assert g["deletion_auc"] == pytest.approx(f["deletion_auc"])
    with pytest.raises(InputError, match="does not match"):
        deletion_insertion(model, xs[0], m[:5], target=1)


@pytest.mark.parametrize("dim,item", [(1, (2, 64)), (2, (3, 16, 20)), (3, (1, 8, 10, 6))])
@pytest.mark.parametrize("method", list(METHODS))
def test_maps_have_the_input_shape(dim, item, method):
    torch.manual_seed(0)
    model = _cnn(dim, item[0], 3)
    x = np.random.default_rng(0).normal(size=item).astype(np.float32)
    m = explain(model, x, method, target=2, n_samples=24, n_segments=8, n_steps=8)
    assert m.shape == item[1:] and m.dtype == np.float32 and np.isfinite(m).all()


def test_segment_masks():
    x = np.random.default_rng(0).random((2, 100)).astype(np.float32)
    seg = segment_mask(x, 1, 10)
    assert seg.shape == (100,) and set(np.unique(seg)) == set(range(10))
    assert segment_mask(x, 1, 10, per_channel=True).max() == 19
    img = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    sp = segment_mask(img, 2, 16)
    assert sp.shape == (32, 32) and sp.min() == 0 and len(np.unique(sp)) == sp.max() + 1 > 4
    vol = np.random.default_rng(0).random((1, 12, 12, 12)).astype(np.float32)
    assert len(np.unique(segment_mask(vol, 3, 8))) > 2


class _SmoothEnergy(TorchDetector):
    """A hand-set torch detector: score = mean squared 3x3-smoothed intensity (no training)."""

    input_kind = "image"

    def __init__(self, batch_size: int = 8, device: str = "cpu"):
        self.batch_size = batch_size
        self.device = device

    def _build_net(self):
        conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(conv.weight, 1 / 9)
        return conv

    def _score_batch(self, net, xb):
        m = net(xb)[:, 0] ** 2
        return m.flatten(1).mean(1), m


class _MaxIntensity(Detector):
    """A non-neural detector: score = the brightest pixel (a black box for explain)."""

    input_kind = "image"

    def _score(self, x):
        return AnomalyResult(score=x.reshape(len(x), -1).max(1).astype(np.float64))


def _square_image():
    x = np.zeros((1, SIZE, SIZE), np.float32)
    x[0, 4:10, 12:18] = 3.0
    box = x[0] > 0
    return x, box


def test_detector_anomaly_score_is_explained():
    det = _SmoothEnergy()
    det.in_shape_ = [1, SIZE, SIZE]
    det.net_ = det._build_net()
    det.fitted_ = True
    x, box = _square_image()
    x = x + np.random.default_rng(0).normal(0, 0.05, x.shape).astype(np.float32)
    for method in ("gradcam", "ig", "kernel_shap"):
        m = explain(det, x, method, n_segments=36, n_samples=96)
        assert m.shape == (SIZE, SIZE)
        assert m[box].mean() > m[~box].mean(), method
    f = deletion_insertion(det, x, explain(det, x, "ig"), steps=10, n_random=1)
    assert f["scale"].startswith("score relative") and f["deletion_margin"] > 0
    with pytest.raises(InputError, match="target"):
        explain(det, x, "gradcam", target=1)


def test_blackbox_detector_perturbation_only():
    det = _MaxIntensity()
    det.fitted_ = True
    x, box = _square_image()
    m = explain(det, x, "kernel_shap", spatial_dims=2, n_segments=16, n_samples=64)
    assert m.shape == (SIZE, SIZE) and m[box].mean() > m[~box].mean()
    # segments that already equal the baseline (the empty background) get exactly zero
    assert (m[~box] == 0).mean() > 0.5
    with pytest.raises(InputError, match="needs gradients"):
        explain(det, x, "gradcam", spatial_dims=2)


def test_bad_requests(square_model):
    model, xs, _ = square_model
    with pytest.raises(InputError, match="unknown explanation method"):
        explain(model, xs[0], "magic")
    with pytest.raises(InputError, match="neither one item"):
        explain(model, xs[0, 0, 0], "gradcam")
    with pytest.raises(InputError, match="out of range"):
        explain(model, xs[0], "gradcam", target=5)
    with pytest.raises(InputError, match="no layer named"):
        explain(model, xs[0], "gradcam", target=1, layer="nope")
    bad = xs[0].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        explain(model, bad, "ig", target=1)


def test_block_ids_cover_the_grid():
    from medad.explain.faithfulness import _block_ids

    ids, n = _block_ids((8, 6), 4)
    assert n == 4 and ids.shape == (8, 6)
    assert np.bincount(ids.ravel()).tolist() == [16, 8, 16, 8]  # edge blocks are smaller
    ids1, n1 = _block_ids((5,), 1)
    assert n1 == 5 and ids1.tolist() == [0, 1, 2, 3, 4]


class _Scaled(nn.Module):
    def __init__(self, net: nn.Module, factor: float):
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x):
        return self.net(x) * self.factor


class _SaturatedClassifier(TorchDetector):
    """A supervised torch detector whose abnormal probability (1 - softmax[normal]) is 1.0 in
    float32 on the square items: the square CNN with its logits scaled up."""

    input_kind = "image"
    supervised = True

    def __init__(self, batch_size: int = 8, device: str = "cpu"):
        self.batch_size = batch_size
        self.device = device

    def _score_batch(self, net, xb):
        return 1.0 - torch.softmax(net(xb), dim=1)[:, 0], None


def test_saturated_probability_detector_is_explained_through_log_odds(square_model):
    model, xs, boxes = square_model
    det = _SaturatedClassifier()
    det.in_shape_ = [1, SIZE, SIZE]
    det.net_ = _Scaled(model, 200.0)
    det.fitted_ = True
    x = xs[0]
    assert det.score(x[None]).score[0] == 1.0  # saturated: its gradient is exactly zero
    wrapped = as_scalar_model(det, torch.from_numpy(x[None]))
    assert wrapped.explained.startswith("log-odds") and wrapped.is_probability
    with torch.no_grad():
        lo = float(wrapped(torch.from_numpy(x[None]))[0])
    assert lo > 20  # far beyond what float32 probabilities resolve
    m = explain(det, x, "gradcam")
    assert np.abs(m).max() > 0 and m[boxes[0]].mean() > m[~boxes[0]].mean()
    f = deletion_insertion(det, x, m, steps=10, n_random=2)
    assert f["scale"].startswith("log-odds") and f["deletion_margin"] > 0
    # an unbounded anomaly score is not mistaken for a probability
    energy = _SmoothEnergy()
    energy.in_shape_ = [1, SIZE, SIZE]
    energy.net_ = energy._build_net()
    energy.fitted_ = True
    assert not as_scalar_model(energy, torch.from_numpy(x[None])).is_probability


def test_gradient_shap_uses_the_baseline_as_given():
    """On a linear model GradientSHAP is exactly (x - baseline) * weight: the baseline is not
    blurred with noise (noisy baselines made it lose to random maps on Bonn EEG windows). A stack
    of reference items is a baseline distribution, for GradientSHAP only."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 1))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, SIZE, SIZE)).astype(np.float32)
    ref = rng.normal(size=(1, SIZE, SIZE)).astype(np.float32)
    w = lin[1].weight.detach().numpy().reshape(SIZE, SIZE)
    m = explain(lin, x, "gradient_shap", spatial_dims=2, baseline=ref, n_samples=16)
    np.testing.assert_allclose(m, (x[0] - ref[0]) * w, atol=1e-5)
    same = explain(lin, x, "gradient_shap", spatial_dims=2, baseline=np.stack([ref, ref, ref]), n_samples=16)
    np.testing.assert_allclose(same, m, atol=1e-5)
    two = explain(lin, x, "gradient_shap", spatial_dims=2, baseline=np.stack([ref, 0 * ref]), n_samples=64)
    assert not np.allclose(two, m, atol=1e-3)  # baselines drawn from both references
    noisy = explain(lin, x, "gradient_shap", spatial_dims=2, baseline=ref, n_samples=16, noise=0.1)
    assert not np.allclose(noisy, m, atol=1e-3) and np.corrcoef(noisy.ravel(), m.ravel())[0, 1] > 0.9
    with pytest.raises(InputError, match="only used by gradient_shap"):
        explain(lin, x, "ig", spatial_dims=2, baseline=np.stack([ref, ref]))


def test_explain_leaves_the_network_in_its_mode(square_model):
    """Explaining switches the network to eval mode and back to exactly what it was (batch norm
    and dropout of a detector's network must not be left in training mode)."""
    det = _SmoothEnergy()
    det.in_shape_ = [1, SIZE, SIZE]
    det.net_ = nn.Sequential(det._build_net(), nn.BatchNorm2d(1), nn.Dropout(0.1))
    det.fitted_ = True
    x, _ = _square_image()
    for mode in (False, True):
        det.net_.train(mode)
        explain(det, x, "ig", n_steps=4)
        deletion_insertion(det, x, np.ones((SIZE, SIZE)), steps=4, n_random=1)
        assert all(mod.training == mode for mod in det.net_.modules())


def test_bench_part_header_says_where_figures_come_from():
    """A benchmark part kept from an earlier run names that run, its threads and load, and says
    when its GradientSHAP row comes from the earlier implementation."""
    from medad.bench.explain import GRADIENT_SHAP_IMPL, _kept, _part_header

    previous = {"environment": {"date": "D1"}, "threads": 2, "load_average_before": [0.5],
                "load_average_after": [0.6], "brats": {"methods": {}}, "bonn": {"gradient_shap_impl": GRADIENT_SHAP_IMPL}}
    old = _part_header(_kept(previous, "brats"))
    assert "run of D1" in old and "torch threads 2" in old and "earlier GradientSHAP" in old
    new = _part_header(_kept(previous, "bonn"))
    assert "earlier GradientSHAP" not in new


class _LSTMScore(nn.Module):
    """A recurrent scorer (B, C, T) -> (B,), like the LSTM/GRU beat models."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(2, 8, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        out, _ = self.rnn(x.transpose(1, 2))
        return self.head(out[:, -1]).squeeze(-1)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_gradient_maps_of_a_recurrent_model_in_eval_mode(device):
    """Gradient maps of an LSTM in eval mode (on a GPU, cuDNN refuses the RNN backward outside
    training mode: medad explain of a seq_ae model failed there); the model stays in eval mode
    and its maps are finite and not all zero."""
    torch.manual_seed(0)
    net = _LSTMScore().eval()
    x = np.random.default_rng(0).normal(size=(2, 2, 40)).astype(np.float32)
    for method in ("ig", "gradient_shap"):
        m = explain(net, x, method=method, spatial_dims=1, device=device, n_samples=8)
        assert m.shape == (2, 40) and np.isfinite(m).all() and np.abs(m).max() > 0
    assert not net.training and torch.backends.cudnn.enabled


def test_gradcam_of_a_spectrogram_cnn_on_signals():
    """cnn2d sees a signal (B, C, T) as a time-frequency image: Grad-CAM failed with "no layer with a
    spatial feature map found" on every cnn2d screening model; its map over (frequency, time) is
    averaged over frequency, one value per sample."""
    from medad import registry

    rng = np.random.default_rng(0)
    t = np.arange(256) / 64.0
    normal = rng.normal(0, 1, (40, 1, 256)).astype(np.float32)
    burst = normal.copy()
    burst[:, :, 128:] += (3 * np.sin(2 * np.pi * 12 * t[128:])).astype(np.float32)  # a burst in the second half
    det = registry.create("cnn2d", **{**registry.get("cnn2d").conformance_params, "epochs": 4})
    det.fit(np.concatenate([normal, burst]), y=np.r_[np.zeros(40), np.ones(40)].astype(np.int64))
    m = explain(det, burst[0], "gradcam")
    assert m.shape == (256,) and np.isfinite(m).all() and m.max() > 0


@pytest.mark.parametrize("name", ["ae", "dae"])
def test_reconstruction_detectors_are_explained_through_the_python_api(name, tmp_path):
    """explain() on an AE/DAE failed with AttributeError '_generator' unless the detector had scored
    first (the CLI scores first, the documented Python call does not) -- also after load."""
    from medad import registry

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (12, 1, 16, 16)).astype(np.float32)
    det = registry.create(name, **registry.get(name).conformance_params)
    det.fit(x)
    for d in (det, Detector.load(det.save(tmp_path / name))):
        m = explain(d, x[0], "ig", n_steps=8)
        assert m.shape == (16, 16) and np.isfinite(m).all()
    np.testing.assert_allclose(det.score(x).score, det.score(x).score)  # scoring stays deterministic
