"""Metrics, calibration, subject-wise splits and bootstrap intervals."""

from medad.evaluation.metrics import (  # noqa: F401
    auprc, auroc, bootstrap_ci, cross_calibration, dice, per_subject, sensitivity_specificity, best_dice_threshold,
)
from medad.evaluation.splits import group_kfold, split_by_subject  # noqa: F401
