"""PNG overlays and signal plots (medad.report.overlay)."""

from __future__ import annotations

import numpy as np
import pytest

from medad.errors import InputError
from medad.report import save_overlay, save_signal_plot


def _read_png(path):
    import matplotlib.image as mpimg

    return mpimg.imread(str(path))


def _blob(h=64, w=80):
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((yy - h / 2) ** 2 + (xx - w / 3) ** 2) / 60.0).astype(np.float32)


@pytest.mark.parametrize("rgb", [False, True])
def test_overlay_writes_png_grey_and_rgb(tmp_path, rgb):
    rng = np.random.default_rng(0)
    img = rng.random((64, 80, 3) if rgb else (64, 80)).astype(np.float32)
    m = _blob()
    out = save_overlay(img, m, tmp_path / "sub" / "ov.png", mask=m > 0.5, title="score 0.91 > threshold 0.40")
    assert out.is_file()
    px = _read_png(out)
    assert px.ndim == 3 and px.shape[0] > 100 and px.shape[1] > 3 * px.shape[0] // 2  # three panels side by side
    assert px[..., :3].std() > 0.05  # not blank
    assert not list(out.parent.glob(".*tmp*"))  # atomic: no temp file left


def test_overlay_channel_first_and_constant_map(tmp_path):
    img = np.zeros((3, 32, 32), np.float32)
    img[0] = 1.0
    out = save_overlay(img, np.zeros((32, 32)), tmp_path / "c.png")
    assert out.is_file()


def test_overlay_rejects_mismatched_map(tmp_path):
    with pytest.raises(InputError, match="does not match"):
        save_overlay(np.zeros((32, 32)), np.zeros((16, 16)), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_signal_plot_spans_and_attribution(tmp_path):
    sf = 100.0
    t = np.arange(int(sf * 20)) / sf
    x = np.stack([np.sin(2 * np.pi * f * t) for f in (1, 3, 5)]).astype(np.float32)
    attr = np.zeros_like(x)
    attr[:, 500:800] = 1.0
    out = save_signal_plot(x, sf, tmp_path / "sig.png", spans=[(5.0, 8.0, 0.9)], attribution=attr,
                           ch_names=["Fp1", "Fp2", "Cz"], title="recording r1: abnormal")
    px = _read_png(out)[..., :3]
    assert px.std() > 0.05
    # the red span tints pixels (red channel clearly above green and blue somewhere)
    assert ((px[..., 0] - px[..., 1:].max(-1)) > 0.2).any()


def test_signal_plot_long_1d_attribution_and_channel_cap(tmp_path):
    x = np.random.default_rng(1).standard_normal((20, 200_000)).astype(np.float32)
    out = save_signal_plot(x, 256.0, tmp_path / "long.png", attribution=np.abs(x[0]), max_channels=4)
    assert out.is_file()


def test_signal_plot_bad_input(tmp_path):
    with pytest.raises(InputError):
        save_signal_plot(np.zeros((2, 10)), 0.0, tmp_path / "a.png")
    with pytest.raises(InputError):
        save_signal_plot(np.zeros((2, 10)), 10.0, tmp_path / "a.png", attribution=np.zeros((3, 10)))
    with pytest.raises(InputError):
        save_signal_plot(np.zeros((2, 10)), 10.0, tmp_path / "a.png", ch_names=["a"])
