"""Signal transforms on synthetic signals with known content."""

from __future__ import annotations

import numpy as np
import pytest

from medad.errors import InputError
from medad.io.records import SignalRecord
from medad.transforms.signal import (
    Bandpass, Compose, Notch, Resample, RobustZScore, bandpass, group_robust_zscore, group_template, mel_filterbank,
    mel_spectrogram, mfcc, notch, resample, robust_zscore, stft, windows, zscore,
)

FS = 256.0


def _tone(freq, seconds=4.0, fs=FS, amp=1.0):
    t = np.arange(int(seconds * fs)) / fs
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _amp(x):
    e = x.shape[-1] // 4  # ignore filter edges
    return float(np.sqrt(2) * x[..., e:-e].std())


def test_bandpass_keeps_passband_removes_stopband():
    x = np.stack([_tone(10), _tone(60), _tone(0.2)])
    y = bandpass(x, FS, 1.0, 30.0)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert _amp(y[0]) == pytest.approx(1.0, abs=0.05)
    assert _amp(y[1]) < 0.02 and _amp(y[2]) < 0.05
    # zero phase: the passband tone is not shifted
    assert np.corrcoef(y[0, 256:-256], x[0, 256:-256])[0, 1] > 0.999
    assert _amp(bandpass(_tone(60), FS, None, 30.0)) < 0.02   # low-pass
    assert _amp(bandpass(_tone(0.2), FS, 1.0, None)) < 0.05   # high-pass
    assert _amp(bandpass(_tone(10), FS, 1.0, 500.0)) == pytest.approx(1.0, abs=0.05)  # high above Nyquist ignored
    with pytest.raises(InputError):
        bandpass(_tone(10), FS, 0.0, 30.0)


def test_notch_removes_mains_and_harmonic_only():
    x = _tone(50) + _tone(100) + _tone(20)
    y = notch(x, FS, 50.0)
    assert _amp(y - _tone(20)) < 0.05


def test_resample_polyphase():
    x = _tone(5, fs=1000.0)
    y = resample(x, 1000.0, 250.0)
    assert y.shape == (1000,)
    np.testing.assert_allclose(y[50:-50], _tone(5, fs=250.0)[50:-50], atol=0.02)
    z = resample(_tone(5, fs=173.61), 173.61, 128.0)  # non-integer ratio
    assert abs(z.shape[-1] - 4 * 128) <= 1
    # anti-aliasing: a tone above the new Nyquist is removed, not folded
    assert _amp(resample(_tone(100, fs=1000.0), 1000.0, 128.0)) < 0.05


def test_windows_with_overlap_and_start_times():
    x = np.arange(2 * 1000, dtype=np.float32).reshape(2, 1000)
    w, t = windows(x, 100.0, 2.0, 1.0)
    assert w.shape == (9, 2, 200)
    np.testing.assert_allclose(t, np.arange(9) * 1.0)
    np.testing.assert_array_equal(w[3, 1], x[1, 300:500])
    w2, t2 = windows(x[:, :950], 100.0, 2.0, 0.0, pad_last=True)
    assert w2.shape == (5, 2, 200) and t2[-1] == 8.0 and (w2[-1, :, 150:] == 0).all()
    assert windows(x[:, :50], 100.0, 2.0)[0].shape == (0, 2, 200)
    with pytest.raises(InputError):
        windows(x, 100.0, 2.0, 2.0)


def test_robust_zscore_is_amplitude_invariant_and_spike_robust():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (3, 5000)).astype(np.float32)
    z = robust_zscore(x)
    np.testing.assert_allclose(robust_zscore(x * 1e-6 + 5e-6), z, atol=1e-3)
    assert np.abs(np.median(z, axis=-1)).max() < 0.05
    assert np.abs(z.std(axis=-1) - 1).max() < 0.05
    spiked = x.copy()
    spiked[:, :10] = 1e4
    # a few huge spikes barely move the robust scale, but wreck the plain z-score
    assert np.abs(robust_zscore(spiked)[:, 100:] - z[:, 100:]).max() < 0.1
    assert np.abs(zscore(spiked)[:, 100:] - zscore(x)[:, 100:]).max() > 0.5
    assert (robust_zscore(np.zeros((2, 100))) == 0).all()
    wins = rng.normal(0, 1, (4, 2, 300))
    assert robust_zscore(wins).shape == (4, 2, 300)


