"""Downstream metrics: equal to scikit-learn's on weighted rows, intervals resample subjects."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, mean_absolute_error, roc_auc_score

from medscale.analysis.errors import AnalysisError
from medscale.analysis.metrics import (auprc, auroc, brier, ece, evaluate, gap_to_ceiling, mae,
                              subject_bootstrap_weights)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(400) < 0.2).astype(float)
    s = np.round(rng.random(400) * 0.6 + 0.3 * y, 2)  # many ties
    w = rng.integers(0, 4, 400).astype(float)
    assert auroc(y, s)[0] == pytest.approx(roc_auc_score(y, s))
    assert auroc(y, s, w[None])[0] == pytest.approx(roc_auc_score(y, s, sample_weight=w))
    assert auprc(y, s, w[None])[0] == pytest.approx(average_precision_score(y, s, sample_weight=w))
    assert brier(y, s, w[None])[0] == pytest.approx(brier_score_loss(y, s, sample_weight=w))
    assert mae(y, s, w[None])[0] == pytest.approx(mean_absolute_error(y, s, sample_weight=w))


def test_ece_is_zero_for_calibrated_bins_and_large_for_overconfident_scores():
    y = np.array([0, 0, 0, 1] * 50, float)
    assert ece(y, np.full(200, 0.25))[0] == pytest.approx(0.0)
    assert ece(y, np.where(y == 1, 0.55, 0.95))[0] > 0.5


def test_bootstrap_weights_keep_subjects_whole():
    subjects = np.repeat(np.arange(30), 5)
    W = subject_bootstrap_weights(subjects, 50, seed=0)
    assert W.shape == (50, 150)
    assert np.all(W.reshape(50, 30, 5) == W.reshape(50, 30, 5)[:, :, :1])  # one multiplicity per subject
    np.testing.assert_allclose(W.sum(axis=1), 150)


def test_intervals_widen_when_rows_are_repeats_of_few_subjects():
    rng = np.random.default_rng(0)
    y = (rng.random(60) < 0.4).astype(float)
    s = np.clip(0.4 * y + rng.random(60) * 0.7, 0, 1)
    y10, s10 = np.tile(y, 10), np.tile(s, 10)
    independent = evaluate(y10, s10, np.arange(600), n_boot=300)["auroc"]
    clustered = evaluate(y10, s10, np.tile(np.arange(60), 10), n_boot=300)["auroc"]
    assert independent[0] == pytest.approx(clustered[0])
    assert (clustered[2] - clustered[1]) > 2 * (independent[2] - independent[1])
    assert clustered[1] <= clustered[0] <= clustered[2]


def test_evaluate_rejects_bad_input_and_gap_sign_means_worse():
    with pytest.raises(AnalysisError):
        evaluate(np.array([0, 2.0]), np.array([0.1, 0.2]), np.array([1, 2]))
    with pytest.raises(AnalysisError):
        evaluate(np.array([0, 1.0]), np.array([0.1, np.nan]), np.array([1, 2]))
    assert gap_to_ceiling("auroc", 0.7, 0.8) == pytest.approx(0.1)
    assert gap_to_ceiling("brier", 0.2, 0.15) == pytest.approx(0.05)
    reg = evaluate(np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 3, 5]), np.arange(4), kind="regression", n_boot=20)
    assert set(reg) == {"mae", "rmse"} and reg["mae"][0] == pytest.approx(0.25)
