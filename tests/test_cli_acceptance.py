"""User-level acceptance checks of the CLI: commands run as a user types them (relative paths,
wrong settings, models of one pipeline handed to another command), small synthetic data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from medad.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def saved_pca(tmp_path_factory) -> Path:
    """A small saved, calibrated classical image detector."""
    from medad import registry

    rng = np.random.default_rng(0)
    det = registry.create("pca", n_components=4, image_size=16)
    det.fit(rng.normal(size=(30, 1, 32, 32)).astype(np.float32))
    det.calibrate(rng.normal(size=(20, 1, 32, 32)).astype(np.float32), fpr=0.05)
    return det.save(tmp_path_factory.mktemp("model") / "pca")


def test_report_after_explain_with_relative_out(tmp_path, saved_pca, monkeypatch):
    """`medad explain ... --out results/case` (relative, as typed) then `medad report results`:
    the figures are found (case.json used to store them relative to the working directory)."""
    rng = np.random.default_rng(1)
    np.save(tmp_path / "item.npy", rng.normal(size=(1, 1, 32, 32)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    r = _cli(["explain", saved_pca, "item.npy", "--out", "results/case1", "--method", "kernel_shap",
              "--n-samples", "16", "--n-segments", "4"])
    assert r.exit_code == 0, r.output
    r = _cli(["report", "results"])
    assert r.exit_code == 0, r.output
    assert "skipped" not in r.output
    index = (tmp_path / "results" / "index.html").read_text()
    assert "case1/report.html" in index
    # the whole results folder can be moved and reported again
    (tmp_path / "results").rename(tmp_path / "moved")
    r = _cli(["report", "moved"])
    assert r.exit_code == 0 and "skipped" not in r.output, r.output


def test_report_names_the_missing_figure(tmp_path):
    from medad.report.folder import build_reports
    from medad.report.html import CaseReport, Figure, write_case

    case = tmp_path / "c"
    case.mkdir()
    write_case(case, CaseReport(case_id="c", decision="normal", figures=[Figure(png=str(case / "gone.png"),
                                                                                title="x")]))
    _, done, failed = build_reports(tmp_path)
    assert not done and failed and "gone.png" in failed[0][1]


def _frames(folder: Path, n: int, seed: int, defect: bool = False) -> Path:
    """``n`` textured 0-255 RGB PNG frames (a bright square in each when ``defect``)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        im = (120 + 30 * rng.standard_normal((48, 48, 3))).clip(0, 255).astype(np.uint8)
        if defect:
            im[12:30, 14:32] = (40, 250, 250)
        cv2.imwrite(str(folder / f"frame_{i:03d}.png"), im)
    return folder


def test_explain_frames_model_scores_as_screening_did(tmp_path):
    """`medad explain` on a `medad images train` model applies the model's frame preprocessing
    (resize + [0, 1] scaling): the explained score equals the screened frame's score (it used to
    be computed on 0-255 values: a score 100x off and the wrong decision)."""
    import csv

    normal = _frames(tmp_path / "normal", 12, 0)
    test = _frames(tmp_path / "test", 2, 1, defect=True)
    r = _cli(["images", "train", normal, "--detector", "pca", "--image-size", "32", "--out", tmp_path / "m"])
    assert r.exit_code == 0, r.output
    r = _cli(["images", "screen", tmp_path / "m", test, "--out", tmp_path / "s", "--no-overlays"])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "s" / "frames.csv") as fh:
        screened = float(next(csv.DictReader(fh))["score"])
    r = _cli(["explain", tmp_path / "m", test / "frame_000.png", "--out", tmp_path / "e", "--method", "kernel_shap",
              "--n-samples", "16", "--n-segments", "4"])
    assert r.exit_code == 0, r.output
    import json

    case = json.loads((tmp_path / "e" / "case.json").read_text())
    assert case["score"] == pytest.approx(screened, rel=1e-4)
    # a video is screened, not explained whole: a clear error
    (tmp_path / "clip.mp4").write_bytes(b"x")
    r = _cli(["explain", tmp_path / "m", tmp_path / "clip.mp4", "--out", tmp_path / "e2"])
    assert r.exit_code != 0 and "image files" in str(r.exception or r.output)


