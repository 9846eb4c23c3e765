"""Law families (analysis/families.py) and the choice between them (analysis/selection.py).

Each family must give back its own generating law from noise-free runs; the rolling-origin choice must pick the
generating family when the runs extrapolate far enough; intervals must have the documented shape and hold the
truth; predictions for planned runs come back one row per planned row, in order. Small tables and few
resamples keep the file fast.
"""
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar

from medscale.analysis import AnalysisError, ParametricFit, synthetic
from medscale.analysis.families import (FAMILIES, ChinchillaFamily, FarseerFamily, KaplanFamily, make_family)
from medscale.analysis.selection import (as_choice, choose, family_weights, fit_families, pick, predict_planned,
                                         rolling_origin, scores, validation_orders, weighted_quantiles)

GADRE = {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.3, "beta": 0.3}
KAPLAN = {"E": 1.5, "N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.228, "alpha_D": 0.285}
FARSEER = {"E": 1.6, "A": 400.0, "alpha": 0.34, "B": 0.45, "beta": 0.28, "b_N": 0.1, "beta_N": 0.05}


def gadre_loss(N, D, p=GADRE):
    return p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"]


def kaplan_loss(N, D, p=KAPLAN):
    return p["E"] + ((p["N_c"] / N) ** (p["alpha_N"] / p["alpha_D"]) + p["D_c"] / D) ** p["alpha_D"]


def farseer_loss(N, D, p=FARSEER, refs=(1e9, 5e10)):
    x = np.log(N / refs[0])
    beta = p["beta"] + p["beta_N"] * x
    return p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * np.exp(p["b_N"] * x) * (D / refs[1]) ** -beta


def runs(n=70, seed=0, n_range=(7e7, 1.6e10), d_range=(5e9, 5e11)):
    """N, D log-uniform; for the Farseer law the references are the runs' geometric means, as the family's."""
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(*np.log(n_range), n))
    D = np.exp(rng.uniform(*np.log(d_range), n))
    return N, D


def refs(N, D):
    return np.exp(np.log(N).mean()), np.exp(np.log(D).mean())


def farseer_truth(N, D):
    """The Farseer-style law with its references at these runs' geometric means (where the family quotes B
    and beta)."""
    return farseer_loss(N, D, refs=refs(N, D))


# -- each family recovers its own law -------------------------------------------------------------------------
@pytest.mark.parametrize("name, truth", [("chinchilla", synthetic.LAW), ("gadre", GADRE), ("kaplan", KAPLAN),
                                         ("farseer", FARSEER)])
def test_each_family_recovers_its_own_noise_free_law(name, truth):
    N, D = runs(60, seed=1)
    law = {"chinchilla": lambda n, d: synthetic.loss(n, d), "kaplan": kaplan_loss, "gadre": gadre_loss,
           "farseer": lambda n, d, r=refs(N, D): farseer_loss(n, d, refs=r)}[name]
    L = law(N, D)
    fam = make_family(name, n_boot=0).fit(N, D, L)
    assert fam.n_params == {"chinchilla": 5, "gadre": 4, "kaplan": 5, "farseer": 7}[name]
    for k, v in truth.items():
        assert fam.params_[k] == pytest.approx(v, rel=1e-3, abs=1e-6), k
    N2, D2 = runs(20, seed=9, n_range=(1e10, 1e11), d_range=(5e11, 5e12))  # beyond the fitted range
    np.testing.assert_allclose(fam.predict(N2, D2), law(N2, D2), rtol=1e-5)
    assert not any("bound" in w for w in fam.warnings_)


