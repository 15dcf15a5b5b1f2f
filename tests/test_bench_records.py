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
from medad.errors import ConfigError

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
