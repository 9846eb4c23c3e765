"""C = 6ND, written down once: training compute from parameters N and tokens D, and back.

N follows the run's parameter-count convention (medscale.models.config.counted_params); the full
FLOP count with attention and the output head is medscale.scaling.flops.flops_per_token.
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
