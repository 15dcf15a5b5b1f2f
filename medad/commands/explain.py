"""``medad explain`` (maps + PNG + NIfTI + HTML for one input), ``medad report`` (HTML pages for a
folder of results) and ``medad bench explain`` (faithfulness and cost of the methods)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medad.commands import AliasedCommand, name_list
from medad.commands.signals import CHANNELS_HELP, _channel_list


def _read_rate(path: Path, text_sfreq: Optional[float], sfreq: Optional[float]) -> Optional[float]:
    """The one rate a plain detector's recording is read with (``read_signal(sfreq=)``): a
    plain-text file's own rate (``--text-sfreq``, else ``--sfreq`` as before), or the rate any
    other recording is resampled to (``--sfreq``). A text file cannot be both read at one rate
    and resampled to another here, so that is a usage error rather than a silent choice."""
    from medad.io.signals import TEXT_EXTENSIONS

    if path.suffix.lower() not in TEXT_EXTENSIONS:
        return sfreq
    if text_sfreq is not None and sfreq is not None and text_sfreq != sfreq:
        raise typer.BadParameter(f"a plain-text recording is read at --text-sfreq {text_sfreq:g} Hz and cannot be "
                                 f"resampled to {sfreq:g} Hz for a plain detector; resample it beforehand",
                                 param_hint="--sfreq")
    return text_sfreq if text_sfreq is not None else sfreq


def _check_explain_args(model: Path, input: Path, text_sfreq: Optional[float], sfreq: Optional[float]) -> None:
    """The likely mistakes, named before a model is loaded: a rate <= 0, a missing input, a model
    path that is missing, a file, or a folder holding no medad model of any kind."""
    from medad.errors import ReadError
    from medad.utils import MODEL_FOLDER_KINDS, check_model_folder

    for option, rate in (("--text-sfreq", text_sfreq), ("--sfreq", sfreq)):
        if rate is not None and not rate > 0:
            raise typer.BadParameter(f"must be a sampling rate > 0 Hz, got {rate:g}", param_hint=option)
    check_model_folder(model, "medad model: the --out folder of brain, screen or images train")
    if not any((model / f).is_file() for f in MODEL_FOLDER_KINDS):
        raise ReadError(f"not a medad model folder (none of {', '.join(MODEL_FOLDER_KINDS)}): give the --out folder "
                        "of medad brain train, screen train or images train, or a folder Detector.save wrote", model)
    if not input.exists():
        raise ReadError("input file or folder not found", input)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("explain", cls=AliasedCommand)
    def explain_cmd(
        model: Path = typer.Argument(..., help="folder of a saved medad detector, or of a `medad brain train`, "
                                               "`medad screen train` or `medad images train` model (its own "
                                               "preprocessing is applied)"),
        input: Path = typer.Argument(..., help="image, volume (NIfTI/MGZ/DICOM), recording, or .npy array"),
        out: Path = typer.Option(..., "--out", "-o", help="output folder"),
        method: List[str] = typer.Option([], "--method", "-m",
                                         help="gradcam, ig, gradient_shap, kernel_shap (shap), lime; repeatable "
                                              "(default: gradcam for classifiers, ig for other neural detectors, "
                                              "kernel_shap otherwise)"),
        case_id: Optional[str] = typer.Option(None, help="name shown in the report (default: the file name)"),
        include_identity: bool = typer.Option(False, "--include-identity",
                                              help="show patient name/id from the DICOM/EDF header (off by default)"),
        normalize: str = typer.Option("none", "--normalize", "--normalise",
                                      help="plain detectors: none, zscore or minmax (must match training)"),
        text_sfreq: Optional[float] = typer.Option(None, help="sampling rate of a plain-text recording (it carries "
                                                              "none), as in `medad screen train/run` and `medad inspect`"),
        sfreq: Optional[float] = typer.Option(None, help="plain signal detectors: resample the recording to this "
                                                         "working rate (as `medad screen train --sfreq`; a screening "
                                                         "model keeps its own). Older use, still read: a plain-text "
                                                         "file's rate when --text-sfreq is not given"),
        top_k: int = typer.Option(3, min=1, help="slices/windows explained by perturbation methods (>= 1)"),
        n_samples: Optional[int] = typer.Option(None, min=10, help="KernelSHAP/LIME evaluations, GradientSHAP samples "
                                                                    "(>= 10: fewer leave the map empty)"),
        n_segments: Optional[int] = typer.Option(None, min=2, help="superpixels/supervoxels/time segments (>= 2)"),
        device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when present)"),
        mask_pattern: Optional[str] = typer.Option(None, help="brain models: glob of the scan's brain mask in its "
                                                              "folder (default: the model's, as `medad brain score`)"),
        channels: Optional[str] = typer.Option(
            None, help="recording models (`medad screen train`), as `medad screen run --channels`: " + CHANNELS_HELP
                       + "; a recording without them is refused with the reason"),
    ) -> None:
        """Explain a detector's decision on one input: maps, overlays, NIfTI maps and report.html."""
        from medad.report.cases import explain_file

        _check_explain_args(model, input, text_sfreq, sfreq)
        chosen = _channel_list(channels)
        if chosen and not (model / "screening.json").is_file():
            raise typer.BadParameter("applies to recording models only (the --out folder of `medad screen train`, "
                                     "holding screening.json); this model has none", param_hint="--channels")
        kw = {k: v for k, v in dict(n_samples=n_samples, n_segments=n_segments, device=device).items() if v is not None}
        if (model / "brain_model.json").is_file():  # a `medad brain train` model: use its preprocessing
            from pipelines.brain_lesions import explain_scan

            case = explain_scan(model, input, out, methods=method or None, top_k=top_k, case_id=case_id,
                                mask_pattern=mask_pattern, **kw)
            typer.echo(f"{case.case_id}: {case.decision} (max score {case.score:.4g}, voxel threshold {case.threshold:.4g})")
            typer.echo(f"wrote {out / 'report.html'} and {len(case.figures)} figure(s) in {out}")
            return
        if (model / "screening.json").is_file():  # a `medad screen train` model: its own windows
            from pipelines.screening import explain_recording

            case = explain_recording(model, input, out, methods=method or None, top_k=top_k, case_id=case_id,
                                     include_identity=include_identity,
                                     text_sfreq=text_sfreq if text_sfreq is not None else sfreq,
                                     channels=chosen, **kw)
            typer.echo(f"{case.case_id}: {case.decision} (max window or beat score {case.score:.4g}, "
                       f"threshold {case.threshold:.4g})")
            typer.echo(f"wrote {out / 'report.html'} and {len(case.figures)} figure(s) in {out}")
            return
        if (model / "frames.json").is_file():  # a `medad images train` model: its frame preprocessing
            from pipelines.frames import frame_preparer

            kw["prepare_image"] = frame_preparer(model)
        case = explain_file(model, input, out, methods=method or None, case_id=case_id,
                            include_identity=include_identity, normalise=normalize,
                            sfreq=_read_rate(input, text_sfreq, sfreq), top_k=top_k, **kw)
        thr = "none" if case.threshold is None else f"{case.threshold:.4g}"
        typer.echo(f"{case.case_id}: {case.decision} (score {case.score:.4g}, threshold {thr})")
        typer.echo(f"wrote {out / 'report.html'} and {len(case.figures)} figure(s) in {out}")

    @app.command("report")
    def report_cmd(results_dir: Path = typer.Argument(..., help="folder of results (case folders)")) -> None:
        """One self-contained HTML page per case under RESULTS_DIR, and RESULTS_DIR/index.html."""
        from medad.errors import ReadError
        from medad.report.folder import build_reports

        index, done, failed = build_reports(results_dir)
        for name, problem in failed:
            typer.echo(f"skipped {name}: {problem}", err=True)
        typer.echo(f"wrote {len(done)} report(s) and {index}")
        if not done:  # every case failed: the index lists why, but the run did not do its job
            raise ReadError(f"no case could be reported ({len(failed)} failed, listed above and in {index.name})",
                            results_dir)

    @bench_app.command("explain", cls=AliasedCommand)
    def bench_explain_cmd(
        data_root: Optional[Path] = typer.Option(None, help="data folder (default: $MEDAD_DATA_ROOT or ../shared/data)"),
        out: Path = typer.Option(Path("outputs/bench"), help="output folder"),
        quick: bool = typer.Option(False, help="fewer slices, windows and epochs (minutes)"),
        threads: int = typer.Option(2, help="torch CPU threads"),
        parts: List[str] = typer.Option(["all"], "--parts", "--part",
                                        help="parts to run: brats, bonn, ecg or all; repeatable or comma-separated "
                                             "(--parts brats,ecg), as demo; the parts not run keep their results "
                                             "from the earlier explain.json in --out"),
    ) -> None:
        """Deletion/insertion AUC against random maps, share inside lesion masks (BraTS) and
        seizure windows (Bonn), and seconds per map, for every explanation method."""
        from medad.bench.explain import run

        run(data_root=data_root, out=out, quick=quick, threads=threads, part=name_list(parts))