def test_data_constrained_family_wraps_the_fit_and_recovers_r_star():
    df = synthetic.data_constrained_table(synthetic.BUDGETS[:4], sizes=5, epochs=(1.0, 3.0, 10.0, 30.0), noise=0.0)
    fam = make_family("data_constrained", n_boot=0, excess_params=False)
    assert fam.n_params == 6
    fam.fit(df.params, df.tokens, df.loss, df.unique_tokens)
    assert fam.params_["R_star_D"] == pytest.approx(synthetic.DATA_LAW["R_star_D"], rel=1e-2)
    truth = synthetic.data_constrained_loss(df.params, df.tokens, df.unique_tokens)
    np.testing.assert_allclose(fam.predict(df.params, df.tokens, df.unique_tokens), truth, rtol=1e-4)
    with pytest.raises(AnalysisError, match="unique tokens"):
        make_family("data_constrained").fit(df.params, df.tokens, df.loss)


def test_a_parameter_at_its_bound_is_named_in_words():
    # the runs' loss sits 0.3 below a Kaplan law without offset: the best E would be negative
    N, D = runs(50, seed=2)
    fam = KaplanFamily(n_boot=0).fit(N, D, kaplan_loss(N, D, {**KAPLAN, "E": -0.3}))
    assert any(b.parameter == "E" and b.side == "lower" and b.where == "estimate" for b in fam.at_bound_)
    assert any(w.startswith("E at its lower bound") and "irreducible loss is not identified" in w
               for w in fam.warnings_)
    assert fam.to_dict()["at_bound"][0]["parameter"] == "E"


# -- allocation ---------------------------------------------------------------------------------------------
def test_n_opt_closed_and_numeric_forms_agree_with_direct_minimisation():
    N, D = runs(60, seed=3)
    C = 1e22
    kap = KaplanFamily(n_boot=0).fit(N, D, kaplan_loss(N, D))
    direct = minimize_scalar(lambda x: kap.predict(np.exp(x), C / (6 * np.exp(x)))[0], bounds=(10, 40),
                             method="bounded", options={"xatol": 1e-9}).x
    assert kap.n_opt(C).value == pytest.approx(np.exp(direct), rel=1e-4)
    # Farseer contains Chinchilla: on Chinchilla's runs its numeric N_opt is Chinchilla's closed form
    far = FarseerFamily(n_boot=0).fit(N, D, synthetic.loss(N, D))
    assert far.n_opt(C).value == pytest.approx(float(synthetic.n_opt(C)), rel=1e-3)
    gad = make_family("gadre", n_boot=0).fit(N, D, gadre_loss(N, D))
    direct = minimize_scalar(lambda x: gadre_loss(np.exp(x), C / (6 * np.exp(x))), bounds=(10, 40),
                             method="bounded", options={"xatol": 1e-9}).x
    assert gad.n_opt(C).value == pytest.approx(np.exp(direct), rel=1e-4)


def test_n_opt_on_the_full_flop_count_is_the_minimum_along_that_budget(noisy_chinchilla):
    """With flops_per_token(N) the mixture's N_opt lies on D = C / f(N): with f = 6N it is the closed form; with
    attention and head on top (f > 6N, more so at small N) it is the direct minimum of each law on that line."""
    df, fam = noisy_chinchilla
    k = make_family("kaplan", n_boot=8).fit(df.params, df.tokens, df.loss)
    ch = as_choice([fam, k], weights={"chinchilla": 0.7, "kaplan": 0.3})
    C = 1e22
    six = ch.n_opt(C, flops_per_token=lambda n: 6 * np.asarray(n, float))
    assert six.per_family["chinchilla"].value == pytest.approx(fam.n_opt(C).value, rel=2e-3)
    assert six.value == pytest.approx(ch.n_opt(C).value, rel=2e-3)
    full = lambda n: 6 * np.asarray(n, float) * (1 + 3e3 / np.asarray(n, float) ** 0.4)  # noqa: E731
    est = ch.n_opt(C, flops_per_token=full)
    for name, f in (("chinchilla", fam), ("kaplan", k)):
        on_line = lambda x: np.atleast_1d(f.predict(np.exp(x), C / full(np.exp(x))))[0]  # noqa: E731
        direct = minimize_scalar(on_line, bounds=(10, 40), method="bounded", options={"xatol": 1e-9}).x
        assert est.per_family[name].value == pytest.approx(np.exp(direct), rel=2e-3), name
        assert est.per_family[name].value != pytest.approx(six.per_family[name].value, rel=1e-2)
    assert est.low <= est.value <= est.high


