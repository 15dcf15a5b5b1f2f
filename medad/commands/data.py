"""``medad inspect PATH`` and ``medad datasets inspect|kinds``: what a file, folder or dataset holds.

Bad input raises a :class:`~medad.errors.MedadError` (``medad.cli.main`` prints it and exits 2).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import typer

from medad.commands import AliasedCommand

_MAX_FOLDER_ROWS = 60
# documentation and tables that share extensions with signals (.txt, .csv): not data
_DOC_PREFIXES = ("readme", "source", "license", "licence", "participants", "labels", "reference")


def describe_path(path: Path, *, series_uid: str | None = None, sfreq: float | None = None,
                  text_layout: str = "auto") -> dict[str, Any]:
    """JSON-able facts about a file or folder (reads it; folders are only listed)."""
    from medad.errors import ConfigError
    from medad.io.dispatch import kind_of

    kind = kind_of(path)
    if kind == "volume" or (kind == "dicom_folder" and series_uid):
        from medad.io.volumes import describe_volume, read_volume

        return describe_volume(read_volume(path, series_uid=series_uid))
    if kind == "dicom_folder":
        from medad.io.volumes import describe_volume, list_dicom_series, read_volume

        series = list_dicom_series(path)
        if _holds_other_data(path):  # DICOM beside NIfTI, images, ...: a data folder, not one series
            info = describe_folder(path)
            info["dicom_series"] = [{"series_uid": uid, "n_files": len(f)} for uid, f in series.items()]
            info["note"] = "inspect one DICOM series with --series-uid, or a file by its path"
            return info
        if len(series) == 1:
            return describe_volume(read_volume(path))
        return {"kind": "dicom_folder", "path": str(path), "n_series": len(series),
                "series": [{"series_uid": uid, "n_files": len(f)} for uid, f in series.items()],
                "note": "several series: inspect one with --series-uid"}
    if kind == "image":
        from medad.io.images import describe_image, read_image

        return describe_image(read_image(path))
    if kind == "video":
        from medad.io.images import video_info

        return video_info(path)
    from medad.io.signals import ANNOT_SUFFIXES

    if kind == "signal" and path.name.lower().endswith(ANNOT_SUFFIXES):
        return describe_annotations(path)
    if kind == "signal":
        try:
            from medad.io.signals import describe
        except ImportError:
            raise ConfigError("signal support (medad.io.signals) is not available") from None
        return describe(path, sfreq=sfreq, text_layout=text_layout)
    return describe_folder(path)


def describe_annotations(path: Path) -> dict[str, Any]:
    """An MNE annotation file (``*-annot.fif``, as ``medad screen run`` writes): counts per
    description, first onsets, total duration."""
    import mne

    from medad.errors import ReadError

    try:
        with warnings.catch_warnings():  # a broken file: one error line, not MNE's warning too
            warnings.simplefilter("ignore")
            ann = mne.read_annotations(str(path))
    except Exception as e:  # noqa: BLE001 -- MNE raises many types for a broken file
        raise ReadError(f"cannot read as MNE annotations: {type(e).__name__}: {e}", path) from None
    return {"kind": "annotations", "path": str(path), "n_annotations": len(ann),
            "annotations": dict(Counter(str(d) for d in ann.description)),
            "total_duration_s": round(float(sum(ann.duration)), 3),
            "orig_time": None if ann.orig_time is None else str(ann.orig_time),
            "first": [{"onset": round(float(o), 3), "duration": round(float(d), 3), "description": str(t)}
                      for o, d, t in list(zip(ann.onset, ann.duration, ann.description))[:5]]}


def _holds_other_data(folder: Path) -> bool:
    """Files in ``folder`` itself, by extension (nothing read), that medad reads and that are not
    DICOM: NIfTI/MGZ, images, videos, EDF/BDF/FIF/WFDB/WAV (text is left out: notes sit beside
    DICOM files)."""
    from medad.io.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES
    from medad.io.signals import MNE_EXTENSIONS, WAV_EXTENSIONS
    from medad.io.volumes import MGH_SUFFIXES, NIFTI_SUFFIXES, volume_suffix

    other = NIFTI_SUFFIXES + MGH_SUFFIXES + IMAGE_SUFFIXES + VIDEO_SUFFIXES + MNE_EXTENSIONS + WAV_EXTENSIONS + (".hea",)
    return any(f.is_file() and not f.name.startswith(".") and volume_suffix(f) in other for f in folder.iterdir())


def describe_folder(folder: Path, max_depth: int = 3) -> dict[str, Any]:
    """Files per kind in each sub-folder (by extension, nothing read); class/split folder names
    are reported as the labels found."""
    from medad.io.dispatch import VOLUME_FILE_SUFFIXES
    from medad.io.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES
    from medad.io.volumes import volume_suffix

    try:
        from medad.io.signals import SIGNAL_EXTENSIONS
    except ImportError:
        SIGNAL_EXTENSIONS = ()

    def kind(f: Path) -> str:
        if f.name.lower().startswith(_DOC_PREFIXES):
            return "other"
        s = volume_suffix(f)
        for name, sufs in (("volume", VOLUME_FILE_SUFFIXES), ("image", IMAGE_SUFFIXES),
                           ("video", VIDEO_SUFFIXES), ("signal", tuple(SIGNAL_EXTENSIONS))):
            if s in sufs:
                return name
        return "other"

    rows: dict[str, Counter] = {}
    for d in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        rel = d.relative_to(folder)
        if len(rel.parts) > max_depth or any(part.startswith(".") for part in rel.parts):
            continue
        c = Counter(kind(f) for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
        if sum(v for k, v in c.items() if k != "other"):
            rows[str(rel) if str(rel) != "." else "."] = c
    total = Counter()
    for c in rows.values():
        total.update(c)
    labels = sorted({Path(r).name for r in rows if r != "."})
    out = {"kind": "folder", "path": str(folder), "files": dict(total),
           "folders": {r: dict(c) for r, c in list(rows.items())[:_MAX_FOLDER_ROWS]},
           "n_folders_with_data": len(rows), "labels_found": labels}
    if not rows:  # most often a wrong path: say what was looked for rather than print zeros only
        out["note"] = (f"no file medad reads here or up to {max_depth} folder levels below (volumes "
                       f"{', '.join(VOLUME_FILE_SUFFIXES)}; images; videos; signals {', '.join(SIGNAL_EXTENSIONS)}; "
                       "DICOM series folders)")
    return out


def _print(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    for k, v in info.items():
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            typer.echo(f"{k}:")
            for kk, vv in v.items():
                typer.echo(f"  {kk}: " + ", ".join(f"{a}={b}" for a, b in vv.items()))
        elif isinstance(v, float):
            typer.echo(f"{k}: {v:.6g}")
        elif isinstance(v, list) and len(v) > 20:
            typer.echo(f"{k}: {v[:20]} ... ({len(v)} in all)")
        else:
            typer.echo(f"{k}: {v}")


def _format_summary(summary: dict[str, Any]) -> str:
    """Split x label table when the summary has one, else key: value lines."""
    lines = []
    per = summary.get("per_split_label")
    if per:
        labels = sorted({lab for d in per.values() for lab in d})
        width = max(8, *(len(lab) for lab in labels))
        lines.append("split".ljust(12) + "".join(lab.rjust(width + 2) for lab in labels)
                     + "total".rjust(9) + "subjects".rjust(10))
        subs = summary.get("subjects_per_split", {})
        for split, d in per.items():
            lines.append(str(split).ljust(12) + "".join(str(d.get(lab, 0)).rjust(width + 2) for lab in labels)
                         + str(sum(d.values())).rjust(9) + str(subs.get(split, "")).rjust(10))
    for k, v in summary.items():
        if k not in ("per_split_label", "subjects_per_split"):
            lines.append(f"{k}: {v}")
    return "\n".join(lines)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("inspect", cls=AliasedCommand)
    def inspect(
        path: Path = typer.Argument(..., help="File (NIfTI, MGZ, DICOM, PNG/JPG, video, EDF/WFDB/WAV/text) or folder."),
        series_uid: Optional[str] = typer.Option(None, "--series-uid", help="DICOM series to read from a folder."),
        sfreq: Optional[float] = typer.Option(None, "--text-sfreq", "--sfreq",
                                              help="Sampling rate of a plain-text signal (it carries none)."),
        text_layout: str = typer.Option("auto", "--text-layout",
                                        help="How a plain-text signal lays out its values: auto, columns (one "
                                             "channel a column) or wrapped (one signal in file order)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Print what a file or folder holds: shape, spacing, orientation, sampling rate, channels,
        duration, frames, labels found."""
        if sfreq is not None and not sfreq > 0:  # a rate <= 0 would be shown as the file's own
            raise typer.BadParameter(f"must be a sampling rate > 0 Hz, got {sfreq:g}", param_hint="--text-sfreq")
        _print(describe_path(path, series_uid=series_uid, sfreq=sfreq, text_layout=text_layout), as_json)

    datasets_app = typer.Typer(help="Dataset adapters: list kinds, count items per label and split.",
                               no_args_is_help=True)
    app.add_typer(datasets_app, name="datasets")

    @datasets_app.command("inspect")
    def datasets_inspect(
        root: Optional[Path] = typer.Argument(None, help="Dataset folder (default: the kind's folder under the data root)."),
        kind: str = typer.Option(..., "--kind", "-k", help="Layout kind (see `medad datasets kinds`)."),
        data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data root (else $MEDAD_DATA_ROOT, ../shared/data)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the subject-wise split where the layout has none."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Counts per label and split (splits are subject-wise; seeded where the layout has none)."""
        from medad.datasets import dataset_root, get_loader, summarize

        folder = dataset_root(kind, root, data_root)
        loader = get_loader(kind)
        import inspect as _inspect

        kw = {"seed": seed} if "seed" in _inspect.signature(loader).parameters else {}
        from medad.io.records import SignalRecord

        loaded = loader(folder, **kw)
        if isinstance(loaded, SignalRecord):  # a one-recording layout (wang_chung): a list of one
            loaded = [loaded]
        summary = {"kind": kind, "root": str(folder), **summarize(kind, loaded)}
        if as_json:
            typer.echo(json.dumps(summary, indent=2, default=str))
        else:
            typer.echo(_format_summary(summary))

    @datasets_app.command("kinds")
    def datasets_kinds() -> None:
        """List the dataset kinds and their default folders under the data root."""
        from medad.datasets import KINDS

        for name, k in sorted(KINDS.items()):
            typer.echo(f"{name:20s} {k.subdir or '(give ROOT)':28s} {k.description}")
