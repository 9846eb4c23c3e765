"""Bootstrap intervals of the parametric fit cover the truth at about their nominal rate on noisy data."""
import numpy as np

from medscale.analysis import ParametricFit, synthetic

LEVEL = 0.9
TRUTH = dict(synthetic.LAW, a=synthetic.LAW["beta"] / (synthetic.LAW["alpha"] + synthetic.LAW["beta"]))


def test_parametric_interval_coverage():
    reps = 10
    hits = {k: 0 for k in ("alpha", "beta", "a")}
    widths = []
    for r in range(reps):
        df = synthetic.random_table(50, noise=0.01, seed=1000 + r)
        fit = ParametricFit(n_boot=40, seed=r, level=LEVEL).fit(df.params, df.tokens, df.loss)
        for k in hits:
            e = fit.estimates_[k]
            hits[k] += e.low <= TRUTH[k] <= e.high
        widths.append(fit.estimates_["alpha"].high - fit.estimates_["alpha"].low)
    # Nominal 90%: at least 7 of 10 for each quantity (P(<= 6 | p = 0.9) ~ 1%), and intervals that are
    # informative rather than covering by being huge.
    assert all(h >= 7 for h in hits.values()), hits
    assert np.median(widths) < 0.15