def test_stft_mel_mfcc_shapes_and_peak():
    x = np.stack([_tone(32), _tone(80)])
    s, f = stft(x, FS, n_fft=128, hop=32)
    assert s.shape[:2] == (2, 65) and f[-1] == FS / 2
    assert f[s[0].mean(-1).argmax()] == pytest.approx(32, abs=2)
    assert f[s[1].mean(-1).argmax()] == pytest.approx(80, abs=2)
    m = mel_spectrogram(x, FS, n_fft=128, hop=32, n_mels=24)
    assert m.shape == (2, 24, s.shape[-1])
    assert m[1].mean(-1).argmax() > m[0].mean(-1).argmax()  # higher tone -> higher mel band
    c = mfcc(x, FS, n_mfcc=13, n_fft=128, hop=32, n_mels=24)
    assert c.shape == (2, 13, s.shape[-1]) and np.isfinite(c).all()
    assert not np.allclose(c[0], c[1])
    seq = c[0].T  # as a 1D sequence (frames, features)
    assert seq.shape == (s.shape[-1], 13)
    batch = mfcc(np.stack([x, x]), FS, n_fft=128, hop=32)  # (N, C, T) -> (N, C, 13, frames)
    assert batch.shape[:3] == (2, 2, 13)
    fb = mel_filterbank(8000, 256, 40)
    assert fb.shape == (40, 129) and (fb.sum(1) > 0).all()
    with pytest.raises(InputError):
        stft(np.zeros(10), FS, n_fft=128)


def test_compose_on_record():
    rec = SignalRecord(data=np.stack([_tone(10, fs=512.0) * 1e-5 + _tone(50, fs=512.0) * 1e-5]), sfreq=512.0,
                       ch_names=["c"])
    out = Compose([Bandpass(1, 40), Notch(50), Resample(128), RobustZScore()])(rec)
    assert out.sfreq == 128.0 and out.data.shape == (1, 512)
    assert rec.sfreq == 512.0  # the input record is untouched
    # a pure sine has IQR = sqrt(2) * amplitude: robust std = (1/sqrt 2) / (sqrt 2 / 1.349) = 0.674
    assert out.data[0, 64:-64].std() == pytest.approx(0.674, abs=0.03)
    ref = robust_zscore(_tone(10, seconds=4.0, fs=128.0))
    assert np.corrcoef(out.data[0, 64:-64], ref[64:-64])[0, 1] > 0.99  # the 50 Hz part is gone


def test_fft_zero_phase_matches_sosfiltfilt_and_combined_sos():
    from medad.transforms.signal import filter_sos, zero_phase

    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(3, 6000)), axis=1).astype(np.float32) + 3 * _tone(50, seconds=6000 / FS)
    sos = filter_sos(FS, 0.5, 45.0, notch_freq=50.0)
    assert sos.shape == (4 + 2, 6)  # order-4 band-pass (4 sections) + notches at 50 and 100 Hz
    a = zero_phase(x, sos, FS, method="sos")
    b = zero_phase(x, sos, FS, method="fft")
    e = 2000  # away from the ends: sosfiltfilt's short padding rings there for ~1500 samples
    assert np.abs(a - b)[:, e:-e].max() < 1e-3 * np.abs(a).max()
    assert filter_sos(FS) is None and (zero_phase(x, None, FS) == x).all()
    with pytest.raises(InputError):
        zero_phase(x, sos, FS, method="magic")


def test_detect_r_peaks_synthetic_and_real():
    from medad.config import data_root
    from medad.transforms.signal import detect_r_peaks

    fs = 360.0
    rng = np.random.default_rng(0)
    beats = np.cumsum(rng.uniform(0.6, 1.1, 40)) * fs
    t = np.arange(int(beats[-1] + fs))
    ecg = 0.05 * rng.normal(size=t.size) + 0.3 * np.sin(2 * np.pi * 0.3 * t / fs)  # noise + wander
    for b in beats.astype(int):
        ecg += -1.5 * np.exp(-0.5 * ((t - b) / (0.012 * fs)) ** 2)  # inverted QRS: polarity-free
    p = detect_r_peaks(ecg, fs)
    assert len(p) == len(beats)
    assert np.abs(p - beats.astype(int)).max() <= 3
    root = data_root(required=False)
    if root is None:
        pytest.skip("shared data root absent: real ECG part skipped")
    from medad.io.signals import read_signal

    rec = read_signal(root / "ecg/mitbih_subset/119")
    ref = np.loadtxt(root / "ecg/mitbih_subset/119_all_beats.csv", delimiter=",", skiprows=1)[:, 1].astype(int)
    p = detect_r_peaks(rec.data[0], rec.sfreq)
    def near(a, b):  # for each of a: a b within 50 ms
        i = np.clip(np.searchsorted(b, a), 1, len(b) - 1)
        return np.minimum(np.abs(b[i] - a), np.abs(b[i - 1] - a)) <= 0.05 * rec.sfreq

    assert near(ref, p).mean() > 0.99 and near(p, ref).mean() > 0.99  # sensitivity, PPV


