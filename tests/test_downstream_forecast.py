"""The two-step forecast (loss -> task metric): known sigmoids are recovered, the held-out largest model is
forecast within its interval, and no forecast passes the task's ceiling."""
import numpy as np
import pandas as pd
import pytest

from medscale.analysis.bootstrap import Estimate
from medscale.analysis.task_forecast import LossToMetricFit, holdout_largest, task_forecasts


def _truth(L, top=0.9, s=4.0, L0=3.7):
    return 0.5 + (top - 0.5) / (1 + np.exp(s * (L - L0)))


def _ladder(rng, n_boot=200, shared=0.015, own=0.003):
    N = np.geomspace(2e4, 2e6, 6)
    L = 2.6 + 40 * N ** -0.3                 # bigger model, lower loss
    truth = _truth(L)
    common = rng.normal(0, shared, (n_boot + 1, 1))
    draws = truth[None] + common + rng.normal(0, own, (n_boot + 1, N.size))
    return N, L, truth, draws[0], draws[1:]


def test_a_known_sigmoid_of_loss_is_recovered_and_bounded_by_the_ceiling():
    rng = np.random.default_rng(0)
    N, L, truth, y, draws = _ladder(rng)
    fit = LossToMetricFit(metric="auroc", ceiling=0.93, n_boot=200).fit(L, y, draws=draws)
    np.testing.assert_allclose(fit.predict(L), truth, atol=0.03)
    far = fit.forecast(1.0)                    # far below any loss seen
    assert far.value <= 0.93 + 1e-12 and far.high <= 0.93 + 1e-12
    assert np.all(fit.boot_coef_[:, 0] <= 0.93 + 1e-12) and np.all(fit.boot_coef_[:, 0] >= 0.5)
    with pytest.raises(Exception):
        LossToMetricFit(metric="brier")


def test_holding_out_the_largest_model_forecasts_it_within_the_interval():
    hits = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        N, L, truth, y, draws = _ladder(rng)
        pts = pd.DataFrame({"run_id": [f"r{i}" for i in range(N.size)], "params": N, "loss": L, "value": y,
                            "low": np.percentile(draws, 2.5, axis=0), "high": np.percentile(draws, 97.5, axis=0)})
        # step 1's prediction of the held-out loss, slightly off and uncertain
        pred = L[-1] * 1.01
        h = holdout_largest(pts, metric="auroc", predicted_loss=pred,
                            predicted_loss_draws=rng.normal(pred, 0.01, 200), ceiling=0.93, matrix=draws)
        assert h["two_step"] and h["params"] == N[-1]
        hits += h["low"] <= h["actual"] <= h["high"]
        assert abs(h["error"]) < 0.05
    assert hits >= 4


def test_task_forecasts_table_per_task_with_recommended_model_forecast():
    rng = np.random.default_rng(1)
    N, L, truth, y, draws = _ladder(rng)
    rows = pd.DataFrame({"run_id": [f"r{i}" for i in range(N.size)], "params": N, "compute": 1e15, "task": "t",
                         "mode": "probe", "metric": "auroc", "value": y, "low": y - 0.02, "high": y + 0.02,
                         "ceiling": 0.93})
    losses = pd.DataFrame({"run_id": rows.run_id, "loss": L})
    out = task_forecasts(rows, losses, at_loss=Estimate(L[-1] - 0.05, L[-1] - 0.08, L[-1] - 0.02), n_boot=100)
    r = out.iloc[0]
    assert r["n_runs"] == 6 and r["forecast_low"] <= r["forecast"] <= r["forecast_high"] <= 0.93 + 1e-12
    assert r["forecast"] >= y[-1] - 0.03        # a lower loss than any run: at least as good as the best
    assert not r["holdout_two_step"]           # no step-1 prediction given: observed loss, and it says so
