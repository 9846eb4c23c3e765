"""Label-fitting heads that need no JAX: the linear probe on frozen representations, and LightGBM on
age and code-count features (data/history.count_features), the baseline every model must beat.

Probe: features standardised on the fit set; binary tasks use L2 logistic regression with C chosen by
stratified cross-validation (LogisticRegressionCV, folds = min(5, smallest class count); C = 1 below 3
examples per class); regression uses ridge regression with the penalty chosen by efficient
leave-one-out (RidgeCV).
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np

CS = np.logspace(-3, 2, 8)
ALPHAS = np.logspace(-2, 4, 13)
# Up to this many feature values a probe fit runs its BLAS calls on one thread: L-BFGS makes tens of thousands
# of small BLAS calls, and OpenBLAS's thread pool costs more than it gives on them. On a 2-core AMD EPYC, one
# thread against the default pool: 0.9-1.0x at the demo's sizes (1,500 rows x 16-256 features) when the machine
# is quiet, 4.5x faster when other work runs alongside, and 1.8-2.3x faster at 4,000 x 1,024 and 20,000 x 256,
# the largest measured (benchmarks/bench_downstream_probe.py). Larger fits, unmeasured, keep the default pool.
ONE_THREAD_UP_TO = 20_000 * 256


def _blas_threads(X: np.ndarray):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas") if X.size <= ONE_THREAD_UP_TO else contextlib.nullcontext()


def probe_predict(X_fit: np.ndarray, y_fit: np.ndarray, X_test: np.ndarray, kind: str, seed: int) -> np.ndarray:
    with warnings.catch_warnings(), _blas_threads(X_fit):
        warnings.simplefilter("ignore", FutureWarning)  # sklearn 1.9's LogisticRegressionCV transition notices
        return _probe_predict(X_fit, y_fit, X_test, kind, seed)


def _probe_predict(X_fit, y_fit, X_test, kind: str, seed: int) -> np.ndarray:
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_fit)
    A, B = scaler.transform(X_fit), scaler.transform(X_test)
    if kind == "regression":
        return RidgeCV(alphas=ALPHAS).fit(A, y_fit).predict(B)
    return _binary_classifier(y_fit, seed).fit(A, y_fit).predict_proba(B)[:, 1]


def _binary_classifier(y_fit, seed: int):
    """Logistic regression, its C chosen by cross-validated log-loss when each class has 3 or more rows."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    smallest = int(min(np.sum(y_fit == 1), np.sum(y_fit == 0)))
    if smallest >= 3:
        return LogisticRegressionCV(Cs=CS, cv=min(5, smallest), max_iter=2000, scoring="neg_log_loss",
                                    random_state=seed)
    return LogisticRegression(C=1.0, max_iter=2000)


def probe_head(X_fit: np.ndarray, y_fit: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, float]:
    """The probe as a linear head on the raw features: (w [D], b) with score = X w + b (a logit for binary
    tasks, the standardised target for regression), the same estimator `probe_predict` fits; the head
    fine-tuning starts from (LP-FT)."""
    with warnings.catch_warnings(), _blas_threads(X_fit):
        warnings.simplefilter("ignore", FutureWarning)
        return _probe_head(X_fit, y_fit, kind, seed)


def _probe_head(X_fit, y_fit, kind: str, seed: int):
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_fit)
    A = scaler.transform(X_fit)
    if kind == "regression":
        mu, sd = float(np.mean(y_fit)), float(np.std(y_fit) or 1.0)
        clf = RidgeCV(alphas=ALPHAS).fit(A, (y_fit - mu) / sd)
        coef, icpt = np.ravel(clf.coef_), float(clf.intercept_)
    else:
        clf = _binary_classifier(y_fit, seed).fit(A, y_fit)
        coef, icpt = np.ravel(clf.coef_), float(np.ravel(clf.intercept_)[0])
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    w = coef / scale
    return w.astype(np.float32), float(icpt - np.sum(coef * scaler.mean_ / scale))


def lightgbm_predict(X_fit: np.ndarray, y_fit: np.ndarray, X_test: np.ndarray, kind: str, seed: int) -> np.ndarray:
    import lightgbm as lgb

    n = len(y_fit)
    params = dict(n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=max(2, min(20, n // 20)),
                  subsample=0.8, subsample_freq=1, colsample_bytree=0.8, reg_lambda=1.0, random_state=seed,
                  n_jobs=1, verbose=-1)
    if kind == "regression":
        return lgb.LGBMRegressor(**params).fit(X_fit, y_fit).predict(X_test)
    return lgb.LGBMClassifier(**params).fit(X_fit, y_fit.astype(int)).predict_proba(X_test)[:, 1]