def test_group_template_and_group_robust_zscore():
    rng = np.random.default_rng(0)
    beat_a, beat_b = np.sin(np.linspace(0, 3, 30)), np.cos(np.linspace(0, 3, 30))
    x = np.r_[beat_a + 0.01 * rng.normal(size=(9, 30)), beat_b + 0.01 * rng.normal(size=(9, 30))][:, None]
    x[4, 0] = 3 * beat_b  # one odd item among the first group's 9
    groups = np.array(["a"] * 9 + ["b"] * 9)
    t = group_template(x, groups)
    assert t.shape == x.shape
    assert np.abs(t[0, 0] - beat_a).max() < 0.02 and np.abs(t[-1, 0] - beat_b).max() < 0.02  # median: odd one ignored
    resid = np.abs(x - t).mean(axis=(1, 2))
    assert resid.argmax() == 4
    f = rng.normal(size=(40, 3))
    f[20:] = f[:20] * 10.0 + 5.0  # the same items at a second site with another gain and offset
    g = np.array([0] * 20 + [1] * 20)
    z = group_robust_zscore(f, g)
    np.testing.assert_allclose(z[20:], group_robust_zscore(f[:20], g[:20]), atol=1e-5)
    np.testing.assert_allclose(np.median(z[:20], axis=0), 0.0, atol=1e-6)
    with pytest.raises(InputError):
        group_template(x, groups[:3])
    with pytest.raises(InputError):
        group_robust_zscore(f, g[:5])


def test_beat_windows_detrend_and_beat_features():
    from medad.transforms.signal import (
        beat_feature_blocks, beat_template_features, beat_windows, detrend, group_std_normalise,
    )

    x = np.arange(20, dtype=np.float32)
    w = beat_windows(x, np.array([1, 10, 19]), 3, 2)
    assert w.shape == (3, 1, 5)
    np.testing.assert_array_equal(w[0, 0], [0, 0, 0, 1, 2])  # past the start: edge repeated
    np.testing.assert_array_equal(w[1, 0], [7, 8, 9, 10, 11])
    np.testing.assert_array_equal(w[2, 0], [16, 17, 18, 19, 19])
    assert beat_windows(x, np.zeros(0, int), 3, 2).shape == (0, 1, 5)
    line = 2.0 * np.arange(50) + 1.0
    assert np.abs(detrend(np.stack([line, -line]))).max() < 1e-3
    # a recording's gain goes, a beat's size relative to its recording's other beats stays
    rng = np.random.default_rng(1)
    b = rng.normal(size=(30, 1, 40)).astype(np.float32)
    b[0] *= 3
    g = np.zeros(30, int)
    np.testing.assert_allclose(group_std_normalise(5 * b, g), group_std_normalise(b, g), rtol=1e-5)
    assert group_std_normalise(b, g)[0].std() > 2 * group_std_normalise(b, g)[1].std()
    rr = np.tile([0.8, 0.8, 1.0], (30, 1))
    f = beat_template_features(b[:, 0], g, rr, step=4)
    assert f.shape == (30, sum(beat_feature_blocks(40, 4))) and beat_feature_blocks(40, 4) == [10, 4]
    assert beat_feature_blocks(252, 4) == [63, 4]
    np.testing.assert_allclose(f[:, 10:], [[1.0, 1.0, 1.0, 1.0]] * 30, rtol=1e-6)


def test_sample_entropy_orders_regular_below_noise_and_ignores_scale():
    """A sine is far more regular than white noise; a gain changes nothing (tolerance follows the
    std); a hand-counted tiny case gives -log((A+1)/(B+1))."""
    from medad.transforms.signal import sample_entropy

    rng = np.random.default_rng(0)
    t = np.arange(512) / FS
    x = np.stack([np.sin(2 * np.pi * 5 * t), rng.standard_normal(512)])[None]  # (1, 2, 512)
    se = sample_entropy(x)
    assert se.shape == (1, 2) and se[0, 0] < 0.5 < 1.5 < se[0, 1]
    np.testing.assert_allclose(sample_entropy(1e-3 * x), se, rtol=1e-5)
    np.testing.assert_allclose(sample_entropy(x, step=2)[0, 1], sample_entropy(x[..., ::2])[0, 1])
    # 0,1,0,1,0: std 0.49, r=0.2 -> tol 0.098. m=2 templates (first 3): 01,10,01 -> 1 pair;
    # m+1: 010,101,010 -> 1 pair. -log(2/2) = 0
    assert sample_entropy(np.array([0.0, 1, 0, 1, 0])) == pytest.approx(0.0)
    # 0,1,0,1,1: m=2 templates 01,10,01 -> 1 pair; 010,101,011 -> 0 pairs: -log(1/2)
    assert sample_entropy(np.array([0.0, 1, 0, 1, 1])) == pytest.approx(np.log(2.0))
    with pytest.raises(InputError):
        sample_entropy(np.zeros(3))
