"""Tables drawn from known laws, in the same schemas scaling/ writes: for tests, benchmarks and demos.

Loss noise is multiplicative (log-normal with standard deviation `noise` in log L), which is what the
fits assume. Every function is seeded.
"""
from __future__ import annotations

from .conventions import compute_6nd, tokens_for_compute
import numpy as np
import pandas as pd

LAW = {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28}
BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20, 3e20, 1e21)


def loss(N, D, law: dict = LAW) -> np.ndarray:
    N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    return law["E"] + law["A"] * N ** -law["alpha"] + law["B"] * D ** -law["beta"]


def n_opt(compute, law: dict = LAW) -> np.ndarray:
    """The closed-form compute-optimal N for `law` (Hoffmann et al. eq. 4)."""
    al, be = law["alpha"], law["beta"]
    G = (al * law["A"] / (be * law["B"])) ** (1 / (al + be))
    return G * (np.asarray(compute, dtype=float) / 6) ** (be / (al + be))


def _shape(N: np.ndarray) -> dict:
    # A plausible width/depth for the table's shape columns; analysis/ never relies on them.
    d_model = np.maximum(64, 2 ** np.round(np.log2((N / 12) ** (1 / 3) * 4))).astype(int)
    n_layers = np.maximum(1, np.round(N / (12 * d_model**2))).astype(int)
    return {"d_model": d_model, "n_layers": n_layers, "n_heads": np.maximum(1, d_model // 64)}


def _table(N, D, L, budget, lr, seed, objective="decoder") -> pd.DataFrame:
    N = np.asarray(N, dtype=float)
    D = np.asarray(D, dtype=float)
    C = compute_6nd(N, D)
    df = pd.DataFrame(
        {
            "run_id": [f"run{i:04d}" for i in range(N.size)],
            "objective": objective,
            "params": N,
            "params_total": N * 1.05,
            "tokens": D,
            "compute": C,
            "flops_full": C * 1.1,
            "loss": L,
            "budget": budget,
            "lr": lr,
            "seed": seed,
            "status": "done",
        }
    )
    for k, v in _shape(N).items():
        df[k] = v
    return df


def isoflop_table(
    budgets=BUDGETS,
    *,
    sizes: int = 9,
    span: float = 8.0,
    offset: float = 1.0,
    law: dict = LAW,
    noise: float = 0.0,
    lrs: tuple = (3e-4,),
    lr_penalty: float = 0.02,
    seed: int = 0,
) -> pd.DataFrame:
    """An IsoFLOP sweep: per budget C, `sizes` log-spaced N in [N*/span, N*·span]·offset, D = C/(6N).

    With several `lrs`, each point gets one run per learning rate; all but the first are worse by a factor
    (1 + lr_penalty·i), as a mistuned run would be.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        centre = n_opt(C, law) * offset
        for N in np.geomspace(centre / span, centre * span, sizes):
            for i, lr in enumerate(lrs):
                rows.append((N, tokens_for_compute(C, N), C, lr, 1 + lr_penalty * i))
    N, D, C, lr, pen = map(np.array, zip(*rows))
    L = loss(N, D, law) * pen * np.exp(rng.normal(0, noise, N.size))
    return _table(N, D, L, C, lr, seed)


def random_table(
    n: int = 250,
    *,
    n_range=(7e7, 1.6e10),
    d_range=(5e9, 5e11),
    law: dict = LAW,
    noise: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """n runs with N and D drawn log-uniformly over Chinchilla-like ranges (ladder runs: budget NaN)."""
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(*np.log(n_range), n))
    D = np.exp(rng.uniform(*np.log(d_range), n))
    L = loss(N, D, law) * np.exp(rng.normal(0, noise, n))
    return _table(N, D, L, np.nan, 3e-4, seed)


def curves_table(
    sizes=None,
    *,
    max_compute: float = 3e20,
    points: int = 40,
    law: dict = LAW,
    noise: float = 0.0,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, curves): one run per size trained to `max_compute`, its held-out loss at log-spaced steps.

    Each curve follows L(N, D(t)) directly (as if every checkpoint were a finished cosine schedule), so the
    lower envelope over compute traces the true compute-optimal frontier.
    """
    rng = np.random.default_rng(seed)
    sizes = np.geomspace(2e7, 2e10, 16) if sizes is None else np.asarray(sizes, dtype=float)
    results, curves = [], []
    for i, N in enumerate(sizes):
        d_max = tokens_for_compute(max_compute, N)
        D = np.geomspace(d_max / 1e3, d_max, points)
        L = loss(N, D, law) * np.exp(rng.normal(0, noise, points))
        rid = f"run{i:04d}"
        curves.append(pd.DataFrame({"run_id": rid, "step": np.arange(1, points + 1), "tokens": D,
                                    "compute": compute_6nd(N, D), "loss": L}))
        results.append((N, d_max, L[-1]))
    N, D, L = map(np.array, zip(*results))
    return _table(N, D, L, np.nan, 3e-4, seed), pd.concat(curves, ignore_index=True)


# A task that saturates near 1e8 parameters and one that keeps gaining until about 1e9 (threshold 0.005).
SATURATION_TASKS = {"fast": (0.85, 170.0, 0.5), "slow": (0.95, 1.13, 0.15)}


def saturating(N, m_inf: float, k: float, gamma: float) -> np.ndarray:
    return m_inf - k * np.asarray(N, dtype=float) ** -gamma


def downstream_table(
    tasks: dict | None = None,
    *,
    sizes=None,
    noise: float = 0.003,
    half_width: float = 0.01,
    seed: int = 0,
) -> pd.DataFrame:
    """Downstream AUROC per task: `tasks` maps name -> (m_inf, k, gamma) of the pretrained probe curve.

    Adds finetune (probe + 0.01), from-scratch (size-dependent, lower), zero-shot, and the size-independent
    LightGBM baseline and ceiling; `low`/`high` are +- half_width.
    """
    rng = np.random.default_rng(seed)
    tasks = SATURATION_TASKS if tasks is None else tasks
    sizes = np.geomspace(1e6, 3e9, 8) if sizes is None else np.asarray(sizes, dtype=float)
    compute = compute_6nd(sizes, 20 * sizes)
    rows = []
    for task, (m_inf, k, gamma) in tasks.items():
        probe = saturating(sizes, m_inf, k, gamma)
        curves = {
            "probe": probe,
            "finetune": np.minimum(probe + 0.01, 0.999),
            "scratch": saturating(sizes, m_inf - 0.05, k * 1.5, gamma),
            "zero_shot": probe - 0.08,
        }
        for mode, vals in curves.items():
            vals = vals + rng.normal(0, noise, sizes.size)
            for i, (N, C, v) in enumerate(zip(sizes, compute, vals)):
                rows.append((f"run{i:04d}", N, C, task, mode, v))
        rows.append(("lightgbm", np.nan, np.nan, task, "lightgbm", m_inf - 0.03))
        rows.append(("ceiling", np.nan, np.nan, task, "ceiling", min(m_inf + 0.02, 1.0)))
    df = pd.DataFrame(rows, columns=["run_id", "params", "compute", "task", "mode", "value"])
    df["metric"] = "auroc"
    df["low"] = df["value"] - half_width
    df["high"] = df["value"] + half_width
    return df[["run_id", "params", "compute", "task", "mode", "metric", "value", "low", "high"]]


# Muennighoff et al. (2023) found R*_D ~ 15: repeated tokens keep most of their value for a few epochs only.
DATA_LAW = {**LAW, "R_star_D": 15.0}
# With the parameter-excess term: R*_D and R*_N near Muennighoff et al.'s 15.4 and 5.3.
DATA_LAW_FULL = {**DATA_LAW, "R_star_N": 5.0}


def data_constrained_loss(N, D, U, law: dict = DATA_LAW) -> np.ndarray:
    from .data_constrained import loss_of

    return loss_of(law, np.asarray(N, float), np.asarray(D, float), np.asarray(U, float))


def data_constrained_table(
    budgets=BUDGETS[:5],
    *,
    sizes: int = 7,
    span: float = 6.0,
    epochs=(1.0, 2.0, 4.0, 10.0, 25.0, 60.0),
    law: dict = DATA_LAW,
    noise: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """IsoFLOP grids where each run draws its D tokens from U = D / epochs unique ones; the true loss follows
    the data-constrained law (columns unique_tokens and epochs added)."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        centre = n_opt(C, law)
        for N in np.geomspace(centre / span, centre * span, sizes):
            D = tokens_for_compute(C, N)
            rows += [(N, D, D / e, C) for e in epochs]
    N, D, U, C = map(np.array, zip(*rows))
    L = data_constrained_loss(N, D, U, law) * np.exp(rng.normal(0, noise, N.size))
    df = _table(N, D, L, C, 3e-4, seed)
    df["unique_tokens"] = U
    df["epochs"] = D / U
    return df


def _shape_counts(d_model, vocab: int, seq_len: int):
    """(non-embedding N, total N, full training FLOPs per token) of a decoder with n_layers = d_model / 64 and
    d_ff = 4 d_model, counted as medscale.scaling.plan.flops does (head 2 d V, attention over (L + 1) / 2 keys)."""
    d = np.asarray(d_model, dtype=float)
    layers = d / 64
    n_ne = 12 * layers * d * d
    total = n_ne + 2 * vocab * d
    fpt = 3 * (2 * n_ne + 2 * d * vocab + 4 * layers * d * (seq_len + 1) / 2)
    return n_ne, total, fpt


def convention_table(budgets=(1e17, 3e17, 1e18, 3e18, 1e19), *, sizes: int = 9, vocab: int = 32000,
                     seq_len: int = 1024, law: dict = LAW, noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """IsoFLOP grids in real (full) FLOPs where the true loss is L(total N, D): what a real model does when the
    head and attention are a large share of its compute. `params` holds non-embedding N (Kaplan's count)."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        d_best = true_full_optimum(C, vocab=vocab, seq_len=seq_len, law=law)[0]
        for d in np.geomspace(d_best / 2.5, d_best * 2.5, sizes):
            n_ne, total, fpt = _shape_counts(d, vocab, seq_len)
            rows.append((n_ne, total, C / fpt, C))
    n_ne, total, D, C = map(np.array, zip(*rows))
    L = loss(total, D, law) * np.exp(rng.normal(0, noise, D.size))
    df = _table(n_ne, D, L, C, 3e-4, seed)
    df["params_non_embedding"] = n_ne
    df["params_total"] = total
    df["flops_full"] = C
    return df


def true_full_optimum(C: float, *, vocab: int = 32000, seq_len: int = 1024, law: dict = LAW):
    """(d_model, total N, non-embedding N) minimising L(total N, C / full FLOPs per token) for that shape family."""
    d = np.geomspace(4, 1e5, 200_001)
    n_ne, total, fpt = _shape_counts(d, vocab, seq_len)
    i = int(np.argmin(loss(total, C / fpt, law)))
    return float(d[i]), float(total[i]), float(n_ne[i])
