"""Benchmarks record how their figures were made (command, commit, date), per row through
``--merge``, and select rows by exact name or glob. Tiny fake rows: nothing is trained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medad.bench import common
from medad.bench.common import (NOT_RECORDED, command_line, git_commit, reproduce_markdown, run_record, select_rows,
                                write_benchmark)
from medad.errors import ConfigError, ReadError

REPO = Path(__file__).resolve().parents[1]
OLD_RUN = {"command": "medad bench brain-lesions --detectors ae", "commit": "abc1234", "date": "2026-01-01T00:00:00+00:00"}


# ----------------------------------------------------------------------------- command, commit


def test_git_commit_in_the_checkout_and_unknown_elsewhere(tmp_path, monkeypatch):
    c = git_commit()
    if (REPO / ".git").exists():
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        assert c.removesuffix("-dirty") == head
    assert git_commit(tmp_path) == "unknown"  # not a git checkout: never an error

    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(common.subprocess, "run", no_git)
    assert git_commit() == "unknown"


def test_command_line_shows_the_data_root_as_given_or_as_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_DATA_ROOT", str(tmp_path))
    assert command_line(["/venv/bin/medad", "bench", "bonn", "--data-root", str(tmp_path), "-m", "features"]) == \
        "medad bench bonn --data-root $MEDAD_DATA_ROOT -m features"
    assert command_line(["medad", "bench", "bonn", "-m", "features (no amplitude)"]) == \
        "medad bench bonn -m 'features (no amplitude)' --data-root $MEDAD_DATA_ROOT"
    assert command_line(["medad", "bench", "bonn", "--data-root", "/elsewhere"]) == \
        "medad bench bonn --data-root /elsewhere"
    assert command_line(["medad", "bench", "screening-speed"], uses_data_root=False) == "medad bench screening-speed"
    monkeypatch.delenv("MEDAD_DATA_ROOT")
    assert command_line(["medad", "bench", "bonn"]) == "medad bench bonn"
    assert command_line(["/x/pytest", "-q"]).startswith("not the medad command: pytest")


def test_write_benchmark_records_command_commit_date_in_json_and_md(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["medad", "bench", "explain", "--part", "bonn"])
    monkeypatch.delenv("MEDAD_DATA_ROOT", raising=False)
    j, m = write_benchmark(tmp_path, "fake", {"results": {"a": 1}}, "# fake\n")
    data = json.loads(j.read_text())
    assert data["run"]["command"] == "medad bench explain --part bonn"
    assert data["run"]["commit"] == git_commit() and data["run"]["date"]
    assert "torch" in data["environment"] and data["results"] == {"a": 1}
    md = m.read_text()
    assert "## How to reproduce" in md and "`medad bench explain --part bonn`" in md
    assert f"medad commit {git_commit()}" in md


def test_reproduce_section_groups_rows_by_run():
    now = {"command": "medad bench bonn -m cnn1d", "commit": "def5678", "date": "2026-02-02"}
    text = reproduce_markdown(now, [("task A", "cnn1d", now), ("task A", "features", OLD_RUN),
                                    ("task B", "features", OLD_RUN), ("task B", "lstm", None)])
    assert text.count("`medad bench bonn -m cnn1d`") == 2  # who wrote the file, and its row
    assert "  - task A: features\n  - task B: features" in text
    assert f"{NOT_RECORDED} (" in text and "task B: lstm" in text
    # every row from this run: one line
    assert reproduce_markdown(now, [("t", "x", now)]).count("medad bench bonn") == 1


# ----------------------------------------------------------------------------- row selection


def test_select_rows_exact_glob_and_unknown():
    known = ["features", "features (no amplitude)", "cnn1d", "fusion: a + b"]
    assert select_rows(["features"], known) == ["features"]  # not every row containing 'features'
    assert select_rows(["cnn1d", "features*"], known) == ["cnn1d", "features", "features (no amplitude)"]
    assert select_rows(None, known) == known
    with pytest.raises(ConfigError, match=r"unknown method 'featres'.*features \(no amplitude\), cnn1d"):
        select_rows(["featres", "cnn1d"], known, "method")
    with pytest.raises(ConfigError, match="unknown methods 'x', 'y'"):
        select_rows(["x", "y"], known, "method")


def test_bonn_selects_the_one_features_row_and_fails_early_on_unknown(monkeypatch, tmp_path):
    import medad.bench.signals as sig
    import medad.datasets

    picked = []

    def spy(requested, known, what="row"):
        picked.append(select_rows(requested, known, what))
        return picked[-1]

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(sig, "select_rows", spy)
    monkeypatch.setattr(medad.datasets, "dataset_root", stop)  # no data is read: selection comes first
    with pytest.raises(Stop):
        sig.run_bonn(tmp_path, tmp_path, methods=["features"])
    assert picked[-1] == ["features"]
    with pytest.raises(Stop):
        sig.run_bonn(tmp_path, tmp_path, methods=["features (no amplitude*"])
    assert len(picked[-1]) > 1 and all(p.startswith("features (no amplitude") for p in picked[-1])
    with pytest.raises(ConfigError, match="unknown method 'feature'.*known methods.*features \\(no amplitude\\)"):
        sig.run_bonn(tmp_path, tmp_path, methods=["feature"])
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        sig.run_yaseen(tmp_path, tmp_path, methods=["nope"])


# ----------------------------------------------------------------------------- brain-lesions


def _row(modality: str, detector: str, v: float = 0.5, **extra) -> dict:
    return {"modality": modality, "detector": detector, "per_case": {}, "mean_over_cases": {"dice": v},
            "pooled": {"dice": v, "dice_optimistic": v, "auprc": v, "auroc": v}, "train_seconds": 1.0,
            "inference_seconds_per_volume": 1.0, "peak_memory_mb": 10.0, **extra}


def test_brain_lesions_merged_rows_keep_their_own_records(tmp_path, monkeypatch):
    import medad.bench.brain_lesions as bl

    root = tmp_path / "data"
    (root / "mri" / "brats2015" / "test" / "brats_1").mkdir(parents=True)
    old = tmp_path / "old"
    old.mkdir()
    (old / "brain-lesions.json").write_text(json.dumps({
        "environment": {"date": "2026-01-01"},
        "results": [_row("flair", "intensity"), _row("flair", "ae", run=OLD_RUN), _row("flair", "vae")]}))
    monkeypatch.setattr(bl, "run_reference", lambda mod, data: _row(mod, "intensity", 0.6))
    monkeypatch.setattr(bl, "run_pipeline_detector", lambda name, mod, *a: _row(mod, name, 0.7))
    monkeypatch.setattr(sys, "argv", ["medad", "bench", "brain-lesions", "--data-root", str(root), "--detectors",
                                      "dae", "--modalities", "flair", "--merge", str(old)])
    monkeypatch.delenv("MEDAD_DATA_ROOT", raising=False)
    out = tmp_path / "out"
    bl.run_brain_lesions(data_root=root, out=out, detectors=["dae"], modalities=["flair"], merge=[old],
                         config_dir=REPO / "configs")
    data = json.loads((out / "brain-lesions.json").read_text())
    runs = {r["detector"]: r.get("run") for r in data["results"]}
    this = data["run"]
    assert this["command"].startswith("medad bench brain-lesions --data-root") and "--detectors dae" in this["command"]
    assert runs["intensity"] == this and runs["dae"] == this  # recomputed now
    assert runs["ae"] == OLD_RUN and runs["vae"] is None  # kept from the earlier run, with or without a record
    md = (out / "brain-lesions.md").read_text()
    section = md.split("## How to reproduce", 1)[1]
    assert f"`{this['command']}`" in section and "  - flair: intensity, dae" in section
    assert "`medad bench brain-lesions --detectors ae` (medad commit abc1234" in section
    assert "  - flair: ae" in section and NOT_RECORDED in section and "  - flair: vae" in section


def test_brain_lesions_detector_names_exact_glob_and_unknown(tmp_path):
    import medad.bench.brain_lesions as bl

    known = bl.known_rows(REPO / "configs")
    assert {"intensity", "dae", "dae3d", "pddpm_overlap", "ensemble_asym"} <= set(known)
    assert not any(k.endswith(("_t1c", "_flair")) for k in known)
    assert select_rows(["dae*"], known, "detector") == ["dae", "dae3d"]
    # an unknown row fails before the data root is even looked for
    with pytest.raises(ConfigError, match="unknown detector 'daee'.*known detectors.*pddpm_overlap"):
        bl.run_brain_lesions(data_root=tmp_path / "missing", out=tmp_path, detectors=["daee"], modalities=["flair"],
                             config_dir=REPO / "configs")


# ----------------------------------------------------------------------------- image screening, explain


def test_image_screening_merge_keeps_each_rows_run():
    from medad.bench.image_screening import merge_tasks, task_row_runs

    now = run_record()
    tasks = {"kvasir": {"results": {"pca": {"auroc": 0.6}}, "runs": {"pca": now}}}
    old = {"environment": {"date": "2026-01-01"},
           "tasks": {"kvasir": {"results": {"pca": {"auroc": 0.5}, "ae": {"auroc": 0.7}}, "runs": {"ae": OLD_RUN}},
                     "wce": {"results": {"pca": {"auroc": 0.8}}}}}
    merge_tasks(tasks, old, "old/image-screening.json")
    assert task_row_runs(tasks) == [("kvasir", "pca", now), ("kvasir", "ae", OLD_RUN), ("wce", "pca", None)]


def test_explain_kept_part_keeps_its_record():
    from medad.bench.common import stamp_rows
    from medad.bench.explain import _kept

    prev = {"environment": {"date": "2026-01-01"}, "bonn": {"x": 1, "run": OLD_RUN}, "ecg": {"x": 2}}
    parts = {"brats": {"x": 0}, "bonn": _kept(prev, "bonn"), "ecg": _kept(prev, "ecg")}
    now = run_record()
    stamp_rows(parts.values(), now)
    assert parts["brats"]["run"] == now and parts["bonn"]["run"] == OLD_RUN and parts["ecg"]["run"] is None


@pytest.mark.parametrize("bench, method", [("bonn", "features"), ("mitbih", "features (beat + RR, knn)")])
def test_signal_benchmarks_write_their_files_with_the_run_record(bench, method, data_root, tmp_path):
    """A quick real run of bench bonn / mitbih writes its JSON and Markdown with the run record (both
    crashed at the end with 'not JSON serialisable: function': a local function shadowed the record)."""
    from typer.testing import CliRunner

    from medad.cli import app

    if not (data_root / ("eeg" if bench == "bonn" else "ecg")).is_dir():
        pytest.skip("data not present")
    res = CliRunner().invoke(app, ["bench", bench, "-m", method, "--quick", "--threads", "1", "--no-progress",
                                   "--data-root", str(data_root), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / f"{bench}.json").read_text())
    assert d["run"]["command"] and d["run"]["commit"] and d["run"]["date"]  # in-process: not the medad argv
    assert "## How to reproduce" in (tmp_path / f"{bench}.md").read_text()


# ----------------------------------------------------------------------------- --merge and options checked first


class _Stop(Exception):
    """Raised by a stand-in for the first data read: reaching it means every check passed."""


def _stop(*a, **k):
    raise _Stop


def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_earlier_run_takes_the_folder_or_the_file_and_checks_it(tmp_path):
    from medad.bench.common import earlier_run
    from medad.errors import InputError, ReadError

    good = {"benchmark": "bonn", "protocol": {"quick": False}, "results": {"t": {}}}
    f = _write(tmp_path / "full" / "bonn.json", good)
    assert earlier_run(tmp_path / "full", "bonn") == (f, good)  # the folder: <folder>/bonn.json
    assert earlier_run(f, "bonn", quick=False)[0] == f  # the file itself
    with pytest.raises(ReadError, match="no mitbih.json here") as e:  # the folder of another benchmark's run
        earlier_run(tmp_path / "full", "mitbih")
    assert e.value.path == tmp_path / "full" / "mitbih.json"
    with pytest.raises(ReadError, match="no such file"):
        earlier_run(tmp_path / "nowhere.json", "bonn")
    with pytest.raises(InputError, match="cannot merge a quick run with this full one"):
        earlier_run(f, "bonn", quick=True)
    _write(tmp_path / "q" / "bonn.json", {"quick": True, "results": {}})  # top-level flag (image-screening style)
    with pytest.raises(InputError, match="cannot merge a full run with this quick one.*with --quick"):
        earlier_run(tmp_path / "q", "bonn", quick=False)
    other = _write(tmp_path / "m.json", {**good, "benchmark": "mitbih"})
    with pytest.raises(InputError, match="the mitbih benchmark's file, not bonn's"):
        earlier_run(other, "bonn")
    with pytest.raises(ReadError, match="not a readable JSON file"):
        earlier_run(_write(tmp_path / "bad.json", "{"), "bonn")
    with pytest.raises(ReadError, match="not a bonn benchmark file"):
        earlier_run(_write(tmp_path / "list.json", "[1]"), "bonn")
    with pytest.raises(ReadError, match="KeyError.*'x'"):
        earlier_run(f, "bonn", check=lambda d: d["results"]["x"])


@pytest.mark.parametrize("given", ["folder_without_file", "quick_into_full", "other_benchmark", "folds"])
def test_bonn_merge_and_options_fail_before_any_data_is_read(given, monkeypatch, tmp_path):
    """Given a folder, bench bonn computed everything and then failed with 'Is a directory'; a quick
    run merged into a full file failed only after the whole run. Now: before the data is read."""
    import medad.bench.signals as sig
    import medad.datasets
    from medad.errors import MedadError

    monkeypatch.setattr(medad.datasets, "dataset_root", _stop)  # the first data read
    full = {"benchmark": "bonn", "environment": {"date": "D0"}, "protocol": {"quick": False},
            "results": {sig.BONN_CD_TASK: {"features": {"auroc": 0.9}}}}
    _write(tmp_path / "run" / "bonn.json", full)
    kw = dict(methods=["features"], merge=tmp_path / "run")
    if given == "folder_without_file":
        kw["merge"] = tmp_path
        match = "no bonn.json here"
    elif given == "quick_into_full":
        kw["quick"] = True
        match = "cannot merge a quick run"
    elif given == "other_benchmark":
        kw["merge"] = _write(tmp_path / "mitbih.json", {**full, "benchmark": "mitbih"})
        match = "mitbih benchmark's file"
    else:
        kw["folds"] = 1
        match = "--folds must be at least 2"
    with pytest.raises(MedadError, match=match):
        sig.run_bonn(tmp_path, tmp_path / "out", **kw)
    # the same folder, a full run: every check passes and the data is read next
    with pytest.raises(_Stop):
        sig.run_bonn(tmp_path, tmp_path / "out", methods=["features"], merge=tmp_path / "run")


def test_bench_bonn_command_refuses_a_wrong_merge_folder_at_once(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import medad.datasets
    from medad.cli import app
    from medad.errors import MedadError

    monkeypatch.setattr(medad.datasets, "dataset_root", _stop)
    res = CliRunner().invoke(app, ["bench", "bonn", "-m", "features", "--merge", str(tmp_path), "--data-root",
                                   str(tmp_path), "--out", str(tmp_path / "out")])
    # the medad command prints a MedadError as 'error: ...' (exit 2); the runner hands it back as is
    assert isinstance(res.exception, ReadError) and "no bonn.json here" in str(res.exception), res.output
    res = CliRunner().invoke(app, ["bench", "yaseen", "--merge", str(tmp_path), "--data-root", str(tmp_path)])
    assert isinstance(res.exception, MedadError) and "no yaseen.json here" in str(res.exception)


def test_mitbih_and_yaseen_options_fail_before_any_data_is_read(monkeypatch, tmp_path):
    import medad.bench.signals as sig
    from medad.errors import ConfigError, MedadError, ReadError

    monkeypatch.setattr(sig, "load_mitbih_beats", _stop)
    monkeypatch.setattr(sig, "_load_yaseen", _stop)
    mit = {"benchmark": "mitbih", "environment": {"date": "D0"}, "protocol": {"quick": True},
           "results": {sig.MITBIH_TASK: {"features": {"auroc": 0.9}}}}
    _write(tmp_path / "q" / "mitbih.json", mit)
    with pytest.raises(MedadError, match="cannot merge a full run"):
        sig.run_mitbih(tmp_path, tmp_path, methods=["isolation_forest"], merge=tmp_path / "q")
    with pytest.raises(ReadError, match="must hold results of 'inter-patient"):
        sig.run_mitbih(tmp_path, tmp_path, methods=["isolation_forest"], quick=True,
                       merge=_write(tmp_path / "x.json", {"protocol": {"quick": True}, "results": {}}))
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):  # a missing screening config: not after every method ran
        sig.run_mitbih(tmp_path, tmp_path, methods=["pipeline"], pipeline_configs=[tmp_path / "nope.yaml"])
    with pytest.raises(ConfigError, match="only used by the 'pipeline' row"):  # silently ignored before
        sig.run_mitbih(tmp_path, tmp_path, methods=["isolation_forest"], pipeline_configs=[sig.SCREENING_CONFIG])
    with pytest.raises(_Stop):
        sig.run_mitbih(tmp_path, tmp_path, methods=["isolation_forest", "pipeline"], quick=True,
                       merge=tmp_path / "q")
    # --reuse-cv: the folder or the file, checked before the recordings are read
    with pytest.raises(ReadError, match="--reuse-cv: no yaseen.json here"):
        sig.run_yaseen(tmp_path, tmp_path, methods=["features"], reuse_cv=tmp_path)
    yas = {"benchmark": "yaseen", "environment": {"date": "D0"}, "protocol": {"quick": False},
           "results": {"normal vs abnormal, 10-fold CV": {}}}
    _write(tmp_path / "y" / "yaseen.json", yas)
    with pytest.raises(ReadError, match="5-fold CV"):  # that file has no 5-fold results to reuse
        sig.run_yaseen(tmp_path, tmp_path, methods=["features"], reuse_cv=tmp_path / "y", folds=5)
    with pytest.raises(_Stop):
        sig.run_yaseen(tmp_path, tmp_path, methods=["features"], reuse_cv=tmp_path / "y")


def _image_data(root: Path, tasks) -> Path:
    from medad.bench.image_screening import TASK_DATA

    for t in tasks:
        for sub in TASK_DATA[t]:
            (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def test_image_screening_unknown_detector_or_task_fails_before_any_task_runs(monkeypatch, tmp_path):
    """`--detectors nosuch` used to run and write a benchmark holding only the no-learning cues."""
    import medad.bench.image_screening as ims

    ran = []
    monkeypatch.setattr(ims, "TASKS", {t: (lambda root, quick, only, t=t: ran.append((t, only)) or {"results": {}})
                                       for t in ims.ALL_TASKS})
    root = _image_data(tmp_path / "data", ims.ALL_TASKS)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="unknown detector 'nosuch'; known detectors.*patchstats_colour"):
        ims.run_image_screening(root, out, detectors=["nosuch"])
    with pytest.raises(ConfigError, match="unknown detector 'lung_knn'.*hog_knn"):  # a covid row, not a brain one
        ims.run_image_screening(root, out, tasks=["brain"], detectors=["lung_knn"])
    with pytest.raises(ConfigError, match="unknown task 'brian'.*ct_tumour"):
        ims.run_image_screening(root, out, tasks=["brian"])
    assert ran == [] and not out.exists()
    ims.run_image_screening(root, out, tasks=["brain*"], detectors=["hog_knn", "patchstats*"])
    picked = ["hog_knn", "patchstats", "patchstats_masked"]  # exact names reach the tasks, globs expanded
    assert ran == [("brain", picked), ("brain_z", picked)]
    assert json.loads((out / "image-screening.json").read_text())["tasks"].keys() == {"brain", "brain_z"}
    ran.clear()
    with pytest.raises(ReadError, match=r"no data folder for tasks wce \(endoscopy/wce_bleedgen\), ct_tumour"):
        ims.run_image_screening(_image_data(tmp_path / "part", ["brain"]), out, tasks=["brain", "wce", "ct_tumour"])
    assert ran == []


def test_image_screening_merge_is_checked_before_any_task_runs(monkeypatch, tmp_path):
    import medad.bench.image_screening as ims
    from medad.errors import InputError

    ran = []
    monkeypatch.setattr(ims, "TASKS", {t: (lambda root, quick, only, t=t: ran.append(t) or {"results": {}})
                                       for t in ims.ALL_TASKS})
    root = _image_data(tmp_path / "data", ["brain"])
    old = {"benchmark": "image-screening", "quick": False, "budget": 1.0, "environment": {"date": "D0"},
           "tasks": {"wce": {"results": {"pca": {"auroc": 0.7}}}}}
    _write(tmp_path / "wce_run" / "image-screening.json", old)
    for merge, err, match in ([tmp_path, ReadError, "no image-screening.json here"],
                              [tmp_path / "wce_run", InputError, "cannot merge a quick run"],
                              [_write(tmp_path / "b.json", {**old, "budget": 10.0}), ReadError, "--budget 10.0"],
                              [_write(tmp_path / "bonn.json", {**old, "benchmark": "bonn"}), InputError, "bonn"]):
        with pytest.raises(err, match=match):
            ims.run_image_screening(root, tmp_path / "out", tasks=["brain"], merge=[merge],
                                    quick=merge == tmp_path / "wce_run")
    assert ran == []
    res = ims.run_image_screening(root, tmp_path / "out", tasks=["brain"], merge=[tmp_path / "wce_run"])
    assert ran == ["brain"] and res["tasks"]["wce"]["results"]["pca"]["auroc"] == 0.7


def test_explain_part_and_threads_are_checked_before_any_part_runs(monkeypatch, tmp_path):
    import medad.bench.explain as ex
    from medad.errors import InputError

    for name in ("bench_brats", "bench_bonn", "bench_ecg"):
        monkeypatch.setattr(ex, name, _stop)
    _write(tmp_path / "out" / "explain.json", {"benchmark": "explain", "quick": False})
    with pytest.raises(InputError, match="part must be all, brats, bonn, ecg"):
        ex.run(data_root=tmp_path, out=tmp_path / "out", part="nosuch")
    with pytest.raises(InputError, match="threads must be at least 1"):
        ex.run(data_root=tmp_path, out=tmp_path / "out", threads=0)
    with pytest.raises(InputError, match="would keep the other parts of a full run"):
        ex.run(data_root=tmp_path, out=tmp_path / "out", part="bonn", quick=True)


def test_screening_speed_refuses_settings_before_generating(tmp_path):
    from medad.bench.screening_speed import run_screening_speed

    for kw, match in ((dict(sfreq=250.5), "whole number"), (dict(hours=0.0), "--hours"),
                      (dict(n_channels=0), "--n-channels")):
        with pytest.raises(ConfigError, match=match):
            run_screening_speed(tmp_path / "out", cache_dir=tmp_path / "cache", **kw)
    assert not (tmp_path / "cache").exists()
