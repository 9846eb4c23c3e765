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


def test_small_probe_fits_run_blas_on_one_thread_and_large_ones_on_the_default_pool(monkeypatch):
    from threadpoolctl import threadpool_info

    from medscale.scaling.downstream import baselines

    seen = []

    def fit(X_fit, y_fit, X_test, kind, seed):
        seen.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
        return np.zeros(len(X_test))

    import scipy.linalg  # noqa: F401 - loads scipy's own BLAS, which is limited too

    monkeypatch.setattr(baselines, "_probe_predict", fit)
    monkeypatch.setattr(baselines, "ONE_THREAD_UP_TO", 100)
    default = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    if not default or default == {1}:
        pytest.skip(f"BLAS runs on one thread here already ({default or 'no BLAS library found'})")
    y = np.arange(10) % 2
    probe_predict(np.ones((10, 10)), y, np.ones((3, 10)), "binary", 0)
    probe_predict(np.ones((10, 11)), y, np.ones((3, 11)), "binary", 0)
    assert seen == [{1}, default]
    assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == default  # restored after
