"""Subject-wise, seeded, reproducible splits: no subject is ever in two splits."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medad.errors import InputError


def split_by_subject(subject_ids: Sequence, fractions: dict[str, float] | Sequence[float] = (0.7, 0.15, 0.15),
                     *, seed: int = 0, stratify: Sequence | None = None) -> dict[str, np.ndarray]:
    """Split item indices by subject.

    Args:
        subject_ids: one id per item.
        fractions: split name -> fraction of subjects (or a sequence for train/val/test).
        seed: the same seed gives the same split.
        stratify: optional per-item label; subjects are shuffled within each label (the
            subject's label is the max of its items) so every split gets a share of each.

    Returns:
        split name -> sorted item indices.
    """
    if not isinstance(fractions, dict):
        names = ["train", "val", "test"][: len(fractions)]
        fractions = dict(zip(names, fractions))
    total = sum(fractions.values())
    if total <= 0:
        raise InputError("split fractions must sum to a positive number")
    ids = np.asarray([str(s) for s in subject_ids])
    if ids.size == 0:
        raise InputError("no items to split")
    subjects = np.array(sorted(set(ids.tolist())))
    rng = np.random.default_rng(seed)
    if stratify is not None:
        lab = np.asarray(stratify)
        subj_lab = np.array([lab[ids == s].max() for s in subjects])
        groups = [subjects[subj_lab == v] for v in np.unique(subj_lab)]
    else:
        groups = [subjects]
    assign: dict[str, list[str]] = {k: [] for k in fractions}
    for grp in groups:
        grp = grp.copy()
        rng.shuffle(grp)
        n = len(grp)
        bounds = np.round(np.cumsum([fractions[k] / total for k in fractions]) * n).astype(int)
        start = 0
        for k, end in zip(fractions, bounds):
            assign[k].extend(grp[start:end].tolist())
            start = end
    return {k: np.sort(np.flatnonzero(np.isin(ids, v))) for k, v in assign.items()}


def group_kfold(subject_ids: Sequence, n_splits: int = 10, *, seed: int = 0,
                stratify: Sequence | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded k-fold over subjects: list of (train indices, test indices)."""
    from sklearn.model_selection import StratifiedGroupKFold, GroupKFold

    ids = np.asarray([str(s) for s in subject_ids])
    if len(set(ids.tolist())) < n_splits:
        raise InputError(f"{len(set(ids.tolist()))} subjects cannot make {n_splits} folds")
    x = np.zeros(len(ids))
    if stratify is not None:
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in cv.split(x, np.asarray(stratify), ids)]
    # GroupKFold has no shuffle: permute subject order with the seed first
    rng = np.random.default_rng(seed)
    perm = {s: i for i, s in enumerate(rng.permutation(sorted(set(ids.tolist()))))}
    codes = np.array([perm[s] for s in ids])
    return [(tr, te) for tr, te in GroupKFold(n_splits=n_splits).split(x, groups=codes)]