def _recordings(folder: Path, n: int, seed: int, burst: bool = False, sf: float = 100.0) -> Path:
    """``n`` 20 s single-channel text recordings (a large 8 Hz burst at 8-14 s when ``burst``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(20 * sf)) / sf
    for i in range(n):
        x = np.sin(2 * np.pi * 2 * t + rng.uniform(0, 6)) + 0.5 * rng.standard_normal(len(t))
        if burst:
            x[int(8 * sf):int(14 * sf)] += 12 * np.sin(2 * np.pi * 8 * t[int(8 * sf):int(14 * sf)])
        np.savetxt(folder / f"r{i:02d}.txt", x, fmt="%.5f")
    return folder


@pytest.fixture(scope="module")
def screening_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("screen")
    normal = _recordings(root / "normal", 6, 0)
    r = _cli(["screen", "train", normal, "--text-sfreq", "100", "--out", root / "model"])
    assert r.exit_code == 0, r.output
    return root / "model"


def test_explain_screening_model_uses_its_preprocessing(tmp_path, screening_model):
    """`medad explain` on a `medad screen train` model folder explains the recording as screening
    saw it: same max window score, same decision, spans as in results.csv (it used to fail with
    'not a saved medad detector')."""
    import json

    test = _recordings(tmp_path / "test", 1, 5, burst=True)
    r = _cli(["screen", "run", screening_model, test, "--out", tmp_path / "s", "--no-plots"])
    assert r.exit_code == 0, r.output
    screened = json.loads((tmp_path / "s" / "results.json").read_text())["recordings"][0]
    assert screened["decision"] == "abnormal"
    r = _cli(["explain", screening_model, test / "r00.txt", "--out", tmp_path / "e", "--top-k", "1",
              "--n-samples", "16", "--n-segments", "4"])
    assert r.exit_code == 0, r.output
    case = json.loads((tmp_path / "e" / "case.json").read_text())
    assert case["decision"] == "abnormal"
    assert case["score"] == pytest.approx(screened["max_score"], rel=1e-5)
    assert case["details"]["flagged spans (s)"].startswith(f"{screened['intervals'][0]['start_s']:.1f}")
    assert len(case["figures"]) == 1 and (tmp_path / "e" / case["figures"][0]["png"]).is_file()
    start = float(Path(case["figures"][0]["png"]).stem.split("_")[-1].rstrip("s"))  # <method>_<start>s.png
    assert 6.0 <= start <= 14.0  # the explained (best) window overlaps the burst at 8-14 s


def test_screening_config_errors_name_the_file(tmp_path):
    from medad.errors import ConfigError

    normal = _recordings(tmp_path / "normal", 2, 0)
    for text, what in [("screening:\n  detectr: features\n", "detectr"),
                       ("screening:\n  window_seconds: -1\n", "step_seconds"),
                       ("screening:\n  detector_params: 3\n", "mapping"),
                       ("screening: [1, 2]\n", "invalid")]:
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(text)
        r = _cli(["screen", "train", normal, "--config", cfg, "--out", tmp_path / "m"])
        assert isinstance(r.exception, ConfigError), (text, r.exception)
        assert "bad.yaml" in str(r.exception) and what in str(r.exception), str(r.exception)


def test_screen_run_rejects_bad_annotated_copy_before_work(tmp_path, screening_model):
    from medad.errors import ConfigError

    test = _recordings(tmp_path / "test", 1, 5)
    r = _cli(["screen", "run", screening_model, test, "--out", tmp_path / "s", "--annotated-copy", "xyz"])
    assert isinstance(r.exception, ConfigError) and "annotated_copy" in str(r.exception)
    assert not (tmp_path / "s" / "results.csv").exists()
    # text input: MNE annotations and the annotated copy are written for it too
    r = _cli(["screen", "run", screening_model, test, "--out", tmp_path / "s", "--annotated-copy", "fif",
              "--no-plots"])
    assert r.exit_code == 0, r.output
    import json

    outputs = json.loads((tmp_path / "s" / "results.json").read_text())["recordings"][0]["outputs"]
    assert {"r00-annot.fif", "r00_screened_raw.fif"} <= set(outputs), outputs
    assert all((tmp_path / "s" / o).is_file() for o in outputs), outputs


def test_report_on_screening_and_frame_results(tmp_path, screening_model):
    """`medad report` over the outputs of `medad screen run` and `medad images screen`: one page per
    recording (decision, score, threshold, its PNG), the unreadable recording listed with its
    problem, one page for the video's frames (not a loose page for overlays/)."""
    from medad.report.html import check_self_contained

    rec = _recordings(tmp_path / "rec", 2, 5, burst=True)
    (rec / "broken.txt").write_text("not a number\n")
    r = _cli(["screen", "run", screening_model, rec, "--out", tmp_path / "results" / "eeg"])
    assert r.exit_code == 0, r.output
    normal = _frames(tmp_path / "normal", 12, 0)
    test = _frames(tmp_path / "video", 3, 1, defect=True)
    r = _cli(["images", "train", normal, "--detector", "pca", "--image-size", "32", "--out", tmp_path / "m"])
    assert r.exit_code == 0, r.output
    r = _cli(["images", "screen", tmp_path / "m", test, "--out", tmp_path / "results" / "video"])
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "results" / "video" / "overlays").glob("*.png"))

    r = _cli(["report", tmp_path / "results"])
    assert r.exit_code == 0, r.output
    eeg = tmp_path / "results" / "eeg"
    for rid in ("r00", "r01"):
        page = (eeg / f"{rid}_report.html").read_text()
        assert "abnormal" in page and "data:image/png;base64," in page and check_self_contained(page) == []
    assert not (eeg / "broken_report.html").exists()
    index = (tmp_path / "results" / "index.html").read_text()
    assert "eeg/r00_report.html" in index and "video/report.html" in index
    assert "eeg/broken" in index and "non-numeric" in index
    assert "overlays/report.html" not in index
    video = (tmp_path / "results" / "video" / "report.html").read_text()
    assert video.count("data:image/png;base64,") >= 1 and "abnormal" in video


