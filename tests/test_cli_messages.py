"""Messages for the most likely user mistakes (README audit): each names the file or folder and
the option to pass as the CLI spells it now, and a run that did nothing does not exit 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _cli(args: list) -> "object":
    from typer.testing import CliRunner

    from medad.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _out(r) -> str:
    """What the user sees: the output and, since the runner does not go through ``medad.cli.main``,
    a MedadError's message (``r.exception``)."""
    return r.output + (str(r.exception) if r.exception is not None and not isinstance(r.exception, SystemExit) else "")


@pytest.fixture()
def text_signal(tmp_path) -> Path:
    f = tmp_path / "Z001.txt"
    np.savetxt(f, np.random.default_rng(0).normal(size=400), fmt="%.4f")
    return f


# -------------------------------------------------------------- 1. options by their current names
def test_inspect_text_signal_names_the_text_sfreq_option(text_signal):
    r = _cli(["inspect", text_signal])
    assert r.exit_code == 0, _out(r)
    assert "--text-sfreq" in r.output and "pass sfreq\n" not in r.output


def test_read_signal_without_rate_names_argument_and_option(text_signal):
    from medad.errors import ReadError
    from medad.io.signals import iter_signal_chunks, read_signal

    for call in (lambda: read_signal(text_signal), lambda: next(iter_signal_chunks(text_signal, 1.0))):
        with pytest.raises(ReadError) as e:
            call()
        assert "--text-sfreq" in str(e.value) and "sfreq=" in str(e.value) and "Z001.txt" in str(e.value)


def test_rate_options_refuse_non_positive_values(tmp_path, text_signal):
    r = _cli(["inspect", text_signal, "--text-sfreq", "-5"])
    assert r.exit_code == 2 and "--text-sfreq" in _out(r)
    (tmp_path / "m").mkdir()
    r = _cli(["explain", tmp_path / "m", text_signal, "--out", tmp_path / "o", "--sfreq", "0"])
    assert r.exit_code == 2 and "--sfreq" in _out(r)


# -------------------------------------------------------------- 2. report with nothing to report
def test_report_on_empty_folder_is_an_error_naming_it(tmp_path):
    from medad.errors import ReadError

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing medad wrote")
    r = _cli(["report", empty])
    assert r.exit_code != 0
    assert isinstance(r.exception, ReadError)
    msg = str(r.exception)
    assert str(empty) in msg and "case.json" in msg and "results.json" in msg
    assert not (empty / "index.html").exists()
    r = _cli(["report", tmp_path / "missing"])
    assert isinstance(r.exception, ReadError) and "not found" in str(r.exception)
    r = _cli(["report", empty / "notes.txt"])
    assert isinstance(r.exception, ReadError) and "not a results folder" in str(r.exception)


def test_report_where_every_case_fails_is_an_error(tmp_path):
    from medad.errors import ReadError

    case = tmp_path / "results" / "case1"
    case.mkdir(parents=True)
    (case / "case.json").write_text("{not json")
    r = _cli(["report", tmp_path / "results"])
    assert isinstance(r.exception, ReadError), _out(r)
    assert "no case could be reported" in str(r.exception)
    assert (tmp_path / "results" / "index.html").is_file()  # the index still lists the failure


# -------------------------------------------------------------- 3. evaluate
def test_evaluate_on_a_folder_says_a_csv_is_expected(tmp_path):
    from medad.errors import ReadError

    r = _cli(["evaluate", tmp_path])
    assert isinstance(r.exception, ReadError)
    assert "is a folder" in str(r.exception) and "score,label" in str(r.exception)
    r = _cli(["evaluate", tmp_path / "scores.csv"])
    assert isinstance(r.exception, ReadError) and "CSV" in str(r.exception)


def test_evaluate_checks_fpr_and_writes_into_an_out_folder(tmp_path):
    f = tmp_path / "scores.csv"
    f.write_text("score,label,healthy_val\n0.1,0,1\n0.2,0,1\n0.3,0,0\n0.9,1,0\n0.15,0,0\n0.8,1,0\n")
    r = _cli(["evaluate", f, "--fpr", "2", "--out", tmp_path / "e.json"])
    assert r.exit_code == 2 and "--fpr" in _out(r)
    assert not (tmp_path / "e.json").exists()
    (tmp_path / "res").mkdir()
    r = _cli(["evaluate", f, "--out", tmp_path / "res"])
    assert r.exit_code == 0, _out(r)
    assert (tmp_path / "res" / "evaluation.json").is_file()