# -- intervals ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noisy_chinchilla():
    df = synthetic.random_table(150, noise=0.01, seed=4)
    return df, ChinchillaFamily(n_boot=60, n_jobs=1).fit(df.params, df.tokens, df.loss)


def test_intervals_have_the_right_shape_and_hold_the_truth(noisy_chinchilla):
    df, fam = noisy_chinchilla
    N, D = runs(40, seed=5)
    draws = fam.predict_draws(N, D)
    assert draws.shape == (60, 40)
    noisy = fam.predict_draws(N, D, noise=True)
    assert noisy.shape == (60, 40)
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    nlo, nhi = np.percentile(noisy, [2.5, 97.5], axis=0)
    assert ((nhi - nlo) > (hi - lo)).mean() > 0.9  # a new run's interval is wider than the law's
    truth = synthetic.loss(N, D)
    assert ((lo <= truth) & (truth <= hi)).mean() >= 0.75  # percentile bootstrap, 60 resamples
    assert ((nlo <= truth) & (truth <= nhi)).all()
    new = truth * np.exp(np.random.default_rng(6).normal(0, 0.01, truth.size))  # new runs with the fit's noise
    assert ((nlo <= new) & (new <= nhi)).mean() >= 0.85
    assert fam.sigma_ == pytest.approx(0.01, rel=0.3)
    est = fam.n_opt(1e21)
    assert est.low < est.value < est.high
    assert est.low < float(synthetic.n_opt(1e21)) < est.high
    assert fam.n_opt_draws(1e21).shape == (60,)


def test_weighted_quantiles_match_plain_percentiles_with_equal_weights():
    x = np.random.default_rng(0).normal(size=(2001, 3))
    q = weighted_quantiles(x, np.ones(2001), [0.025, 0.5, 0.975])
    np.testing.assert_allclose(q, np.percentile(x, [2.5, 50, 97.5], axis=0), atol=0.01)


# -- choice ------------------------------------------------------------------------------------------------
def test_weights_and_pick_follow_the_stated_rule():
    w = family_weights({"chinchilla": 1.0, "kaplan": 2.0, "farseer": float("inf")})
    assert w == pytest.approx({"chinchilla": 0.8, "kaplan": 0.2, "farseer": 0.0})
    assert family_weights({"chinchilla": 1.0, "kaplan": 2.0}, "best") == {"chinchilla": 1.0, "kaplan": 0.0}
    # nested laws tie on data from the smaller one: within 5% the family with fewer parameters is chosen
    assert pick({"chinchilla": 1.03, "farseer": 1.0}) == "chinchilla"
    assert pick({"chinchilla": 1.2, "farseer": 1.0}) == "farseer"
    assert pick({"chinchilla": 1e-9, "farseer": 1e-11}) == "chinchilla"  # below the 0.01% floor: equal


@pytest.mark.parametrize("truth, law", [("kaplan", kaplan_loss), ("farseer", farseer_truth),
                                        ("chinchilla", lambda N, D: synthetic.loss(N, D))])
def test_rolling_origin_choice_picks_the_generating_family(truth, law):
    # compute spans ~4 decades, so the top 10-30% are extrapolations by 3-30x
    N, D = runs(40, seed=7, n_range=(5e7, 5e9), d_range=(2e9, 2e11))
    L = law(N, D) * np.exp(np.random.default_rng(8).normal(0, 1e-4, N.size))
    table, errors = rolling_origin(N, D, L, cuts=(0.15, 0.3))
    assert set(table["family"]) == {"chinchilla", "gadre", "kaplan", "farseer"} and (table["status"] == "ok").all()
    assert (table["compute_ratio"] > 2).all()
    assert len(errors) == sum(table["n_test"])
    err = table.groupby("family")["mape"].mean().to_dict()
    assert pick(err) == truth
    assert family_weights(err)[truth] == max(family_weights(err).values())


