"""``medad report RESULTS_DIR``: one HTML page per case found under a results folder, plus an index.

A case is a folder holding ``case.json`` (written by ``medad explain`` or by any pipeline through
:func:`medad.report.html.write_case`). Folders that hold PNG figures but no ``case.json`` (outputs
of other pipelines) still get a page showing their figures; when the results folder has a
``summary.csv`` whose first column names the case (folder name or figure name), its ``score``,
``threshold`` and ``decision``/``label`` columns are shown too.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from medad.errors import MedadError, ReadError
from medad.report.html import CASE_FILE, CaseReport, Figure, read_case, write_case_report, write_index

REPORT_FILE = "report.html"
INDEX_FILE = "index.html"


def _summary_rows(root: Path) -> dict[str, dict[str, Any]]:
    f = root / "summary.csv"
    if not f.is_file():
        return {}
    try:
        with open(f, newline="") as fh:
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


def _generic_case(folder: Path, root: Path, summary: dict[str, dict[str, Any]]) -> CaseReport:
    pngs = sorted(folder.glob("*.png"))
    cid = folder.name if folder != root else root.name
    row = summary.get(cid) or next((summary[p.stem] for p in pngs if p.stem in summary), None) or {}
    decision = str(row.get("decision") or row.get("label") or "see the pipeline's summary")
    return CaseReport(case_id=cid, decision=decision, score=_num(row.get("score")),
                      threshold=_num(row.get("threshold")),
                      figures=[Figure(png=str(p), title=p.stem, kind="figure") for p in pngs])


def build_reports(root: str | Path) -> tuple[Path, list[tuple[CaseReport, str]], list[tuple[str, str]]]:
    """Write ``report.html`` into every case folder under ``root`` and ``root/index.html``.

    A case that fails (unreadable ``case.json``, missing figure) is listed on the index with its
    problem and the others are still reported. Returns (index path, reported, failures).
    """
    root = Path(root)
    if not root.is_dir():
        raise ReadError("results folder not found", root)
    summary = _summary_rows(root)
    folders = sorted({f.parent for f in root.rglob(CASE_FILE)} | {f.parent for f in root.rglob("*.png")})
    done: list[tuple[CaseReport, str]] = []
    failed: list[tuple[str, str]] = []
    for folder in folders:
        try:
            case = (read_case(folder / CASE_FILE) if (folder / CASE_FILE).is_file()
                    else _generic_case(folder, root, summary))
            page = write_case_report(folder / REPORT_FILE, case)
            done.append((case, str(page.relative_to(root))))
        except MedadError as e:
            failed.append((str(folder.relative_to(root)) or ".", str(e.problem)))
    index = write_index(root / INDEX_FILE, done, failed)
    return index, done, failed