# -------------------------------------------------------------- 4. config errors name their file
@pytest.mark.parametrize("params, key", [("{epochs: -3}", "epochs"), ("{batch_size: 2.5}", "batch_size"),
                                         ("{lr: 0}", "lr"), ("{epochs: ten}", "epochs")])
def test_detector_params_errors_name_the_yaml(tmp_path, params, key):
    from medad.errors import ConfigError
    from pipelines.brain_lesions import BrainLesionConfig
    from pipelines.screening import ScreeningConfig

    brain = tmp_path / "brain.yaml"
    brain.write_text(f"detector: ae\ndetector_params: {params}\n")
    screen = tmp_path / "screen.yaml"
    screen.write_text(f"screening:\n  detector: seq_ae\n  detector_params: {params}\n")
    for cls, f in ((BrainLesionConfig, brain), (ScreeningConfig, screen)):
        with pytest.raises(ConfigError) as e:
            cls.from_yaml(f)
        assert str(e.value).startswith(f"{f}: detector_params.{key} must be")


def test_screen_train_config_error_comes_before_the_data_with_the_file(tmp_path, text_signal):
    from medad.errors import ConfigError

    cfg = tmp_path / "x.yaml"
    cfg.write_text("screening:\n  detector: seq_ae\n  detector_params: {epochs: -3}\n  text_sfreq: 100\n")
    r = _cli(["screen", "train", text_signal.parent, "--config", cfg, "--out", tmp_path / "m"])
    assert isinstance(r.exception, ConfigError), _out(r)
    assert str(r.exception) == f"{cfg}: detector_params.epochs must be an integer >= 1, got -3"


def test_valid_training_params_pass():
    from medad.config import check_detector_params

    check_detector_params({"epochs": 10, "batch_size": 32.0, "lr": 1e-3, "channels": [4, 8]})
    check_detector_params({})


# -------------------------------------------------------------- 5. other likely mistakes
def test_explain_names_a_missing_or_wrong_model_folder_and_input(tmp_path, text_signal):
    from medad.errors import ReadError

    r = _cli(["explain", tmp_path / "nope", text_signal, "--out", tmp_path / "o"])
    assert isinstance(r.exception, ReadError) and "model folder not found" in str(r.exception)
    (tmp_path / "empty").mkdir()
    r = _cli(["explain", tmp_path / "empty", text_signal, "--out", tmp_path / "o"])
    assert isinstance(r.exception, ReadError)
    assert "not a medad model folder" in str(r.exception) and "screening.json" in str(r.exception)
    (tmp_path / "empty" / "config.json").write_text("{}")
    r = _cli(["explain", tmp_path / "empty", tmp_path / "missing.txt", "--out", tmp_path / "o"])
    assert isinstance(r.exception, ReadError) and "missing.txt: input file or folder not found" in str(r.exception)
    assert not (tmp_path / "o").exists()


def test_inspect_empty_folder_says_what_it_looked_for(tmp_path):
    r = _cli(["inspect", tmp_path])
    assert r.exit_code == 0, _out(r)
    assert "no file medad reads" in r.output and ".edf" in r.output


def test_a_wrong_detector_in_a_config_file_is_named_with_the_file_before_reading(tmp_path):
    """An image detector in a screening YAML, or an unknown parameter in a brain YAML, fails before
    any recording/scan is read, naming the config file (it came after reading, without the file)."""
    from medad.errors import ConfigError

    cfg = tmp_path / "screen.yaml"
    cfg.write_text("detector: ae\n")
    empty = tmp_path / "none"  # never read: the config is refused first
    r = _cli(["screen", "train", empty, "--config", cfg, "--out", tmp_path / "m"])
    assert isinstance(r.exception, ConfigError), _out(r)
    assert "screen.yaml" in _out(r) and "takes image input" in _out(r)
    bcfg = tmp_path / "brain.yaml"
    bcfg.write_text("detector: intensity\ndetector_params: {no_such_param: 1}\n")
    r = _cli(["brain", "train", empty, "--config", bcfg, "--out", tmp_path / "b"])
    assert isinstance(r.exception, ConfigError), _out(r)
    assert "brain.yaml" in _out(r) and "no_such_param" in _out(r)
