"""Signal commands: ``medad screen train|run`` and ``medad bench screening-speed``.

Benchmarks on real signal data (Bonn, Yaseen, MIT-BIH) live in :mod:`medad.bench.signals`; when
that module exists its ``register_bench(bench_app)`` adds them here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

import typer

from medad.commands import AliasedCommand


# setting (config key) -> its option and older alias where the names differ: the error names
# both, since either may have been typed
_OPTION_OF = {"window_fpr": ["--fpr", "--window-fpr"]}


def _check_options(**values: Optional[float]) -> None:
    """A bad numeric option is a usage error naming the option (``--fpr``), not a failure
    after the data were read."""
    from pipelines.screening import number_problem

    for name, v in values.items():
        problem = number_problem(name, v)
        if problem:
            raise typer.BadParameter(problem.replace(f"{name} must", "must", 1),
                                     param_hint=_OPTION_OF.get(name, "--" + name.replace("_", "-")))


#: ``--channels`` of a recording model (``screen run``, ``explain``): each command adds what
#: becomes of a recording without the model's channels
CHANNELS_HELP = ("channel(s) of the recordings to screen in place of the model's, comma-separated, one for each of "
                 "the model's channels in its order, e.g. 'Fp1' for a model trained on plain text (whose channel has "
                 "no name) or 'V5' for an ECG model of MLII. Default: the model's channels, found by name")


def _channel_list(text: Optional[str]) -> Optional[list[str]]:
    """``--channels 'A, B'`` -> ``["A", "B"]`` (names may contain spaces: only commas split)."""
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise typer.BadParameter("give channel names separated by commas, e.g. 'F7-C3,C3-T5'",
                                 param_hint="--channels")
    return names


_TEXT_LAYOUT_HELP = ("how plain-text recordings lay out their values: auto (a table of equal lines: one channel a "
                     "column, one time sample a line; a signal wrapped over lines, the last one shorter: one "
                     "channel), columns, or wrapped (one signal, all values in file order)")


def _check_text_layout(value: Optional[str]) -> None:
    from medad.io.signals import TEXT_LAYOUTS

    if value is not None and value not in TEXT_LAYOUTS:
        raise typer.BadParameter(f"must be one of {', '.join(TEXT_LAYOUTS)}, got {value!r}", param_hint="--text-layout")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    screen_app = typer.Typer(help="Screen folders of recordings (EDF/BDF/FIF, WFDB, WAV, text) for abnormal spans.",
                             no_args_is_help=True)
    app.add_typer(screen_app, name="screen")

    @screen_app.command("train", cls=AliasedCommand)
    def screen_train(
        normals: Path = typer.Argument(..., help="folder (or file) of normal recordings"),
        out: Path = typer.Option(..., "--out", help="model folder to write"),
        detector: Optional[str] = typer.Option(None, help="window detector (registry name); default 'features'"),
        config: Optional[Path] = typer.Option(None, help="screening YAML (see configs/screening_*.yaml; "
                                                         "screening_ecg_beats.yaml: ECG beat mode)"),
        sfreq: Optional[float] = typer.Option(None, help="working sampling rate: every recording is resampled to "
                                                         "it (default: the first recording's). Not the rate of "
                                                         "plain-text files: that is --text-sfreq"),
        text_sfreq: Optional[float] = typer.Option(None, help="sampling rate of plain-text recordings (they carry "
                                                              "none); config key text_sfreq"),
        text_layout: Optional[str] = typer.Option(None, help=_TEXT_LAYOUT_HELP + "; config key text_layout "
                                                             "(default auto)"),
        window_fpr: Optional[float] = typer.Option(None, "--fpr", "--window-fpr",
                                                   help="share of held-out normal windows (beat mode: beats) flagged, "
                                                        "0 < fpr < 1 (e.g. 0.01); config key fpr (or window_fpr)"),
        channels: Optional[str] = typer.Option(None, help="comma-separated channel names to use, e.g. "
                                                          "'F7-C3,C3-T5' (default: the config's `channels`, else "
                                                          "those all recordings share; EEG configs keep EEG ones)"),
        abnormal: Optional[Path] = typer.Option(
            None, "--abnormal", help="folder (or file) of ABNORMAL recordings (e.g. seizure EEG): supervised training "
                                     "of a supervised detector (--detector cnn1d, cnn2d, lstm, gru or nmn; see "
                                     "configs/screening_eeg_supervised.yaml), windows only. Labels are weak: every "
                                     "window of a normal recording counts as normal and every window of an abnormal "
                                     "one as abnormal. Recordings of both classes are held out for validation; the "
                                     "threshold still comes from held-out normal windows"),
    ) -> None:
        """Learn normal recordings (with --abnormal: normal vs abnormal recordings, supervised); calibrate
        the window threshold on held-out normal recordings."""
        from pipelines.screening import ScreeningConfig, train_screening

        # option values are checked before the config or any recording is read (a bad --window-fpr
        # must not surface as a crash after fitting)
        _check_options(sfreq=sfreq, text_sfreq=text_sfreq, window_fpr=window_fpr)
        _check_text_layout(text_layout)
        picked = _channel_list(channels)
        cfg = ScreeningConfig.from_yaml(config) if config else ScreeningConfig()
        for k, v in {"detector": detector, "sfreq": sfreq, "text_sfreq": text_sfreq, "window_fpr": window_fpr,
                     "channels": picked, "text_layout": text_layout}.items():
            if v is not None:
                setattr(cfg, k, v)
        from medad.errors import ConfigError
        from pipelines.screening import check_supervised

        try:  # the detector named in a config file: the error names the file
            check_supervised(cfg, abnormal is not None)
        except ConfigError as e:
            raise (ConfigError(e.problem, config) if config and detector is None else e) from None
        path = train_screening(normals, out, cfg, abnormal_folder=abnormal)
        typer.echo(f"screening model written to {path}")

    @screen_app.command("run", cls=AliasedCommand)
    def screen_run(
        model: Path = typer.Argument(..., help="model folder from `medad screen train`"),
        folder: Path = typer.Argument(..., help="folder (or file) of recordings to screen"),
        out: Path = typer.Option(..., "--out", help="output folder"),
        annotated_copy: str = typer.Option("none", help="also write the EEG with its annotations: fif, edf or none"),
        overlays: bool = typer.Option(True, "--overlays/--no-overlays", "--plots/--no-plots",
                                      help="write a PNG per flagged recording (its signal with the flagged spans "
                                           "overlaid)"),
        site_normalize: Optional[str] = typer.Option(
            None, help="robust z-score the features against the screened folder's own statistics: 'folder' (one "
                       "site), 'subfolder' (each subfolder a site) or 'none' (default: the model's setting). "
                       "Assumes most recordings of a site are normal; features detector, or any detector in ECG beat mode"),
        text_sfreq: Optional[float] = typer.Option(None, help="sampling rate of plain-text recordings (default: "
                                                              "the model's text_sfreq)"),
        text_layout: Optional[str] = typer.Option(None, help=_TEXT_LAYOUT_HELP + " (default: the model's)"),
        channels: Optional[str] = typer.Option(
            None, help=CHANNELS_HELP + "; a recording without them is skipped with the reason (results.csv: "
                                       "channels screened, warning)"),
    ) -> None:
        """Screen every recording: results.csv/json, events.tsv, MNE/WFDB annotations, PNGs."""
        from pipelines.screening import screen_folder

        _check_options(text_sfreq=text_sfreq)
        _check_text_layout(text_layout)
        summary = screen_folder(model, folder, out, annotated_copy=annotated_copy, plots=overlays,
                                site_normalize=site_normalize, text_sfreq=text_sfreq, text_layout=text_layout,
                                channels=_channel_list(channels))
        if summary["n_errors"] == summary["n_recordings"]:  # nothing screened: a failure for scripts too
            from medad.errors import ReadError

            first = summary["recordings"][0]
            raise ReadError(f"none of the {summary['n_recordings']} recording(s) could be screened (e.g. "
                            f"{Path(first['file']).name}: {first['error']}); see {Path(out) / 'results.csv'}", folder)

    @bench_app.command("screening-speed", cls=AliasedCommand)
    def bench_screening_speed(
        out: Path = typer.Option(Path("bench-out"), "--out", help="output folder"),
        hours: float = typer.Option(24.0, help="length of the generated recording"),
        n_channels: int = typer.Option(23, "--n-channels", "--channels",
                                       help="number of channels of the generated recording (a count, not "
                                            "channel names)"),
        sfreq: float = typer.Option(256.0, help="sampling rate of the generated recording"),
        cache_dir: Optional[Path] = typer.Option(None, help="where the generated EDF is kept (default: temp dir)"),
        copy_to: Optional[Path] = typer.Option(None, help="also copy the JSON/MD here (e.g. benchmarks/)"),
    ) -> None:
        """Screen a generated 24-hour, 23-channel, 256 Hz EDF: seconds and peak memory."""
        from medad.bench.screening_speed import run_screening_speed

        run_screening_speed(out, hours=hours, n_channels=n_channels, sfreq=sfreq, cache_dir=cache_dir, copy_to=copy_to)

    # ---- C2: Bonn / Yaseen / MIT-BIH benchmarks register themselves here ----
    try:
        mod = importlib.import_module("medad.bench.signals")
    except ModuleNotFoundError as e:
        if e.name != "medad.bench.signals":
            raise
    else:
        if hasattr(mod, "register_bench"):
            mod.register_bench(bench_app)
