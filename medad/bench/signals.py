"""Signal benchmarks on real data: Bonn EEG, Yaseen heart sounds, MIT-BIH PVC beats.

Every deep model is run beside the classical ``features`` detector under the same protocol:

* thresholds come from healthy validation items only (false-positive rate 5 %), never from the
  test items; accuracy / sensitivity / specificity are reported at that threshold;
* splits are by recording (Bonn and Yaseen have no subject ids, so recording-wise splits are
  the best available and optimistic) or by patient record (MIT-BIH);
* recordings are cut into windows; a recording's score is the mean of its window scores;
* robustness: the test items are scored again after amplitude scaling (x0.5, x2), a resampling
  round trip through a lower rate (as a recording from another device would go through the
  pipeline's resampling), and (Bonn, Yaseen) cropped to half their length; the AUROC under each
  condition is reported beside the original.

Training seconds, inference seconds per item and the process's peak memory so far are recorded
for every method. The machine these run on may be shared: wall-clock figures are inflated by
contention (the environment block of the JSON records the cores and threads).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medad.bench.common import markdown_table, write_benchmark
from medad.detectors.base import threshold_at_fpr
from medad.evaluation import auprc, auroc, group_kfold, sensitivity_specificity, split_by_subject
from medad.utils import Timer, peak_rss_mb

FPR = 0.05

# ----------------------------------------------------------------------------- data helpers


def windows_of(items: Sequence[np.ndarray], size: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut recordings ``(C, T_i)`` into ``(N, C, size)`` windows; returns windows and the index of
    the recording each came from. A recording shorter than ``size`` gives one zero-padded window."""
    from medad.transforms.signal import window_starts

    xs, owner = [], []
    for i, x in enumerate(items):
        if x.shape[-1] < size:
            x = np.pad(x, ((0, 0), (0, size - x.shape[-1])))
        for s in window_starts(x.shape[-1], size, step):
            xs.append(x[:, s:s + size])
            owner.append(i)
    return np.stack(xs).astype(np.float32), np.asarray(owner)


def aggregate(scores: np.ndarray, owner: np.ndarray | None) -> np.ndarray:
    """Mean window score per recording (identity when ``owner`` is None)."""
    if owner is None:
        return np.asarray(scores, dtype=np.float64)
    n = int(owner.max()) + 1
    tot = np.bincount(owner, weights=scores, minlength=n)
    cnt = np.bincount(owner, minlength=n)
    return tot / np.maximum(cnt, 1)


def resample_round_trip(x: np.ndarray, sfreq: float, via: float) -> np.ndarray:
    """Resample to ``via`` Hz and back, cropped / padded to the original length."""
    from medad.transforms.signal import resample

    y = resample(resample(x, sfreq, via), via, sfreq)
    t = x.shape[-1]
    if y.shape[-1] >= t:
        return y[..., :t]
    return np.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, t - y.shape[-1])], mode="edge")


