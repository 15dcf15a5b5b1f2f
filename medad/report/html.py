"""Self-contained HTML reports: one page per case (scan, image or recording) and an index page.

Every image is embedded as base64 and all styling is inline, so a page makes no network request
and can be mailed or archived as one file. Only what the caller passes is shown: patient identity
from DICOM/EDF headers is never read here unless :func:`identity_from_file` is called explicitly
(the ``--include-identity`` opt-in of ``medad explain``).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from medad.errors import ReadError
from medad.utils import write_text

#: The per-case record ``medad explain`` writes next to its figures; ``medad report`` reads it.
CASE_FILE = "case.json"

DISCLAIMER = ("Research software, not a medical device. The decision and the maps are produced by a "
              "statistical model and must be checked by a qualified clinician.")

#: Plain-language meaning and known limits of each kind of map, shown under the figure.
MAP_NOTES: dict[str, str] = {
    "anomaly_map": (
        "The detector's own map: how different each pixel or time point is from what the model learned "
        "as normal (for example the difference between the input and its 'healthy' reconstruction). "
        "Limits: unusual but harmless things (artefacts, anatomy variants, image edges) also light up, "
        "and a bright area is not a diagnosis."),
    "gradcam": (
        "Grad-CAM: bright areas are where the network's deepest feature layer responded in a way that "
        "raised the score. Limits: coarse (computed at that layer's low resolution, then smoothed to the "
        "image), shows only evidence for the score, not against it, and a highlighted area is where the "
        "model looked, not proof of a cause. For detectors that compare the input with a 'healthy' "
        "reconstruction (autoencoders), Grad-CAM sees only the network's side of that comparison and often "
        "misses the lesion: prefer Integrated Gradients there."),
    "ig": (
        "Integrated Gradients: each pixel's share of the score, measured against a blank reference input. "
        "Bright (positive) pixels push the score up, dark (negative) ones down. Limits: depends on the "
        "chosen reference and is noisy at the level of single pixels."),
    "gradient_shap": (
        "GradientSHAP: an approximation of each pixel's Shapley value (its average contribution to the "
        "score), averaging gradients at random points between the reference input and this input. Limits: "
        "noisy, and the approximation assumes the model behaves smoothly between the reference and the input."),
    "kernel_shap": (
        "KernelSHAP: the input was divided into regions (superpixels, supervoxels or time segments); each "
        "region's value estimates how much the score changes, on average, when that region is blanked "
        "out. Limits: only as fine as the regions, estimated from a limited number of samples, and "
        "blanked inputs are unnatural images the model never saw."),
    "lime": (
        "LIME: a simple linear model was fitted to imitate the model on many copies of this input with "
        "regions blanked out; a region's weight says how much it raised the score in that imitation. "
        "Limits: valid only near this input, depends on the regions and the random samples, and the "
        "imitation can be poor."),
    "figure": "A figure written by the pipeline that produced these results.",
    "score_scale": (
        "For a classifier whose score is a probability, the attribution maps explain the score's "
        "log-odds (its value before the final squashing to 0-1): the same ranking, but it keeps "
        "changing near 0 % and 100 %, where a probability would no longer move."),
    "signal": (
        "Signal plot: green shading behind a trace is the attribution (where along time the model found "
        "evidence; darker = more). Each trace is scaled to fill its own row; the row's height in physical "
        "units (a.u. where the unit is unknown or the signal was normalised) is written on its right."),
}


#: the note of a signal plot that shades flagged spans
SIGNAL_SPANS_NOTE = ("Shaded red spans are the time intervals flagged as abnormal (darker = more probable). "
                     + MAP_NOTES["signal"])


@dataclass
class Figure:
    """One figure of a report: a PNG file, its caption and the plain-language note under it."""

    png: str
    title: str
    kind: str = "anomaly_map"  # key of MAP_NOTES
    note: str | None = None


@dataclass
class CaseReport:
    """What one case's page shows. ``identity`` stays empty unless the user opted in."""

    case_id: str
    decision: str
    score: float | None = None
    threshold: float | None = None
    method: str | None = None
    model: str | None = None
    source: str | None = None  # file name only: folder paths can hold names
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CaseReport":
        d = dict(d)
        d["figures"] = [Figure(**f) for f in d.get("figures", [])]
        return cls(**d)


def write_case(folder: str | Path, case: CaseReport) -> Path:
    """Write ``case.json`` (figure paths relative to ``folder``) for :func:`medad report`."""
    folder = Path(folder).resolve()
    d = asdict(case)
    for f in d["figures"]:
        # resolved first: a path relative to the working directory (``--out results/x``) must not be
        # stored as if relative to the case folder (read_case joins it with the folder)
        p = Path(f["png"]).resolve()
        f["png"] = str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p)
    return write_text(folder / CASE_FILE, json.dumps(d, indent=2, default=str))


