"""C = 6ND, written down once: training compute from parameters N and tokens D, and back.

N follows the run's parameter-count convention (medscale.models.config.counted_params); the full
FLOP count with attention and the output head is medscale.scaling.plan.flops.flops_per_token.
"""
from __future__ import annotations

FLOPS_PER_PARAM_TOKEN = 6  # forward 2 + backward 4 FLOPs per parameter per token (Kaplan et al. 2020)


def compute_6nd(params, tokens):
    """C = 6 N D (works on scalars and arrays)."""
    return FLOPS_PER_PARAM_TOKEN * params * tokens


def tokens_for_compute(compute, params):
    """D = C / (6 N)."""
    return compute / (FLOPS_PER_PARAM_TOKEN * params)


def params_for_compute(compute, tokens):
    """N = C / (6 D)."""
    return compute / (FLOPS_PER_PARAM_TOKEN * tokens)


COMPUTE_CONVENTIONS = ("full", "6nd")
PARAMS_CONVENTIONS = ("total", "non_embedding")
# Which column of a medscale results table holds N under each parameter convention.
PARAMS_COLUMNS = {"total": "params_total", "non_embedding": "params_non_embedding"}


def full_flops_per_token(params, tokens, flops_full):
    """FLOPs per token as a function of N, from runs' full FLOP counts (attention and output head included).

    Per run f = flops_full / tokens; the model is f(N) = 6 N (1 + c N^-g): the head and attention add a
    share of 6N that shrinks as models grow (at vocabulary 32k and sequence 1,024: x2.4 at 10M parameters,
    x1.2 at 400M). c and g come from a least-squares line of log|f / 6N - 1| on log N; with too few runs, or
    shares of both signs, the median share is used at every N.
    """
    import numpy as np

    N = np.asarray(params, dtype=float)
    share = np.asarray(flops_full, dtype=float) / np.asarray(tokens, dtype=float) / (FLOPS_PER_PARAM_TOKEN * N) - 1
    sign = np.sign(np.median(share))
    ok = np.sign(share) == sign
    if ok.sum() >= 3 and np.unique(N[ok]).size >= 2 and sign != 0:
        g, logc = np.polyfit(np.log(N[ok]), np.log(np.abs(share[ok])), 1)
        return lambda n: FLOPS_PER_PARAM_TOKEN * np.asarray(n, float) * np.maximum(
            1 + sign * np.exp(logc) * np.asarray(n, float) ** g, 0.05)
    med = float(np.median(share))
    return lambda n: FLOPS_PER_PARAM_TOKEN * np.asarray(n, float) * (1 + med)
