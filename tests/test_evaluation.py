import numpy as np
import pytest

from medad.detectors.base import threshold_at_fpr
from medad.errors import InputError
from medad.evaluation import (auprc, auroc, best_dice_threshold, bootstrap_ci, dice, group_kfold,
                              per_subject, sensitivity_specificity, split_by_subject)


def test_auroc_auprc_known_values():
    y = [0, 0, 1, 1]
    assert auroc(y, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc(y, [0, 0, 1, 1]) == 1.0
    assert np.isnan(auroc([0, 0], [0.1, 0.2]))
    assert auprc(y, [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    with pytest.raises(InputError):
        auroc([0, 1], [0.1])


def test_dice_and_optimistic_threshold():
    t = np.zeros((10, 10), bool); t[2:6, 2:6] = True
    p = np.zeros_like(t); p[2:6, 2:4] = True
    assert dice(p, t) == pytest.approx(2 * 8 / (8 + 16))
    assert dice(np.zeros_like(t), np.zeros_like(t)) == 1.0
    s = t.astype(float) + np.random.default_rng(0).normal(0, 0.1, t.shape)
    best, thr = best_dice_threshold(t, s)
    assert best == pytest.approx(1.0) and 0.2 < thr < 0.8


def test_sensitivity_specificity():
    r = sensitivity_specificity([1, 1, 0, 0], [1, 0, 0, 1])
    assert r["sensitivity"] == 0.5 and r["specificity"] == 0.5 and r["tp"] == 1


def test_threshold_at_fpr_flags_that_share_of_healthy():
    s = np.arange(1000, dtype=float)
    thr = threshold_at_fpr(s, 0.05)
    assert np.mean(s > thr) == pytest.approx(0.05, abs=0.002)


def test_per_subject_and_bootstrap():
    subj, ys, ss = per_subject(["a", "a", "b", "b"], [0, 1, 0, 0], [0.1, 0.9, 0.2, 0.3])
    assert subj == ["a", "b"] and ys.tolist() == [True, False] and ss.tolist() == [0.9, 0.3]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200); s = y + rng.normal(0, 1, 200)
    est, lo, hi = bootstrap_ci(auroc, y, s, n_boot=200)
    assert lo < est < hi and hi - lo < 0.3


def test_subject_split_is_disjoint_and_reproducible():
    ids = [f"s{i // 3}" for i in range(90)]
    a = split_by_subject(ids, (0.6, 0.2, 0.2), seed=3)
    b = split_by_subject(ids, (0.6, 0.2, 0.2), seed=3)
    c = split_by_subject(ids, (0.6, 0.2, 0.2), seed=4)
    for k in a:
        assert np.array_equal(a[k], b[k])
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    sets = [set(np.asarray(ids)[a[k]]) for k in a]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(len(v) for v in a.values()) == 90


def test_group_kfold_keeps_subjects_together():
    ids = [f"s{i // 2}" for i in range(40)]
    folds = group_kfold(ids, 5, seed=0)
    assert len(folds) == 5
    for tr, te in folds:
        assert not set(np.asarray(ids)[tr]) & set(np.asarray(ids)[te])


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from medad.utils import atomic_path, write_json

    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{half")
            raise RuntimeError("crash while writing")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_json(target, {"a": np.float32(1.5)})
    assert target.read_text().strip().startswith("{") and (target.stat().st_mode & 0o044)
