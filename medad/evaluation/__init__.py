"""Metrics, calibration, subject-wise splits and bootstrap intervals."""

from medad.evaluation.metrics import (  # noqa: F401
    auprc, auroc, best_dice_threshold, bootstrap_ci, calibration_warning, cross_calibration, dice, per_subject,
    sensitivity_specificity,
)
from medad.evaluation.splits import group_kfold, split_by_subject  # noqa: F401