@pytest.fixture(scope="module")
def farseer_choice():
    N, D = runs(50, seed=10, n_range=(5e7, 5e9), d_range=(2e9, 2e11))
    L = farseer_truth(N, D) * np.exp(np.random.default_rng(11).normal(0, 2e-3, N.size))
    df = pd.DataFrame({"n": N, "d": D, "loss": L})
    return df, fit_families(df, params="n", tokens="d", loss="loss", n_boot=12, cuts=(0.15, 0.3))


def test_fit_families_chooses_and_predicts_with_a_mixture(farseer_choice):
    df, ch = farseer_choice
    assert ch.chosen == "farseer"
    assert sum(ch.weights.values()) == pytest.approx(1.0)
    assert ch.weights["farseer"] > 0.5
    assert list(ch.summary["family"]) == ["chinchilla", "gadre", "kaplan", "farseer"]
    assert ch.columns["params"] == "n"
    N, D = np.array([2e9, 8e9]), np.array([1e11, 4e11])
    pr = ch.predict(N, D)
    assert (pr["low"] < pr["loss"]).all() and (pr["loss"] < pr["high"]).all()
    truth = farseer_loss(N, D, refs=refs(df["n"], df["d"]))  # the law that generated the table
    assert ((pr["low"] <= truth) & (truth <= pr["high"])).all()
    est = ch.n_opt(1e21)
    assert est.low <= est.value <= est.high and set(est.per_family) == {"chinchilla", "gadre", "kaplan", "farseer"}
    assert ch.to_dict()["chosen"] == "farseer"


def test_predict_planned_one_row_per_planned_row_in_order(farseer_choice):
    df, ch = farseer_choice
    planned = pd.DataFrame({"name": ["c", "a", "b", "opt"], "n": [3e9, 1e8, 1e9, np.nan],
                            "d": [2e11, 4e9, np.nan, np.nan], "compute": [np.nan, np.nan, 1.2e21, 3e21]})
    out = predict_planned(ch, planned, compute="compute")
    assert len(out) == 4 and list(out["name"]) == ["c", "a", "b", "opt"]
    np.testing.assert_allclose(out["params"][:3], [3e9, 1e8, 1e9])
    assert out["tokens"][2] == pytest.approx(1.2e21 / 6e9)
    assert out["params_from"].tolist() == ["planned", "planned", "planned", "n_opt"]
    assert out["params"][3] == pytest.approx(out["n_opt"][3])
    assert (out["loss_low"] < out["loss"]).all() and (out["loss"] < out["loss_high"]).all()
    assert (out["n_opt_low"] <= out["n_opt"]).all() and (out["n_opt"] <= out["n_opt_high"]).all()
    assert {f"loss_{k}" for k in ("chinchilla", "kaplan", "farseer")} <= set(out.columns)
    assert isinstance(out.attrs["warnings"], list) and out.attrs["chosen"] == "farseer"
    assert "new run" in out.attrs["interval"]


def test_families_that_disagree_at_the_target_get_a_warning():
    # two confident laws that differ (fitted to different truths), weighted equally without validation
    N, D = runs(50, seed=13)
    noise = np.exp(np.random.default_rng(14).normal(0, 1e-3, N.size))
    a = ChinchillaFamily(n_boot=20).fit(N, D, synthetic.loss(N, D) * noise)
    b = KaplanFamily(n_boot=20).fit(N, D, kaplan_loss(N, D) * noise)
    equal = as_choice([a, b])
    assert equal.weights == {"chinchilla": 0.5, "kaplan": 0.5}
    planned = pd.DataFrame({"params": [1e9, 2e11], "tokens": [2e10, 4e12]})
    out = predict_planned(equal, planned)
    assert out["disagree"].all()
    lo, hi = out["loss_low"], out["loss_high"]  # the mixture's interval spans both laws
    assert ((lo < out["loss_chinchilla"]) & (out["loss_chinchilla"] < hi)).all()
    assert ((lo < out["loss_kaplan"]) & (out["loss_kaplan"] < hi)).all()
    warns = out.attrs["warnings"]
    assert any("disagree beyond their own intervals at 2 of 2" in w and "row 1" in w for w in warns)
    assert any("compute of the largest fitted run" in w for w in warns)  # 2e11 x 4e12 is far beyond


