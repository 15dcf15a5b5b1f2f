"""``medad report RESULTS_DIR``: one HTML page per case found under a results folder, plus an index.

A case is a folder holding ``case.json`` (written by ``medad explain`` or by any pipeline through
:func:`medad.report.html.write_case`). An output folder of ``medad screen run`` (``results.json``)
gives one page per recording (``<record_id>_report.html``: decision, maximum score, threshold,
flagged spans, its PNG; unreadable recordings listed with their problem), and one of ``medad images
screen`` (``summary.json``) one page for the video or frame folder (flagged spans and the overlays
of flagged frames). Other folders that hold PNG figures still get a page showing their figures;
when the results folder has a ``summary.csv`` whose first column names the case (folder name or
figure name), its ``score``, ``threshold`` and ``decision``/``label`` columns are shown too.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from medad.errors import MedadError, ReadError
from medad.report.html import CASE_FILE, CaseReport, Figure, read_case, write_case_report, write_index
from medad.utils import read_model_json

REPORT_FILE = "report.html"
INDEX_FILE = "index.html"


def _summary_rows(root: Path) -> dict[str, dict[str, Any]]:
    f = root / "summary.csv"
    if not f.is_file():
        return {}
    try:
        with open(f, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise ReadError(f"cannot read summary: {e}", f) from None
    if not rows:
        return {}
    key = next(iter(rows[0]))
    return {str(r[key]): r for r in rows}


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# summary.csv columns shown by the generic page itself, not again among its details; ``path``
# is left out (folder paths can hold patient names; the file name is shown as the source)
_SHOWN_COLUMNS = {"score", "max_score", "threshold", "decision", "label", "status", "error", "path", "file",
                  "model", "detector"}


def _volume_rule(row: dict[str, Any]) -> dict[str, str]:
    """The decision rule of a `medad brain score` row (``lesion_ml`` and ``decision_ml``): the scan
    is decided by its lesion volume; the voxel threshold only decides which voxels are lesion."""
    ml, limit = _num(row.get("lesion_ml")), _num(row.get("decision_ml"))
    if ml is None:
        return {}
    top, thr = _num(row.get("max_score")), _num(row.get("threshold"))
    out = {"decision rule": (f"abnormal when the lesion volume exceeds {limit:.4g} ml; this scan: {ml:.4g} ml, "
                             f"{'above' if ml > limit else 'not above'} it") if limit is not None else
           (f"abnormal when the lesion volume exceeds the model's decision volume (decision_ml in brain_model.json; "
            f"this summary.csv predates that column); this scan: {ml:.4g} ml")}
    if top is not None and thr is not None:
        out["score and threshold"] = (f"score = the anomaly map's maximum in the brain ({top:.4g}); threshold = the "
                                      f"voxel threshold ({thr:.4g}): voxels above it (small clusters dropped) are "
                                      f"the lesion whose volume decides")
    return out


def _generic_case(folder: Path, root: Path, summary: dict[str, dict[str, Any]]) -> CaseReport:
    pngs = sorted(folder.glob("*.png"))
    cid = folder.name if folder != root else root.name
    row = summary.get(cid) or next((summary[p.stem] for p in pngs if p.stem in summary), None) or {}
    decision = str(row.get("decision") or row.get("label") or "see the pipeline's summary")
    key = next(iter(row), None)
    # `medad brain score` writes max_score (the case score), lesion_ml, mean_score, brain_ml...
    rule = _volume_rule(row)
    # long decimals shown to 4 significant digits (the CSV keeps full precision); others as written
    details = {**rule, **{k: (f"{_num(v):.4g}" if "." in str(v) and len(str(v)) > 8 and _num(v) is not None else v)
                          for k, v in row.items()
                          if k != key and k not in _SHOWN_COLUMNS and v not in (None, "")}}
    src = row.get("path") or row.get("file")
    model = row.get("model") or row.get("detector") or ("see brain_model.json in the model folder" if rule else None)
    return CaseReport(case_id=cid, decision=decision, score=_num(row.get("score", row.get("max_score"))),
                      threshold=_num(row.get("threshold")), source=Path(src).name if src else None,
                      model=model, method="the model's own anomaly map (for attributions: medad explain)" if rule else None,
                      figures=[Figure(png=str(p), title=p.stem, kind="figure") for p in pngs],
                      details=details)


def _summary_failures(summary: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """Rows of a pipeline's summary.csv that record a failure (``status`` error, as `medad brain
    score` writes for a scan it could not read), for the index."""
    out = []
    for cid, r in summary.items():
        if str(r.get("status", "")).lower() == "error":
            src = r.get("path") or r.get("file")
            why = str(r.get("error") or "not processed")
            if src:  # the file's name, not its full path (folder paths can hold names)
                why = why.replace(str(src), Path(src).name)
            out.append((cid, why))
    return out


SCREENING_NOTE = ("Top: the recording (its first channels, preprocessed as screened) with the flagged spans "
                  "shaded red; below: the score of every window (ECG beat mode: beat) over time and the "
                  "threshold. A span is flagged when enough consecutive windows score above the threshold.")
MAX_FRAME_FIGURES = 30  # overlays shown on a video's page (all of them are in the overlays folder)


def _screening_cases(folder: Path, d: dict[str, Any]) -> tuple[list[tuple[CaseReport, Path]], list[tuple[str, str]]]:
    """One case per recording of a ``medad screen run`` output folder; unreadable ones as failures."""
    cases, failed = [], []
    for r in d.get("recordings", []):
        rid = str(r.get("record_id"))
        if r.get("status") != "ok":
            failed.append((rid, f"{r.get('error') or 'not screened'} ({Path(str(r.get('file'))).name})"))
            continue
        ivs = r.get("intervals") or []
        unit = d.get("unit", "windows")
        details = {"duration (s)": r.get("duration_s"), unit: r.get("n_beats") or r.get("n_windows"),
                   "flagged spans": len(ivs), "flagged seconds": r.get("flagged_seconds"),
                   "flagged spans (s)": ", ".join(f"{iv['start_s']:.1f}-{iv['end_s']:.1f} (p={iv['probability']:.2f})"
                                                  for iv in ivs[:20]) + (" ..." if len(ivs) > 20 else "") or "none",
                   "decision rule": d.get("decision_rule"), "probability": d.get("probability_meaning"),
                   "case score": f"maximum over {unit}"}
        figs = [Figure(png=str(folder / o), title=o, kind="figure", note=SCREENING_NOTE)
                for o in r.get("outputs", []) if str(o).endswith(".png")]
        cases.append((CaseReport(case_id=rid, decision=str(r.get("decision")), score=_num(r.get("max_score")),
                                 threshold=_num(r.get("threshold")), model=d.get("detector"),
                                 method="screening (no explanation map)", source=Path(str(r.get("file"))).name,
                                 figures=figs, details={k: v for k, v in details.items() if v not in (None, "")}),
                      folder / f"{rid}_{REPORT_FILE}"))
    return cases, failed


# what build_reports looks for, named when a folder holds none of it
LOOKED_FOR = (f"case folder ({CASE_FILE}, from medad explain), medad screen run output (results.json), "
              "medad images screen output (summary.json) or PNG figure")
MAX_LISTED_FILES = 30  # flagged image files named on a frame folder's page (all are in frames.csv)


def _frame_rows(f: Path) -> list[dict[str, str]]:
    try:
        with open(f, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise ReadError(f"cannot read frame scores: {e}", f) from None


def _frames_case(folder: Path, d: dict[str, Any]) -> tuple[CaseReport, Path]:
    """The case of a ``medad images screen`` output folder (one video or frame folder). A folder
    of image files is described by its flagged files (``frames.csv``'s ``file`` column), not by
    time spans (its 'seconds' would only be frame numbers at an assumed rate)."""
    spans, n = d.get("spans") or [], int(d.get("n_flagged") or 0)
    overlays = list(d.get("overlays") or [])
    rows = _frame_rows(folder / "frames.csv") if (folder / "frames.csv").is_file() else []
    scores = [v for v in (_num(r.get("score")) for r in rows) if v is not None]
    files = [r["file"] for r in rows if r.get("file") and str(r.get("flagged")) == "1"]
    is_folder = any(r.get("file") for r in rows)
    figs = [Figure(png=str(folder / o), title=Path(o).stem.replace("_", " "), kind="anomaly_map")
            for o in overlays[:MAX_FRAME_FIGURES]]
    details: dict[str, Any] = {"frames screened": d.get("n_frames_screened"), "stride": d.get("stride"),
                               "flagged frames": n}
    if is_folder:
        details["input"] = f"a folder of {len(rows)} image files (one frame each)"
        details["flagged files"] = (", ".join(files[:MAX_LISTED_FILES]) + (
            f" ... ({len(files) - MAX_LISTED_FILES} more; all in frames.csv)" if len(files) > MAX_LISTED_FILES
            else "")) or "none"
    else:
        details["flagged spans (s)"] = ", ".join(f"{s['start_s']:.2f}-{s['end_s']:.2f}" for s in spans[:20]) \
            + (" ..." if len(spans) > 20 else "") or "none"
    details.update({"unreadable frames": len(d.get("unreadable_frames") or []),
                    "case score": "maximum over screened frames (every frame's score is in frames.csv)"})
    if len(overlays) > MAX_FRAME_FIGURES:
        details["overlays shown"] = f"the first {MAX_FRAME_FIGURES} of {len(overlays)} (all in overlays/)"
    method = ("no maps: this detector draws none; run medad explain on a frame for Grad-CAM"
              if d.get("maps") is False else "frame screening (the detector's own anomaly map)")
    case = CaseReport(case_id=Path(str(d.get("source"))).name, decision="abnormal" if n else "normal",
                      score=max(scores, default=None), threshold=_num(d.get("threshold")), model=d.get("detector"),
                      method=method, source=Path(str(d.get("source"))).name, figures=figs, details=details)
    return case, folder / REPORT_FILE


def _why(e: MedadError) -> str:
    """A failure for the index: the problem and the file's name, not its full path (folder paths
    can hold patient names)."""
    return f"{e.problem} ({e.path.name})" if e.path is not None else e.problem


def _pipeline_cases(root: Path) -> tuple[dict[Path, list[tuple[CaseReport, Path]]], list[tuple[str, str]]]:
    """Cases of the screening (``results.json``) and frame-screening (``summary.json``) output
    folders under ``root``, keyed by folder."""
    found: dict[Path, list[tuple[CaseReport, Path]]] = {}
    failed: list[tuple[str, str]] = []
    for f in sorted(root.rglob("results.json")) + sorted(root.rglob("summary.json")):
        try:
            d = read_model_json(f.parent, f.name, "results folder")
            if f.name == "results.json" and isinstance(d.get("recordings"), list):
                cases, bad = _screening_cases(f.parent, d)
                found[f.parent] = cases
                rel = str(f.parent.relative_to(root))
                failed += [(f"{rel}/{rid}" if rel != "." else rid, why) for rid, why in bad]
            elif f.name == "summary.json" and "n_frames_screened" in d:
                found[f.parent] = [_frames_case(f.parent, d)]
        except MedadError as e:
            failed.append((str(f.parent.relative_to(root)) or ".", _why(e)))
    return found, failed


def build_reports(root: str | Path) -> tuple[Path, list[tuple[CaseReport, str]], list[tuple[str, str]]]:
    """Write ``report.html`` into every case folder under ``root`` and ``root/index.html``.

    A case that fails (unreadable ``case.json``, missing figure) is listed on the index with its
    problem and the others are still reported. Returns (index path, reported, failures).
    Raises :class:`ReadError` when ``root`` is missing, not a folder, or holds nothing to report.
    """
    root = Path(root)
    if not root.exists():
        raise ReadError("results folder not found", root)
    if not root.is_dir():
        raise ReadError("is a file, not a results folder (medad report takes the output folder of medad explain, "
                        "medad screen run, medad images screen or medad brain score)", root)
    pipeline, failed = _pipeline_cases(root)
    # summary.csv of every pipeline output folder under root (a `medad brain score` folder may sit
    # beside others): its rows describe the case folders next to it
    summaries: dict[Path, dict[str, dict[str, Any]]] = {}
    stale: set[Path] = set()
    for f in sorted(root.rglob("summary.csv")):
        rel = f.parent.relative_to(root)
        try:
            summaries[f.parent.resolve()] = rows = _summary_rows(f.parent)
        except MedadError as e:
            failed.append((str(rel), _why(e)))
            continue
        for cid, why in _summary_failures(rows):
            failed.append((cid if str(rel) == "." else f"{rel}/{cid}", why))
            # a case folder whose row now says error holds an earlier run's figures: not this run's
            stale.add((f.parent / cid).resolve())
    done: list[tuple[CaseReport, str]] = []
    for folder, cases in pipeline.items():
        for case, page in cases:
            try:
                write_case_report(page, case)
                done.append((case, str(page.relative_to(root))))
            except MedadError as e:
                failed.append((case.case_id, _why(e)))
    # pipeline folders (and their overlays/ subfolders) are reported above, not as loose figures
    covered = [f.resolve() for f in pipeline]
    folders = sorted({f.parent for f in root.rglob(CASE_FILE)} | {f.parent for f in root.rglob("*.png")})
    folders = [f for f in folders if ((f / CASE_FILE).is_file()
               or not any(f.resolve().is_relative_to(c) for c in covered)) and f.resolve() not in stale]
    for folder in folders:
        try:
            case = (read_case(folder / CASE_FILE) if (folder / CASE_FILE).is_file()
                    else _generic_case(folder, root, summaries.get(folder.parent.resolve())
                                       or summaries.get(folder.resolve(), {})))
            page = write_case_report(folder / REPORT_FILE, case)
            done.append((case, str(page.relative_to(root))))
        except MedadError as e:
            failed.append((str(folder.relative_to(root)) or ".", _why(e)))
    if not done and not failed:  # nothing to report is a mistake (wrong folder), not an empty success
        raise ReadError(f"nothing to report: no {LOOKED_FOR} found in this folder or its subfolders", root)
    index = write_index(root / INDEX_FILE, done, failed)
    return index, done, failed
