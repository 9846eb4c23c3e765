"""The probe as a linear head (what LP-FT fine-tuning starts from) predicts what the probe predicts."""
import numpy as np
import pytest

from medscale.scaling.downstream.baselines import probe_head, probe_predict


@pytest.mark.parametrize("positives", [100, 2])  # cross-validated C, and the plain fallback for rare cases
def test_probe_head_scores_equal_the_probe_predictions(positives):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)) * [1, 3, 0.1, 1, 1] + [0, 5, 0, 0, -2]
    y = np.zeros(200)
    y[np.argsort(X[:, 0] + 0.5 * rng.normal(size=200))[-positives:]] = 1
    w, b = probe_head(X, y, "binary", 0)
    X_test = rng.normal(size=(50, 5))
    np.testing.assert_allclose(1 / (1 + np.exp(-(X_test @ w + b))), probe_predict(X, y, X_test, "binary", 0),
                               atol=1e-6)


def test_probe_head_for_regression_predicts_the_standardised_target():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 4))
    y = 10 + 3 * X[:, 0] - X[:, 2] + rng.normal(size=300)
    w, b = probe_head(X, y, "regression", 0)
    mu, sd = y.mean(), y.std()
    np.testing.assert_allclose((X @ w + b) * sd + mu, probe_predict(X, y, X, "regression", 0), atol=1e-6)