def test_predict_planned_takes_a_single_fit_or_a_table():
    df = synthetic.random_table(40, noise=0.005, seed=12)
    planned = pd.DataFrame({"params": [2e10, 1e9], "tokens": [8e11, 2e10]})
    fit = ParametricFit(n_boot=20).fit(df.params, df.tokens, df.loss)
    one = predict_planned(fit, planned)
    assert len(one) == 2 and one.attrs["weights"] == {"chinchilla": 1.0}
    np.testing.assert_allclose(one["loss"], fit.predict(planned.params, planned.tokens))
    table = predict_planned(df, planned, params="params", tokens="tokens", loss="loss",
                            families=["chinchilla", "kaplan"], n_boot=10, cuts=(0.2,))
    assert len(table) == 2 and set(table.attrs["weights"]) == {"chinchilla", "kaplan"}


# -- the validation aimed at the target ----------------------------------------------------------------------
def test_validation_orders_follow_where_the_target_leaves_the_runs():
    N, D = np.array([1e8, 2e8, 4e8]), np.array([1e9, 1e10, 1e11])
    assert validation_orders(N, D) == {"compute": 1.0}  # no target: the costliest runs held out, as before
    assert validation_orders(N, D, ([4e9], [1e10])) == {"params": 1.0}  # 10x in N, D inside the range
    assert validation_orders(N, D, ([2e8], [1e13])) == {"tokens": 1.0}  # a small model trained far longer
    both = validation_orders(N, D, ([4e9], [1e12]))  # 10x in N and in D: held out by each, equal shares
    assert both == pytest.approx({"params": 0.5, "tokens": 0.5})
    lop = validation_orders(N, D, ([4e9, 4e9], [1e11, 1e13]))  # the targets' centre: 10x in N, 10x in D
    assert lop == pytest.approx({"params": 0.5, "tokens": 0.5})
    assert validation_orders(N, D, ([1e8], [1e9])) == {"compute": 1.0}  # inside the range on both axes
    assert validation_orders(N, D, ([4e9], [1e10]), order="compute") == {"compute": 1.0}  # asked for: kept
    with pytest.raises(AnalysisError, match="needs target"):
        validation_orders(N, D, order="target")
    with pytest.raises(AnalysisError, match="order must be"):
        validation_orders(N, D, order="size")


def test_rolling_origin_does_not_count_the_same_held_out_runs_twice():
    # four model sizes, ten runs each: by N the top 10%, 20% and 25% are all the largest size
    N = np.repeat([1e8, 2e8, 4e8, 8e8], 10)
    D = np.tile(np.geomspace(2e9, 2e11, 10), 4)
    table, errors = rolling_origin(N, D, synthetic.loss(N, D), families=["chinchilla", "gadre"],
                                   cuts=(0.1, 0.2, 0.25), order="params")
    assert set(table["cut"]) == {0.1} and (table["n_test"] == 10).all() and (table["order"] == "params").all()
    assert set(errors["params"]) == {8e8}