def test_screen_train_says_what_it_needs(tmp_path):
    """Text recordings without a rate: the error names a file and the CLI option. Too few held-out
    normal windows for the asked false-positive rate: a warning, kept in screening.json."""
    import json

    from medad.errors import ConfigError

    normal = _recordings(tmp_path / "normal", 3, 0)
    r = _cli(["screen", "train", normal, "--out", tmp_path / "m"])
    assert isinstance(r.exception, ConfigError) and "--text-sfreq" in str(r.exception)
    assert ".txt" in str(r.exception)
    r = _cli(["screen", "train", normal, "--text-sfreq", "100", "--out", tmp_path / "m"])
    assert r.exit_code == 0, r.output
    assert "cannot resolve window_fpr=0.01" in r.output
    cal = json.loads((tmp_path / "m" / "screening.json").read_text())["calibration"]
    assert "add normal recordings" in cal["warning"]


def test_screen_run_fails_when_nothing_could_be_screened(tmp_path, screening_model):
    """One bad recording among good ones is reported and the run succeeds; when no recording at
    all could be screened the command fails (exit code 2 from `medad`), after writing results.csv."""
    from medad.errors import ReadError

    bad = tmp_path / "bad.txt"
    bad.write_text("")
    r = _cli(["screen", "run", screening_model, bad, "--out", tmp_path / "s"])
    assert isinstance(r.exception, ReadError) and "none of the 1 recording(s)" in str(r.exception)
    assert "bad.txt" in str(r.exception) and (tmp_path / "s" / "results.csv").is_file()


@pytest.mark.parametrize("option, value", [("--n-samples", "1"), ("--top-k", "0"), ("--n-segments", "1")])
def test_explain_refuses_settings_that_make_an_empty_explanation(saved_pca, tmp_path, option, value):
    """LIME/KernelSHAP with 1 evaluation wrote an all-zero map; --top-k 0 still explained one
    window: such values are refused before anything is read."""
    np.save(tmp_path / "x.npy", np.zeros((1, 32, 32), np.float32))
    r = _cli(["explain", saved_pca, tmp_path / "x.npy", "--out", tmp_path / "e", option, value])
    # the wording of the range message differs between click versions; the option is always named
    assert r.exit_code == 2 and f"Invalid value for '{option}'" in r.output and not (tmp_path / "e").exists()