def robustness_conditions(sfreq: float, via: float, half_length: bool = True) -> dict[str, Callable]:
    """Test-set perturbations: amplitude x0.5 and x2, resampling round trip, half length."""
    conds: dict[str, Callable] = {
        "amplitude_x0.5": lambda x: x * 0.5,
        "amplitude_x2": lambda x: x * 2.0,
        f"resampled_via_{via:g}Hz": lambda x: resample_round_trip(x, sfreq, via),
    }
    if half_length:
        conds["half_length"] = lambda x: np.ascontiguousarray(x[..., : x.shape[-1] // 2])
    return conds


class Split:
    """Items of one evaluation set: windows, window->recording owner, recording labels."""

    def __init__(self, x: np.ndarray, y: np.ndarray, owner: np.ndarray | None = None):
        self.x, self.y, self.owner = x, np.asarray(y).astype(int), owner

    def recording_scores(self, score_fn: Callable[[np.ndarray], np.ndarray], transform: Callable | None = None):
        x = self.x if transform is None else transform(self.x)
        return aggregate(score_fn(x), self.owner)


# ----------------------------------------------------------------------------- one method
def _metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, Any]:
    ss = sensitivity_specificity(y, s > threshold)
    return {"auroc": auroc(y, s), "auprc": auprc(y, s), "accuracy": ss["accuracy"],
            "sensitivity": ss["sensitivity"], "specificity": ss["specificity"], "n": int(len(y)),
            "n_abnormal": int(np.sum(y))}


def run_method(method: str, params: dict[str, Any], train_x: np.ndarray, train_y: np.ndarray | None,
               calib: Split, tests: dict[str, Split], conditions: dict[str, Callable] | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Fit ``method`` (healthy-only unless supervised), calibrate on the healthy ``calib`` items,
    score every test set (and its perturbed copies). Returns metrics, timings and raw scores."""
    from medad import registry

    det = registry.create(method, **params)
    if hasattr(det, "train_options"):
        det.train_options = {"progress": progress}
    with Timer() as t_fit:
        if det.supervised:
            det.fit(train_x, y=train_y)
        else:
            det.fit(train_x)
    score_fn = lambda x: det.score(x).score  # noqa: E731
    cal = calib.recording_scores(score_fn)
    threshold = threshold_at_fpr(cal, FPR)
    out: dict[str, Any] = {"train_seconds": t_fit.seconds, "threshold": threshold, "tests": {}, "scores": {}}
    n_items, secs = 0, 0.0
    for name, sp in tests.items():
        with Timer() as t_sc:
            s = sp.recording_scores(score_fn)
        secs += t_sc.seconds
        n_items += len(sp.y)
        res = _metrics(sp.y, s, threshold)
        if conditions:
            res["robustness"] = {c: auroc(sp.y, sp.recording_scores(score_fn, fn)) for c, fn in conditions.items()}
        out["tests"][name] = res
        out["scores"][name] = s
    out["inference_seconds_per_item"] = secs / max(1, n_items)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_cv(method: str, params: dict[str, Any], windows: np.ndarray, owner: np.ndarray, y_rec: np.ndarray,
           n_folds: int, seed: int = 0, max_folds: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Recording-grouped k-fold CV. In every fold 10 % of the training recordings' healthy ones
    are held out to calibrate the threshold; one-class methods train on the remaining healthy
    recordings only, supervised ones on all remaining recordings. Metrics are pooled over the
    out-of-fold recording scores (each fold's decisions use that fold's own threshold)."""
    n_rec = len(y_rec)
    folds = group_kfold(np.arange(n_rec), n_splits=n_folds, seed=seed, stratify=y_rec)
    if max_folds:
        folds = folds[:max_folds]
    from medad import registry

    supervised = registry.get(method).supervised
    scores = np.full(n_rec, np.nan)
    decided = np.zeros(n_rec, bool)
    fold_auroc, train_s, infer_s, n_scored = [], [], 0.0, 0
    rng = np.random.default_rng(seed)
    for k, (tr, te) in enumerate(folds):
        healthy = tr[y_rec[tr] == 0]
        cal = np.sort(rng.choice(healthy, max(2, len(healthy) // 10), replace=False))
        fit_rec = np.setdiff1d(tr, cal)
        if not supervised:
            fit_rec = fit_rec[y_rec[fit_rec] == 0]
        sel = np.isin(owner, fit_rec)
        mk = lambda recs: Split(windows[np.isin(owner, recs)], y_rec[recs],  # noqa: E731
                                np.searchsorted(recs, owner[np.isin(owner, recs)]))
        res = run_method(method, params, windows[sel], y_rec[owner[sel]] if supervised else None,
                         mk(cal), {"fold": mk(te)}, progress=progress)
        s = res["scores"]["fold"]
        scores[te] = s
        decided[te] = s > res["threshold"]
        fold_auroc.append(res["tests"]["fold"]["auroc"])
        train_s.append(res["train_seconds"])
        infer_s += res["inference_seconds_per_item"] * len(te)
        n_scored += len(te)
        print(f"  {method} fold {k + 1}/{len(folds)}: AUROC {fold_auroc[-1]:.3f} "
              f"(train {res['train_seconds']:.1f} s)", flush=True)
    done = ~np.isnan(scores)
    ss = sensitivity_specificity(y_rec[done], decided[done])
    return {
        "auroc": auroc(y_rec[done], scores[done]), "auprc": auprc(y_rec[done], scores[done]),
        "auroc_fold_mean": float(np.mean(fold_auroc)), "auroc_fold_std": float(np.std(fold_auroc)),
        "accuracy": ss["accuracy"], "sensitivity": ss["sensitivity"], "specificity": ss["specificity"],
        "n": int(done.sum()), "n_abnormal": int(y_rec[done].sum()), "folds_run": len(folds),
        "train_seconds": float(np.mean(train_s)), "inference_seconds_per_item": infer_s / max(1, n_scored),
        "peak_rss_mb": peak_rss_mb(),
    }


# ----------------------------------------------------------------------------- reporting
def _roc_png(path: Path, title: str, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from medad.utils import atomic_path

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} ({auroc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: one row per task and method."""
    rows = []
    for task, methods in results.items():
        for m, r in methods.items():
            if "error" in r:
                rows.append([task, m, "failed: " + r["error"][:80]] + [None] * 8)
                continue
            rows.append([task, m, r["auroc"], r["auprc"], r["accuracy"], r["sensitivity"], r["specificity"],
                         r["train_seconds"], 1000.0 * r["inference_seconds_per_item"], r["peak_rss_mb"]])
    return markdown_table(["task", "method", "AUROC", "AUPRC", "acc", "sens", "spec", "train s",
                           "infer ms/item", "peak MB"], rows)


def _robust_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    rows = []
    for task, methods in results.items():
        for m, r in methods.items():
            rob = r.get("robustness")
            if rob:
                rows.append([task, m, r["auroc"], *[rob[c] for c in rob]])
                header = list(rob)
    if not rows:
        return ""
    return markdown_table(["task", "method", "AUROC"] + header, rows)


def _flatten(one: dict[str, Any], test: str) -> dict[str, Any]:
    r = dict(one["tests"][test])
    r.update(train_seconds=one["train_seconds"], inference_seconds_per_item=one["inference_seconds_per_item"],
             peak_rss_mb=one["peak_rss_mb"], threshold=one["threshold"])
    return r


def _safe(fn: Callable, *a, **kw) -> dict[str, Any]:
    """Run one method; a failure is recorded (and printed) instead of ending the benchmark."""
    try:
        return fn(*a, **kw)
    except Exception as e:  # noqa: BLE001 - one failing method must not lose the others' figures
        import traceback

        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"}


def _goal_line(name: str, value: float | None, goal: float, floor: float) -> str:
    if value is None or not np.isfinite(value):
        return f"- {name}: not measured."
    status = "reached" if value >= goal else "NOT reached"
    return f"- {name}: best deep AUROC {value:.3f} (goal >= {goal}, classical floor in the issue {floor}): {status}."


def _best_deep(methods: dict[str, dict[str, Any]]) -> tuple[str | None, float | None]:
    best = (None, None)
    for m, r in methods.items():
        if m.startswith("features") or m.startswith("isolation") or "error" in r:
            continue
        if best[1] is None or r["auroc"] > best[1]:
            best = (m, r["auroc"])
    return best


def _set_threads() -> None:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))


# ============================================================================= Bonn
BONN_WINDOW = 1024      # samples (5.9 s at 173.61 Hz), 50 % overlap: 7 windows per segment


def bonn_methods(quick: bool, epochs: int | None) -> dict[str, tuple[str, dict[str, Any]]]:
    """Method label -> (registry name, parameters) for Bonn (small nets: the CPU is shared)."""
    from medad.datasets.signals import BONN_SFREQ

    e = epochs or (4 if quick else 8)
    common = {"batch_size": 32, "lr": 2e-3, "epochs": e}
    return {
        "features": ("features", {"sfreq": BONN_SFREQ, "amplitude": True}),
        "features (no amplitude)": ("features", {"sfreq": BONN_SFREQ, "amplitude": False}),
        "cnn1d": ("cnn1d", {"channels": (8, 16, 32), "dilations": (1, 2), "stem_stride": 4, **common}),
        "cnn2d": ("cnn2d", {"n_fft": 64, "hop": 16, "channels": (8, 16, 32), "dilations": (1,), **common}),
        "lstm": ("lstm", {"frame_len": 32, "hidden_size": 32, **common}),
        "gru": ("gru", {"frame_len": 32, "hidden_size": 32, **common}),
        "nmn": ("nmn", {"frame_len": 128, "hidden_size": 32, "memory_size": 16, "slots": 8, **common}),
        "seq_ae": ("seq_ae", {"frame_len": 16, "hidden_size": 32, "latent_size": 4,
                              **{**common, "epochs": 2 * e}}),
        "seq_predictor": ("seq_predictor", {"frame_len": 32, "hidden_size": 32, **{**common, "epochs": 2 * e}}),
    }


def run_bonn(data_root: str | Path | None, out: str | Path, *, quick: bool = False, folds: int = 10,
             epochs: int | None = None, methods: Sequence[str] | None = None, seed: int = 0,
             progress: bool = False) -> dict[str, Any]:
    """Bonn EEG: A,B vs E supervised k-fold CV; one-class on A,B (held-out A,B vs E; C,D vs E)."""
    from medad import registry
    from medad.datasets import dataset_root
    from medad.datasets.signals import BONN_SFREQ, load_bonn

    _set_threads()
    root = dataset_root("bonn", data_root=data_root)
    recs = load_bonn(root)
    sets = np.array([r.label for r in recs])
    data = [r.data[:, :4096] for r in recs]
    all_m = bonn_methods(quick, epochs)
    chosen = {k: v for k, v in all_m.items() if methods is None or k in methods or v[0] in methods}
    results: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, tuple]] = {}

    # --- supervised CV on A,B (0) vs E (1)
    idx = np.flatnonzero(np.isin(sets, ["A", "B", "E"]))
    y_rec = (sets[idx] == "E").astype(int)
    win, owner = windows_of([data[i] for i in idx], BONN_WINDOW, BONN_WINDOW // 2)
    task = f"A,B vs E, {folds}-fold CV"
    results[task] = {}
    for label, (name, params) in chosen.items():
        if name in ("seq_ae", "seq_predictor"):
            continue  # one-class models are evaluated in the one-class task
        print(f"[bonn] {task}: {label}", flush=True)
        results[task][label] = _safe(run_cv, name, params, win, owner, y_rec, folds, seed=seed,
                                     max_folds=(3 if quick else None), progress=progress)
        results[task][label]["protocol"] = ("supervised" if registry.get(name).supervised
                                            else "one-class on the fold's healthy recordings")

    # --- one-class on A,B: 60 % train, 15 % calibration, 25 % test (by segment)
    ab = np.flatnonzero(np.isin(sets, ["A", "B"]))
    sp = split_by_subject([recs[i].record_id for i in ab], {"train": 0.6, "val": 0.15, "test": 0.25}, seed=seed)
    tr_rec, cal_rec, te_rec = ab[sp["train"]], ab[sp["val"]], ab[sp["test"]]
    e_rec = np.flatnonzero(sets == "E")
    cd_rec = np.flatnonzero(np.isin(sets, ["C", "D"]))

    def split_of(rec_idx, labels):
        w, o = windows_of([data[i] for i in rec_idx], BONN_WINDOW, BONN_WINDOW // 2)
        return Split(w, labels, o)

    train_w, _ = windows_of([data[i] for i in tr_rec], BONN_WINDOW, BONN_WINDOW // 2)
    calib = split_of(cal_rec, np.zeros(len(cal_rec)))
    tests = {
        "held-out A,B vs E": split_of(np.r_[te_rec, e_rec], np.r_[np.zeros(len(te_rec)), np.ones(len(e_rec))]),
        "C,D vs E": split_of(np.r_[cd_rec, e_rec], np.r_[np.zeros(len(cd_rec)), np.ones(len(e_rec))]),
    }
    conds = robustness_conditions(BONN_SFREQ, via=128.0)
    for test in tests:
        results[f"one-class on A,B: {test}"] = {}
        curves[test] = {}
    for label, (name, params) in chosen.items():
        if registry.get(name).supervised:
            continue
        print(f"[bonn] one-class: {label}", flush=True)
        one = _safe(run_method, name, params, train_w, None, calib, tests, conds, progress=progress)
        for test, sp_ in tests.items():
            key = f"one-class on A,B: {test}"
            if "error" in one:
                results[key][label] = one
                continue
            results[key][label] = {**_flatten(one, test), "protocol": "one-class, trained on A,B only"}
            curves[test][label] = (sp_.y, one["scores"][test])
            print(f"  {test}: AUROC {one['tests'][test]['auroc']:.3f}", flush=True)

    out = Path(out)
    for test, c in curves.items():
        if c:
            _roc_png(out / f"bonn_roc_{test.replace(',', '').replace(' ', '_')}.png", f"Bonn {test}", c)
    best_name, best = _best_deep(results["one-class on A,B: C,D vs E"])
    goals = [_goal_line(f"Bonn C,D vs E one-class on A,B ({best_name})", best, 0.98, 0.936)]
    protocol = {
        "data": "Bonn EEG sets A-E, 100 single-channel 23.6 s segments each, 173.61 Hz; first 4096 samples",
        "windows": f"{BONN_WINDOW} samples, 50 % overlap; segment score = mean window score",
        "supervised": f"A,B (0) vs E (1), {folds}-fold CV stratified by label, grouped by segment; in every fold "
                      "10 % of the training fold's healthy segments held out for the threshold",
        "one_class": "A,B segments split 60/15/25 (train/threshold/test), seeded; test: held-out A,B vs E, "
                     "and C,D vs E",
        "threshold": f"healthy-calibrated, false-positive rate {FPR} on held-out healthy segments",
        "caveat": "Bonn has no subject ids: segment-wise splits are optimistic; A,B are scalp EEG of volunteers "
                  "while C,D,E are intracranial, so A,B vs E is nearly trivial",
        "quick": quick,
    }
    md = _markdown("Bonn EEG", protocol, results, goals)
    write_benchmark(out, "bonn", {"protocol": protocol, "results": results, "goals": goals}, md)
    print(md)
    return results


def _markdown(title: str, protocol: dict[str, Any], results: dict, goals: list[str]) -> str:
    lines = [f"# {title}", "", "## Protocol", ""]
    lines += [f"- **{k}**: {v}" for k, v in protocol.items()]
    lines += ["", "## Results", "",
              "Accuracy, sensitivity and specificity at the healthy-calibrated threshold (5 % FPR on "
              "held-out healthy items). Times are wall-clock on a CPU shared with other jobs (inflated); "
              "peak MB is the benchmark process's peak resident memory so far.", "", _table(results)]
    rob = _robust_table(results)
    if rob:
        lines += ["## Robustness (AUROC of the same test set, perturbed)", "", rob]
    lines += ["## Goals", "", *goals, ""]
    return "\n".join(lines)