def read_case(file: str | Path) -> CaseReport:
    file = Path(file)
    try:
        case = CaseReport.from_dict(json.loads(file.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise ReadError(f"not a medad case file: {e}", file) from None
    for f in case.figures:
        if not Path(f.png).is_absolute():
            f.png = str(file.parent / f.png)
    return case


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _img_tag(png: str | Path, alt: str) -> str:
    p = Path(png)
    try:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
    except OSError as e:
        raise ReadError(f"cannot read figure: {e.strerror}", p) from None
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1a1a1a;max-width:1200px}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
.abn{background:#c62828;color:#fff} .nor{background:#2e7d32;color:#fff} .unk{background:#757575;color:#fff}
.decision{display:inline-block;padding:4px 12px;border-radius:4px;font-weight:bold}
figure{margin:1em 0} img{max-width:100%;border:1px solid #ddd} figcaption{font-weight:bold;margin:.3em 0}
.note{color:#333;max-width:900px} .disc{color:#555;font-size:.9em;border-top:1px solid #ccc;padding-top:.5em}
"""


def _page(title: str, body: str) -> str:
    # The CSP forbids every network fetch (only inline styles and data: images), so even a
    # mistaken external reference could not leave the machine when the page is opened.
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
            f'<p class="disc">{html.escape(DISCLAIMER)}</p>\n</body></html>\n')


def _decision_class(decision: str) -> str:
    d = decision.lower()
    if d.startswith(("abnormal", "anomal", "flag", "lesion", "seizure")):
        return "abn"
    if d.startswith(("normal", "no ", "healthy", "not")):
        return "nor"
    return "unk"


def render_case(case: CaseReport) -> str:
    """The HTML text of one case's page."""
    e = html.escape
    rows = [("decision", f'<span class="decision {_decision_class(case.decision)}">{e(case.decision)}</span>'),
            ("score", e(_fmt(case.score))), ("threshold", e(_fmt(case.threshold))),
            ("model", e(_fmt(case.model))), ("explanation method", e(_fmt(case.method))),
            ("input file", e(_fmt(case.source)))]
    rows += [(e(str(k)), e(_fmt(v))) for k, v in case.details.items()]
    parts = [f"<h1>medad report: {e(case.case_id)}</h1>"]
    if case.identity:
        parts.append("<h2>Patient identity (included on request)</h2><table>"
                     + "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in case.identity.items())
                     + "</table>")
    parts.append("<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")
    rule = case.details.get("decision rule")
    if rule:  # e.g. brain scans: decided by the lesion volume, the score is the map's maximum
        parts.append(f'<p class="note">Decision rule: {e(str(rule))}. Thresholds were chosen on healthy '
                     "validation data so that only a set share of healthy cases is flagged.</p>")
    elif case.score is not None and case.threshold is not None:
        parts.append('<p class="note">The case is called abnormal when its score is above the threshold. '
                     "The threshold was chosen on healthy validation data so that only a set share of "
                     "healthy cases is flagged.</p>")
    parts.append("<h2>Maps</h2>" if case.figures else "<p>No maps for this case.</p>")
    for f in case.figures:
        note = f.note or MAP_NOTES.get(f.kind, "")
        parts.append(f"<figure><figcaption>{e(f.title)}</figcaption>{_img_tag(f.png, f.title)}"
                     f'<p class="note">{e(note)}</p></figure>')
    return _page(f"medad report {case.case_id}", "\n".join(parts))


def write_case_report(path: str | Path, case: CaseReport) -> Path:
    """Write one self-contained HTML page for ``case`` (atomically)."""
    return write_text(path, render_case(case))


def write_index(path: str | Path, reports: Sequence[tuple[CaseReport, str]],
                failures: Sequence[tuple[str, str]] = ()) -> Path:
    """An index page: one row per case (linking to its page by relative path) and the cases that
    could not be reported, with the reason."""
    e = html.escape
    rows = "".join(
        f'<tr><td><a href="{e(link)}">{e(c.case_id)}</a></td>'
        f'<td><span class="decision {_decision_class(c.decision)}">{e(c.decision)}</span></td>'
        f"<td>{e(_fmt(c.score))}</td><td>{e(_fmt(c.threshold))}</td><td>{e(_fmt(c.method))}</td></tr>"
        for c, link in reports)
    body = [f"<h1>medad reports ({len(reports)} cases)</h1>",
            "<table><tr><th>case</th><th>decision</th><th>score</th><th>threshold</th><th>method</th></tr>"
            f"{rows}</table>"]
    if failures:
        body.append("<h2>Not reported</h2><table><tr><th>item</th><th>problem</th></tr>"
                    + "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td></tr>" for a, b in failures) + "</table>")
    return write_text(path, _page("medad reports", "\n".join(body)))


def identity_from_file(path: str | Path) -> dict[str, str]:
    """Patient name / id / birth date from a DICOM or EDF header. Only call this when the user has
    explicitly asked for identity in the report."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file())
        p = files[0] if files else p
    out: dict[str, str] = {}
    suf = p.suffix.lower()
    if suf in (".edf", ".bdf"):
        # EDF header: bytes 8-88 hold the local patient identification field.
        try:
            with open(p, "rb") as fh:
                head = fh.read(88)
        except OSError as e:
            raise ReadError(f"cannot read header: {e.strerror}", p) from None
        pid = head[8:88].decode("ascii", "replace").strip()
        if pid:
            out["patient"] = pid
        return out
    try:
        import pydicom

        ds = pydicom.dcmread(str(p), stop_before_pixels=True, force=True)
    except Exception:  # not DICOM: no header identity to show
        return out
    for label, kw in (("patient name", "PatientName"), ("patient id", "PatientID"),
                      ("birth date", "PatientBirthDate")):
        v = getattr(ds, kw, None)
        if v not in (None, ""):
            out[label] = str(v)
    return out


def check_self_contained(text: str) -> list[str]:
    """External references in an HTML text (``src``/``href`` to http(s) or protocol-relative
    URLs, CSS ``url(...)`` / ``@import``); empty when the page needs no network."""
    import re

    bad = re.findall(r"""(?:src|href)\s*=\s*["']?\s*((?:https?:)?//[^"'\s>]+)""", text, flags=re.I)
    bad += re.findall(r"""url\(\s*["']?((?:https?:)?//[^)"']+)""", text, flags=re.I)
    bad += re.findall(r"@import\s+[^;]+", text, flags=re.I)
    return bad

