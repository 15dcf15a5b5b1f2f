"""``medad evaluate``: metrics + protocol JSON from a CSV of scores."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

import typer

from medad.errors import InputError, ReadError


SCORES_COLUMNS = "columns score,label[,subject][,healthy_val]"
_ABNORMAL = ("1", "true", "yes", "abnormal")
_NORMAL = ("0", "false", "no", "normal")


def _label(value: str | None, line: int, path: Path) -> bool:
    """1/true/yes/abnormal -> True, 0/false/no/normal -> False (also 1.0 / 0.0, as pandas writes
    integer columns holding gaps); anything else is refused rather than silently read as normal."""
    v = str(value if value is not None else "").strip().lower()
    try:
        num = float(v)
    except ValueError:
        num = None
    if v in _ABNORMAL or num == 1.0:
        return True
    if v in _NORMAL or num == 0.0:
        return False
    raise ReadError(f"line {line}: label {value!r} is not 0/1 (true/false, yes/no, normal/abnormal); "
                    "map other classes to 0 (normal) / 1 (abnormal) first", path)


def _finite_or_none(x):
    """NaN metrics (undefined: one class only) as JSON null, not the non-standard NaN token."""
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def read_scores_csv(path: Path) -> dict[str, list]:
    """Read a CSV with columns ``score`` and ``label`` (1/true = abnormal) and optionally
    ``subject`` and ``healthy_val`` (1 for rows of healthy validation data used to calibrate)."""
    if path.is_dir():
        raise ReadError(f"is a folder; medad evaluate reads one CSV file ({SCORES_COLUMNS})", path)
    if not path.is_file():
        raise ReadError(f"scores file not found (expected a CSV file: {SCORES_COLUMNS})", path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ReadError(f"not a readable CSV: {e}", path) from None
    if not rows:
        raise ReadError("no rows", path)
    missing = {"score", "label"} - set(rows[0])
    if missing:
        raise ReadError(f"missing column(s) {sorted(missing)}; found {sorted(rows[0])}", path)
    out: dict[str, list] = {"score": [], "label": [], "subject": [], "healthy_val": []}
    for i, r in enumerate(rows, start=2):
        try:
            score = float(r["score"])
        except (TypeError, ValueError):
            raise ReadError(f"line {i}: score {r['score']!r} is not a number", path) from None
        if not math.isfinite(score):
            raise ReadError(f"line {i}: score {r['score']!r} is not finite", path)
        out["score"].append(score)
        out["label"].append(_label(r["label"], i, path))
        out["subject"].append(r.get("subject") or f"row{i}")
        out["healthy_val"].append(str(r.get("healthy_val", "0")).strip() in ("1", "true"))
    return out


def evaluate_scores(data: dict[str, list], *, threshold: float | None = None, fpr: float = 0.05,
                    n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics of scores against labels, with the threshold either given or calibrated on the rows
    marked ``healthy_val`` (never on the evaluated rows)."""
    import numpy as np

    from medad.detectors.base import threshold_at_fpr
    from medad.evaluation import auprc, auroc, bootstrap_ci, per_subject, sensitivity_specificity

    s = np.asarray(data["score"]); y = np.asarray(data["label"], bool)
    hv = np.asarray(data["healthy_val"], bool); subj = np.asarray(data["subject"])
    ev = ~hv
    if not ev.any():
        raise InputError("every row is marked healthy_val: nothing left to evaluate")
    if y[ev].all() or not y[ev].any():  # AUROC/AUPRC are undefined with one class
        raise InputError(f"the evaluated rows hold only {'abnormal' if y[ev].all() else 'normal'} labels "
                         "(label 1 = abnormal, 0 = normal): AUROC needs both")
    if threshold is not None:
        source = "given by the user"
    elif hv.any():
        if y[hv].any():
            raise InputError("rows marked healthy_val must all be healthy (label 0)")
        threshold = threshold_at_fpr(s[hv], fpr)
        source = f"healthy validation rows (n={int(hv.sum())}) at target FPR {fpr}"
    else:
        source = None
    auc, lo, hi = bootstrap_ci(auroc, y[ev], s[ev], n_boot=n_boot, seed=seed, groups=subj[ev])
    res = {
        "n_items": int(ev.sum()), "n_abnormal": int(y[ev].sum()), "n_subjects": int(len(set(subj[ev]))),
        "auroc": auc, "auroc_ci95": [lo, hi], "auprc": auprc(y[ev], s[ev]),
    }
    _, ys, ss = per_subject(subj[ev], y[ev], s[ev], reduce="max")
    res["per_subject"] = {"auroc": auroc(ys, ss), "auprc": auprc(ys, ss), "reduce": "max"}
    if threshold is not None:
        res["at_threshold"] = {"threshold": float(threshold), **sensitivity_specificity(y[ev], s[ev] > threshold)}
    protocol = {"threshold_source": source or "none (threshold-free metrics only)",
                "bootstrap": {"n": n_boot, "resampled": "subjects", "seed": seed}}
    if len(set(ys.tolist())) < 2:
        protocol["per_subject_note"] = ("per-subject figures undefined (null): with each subject's rows reduced by "
                                        "max, every subject has the same label")
    return {"metrics": _finite_or_none(res), "protocol": protocol}


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        scores: Path = typer.Argument(..., help=f"CSV with {SCORES_COLUMNS}"),
        out: Path = typer.Option(Path("evaluation.json"), "--out", help="where the JSON goes (a folder: FOLDER/evaluation.json)"),
        threshold: Optional[float] = typer.Option(None, help="decision threshold (else calibrated on healthy_val rows)"),
        fpr: float = typer.Option(0.05, help="target false-positive rate for calibration"),
        split: str = typer.Option("unspecified", help="name of the evaluated split, recorded in the protocol"),
    ):
        """Compute AUROC/AUPRC (bootstrap CI by subject), per-subject figures and, with a threshold
        from healthy validation rows, sensitivity/specificity; write them with the protocol."""
        from medad.utils import write_json

        if not 0.0 <= fpr < 1.0:  # checked before reading, and named as the option (not fpr=)
            raise typer.BadParameter(f"must be in [0, 1), got {fpr:g}", param_hint="--fpr")
        if out.is_dir():  # an output folder: the JSON goes inside it rather than failing on the rename
            out = out / "evaluation.json"
        result = evaluate_scores(read_scores_csv(scores), threshold=threshold, fpr=fpr)
        result["protocol"]["split"] = split
        result["protocol"]["source_file"] = str(scores)
        write_json(out, result)
        m = result["metrics"]

        def f3(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        typer.echo(f"AUROC {f3(m['auroc'])} [{f3(m['auroc_ci95'][0])}, {f3(m['auroc_ci95'][1])}]  "
                   f"AUPRC {f3(m['auprc'])}  n={m['n_items']}  -> {out}")
