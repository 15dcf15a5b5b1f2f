"""Supervised frame screening with several abnormal classes from the command line:
`medad images train NORMAL --abnormal YELLOW --abnormal blue=BLUE ...` (synthetic frames: a yellow
or a blue blob marks the two abnormal classes), the per-class validation record, screening that
names each flagged frame's class, Grad-CAM on the abnormality score, and the clear errors (a
source given twice, an abnormal source that is the normal one or nested in it, an empty class
folder, a name clash)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")

from medad.errors import ConfigError, InputError, ReadError  # noqa: E402
from pipelines.frames import (FramesConfig, abnormal_classes, flagged_spans, most_likely_abnormal,  # noqa: E402
                             train_frames)
from tests.test_frames_supervised import _cfg, _cli, _frames  # noqa: E402

BLUE = (40, 60, 250)
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "images_classifier.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multi")
    return {"normal": _frames(root / "normal", 40, 10), "yellow": _frames(root / "yellow", 30, 11, blob=True),
            "blue": _frames(root / "blue_blobs", 30, 12, blob=True, colour=BLUE),
            "test_yellow": _frames(root / "test" / "yellow", 6, 13, blob=True),
            "test_blue": _frames(root / "test" / "blue", 6, 14, blob=True, colour=BLUE),
            "test_normal": _frames(root / "test" / "normal", 6, 15)}


@pytest.fixture(scope="module")
def cli_model(data, tmp_path_factory) -> tuple[Path, str]:
    """Trained through the CLI: the yellow class named after its folder, the blue one by NAME=."""
    m = tmp_path_factory.mktemp("mc") / "m"
    r = _cli(["images", "train", data["normal"], "--abnormal", data["yellow"], "--abnormal", f"blue={data['blue']}",
              "--config", CONFIG, "--epochs", "8", "--image-size", "16", "--out", m])
    assert r.exit_code == 0, r.output
    return m, r.output


def test_cli_records_classes_and_per_class_validation(cli_model):
    m, output = cli_model
    rec = json.loads((m / "frames.json").read_text())
    assert rec["class_names"] == {"0": "normal", "1": "yellow", "2": "blue"}
    # 20 % of each class held out by folder (random share): 8 of 40, 6 of 30, 6 of 30
    assert [rec["classes"][k]["n_val"] for k in ("0", "1", "2")] == [8, 6, 6]
    assert rec["split"] == {k: "random share (folder)" for k in ("0", "1", "2")}
    v = rec["validation"]
    assert v["n_abnormal"] == 12 and set(v["per_class"]) == {"1", "2"}
    for k, name in (("1", "yellow"), ("2", "blue")):
        pc = v["per_class"][k]
        assert pc["name"] == name and pc["n_val"] == 6
        assert pc["frame_auroc"] > 0.9 and 0.0 <= pc["sensitivity"] <= 1.0
        # every flagged held-out frame of the class is named one of the two classes
        assert sum(pc["flagged_named"].values()) == round(pc["sensitivity"] * 6)
    assert v["naming_accuracy"] is None or 0.0 <= v["naming_accuracy"] <= 1.0
    out = " ".join(output.split())
    assert "in 2 classes (yellow, blue)" in out
    assert "yellow: 6 held out, AUROC vs normal" in out and "blue: 6 held out, AUROC vs normal" in out
    det_cfg = json.loads((m / "config.json").read_text())
    assert det_cfg["params"]["epochs"] == 8


def test_cli_screen_names_the_class_of_flagged_frames(cli_model, data, tmp_path):
    m, _ = cli_model
    named = {}
    for kind in ("test_yellow", "test_blue", "test_normal"):
        r = _cli(["images", "screen", m, data[kind], "--out", tmp_path / kind])
        assert r.exit_code == 0, r.output
        with open(tmp_path / kind / "frames.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0]) == ["index", "time_s", "file", "score", "flagged", "status", "error",
                                 "abnormal_class", "class_probability"]
        for r_ in rows:  # a class and its probability for flagged frames only
            assert (r_["abnormal_class"] != "") == (r_["flagged"] == "1")
            if r_["flagged"] == "1":
                # p(class) <= p(abnormal) = score, and the most likely of two classes holds >= half of it
                p, s = float(r_["class_probability"]), float(r_["score"])
                assert s / 2 - 1e-3 <= p <= s + 1e-3
        named[kind] = [r_["abnormal_class"] for r_ in rows if r_["flagged"] == "1"]
        summary = json.loads((tmp_path / kind / "summary.json").read_text())
        assert summary["class_names"] == ["yellow", "blue"]
        assert summary["flagged_by_class"] == {n: named[kind].count(n) for n in ("yellow", "blue")}
        assert sum(sum(sp["classes"].values()) for sp in summary["spans"]) == len(named[kind])
    # the blob colours are learnt: most flagged frames of each test folder carry its class
    assert len(named["test_yellow"]) >= 4 and named["test_yellow"].count("yellow") > len(named["test_yellow"]) / 2
    assert len(named["test_blue"]) >= 4 and named["test_blue"].count("blue") > len(named["test_blue"]) / 2


def test_screen_names_classes_from_the_scoring_pass(cli_model, data, tmp_path, monkeypatch):
    """The flagged frames' classes come from the forward pass that scored them: the network sees
    each screened frame once, and the class columns are what the classifier's probabilities of
    those frames say (as a separate predict_proba call on them gives)."""
    from medad.detectors.base import Detector
    from medad.detectors.classifier import CNNClassifierDetector
    from medad.io.images import read_image
    from pipelines.frames import frame_preparer, screen_frames

    m, _ = cli_model
    seen: list[int] = []  # items per forward call of a loaded classifier's network
    load_state = CNNClassifierDetector._set_state

    def counted(self, arrays, extra):
        load_state(self, arrays, extra)
        self.net_.register_forward_hook(lambda mod, inp, out: seen.append(len(inp[0])))

    monkeypatch.setattr(CNNClassifierDetector, "_set_state", counted)
    folder = tmp_path / "mixed"  # yellow, blue and normal frames: some flagged, some not
    folder.mkdir()
    for kind in ("test_yellow", "test_blue", "test_normal"):
        for f in sorted(data[kind].glob("*.png")):
            (folder / f"{kind}_{f.name}").write_bytes(f.read_bytes())
    summary = screen_frames(m, folder, tmp_path / "s", batch_size=5, overlays=False, progress=False)
    assert sum(seen) == summary["n_frames_screened"] == 18 and len(seen) == 4  # batches of 5, 5, 5, 3
    assert 0 < summary["n_flagged"] < 18
    monkeypatch.undo()

    with open(tmp_path / "s" / "frames.csv") as fh:
        rows = list(csv.DictReader(fh))
    det, prep = Detector.load(m), frame_preparer(m)
    flagged = [r for r in rows if r["flagged"] == "1"]
    x = np.concatenate([prep(read_image(folder / r["file"], grey=False).data) for r in flagged])
    k, p = most_likely_abnormal(det.predict_proba(x))
    assert [r["abnormal_class"] for r in flagged] == [summary["class_names"][j - 1] for j in k]
    assert [float(r["class_probability"]) for r in flagged] == pytest.approx(p.tolist(), abs=6e-5)
    assert all(r["abnormal_class"] == r["class_probability"] == "" for r in rows if r["flagged"] == "0")
    assert summary["flagged_by_class"] == {n: int(np.sum(k == j)) for j, n in enumerate(summary["class_names"], 1)}
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["flagged_by_class"] == summary["flagged_by_class"]
    # the classifier's own result carries them: score = 1 - p(normal) from the same pass
    res = det.predict(x)
    assert np.allclose(res.score, 1 - res.proba[:, 0]) and np.allclose(res[1:3].proba, res.proba[1:3])


def test_gradcam_explains_the_abnormality_score_of_a_multiclass_model(cli_model, data, tmp_path):
    m, _ = cli_model
    r = _cli(["explain", m, data["test_blue"] / "f000.png", "--out", tmp_path / "e"])
    assert r.exit_code == 0, r.output
    case = json.loads((tmp_path / "e" / "case.json").read_text())
    assert [f["kind"] for f in case["figures"]] == ["gradcam"]
    assert case["decision"] == "abnormal"
    # what Grad-CAM explains: the log-odds of p(abnormal) = 1 - p(normal), every abnormal class
    # together (not one class's logit)
    import torch

    from medad.detectors.base import Detector
    from medad.explain.models import as_scalar_model
    from medad.io.images import read_image
    from pipelines.frames import frame_preparer

    det = Detector.load(m)
    x = frame_preparer(m)(read_image(data["test_blue"] / "f000.png", grey=False).data)
    sm = as_scalar_model(det, torch.from_numpy(x))
    assert sm.explained == "log-odds of the abnormal probability"
    with torch.no_grad():
        p = float(torch.sigmoid(sm(torch.from_numpy(x)))[0])
    assert p == pytest.approx(case["score"], abs=1e-4) and p == pytest.approx(1 - det.predict_proba(x)[0, 0], abs=1e-4)


def test_the_single_class_path_keeps_its_outputs(data, tmp_path):
    """One --abnormal: no class names in frames.json, frames.csv with its usual columns."""
    m = tmp_path / "m"
    cfg = FramesConfig(detector="classifier", detector_params={"image_size": 16, "epochs": 1, "batch_size": 16},
                       image_size=16, val_fraction=0.25)
    train_frames(data["normal"], m, cfg, abnormal=data["yellow"], progress=False)
    rec = json.loads((m / "frames.json").read_text())
    assert "class_names" not in rec and "per_class" not in rec["validation"]
    r = _cli(["images", "screen", m, data["test_yellow"], "--out", tmp_path / "s"])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "s" / "frames.csv") as fh:
        assert fh.readline().strip() == "index,time_s,file,score,flagged,status,error"
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert "class_names" not in summary and all("classes" not in sp for sp in summary["spans"])


def _train_err(data, tmp_path, abnormal):
    return _cli(["images", "train", data["normal"], *[a for x in abnormal for a in ("--abnormal", x)],
                 "--config", CONFIG, "--epochs", "1", "--image-size", "16", "--out", tmp_path / "m"])


@pytest.mark.parametrize("case", ["twice", "twice_named", "normal", "nested", "empty", "clash", "named_normal",
                                  "named_clash"])
def test_bad_class_sources_are_named_before_training(case, data, tmp_path):
    other = tmp_path / "other" / "yellow"  # a second folder called yellow
    if case == "clash":
        _frames(other, 4, 20, blob=True)
    empty = tmp_path / "polyps"
    empty.mkdir()
    (empty / "notes.txt").write_text("no frames here")
    abnormal, expect = {
        "twice": ([data["yellow"], data["blue"], data["yellow"]],
                  "abnormal source given twice (classes 'yellow' and 'yellow')"),
        "twice_named": ([f"a={data['yellow']}", f"b={data['yellow']}"],
                        "abnormal source given twice (classes 'a' and 'b')"),
        "normal": ([data["normal"]], "abnormal class 'normal' is the normal source"),
        "nested": ([data["normal"] / "sub"], "nested folders"),
        "empty": ([data["yellow"], empty], "abnormal class 'polyps': folder (subfolders included) holds no frame"),
        "clash": ([data["yellow"], other], "two abnormal classes are named 'yellow'"),
        "named_normal": ([f"Normal={data['yellow']}"], "is the name of the normal class"),
        "named_clash": ([f"blob={data['yellow']}", f"BLOB={data['blue']}"], "two abnormal classes are named 'BLOB'"),
    }[case]
    if case == "nested":
        (data["normal"] / "sub").mkdir(exist_ok=True)
    try:
        r = _train_err(data, tmp_path, [str(a) for a in abnormal])
    finally:
        if case == "nested":
            (data["normal"] / "sub").rmdir()
    # the CLI's entry point turns a MedadError into "error: ..." and exit 2; the runner keeps the exception
    assert r.exit_code != 0 and expect in " ".join(str(r.exception).split()), r.output
    assert not (tmp_path / "m").exists()


def test_abnormal_class_names():
    assert abnormal_classes(None) == []
    assert abnormal_classes(["data/polyps", "ulcer=data/x=y"]) == [("polyps", Path("data/polyps")),
                                                                 ("ulcer", Path("data/x=y"))]
    assert abnormal_classes({"bleeding": "a/b"}) == [("bleeding", Path("a/b"))]
    assert abnormal_classes(Path("clips/bleed.mp4")) == [("bleed", Path("clips/bleed.mp4"))]
    with pytest.raises(ConfigError, match="must be non-empty"):
        abnormal_classes(["=data/polyps"])
    # a path whose '=' follows a '/' is not NAME=SOURCE: a path (its folder names the class)
    assert abnormal_classes(["/no/such/a=b"]) == [("a=b", Path("/no/such/a=b"))]
    with pytest.raises(ConfigError, match="'normal' \\(for data/normal\\) is the name of the normal class"):
        abnormal_classes(["data/normal"])


def test_error_types_in_python(data, tmp_path):
    with pytest.raises(InputError, match="is the normal source"):
        train_frames(data["normal"], tmp_path / "m", _cfg(), abnormal=[data["normal"]], progress=False)
    with pytest.raises(ReadError, match="abnormal class 'nothing'"):
        train_frames(data["normal"], tmp_path / "m", _cfg(), abnormal={"nothing": tmp_path / "none"}, progress=False)


def test_most_likely_abnormal_and_spans_by_class():
    k, p = most_likely_abnormal(np.array([[0.1, 0.3, 0.6], [0.5, 0.4, 0.1]]))
    assert k.tolist() == [2, 1] and p.tolist() == pytest.approx([0.6, 0.4])
    spans = flagged_spans(np.arange(5.0), np.ones(5), np.array([1, 1, 1, 0, 1], bool), 1.0,
                          ["a", "b", "b", "", "a"])
    assert [sp["classes"] for sp in spans] == [{"b": 2, "a": 1}, {"a": 1}]
    assert list(spans[0]["classes"]) == ["b", "a"]  # most frequent first


class _Proba:
    """A fitted 'detector' whose items are their own class probabilities (normal, a, b)."""

    threshold_ = 0.5

    def score(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(score=1.0 - np.asarray(x)[:, 0], proba=np.asarray(x))

    def predict_proba(self, x):
        raise AssertionError("the flagged frames' classes come with their scores, not from a second pass")


def test_validation_names_the_flagged_frames_per_class():
    from pipelines.frames import _validation_metrics

    normal = np.tile([0.9, 0.05, 0.05], (12, 1)) + np.linspace(0, 0.05, 12)[:, None] * [-1, 1, 0]
    a = np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.6, 0.3, 0.1]])  # 3 flagged: a, a, b
    b = np.array([[0.7, 0.1, 0.2], [0.8, 0.1, 0.1]])  # none flagged
    v = _validation_metrics(_Proba(), normal, [a, b], fpr=0.05, names=["a", "b"])
    pa, pb = v["per_class"]["1"], v["per_class"]["2"]
    assert pa["name"] == "a" and pa["sensitivity"] == 0.75 and pa["flagged_named"] == {"a": 2, "b": 1}
    assert pa["naming_accuracy"] == pytest.approx(2 / 3)
    assert pb["sensitivity"] == 0.0 and pb["flagged_named"] == {"a": 0, "b": 0} and pb["naming_accuracy"] is None
    assert v["naming_accuracy"] == pytest.approx(2 / 3) and v["sensitivity"] == 0.5