def test_a_target_beyond_the_runs_in_n_is_validated_on_the_largest_models():
    N = np.repeat([1e8, 2e8, 4e8, 8e8], 8)
    D = np.tile(np.geomspace(2e9, 2e11, 8), 4)
    L = synthetic.loss(N, D) * np.exp(np.random.default_rng(3).normal(0, 1e-3, N.size))
    aimed = choose(N, D, L, families=["chinchilla", "gadre"], n_boot=0, target=([8e9], [2e11]))
    assert aimed.orders == {"params": 1.0} and set(aimed.validation["order"]) == {"params"}
    held = aimed.errors.groupby("cut")["params"].min()
    assert (held == 8e8).all()  # every fold held out the largest model size, and only it
    assert aimed.to_dict()["validation_orders"] == {"params": 1.0}
    assert any("by params" in n for n in aimed.notes)
    plain = choose(N, D, L, families=["chinchilla", "gadre"], n_boot=0)  # no target: compute order, as before
    assert plain.orders == {"compute": 1.0} and set(plain.validation["order"]) == {"compute"}
    # predict_planned from a table aims the validation at the planned runs; a fitted choice keeps its own
    df = pd.DataFrame({"params": N, "tokens": D, "loss": L})
    planned = pd.DataFrame({"params": [8e9], "tokens": [2e11]})
    out = predict_planned(df, planned, params="params", tokens="tokens", loss="loss", families=["chinchilla", "gadre"],
                          n_boot=5)
    assert out.attrs["validation_orders"] == {"params": 1.0}
    assert predict_planned(plain, planned).attrs["validation_orders"] == {"compute": 1.0}


def test_on_gadre_et_al_the_folds_aimed_at_the_costly_runs_choose_a_law_that_extrapolates_better_there():
    """The motivating case (tests/data/gadre2024_overtrain.md): RedPajama's 32 cheap runs (<= 412M) and its 1.4B and
    6.9B runs. Compute order holds out the small models' longest runs; the costly runs lie beyond in N. The costly
    runs' sizes aim the folds; their losses only score the two choices here."""
    from pathlib import Path

    d = pd.read_csv(Path(__file__).parent / "data" / "gadre2024_overtrain.csv")
    d = d[d.dataset == "rpj"]
    cheap, costly = d[~d.costly], d[d.costly]
    fams = ["chinchilla", "gadre", "kaplan"]
    aimed = choose(cheap.N, cheap.D, cheap.loss_c4_val, families=fams, n_boot=0, target=(costly.N, costly.D))
    plain = choose(cheap.N, cheap.D, cheap.loss_c4_val, families=fams, n_boot=0)
    assert set(aimed.orders) == {"params"}  # the costly runs' centre is beyond the cheap runs in N, not in D
    err = {k: scores(ch.families[ch.chosen].predict(costly.N, costly.D), costly.loss_c4_val)["mape"]
           for k, ch in (("aimed", aimed), ("plain", plain))}
    assert aimed.chosen != plain.chosen and err["aimed"] < err["plain"]


def test_family_names_and_bad_inputs():
    assert FAMILIES == ("chinchilla", "gadre", "kaplan", "farseer", "data_constrained")
    with pytest.raises(AnalysisError, match="unknown law family"):
        make_family("gpt")
    N, D = runs(10)
    with pytest.raises(AnalysisError, match="at least 8 points"):
        make_family("farseer").fit(N[:6], D[:6], synthetic.loss(N[:6], D[:6]))
    with pytest.raises(AnalysisError, match="unique tokens"):
        choose(N, D, synthetic.loss(N, D), families=["data_constrained"])


def test_the_families_figure_shows_each_familys_held_out_error_and_marks_the_chosen(farseer_choice, tmp_path):
    from medscale.analysis.family_plots import plot_families

    df, ch = farseer_choice
    paths = plot_families(ch, tmp_path / "families", budget=1e21)
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 0 for p in paths)
    svg = paths[1].read_text()
    last = ch.errors[ch.errors["cut"] == ch.errors["cut"].max()]
    for k, g in last.groupby("family"):
        label = f"{k} (chosen)" if k == ch.chosen else k
        assert f"{label}: {100 * g['rel_error'].abs().mean():.2f}% error" in svg, k  # the left panel's legend
        assert f"{label} (weight {ch.weights[k]:.2f})" in svg  # the right panel's
    np.testing.assert_allclose(last["predicted"] / last["loss"] - 1, last["rel_error"])
