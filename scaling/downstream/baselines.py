"""Label-fitting heads that need no JAX: the linear probe on frozen representations, and LightGBM on
age and code-count features (data/history.count_features), the baseline every model must beat.

Probe: features standardised on the fit set; binary tasks use L2 logistic regression with C chosen by
stratified cross-validation (LogisticRegressionCV, folds = min(5, smallest class count); C = 1 below 3
examples per class); regression uses ridge regression with the penalty chosen by efficient
leave-one-out (RidgeCV).
"""
from __future__ import annotations

import warnings

import numpy as np

CS = np.logspace(-3, 2, 8)
ALPHAS = np.logspace(-2, 4, 13)


def probe_predict(X_fit: np.ndarray, y_fit: np.ndarray, X_test: np.ndarray, kind: str, seed: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # sklearn 1.9's LogisticRegressionCV transition notices
        return _probe_predict(X_fit, y_fit, X_test, kind, seed)


def _probe_predict(X_fit, y_fit, X_test, kind: str, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_fit)
    A, B = scaler.transform(X_fit), scaler.transform(X_test)
    if kind == "regression":
        return RidgeCV(alphas=ALPHAS).fit(A, y_fit).predict(B)
    smallest = int(min(np.sum(y_fit == 1), np.sum(y_fit == 0)))
    if smallest >= 3:
        clf = LogisticRegressionCV(Cs=CS, cv=min(5, smallest), max_iter=2000, scoring="neg_log_loss",
                                   random_state=seed)
    else:
        clf = LogisticRegression(C=1.0, max_iter=2000)
    return clf.fit(A, y_fit).predict_proba(B)[:, 1]


def lightgbm_predict(X_fit: np.ndarray, y_fit: np.ndarray, X_test: np.ndarray, kind: str, seed: int) -> np.ndarray:
    import lightgbm as lgb

    n = len(y_fit)
    params = dict(n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=max(2, min(20, n // 20)),
                  subsample=0.8, subsample_freq=1, colsample_bytree=0.8, reg_lambda=1.0, random_state=seed,
                  n_jobs=1, verbose=-1)
    if kind == "regression":
        return lgb.LGBMRegressor(**params).fit(X_fit, y_fit).predict(X_test)
    return lgb.LGBMClassifier(**params).fit(X_fit, y_fit.astype(int)).predict_proba(X_test)[:, 1]
